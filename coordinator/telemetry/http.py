"""Server spans for aiohttp apps (the API and the demo services), and the API's tracing.

The middleware continues the caller's W3C ``traceparent`` (trace context only:
baggage is neither read nor passed on) in a ``SERVER`` span named after the
route, with HTTP semantic-convention attributes. No header or body goes into it.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass

from aiohttp import web
from aiohttp.typedefs import Middleware
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.sampling import Decision
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import (
    NonRecordingSpan,
    SpanContext,
    SpanKind,
    Status,
    StatusCode,
    TraceFlags,
)
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from yarl import URL

from coordinator import __version__
from coordinator.telemetry import API_SERVICE_NAME
from coordinator.telemetry.history import Attributes
from coordinator.telemetry.ids import traceparent
from coordinator.telemetry.setup import (
    ExportingProvider,
    build_provider,
    flush,
    new_span_id,
    shutdown,
)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
RequestHook = Callable[[web.Request, trace.Span], None]
_PROPAGATOR = TraceContextTextMapPropagator()


def server_middleware(provider: ExportingProvider, scope: str,
                      on_request: RequestHook | None = None) -> Middleware:
    """A middleware putting each request in a server span; put it first in the chain.

    The span is built whole when the reply is known and handed to the provider's
    processors (as a host builds its spans): during the request only its context is
    current (so ``saga_trace`` and the hook can name it), no live SDK span.
    """
    instrumentation = InstrumentationScope(scope, __version__)

    @web.middleware
    async def tracing_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        parent_context = _PROPAGATOR.extract(request.headers)
        parent = trace.get_current_span(parent_context).get_span_context()
        route = _route(request)
        name = f"{request.method} {route}" if route else request.method
        attributes = _request_attributes(request, route)
        context = _server_context(provider, parent_context, parent, name, attributes)
        span = NonRecordingSpan(context)
        token = otel_context.attach(trace.set_span_in_context(span))
        start, status = time.time_ns(), Status(StatusCode.UNSET)
        try:
            if on_request is not None:
                on_request(request, span)
            response = await handler(request)
            status = _answered(attributes, response.status)
            return response
        except web.HTTPException as error:
            status = _answered(attributes, error.status)
            raise
        except BaseException as error:
            status = Status(StatusCode.ERROR, f"{type(error).__name__}: {error}")
            raise
        finally:
            otel_context.detach(token)
            if context.trace_flags.sampled:
                provider.export_finished(ReadableSpan(
                    name, context, parent if parent.is_valid else None, provider.resource,
                    attributes, kind=SpanKind.SERVER, status=status, start_time=start,
                    end_time=time.time_ns(), instrumentation_scope=instrumentation))

    return tracing_middleware


def _request_attributes(request: web.Request, route: str | None) -> Attributes:
    return dict(_attributes_of(request.method, request.path, request.scheme, request.host,
                               route, request.remote))


# Once per distinct request shape (a start's is the same every time): building
# ``request.url`` to read its host and port cost more than the rest of the span.
@functools.lru_cache(maxsize=1024)
def _attributes_of(method: str, path: str, scheme: str, host: str, route: str | None,
                   remote: str | None) -> tuple[tuple[str, str | int], ...]:
    try:
        url = URL.build(scheme=scheme, authority=host)
        address, port = url.host or "", url.port
    except ValueError:  # the client's Host header (say, a port out of range): not ours to fail
        address, port = "", None
    attributes: list[tuple[str, str | int]] = [
        ("http.request.method", method), ("url.path", path), ("url.scheme", scheme),
        ("server.address", address)]
    if port is not None:
        attributes.append(("server.port", port))
    if route:
        attributes.append(("http.route", route))
    if remote:
        attributes.append(("client.address", remote))
    return tuple(attributes)


def _server_context(provider: ExportingProvider, parent_context: otel_context.Context,
                    parent: SpanContext, name: str, attributes: Attributes) -> SpanContext:
    """A new span's context under the caller's, sampled as the provider's sampler says."""
    trace_id = parent.trace_id if parent.is_valid else \
        provider.id_generator.generate_trace_id()
    sampled = provider.sampler.should_sample(parent_context, trace_id, name, SpanKind.SERVER,
                                             attributes)
    flags = TraceFlags.SAMPLED if sampled.decision is Decision.RECORD_AND_SAMPLE else 0
    return SpanContext(trace_id, provider.id_generator.generate_span_id(), is_remote=False,
                       trace_flags=TraceFlags(flags), trace_state=sampled.trace_state)


def _route(request: web.Request) -> str | None:
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else None


def _answered(attributes: Attributes, status: int) -> Status:
    attributes["http.response.status_code"] = status
    if status >= 500:  # a 4xx is the client's error, not the server span's
        attributes["error.type"] = str(status)
        return Status(StatusCode.ERROR)
    return Status(StatusCode.UNSET)


def saga_trace(caller: dict[str, str] | None) -> dict[str, str] | None:
    """The trace to journal for a new execution, made inside its start request's span.

    The saga span's id is chosen now, so that the hosts can parent steps to it
    long before it is exported, when the execution ends.
    """
    context = trace.get_current_span().get_span_context()
    if not context.is_valid:
        return caller
    found = {
        "traceparent": traceparent(context.trace_id, context.span_id, context.trace_flags),
        "trace_id": f"{context.trace_id:032x}",
        "saga_span_id": f"{new_span_id():016x}",
        "saga_start_ns": str(time.time_ns()),
    }
    if context.trace_state:
        found["tracestate"] = context.trace_state.to_header()
    return found


@dataclass
class ApiTracing:
    """The API process's provider, its middleware and the hook that names sagas' ids."""

    provider: TracerProvider
    middleware: Middleware

    @staticmethod
    def saga_trace(caller: dict[str, str] | None) -> dict[str, str] | None:
        return saga_trace(caller)

    async def flush(self) -> None:
        await flush(self.provider)

    async def close(self) -> None:
        await shutdown(self.provider)


def create_api_tracing(env: Mapping[str, str]) -> ApiTracing:
    provider = build_provider(API_SERVICE_NAME, env)
    return ApiTracing(provider, server_middleware(provider, "sagaray.api"))
