"""Saga definitions: default resolution, durations and serialisation round trips."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from coordinator.core.definition import RetryPolicy, SagaDefinition
from coordinator.core.durations import format_duration, parse_duration

ROOT = Path(__file__).resolve().parents[2]
RETRY = {"max_attempts": 3, "initial_backoff": 0.1, "max_backoff": 10.0, "multiplier": 2.0,
         "jitter": 0.2}
COMPENSATION_RETRY = {"max_attempts": 10, "initial_backoff": 0.2, "max_backoff": 30.0,
                      "multiplier": 2.0, "jitter": 0.2}


def load(name: str) -> SagaDefinition:
    return SagaDefinition.model_validate(yaml.safe_load((ROOT / "sagas" / name).read_text()))


def minimal(**step: Any) -> dict[str, Any]:
    return {"name": "s", "version": 1,
            "steps": [{"name": "a", "action": {"service": "svc", "path": "/a"}, **step}]}


def test_trip_booking_resolves_every_default() -> None:
    trip = load("trip_booking.yaml")
    assert (trip.name, trip.version, trip.placement, trip.timeout) == ("trip_booking", 1,
                                                                       "shared", 120.0)
    assert trip.input_schema is not None and trip.input_schema["required"] == ["trip_id",
                                                                                "customer"]
    assert trip.defaults.model_dump() == {"timeout": 5.0, "retry": RETRY,
                                          "compensation_retry": COMPENSATION_RETRY}
    steps = {step.name: step for step in trip.steps}
    assert list(steps) == ["book_flight", "book_hotel", "book_car", "confirm", "send_itinerary"]
    expected = {
        "book_flight": ((), 5.0, 3, False, True),
        "book_hotel": ((), 5.0, 3, False, True),
        "book_car": (("book_flight", "book_hotel"), 2.0, 5, False, True),
        "confirm": (("book_car",), 5.0, 3, True, False),
        "send_itinerary": (("confirm",), 5.0, 20, False, False),
    }
    for name, (depends_on, timeout, attempts, pivot, compensates) in expected.items():
        step = steps[name]
        assert step.depends_on == depends_on, name
        assert step.timeout == timeout, name
        assert step.retry.model_dump() == {**RETRY, "max_attempts": attempts}, name
        assert step.compensation_retry.model_dump() == COMPENSATION_RETRY, name
        assert step.pivot is pivot, name
        assert (step.compensation is not None) is compensates, name


def test_trip_booking_calls_are_kept_as_templates() -> None:
    trip = load("trip_booking.yaml")
    flight = trip.step_map["book_flight"]
    assert flight.action.model_dump() == {
        "service": "flights", "method": "POST", "path": "/bookings",
        "body": {"trip": "${input.trip_id}", "passenger": "${input.customer}"}, "headers": {},
    }
    assert flight.compensation is not None
    assert flight.compensation.method == "DELETE"
    assert flight.compensation.path == "/bookings/${steps.book_flight.output.booking_id}"
    assert trip.step_map["book_car"].when == "input.car"
    assert trip.graph.pivot == "confirm"


def test_order_fulfillment_is_a_chain_ending_in_a_pivot_and_a_notification() -> None:
    order = load("order_fulfillment.yaml")
    assert [(s.name, s.depends_on) for s in order.steps] == [
        ("reserve_inventory", ()),
        ("charge_payment", ("reserve_inventory",)),
        ("create_shipment", ("charge_payment",)),
        ("confirm_order", ("create_shipment",)),
        ("notify", ("confirm_order",)),
    ]
    assert order.graph.pivot == "confirm_order"
    assert [s.name for s in order.steps if s.compensation] == [
        "reserve_inventory", "charge_payment", "create_shipment"]


def test_a_step_without_depends_on_follows_the_step_before_it() -> None:
    raw = minimal()
    raw["steps"] += [{"name": "b", "action": {"service": "svc", "path": "/b"}},
                     {"name": "c", "depends_on": [], "action": {"service": "svc", "path": "/c"}}]
    definition = SagaDefinition.model_validate(raw)
    assert [s.depends_on for s in definition.steps] == [(), ("a",), ()]


def test_defaults_layer_builtin_then_saga_then_step() -> None:
    raw = minimal(retry={"jitter": 0.0})
    raw["defaults"] = {"retry": {"max_attempts": 7}, "compensation_retry": {"multiplier": 3}}
    step = SagaDefinition.model_validate(raw).steps[0]
    assert step.retry == RetryPolicy(**{**RETRY, "max_attempts": 7, "jitter": 0.0})
    assert step.compensation_retry == RetryPolicy(**{**COMPENSATION_RETRY, "multiplier": 3.0})


def test_a_broken_default_is_reported_once_not_for_every_step() -> None:
    raw = minimal()
    raw["steps"].append({"name": "b", "action": {"service": "svc", "path": "/b"}})
    raw["defaults"] = {"timeout": "5 parsecs", "retry": {"max_attempts": 0}}
    with pytest.raises(ValidationError) as caught:
        SagaDefinition.model_validate(raw)
    locs = sorted(error["loc"] for error in caught.value.errors())
    assert locs == [("defaults", "retry", "max_attempts"), ("defaults", "timeout")]


def test_defaults_given_as_a_policy_object_still_merge_with_step_overrides() -> None:
    raw = minimal(retry={"max_attempts": 5})
    raw["defaults"] = {"retry": RetryPolicy(max_attempts=9, jitter=0.0)}
    step = SagaDefinition.model_validate(raw).steps[0]
    assert (step.retry.max_attempts, step.retry.jitter) == (5, 0.0)


@pytest.mark.parametrize(("text", "seconds"), [
    ("100ms", 0.1), ("2m", 120.0), ("5s", 5.0), ("1.5h", 5400.0), (" 250 ms ", 0.25),
    (3, 3.0), (0.5, 0.5), ("0s", 0.0),
])
def test_durations_parse_to_seconds(text: object, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("bad", ["5 parsecs", "5", "-1s", "1e3s", "", True, None, -2,
                                 math.inf, math.nan, [1]])
def test_bad_durations_are_rejected_naming_the_value(bad: object) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration(bad)


def test_a_bad_step_timeout_names_the_value() -> None:
    with pytest.raises(ValidationError, match="unparsable duration '5 parsecs'"):
        SagaDefinition.model_validate(minimal(timeout="5 parsecs"))


@pytest.mark.parametrize("zero", ["0s", 0])
def test_timeouts_must_be_positive(zero: object) -> None:
    with pytest.raises(ValidationError, match="greater than 0"):
        SagaDefinition.model_validate(minimal(timeout=zero))


@pytest.mark.parametrize(("seconds", "text"), [
    (0.1, "100ms"), (5.0, "5s"), (120.0, "120s"), (1.1, "1.1s"), (0.0001, "0.1ms"),
    (1234.567, "1234.567s"), (0.0, "0s"),
])
def test_durations_format_without_exponents(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


@given(st.floats(min_value=0, max_value=1e9, allow_nan=False, allow_infinity=False))
def test_formatted_durations_parse_back_exactly(seconds: float) -> None:
    assert parse_duration(format_duration(seconds)) == seconds


DURATIONS = st.one_of(
    st.integers(1, 10_000).map(lambda n: f"{n}ms"),
    st.integers(1, 600).map(lambda n: f"{n}s"),
    st.floats(0.001, 1000, allow_nan=False, allow_infinity=False),
)
RETRIES = st.fixed_dictionaries({}, optional={
    "max_attempts": st.integers(1, 50), "initial_backoff": DURATIONS, "max_backoff": DURATIONS,
    "multiplier": st.floats(1, 10), "jitter": st.floats(0, 1),
})
JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-1000, 1000) | st.text(max_size=8)
    | st.just("${input.id}"),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner,
                                                                 max_size=3),
    max_leaves=6,
)


def calls(step: str) -> st.SearchStrategy[dict[str, Any]]:
    return st.fixed_dictionaries(
        {"service": st.sampled_from(["svc", "other"]),
         "path": st.sampled_from(["/x", "/x/${input.id}", f"/x/${{steps.{step}.output.id}}"])},
        optional={"method": st.sampled_from(["GET", "post", "DELETE"]), "body": JSON,
                  "headers": st.dictionaries(st.sampled_from(["X-A", "X-B"]),
                                             st.sampled_from(["v", "${execution.id}"]))},
    )


@st.composite
def raw_definitions(draw: st.DrawFn) -> dict[str, Any]:
    steps: list[dict[str, Any]] = []
    for index in range(draw(st.integers(1, 5))):
        name = f"s{index}"
        step: dict[str, Any] = {"name": name, "action": draw(calls("s0"))}
        if index and draw(st.booleans()):
            step["depends_on"] = draw(st.lists(st.sampled_from([s["name"] for s in steps]),
                                               unique=True))
        optional = {"timeout": DURATIONS, "retry": RETRIES, "compensation_retry": RETRIES,
                    "when": st.just("input.flag"), "compensation": calls(name),
                    "retry_on": st.lists(st.sampled_from([503, "5xx", "timeout"]), max_size=2),
                    "success_status": st.lists(st.sampled_from([200, "2xx"]), max_size=2)}
        for key, strategy in optional.items():
            if draw(st.booleans()):
                step[key] = draw(strategy)
        steps.append(step)
    raw: dict[str, Any] = {"name": "generated", "version": draw(st.integers(1, 9)),
                           "steps": steps}
    if draw(st.booleans()):
        raw["defaults"] = {"timeout": draw(DURATIONS), "retry": draw(RETRIES)}
    if draw(st.booleans()):
        raw["timeout"] = draw(DURATIONS)
    return raw


@settings(max_examples=60, deadline=None)
@given(raw_definitions())
def test_a_dumped_definition_validates_back_to_itself(raw: dict[str, Any]) -> None:
    definition = SagaDefinition.model_validate(raw)
    dumped = definition.model_dump(mode="json")
    assert SagaDefinition.model_validate(dumped) == definition
    assert yaml.safe_load(yaml.safe_dump(dumped)) == dumped
