"""Building a TracerProvider from an explicit map of ``OTEL_*`` settings.

The map is explicit, not ``os.environ``, because one process may hold several
providers (the API and the demo services share the test process) and a Ray host
receives the API's settings in its config. The core settings are read here; the
exporter still reads the rarer ones (certificates, compression) from the
environment, which :func:`coordinator.telemetry.adopt_otel_env` fills in hosts.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
import uuid
from collections.abc import Iterator, Mapping
from typing import Any
from urllib.parse import unquote

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from opentelemetry.sdk.trace.id_generator import RandomIdGenerator
from opentelemetry.sdk.trace.sampling import (
    ALWAYS_OFF,
    ALWAYS_ON,
    DEFAULT_OFF,
    DEFAULT_ON,
    ParentBasedTraceIdRatio,
    Sampler,
    TraceIdRatioBased,
)
from opentelemetry.util.re import parse_env_headers

log = logging.getLogger(__name__)

_FIXED_SAMPLERS: dict[str, Sampler] = {
    "always_on": ALWAYS_ON,
    "always_off": ALWAYS_OFF,
    "parentbased_always_on": DEFAULT_ON,
    "parentbased_always_off": DEFAULT_OFF,
}
_host_providers: dict[tuple[str, tuple[tuple[str, str], ...]], ExportingProvider] = {}


class ExportingProvider(TracerProvider):
    """A provider that also exports spans built whole elsewhere (``export_finished``).

    A host knows each span's ids, times and attributes up front or after the fact
    (saga, step and compensation spans come from the journal's events; an attempt's
    id is derived from its identity), so it builds them as finished spans and hands
    them straight to the processors: no live span, id generation, context attach or
    attribute cleaning per span on the hot path (the caller still asks the sampler).
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._processors: list[SpanProcessor] = []

    def add_span_processor(self, span_processor: SpanProcessor) -> None:
        super().add_span_processor(span_processor)
        self._processors.append(span_processor)

    def export_finished(self, span: ReadableSpan) -> None:
        for processor in self._processors:
            processor.on_end(span)


def new_span_id() -> int:
    return RandomIdGenerator().generate_span_id()


DEFAULT_SCHEDULE_DELAY_MS = 1000.0


def build_provider(service_name: str, env: Mapping[str, str]) -> ExportingProvider:
    """A provider exporting over OTLP as ``env`` says, for the service ``service_name``."""
    attributes: dict[str, str | int] = dict(_resource_attributes(env))
    # Explicit names win over OTEL_SERVICE_NAME: the API, the hosts and each demo
    # service share one set of settings but are different services.
    attributes.update({"service.name": service_name, "service.instance.id": uuid.uuid4().hex,
                       "process.pid": os.getpid()})
    provider = ExportingProvider(sampler=_sampler(env), resource=Resource.create(attributes))
    # 1 s rather than the SDK's 5 s: a saga's last spans are in Jaeger soon after it ends.
    delay = _number(env, "OTEL_BSP_SCHEDULE_DELAY")
    delay = DEFAULT_SCHEDULE_DELAY_MS if delay is None else delay
    queue = _number(env, "OTEL_BSP_MAX_QUEUE_SIZE")
    provider.add_span_processor(BatchSpanProcessor(
        _exporter(env), schedule_delay_millis=delay,
        max_queue_size=int(queue) if queue is not None else None))
    return provider


def host_provider(env: Mapping[str, str]) -> ExportingProvider:
    """The one provider of a host process, however many hosts it carries."""
    from coordinator.telemetry import HOST_SERVICE_NAME

    key = (HOST_SERVICE_NAME, tuple(sorted(env.items())))
    if key not in _host_providers:
        _host_providers[key] = build_provider(HOST_SERVICE_NAME, env)
    return _host_providers[key]


async def flush(provider: TracerProvider, timeout: float = 5.0) -> None:
    # force_flush exports in the calling thread: keep that off the event loop.
    await asyncio.to_thread(provider.force_flush, int(timeout * 1000))


async def shutdown(provider: TracerProvider) -> None:
    await asyncio.to_thread(provider.shutdown)


def now_ns() -> int:
    return time.time_ns()


def _exporter(env: Mapping[str, str]) -> SpanExporter:
    protocol = (env.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
                or env.get("OTEL_EXPORTER_OTLP_PROTOCOL") or "http/protobuf").strip().lower()
    signal_endpoint = env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "").strip()
    base = env.get("OTEL_EXPORTER_OTLP_ENDPOINT", "").strip()
    headers = dict(parse_env_headers(
        env.get("OTEL_EXPORTER_OTLP_TRACES_HEADERS") or env.get("OTEL_EXPORTER_OTLP_HEADERS", ""),
        liberal=True))
    if protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (
            OTLPSpanExporter as GrpcExporter,
        )

        return GrpcExporter(endpoint=signal_endpoint or base, headers=headers or None)
    if protocol != "http/protobuf":
        log.warning("OTLP protocol %r is not supported; using http/protobuf", protocol)
    from coordinator.telemetry.otlp_encoding import fast_exporter

    # The base endpoint gets the signal path appended; the per-signal one is used as is.
    endpoint = signal_endpoint or f"{base.rstrip('/')}/v1/traces"
    return fast_exporter(endpoint, headers or None)


def _sampler(env: Mapping[str, str]) -> Sampler:
    name = env.get("OTEL_TRACES_SAMPLER", "parentbased_always_on").strip().lower()
    if name in _FIXED_SAMPLERS:
        return _FIXED_SAMPLERS[name]
    if name in ("traceidratio", "parentbased_traceidratio"):
        ratio = _number(env, "OTEL_TRACES_SAMPLER_ARG")
        rate = ratio if ratio is not None and 0.0 <= ratio <= 1.0 else 1.0
        return TraceIdRatioBased(rate) if name == "traceidratio" else ParentBasedTraceIdRatio(rate)
    log.warning("unknown OTEL_TRACES_SAMPLER %r; using parentbased_always_on", name)
    return DEFAULT_ON


def _resource_attributes(env: Mapping[str, str]) -> Iterator[tuple[str, str]]:
    for pair in env.get("OTEL_RESOURCE_ATTRIBUTES", "").split(","):
        key, sep, value = pair.partition("=")
        if sep and key.strip():
            yield unquote(key.strip()), unquote(value.strip())


def _number(env: Mapping[str, str], name: str) -> float | None:
    raw = env.get(name, "").strip()
    if not raw:
        return None
    try:
        return float(raw)
    except ValueError:
        log.warning("ignoring %s=%r: not a number", name, raw)
        return None
