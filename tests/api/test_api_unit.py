"""The HTTP layer against a real service and SQLite journal, with a stand-in host pool.

Every reply is also checked against ``/openapi.json`` by ``ContractClient``.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from coordinator.api import (
    ROUTES,
    create_app,
    idempotency_key,
    int_param,
    parse_object,
    problem_type,
    retry_after,
    status_param,
    trace_context,
    wait_param,
)
from coordinator.core import events as ev
from coordinator.errors import BadRequest, InvalidInput, NotFound, Retryable
from coordinator.journal.base import JournalUnavailable
from coordinator.openapi import MAX_BODY_BYTES, openapi_document

from .conftest import Stack, append

ORDER = {"order_id": "o-1", "amount": 12.5, "items": [{"sku": "A"}]}
TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
START = "/v1/sagas/shop/executions"


async def start(stack: Stack, value: Any = None, **kwargs: Any) -> str:
    reply = await stack.api.call("POST", START, json={"input": value or ORDER}, **kwargs)
    assert reply.status == 202, reply.body
    return str(reply.body["execution_id"])


# -- pure helpers -----------------------------------------------------------------


def test_int_param_parses_and_names_the_bad_parameter() -> None:
    assert int_param({}, "limit", 1, 500) is None
    assert int_param({"limit": "7"}, "limit", 1, 500) == 7
    for raw in ("0", "501", "x", "1.5", " 3", "1_0", "9" * 40):
        with pytest.raises(BadRequest, match=r"'limit' must be an integer between 1 and 500"):
            int_param({"limit": raw}, "limit", 1, 500)
    with pytest.raises(BadRequest, match="'version' must be an integer at least 1"):
        int_param({"version": "-2"}, "version", 1)


def test_wait_param_accepts_0_to_60_seconds() -> None:
    assert wait_param({}) is None
    assert wait_param({"wait": "0"}) == 0.0
    assert wait_param({"wait": "2.5"}) == 2.5
    assert wait_param({"wait": "1e-05"}) == 1e-05
    assert wait_param({"wait": "60"}) == 60.0
    for raw in ("60.01", "-1", "abc", "nan", "inf", ""):
        with pytest.raises(BadRequest, match="'wait' must be a number of seconds between 0 and 60"):
            wait_param({"wait": raw})


def test_status_param_names_the_allowed_statuses() -> None:
    assert status_param({"status": "failed"}) == "failed"
    assert status_param({}) is None
    with pytest.raises(BadRequest, match="running, compensating, completed, compensated, failed"):
        status_param({"status": "done"})


def test_idempotency_key_length_is_checked() -> None:
    assert idempotency_key({}) is None
    assert idempotency_key({"Idempotency-Key": "k"}) == "k"
    for key in ("", "k" * 256):
        with pytest.raises(BadRequest, match="Idempotency-Key"):
            idempotency_key({"Idempotency-Key": key})


def test_trace_context_keeps_only_a_valid_traceparent() -> None:
    assert trace_context({"traceparent": TRACEPARENT}) == {"traceparent": TRACEPARENT}
    invalid = ["garbage", TRACEPARENT.upper(), "ff" + TRACEPARENT[2:],
               f"00-{'0' * 32}-00f067aa0ba902b7-01", TRACEPARENT[:-19] + "0" * 16 + "-01"]
    for value in invalid:
        assert trace_context({"traceparent": value}) is None, value
    assert trace_context({}) is None


def test_parse_object_names_what_is_wrong() -> None:
    assert parse_object(b'{"input": 1}', ("input",), ("input",)) == {"input": 1}
    cases = {b"{nope": "not valid JSON", b"[1]": "must be a JSON object, not an array",
             b'"s"': "not a string", b"{}": "lacks 'input'",
             b'{"input": 1, "inputs": 2}': "unknown members 'inputs'; allowed: 'input'"}
    for raw, message in cases.items():
        with pytest.raises(BadRequest, match=re.escape(message)):
            parse_object(raw, ("input",), ("input",))


def test_problem_types_and_retry_after() -> None:
    assert problem_type(NotFound("x")).endswith("/not-found")
    assert problem_type(InvalidInput("x")).endswith("/invalid-input")
    assert retry_after(0.2) == {"Retry-After": "1"}
    assert retry_after(2.0) == {"Retry-After": "2"}


def test_every_route_is_documented_and_every_documented_route_exists() -> None:
    app = create_app(None)  # type: ignore[arg-type]  # the routes do not need a service
    served = {(route.method, route.resource.canonical)
              for route in app.router.routes() if route.resource is not None}
    documented = {(method.upper(), path)
                  for path, item in openapi_document()["paths"].items() for method in item}
    assert served == documented
    assert len(served) == len(ROUTES)


def test_every_operation_documents_its_errors() -> None:
    for path, item in openapi_document()["paths"].items():
        for method, operation in item.items():
            codes = set(operation["responses"])
            assert "500" in codes, (method, path)
            if "{" in path:
                assert "404" in codes, (method, path)
            if method == "post":
                assert {"409", "503"} <= codes, (method, path)


# -- start ------------------------------------------------------------------------


async def test_start_accepts_and_hands_over(stack: Stack) -> None:
    reply = await stack.api.call("POST", START, json={"input": ORDER})
    assert reply.status == 202
    execution_id = reply.body["execution_id"]
    assert reply.body == {"execution_id": execution_id, "saga": "shop", "version": 2,
                          "status": "running",
                          "links": {"self": f"/v1/executions/{execution_id}"}}
    assert reply.headers["Location"] == f"/v1/executions/{execution_id}"
    for _ in range(100):
        if stack.pool.dispatched:
            break
        await asyncio.sleep(0.01)
    assert stack.pool.dispatched == [execution_id]


async def test_start_takes_an_explicit_version(stack: Stack) -> None:
    reply = await stack.api.call("POST", START + "?version=1", json={"input": ORDER})
    assert (reply.status, reply.body["version"]) == (202, 1)
    missing = await stack.api.call("POST", START + "?version=9", json={"input": ORDER})
    assert missing.status == 404 and "no version 9" in missing.detail
    for bad in ("x", "0", "1.0"):
        reply = await stack.api.call("POST", START + f"?version={bad}", json={"input": ORDER})
        assert reply.status == 400 and "'version'" in reply.detail


async def test_start_is_idempotent_per_key_and_saga(stack: Stack) -> None:
    headers = {"Idempotency-Key": "order-o-1"}
    first = await start(stack, headers=headers)
    again = await stack.api.call("POST", START, json={"input": ORDER}, headers=headers)
    assert again.status == 200
    assert again.body["execution_id"] == first and again.body["steps"]
    other = await stack.api.call("POST", START, json={"input": {**ORDER, "amount": 1}},
                                 headers=headers)
    assert other.status == 409 and "order-o-1" in other.detail
    plain = await stack.api.call("POST", "/v1/sagas/plain/executions", json={"input": 1},
                                 headers=headers)
    assert plain.status == 202 and plain.body["execution_id"] != first


async def test_start_lists_every_input_violation(stack: Stack) -> None:
    bad = {"amount": -1, "items": [{"sku": 3}, {}]}
    reply = await stack.api.call("POST", START, json={"input": bad})
    assert reply.status == 422
    assert reply.body["type"].endswith("/invalid-input")
    paths = sorted(error["path"] for error in reply.body["errors"])
    assert paths == ["$", "$.amount", "$.items[0].sku", "$.items[1]"]
    assert "order_id" in reply.detail


@pytest.mark.parametrize(("body", "message"), [
    (b"{not json", "not valid JSON"),
    (b"", "body is empty"),
    (b"[1, 2]", "must be a JSON object, not an array"),
    (b'{"value": 1}', "lacks 'input'"),
    (b'{"input": {}, "extra": 1}', "unknown members 'extra'"),
    (b"\xff\xfe", "not valid JSON"),
])
async def test_start_rejects_malformed_bodies(stack: Stack, body: bytes, message: str) -> None:
    reply = await stack.api.call("POST", START, data=body,
                                 headers={"Content-Type": "application/json"})
    assert reply.status == 400
    assert message in reply.detail
    assert reply.body["instance"] == START


async def test_start_of_unknown_saga_is_404(stack: Stack) -> None:
    reply = await stack.api.call("POST", "/v1/sagas/nope/executions", json={"input": {}})
    assert reply.status == 404
    assert "'nope'" in reply.detail and "plain, shop" in reply.detail


async def test_body_over_1_mib_is_413(stack: Stack) -> None:
    padding = "x" * MAX_BODY_BYTES
    reply = await stack.api.call("POST", START, json={"input": {"pad": padding}})
    assert reply.status == 413 and str(MAX_BODY_BYTES) in reply.detail

    async def chunks() -> AsyncIterator[bytes]:
        # No Content-Length: the limit must hold while reading, too.
        yield b'{"input": {"pad": "'
        for _ in range(17):
            yield b"x" * 65536
        yield b'"}}'

    streamed = await stack.api.call("POST", "/v1/executions/x/cancel", data=chunks())
    assert streamed.status == 413


async def test_start_passes_a_valid_traceparent(stack: Stack) -> None:
    traced = await start(stack, headers={"traceparent": TRACEPARENT})
    untraced = await start(stack, headers={"traceparent": "not-a-trace"})
    first = (await stack.journal.read(traced))[0].event
    second = (await stack.journal.read(untraced))[0].event
    assert isinstance(first, ev.ExecutionStarted) and isinstance(second, ev.ExecutionStarted)
    assert first.trace == {"traceparent": TRACEPARENT}
    assert second.trace is None


async def test_start_with_wait_returns_the_terminal_execution(stack: Stack) -> None:
    stack.pool.complete_on_dispatch = True
    reply = await stack.api.call("POST", START + "?wait=5", json={"input": ORDER})
    assert reply.status == 200
    assert reply.body["status"] == "completed" and reply.body["output"] == {"done": True}


async def test_start_with_wait_times_out_as_accepted(stack: Stack) -> None:
    began = time.monotonic()
    reply = await stack.api.call("POST", START + "?wait=0.3", json={"input": ORDER})
    assert time.monotonic() - began >= 0.3
    assert reply.status == 202 and reply.body["status"] == "running"
    assert set(reply.body) == {"execution_id", "saga", "version", "status", "links"}


@pytest.mark.parametrize("wait", ["61", "-1", "soon", "nan"])
async def test_wait_out_of_range_is_400(stack: Stack, wait: str) -> None:
    reply = await stack.api.call("POST", START + f"?wait={wait}", json={"input": ORDER})
    assert reply.status == 400 and "'wait'" in reply.detail
    execution_id = await start(stack)
    reply = await stack.api.call("GET", f"/v1/executions/{execution_id}?wait={wait}")
    assert reply.status == 400 and "'wait'" in reply.detail


# -- read -------------------------------------------------------------------------


async def test_get_execution_and_its_events(stack: Stack) -> None:
    execution_id = await start(stack)
    reply = await stack.api.call("GET", f"/v1/executions/{execution_id}")
    assert reply.status == 200
    assert [step["name"] for step in reply.body["steps"]] == ["reserve", "charge", "ship"]
    assert reply.body["links"]["events"] == f"/v1/executions/{execution_id}/events"
    events = await stack.api.call("GET", f"/v1/executions/{execution_id}/events")
    assert events.status == 200
    assert [e["type"] for e in events.body["events"]] == ["execution_started"]
    assert events.body["events"][0]["seq"] == 1


async def test_get_with_wait_answers_200_either_way(stack: Stack) -> None:
    execution_id = await start(stack)
    running = await stack.api.call("GET", f"/v1/executions/{execution_id}?wait=0.1")
    assert (running.status, running.body["status"]) == (200, "running")
    await append(stack.journal, execution_id, [ev.ExecutionCompleted(at=time.time())],
                 "completed")
    done = await stack.api.call("GET", f"/v1/executions/{execution_id}?wait=30")
    assert (done.status, done.body["status"]) == (200, "completed")


@pytest.mark.parametrize("suffix", ["", "/events"])
async def test_unknown_execution_is_404(stack: Stack, suffix: str) -> None:
    reply = await stack.api.call("GET", f"/v1/executions/nope{suffix}")
    assert reply.status == 404 and "'nope'" in reply.detail


async def test_list_pages_and_filters(stack: Stack) -> None:
    first, second = await start(stack), await start(stack)
    await stack.api.call("POST", "/v1/sagas/plain/executions", json={"input": None})
    page = await stack.api.call("GET", "/v1/executions?saga=shop&limit=1")
    assert page.status == 200 and len(page.body["items"]) == 1
    cursor = page.body["next_cursor"]
    rest = await stack.api.call("GET", "/v1/executions", params={"saga": "shop",
                                                                  "cursor": cursor})
    ids = {page.body["items"][0]["execution_id"], rest.body["items"][0]["execution_id"]}
    assert ids == {first, second} and rest.body["next_cursor"] is None
    everything = await stack.api.call("GET", "/v1/executions")
    assert len(everything.body["items"]) == 3
    blank = await stack.api.call("GET", "/v1/executions?saga=&cursor=")
    assert blank.body == everything.body
    done = await stack.api.call("GET", "/v1/executions?status=completed")
    assert done.body == {"items": [], "next_cursor": None}


@pytest.mark.parametrize(("query", "message"), [
    ("limit=0", "'limit'"), ("limit=501", "'limit'"), ("limit=ten", "'limit'"),
    ("status=done", "'status'"), ("cursor=%25%25", "invalid cursor"),
])
async def test_list_rejects_bad_parameters(stack: Stack, query: str, message: str) -> None:
    reply = await stack.api.call("GET", f"/v1/executions?{query}")
    assert reply.status == 400 and message in reply.detail


# -- cancel and resume ------------------------------------------------------------


async def test_cancel_running_execution(stack: Stack) -> None:
    execution_id = await start(stack)
    reply = await stack.api.call("POST", f"/v1/executions/{execution_id}/cancel",
                                 json={"reason": "customer changed their mind"})
    assert reply.status == 202 and reply.body["execution_id"] == execution_id
    assert ("cancel", execution_id, ("customer changed their mind",)) in stack.pool.calls
    bare = await stack.api.call("POST", f"/v1/executions/{execution_id}/cancel")
    assert bare.status == 202
    assert ("cancel", execution_id, (None,)) in stack.pool.calls


@pytest.mark.parametrize(("body", "message"), [
    (b'{"reason": 5}', "'reason' must be a string or null"),
    (b'{"why": "x"}', "unknown members 'why'"),
    (b"{", "not valid JSON"),
])
async def test_cancel_rejects_bad_bodies(stack: Stack, body: bytes, message: str) -> None:
    execution_id = await start(stack)
    reply = await stack.api.call("POST", f"/v1/executions/{execution_id}/cancel", data=body)
    assert reply.status == 400 and message in reply.detail


async def test_cancel_conflicts(stack: Stack) -> None:
    done = await start(stack)
    await append(stack.journal, done, [ev.ExecutionCompleted(at=time.time())], "completed")
    reply = await stack.api.call("POST", f"/v1/executions/{done}/cancel")
    assert reply.status == 409 and "already completed" in reply.detail

    pivoted = await start(stack)
    now = time.time()
    await append(stack.journal, pivoted, [
        ev.StepAttemptStarted(at=now, step="reserve", attempt=1),
        ev.StepAttemptSucceeded(at=now, step="reserve", attempt=1),
        ev.StepAttemptStarted(at=now, step="charge", attempt=1),
        ev.StepAttemptSucceeded(at=now, step="charge", attempt=1)])
    reply = await stack.api.call("POST", f"/v1/executions/{pivoted}/cancel")
    assert reply.status == 409 and "pivot step 'charge'" in reply.detail

    refused = await start(stack)
    stack.pool.answers["cancel"] = "too_late"
    reply = await stack.api.call("POST", f"/v1/executions/{refused}/cancel")
    assert reply.status == 409
    missing = await stack.api.call("POST", "/v1/executions/nope/cancel")
    assert missing.status == 404


async def test_resume(stack: Stack) -> None:
    running = await start(stack)
    reply = await stack.api.call("POST", f"/v1/executions/{running}/resume")
    assert reply.status == 409 and "only a failed execution" in reply.detail
    failed = await start(stack)
    await append(stack.journal, failed, [
        ev.ExecutionFailed(at=time.time(), reason="compensation_failed", error="boom",
                           not_compensated=["reserve"])], "failed")
    reply = await stack.api.call("POST", f"/v1/executions/{failed}/resume")
    assert reply.status == 202 and reply.body["not_compensated"] == ["reserve"]
    assert ("resume", failed, ()) in stack.pool.calls
    stack.pool.answers["resume"] = "busy"
    reply = await stack.api.call("POST", f"/v1/executions/{failed}/resume")
    assert reply.status == 409 and "busy" in reply.detail
    missing = await stack.api.call("POST", "/v1/executions/nope/resume")
    assert missing.status == 404


# -- sagas, health, routing -------------------------------------------------------


async def test_sagas(stack: Stack) -> None:
    listed = await stack.api.call("GET", "/v1/sagas")
    assert [(s["name"], s["versions"]) for s in listed.body["sagas"]] == [
        ("plain", [1]), ("shop", [1, 2])]
    assert listed.body["sagas"][0]["latest"]["timeout"] == "90s"
    shop = await stack.api.call("GET", "/v1/sagas/shop")
    assert shop.status == 200
    assert [d["version"] for d in shop.body["versions"]] == [1, 2]
    missing = await stack.api.call("GET", "/v1/sagas/nope")
    assert missing.status == 404 and "'nope'" in missing.detail


async def test_health_and_readiness(stack: Stack) -> None:
    assert (await stack.api.call("GET", "/healthz")).body == {"status": "ok"}
    ready = await stack.api.call("GET", "/readyz")
    assert ready.body == {"status": "ready", "checks": {"journal": "ok", "ray": "ok"}}
    stack.ready["checks"]["ray"] = "no hosts answered"
    reply = await stack.api.call("GET", "/readyz")
    assert reply.status == 503 and "ray: no hosts answered" in reply.detail
    assert reply.body["checks"] == {"journal": "ok", "ray": "no hosts answered"}
    stack.ready["raise"] = JournalUnavailable("postgres://admin:hunter2@db")
    reply = await stack.api.call("GET", "/readyz")
    assert reply.status == 503 and "JournalUnavailable" in reply.detail
    assert "hunter2" not in str(reply.body)


async def test_readiness_without_a_check(stack: Stack) -> None:
    client = TestClient(TestServer(create_app(stack.service)))
    await client.start_server()
    try:
        async with client.get("/readyz") as response:
            assert response.status == 200
            assert await response.json() == {"status": "ready", "checks": {}}
    finally:
        await client.close()


async def test_unknown_route_and_wrong_method_are_problems(stack: Stack) -> None:
    reply = await stack.api.call("GET", "/v2/nothing")
    assert reply.status == 404 and "/openapi.json" in reply.detail
    reply = await stack.api.call("DELETE", "/v1/executions/abc")
    assert reply.status == 405 and reply.headers["Allow"] == "GET"
    assert "DELETE is not allowed" in reply.detail
    reply = await stack.api.call("GET", START)
    assert reply.status == 405 and reply.headers["Allow"] == "POST"


async def test_openapi_document_is_served(stack: Stack) -> None:
    reply = await stack.api.call("GET", "/openapi.json")
    assert reply.status == 200 and reply.body == openapi_document()
    assert reply.body["openapi"].startswith("3.1")


# -- unavailability and unexpected errors -----------------------------------------


async def test_closed_journal_is_503_with_retry_after(stack: Stack) -> None:
    execution_id = await start(stack)
    await stack.journal.close()
    requests = [("GET", f"/v1/executions/{execution_id}", None),
                ("GET", f"/v1/executions/{execution_id}/events", None),
                ("GET", "/v1/executions", None),
                ("POST", START, {"input": ORDER}),
                ("POST", f"/v1/executions/{execution_id}/cancel", None),
                ("POST", f"/v1/executions/{execution_id}/resume", None)]
    for method, path, body in requests:
        reply = await stack.api.call(method, path, json=body)
        assert reply.status == 503, (method, path, reply.body)
        assert reply.headers["Retry-After"] == "1"
        assert "journal is unavailable" in reply.detail


async def test_escaping_journal_unavailable_is_503(stack: Stack,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    async def unavailable(execution_id: str) -> dict[str, Any]:
        raise JournalUnavailable("postgres://admin:hunter2@db refused")

    monkeypatch.setattr(stack.service, "get", unavailable)
    reply = await stack.api.call("GET", "/v1/executions/abc")
    assert reply.status == 503 and reply.headers["Retry-After"] == "1"
    assert "hunter2" not in str(reply.body)


async def test_retryable_keeps_its_retry_after(stack: Stack,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    async def busy(execution_id: str) -> dict[str, Any]:
        raise Retryable("hosts are restarting", retry_after=2.5)

    monkeypatch.setattr(stack.service, "events", busy)
    reply = await stack.api.call("GET", "/v1/executions/abc/events")
    assert reply.status == 503 and reply.headers["Retry-After"] == "3"
    assert reply.detail == "hosts are restarting"


async def test_unexpected_error_is_500_without_internals(
        stack: Stack, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    async def broken(execution_id: str) -> dict[str, Any]:
        raise RuntimeError("password=hunter2 in /srv/secret.py")

    monkeypatch.setattr(stack.service, "get", broken)
    with caplog.at_level(logging.ERROR, logger="coordinator.api"):
        reply = await stack.api.call("GET", "/v1/executions/abc")
    assert reply.status == 500 and reply.body["title"] == "Internal error"
    assert "hunter2" not in str(reply.body) and "secret" not in str(reply.body)
    assert "hunter2" in caplog.text
