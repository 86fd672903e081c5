"""OTLP span encoding straight to protobuf bytes, the same bytes as the SDK's encoder.

Why: with tracing on, the OTLP exporter's ``encode_spans`` was the largest single
cost in a host (about 18 % of its samples, 67-80 us per span here): it builds a
protobuf message object per span, per attribute and per attribute value. A saga's
spans repeat most of their attributes (saga name, step, phase, service, method,
URL), so this encoder keeps each attribute's encoded ``KeyValue`` bytes and writes
a span as a join of byte strings. What is rare in Sagaray's spans (links, array or
map values, the resource and scope of a batch) goes through the SDK's own encoder
for that piece.

The output is byte for byte what ``encode_spans(spans).SerializePartialToString()``
gives (pinned by a property-based test against the SDK), so receivers cannot tell,
for spans that share their resource and scope objects, as one provider's spans do.
(Spans are grouped by those objects' identity; equal but distinct ones would make
separate, equally valid groups where the SDK makes one.)
"""

from __future__ import annotations

import functools
import logging
import struct
from collections.abc import Sequence
from typing import Any

from opentelemetry.exporter.otlp.proto.common._internal import (
    _encode_instrumentation_scope,
    _encode_key_value,
    _encode_resource,
)
from opentelemetry.exporter.otlp.proto.common._internal.trace_encoder import _encode_links
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExportResult
from opentelemetry.trace import SpanKind

log = logging.getLogger(__name__)

# Field tags (field number << 3 | wire type) of the OTLP messages written here.
_REQUEST_RESOURCE_SPANS = 0x0A
_RESOURCE_SPANS_RESOURCE, _RESOURCE_SPANS_SCOPE_SPANS, _RESOURCE_SPANS_SCHEMA = 0x0A, 0x12, 0x1A
_SCOPE_SPANS_SCOPE, _SCOPE_SPANS_SPAN, _SCOPE_SPANS_SCHEMA = 0x0A, 0x12, 0x1A
_SPAN_TRACE_ID, _SPAN_ID, _SPAN_TRACE_STATE, _SPAN_PARENT_ID = 0x0A, 0x12, 0x1A, 0x22
_SPAN_NAME, _SPAN_KIND, _SPAN_START, _SPAN_END = 0x2A, 0x30, 0x39, 0x41
_SPAN_ATTRIBUTE, _SPAN_DROPPED_ATTRIBUTES, _SPAN_EVENT = 0x4A, 0x50, 0x5A
_SPAN_DROPPED_EVENTS, _SPAN_LINK, _SPAN_DROPPED_LINKS, _SPAN_STATUS = 0x60, 0x6A, 0x70, 0x7A
_SPAN_FLAGS = b"\x85\x01"  # field 16, fixed32: two bytes of tag
_EVENT_TIME, _EVENT_NAME, _EVENT_ATTRIBUTE, _EVENT_DROPPED = 0x09, 0x12, 0x1A, 0x20
_STATUS_MESSAGE, _STATUS_CODE = 0x12, 0x18
_KEY, _VALUE = 0x0A, 0x12
_STRING, _BOOL, _INT, _DOUBLE = 0x0A, 0x10, 0x18, 0x21

_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1
_FIXED64 = struct.Struct("<Q")
_DOUBLE_BITS = struct.Struct("<d")
_FIXED32 = struct.Struct("<I")
# Whole fields that are the same in many spans, encoded once.
_KIND = {kind: bytes((_SPAN_KIND, number)) for kind, number in (
    (SpanKind.INTERNAL, 1), (SpanKind.SERVER, 2), (SpanKind.CLIENT, 3),
    (SpanKind.PRODUCER, 4), (SpanKind.CONSUMER, 5))}
_HAS_IS_REMOTE, _IS_REMOTE = 0x100, 0x200
_FLAGS_LOCAL_PARENT = _SPAN_FLAGS + _FIXED32.pack(_HAS_IS_REMOTE)
_FLAGS_REMOTE_PARENT = _SPAN_FLAGS + _FIXED32.pack(_HAS_IS_REMOTE | _IS_REMOTE)
_TRACE_ID_PREFIX, _SPAN_ID_PREFIX = bytes((_SPAN_TRACE_ID, 16)), bytes((_SPAN_ID, 8))
_PARENT_ID_PREFIX = bytes((_SPAN_PARENT_ID, 8))

