"""Bearer-token authentication: every route of the real app, the token sources, the refusal
to serve beyond loopback without tokens, and the CLI client's ``--token``.

Routes are enumerated from ``app.router.routes()``: a route added later is covered (and must
be either public or protected) without touching this file.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from coordinator import server
from coordinator.api import create_app
from coordinator.auth import (
    PUBLIC_PATHS,
    ApiTokens,
    InsecureBind,
    TokenConfigError,
    auth_middleware,
    check_exposure,
    is_loopback,
    load_tokens,
    parse_tokens_file,
)
from coordinator.cli import build_parser, main
from coordinator.client_cli import serve_options
from coordinator.executions import ExecutionService, SagaCatalog
from coordinator.journal.sqlite import SQLiteJournal
from coordinator.openapi import BEARER_SCHEME, openapi_document
from coordinator.pool import HostPool

from .conftest import READY_OK, ContractClient, PoolStandIn, definitions

READ = "read-token-0123456789abcdef"
WRITE = "write-token-0123456789abcdef"
OTHER_READ = "another-reader-0123456789"
UNKNOWN = "unknown-token-0123456789abcdef"
TOKENS = ApiTokens(read=(READ, OTHER_READ), write=(WRITE,))
ORDER = {"order_id": "o-1", "amount": 12.5}
SAMPLE = {"saga": "shop", "id": "no-such-execution"}
TOKEN_VARIABLES = ("SAGARAY_API_TOKENS_FILE", "SAGARAY_API_READ_TOKEN",
                   "SAGARAY_API_WRITE_TOKEN", "SAGARAY_TOKEN", "SAGARAY_INSECURE")


@dataclass
class AuthStack:
    api: ContractClient
    app: web.Application
    journal: SQLiteJournal


@pytest.fixture
async def auth_stack(tmp_path: Path) -> AsyncIterator[AuthStack]:
    journal = SQLiteJournal(tmp_path / "journal.db")
    await journal.open()
    service = ExecutionService(SagaCatalog(definitions()), journal,
                               cast(HostPool, PoolStandIn(journal)))

    async def ready() -> dict[str, Any]:
        return dict(READY_OK)

    app = create_app(service, ready=ready, middlewares=[auth_middleware(TOKENS)])
    client: TestClient[Any, Any] = TestClient(TestServer(app))
    await client.start_server()
    try:
        yield AuthStack(ContractClient(client), app, journal)
    finally:
        await client.close()
        await journal.close()


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in TOKEN_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def routes(app: web.Application) -> list[tuple[str, str]]:
    """(method, concrete path) of every route the app serves."""
    found = []
    for route in app.router.routes():
        assert route.resource is not None
        path = route.resource.canonical
        for name, value in SAMPLE.items():
            path = path.replace("{" + name + "}", value)
        assert "{" not in path, f"no sample value for a parameter of {path}: extend SAMPLE"
        found.append((route.method, path))
    return found


def body_of(method: str, path: str) -> dict[str, Any]:
    if method != "POST":
        return {}
    return {"json": {"input": ORDER}} if path.endswith("/executions") else {"json": {}}


def bearer(token: str) -> dict[str, Any]:
    return {"headers": {"Authorization": f"Bearer {token}"}}


# -- every route ------------------------------------------------------------------


async def test_routes_cover_reads_writes_and_public_paths(auth_stack: AuthStack) -> None:
    served = routes(auth_stack.app)
    methods = {method for method, _ in served}
    assert methods == {"GET", "POST"}, "a new method needs a decision in coordinator.auth"
    assert {path for _, path in served} >= PUBLIC_PATHS


async def test_without_a_token_every_route_but_the_probes_is_401(auth_stack: AuthStack) -> None:
    for method, path in routes(auth_stack.app):
        reply = await auth_stack.api.call(method, path, **body_of(method, path))
        if path in PUBLIC_PATHS:
            assert reply.status == 200, (method, path, reply.body)
            continue
        assert reply.status == 401, (method, path, reply.status)
        assert reply.headers["WWW-Authenticate"] == 'Bearer realm="sagaray"'
        assert "Bearer" in reply.detail


@pytest.mark.parametrize("header", [f"Bearer {UNKNOWN}", f"Bearer {READ}x", f"Basic {READ}",
                                    "Bearer", "Bearer ", f"Bearer {READ} {READ}", READ])
async def test_an_unknown_or_malformed_token_is_401(auth_stack: AuthStack, header: str) -> None:
    for method, path in routes(auth_stack.app):
        reply = await auth_stack.api.call(method, path, headers={"Authorization": header},
                                          **body_of(method, path))
        if path in PUBLIC_PATHS:
            assert reply.status == 200
            continue
        assert reply.status == 401, (method, path, header, reply.status)
        assert reply.headers["WWW-Authenticate"].startswith("Bearer ")
        assert 'error="invalid_token"' in reply.headers["WWW-Authenticate"]


async def test_a_read_token_reads_and_may_not_write(auth_stack: AuthStack) -> None:
    for token in (READ, OTHER_READ):
        for method, path in routes(auth_stack.app):
            reply = await auth_stack.api.call(method, path, **bearer(token),
                                              **body_of(method, path))
            if method == "GET":
                assert reply.status not in (401, 403), (method, path, reply.body)
            else:
                assert reply.status == 403, (method, path, reply.status)
                assert 'error="insufficient_scope"' in reply.headers["WWW-Authenticate"]
                assert "write token" in reply.detail


async def test_a_write_token_passes_everywhere(auth_stack: AuthStack) -> None:
    for method, path in routes(auth_stack.app):
        reply = await auth_stack.api.call(method, path, **bearer(WRITE), **body_of(method, path))
        assert reply.status not in (401, 403), (method, path, reply.body)


async def test_the_scheme_name_is_case_insensitive(auth_stack: AuthStack) -> None:
    reply = await auth_stack.api.call("GET", "/v1/sagas",
                                      headers={"Authorization": f"bearer {READ}"})
    assert reply.status == 200


async def test_a_write_token_starts_and_a_read_token_sees_it(auth_stack: AuthStack) -> None:
    started = await auth_stack.api.call("POST", "/v1/sagas/shop/executions",
                                        json={"input": ORDER}, **bearer(WRITE))
    assert started.status == 202, started.body
    path = f"/v1/executions/{started.body['execution_id']}"
    assert (await auth_stack.api.call("GET", path, **bearer(READ))).status == 200
    cancel = await auth_stack.api.call("POST", f"{path}/cancel", json={}, **bearer(READ))
    assert cancel.status == 403


async def test_tokens_appear_in_no_reply_and_no_log(auth_stack: AuthStack,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    replies = [
        await auth_stack.api.call("GET", "/v1/sagas", **bearer(UNKNOWN)),
        await auth_stack.api.call("POST", "/v1/executions/x/resume", **bearer(READ)),
        await auth_stack.api.call("GET", "/v1/sagas", headers={"Authorization": UNKNOWN}),
    ]
    for reply in replies:
        assert reply.status in (401, 403)
        for token in (READ, UNKNOWN, WRITE):
            assert token not in str(reply.body) and token not in str(dict(reply.headers))
    assert caplog.records, "refusals are logged"
    for token in (READ, UNKNOWN, WRITE):
        assert token not in caplog.text
    assert READ not in repr(TOKENS) and WRITE not in str(TOKENS)


# -- the OpenAPI document -----------------------------------------------------------


def test_openapi_declares_the_bearer_scheme_on_every_protected_operation() -> None:
    document = openapi_document()
    scheme = document["components"]["securitySchemes"][BEARER_SCHEME]
    assert scheme == {**scheme, "type": "http", "scheme": "bearer"}
    assert document["security"] == [{BEARER_SCHEME: []}]
    for path, item in document["paths"].items():
        for method, operation in item.items():
            codes = set(operation["responses"])
            if path in PUBLIC_PATHS:
                assert operation["security"] == [] and not codes & {"401", "403"}
                continue
            assert "security" not in operation, (method, path)  # the global requirement
            assert "401" in codes, (method, path)
            assert ("403" in codes) == (method == "post"), (method, path)


# -- token sources -------------------------------------------------------------------


def test_tokens_file_lines_comments_and_scopes(tmp_path: Path) -> None:
    path = tmp_path / "tokens"
    path.write_text(f"# the API's tokens\n\nread {READ}\n  write   {WRITE}  # ops\n")
    tokens = load_tokens(path, {})
    assert tokens.read == (READ,) and tokens.write == (WRITE,)
    assert tokens.scope_of(READ) == "read" and tokens.scope_of(WRITE) == "write"
    assert tokens.scope_of(UNKNOWN) is None and tokens.scope_of("") is None
    assert tokens.allows("write", "GET") and tokens.allows("write", "POST")
    assert tokens.allows("read", "GET") and not tokens.allows("read", "POST")
    assert not tokens.allows(None, "GET")


def test_a_token_in_both_scopes_writes() -> None:
    tokens = ApiTokens(read=(WRITE,), write=(WRITE,))
    assert tokens.scope_of(WRITE) == "write"


def test_environment_tokens_add_to_the_file(tmp_path: Path) -> None:
    path = tmp_path / "tokens"
    path.write_text(f"read {READ}\n")
    tokens = load_tokens(path, {"SAGARAY_API_WRITE_TOKEN": WRITE,
                                "SAGARAY_API_READ_TOKEN": OTHER_READ})
    assert tokens.read == (READ, OTHER_READ) and tokens.write == (WRITE,)
    only_env = load_tokens(None, {"SAGARAY_API_READ_TOKEN": READ})
    assert only_env.enabled and only_env.write == ()
    assert not load_tokens(None, {}).enabled


@pytest.mark.parametrize(("text", "message"), [
    (f"admin {READ}\n", "line 1: expected 'read TOKEN' or 'write TOKEN'"),
    (f"\nread {READ} extra\n", "line 2: expected"),
    (f"read\n{READ}\n", "line 1: expected"),
    ("write short-secret\n", "at least 16 characters"),
    ('read "quoted-token-0123456789"\n', "only letters, digits"),
    ("# nothing\n", "holds no token"),
])
def test_bad_tokens_files_name_the_line_but_never_the_token(
        tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "tokens"
    path.write_text(text)
    with pytest.raises(TokenConfigError, match=message) as caught:
        load_tokens(path, {})
    for secret in (READ, "short-secret", "quoted-token"):
        assert secret not in str(caught.value)


def test_bad_token_variables_and_a_missing_file(tmp_path: Path) -> None:
    with pytest.raises(TokenConfigError, match="SAGARAY_API_WRITE_TOKEN: a token must be"):
        load_tokens(None, {"SAGARAY_API_WRITE_TOKEN": "tiny"})
    with pytest.raises(TokenConfigError, match="cannot read the API tokens file"):
        load_tokens(tmp_path / "absent", {})
    assert parse_tokens_file("", "x") == ApiTokens()


# -- refusing to serve beyond loopback without tokens -------------------------------


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "::1", "[::1]", "localhost"])
def test_loopback_needs_no_tokens(host: str) -> None:
    assert is_loopback(host)
    check_exposure(host, ApiTokens(), insecure=False)


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "", "10.1.2.3", "api.example.com"])
def test_beyond_loopback_needs_tokens_or_insecure(host: str) -> None:
    assert not is_loopback(host)
    with pytest.raises(InsecureBind, match="--insecure"):
        check_exposure(host, ApiTokens(), insecure=False)
    check_exposure(host, ApiTokens(), insecure=True)
    check_exposure(host, TOKENS, insecure=False)


async def test_serve_itself_refuses_before_building_anything(
        monkeypatch: pytest.MonkeyPatch) -> None:
    async def no_stack(*args: Any) -> Any:
        raise AssertionError("build_stack must not run")

    monkeypatch.setattr(server, "build_stack", no_stack)
    with pytest.raises(InsecureBind, match=r"0\.0\.0\.0"):
        await server.serve(server.ServeOptions(host="0.0.0.0"))


@dataclass
class ServeCalls:
    options: list[server.ServeOptions]
    ray: list[str | None]


@pytest.fixture
def fake_serve(clean_env: pytest.MonkeyPatch) -> ServeCalls:
    """``serve`` and ``init_ray`` recorded instead of run: no Ray, no socket."""
    calls = ServeCalls([], [])

    async def serve(options: server.ServeOptions) -> None:
        calls.options.append(options)

    clean_env.setattr(server, "serve", serve)
    clean_env.setattr(server, "init_ray", lambda address, namespace: calls.ray.append(address))
    return calls


def test_cli_serve_refuses_0_0_0_0_without_tokens(
        fake_serve: ServeCalls, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["serve", "--host", "0.0.0.0"]) == 2
    err = capsys.readouterr().err
    assert "refusing to serve the API on '0.0.0.0' without authentication" in err
    assert fake_serve.options == [] and fake_serve.ray == []


def test_cli_serve_with_insecure_starts(fake_serve: ServeCalls, clean_env: pytest.MonkeyPatch
                                        ) -> None:
    assert main(["serve", "--host", "0.0.0.0", "--insecure"]) == 0
    clean_env.setenv("SAGARAY_INSECURE", "true")
    assert main(["serve", "--host", "0.0.0.0"]) == 0
    assert [o.insecure for o in fake_serve.options] == [True, True]
    assert not any(o.api_tokens.enabled for o in fake_serve.options)


def test_cli_serve_with_tokens_starts(fake_serve: ServeCalls, clean_env: pytest.MonkeyPatch,
                                      tmp_path: Path) -> None:
    path = tmp_path / "tokens"
    path.write_text(f"write {WRITE}\n")
    assert main(["serve", "--host", "0.0.0.0", "--api-tokens", str(path)]) == 0
    clean_env.setenv("SAGARAY_API_READ_TOKEN", READ)
    assert main(["serve", "--host", "0.0.0.0"]) == 0
    first, second = fake_serve.options
    assert first.api_tokens == ApiTokens(write=(WRITE,)) and not first.insecure
    assert second.api_tokens == ApiTokens(read=(READ,))


def test_cli_serve_reports_bad_tokens_without_them(
        fake_serve: ServeCalls, clean_env: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    clean_env.setenv("SAGARAY_API_WRITE_TOKEN", "has space in it 0123456789")
    assert main(["serve"]) == 2
    err = capsys.readouterr().err
    assert "SAGARAY_API_WRITE_TOKEN" in err and "space" not in err
    assert fake_serve.options == []


# -- flag > variable > default -------------------------------------------------------


def test_serve_flags_beat_variables_which_beat_defaults(clean_env: pytest.MonkeyPatch,
                                                       tmp_path: Path) -> None:
    def options(*argv: str) -> server.ServeOptions:
        return serve_options(build_parser().parse_args(["serve", *argv]))

    default = options()
    assert (default.host, default.port, default.hosts, default.insecure) == (
        "127.0.0.1", 8080, None, False)
    assert default.lease_seconds == 10.0 and not default.api_tokens.enabled
    tokens = tmp_path / "tokens"
    tokens.write_text(f"read {READ}\n")
    for name, value in {"SAGARAY_HOST": "127.0.0.9", "SAGARAY_PORT": "9000",
                        "SAGARAY_HOSTS": "3", "SAGARAY_LEASE_SECONDS": "2.5",
                        "SAGARAY_NAMESPACE": "ns", "SAGARAY_SAGAS": "elsewhere",
                        "SAGARAY_SERVICES": "svc.yaml", "SAGARAY_JOURNAL": "sqlite:///j.db",
                        "SAGARAY_RAY_ADDRESS": "auto", "SAGARAY_JAEGER_URL": "http://j",
                        "SAGARAY_API_TOKENS_FILE": str(tokens)}.items():
        clean_env.setenv(name, value)
    from_env = options()
    assert (from_env.host, from_env.port, from_env.hosts, from_env.lease_seconds) == (
        "127.0.0.9", 9000, 3, 2.5)
    assert (from_env.namespace, str(from_env.sagas_dir), str(from_env.services_file)) == (
        "ns", "elsewhere", "svc.yaml")
    assert (from_env.journal_url, from_env.ray_address, from_env.jaeger_url) == (
        "sqlite:///j.db", "auto", "http://j")
    assert from_env.api_tokens.read == (READ,)
    writers = tmp_path / "writers"
    writers.write_text(f"write {WRITE}\n")
    flagged = options("--host", "127.0.0.3", "--port", "9001", "--hosts", "1",
                      "--api-tokens", str(writers), "--journal", "sqlite:///k.db")
    assert (flagged.host, flagged.port, flagged.hosts, flagged.journal_url) == (
        "127.0.0.3", 9001, 1, "sqlite:///k.db")
    assert flagged.api_tokens == ApiTokens(write=(WRITE,))


def test_cli_serve_with_tokens_file_flag_that_is_missing(
        fake_serve: ServeCalls, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert main(["serve", "--api-tokens", str(tmp_path / "absent")]) == 2
    assert "cannot read the API tokens file" in capsys.readouterr().err


def test_a_bad_port_variable_is_a_usage_error(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("SAGARAY_PORT", "eighty")
    assert main(["serve"]) == 2


# -- the CLI client sends the token ------------------------------------------------


@dataclass
class Recorder:
    url: str
    seen: list[tuple[str, str, str | None]]


@pytest.fixture
def recorder() -> Iterator[Recorder]:
    """An HTTP server in its own thread that records each request's Authorization."""
    seen: list[tuple[str, str, str | None]] = []

    async def record(request: web.Request) -> web.Response:
        seen.append((request.method, request.path, request.headers.get("Authorization")))
        return web.json_response({"ok": True})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", record)
    loop = asyncio.new_event_loop()
    runner = web.AppRunner(app, access_log=None)
    loop.run_until_complete(runner.setup())
    site = web.TCPSite(runner, "127.0.0.1", 0)
    loop.run_until_complete(site.start())
    port = runner.addresses[0][1]
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        yield Recorder(f"http://127.0.0.1:{port}", seen)
    finally:
        asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


