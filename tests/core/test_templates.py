"""Templates and conditions: what an expression's value means, checked against jmespath."""

from __future__ import annotations

import json
from typing import Any

import jmespath
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from coordinator.core.simulate import Simulation, ok
from coordinator.core.templates import (
    TemplateError,
    compile_expression,
    render,
    render_headers,
    render_path,
    truthy,
)
from tests.core.conftest import saga

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=3),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner,
                                                                 max_size=3),
    max_leaves=6)


@given(JSON)
def test_truthy_is_jmespath_truthiness(value: Any) -> None:
    # jmespath's `||` takes its right side exactly when the left one is false-like.
    fallback = {"fallback": True}
    chosen = jmespath.search("value || fallback", {"value": value, "fallback": fallback})
    assert truthy(value) is (chosen is not fallback)


def test_zero_is_true() -> None:
    assert truthy(0) and truthy(0.0) and truthy("0") and not truthy(False)


def test_step_whose_condition_is_zero_runs() -> None:
    definition = saga("""
name: counted
version: 1
steps:
  - {name: a, when: input.count, action: {service: s, path: /a}}
""")
    for count, status in ((0, "succeeded"), (False, "skipped"), (None, "skipped")):
        state = Simulation(definition, lambda _: ok(), input={"count": count}).run()
        assert state.steps["a"].status == status, count


# -- expressions evaluated without jmespath's interpreter (field_paths) ----------------

NAMES = ["a", "b", "input", "steps"]
LITERALS = ["''", "`0`", "`[]`", "`{}`", "`\"x\"`", "`false`", "`null`", "`1.5`"]
CONTEXTS = st.recursive(
    st.none() | st.booleans() | st.integers(-1, 1) | st.sampled_from(["", "s"]),
    lambda inner: st.lists(inner, max_size=2) | st.dictionaries(st.sampled_from(NAMES), inner,
                                                                 max_size=4),
    max_leaves=10)
CHAINS = st.lists(st.sampled_from(NAMES), min_size=1, max_size=4).map(".".join)
EXPRESSIONS = st.recursive(
    CHAINS | st.sampled_from(LITERALS),
    lambda inner: st.tuples(inner, st.sampled_from(["||", "&&"]), inner).map(
        lambda t: f"({t[0]} {t[1]} {t[2]})") | st.tuples(inner, CHAINS).map(
        lambda t: f"({t[0]}).{t[1]}"),
    max_leaves=4)


@settings(max_examples=500)
@given(EXPRESSIONS, CONTEXTS)
def test_fast_expressions_equal_jmespath(text: str, context: Any) -> None:
    expression = compile_expression(text)
    assert expression.fast is not None, text
    expected = jmespath.search(text, context)
    # JSON text tells 0 from false and 1 from 1.0, which == does not.
    assert json.dumps(expression.search(context)) == json.dumps(expected), (text, context)


def test_other_shapes_stay_with_jmespath() -> None:
    for text in ("a[0]", "a.b[*].c", "length(a)", "a == `1`", "@", "a.*", "!a", "a | b"):
        expression = compile_expression(text)
        assert expression.fast is None, text
    context = {"a": [{"c": 1}, {"c": 2}], "b": {"c": 3}}
    assert compile_expression("a[*].c").search(context) == [1, 2]


def test_rendered_strings_equal_the_placeholders_values() -> None:
    context = {"input": {"id": "A/1", "n": 0, "tags": ["x"]}, "steps": {}}
    assert render("${input.n}", context) == 0
    assert render("id ${input.id}, n ${input.n}, ${input.tags}!", context) == \
        'id A/1, n 0, ["x"]!'
    assert render_path("/o/${input.id}/${input.n}", context) == "/o/A%2F1/0"
    assert render_headers({"X": "${input.tags}"}, context) == {"X": '["x"]'}
    with pytest.raises(TemplateError, match=r"placeholder \$\{input.none\} in path is null"):
        render_path("/o/${input.none}", context)