# Encoded attributes by tag, then (key, value), with the value's type; cleared when
# full, since per-saga values (execution ids) would otherwise grow it without bound.
_ATTRIBUTE_CACHE_LIMIT = 8192
_SCALARS = frozenset({str, bool, int})  # not float: -0.0 == 0.0 as a key, not as bits
_attribute_caches: dict[int, dict[tuple[str, Any], tuple[type, bytes]]] = {}


def encode_spans(spans: Sequence[ReadableSpan]) -> bytes:
    """An ``ExportTraceServiceRequest`` holding ``spans``, serialized."""
    # Grouped by identity: a Resource hashes by JSON-encoding its attributes, which
    # cost more than encoding the span. Equal resources are one object per provider.
    by_resource: dict[int, tuple[Any, dict[int, tuple[Any, list[bytes]]]]] = {}
    for span in spans:
        resource = span.resource
        _, scopes = by_resource.setdefault(id(resource), (resource, {}))
        scope = span.instrumentation_scope or None
        scopes.setdefault(id(scope), (scope, []))[1].append(_span(span))
    request = []
    for resource, scopes in by_resource.values():
        parts = [_field(_RESOURCE_SPANS_RESOURCE, _encode_resource(resource).SerializeToString())]
        for scope, encoded in scopes.values():
            parts.append(_field(_RESOURCE_SPANS_SCOPE_SPANS, _scope_spans(scope, encoded)))
        if resource.schema_url:
            parts.append(_field(_RESOURCE_SPANS_SCHEMA, resource.schema_url.encode()))
        request.append(_field(_REQUEST_RESOURCE_SPANS, b"".join(parts)))
    return b"".join(request)


def _scope_spans(scope: Any, spans: list[bytes]) -> bytes:
    scope_bytes = _encode_instrumentation_scope(scope).SerializeToString()
    parts = [_field(_SCOPE_SPANS_SCOPE, scope_bytes)]
    parts.extend(_field(_SCOPE_SPANS_SPAN, span) for span in spans)
    if scope is not None and scope.schema_url:
        parts.append(_field(_SCOPE_SPANS_SCHEMA, scope.schema_url.encode()))
    return b"".join(parts)


def _span(span: ReadableSpan) -> bytes:
    context, parent = span.context, span.parent
    assert context is not None, "a finished span has a context"
    parts = [_TRACE_ID_PREFIX, context.trace_id.to_bytes(16, "big"),
             _SPAN_ID_PREFIX, context.span_id.to_bytes(8, "big")]
    if context.trace_state is not None:
        state = ",".join(f"{key}={value}" for key, value in context.trace_state.items())
        if state:
            parts.append(_field(_SPAN_TRACE_STATE, state.encode()))
    if parent is not None:
        parts += (_PARENT_ID_PREFIX, parent.span_id.to_bytes(8, "big"))
    if span.name:
        parts.append(_field(_SPAN_NAME, span.name.encode()))
    parts.append(_KIND[span.kind])
    _fixed64(parts, _SPAN_START, span.start_time)
    _fixed64(parts, _SPAN_END, span.end_time)
    attributes, links = span.attributes, span.links
    if attributes:
        _attributes(parts, _SPAN_ATTRIBUTE, attributes)
    # Counted even when nothing is left (a limit of 0 drops every attribute).
    _varint_field(parts, _SPAN_DROPPED_ATTRIBUTES, span.dropped_attributes)
    for event in span.events:
        parts.append(_field(_SPAN_EVENT, _event(event)))
    _varint_field(parts, _SPAN_DROPPED_EVENTS, span.dropped_events)
    for link in _encode_links(links) if links else ():
        parts.append(_field(_SPAN_LINK, link.SerializeToString()))
    _varint_field(parts, _SPAN_DROPPED_LINKS, span.dropped_links)
    parts.append(_status(span.status.status_code.value, span.status.description))
    parts.append(_FLAGS_REMOTE_PARENT if parent is not None and parent.is_remote
                 else _FLAGS_LOCAL_PARENT)
    return b"".join(parts)


def _event(event: Any) -> bytes:
    parts: list[bytes] = []
    _fixed64(parts, _EVENT_TIME, event.timestamp)
    if event.name:
        parts.append(_field(_EVENT_NAME, event.name.encode()))
    if event.attributes:
        _attributes(parts, _EVENT_ATTRIBUTE, event.attributes)
    _varint_field(parts, _EVENT_DROPPED, event.dropped_attributes)
    return b"".join(parts)


@functools.lru_cache(maxsize=256)
def _status(code: int, description: str | None) -> bytes:
    """The span's ``Status`` field (a handful of distinct ones: kept once encoded)."""
    parts: list[bytes] = []
    if description:
        parts.append(_field(_STATUS_MESSAGE, description.encode()))
    _varint_field(parts, _STATUS_CODE, code)
    return _field(_SPAN_STATUS, b"".join(parts))


