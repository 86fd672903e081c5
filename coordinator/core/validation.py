"""Checks a parsed saga definition for mistakes pydantic cannot see on its own.

Every check reports every problem it finds instead of stopping at the first, so
one ``sagaray validate`` run shows all that is wrong with a file.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import Any

from jsonschema import Draft202012Validator

from coordinator.core.definition import MAX_PARALLEL_WIDTH, MAX_STEPS, SagaDefinition, Step
from coordinator.core.graph import Graph, parallel_width
from coordinator.core.templates import (
    TemplateError,
    compile_expression,
    placeholders,
    step_references,
)

WHOLE_STEPS = "*"


@dataclass(frozen=True)
class Problem:
    """One mistake in a file: where it is (file, step, dotted field) and what is wrong."""

    file: str | None
    step: str | None
    field: str
    message: str

    def __str__(self) -> str:
        parts = [self.file] if self.file else []
        if self.step is not None:
            parts.append(f"step {self.step!r}")
        if self.field:
            parts.append(f"field {self.field!r}")
        parts.append(self.message)
        return ": ".join(parts)

    def in_file(self, file: str | None) -> Problem:
        return replace(self, file=file)


def check_definition(
    definition: SagaDefinition,
    service_names: set[str] | None = None,
    *,
    file: str | None = None,
) -> list[Problem]:
    """Every semantic problem of ``definition``; services are checked only when named."""
    graph = definition.graph
    found = [
        *_duplicate_steps(definition.steps),
        *_unknown_dependencies(definition.steps),
        *_cycle(graph, definition.steps),
        *(_unknown_services(definition.steps, service_names) if service_names is not None else []),
        *_template_problems(definition.steps, graph),
        *_pivot_problems(definition.steps, graph),
        *_input_schema_problems(definition.input_schema),
        *_size_problems(definition),
    ]
    return [problem.in_file(file) for problem in dict.fromkeys(found)]


def _duplicate_steps(steps: tuple[Step, ...]) -> Iterator[Problem]:
    counts = Counter(step.name for step in steps)
    for name, count in counts.items():
        if count > 1:
            positions = ", ".join(str(i) for i, s in enumerate(steps) if s.name == name)
            yield Problem(None, name, "name",
                          f"duplicate step name: used by {count} steps (positions {positions})")


def _unknown_dependencies(steps: tuple[Step, ...]) -> Iterator[Problem]:
    known = {step.name for step in steps}
    for step in steps:
        for dependency in step.depends_on:
            if dependency not in known:
                yield Problem(None, step.name, "depends_on", f"unknown step {dependency!r}")


def _cycle(graph: Graph, steps: tuple[Step, ...]) -> Iterator[Problem]:
    duplicated = {name for name, count in Counter(s.name for s in steps).items() if count > 1}
    # A repeated name makes the default "depends on the step before" point at itself;
    # that cycle is an echo of the duplicate, which is reported already.
    if graph.cycle and not duplicated.intersection(graph.cycle):
        path = " -> ".join(graph.cycle)
        yield Problem(None, graph.cycle[0], "depends_on",
                      f"dependency cycle: {path} (each step depends on the next)")


def _unknown_services(steps: tuple[Step, ...], service_names: set[str]) -> Iterator[Problem]:
    known = ", ".join(sorted(service_names)) or "none"
    for step in steps:
        for where, call in (("action", step.action), ("compensation", step.compensation)):
            if call is not None and call.service not in service_names:
                yield Problem(None, step.name, f"{where}.service",
                              f"unknown service {call.service!r} (services file has: {known})")


def _template_fields(step: Step) -> Iterator[tuple[str, list[str]]]:
    """(dotted field, expression texts) for every templated part of a step."""
    if step.when is not None:
        yield "when", [step.when]
    for where, call in (("action", step.action), ("compensation", step.compensation)):
        if call is not None:
            yield f"{where}.path", placeholders(call.path)
            yield f"{where}.body", placeholders(call.body)
            yield f"{where}.headers", placeholders(call.headers)


def _template_problems(steps: tuple[Step, ...], graph: Graph) -> Iterator[Problem]:
    known = {step.name for step in steps}
    for step in steps:
        for field, texts in _template_fields(step):
            for text in texts:
                try:
                    reads = step_references(compile_expression(text))
                except TemplateError as error:
                    yield Problem(None, step.name, field, f"unparsable expression: {error}")
                    continue
                for read in sorted(reads):
                    message = _read_problem(step.name, field, read, known, graph)
                    if message:
                        yield Problem(None, step.name, field, message)


def _read_problem(
    step: str, field: str, read: str, known: set[str], graph: Graph
) -> str | None:
    """Why ``step`` may not read ``steps.<read>`` in ``field``, or None when it may."""
    if read == WHOLE_STEPS:
        return "reads `steps` as a whole; name each step read, as in steps.NAME.output"
    if read not in known:
        return f"reads unknown step {read!r}"
    ancestors = graph.ancestors.get(step, frozenset())
    if read in ancestors:
        return None
    if read == step:
        if field.startswith("compensation."):
            return None
        return "reads its own step, which has no output before its action completes"
    return (f"reads step {read!r}, which it does not depend on "
            f"(add {read!r} to depends_on, directly or through another step)")


def _pivot_problems(steps: tuple[Step, ...], graph: Graph) -> Iterator[Problem]:
    pivots = [step.name for step in steps if step.pivot]
    if not pivots:
        return
    pivot = pivots[0]
    for extra in pivots[1:]:
        yield Problem(None, extra, "pivot",
                      f"more than one pivot: {pivot!r} is already the pivot (at most one allowed)")
    ordered = graph.ancestors[pivot] | graph.descendants[pivot] | {pivot}
    unordered = [step.name for step in steps if step.name not in ordered]
    if unordered:
        names = ", ".join(repr(name) for name in dict.fromkeys(unordered))
        yield Problem(None, pivot, "pivot",
                      f"pivot is not ordered relative to {names}: every step must run "
                      "before the pivot (be an ancestor) or after it (depend on it)")
    for step in steps:
        if step.name in graph.descendants[pivot] and step.compensation is not None:
            yield Problem(None, step.name, "compensation",
                          f"runs after the pivot {pivot!r}, so it is never compensated "
                          "(failures after the pivot are retried forward); remove it")


def _input_schema_problems(schema: dict[str, Any] | None) -> Iterator[Problem]:
    if schema is None:
        return
    checker = Draft202012Validator(
        Draft202012Validator.META_SCHEMA, format_checker=Draft202012Validator.FORMAT_CHECKER
    )
    for error in sorted(checker.iter_errors(schema), key=lambda e: list(map(str, e.path))):
        where = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in error.path)
        yield Problem(None, None, f"input_schema{where}",
                      f"not a valid JSON Schema (2020-12): {error.message}")


def clean_run_events(definition: SagaDefinition) -> int:
    """Events of a run where every step succeeds at once: start, host, two per step, end."""
    return 3 + 2 * len(definition.steps)


def _size_problems(definition: SagaDefinition) -> Iterator[Problem]:
    """The definition limits (steps, parallel width) and history limits a run can meet."""
    saga, count = definition.name, len(definition.steps)
    if count > MAX_STEPS:
        yield Problem(None, None, "steps", f"saga {saga!r} has {count} steps, over the limit "
                      f"of {MAX_STEPS} steps per saga; split it into several sagas")
        return  # the width of an oversized graph is not worth computing
    width = parallel_width(definition.graph)
    if width > MAX_PARALLEL_WIDTH:
        yield Problem(None, None, "steps[].depends_on",
                      f"saga {saga!r} has a parallel width of {width} (steps that can run at "
                      f"once by depends_on), over the limit of {MAX_PARALLEL_WIDTH}")
    limits, needed = definition.limits, clean_run_events(definition)
    if limits.max_events < needed:
        yield Problem(None, None, "limits.max_events",
                      f"saga {saga!r}: max_events {limits.max_events} is below the {needed} "
                      f"events a run needs when every step succeeds at once")
    if limits.max_attempts < count:
        yield Problem(None, None, "limits.max_attempts",
                      f"saga {saga!r}: max_attempts {limits.max_attempts} is below its "
                      f"{count} steps (each needs one attempt)")
