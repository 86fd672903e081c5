"""The span encoder writes the SDK encoder's bytes, and its exporter delivers them.

Pure tests compare bytes with ``encode_spans(...).SerializePartialToString()`` of
the installed SDK over generated spans; the exporter tests post to a real OTLP/HTTP
receiver on loopback.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans as sdk_encode
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import Event, ReadableSpan
from opentelemetry.sdk.trace.export import SpanExportResult
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import Link, SpanContext, SpanKind, Status, StatusCode, TraceFlags
from opentelemetry.trace.span import TraceState

from coordinator.telemetry import otlp_encoding
from coordinator.telemetry.otlp_encoding import BytesEncodingExporter, encode_spans, fast_exporter
from coordinator.telemetry.setup import _exporter
from tests.tracing.receiver import OtlpReceiver

RESOURCES = [Resource.create({"service.name": "sagaray-host", "process.pid": 7}),
             Resource.create({"service.name": "other"}, schema_url="https://schema/1")]
SCOPES = [None, InstrumentationScope("sagaray", "1.0", "https://scope/1"),
          InstrumentationScope("aiohttp")]

ids64 = st.integers(1, 2**64 - 1)
text = st.text(max_size=12)
scalars = st.one_of(st.none(), st.booleans(), text, st.integers(-(2**63), 2**63 - 1),
                    st.floats(allow_nan=False), st.binary(max_size=4))
values = st.one_of(scalars, st.tuples(text, text), st.tuples(st.integers(0, 9)))
# Few keys, so spans of one batch share attributes (the cache's case) and a key
# meets values of several types (True and 1 are equal as dict keys).
attributes = st.dictionaries(st.sampled_from(["saga.step", "saga.attempt", "a", "b", ""]),
                             values, max_size=5)
contexts = st.builds(
    SpanContext, trace_id=st.integers(1, 2**128 - 1), span_id=ids64, is_remote=st.booleans(),
    trace_flags=st.just(TraceFlags(1)),
    trace_state=st.one_of(st.none(), st.just(TraceState([("vendor", "x1")]))))
events = st.builds(Event, name=text, attributes=attributes,
                   timestamp=st.integers(0, 2**63 - 1))
statuses = st.one_of(st.just(Status(StatusCode.UNSET)), st.just(Status(StatusCode.OK)),
                     st.builds(Status, st.just(StatusCode.ERROR), st.one_of(st.none(), text)))


@st.composite
def spans(draw: st.DrawFn) -> ReadableSpan:
    return ReadableSpan(
        name=draw(text), context=draw(contexts), parent=draw(st.one_of(st.none(), contexts)),
        resource=draw(st.sampled_from(RESOURCES)),
        instrumentation_scope=draw(st.sampled_from(SCOPES)),
        attributes=draw(attributes), events=draw(st.lists(events, max_size=2)),
        links=draw(st.lists(st.builds(Link, contexts, attributes), max_size=1)),
        kind=draw(st.sampled_from(list(SpanKind))), status=draw(statuses),
        start_time=draw(st.one_of(st.just(0), st.integers(1, 2**63 - 1))),
        end_time=draw(st.integers(0, 2**63 - 1)))


def sdk_bytes(batch: list[ReadableSpan]) -> bytes:
    encoded: bytes = sdk_encode(batch).SerializePartialToString()
    return encoded


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(spans(), max_size=8))
def test_same_bytes_as_the_sdk_encoder(batch: list[ReadableSpan]) -> None:
    assert encode_spans(batch) == sdk_bytes(batch)
    assert encode_spans(batch) == sdk_bytes(batch)  # again, now from the attribute cache


def plain_span(attrs: dict[str, Any], span_id: int = 5) -> ReadableSpan:
    return ReadableSpan(name="POST charge", context=SpanContext(9, span_id, False, TraceFlags(1)),
                        parent=SpanContext(9, 4, True), resource=RESOURCES[0],
                        attributes=attrs, kind=SpanKind.CLIENT, start_time=1, end_time=2)


def test_equal_values_of_other_types_are_not_confused() -> None:
    values = (True, 1, 1.0, "1", 1, True, False, 0, 0.0, -0.0, 0.0, (1,), (True,), (1,), (1.0,))
    batch = [plain_span({"x": value}) for value in values]
    assert encode_spans(batch) == sdk_bytes(batch)


def test_an_attribute_the_sdk_cannot_encode_is_left_out_as_the_sdk_does() -> None:
    batch = [plain_span({"huge": 2**64, "list": ["a", 2**70], "ok": "x"}, 7)]
    assert encode_spans(batch) == sdk_bytes(batch)
    assert b"huge" not in encode_spans(batch) and b"ok" in encode_spans(batch)


def test_a_full_cache_is_emptied_and_stays_correct(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(otlp_encoding, "_ATTRIBUTE_CACHE_LIMIT", 4)
    monkeypatch.setattr(otlp_encoding, "_attribute_caches", {})
    batch = [plain_span({"saga.execution_id": f"e{i}", "saga.step": "charge"}, i + 1)
             for i in range(10)]
    assert encode_spans(batch) == sdk_bytes(batch)
    assert all(len(cache) <= 4 for cache in otlp_encoding._attribute_caches.values())


def test_the_installed_sdk_gets_the_bytes_encoder() -> None:
    exporter = fast_exporter("http://127.0.0.1:9/v1/traces", None)
    try:
        assert isinstance(exporter, BytesEncodingExporter)
    finally:
        exporter.shutdown()


@pytest.mark.parametrize("protocol", ["http/protobuf", "", "http/json"])
def test_the_providers_exporter_is_the_bytes_encoder(protocol: str) -> None:
    exporter = _exporter({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:9",
                          "OTEL_EXPORTER_OTLP_PROTOCOL": protocol})
    try:
        assert isinstance(exporter, BytesEncodingExporter)
    finally:
        exporter.shutdown()


def test_an_sdk_without_the_expected_parts_keeps_its_own(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(otlp_encoding, "_SDK_PARTS", ("_client", "_moved_in_a_later_release"))
    exporter = fast_exporter("http://127.0.0.1:9/v1/traces", None)
    try:
        assert type(exporter) is OTLPSpanExporter
    finally:
        exporter.shutdown()


async def test_exports_to_a_real_receiver_with_headers() -> None:
    receiver = OtlpReceiver()
    await receiver.start()
    exporter = fast_exporter(f"{receiver.url}/v1/traces", {"x-tenant": "t1"})
    try:
        batch = [plain_span({"saga.step": "charge", "saga.attempt": 2}, 11),
                 plain_span({"saga.step": "ship"}, 12)]
        result = await asyncio.to_thread(exporter.export, batch)
        assert result is SpanExportResult.SUCCESS
        assert receiver.requests == 1
        got = {span.span_id: span for span in receiver.spans}
        assert got[f"{11:016x}"].attributes == {"saga.step": "charge", "saga.attempt": 2}
        assert got[f"{12:016x}"].parent_span_id == f"{4:016x}"
        assert got[f"{12:016x}"].resource["service.name"] == "sagaray-host"
    finally:
        await asyncio.to_thread(exporter.shutdown)
        await receiver.close()


async def test_a_refused_export_is_a_failure() -> None:
    receiver = OtlpReceiver()
    await receiver.start()
    exporter = fast_exporter(f"{receiver.url}/v1/nowhere", None)
    try:
        result = await asyncio.to_thread(exporter.export, [plain_span({})])
        assert result is SpanExportResult.FAILURE
    finally:
        await asyncio.to_thread(exporter.shutdown)
        await receiver.close()


def test_an_oversized_batch_is_dropped_before_sending() -> None:
    exporter = BytesEncodingExporter(endpoint="http://127.0.0.1:9/v1/traces",
                                     max_request_size=10)
    try:
        # Port 9 would refuse the connection: a failure that is not the size check
        # would take the client's retries; this one returns at once.
        assert exporter.export([plain_span({"a": "b" * 20})]) is SpanExportResult.FAILURE
    finally:
        exporter.shutdown()
