"""Tracing in a host process: attempt spans around each send, saga spans at the end.

:class:`HostTracing` plugs into the engine from outside, as Temporal's
interceptors do: ``around_attempt`` is the runner's attempt hook, ``on_send``
the invoker's last look at a request, ``execution_ended`` the host's note that a
runner finished. The engine itself knows nothing of OpenTelemetry.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from urllib.parse import urlsplit, urlunsplit

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.trace import (
    Link,
    NonRecordingSpan,
    Span,
    SpanContext,
    SpanKind,
    Status,
    StatusCode,
    TraceFlags,
    TraceState,
)
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from coordinator import __version__
from coordinator.core import events as ev
from coordinator.core.commands import Invoke
from coordinator.core.definition import SagaDefinition
from coordinator.core.outcomes import Reply, classify_action, classify_compensation
from coordinator.core.state import ExecutionState
from coordinator.telemetry.history import (
    Attributes,
    PlannedSpan,
    failure_reason,
    plan_spans,
    saga_attributes,
)
from coordinator.telemetry.ids import SagaIds, attempt_parent, span_phase
from coordinator.telemetry.setup import flush, host_provider, preset_span_id

log = logging.getLogger(__name__)
# Trace context only: W3C baggage from the caller is not passed on to services.
_PROPAGATOR = TraceContextTextMapPropagator()
_DEFAULT_PORTS = {"http": 80, "https": 443}
_KINDS = {"internal": SpanKind.INTERNAL, "client": SpanKind.CLIENT}


class HostTracing:
    def __init__(self, provider: TracerProvider, definitions: Iterable[SagaDefinition]) -> None:
        self._provider = provider
        self._tracer = provider.get_tracer("sagaray.host", __version__)
        self._definitions = {(d.name, d.version): d for d in definitions}
        self._pending: set[asyncio.Task[None]] = set()

    @classmethod
    def create(cls, env: Mapping[str, str], definitions: Iterable[SagaDefinition]
               ) -> HostTracing:
        return cls(host_provider(env), definitions)

    async def around_attempt(
        self, state: ExecutionState, command: Invoke, send: Callable[[], Awaitable[Reply]]
    ) -> Reply:
        """Send one attempt inside its client span, a child of its step's span."""
        ids = SagaIds.from_trace(state.trace)
        if ids is None:  # started while the API did not trace
            return await send()
        phase = span_phase(command.recovering, command.phase)
        parent = _context(ids, attempt_parent(ids, state, command.step, phase))
        attributes: Attributes = {
            **saga_attributes(state), "saga.step": command.step, "saga.phase": command.phase,
            "saga.attempt": command.attempt, "saga.service": command.request.service,
            "http.request.method": command.request.method,
        }
        if command.recovering:
            attributes["saga.recovering"] = True
        with preset_span_id(ids.attempt_span_id(command.step, command.phase, command.attempt)):
            span = self._tracer.start_span(command.request.method, context=parent,
                                           kind=SpanKind.CLIENT, attributes=attributes)
        try:
            with trace.use_span(span, record_exception=False, set_status_on_exception=False):
                reply = await send()
        except BaseException as error:
            span.set_status(Status(StatusCode.ERROR, f"attempt abandoned: {type(error).__name__}"))
            span.end()
            raise
        self._record(span, state, command, reply)
        span.end()
        return reply

    def on_send(self, url: str, headers: dict[str, str]) -> None:
        """Name the target on the current attempt span and pass its context on."""
        span = trace.get_current_span()
        if span.is_recording():
            span.set_attributes(url_attributes(url))
        _PROPAGATOR.inject(headers)

    def execution_ended(self, state: ExecutionState, history: Sequence[ev.Event]) -> None:
        """Emit the saga's long-lived spans from its history (the journal's events of the
        execution), in a task of their own so the host's finish is not delayed."""
        ids = SagaIds.from_trace(state.trace)
        definition = self._definitions.get((state.saga, state.version))
        if ids is None or definition is None:
            return
        task = asyncio.get_running_loop().create_task(
            self._finish(state.execution_id, definition, ids, history))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def aclose(self) -> None:
        """Wait for pending saga spans and export everything (before the process exits)."""
        if self._pending:
            await asyncio.gather(*self._pending, return_exceptions=True)
        await flush(self._provider)

    async def _finish(self, execution_id: str, definition: SagaDefinition, ids: SagaIds,
                      history: Sequence[ev.Event]) -> None:
        try:
            planned = plan_spans(definition, ids, history)
            # No flush here: a forced export per saga defeats batching (it cost a third
            # of the tracing overhead); spans leave on the batch schedule or at close.
            for span in planned:
                self._emit(ids, span)
        except Exception:
            log.exception("could not emit the spans of execution %s", execution_id)

    def _emit(self, ids: SagaIds, planned: PlannedSpan) -> None:
        flags = TraceFlags(ids.trace_flags)
        links = [Link(SpanContext(ids.trace_id, span_id, is_remote=False, trace_flags=flags))
                 for span_id in planned.links]
        # The saga span's parent lives in the API process; the others' in the journal.
        context = _context(ids, planned.parent_id, remote=planned.parent_id == ids.parent_span_id)
        with preset_span_id(planned.span_id):
            span = self._tracer.start_span(planned.name, context=context, links=links,
                                           kind=_KINDS[planned.kind],
                                           attributes=planned.attributes,
                                           start_time=planned.start_ns)
        for event in planned.events:
            span.add_event(event.name, event.attributes, timestamp=event.at_ns)
        if planned.error is not None:
            span.set_status(Status(StatusCode.ERROR, planned.error))
        span.end(end_time=planned.end_ns)

    def _record(self, span: Span, state: ExecutionState, command: Invoke, reply: Reply) -> None:
        outcome = self._outcome(state, command, reply)
        span.set_attribute("saga.outcome", outcome)
        if reply.status_code is not None:
            span.set_attribute("http.response.status_code", reply.status_code)
        if outcome != "succeeded":
            span.set_attribute("error.type", str(reply.status_code or reply.failure or outcome))
            span.set_status(Status(StatusCode.ERROR,
                                   failure_reason(outcome, reply.status_code, reply.error)))

    def _outcome(self, state: ExecutionState, command: Invoke, reply: Reply) -> str:
        # The runner's judgement, without building its event (and copying the body).
        definition = self._definitions.get((state.saga, state.version))
        if definition is None:
            return "unknown"
        if command.phase == "compensation":
            return classify_compensation(reply)[0]
        return classify_action(definition.step_map[command.step], reply)[0]


def _context(ids: SagaIds, span_id: int, remote: bool = False) -> Context:
    state = TraceState.from_header([ids.tracestate]) if ids.tracestate else None
    parent = SpanContext(ids.trace_id, span_id, is_remote=remote,
                         trace_flags=TraceFlags(ids.trace_flags), trace_state=state)
    return trace.set_span_in_context(NonRecordingSpan(parent))


def url_attributes(url: str) -> Attributes:
    """HTTP client semantic-convention attributes; credentials in the URL are redacted."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    netloc = host if ":" not in host else f"[{host}]"
    if parts.port is not None:
        netloc = f"{netloc}:{parts.port}"
    if parts.username is not None or parts.password is not None:
        netloc = f"REDACTED:REDACTED@{netloc}"
    attributes: Attributes = {
        "url.full": urlunsplit((parts.scheme, netloc, parts.path, parts.query, "")),
        "server.address": host,
    }
    port = parts.port or _DEFAULT_PORTS.get(parts.scheme)
    if port is not None:
        attributes["server.port"] = port
    return attributes
