"""The pieces of tracing that need no Ray: span planning, ids, settings, the no-op when off."""

from __future__ import annotations

import subprocess
import sys

import pytest

from coordinator.core import events as ev
from coordinator.core.decide import interrupted
from coordinator.core.outcomes import Reply
from coordinator.core.replay import replay
from coordinator.core.simulate import Simulation, ok
from coordinator.telemetry import api_tracing, host_tracing, otel_env, tracing_enabled
from coordinator.telemetry.history import PlannedSpan, plan_spans
from coordinator.telemetry.host import url_attributes
from coordinator.telemetry.ids import SagaIds
from coordinator.telemetry.setup import _sampler, build_provider
from tests.conftest import ROOT
from tests.core.conftest import saga

IDS = SagaIds(trace_id=0x1234, parent_span_id=0xAB, saga_span_id=0xCD, trace_flags=1,
              start_ns=999_000_000_000)
THREE_STEPS = """
defaults: {retry: {max_attempts: 3, initial_backoff: 1s, jitter: 0}}
steps:
  - name: a
    action: {service: s, path: /a}
    compensation: {service: s, path: /a/undo}
  - name: b
    action: {service: s, path: /b}
    compensation: {service: s, path: /b/undo}
  - name: c
    action: {service: s, path: /c}
"""


def by_name(spans: list[PlannedSpan]) -> dict[str, PlannedSpan]:
    named = {span.name: span for span in spans}
    assert len(named) == len(spans), [s.name for s in spans]
    return named


def test_a_compensated_saga_plans_steps_compensations_and_their_links() -> None:
    definition = saga(THREE_STEPS)
    replies = {"/c": Reply(status_code=409, body={"detail": "card 4111 declined"})}
    sim = Simulation(definition, lambda i: replies.get(i.request.path, ok()))
    sim.record(ev.HostAssigned(at=sim.now, host="h1"))
    sim.run()
    spans = by_name(plan_spans(definition, IDS, sim.journal))
    assert set(spans) == {"saga test_saga", "step a", "step b", "step c",
                          "compensate b", "compensate a"}
    root = spans["saga test_saga"]
    assert (root.span_id, root.parent_id, root.start_ns) == (0xCD, 0xAB, IDS.start_ns)
    assert root.error == "compensated: step_failed"
    assert [e.name for e in root.events] == ["host assigned", "compensation triggered"]
    for name in ("a", "b"):
        step, undo = spans[f"step {name}"], spans[f"compensate {name}"]
        assert step.span_id == IDS.phase_span_id(name, "action", 0)
        assert undo.span_id == IDS.phase_span_id(name, "compensation", 0)
        assert undo.links == [step.span_id] and step.parent_id == undo.parent_id == 0xCD
        assert step.attributes["saga.step.status"] == "succeeded"
    failed = spans["step c"]
    # The reason names the outcome and status, never the reply body.
    assert failed.error == "business_failure: HTTP 409"
    assert "4111" not in repr([s.__dict__ for s in spans.values()])


def test_no_step_span_starts_before_its_saga_span() -> None:
    """The API journals a start's opening round at a time read just before the saga
    span's start; a host on another node may run behind too."""
    definition = saga(THREE_STEPS)
    sim = Simulation(definition, lambda _: ok(), now=IDS.start_ns / 1e9 - 0.002)
    sim.run()
    spans = by_name(plan_spans(definition, IDS, sim.journal))
    assert spans["step a"].start_ns == IDS.start_ns == spans["saga test_saga"].start_ns
    assert all(span.start_ns >= IDS.start_ns for span in spans.values())


def test_a_retry_is_an_event_on_its_step_with_the_due_time() -> None:
    definition = saga(THREE_STEPS)
    calls: list[str] = []

    def respond(invoke: object) -> Reply:
        path = invoke.request.path  # type: ignore[attr-defined]
        calls.append(path)
        return Reply(status_code=503) if calls.count(path) == 1 and path == "/b" else ok()

    sim = Simulation(definition, respond)
    sim.run()
    step = by_name(plan_spans(definition, IDS, sim.journal))["step b"]
    [retry] = step.events
    assert retry.name == "retry scheduled" and retry.attributes["saga.attempt"] == 2
    assert retry.attributes["saga.retry.delay_ms"] == 1000.0
    assert step.attributes["saga.attempts"] == 2 and step.error is None


def test_an_attempt_lost_with_its_host_is_planned_under_the_id_it_was_sent_with() -> None:
    definition = saga(THREE_STEPS)
    sim = Simulation(definition, lambda i: ok())
    sim.decide_round()  # step a sent, no reply yet
    sim.now += 5
    sim.inflight.clear()
    sim.state = replay(definition, sim.journal)
    sim.record(ev.HostAssigned(at=sim.now, host="h2"))  # the runner journals this first
    for event in interrupted(sim.state, sim.now):
        sim.record(event)
    sim.run()
    spans = plan_spans(definition, IDS, sim.journal)
    [lost] = [s for s in spans if s.kind == "client"]
    assert lost.span_id == IDS.attempt_span_id("a", "action", 1)
    assert lost.parent_id == IDS.phase_span_id("a", "action", 0)
    assert lost.attributes["saga.outcome"] == "unknown" and lost.attributes["saga.interrupted"]
    assert lost.end_ns - lost.start_ns == 5_000_000_000


