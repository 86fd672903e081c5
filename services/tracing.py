"""Server spans for a demo service, on when an OTLP endpoint is configured (``OTEL_*``).

Each request is a ``SERVER`` span of the service's own ``service.name``,
continuing the ``traceparent`` the coordinator sent. An instrumented service also
remembers the trace context of every business request it received, for tests:
``GET /_traceparents``.
"""

from __future__ import annotations

from collections.abc import Mapping

from aiohttp import web

from coordinator.telemetry import otel_env, tracing_enabled

Received = list[dict[str, str | None]]
TRACEPARENTS: web.AppKey[Received] = web.AppKey("sagaray_traceparents")


def instrument(app: web.Application, name: str, environ: Mapping[str, str] | None = None
               ) -> bool:
    """Trace ``app`` as service ``name`` if ``environ`` (default: the process's) says so."""
    env = otel_env(environ)
    if not tracing_enabled(env):
        return False
    from opentelemetry.trace import Span

    from coordinator.telemetry.http import server_middleware
    from coordinator.telemetry.setup import build_provider, shutdown

    provider = build_provider(name, env)
    received: Received = []

    def remember(request: web.Request, span: Span) -> None:
        if request.path.startswith("/_") or request.path == "/healthz":
            return
        received.append({
            "method": request.method, "path": request.path,
            "traceparent": request.headers.get("traceparent"),
            "idempotency_key": request.headers.get("Idempotency-Key"),
            "baggage": request.headers.get("baggage"),
            "span_id": f"{span.get_span_context().span_id:016x}",
        })

    async def close_provider(app: web.Application) -> None:
        await shutdown(provider)

    app[TRACEPARENTS] = received
    # First, so the span sees the final status of every reply, problems included.
    app.middlewares.insert(0, server_middleware(provider, "sagaray.services", remember))
    app.router.add_get("/_traceparents", traceparents)
    app.on_cleanup.append(close_provider)
    return True


async def traceparents(request: web.Request) -> web.Response:
    return web.json_response({"received": request.app[TRACEPARENTS]})