def _attributes(parts: list[bytes], tag: int, attributes: Any) -> None:
    """Each attribute as a length-delimited ``KeyValue`` field with ``tag``."""
    cache = _attribute_caches.setdefault(tag, {})
    for item in attributes.items():
        # Only these are kept: a tuple (1,) equals (True,) as a key, whatever the check.
        kept = type(item[1]) in _SCALARS
        hit = cache.get(item) if kept else None
        # True == 1 and 1 == 1.0 as keys: the value's type must match too.
        if hit is not None and hit[0] is type(item[1]):
            parts.append(hit[1])
            continue
        try:
            encoded = _field(tag, _key_value(*item))
        except Exception:  # as the SDK does: the attribute is left out, the span kept
            log.exception("could not encode attribute %r", item[0])
            continue
        if kept:
            if len(cache) >= _ATTRIBUTE_CACHE_LIMIT:
                cache.clear()
            cache[item] = (type(item[1]), encoded)
        parts.append(encoded)


def _key_value(key: str, value: Any) -> bytes:
    if isinstance(value, bool):
        any_value = bytes((_BOOL, 1 if value else 0))
    elif isinstance(value, str):
        any_value = _field(_STRING, value.encode())
    elif isinstance(value, int) and _INT64_MIN <= value <= _INT64_MAX:
        any_value = bytes((_INT,)) + _varint(value & 0xFFFFFFFFFFFFFFFF)
    elif isinstance(value, float):
        any_value = bytes((_DOUBLE,)) + _DOUBLE_BITS.pack(value)
    else:  # None, bytes, sequences, mappings, ints beyond int64: as the SDK does
        encoded: bytes = _encode_key_value(key, value).SerializeToString()
        return encoded
    prefix = _field(_KEY, key.encode()) if key else b""
    return prefix + _field(_VALUE, any_value)


def _fixed64(parts: list[bytes], tag: int, value: int | None) -> None:
    if value:
        parts += (bytes((tag,)), _FIXED64.pack(value))


def _varint_field(parts: list[bytes], tag: int, value: int) -> None:
    if value:
        parts += (bytes((tag,)), _varint(value))


def _field(tag: int, payload: bytes) -> bytes:
    return bytes((tag,)) + _varint(len(payload)) + payload


def _varint(value: int) -> bytes:
    if value < 0x80:
        return bytes((value,))
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


class BytesEncodingExporter(OTLPSpanExporter):
    """The SDK's OTLP/HTTP span exporter, encoding with :func:`encode_spans` above.

    Only ``export`` differs: it follows the SDK's own (the exporter's metrics, the
    request size limit, then its HTTP client with its retries), so it leans on that
    exporter's private parts; :func:`fast_exporter` checks they are there and falls
    back to the SDK's exporter when a release has moved them.
    """

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        if self._shutdown:
            log.warning("exporter already shut down; dropping %d spans", len(spans))
            return SpanExportResult.FAILURE
        with self._metrics.export_operation(len(spans)) as result:
            try:
                data = encode_spans(spans)
            except Exception as error:
                log.exception("could not encode %d spans", len(spans))
                result.error = error
                return SpanExportResult.FAILURE
            if 0 < self._max_request_size < len(data):
                log.warning("dropping %d spans: %d bytes exceed the request limit of %d",
                            len(spans), len(data), self._max_request_size)
                result.error = ValueError("span batch exceeds max_request_size")
                return SpanExportResult.FAILURE
            sent = self._client.export(data)
            if not sent.success:
                result.error = sent.error
                return SpanExportResult.FAILURE
        return SpanExportResult.SUCCESS


_SDK_PARTS = ("_shutdown", "_metrics", "_max_request_size", "_client")


def fast_exporter(endpoint: str, headers: dict[str, str] | None) -> OTLPSpanExporter:
    """A :class:`BytesEncodingExporter`, or the SDK's own if its parts have moved."""
    exporter = BytesEncodingExporter(endpoint=endpoint, headers=headers)
    if all(hasattr(exporter, part) for part in _SDK_PARTS) \
            and hasattr(exporter._client, "export"):
        return exporter
    log.warning("this OpenTelemetry SDK's OTLP exporter differs from the one the span "
                "encoder was written for; using its own encoder")
    exporter.shutdown()  # type: ignore[no-untyped-call]
    return OTLPSpanExporter(endpoint=endpoint, headers=headers)
