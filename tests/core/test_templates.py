"""Templates and conditions: what an expression's value means, checked against jmespath."""

from __future__ import annotations

from typing import Any

import jmespath
from hypothesis import given
from hypothesis import strategies as st

from coordinator.core.simulate import Simulation, ok
from coordinator.core.templates import truthy
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

