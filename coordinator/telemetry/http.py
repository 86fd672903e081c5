"""Server spans for aiohttp apps (the API and the demo services), and the API's tracing.

The middleware continues the caller's W3C ``traceparent`` (trace context only:
baggage is neither read nor passed on) in a ``SERVER`` span named after the
route, with HTTP semantic-convention attributes. No header or body goes into it.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass

from aiohttp import web
from aiohttp.typedefs import Middleware
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.trace import SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from coordinator import __version__
from coordinator.telemetry import API_SERVICE_NAME
from coordinator.telemetry.history import Attributes
from coordinator.telemetry.setup import build_provider, flush, new_span_id, shutdown

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
RequestHook = Callable[[web.Request, trace.Span], None]
_PROPAGATOR = TraceContextTextMapPropagator()


def server_middleware(tracer: trace.Tracer, on_request: RequestHook | None = None) -> Middleware:
    """A middleware putting each request in a server span; put it first in the chain."""

    @web.middleware
    async def tracing_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        parent = _PROPAGATOR.extract(request.headers)
        route = _route(request)
        name = f"{request.method} {route}" if route else request.method
        attributes: Attributes = {
            "http.request.method": request.method, "url.path": request.path,
            "url.scheme": request.scheme, "server.address": request.url.host or "",
        }
        if request.url.port is not None:
            attributes["server.port"] = request.url.port
        if route:
            attributes["http.route"] = route
        if request.remote:
            attributes["client.address"] = request.remote
        with tracer.start_as_current_span(name, context=parent, kind=SpanKind.SERVER,
                                          attributes=attributes) as span:
            if on_request is not None:
                on_request(request, span)
            try:
                response = await handler(request)
            except web.HTTPException as error:
                _finish(span, error.status)
                raise
            _finish(span, response.status)
            return response

    return tracing_middleware


def _route(request: web.Request) -> str | None:
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else None


def _finish(span: trace.Span, status: int) -> None:
    span.set_attribute("http.response.status_code", status)
    if status >= 500:  # a 4xx is the client's error, not the server span's
        span.set_attribute("error.type", str(status))
        span.set_status(Status(StatusCode.ERROR))


def saga_trace(caller: dict[str, str] | None) -> dict[str, str] | None:
    """The trace to journal for a new execution, made inside its start request's span.

    The saga span's id is chosen now, so that the hosts can parent steps to it
    long before it is exported, when the execution ends.
    """
    context = trace.get_current_span().get_span_context()
    if not context.is_valid:
        return caller
    found = {
        "traceparent": f"00-{context.trace_id:032x}-{context.span_id:016x}-"
                       f"{int(context.trace_flags):02x}",
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
    tracer = provider.get_tracer("sagaray.api", __version__)
    return ApiTracing(provider, server_middleware(tracer))
