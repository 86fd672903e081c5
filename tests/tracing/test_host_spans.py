"""A host's attempt spans, built whole after the reply: ids, parent, header, sampling.

No Ray and no services: a processor that keeps what it is given takes the spans, and
``send`` stands in for the invoker (it calls ``on_send`` as the invoker does). The real path,
through an OTLP receiver and the demo services, is in ``test_traces.py``.
"""

from __future__ import annotations

import random
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor
from opentelemetry.sdk.trace.sampling import Decision, Sampler, SamplingResult
from opentelemetry.trace import (
    NonRecordingSpan,
    SpanContext,
    SpanKind,
    StatusCode,
    TraceFlags,
    TraceState,
)
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from coordinator.core.commands import Invoke
from coordinator.core.outcomes import Reply
from coordinator.core.simulate import Simulation, ok
from coordinator.telemetry.host import HostTracing, inject_trace_context
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


class CountingSampler(Sampler):
    """Not one of the samplers OTEL_TRACES_SAMPLER names: asked for every span."""

    def __init__(self) -> None:
        self.asked = 0

    def should_sample(self, *args: Any, **kwargs: Any) -> SamplingResult:
        self.asked += 1
        return SamplingResult(Decision.RECORD_AND_SAMPLE)

    def get_description(self) -> str:
        return "counting"


def span_contexts(tracing: HostTracing, trace_ids: list[int], flags: int
                  ) -> list[SpanContext]:
    out = []
    for trace_id in trace_ids:
        ids = SagaIds(trace_id=trace_id, parent_span_id=7, saga_span_id=9, trace_flags=flags)
        parent = SpanContext(trace_id, 9, is_remote=False, trace_flags=TraceFlags(flags))
        for span_id in (11, 12):  # two spans under one parent: the second from the memo
            out.append(tracing._child(ids, parent, span_id, "s", SpanKind.CLIENT, {}))
    return out


@pytest.mark.parametrize("name", ["traceidratio", "parentbased_traceidratio",
                                  "parentbased_always_off", "always_on"])
def test_remembered_sampling_decisions_are_the_samplers_own(name: str) -> None:
    provider = ExportingProvider(sampler=_sampler({"OTEL_TRACES_SAMPLER": name,
                                                   "OTEL_TRACES_SAMPLER_ARG": "0.5"}))
    tracing = HostTracing(provider, [saga(ONE_STEP)])
    rng = random.Random(3)
    trace_ids = [rng.getrandbits(128) for _ in range(200)]
    for flags in (0, 1):
        got = [c.trace_flags.sampled for c in span_contexts(tracing, trace_ids, flags)]
        expected = [provider.sampler.should_sample(
            trace.set_span_in_context(NonRecordingSpan(SpanContext(
                t, 9, is_remote=False, trace_flags=TraceFlags(flags)))), t, "s").decision
            is Decision.RECORD_AND_SAMPLE for t in trace_ids for _ in (11, 12)]
        assert got == expected
    if name == "traceidratio":  # not parent-based: the ratio decides, per trace
        assert 0 < sum(got) < len(got)


def test_another_sampler_is_asked_for_every_span() -> None:
    sampler = CountingSampler()
    tracing = HostTracing(ExportingProvider(sampler=sampler), [saga(ONE_STEP)])
    span_contexts(tracing, [5, 6], 1)
    assert sampler.asked == 4


@pytest.mark.parametrize("flags", [0, 1])
@pytest.mark.parametrize("state", [None, "vendor=a1,other=b2"])
def test_attempt_headers_are_the_propagators(flags: int, state: str | None) -> None:
    trace_state = TraceState.from_header([state]) if state else None
    context = SpanContext(random.getrandbits(128), random.getrandbits(64), is_remote=False,
                          trace_flags=TraceFlags(flags), trace_state=trace_state)
    ours: dict[str, str] = {"Idempotency-Key": "k"}
    inject_trace_context(ours, context)
    theirs: dict[str, str] = {"Idempotency-Key": "k"}
    TraceContextTextMapPropagator().inject(
        theirs, trace.set_span_in_context(NonRecordingSpan(context)))
    assert ours == theirs
    invalid: dict[str, str] = {}
    inject_trace_context(invalid, SpanContext(0, 0, is_remote=False))
    assert invalid == {}
