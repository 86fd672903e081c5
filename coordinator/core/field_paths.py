"""The JMESPath expressions templates use most, evaluated without jmespath's interpreter.

A saga's placeholders are nearly all field chains (``input.order_id``,
``steps.charge.output.id``), sometimes with ``||`` or ``&&`` and a literal default
(``input.faults.charge || ''``). jmespath walks its syntax tree node by node through
a generic visitor for each of them; templating was about a tenth of a host's CPU. For
those shapes :func:`evaluator` builds a plain function from the tree jmespath parsed,
with jmespath's exact semantics (a field of anything but an object is null; ``||`` and
``&&`` use JMESPath's truthiness); any other shape gets None and stays with jmespath.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

Evaluate = Callable[[Any], Any]


def evaluator(node: Any) -> Evaluate | None:
    """A function equal to jmespath's evaluation of the parsed ``node``, or None."""
    if not isinstance(node, dict):
        return None
    kind, children = node.get("type"), node.get("children", [])
    if kind == "field":
        return _field(node["value"])
    if kind == "literal":
        return _constant(node["value"])
    if kind == "subexpression" and children and all(
            isinstance(child, dict) and child.get("type") == "field" for child in children):
        return _keys([child["value"] for child in children])
    parts = [evaluator(child) for child in children]
    if not parts or any(part is None for part in parts):
        return None
    found: list[Evaluate] = [part for part in parts if part is not None]
    if kind == "subexpression":
        return _chain(found)
    if kind == "or_expression" and len(found) == 2:
        return _either(found[0], found[1])
    if kind == "and_expression" and len(found) == 2:
        return _both(found[0], found[1])
    return None


def is_false(value: Any) -> bool:
    """JMESPath's false-like values: false, null, empty string, list and object."""
    # Not ``value in (None, False, ...)``: ``0 == False`` in Python, but 0 is true here.
    return value is None or value is False or value == "" or value == [] or value == {}


def _field(key: str) -> Evaluate:
    def field(value: Any) -> Any:
        return value.get(key) if isinstance(value, dict) else None
    return field


def _constant(value: Any) -> Evaluate:
    # jmespath too hands out the parsed literal itself on every search.
    return lambda _: value


def _chain(steps: list[Evaluate]) -> Evaluate:
    # As jmespath's visit_subexpression: every step sees the previous one's value.
    def chain(value: Any) -> Any:
        for step in steps:
            value = step(value)
        return value
    return chain


def _keys(keys: list[str]) -> Evaluate:
    def walk(value: Any) -> Any:
        for key in keys:
            if not isinstance(value, dict):
                return None
            value = value.get(key)
        return value
    return walk


def _either(left: Evaluate, right: Evaluate) -> Evaluate:
    def either(value: Any) -> Any:
        found = left(value)
        return right(value) if is_false(found) else found
    return either


def _both(left: Evaluate, right: Evaluate) -> Evaluate:
    def both(value: Any) -> Any:
        found = left(value)
        return found if is_false(found) else right(value)
    return both


__all__ = ["Evaluate", "evaluator", "is_false"]
