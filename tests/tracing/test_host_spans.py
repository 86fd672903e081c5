"""A host's attempt spans, built whole after the reply: ids, parent, header, sampling.

No Ray and no services: a processor that keeps what it is given takes the spans, and
``send`` stands in for the invoker (it calls ``on_send`` as the invoker does). The real path,
through an OTLP receiver and the demo services, is in ``test_traces.py``.
"""

from __future__ import annotations

from typing import Any

import pytest
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor
from opentelemetry.trace import SpanKind, StatusCode

from coordinator.core.commands import Invoke
from coordinator.core.outcomes import Reply
from coordinator.core.simulate import Simulation, ok
from coordinator.telemetry.host import HostTracing
from coordinator.telemetry.ids import SagaIds
from coordinator.telemetry.setup import ExportingProvider, _sampler
from tests.core.conftest import saga

TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
ONE_STEP = """
steps:
  - name: a
    action: {service: s, method: PUT, path: /a}
"""


class Kept(SpanProcessor):
    def __init__(self) -> None:
        self.spans: list[ReadableSpan] = []

    def on_end(self, span: ReadableSpan) -> None:
        self.spans.append(span)


Traced = tuple[HostTracing, Kept]


def traced(sampler: str) -> Traced:
    provider = ExportingProvider(sampler=_sampler({"OTEL_TRACES_SAMPLER": sampler}))
    kept = Kept()
    provider.add_span_processor(kept)
    return HostTracing(provider, [saga(ONE_STEP)]), kept


@pytest.fixture
def sampled() -> Traced:
    # Built outside the event loop: the SDK's resource detection takes a lock.
    return traced("parentbased_always_on")


def first_attempt(flags: str = "01") -> tuple[Any, Invoke, SagaIds]:
    sim = Simulation(saga(ONE_STEP), lambda i: ok())
    sim.state.trace = {"traceparent": f"00-{TRACE_ID}-00f067aa0ba902b7-{flags}",
                       "trace_id": TRACE_ID, "saga_span_id": "b7ad6b7169203331"}
    sim.decide_round()
    ids = SagaIds.from_trace(sim.state.trace)
    assert ids is not None
    return sim.state, sim.inflight[0], ids


async def send_through(tracing: HostTracing, state: Any, command: Invoke,
                       reply: Reply) -> dict[str, str]:
    headers: dict[str, str] = {}

    async def send() -> Reply:
        tracing.on_send("http://user:pw@127.0.0.1:9000/a?x=1", headers)
        return reply

    assert await tracing.around_attempt(state, command, send) is reply
    return headers


async def test_an_attempt_is_one_client_span_under_its_step_named_in_its_request(
        sampled: Traced) -> None:
    tracing, kept = sampled
    state, command, ids = first_attempt()
    headers = await send_through(tracing, state, command, ok())
    [span] = kept.spans
    assert span.kind is SpanKind.CLIENT and span.name == "PUT"
    assert span.context.trace_id == ids.trace_id
    assert span.context.span_id == ids.attempt_span_id("a", "action", 1)
    assert span.parent is not None
    assert span.parent.span_id == ids.phase_span_id("a", "action", 0)
    assert headers["traceparent"] == f"00-{TRACE_ID}-{span.context.span_id:016x}-01"
    attributes = dict(span.attributes or {})
    assert attributes["saga.outcome"] == "succeeded"
    assert attributes["http.response.status_code"] == 200
    assert attributes["url.full"] == "http://REDACTED:REDACTED@127.0.0.1:9000/a?x=1"
    assert span.status.status_code is StatusCode.UNSET
    assert span.start_time is not None and span.end_time is not None
    assert span.start_time <= span.end_time
    assert span.instrumentation_scope is not None
    assert span.instrumentation_scope.name == "sagaray.host"


async def test_a_failed_attempt_is_an_error_span_with_the_reason(sampled: Traced) -> None:
    tracing, kept = sampled
    state, command, _ = first_attempt()
    await send_through(tracing, state, command, Reply(status_code=422))
    [span] = kept.spans
    assert span.status.status_code is StatusCode.ERROR
    assert span.status.description == "business_failure: HTTP 422"
    assert (span.attributes or {})["error.type"] == "422"


async def test_an_abandoned_attempt_still_ends_its_span(sampled: Traced) -> None:
    tracing, kept = sampled
    state, command, _ = first_attempt()

    async def send() -> Reply:
        raise TimeoutError

    with pytest.raises(TimeoutError):
        await tracing.around_attempt(state, command, send)
    [span] = kept.spans
    assert span.status.description == "attempt abandoned: TimeoutError"


@pytest.fixture(params=[("parentbased_always_on", "00"), ("always_off", "01")],
                ids=["parent-not-sampled", "always-off"])
def unsampled(request: pytest.FixtureRequest) -> tuple[Traced, str]:
    sampler, flags = request.param
    return traced(sampler), flags


async def test_an_unsampled_attempt_exports_nothing_but_passes_its_context_on(
        unsampled: tuple[Traced, str]) -> None:
    (tracing, kept), flags = unsampled
    state, command, ids = first_attempt(flags)
    headers = await send_through(tracing, state, command, ok())
    assert kept.spans == []
    span_id = ids.attempt_span_id("a", "action", 1)
    assert headers["traceparent"] == f"00-{TRACE_ID}-{span_id:016x}-00"


async def test_outside_an_attempt_on_send_adds_no_header(sampled: Traced) -> None:
    tracing, _ = sampled
    headers: dict[str, str] = {}
    tracing.on_send("http://127.0.0.1:9000/a", headers)
    assert headers == {}
