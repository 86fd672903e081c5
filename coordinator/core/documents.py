"""From a parsed YAML document to a definition, or to every problem it has.

Pydantic reports all field errors at once but cannot run the semantic checks
when a field is broken. So after a failure the document is patched (broken
optional fields dropped, broken values replaced by harmless ones) and validated
again, and the semantic checks run on that patched copy; problems at a location
pydantic already reported are not repeated.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from typing import Any

from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails

from coordinator.core.definition import Call, SagaDefinition, Step
from coordinator.core.validation import Problem, check_definition

Loc = tuple[int | str, ...]
_MAX_VALUE_CHARS = 80
_MESSAGES = {
    "missing": "required field is missing",
    "extra_forbidden": "unknown field (not part of the format)",
}
# Placeholders for broken values that keep the patched document valid without
# adding reads, services or dependencies the author did not write.
_TOP_PLACEHOLDERS: dict[str, Any] = {"name": "invalid", "version": 1}
_CALL_PLACEHOLDERS: dict[str, Any] = {"service": "invalid", "path": "/"}
# Broken values here change the graph itself, so no semantic check can be trusted.
_STRUCTURE = frozenset({"steps", "name", "depends_on", "pivot", "action"})
# Required on a step, but the defaults refill them when they are dropped.
_REFILLED = frozenset({"timeout", "retry", "compensation_retry"})


def validate_document(
    raw: object, *, file: str | None = None, service_names: set[str] | None = None
) -> tuple[SagaDefinition | None, list[Problem]]:
    """The definition when ``raw`` has no problem at all, else None and every problem."""
    if not isinstance(raw, dict):
        kind = "empty" if raw is None else f"a {type(raw).__name__}"
        return None, [Problem(file, None, "", f"the file is {kind}; it must hold a mapping "
                                                "with name, version and steps")]
    try:
        definition = SagaDefinition.model_validate(raw)
    except ValidationError as error:
        return None, _in_step_order(raw, _problems_after_failure(raw, error, file, service_names))
    problems = check_definition(definition, service_names, file=file)
    return (None, _in_step_order(raw, problems)) if problems else (definition, [])


def _in_step_order(raw: dict[str, Any], problems: list[Problem]) -> list[Problem]:
    """Document-level problems first, then each step's in file order (stable)."""
    steps = raw.get("steps")
    steps = steps if isinstance(steps, list) else []
    position: dict[str, int] = {}
    for index, step in enumerate(steps):
        name = step.get("name") if isinstance(step, dict) else None
        position.setdefault(name if isinstance(name, str) else f"steps[{index}]", index)
    return sorted(problems, key=lambda p: -1 if p.step is None else position.get(p.step, -1))


def problems_from_error(
    error: ValidationError,
    raw: object,
    *,
    file: str | None = None,
    prefix: Loc = (),
    hide_values: bool = False,
) -> list[Problem]:
    """One problem per location, naming steps by name (or ``steps[i]``) and fields dotted.

    ``raw`` is the document the error's locations (after ``prefix``) point into.
    ``hide_values`` keeps input values out of messages, for files that may hold secrets.
    """
    grouped: dict[tuple[str | None, str], list[str]] = {}
    for item in error.errors(include_url=False):
        loc = _real_loc((*prefix, *item["loc"]), raw, item["type"])
        if item["type"] == "too_short" and _long_enough(raw, loc, item):
            continue
        step, field = _step_and_field(loc, raw)
        messages = grouped.setdefault((step, field), [])
        message = _message(item, not hide_values)
        if message not in messages:
            messages.append(message)
    # Several messages at one location are the alternatives of a union that all failed.
    return [Problem(file, step, field, " or ".join(messages))
            for (step, field), messages in grouped.items()]


def _real_loc(loc: Loc, raw: object, error_type: str) -> Loc:
    """``loc`` without pydantic's union tags (``'int'``, ``'dict'``...), which are no
    positions in the document: a part is kept only when the document has it."""
    kept: list[int | str] = []
    node = raw
    for index, part in enumerate(loc):
        if _has(node, part):
            kept.append(part)
            node = node[part]  # type: ignore[index]
        elif index == len(loc) - 1 and error_type == "missing":
            kept.append(part)
    return tuple(kept)


