"""The server span of the aiohttp middleware, built whole when the reply is known.

A real aiohttp app on loopback; the spans go through the SDK's simple processor to
its in-memory exporter.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web
from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, DEFAULT_ON, Sampler
from opentelemetry.trace import SpanKind, StatusCode

from coordinator.telemetry.http import saga_trace, server_middleware
from coordinator.telemetry.setup import ExportingProvider

CALLER = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


async def ok(request: web.Request) -> web.Response:
    return web.json_response({"saga": saga_trace(None)})


async def unavailable(request: web.Request) -> web.Response:
    raise web.HTTPServiceUnavailable()


async def missing(request: web.Request) -> web.Response:
    raise web.HTTPNotFound()


async def broken(request: web.Request) -> web.Response:
    raise RuntimeError("no journal")


async def serve(sampler: Sampler, seen: list[str]
                ) -> tuple[web.AppRunner, str, InMemorySpanExporter]:
    exported = InMemorySpanExporter()
    provider = ExportingProvider(sampler=sampler, resource=Resource.create({"service.name": "t"}))
    provider.add_span_processor(SimpleSpanProcessor(exported))

    def hook(request: web.Request, span: trace.Span) -> None:
        seen.append(f"{span.get_span_context().span_id:016x}")

    app = web.Application(middlewares=[server_middleware(provider, "test", hook)])
    app.router.add_post("/v1/sagas/{saga}/executions", ok)
    for path, handler in (("/503", unavailable), ("/404", missing), ("/boom", broken)):
        app.router.add_get(path, handler)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return runner, f"http://127.0.0.1:{runner.addresses[0][1]}", exported


@pytest.fixture
async def traced() -> AsyncIterator[tuple[str, InMemorySpanExporter, list[str]]]:
    seen: list[str] = []
    runner, url, exported = await serve(DEFAULT_ON, seen)
    yield url, exported, seen
    await runner.cleanup()


def only(exported: InMemorySpanExporter) -> ReadableSpan:
    spans = exported.get_finished_spans()
    assert len(spans) == 1, spans
    return spans[0]


async def test_a_request_continues_the_callers_trace_in_a_server_span(
        traced: tuple[str, InMemorySpanExporter, list[str]]) -> None:
    url, exported, seen = traced
    async with aiohttp.ClientSession() as session, session.post(
            f"{url}/v1/sagas/order/executions", headers={"traceparent": CALLER}) as response:
        body = await response.json()
    span = only(exported)
    context, parent = span.get_span_context(), span.parent
    assert span.name == "POST /v1/sagas/{saga}/executions" and span.kind is SpanKind.SERVER
    assert parent is not None and parent.is_remote and f"{parent.span_id:016x}" == CALLER[36:52]
    assert f"{context.trace_id:032x}" == CALLER[3:35] and context.trace_flags.sampled
    assert span.attributes is not None
    assert span.attributes["http.route"] == "/v1/sagas/{saga}/executions"
    assert span.attributes["http.response.status_code"] == 200
    assert span.status.status_code is StatusCode.UNSET
    assert span.start_time is not None and span.end_time is not None
    assert span.start_time <= span.end_time
    # The handler and the hook saw the span as current: the saga's parent is this span.
    assert seen == [f"{context.span_id:016x}"]
    assert body["saga"]["traceparent"] == f"00-{CALLER[3:35]}-{context.span_id:016x}-01"


async def test_a_request_without_a_caller_starts_a_trace(
        traced: tuple[str, InMemorySpanExporter, list[str]]) -> None:
    url, exported, _ = traced
    async with aiohttp.ClientSession() as session, session.get(f"{url}/404"):
        pass
    span = only(exported)
    assert span.parent is None and span.get_span_context().is_valid
    assert span.attributes is not None and span.attributes["http.response.status_code"] == 404
    assert span.status.status_code is StatusCode.UNSET  # the client's error


@pytest.mark.parametrize("path, description", [("/503", None),
                                               ("/boom", "RuntimeError: no journal")])
async def test_a_server_error_marks_the_span(
        traced: tuple[str, InMemorySpanExporter, list[str]], path: str,
        description: str | None) -> None:
    url, exported, _ = traced
    async with aiohttp.ClientSession() as session, session.get(f"{url}{path}") as response:
        assert response.status in (500, 503)
    span = only(exported)
    assert span.status.status_code is StatusCode.ERROR
    assert span.status.description == description


async def test_an_unsampled_request_exports_nothing_yet_passes_its_context_on() -> None:
    seen: list[str] = []
    runner, url, exported = await serve(ALWAYS_OFF, seen)
    try:
        async with aiohttp.ClientSession() as session, session.post(
                f"{url}/v1/sagas/order/executions") as response:
            body = await response.json()
        assert exported.get_finished_spans() == ()
        assert body["saga"]["traceparent"].endswith("-00")
        assert len(seen) == 1
    finally:
        await runner.cleanup()


@pytest.mark.parametrize("host, address, port", [("127.0.0.1:8123", "127.0.0.1", 8123),
                                                 ("localhost:99999", "", None),
                                                 ("bad host:x", "", None)])
async def test_the_host_header_names_the_server_and_a_bad_one_fails_nothing(
        traced: tuple[str, InMemorySpanExporter, list[str]], host: str, address: str,
        port: int | None) -> None:
    url, exported, _ = traced
    reader, writer = await asyncio.open_connection(*url[len("http://"):].split(":"))
    writer.write(f"GET /404 HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
    await writer.drain()
    status_line = await reader.readline()
    writer.close()
    await writer.wait_closed()
    assert status_line.startswith(b"HTTP/1.1 404"), status_line
    attributes = only(exported).attributes
    assert attributes is not None and attributes["server.address"] == address
    assert attributes.get("server.port") == port
