"""``${...}`` placeholders: JMESPath expressions over the saga's data, never code.

The context an expression sees is ``{input, steps: {NAME: {output, status}},
execution: {id, saga, version}}``. A string that is exactly one placeholder keeps
the value's JSON type; inside a longer string, strings are inserted as they are
and other values as compact JSON; in a ``path`` every inserted value is
percent-encoded, ``/`` included.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Any
from urllib.parse import quote

import jmespath
from jmespath.exceptions import (
    IncompleteExpressionError,
    JMESPathError,
    LexerError,
    ParseError,
)
from jmespath.functions import Functions

from coordinator.core.field_paths import Evaluate, evaluator, is_false

_PLACEHOLDER = re.compile(r"\$\{([^}]*)\}")


class TemplateError(ValueError):
    """A placeholder could not be compiled or rendered; the message names it."""


@dataclass(frozen=True, slots=True)
class Expression:
    text: str
    compiled: Any
    fast: Evaluate | None = None  # the same evaluation without jmespath's interpreter

    def search(self, context: dict[str, Any]) -> Any:
        if self.fast is not None:
            return self.fast(context)
        try:
            return self.compiled.search(context)
        except JMESPathError as error:
            raise TemplateError(f"expression {self.text!r} failed: {error}") from error


@lru_cache(maxsize=4096)
def compile_expression(text: str) -> Expression:
    """Compile one JMESPath expression, raising :class:`TemplateError` naming it."""
    if not text.strip():
        raise TemplateError("empty expression")
    try:
        compiled = jmespath.compile(text)
    except JMESPathError as error:
        raise TemplateError(f"invalid JMESPath {text!r}: {_one_line(error)}") from error
    # jmespath checks function names and argument counts only when evaluating; a
    # typo would then fail every execution instead of failing validation once.
    problem = _function_problem(compiled.parsed)
    if problem:
        raise TemplateError(f"invalid JMESPath {text!r}: {problem}")
    return Expression(text, compiled, evaluator(compiled.parsed))


def _one_line(error: JMESPathError) -> str:
    # jmespath's own messages add the expression and a caret on further lines.
    if isinstance(error, LexerError):
        return f"{error.message} at column {error.lexer_position}"
    if isinstance(error, IncompleteExpressionError):
        return "incomplete expression"
    if isinstance(error, ParseError):
        return f"{error.msg} at column {error.lex_position}, token {error.token_value!r}"
    return " ".join(str(error).split())


_FUNCTIONS: dict[str, Any] = Functions().FUNCTION_TABLE


def _function_problem(node: Any) -> str | None:
    if not isinstance(node, dict):
        return None
    if node.get("type") == "function_expression":
        name, given = node["value"], len(node["children"])
        if name not in _FUNCTIONS:
            return f"unknown function {name}()"
        signature = _FUNCTIONS[name]["signature"]
        variadic = bool(signature) and signature[-1].get("variadic", False)
        if given < len(signature) or (given > len(signature) and not variadic):
            return f"{name}() takes {len(signature)} argument(s), got {given}"
    for child in node.get("children", []):
        found = _function_problem(child)
        if found:
            return found
    return None


def placeholders(value: Any) -> list[str]:
    """Every ``${...}`` expression text found in a JSON-like value, in order."""
    if isinstance(value, str):
        return _PLACEHOLDER.findall(value)
    if isinstance(value, dict):
        return [text for item in value.values() for text in placeholders(item)]
    if isinstance(value, list | tuple):
        return [text for item in value for text in placeholders(item)]
    return []


def step_references(expression: Expression) -> frozenset[str]:
    """Names of the steps an expression reads through ``steps.NAME``.

    ``steps`` read as a whole (``steps.*``, ``keys(steps)``) yields ``{"*"}`` so
    that validation can reject it: every read must name its step.
    """
    found: set[str] = set()
    _walk(expression.compiled.parsed, found)
    return frozenset(found)


def _walk(node: Any, found: set[str]) -> None:
    # Over-approximates on purpose: a chain starting with ``steps`` anywhere, or a
    # bare ``steps`` operand (``input.x || steps``), counts as a read, so validation
    # may reject a harmless filter but never misses a read.
    if not isinstance(node, dict):
        return
    if _is_field(node, "steps"):
        found.add("*")
        return
    children = node.get("children", [])
    chained = node.get("type") == "subexpression"
    if children and _is_field(children[0], "steps"):
        named = _leading_field(children[1]) if chained and len(children) > 1 else None
        found.add(named or "*")
    elif children:
        _walk(children[0], found)
    for child in children[1:]:
        # In ``input.steps`` the field belongs to ``input``, not to the saga's steps.
        if not (chained and _is_field(child, "steps")):
            _walk(child, found)


# Node types whose first child is evaluated first against the current value, so in
# ``steps.a[0]`` or ``steps.a[*]`` the step read is still the leftmost field ``a``.
_LEFT_FIRST = frozenset(
    {"subexpression", "index_expression", "projection", "value_projection",
     "filter_projection", "flatten"}
)


def _leading_field(node: Any) -> str | None:
    while isinstance(node, dict) and node.get("type") in _LEFT_FIRST and node.get("children"):
        node = node["children"][0]
    if isinstance(node, dict) and node.get("type") == "field":
        return str(node["value"])
    return None


def _is_field(node: Any, name: str) -> bool:
    return isinstance(node, dict) and node.get("type") == "field" and node.get("value") == name


def render(value: Any, context: dict[str, Any]) -> Any:
    """Render a body or header value: exact placeholders keep their JSON type."""
    if isinstance(value, str):
        return _render_string(value, context, encode=False)
    if isinstance(value, dict):
        return {key: render(item, context) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [render(item, context) for item in value]
    return value


def render_path(path: str, context: dict[str, Any]) -> str:
    """Render a URL path; each inserted value is percent-encoded, ``/`` included."""
    rendered = _render_string(path, context, encode=True)
    assert isinstance(rendered, str)
    return rendered


def render_headers(headers: dict[str, str], context: dict[str, Any]) -> dict[str, str]:
    out: dict[str, str] = {}
    for name, template in headers.items():
        value = _render_string(template, context, encode=False)
        out[name] = value if isinstance(value, str) else _compact(value)
    return out


def _render_string(text: str, context: dict[str, Any], encode: bool) -> Any:
    if "${" not in text:
        return text
    template = _template(text)
    if template.whole is not None and not encode:
        return template.whole.search(context)
    pieces: list[str] = []
    for part in template.parts:
        if isinstance(part, str):
            pieces.append(part)
            continue
        value = part.search(context)
        if encode and value is None:
            raise TemplateError(f"placeholder ${{{part.text}}} in path is null")
        inserted = value if isinstance(value, str) else _compact(value)
        pieces.append(quote(inserted, safe="") if encode else inserted)
    return "".join(pieces)


@dataclass(frozen=True, slots=True)
class _Template:
    whole: Expression | None  # the text is exactly this one placeholder
    parts: tuple[str | Expression, ...]  # literal text and placeholders, in order


@lru_cache(maxsize=4096)
def _template(text: str) -> _Template:
    """``text`` split once into literal pieces and compiled placeholders."""
    parts: list[str | Expression] = []
    end = 0
    for match in _PLACEHOLDER.finditer(text):
        if match.start() > end:
            parts.append(text[end:match.start()])
        parts.append(compile_expression(match.group(1)))
        end = match.end()
    if end < len(text):
        parts.append(text[end:])
    whole = parts[0] if len(parts) == 1 and isinstance(parts[0], Expression) else None
    return _Template(whole, tuple(parts))


def _compact(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def truthy(value: Any) -> bool:
    """JMESPath truthiness: false, null, empty string, list and object are false."""
    return not is_false(value)