CLIENT_COMMANDS = [
    (["start", "shop", "--input", "{}"], "POST", "/v1/sagas/shop/executions"),
    (["status", "e1"], "GET", "/v1/executions/e1"),
    (["list"], "GET", "/v1/executions"),
    (["cancel", "e1"], "POST", "/v1/executions/e1/cancel"),
    (["resume", "e1"], "POST", "/v1/executions/e1/resume"),
]


def test_client_commands_send_the_token_from_the_flag_or_the_variable(
        recorder: Recorder, clean_env: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    expected: list[tuple[str, str, str | None]] = []
    for variable, sent in ((None, None), (READ, f"Bearer {READ}")):
        if variable is not None:
            clean_env.setenv("SAGARAY_TOKEN", variable)
        for argv, method, path in CLIENT_COMMANDS:
            assert main([*argv, "--url", recorder.url]) == 0
            assert main([*argv, "--url", recorder.url, "--token", WRITE]) == 0  # the flag wins
            expected += [(method, path, sent), (method, path, f"Bearer {WRITE}")]
    assert recorder.seen == expected
    assert WRITE not in capsys.readouterr().out


def test_client_help_never_shows_a_token(clean_env: pytest.MonkeyPatch,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    clean_env.setenv("SAGARAY_TOKEN", WRITE)
    assert main(["status", "--help"]) == 0
    out = capsys.readouterr().out
    assert "--token" in out and WRITE not in out
