"""Tracing in a host process: attempt spans around each send, saga spans at the end.

:class:`HostTracing` plugs into the engine from outside, as Temporal's
interceptors do: ``around_attempt`` is the runner's attempt hook, ``on_send``
the invoker's last look at a request, ``execution_ended`` the host's note that a
runner finished. The engine itself knows nothing of OpenTelemetry.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from contextvars import ContextVar
from urllib.parse import urlsplit, urlunsplit

from opentelemetry import trace
from opentelemetry.sdk.trace import Event, ReadableSpan
from opentelemetry.sdk.trace.sampling import (
    Decision,
    ParentBased,
    StaticSampler,
    TraceIdRatioBased,
)
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import (
    Link,
    NonRecordingSpan,
    SpanContext,
    SpanKind,
    Status,
    StatusCode,
    TraceFlags,
    TraceState,
)

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
from coordinator.telemetry.ids import SagaIds, attempt_parent, span_phase, traceparent
from coordinator.telemetry.setup import ExportingProvider, flush, host_provider

log = logging.getLogger(__name__)
_DEFAULT_PORTS = {"http": 80, "https": 443}
_KINDS = {"internal": SpanKind.INTERNAL, "client": SpanKind.CLIENT}
# The attempt being sent in this task: its span's context and attributes (on_send adds
# the URL's), so the invoker's hook needs no live span.
_ATTEMPT: ContextVar[tuple[SpanContext, Attributes] | None] = ContextVar(
    "sagaray_attempt", default=None)


_BY_TRACE_AND_PARENT = (StaticSampler, TraceIdRatioBased, ParentBased)
_DECISIONS_KEPT = 4096


class HostTracing:
    def __init__(self, provider: ExportingProvider,
                 definitions: Iterable[SagaDefinition]) -> None:
        self._provider = provider
        self._scope = InstrumentationScope("sagaray.host", __version__)
        self._definitions = {(d.name, d.version): d for d in definitions}
        self._pending: set[asyncio.Task[None]] = set()
        # The samplers OTEL_TRACES_SAMPLER names decide from the trace id and the parent's
        # flags alone, so a saga's spans need to ask once per parent kind (the sampler was
        # 2.7 % of a host's samples); any other sampler is asked for every span.
        self._decisions: dict[tuple[int, int, bool], bool] | None = (
            {} if isinstance(provider.sampler, _BY_TRACE_AND_PARENT) else None)

    @classmethod
    def create(cls, env: Mapping[str, str], definitions: Iterable[SagaDefinition]
               ) -> HostTracing:
        return cls(host_provider(env), definitions)

    async def around_attempt(
        self, state: ExecutionState, command: Invoke, send: Callable[[], Awaitable[Reply]]
    ) -> Reply:
        """Send one attempt as its client span, a child of its step's span.

        The span is built whole once the reply is in (its id is derived from the
        attempt's identity, so the request names it before it exists)."""
        ids = SagaIds.from_trace(state.trace)
        if ids is None:  # started while the API did not trace
            return await send()
        phase = span_phase(command.recovering, command.phase)
        parent = _span_context(ids, attempt_parent(ids, state, command.step, phase))
        attributes: Attributes = {
            **saga_attributes(state), "saga.step": command.step, "saga.phase": command.phase,
            "saga.attempt": command.attempt, "saga.service": command.request.service,
            "http.request.method": command.request.method,
        }
        if command.recovering:
            attributes["saga.recovering"] = True
        name = command.request.method
        context = self._child(ids, parent, ids.attempt_span_id(
            command.step, command.phase, command.attempt), name, SpanKind.CLIENT, attributes)
        start = time.time_ns()
        token = _ATTEMPT.set((context, attributes))
        try:
            reply = await send()
        except BaseException as error:
            self._export(name, context, parent, attributes, SpanKind.CLIENT, start, Status(
                StatusCode.ERROR, f"attempt abandoned: {type(error).__name__}"))
            raise
        finally:
            _ATTEMPT.reset(token)
        status = self._record(attributes, state, command, reply)
        self._export(name, context, parent, attributes, SpanKind.CLIENT, start, status)
        return reply

    def on_send(self, url: str, headers: dict[str, str]) -> None:
        """Name the target on the current attempt's span and pass its context on."""
        attempt = _ATTEMPT.get()
        if attempt is None:
            return
        context, attributes = attempt
        attributes.update(_url_attributes(url))
        inject_trace_context(headers, context)

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
        links = [Link(_span_context(ids, span_id)) for span_id in planned.links]
        # The saga span's parent lives in the API process; the others' in the journal.
        parent = _span_context(ids, planned.parent_id,
                               remote=planned.parent_id == ids.parent_span_id)
        kind = _KINDS[planned.kind]
        context = self._child(ids, parent, planned.span_id, planned.name, kind,
                              planned.attributes, links)
        status = Status(StatusCode.UNSET) if planned.error is None else Status(
            StatusCode.ERROR, planned.error)
        events = [Event(e.name, _present(e.attributes), e.at_ns) for e in planned.events]
        self._export(planned.name, context, parent, planned.attributes, kind,
                     planned.start_ns, status, planned.end_ns, events, links)

    def _child(self, ids: SagaIds, parent: SpanContext, span_id: int, name: str,
               kind: SpanKind, attributes: Attributes, links: Sequence[Link] = ()
               ) -> SpanContext:
        """The context of a span under ``parent``, sampled as the provider's sampler says."""
        key = (ids.trace_id, int(parent.trace_flags), parent.is_remote)
        sampled = self._decisions.get(key) if self._decisions is not None else None
        if sampled is None:
            sampled = self._provider.sampler.should_sample(
                trace.set_span_in_context(NonRecordingSpan(parent)), ids.trace_id, name, kind,
                attributes, links).decision is Decision.RECORD_AND_SAMPLE
            if self._decisions is not None:
                if len(self._decisions) >= _DECISIONS_KEPT:
                    self._decisions.clear()
                self._decisions[key] = sampled
        flags = (parent.trace_flags & ~TraceFlags.SAMPLED) | (
            TraceFlags.SAMPLED if sampled else 0)
        return SpanContext(ids.trace_id, span_id, is_remote=False,
                           trace_flags=TraceFlags(flags), trace_state=parent.trace_state)

    def _export(self, name: str, context: SpanContext, parent: SpanContext,
                attributes: Attributes, kind: SpanKind, start_ns: int, status: Status,
                end_ns: int | None = None, events: Sequence[Event] = (),
                links: Sequence[Link] = ()) -> None:
        if not context.trace_flags.sampled:
            return
        self._provider.export_finished(ReadableSpan(
            name, context, parent, self._provider.resource, _present(attributes), events,
            links, kind, status=status, start_time=start_ns,
            end_time=time.time_ns() if end_ns is None else end_ns,
            instrumentation_scope=self._scope))

    def _record(self, attributes: Attributes, state: ExecutionState, command: Invoke,
                reply: Reply) -> Status:
        outcome = self._outcome(state, command, reply)
        attributes["saga.outcome"] = outcome
        if reply.status_code is not None:
            attributes["http.response.status_code"] = reply.status_code
        if outcome == "succeeded":
            return Status(StatusCode.UNSET)
        attributes["error.type"] = str(reply.status_code or reply.failure or outcome)
        return Status(StatusCode.ERROR, failure_reason(outcome, reply.status_code, reply.error))

    def _outcome(self, state: ExecutionState, command: Invoke, reply: Reply) -> str:
        # The runner's judgement, without building its event (and copying the body).
        definition = self._definitions.get((state.saga, state.version))
        if definition is None:
            return "unknown"
        if command.phase == "compensation":
            return classify_compensation(reply)[0]
        return classify_action(definition.step_map[command.step], reply)[0]


def _span_context(ids: SagaIds, span_id: int, remote: bool = False) -> SpanContext:
    state = TraceState.from_header([ids.tracestate]) if ids.tracestate else None
    return SpanContext(ids.trace_id, span_id, is_remote=remote,
                       trace_flags=TraceFlags(ids.trace_flags), trace_state=state)


def inject_trace_context(headers: dict[str, str], context: SpanContext) -> None:
    """The W3C headers ``TraceContextTextMapPropagator.inject`` writes for ``context``,
    without building an OTel ``Context`` around it for every attempt. Trace context
    only: W3C baggage from the caller is not passed on to services."""
    if not context.is_valid:
        return
    headers["traceparent"] = traceparent(context.trace_id, context.span_id,
                                         context.trace_flags)
    if context.trace_state:
        headers["tracestate"] = context.trace_state.to_header()


def _present(attributes: Attributes) -> Attributes:
    """Without None values, which OTLP cannot carry (the SDK drops them too)."""
    if None not in attributes.values():  # by identity first: no value here equals None
        return attributes
    return {key: value for key, value in attributes.items() if value is not None}


def url_attributes(url: str) -> Attributes:
    """HTTP client semantic-convention attributes; credentials in the URL are redacted."""
    return dict(_url_attributes(url))


# Parsed once per distinct URL: a host sends the same endpoints' URLs over and over.
@functools.lru_cache(maxsize=1024)
def _url_attributes(url: str) -> tuple[tuple[str, str | int], ...]:
    parts = urlsplit(url)
    host = parts.hostname or ""
    netloc = host if ":" not in host else f"[{host}]"
    if parts.port is not None:
        netloc = f"{netloc}:{parts.port}"
    if parts.username is not None or parts.password is not None:
        netloc = f"REDACTED:REDACTED@{netloc}"
    attributes: list[tuple[str, str | int]] = [
        ("url.full", urlunsplit((parts.scheme, netloc, parts.path, parts.query, ""))),
        ("server.address", host),
    ]
    port = parts.port or _DEFAULT_PORTS.get(parts.scheme)
    if port is not None:
        attributes.append(("server.port", port))
    return tuple(attributes)
