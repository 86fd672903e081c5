"""The HTTP API: an aiohttp app over :class:`~coordinator.executions.ExecutionService`.

Handlers only parse requests and shape replies; every decision lives in the
service. Every error leaves as an RFC 9457 problem (``application/problem+json``)
through :func:`problem_middleware`; ``coordinator.openapi`` documents each route.
"""

from __future__ import annotations

import asyncio
import logging
import math
import re
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import Any

import orjson
from aiohttp import web
from aiohttp.typedefs import Middleware

from coordinator.errors import BadRequest, NotFound, Retryable, SagarayError
from coordinator.executions import MAX_WAIT_SECONDS, ExecutionService
from coordinator.journal.base import TERMINAL_STATUSES, JournalUnavailable
from coordinator.metrics.api import CONTENT_TYPE as METRICS_CONTENT_TYPE
from coordinator.metrics.api import ApiMetrics
from coordinator.openapi import EXECUTION_STATUSES, MAX_BODY_BYTES, openapi_document

log = logging.getLogger(__name__)

ReadyCheck = Callable[[], Awaitable[dict[str, Any]]]
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

PROBLEM_TYPE_BASE = "https://sagaray.dev/problems/"
READY_TIMEOUT = 5.0
MAX_IDEMPOTENCY_KEY = 255
DEFAULT_LIMIT = 50
SERVICE = web.AppKey("service", ExecutionService)
READY: web.AppKey[ReadyCheck | None] = web.AppKey("ready")
OPENAPI: web.AppKey[bytes] = web.AppKey("openapi")
METRICS: web.AppKey[ApiMetrics | None] = web.AppKey("metrics")

_INTEGER = re.compile(r"-?[0-9]{1,18}")
# W3C trace context: a malformed header is dropped (a new trace begins), as the spec asks.
_TRACEPARENT = re.compile(
    r"(?P<version>[0-9a-f]{2})-(?P<trace>[0-9a-f]{32})-(?P<parent>[0-9a-f]{16})-[0-9a-f]{2}")
_PROBLEM_CORE = ("type", "title", "status", "detail", "instance")


def create_app(service: ExecutionService, *, ready: ReadyCheck | None = None,
               middlewares: Sequence[Middleware] = (),
               metrics: ApiMetrics | None = None) -> web.Application:
    """The API app; ``ready`` backs ``/readyz`` (check name -> "ok" or what is wrong).

    ``middlewares`` run outside the problem middleware, so they see every final status.
    ``metrics`` backs ``/metrics`` (by default, over the service and its pool).
    """
    app = web.Application(client_max_size=MAX_BODY_BYTES,
                          middlewares=[*middlewares, problem_middleware])
    app[SERVICE] = service
    app[READY] = ready
    # A document-only app (no service, as the OpenAPI checks build it) serves no metrics.
    if metrics is None and service is not None:
        metrics = ApiMetrics(service, service.pool)
    app[METRICS] = metrics
    app[OPENAPI] = orjson.dumps(openapi_document())
    for method, path, handler in ROUTES:
        app.router.add_route(method, path, handler)
    return app


# -- problems -------------------------------------------------------------------


