"""What the HttpInvoker sends and reads back, against a real aiohttp server on loopback.

The invoker parses with orjson and falls back to the standard json module for what
orjson refuses but JSON allows; these pin that the reply body a step sees is the same
either way, and that request bodies arrive as the JSON the core rendered.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from coordinator.core.commands import HttpRequest
from coordinator.invoker import Endpoint, HttpInvoker

BIG = 2**70  # beyond orjson's 64-bit integers
REPLIES: dict[str, tuple[bytes, str]] = {
    "/object": (b'{"id": "r-1", "items": [1, 2.5, null, true]}', "application/json"),
    "/big": (b'{"amount": ' + str(BIG).encode() + b"}", "application/json"),
    "/nan": (b'{"ratio": NaN}', "application/json"),
    "/broken": (b'{"id": ', "application/json"),
    "/latin": ("café".encode("latin-1"), "text/plain; charset=latin-1"),
    "/empty": (b"", "application/json"),
}


@pytest.fixture
async def server() -> AsyncIterator[tuple[str, list[Any]]]:
    received: list[Any] = []

    async def reply(request: web.Request) -> web.Response:
        received.append(await request.json() if request.can_read_body else None)
        body, content_type = REPLIES[request.path]
        return web.Response(body=body, headers={"Content-Type": content_type})

    app = web.Application()
    app.router.add_route("POST", "/{name}", reply)
    test_server = TestServer(app, host="127.0.0.1")
    await test_server.start_server()
    yield str(test_server.make_url("")).rstrip("/"), received
    await test_server.close()


async def call(url: str, path: str, body: Any = None) -> Any:
    invoker = HttpInvoker({"svc": Endpoint("svc", (url,))})
    try:
        reply = await invoker.invoke(HttpRequest(
            service="svc", method="POST", path=path, body=body, headers={}, timeout=5.0,
            idempotency_key=uuid.uuid4().hex))
    finally:
        await invoker.close()
    assert reply.failure is None, reply.error
    assert reply.status_code == 200
    return reply.body


@pytest.mark.parametrize(("path", "expected"), [
    ("/object", {"id": "r-1", "items": [1, 2.5, None, True]}),
    ("/big", {"amount": BIG}),
    ("/broken", '{"id": '),
    ("/latin", "café"),
    ("/empty", None),
])
async def test_reply_bodies_read_as_json_or_text(
        server: tuple[str, list[Any]], path: str, expected: Any) -> None:
    url, _ = server
    assert await call(url, path) == expected


async def test_a_nan_in_a_json_reply_is_read_as_json_does(server: tuple[str, list[Any]]) -> None:
    url, _ = server
    body = await call(url, "/nan")
    assert body["ratio"] != body["ratio"]  # NaN, as json.loads reads it


async def test_request_bodies_arrive_as_rendered(server: tuple[str, list[Any]]) -> None:
    url, received = server
    sent = [{"sku": "A-1", "qty": 2, "note": "naïve ☕"}, {"amount": BIG}, None]
    for body in sent:
        await call(url, "/object", body)
    assert received == sent
