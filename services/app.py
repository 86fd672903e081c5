"""The HTTP side of a demo service: the pipeline around each action and the control routes.

Order of the pipeline for a business request (control routes skip all of it):

1. bearer token check (401) when the instance requires one;
2. JSON body (400 when it is not a JSON object);
3. faults from ``X-Fault`` plus every matching ``/_faults`` rule, plus startup flags;
4. latency, then the 503 faults (``error``, ``error-once``, ``--error-rate``): no effect;
5. under the Idempotency-Key lock: replay the stored reply; else ``business`` answers
   422 without acting or storing; else act and store the reply unless it is a 5xx;
6. ``timeout`` / ``timeout-once`` hold the finished reply back, outside the lock.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hmac
import json
import logging
import os
from collections.abc import Awaitable, Callable, Mapping
from typing import TypedDict, Unpack

from aiohttp import web

from services.common import (
    STATE_KEY,
    Action,
    Call,
    JsonObject,
    ProblemError,
    Reply,
    ServiceConfig,
    ServiceSpec,
    ServiceState,
    SharedStore,
    bad_request,
)
from services.faults import FaultRule, FaultSet, FaultSpecError, parse_faults

IDEMPOTENCY_HEADER = "Idempotency-Key"
FAULT_HEADER = "X-Fault"
REPLAYED_HEADER = "Idempotent-Replayed"

RouteHandler = Callable[[web.Request], Awaitable[web.StreamResponse]]
log = logging.getLogger(__name__)


class AppOptions(TypedDict, total=False):
    """Per-instance settings that override the ones in a :class:`ServiceConfig`."""

    required_token: str | None
    error_rate: float
    latency_ms: int
    hold_seconds: float
    seed: int | None


def create_service_app(
    spec: ServiceSpec, config: ServiceConfig | None = None, **options: Unpack[AppOptions]
) -> web.Application:
    """``build_app`` with keyword overrides; no setting is read from the environment."""
    base = config or ServiceConfig(spec.name)
    return build_app(spec, dataclasses.replace(base, **options))


def config_from_env(
    spec: ServiceSpec, environ: Mapping[str, str] | None = None, **options: Unpack[AppOptions]
) -> ServiceConfig:
    """The config of an instance started from a shell: its token comes from the env var."""
    env = os.environ if environ is None else environ
    # An empty variable counts as unset so that `FLIGHTS_TOKEN= cmd` disables auth.
    token = (env.get(spec.token_env) or None) if spec.token_env else None
    return dataclasses.replace(ServiceConfig(spec.name, required_token=token), **options)


def build_app(spec: ServiceSpec, config: ServiceConfig | None = None,
              store: SharedStore | None = None) -> web.Application:
    """A fresh application for ``spec``; all its state lives in ``app[STATE_KEY]``.

    Instances of one service built with the same ``store`` share records, ledger and
    stored replies (one instance can confirm what another created); fault rules and
    settings stay per instance.
    """
    config = config or ServiceConfig(spec.name)
    if config.name != spec.name:
        raise ValueError(f"config for {config.name!r} given to service {spec.name!r}")
    app = web.Application(middlewares=[problem_middleware])
    app[STATE_KEY] = ServiceState(config, store)
    for action in spec.actions:
        app.router.add_route(action.method, action.path, action_handler(action))
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/_health", health)
    app.router.add_get("/_ledger", get_ledger)
    app.router.add_post("/_reset", post_reset)
    app.router.add_get("/_faults", get_faults)
    app.router.add_post("/_faults", post_fault)
    app.router.add_delete("/_faults", delete_faults)
    app.on_shutdown.append(_release_holds)
    return app


async def _release_holds(app: web.Application) -> None:
    # Runs before the runner waits for in-flight handlers, so held replies do not
    # stretch every shutdown to the full hold time.
    app[STATE_KEY].closing.set()


def action_handler(action: Action) -> RouteHandler:
    async def handle(request: web.Request) -> web.StreamResponse:
        state = request.app[STATE_KEY]
        state.requests += 1
        _check_auth(request, state.config)
        body = await _read_body(request)
        faults = _faults_for(request, state, body)
        key = request.headers.get(IDEMPOTENCY_HEADER, "").strip() or None
        # Without a key the "-once" faults fire once per method and path.
        once_key = key or f"{request.method} {request.path}"
        await _delay(state, faults)
        _fail_if_unavailable(state, faults, once_key)
        call = Call(state, body, request.match_info)
        reply, replayed = await _settle(state, action, call, key, faults)
        if "timeout" in faults or (
            "timeout-once" in faults and state.first_time("timeout-once", once_key)
        ):
            await state.hold()
        return reply.to_response({REPLAYED_HEADER: "true"} if replayed else None)

    return handle


def _check_auth(request: web.Request, config: ServiceConfig) -> None:
    if config.required_token is None:
        return
    given = request.headers.get("Authorization", "").encode()
    if not hmac.compare_digest(given, f"Bearer {config.required_token}".encode()):
        raise ProblemError(
            401,
            "Unauthorized",
            "a valid 'Authorization: Bearer <token>' header is required",
            slug="unauthorized",
            headers={"WWW-Authenticate": f'Bearer realm="{config.name}"'},
        )


async def _read_body(request: web.Request) -> JsonObject:
    raw = await request.read() if request.body_exists else b""
    if not raw.strip():
        return {}
    try:
        data = json.loads(raw)
    except ValueError:
        raise bad_request("the body is not valid JSON") from None
    if not isinstance(data, dict):
        raise bad_request("the body must be a JSON object")
    return data


def _faults_for(request: web.Request, state: ServiceState, body: JsonObject) -> FaultSet:
    try:
        from_header = parse_faults(request.headers.get(FAULT_HEADER))
    except FaultSpecError as exc:
        raise bad_request(f"{FAULT_HEADER}: {exc}") from None
    return from_header.merge(state.rules.consume(request.method, request.path, body))


async def _delay(state: ServiceState, faults: FaultSet) -> None:
    millis = faults.latency_ms + state.config.latency_ms
    if millis:
        await asyncio.sleep(millis / 1000)


def _fail_if_unavailable(state: ServiceState, faults: FaultSet, once_key: str) -> None:
    reason = None
    if "error" in faults:
        reason = "injected fault: error"
    elif "error-once" in faults and state.first_time("error-once", once_key):
        reason = "injected fault: error-once"
    elif state.config.error_rate and state.rng.random() < state.config.error_rate:
        reason = f"random failure (error rate {state.config.error_rate})"
    if reason is not None:
        raise ProblemError(
            503, "Service unavailable", reason, slug="unavailable", headers={"Retry-After": "0"}
        )


async def _settle(
    state: ServiceState, action: Action, call: Call, key: str | None, faults: FaultSet
) -> tuple[Reply, bool]:
    """The reply for this request and whether it is a replay of a stored one."""
    if key is None:
        return _decide(state, action, call, None, faults), False
    async with state.replies.lock(key):
        stored = state.replies.get(key)
        if stored is not None:
            return stored, True
        reply = _decide(state, action, call, key, faults)
        # Like `error`, an injected `business` refusal belongs to this request only:
        # it is not stored, so a retry with the same key acts once the fault is gone.
        if reply.status < 500 and "business" not in faults:
            state.replies.put(key, reply)
        return reply, False


def _decide(
    state: ServiceState, action: Action, call: Call, key: str | None, faults: FaultSet
) -> Reply:
    if "business" in faults:
        return _injected_business(state, action)
    return _act(state, action, call, key)


def _injected_business(state: ServiceState, action: Action) -> Reply:
    problem = ProblemError(
        422,
        "Business rule violated",
        f"injected fault: business ({action.method} {action.path})",
        slug="injected-business-failure",
    )
    return Reply(problem.status, problem.body(state.name))


def _act(state: ServiceState, action: Action, call: Call, key: str | None) -> Reply:
    try:
        outcome = action.handler(call)
    except ProblemError as exc:
        return Reply(exc.status, exc.body(state.name))
    if outcome.effect is not None:
        state.ledger.record(action.op, action.kind, outcome.effect, key, call.body)
    return Reply(outcome.status, outcome.body)


@web.middleware
async def problem_middleware(request: web.Request, handler: RouteHandler) -> web.StreamResponse:
    """Every error leaves as ``application/problem+json``."""
    service = request.app[STATE_KEY].name
    try:
        return await handler(request)
    except ProblemError as exc:
        return Reply(exc.status, exc.body(service)).to_response(exc.headers)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        problem = ProblemError(exc.status, exc.reason, f"{request.method} {request.path}")
        headers = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else None
        return Reply(exc.status, problem.body(service)).to_response(headers)
    except Exception:
        log.exception("%s: unhandled error on %s %s", service, request.method, request.path)
        problem = ProblemError(500, "Internal server error", "unexpected error; see the log")
        return Reply(500, problem.body(service)).to_response()


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok", "service": request.app[STATE_KEY].name})


async def health(request: web.Request) -> web.Response:
    """The health check the coordinator polls: the instance's ``/_faults`` rules for
    ``/_health`` (or ``/**``) and its ``--latency-ms`` apply, so a test can make it slow
    (``latency``), failing (``error``) or hanging (``timeout``). ``--error-rate`` does
    not apply: a random 503 here would take a healthy instance out of rotation."""
    state = request.app[STATE_KEY]
    faults = state.rules.consume("GET", "/_health", {})
    await _delay(state, faults)
    if "error" in faults:
        raise ProblemError(503, "Service unavailable", "injected fault: error",
                           slug="unavailable")
    if "timeout" in faults:
        await state.hold()
    return web.json_response({"status": "ok", "service": state.name,
                              "requests": state.requests})


async def get_ledger(request: web.Request) -> web.Response:
    state = request.app[STATE_KEY]
    return web.json_response({"service": state.name, "entries": state.ledger.entries})


async def post_reset(request: web.Request) -> web.Response:
    state = request.app[STATE_KEY]
    state.reset()
    return web.json_response({"service": state.name, "reset": True})


async def get_faults(request: web.Request) -> web.Response:
    state = request.app[STATE_KEY]
    return web.json_response({"service": state.name, "rules": state.rules.to_json()})


async def post_fault(request: web.Request) -> web.Response:
    state = request.app[STATE_KEY]
    try:
        rule = FaultRule.from_json(await _read_body(request))
    except FaultSpecError as exc:
        raise bad_request(str(exc)) from None
    state.rules.add(rule)
    return web.json_response({"service": state.name, "rule": rule.to_json()}, status=201)


async def delete_faults(request: web.Request) -> web.Response:
    state = request.app[STATE_KEY]
    return web.json_response({"service": state.name, "deleted": state.rules.clear()})