def problem(
    status: int,
    title: str,
    detail: str,
    *,
    type_: str = "about:blank",
    instance: str | None = None,
    headers: Mapping[str, str] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> web.Response:
    body: dict[str, Any] = {k: v for k, v in (extra or {}).items() if k not in _PROBLEM_CORE}
    body.update(type=type_, title=title, status=status, detail=detail)
    if instance is not None:
        body["instance"] = instance
    return web.Response(status=status, headers=headers, content_type="application/problem+json",
                        body=orjson.dumps(body, default=str))


def problem_type(error: SagarayError) -> str:
    """``NotFound`` -> ``.../not-found``: one stable type per error class."""
    slug = re.sub(r"(?<!^)(?=[A-Z])", "-", type(error).__name__).lower()
    return PROBLEM_TYPE_BASE + slug


def retry_after(seconds: float) -> dict[str, str]:
    # Retry-After takes whole seconds; rounding down could invite a retry too early.
    return {"Retry-After": str(max(0, math.ceil(seconds)))}


@web.middleware
async def problem_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except web.HTTPException as error:
        if error.status < 400:
            raise
        return _http_problem(request, error)
    except SagarayError as error:
        return _sagaray_problem(request, error)
    except JournalUnavailable:
        log.warning("journal unavailable on %s %s", request.method, request.path, exc_info=True)
        return problem(503, "Service unavailable", "the journal is unavailable; retry later",
                       type_=PROBLEM_TYPE_BASE + "retryable", instance=request.path,
                       headers=retry_after(1.0))
    except Exception:
        log.exception("unexpected error on %s %s", request.method, request.path)
        return _internal(request)


def _sagaray_problem(request: web.Request, error: SagarayError) -> web.Response:
    if isinstance(error, Retryable):
        return problem(error.status, error.title, error.detail, type_=problem_type(error),
                       instance=request.path, headers=retry_after(error.retry_after),
                       extra=error.extra)
    if error.status >= 500:
        log.error("server error on %s %s: %s", request.method, request.path, error.detail)
        return _internal(request)
    return problem(error.status, error.title, error.detail, type_=problem_type(error),
                   instance=request.path, extra=error.extra)


def _http_problem(request: web.Request, error: web.HTTPException) -> web.Response:
    # Keep headers such as Allow; the body is replaced, so its type and length go.
    headers = {k: v for k, v in error.headers.items()
               if k.lower() not in ("content-type", "content-length")}
    if error.status == 404:
        detail = f"no route matches {request.path}; /openapi.json lists every route"
    elif error.status == 405:
        detail = f"{request.method} is not allowed on {request.path}; use {headers.get('Allow')}"
    elif error.status == 413:
        detail = f"the request body is larger than the limit of {MAX_BODY_BYTES} bytes"
    else:
        detail = error.text or error.reason
    return problem(error.status, error.reason, detail, instance=request.path, headers=headers)


def _internal(request: web.Request) -> web.Response:
    # The cause is in the log only: exception text may hold internals or secrets.
    return problem(500, "Internal error", "an unexpected error occurred; the server log has "
                   "the details", instance=request.path)


# -- request parsing ------------------------------------------------------------


def int_param(query: Mapping[str, str], name: str, low: int,
              high: int | None = None) -> int | None:
    raw = query.get(name)
    if raw is None:
        return None
    value = int(raw) if _INTEGER.fullmatch(raw) else None
    if value is None or value < low or (high is not None and value > high):
        bounds = f"between {low} and {high}" if high is not None else f"at least {low}"
        raise BadRequest(f"query parameter {name!r} must be an integer {bounds}, not {raw!r}")
    return value


def wait_param(query: Mapping[str, str]) -> float | None:
    raw = query.get("wait")
    if raw is None:
        return None
    try:
        seconds = float(raw)
    except ValueError:
        seconds = math.nan
    if not 0 <= seconds <= MAX_WAIT_SECONDS:  # also false for nan
        raise BadRequest(f"query parameter 'wait' must be a number of seconds between 0 and "
                         f"{MAX_WAIT_SECONDS:g}, not {raw!r}")
    return seconds


def status_param(query: Mapping[str, str]) -> str | None:
    status = query.get("status")
    if status is not None and status not in EXECUTION_STATUSES:
        raise BadRequest(f"query parameter 'status' must be one of "
                         f"{', '.join(EXECUTION_STATUSES)}, not {status!r}")
    return status


def idempotency_key(headers: Mapping[str, str]) -> str | None:
    key = headers.get("Idempotency-Key")
    if key is not None and not 1 <= len(key) <= MAX_IDEMPOTENCY_KEY:
        raise BadRequest(f"header 'Idempotency-Key' must be 1 to {MAX_IDEMPOTENCY_KEY} "
                         f"characters long, not {len(key)}")
    return key


def trace_context(headers: Mapping[str, str]) -> dict[str, str] | None:
    traceparent = headers.get("traceparent", "").strip()
    match = _TRACEPARENT.fullmatch(traceparent)
    if match is None or match["version"] == "ff":
        return None
    if not int(match["trace"], 16) or not int(match["parent"], 16):  # all-zero ids are invalid
        return None
    return {"traceparent": traceparent}


def parse_object(raw: bytes, required: tuple[str, ...], allowed: tuple[str, ...]
                 ) -> dict[str, Any]:
    """The body as a JSON object with ``required`` members and no member outside ``allowed``."""
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as error:
        raise BadRequest(f"the request body is not valid JSON: {error}") from error
    if not isinstance(body, dict):
        raise BadRequest(f"the request body must be a JSON object, not {_json_kind(body)}")
    missing = [name for name in required if name not in body]
    if missing:
        raise BadRequest(f"the request body lacks {_names(missing)}")
    unknown = sorted(set(body) - set(allowed))
    if unknown:
        raise BadRequest(f"the request body has unknown members {_names(unknown)}; "
                         f"allowed: {_names(allowed)}")
    return body


def _names(names: Iterable[str]) -> str:
    return ", ".join(repr(name) for name in names)


def _json_kind(value: Any) -> str:
    kinds = {list: "an array", str: "a string", bool: "a boolean", int: "a number",
             float: "a number", type(None): "null"}
    return kinds.get(type(value), type(value).__name__)


async def _read_body(request: web.Request) -> bytes:
    # Refuse early when the client announces a body over the limit; read() enforces
    # the limit for bodies without a Content-Length.
    if (request.content_length or 0) > MAX_BODY_BYTES:
        raise web.HTTPRequestEntityTooLarge(MAX_BODY_BYTES, request.content_length or 0)
    return await request.read()


def _json(data: Any, status: int = 200, headers: Mapping[str, str] | None = None
          ) -> web.Response:
    return web.Response(status=status, headers=headers, content_type="application/json",
                        body=orjson.dumps(data))


def _accepted(view: dict[str, Any]) -> web.Response:
    return _json(view, 202, {"Location": view["links"]["self"]})


# -- executions -----------------------------------------------------------------


async def start_execution(request: web.Request) -> web.Response:
    service = request.app[SERVICE]
    version = int_param(request.query, "version", 1)
    wait = wait_param(request.query)
    key = idempotency_key(request.headers)
    raw = await _read_body(request)
    if not raw.strip():
        raise BadRequest('the request body is empty; send {"input": ...}')
    body = parse_object(raw, ("input",), ("input",))
    view, created = await service.start(
        request.match_info["saga"], body["input"], version=version, idempotency_key=key,
        trace=trace_context(request.headers), wait=wait)
    if not created:
        return _json(view)
    if wait is not None and view["status"] in TERMINAL_STATUSES:
        return _json(view)
    return _accepted(view)


async def get_execution(request: web.Request) -> web.Response:
    service = request.app[SERVICE]
    wait = wait_param(request.query)
    execution_id = request.match_info["id"]
    if wait is None:
        return _json(await service.get(execution_id))
    return _json(await service.wait(execution_id, wait))


async def execution_events(request: web.Request) -> web.Response:
    events = await request.app[SERVICE].events(request.match_info["id"])
    return _json({"events": events})


async def list_executions(request: web.Request) -> web.Response:
    query = request.query
    limit = int_param(query, "limit", 1, 500)
    # Empty saga and cursor mean "any saga" and "first page", as forms send them.
    page = await request.app[SERVICE].list(
        query.get("saga") or None, status_param(query),
        DEFAULT_LIMIT if limit is None else limit, query.get("cursor") or None)
    return _json(page)


async def cancel_execution(request: web.Request) -> web.Response:
    raw = await _read_body(request)
    reason = None
    if raw.strip():
        reason = parse_object(raw, (), ("reason",)).get("reason")
        if reason is not None and not isinstance(reason, str):
            raise BadRequest(f"'reason' must be a string or null, not {_json_kind(reason)}")
    view = await request.app[SERVICE].cancel(request.match_info["id"], reason)
    return _json(view, 202)


async def resume_execution(request: web.Request) -> web.Response:
    return _json(await request.app[SERVICE].resume(request.match_info["id"]), 202)


# -- sagas, health, document ----------------------------------------------------


async def list_sagas(request: web.Request) -> web.Response:
    catalog = request.app[SERVICE].catalog
    sagas = []
    for name in catalog.names():
        versions = catalog.versions(name)
        sagas.append({"name": name, "versions": [d.version for d in versions],
                      "latest": versions[-1].model_dump(mode="json")})
    return _json({"sagas": sagas})


async def get_saga(request: web.Request) -> web.Response:
    catalog = request.app[SERVICE].catalog
    name = catalog.get(request.match_info["saga"]).name  # NotFound names the loaded sagas
    versions = [d.model_dump(mode="json") for d in catalog.versions(name)]
    return _json({"name": name, "versions": versions})


async def healthz(request: web.Request) -> web.Response:
    return _json({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    check = request.app[READY]
    checks = await _run_ready_check(check) if check is not None else {}
    failed = {name: state for name, state in checks.items() if state != "ok"}
    if failed:
        summary = ", ".join(f"{name}: {state}" for name, state in failed.items())
        raise Retryable(f"not ready: {summary}", retry_after=1.0, checks=checks)
    return _json({"status": "ready", "checks": checks})


async def _run_ready_check(check: ReadyCheck) -> dict[str, str]:
    try:
        checks = await asyncio.wait_for(check(), READY_TIMEOUT)
    except TimeoutError as error:
        raise Retryable(f"not ready: the readiness checks did not answer within "
                        f"{READY_TIMEOUT:g} s", checks={}) from error
    except Exception as error:
        log.warning("readiness check raised", exc_info=True)
        # Only the exception's type: its text may carry a DSN or other secrets.
        raise Retryable(f"not ready: the readiness check raised {type(error).__name__}",
                        checks={}) from error
    return {str(name): str(state) for name, state in checks.items()}


async def metrics(request: web.Request) -> web.Response:
    source = request.app[METRICS]
    if source is None:
        raise NotFound("this app has no metrics source")
    body = await source.render()
    return web.Response(body=body, headers={"Content-Type": METRICS_CONTENT_TYPE})


async def openapi(request: web.Request) -> web.Response:
    return web.Response(body=request.app[OPENAPI], content_type="application/json")


ROUTES: list[tuple[str, str, Handler]] = [
    ("POST", "/v1/sagas/{saga}/executions", start_execution),
    ("GET", "/v1/executions", list_executions),
    ("GET", "/v1/executions/{id}", get_execution),
    ("GET", "/v1/executions/{id}/events", execution_events),
    ("POST", "/v1/executions/{id}/cancel", cancel_execution),
    ("POST", "/v1/executions/{id}/resume", resume_execution),
    ("GET", "/v1/sagas", list_sagas),
    ("GET", "/v1/sagas/{saga}", get_saga),
    ("GET", "/healthz", healthz),
    ("GET", "/readyz", readyz),
    ("GET", "/openapi.json", openapi),
    ("GET", "/metrics", metrics),
]