def test_a_resumed_execution_emits_only_what_ended_since_and_never_the_saga_twice() -> None:
    definition = saga(THREE_STEPS, defaults={"compensation_retry": {"max_attempts": 1}})
    failing = {"undo": True}

    def respond(invoke: object) -> Reply:
        path = invoke.request.path  # type: ignore[attr-defined]
        if path == "/c":
            return Reply(status_code=409)
        if path == "/b/undo" and failing["undo"]:
            return Reply(status_code=500)
        return ok()

    sim = Simulation(definition, respond)
    assert sim.run().status == "failed"
    first = by_name(plan_spans(definition, IDS, sim.journal))
    assert first["compensate b"].error == "retryable: HTTP 500"
    assert "saga test_saga" in first
    failing["undo"] = False
    sim.resume()
    assert sim.run().status == "compensated"
    second = by_name(plan_spans(definition, IDS, sim.journal))
    assert set(second) == {"compensate b", "compensate a"}
    assert second["compensate b"].span_id != first["compensate b"].span_id


def test_a_skipped_step_is_a_span_that_says_so() -> None:
    definition = saga(THREE_STEPS.replace("  - name: b\n", "  - name: b\n    when: input.go\n"))
    sim = Simulation(definition, lambda i: ok(), input={"go": False})
    sim.run()
    skipped = by_name(plan_spans(definition, IDS, sim.journal))["step b"]
    assert skipped.attributes["saga.step.status"] == "skipped"
    assert skipped.start_ns == skipped.end_ns


def test_journaled_ids_parse_and_bad_ones_mean_no_trace() -> None:
    trace = {"traceparent": f"00-{'1' * 32}-{'2' * 16}-01", "trace_id": "1" * 32,
             "saga_span_id": "3" * 16, "saga_start_ns": "42"}
    ids = SagaIds.from_trace(trace)
    assert ids is not None
    assert (ids.parent_span_id, ids.saga_span_id, ids.start_ns) == (
        int("2" * 16, 16), int("3" * 16, 16), 42)
    assert SagaIds.from_trace({"traceparent": trace["traceparent"]}) is None  # caller's only
    assert SagaIds.from_trace({**trace, "saga_span_id": "xyz"}) is None
    assert SagaIds.from_trace(None) is None


def test_tracing_is_on_only_with_an_endpoint_and_not_disabled() -> None:
    endpoint = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}
    assert tracing_enabled(endpoint)
    assert tracing_enabled({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://c:4318/v1/traces"})
    assert not tracing_enabled({})
    assert not tracing_enabled({**endpoint, "OTEL_SDK_DISABLED": "true"})
    assert not tracing_enabled({**endpoint, "OTEL_TRACES_EXPORTER": "none"})
    assert otel_env({**endpoint, "PATH": "/bin", "FLIGHTS_TOKEN": "x"}) == endpoint
    assert host_tracing({}, []) is None and api_tracing({}) is None


def test_tracing_off_does_not_even_import_the_sdk() -> None:
    code = ("import sys, coordinator.server, coordinator.hosts, services.runner; "
            "assert not [m for m in sys.modules if m.startswith('opentelemetry')]")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, timeout=120)


@pytest.mark.parametrize(("name", "description"), [
    ("always_off", "AlwaysOffSampler"),
    ("parentbased_always_on", "ParentBased{root:AlwaysOnSampler"),
    ("traceidratio", "TraceIdRatioBased{0.25}"),
    ("nonsense", "ParentBased{root:AlwaysOnSampler"),
])
def test_the_sampler_follows_otel_traces_sampler(name: str, description: str) -> None:
    sampler = _sampler({"OTEL_TRACES_SAMPLER": name, "OTEL_TRACES_SAMPLER_ARG": "0.25"})
    assert sampler.get_description().startswith(description)


def test_the_resource_names_the_service_whatever_otel_service_name_says() -> None:
    provider = build_provider("sagaray-host", {
        "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:9", "OTEL_SERVICE_NAME": "other",
        "OTEL_RESOURCE_ATTRIBUTES": "deployment.environment.name=prod,team=pay%20ments"})
    try:
        attributes = provider.resource.attributes
        assert attributes["service.name"] == "sagaray-host"
        assert attributes["deployment.environment.name"] == "prod"
        assert attributes["team"] == "pay ments"
    finally:
        provider.shutdown()


def test_client_span_urls_never_carry_credentials() -> None:
    assert url_attributes("https://user:pw@pay.example:8443/charges?x=1") == {
        "url.full": "https://REDACTED:REDACTED@pay.example:8443/charges?x=1",
        "server.address": "pay.example", "server.port": 8443}
    assert url_attributes("http://127.0.0.1/a")["server.port"] == 80