def _has(node: object, part: int | str) -> bool:
    if isinstance(node, dict):
        return part in node
    return isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node)


def _long_enough(raw: object, loc: Loc, item: ErrorDetails) -> bool:
    """Pydantic counts only the items that validated, so a list whose items are all
    broken also reads as too short; the item errors already say what is wrong."""
    node = raw
    for part in loc:
        node = node[part]  # type: ignore[index]
    minimum = (item.get("ctx") or {}).get("min_length", 0)
    return isinstance(node, list) and len(node) >= minimum


def _step_and_field(loc: Loc, raw: object) -> tuple[str | None, str]:
    if len(loc) >= 2 and loc[0] == "steps" and isinstance(loc[1], int):
        return _step_label(raw, loc[1]), _dotted(loc[2:])
    return None, _dotted(loc)


def _step_label(raw: object, index: int) -> str:
    steps = raw.get("steps") if isinstance(raw, dict) else None
    step = steps[index] if isinstance(steps, list) and index < len(steps) else None
    name = step.get("name") if isinstance(step, dict) else None
    return name if isinstance(name, str) else f"steps[{index}]"


def _dotted(loc: Iterable[int | str]) -> str:
    text = "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in loc)
    return text.removeprefix(".")


def _message(item: ErrorDetails, show_value: bool) -> str:
    message = _MESSAGES.get(item["type"], item["msg"]).removeprefix("Value error, ")
    if not show_value or item["type"] == "missing":
        return message
    shown = repr(item["input"])
    if len(shown) > _MAX_VALUE_CHARS:
        shown = shown[: _MAX_VALUE_CHARS - 3] + "..."
    return message if shown in message else f"{message} (got {shown})"


def _problems_after_failure(
    raw: dict[str, Any], error: ValidationError, file: str | None,
    service_names: set[str] | None,
) -> list[Problem]:
    problems = problems_from_error(error, raw, file=file)
    patched = _patched(raw, [_real_loc(e["loc"], raw, e["type"]) for e in error.errors()])
    if patched is None:
        return problems
    try:
        definition = SagaDefinition.model_validate(patched)
    except ValidationError:
        return problems
    reported = {(p.step, p.field) for p in problems}
    more = [p for p in check_definition(definition, service_names, file=file)
            if not _overlaps(p, reported)]
    return problems + more


def _overlaps(problem: Problem, reported: set[tuple[str | None, str]]) -> bool:
    return any(
        step == problem.step and (not field or problem.field == field
                                  or problem.field.startswith((f"{field}.", f"{field}[")))
        for step, field in reported
    )


def _patched(raw: dict[str, Any], locs: list[Loc]) -> dict[str, Any] | None:
    """A copy of ``raw`` with every broken location made valid, or None when a broken
    location carries structure (step names, dependencies, the steps list)."""
    doc = copy.deepcopy(raw)
    for loc in locs:
        if not _patch(doc, loc):
            return None
    return doc


def _patch(doc: dict[str, Any], loc: Loc) -> bool:
    if not loc:
        return False
    if loc[0] != "steps":
        return _patch_field(doc, str(loc[0]), SagaDefinition, _TOP_PLACEHOLDERS)
    if len(loc) < 3 or not isinstance(loc[1], int):
        return False
    step = doc["steps"][loc[1]]
    key = str(loc[2])
    if key == "action" and len(loc) >= 4 and isinstance(step.get("action"), dict):
        return _patch_field(step["action"], str(loc[3]), Call, _CALL_PLACEHOLDERS)
    return _patch_field(step, key, Step, {})


def _patch_field(
    mapping: dict[str, Any], key: str, model: type[BaseModel], placeholders: dict[str, Any]
) -> bool:
    if key in placeholders:
        mapping[key] = placeholders[key]
        return True
    if key in _STRUCTURE:
        return False
    field = model.model_fields.get(key)
    # Unknown keys and fields with a default can go; other required ones are structure.
    if field is None or not field.is_required() or key in _REFILLED:
        mapping.pop(key, None)
        return True
    return False
