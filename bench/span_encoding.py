"""The OTLP span encoders alone: the SDK's and ``coordinator.telemetry.otlp_encoding``.

``python -m bench.span_encoding [--sagas 73] [--repeat 20]``: a batch of the spans a
host exports for three-step sagas (a saga span, three step spans, three attempt
spans each, with Sagaray's attributes), encoded over and over by each; prints
microseconds per span and checks that both give the same bytes.
"""

from __future__ import annotations

import argparse
import random
import time

from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans as sdk_encode
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import Event, ReadableSpan
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import SpanContext, SpanKind, Status, StatusCode, TraceFlags

from coordinator.telemetry.otlp_encoding import encode_spans

RESOURCE = Resource.create({"service.name": "sagaray-host", "process.pid": 4242})
SCOPE = InstrumentationScope("sagaray.host", "0.1.0")
STEPS = (("reserve_stock", "inventory", 40001), ("charge_payment", "payments", 40002),
         ("ship", "shipping", 40003))


def saga_spans(number: int, rng: random.Random) -> list[ReadableSpan]:
    trace_id, saga_id = rng.getrandbits(128), rng.getrandbits(64)
    saga = {"saga.name": "bench_three_step", "saga.version": 1,
            "saga.execution_id": f"{number:032x}"}

    def span(name: str, span_id: int, parent: int, kind: SpanKind, attributes: dict[str, object],
             events: list[Event] | None = None) -> ReadableSpan:
        return ReadableSpan(
            name, SpanContext(trace_id, span_id, False, TraceFlags(1)),
            SpanContext(trace_id, parent, False, TraceFlags(1)), RESOURCE,
            attributes, events or [], kind=kind,  # type: ignore[arg-type]
            status=Status(StatusCode.UNSET), start_time=1_700_000_000_000_000_000,
            end_time=1_700_000_000_004_000_000, instrumentation_scope=SCOPE)

    spans = [span("saga bench_three_step", saga_id, rng.getrandbits(64), SpanKind.INTERNAL,
                  saga, [Event("saga.completed", {}, 1_700_000_000_004_000_000)])]
    for step, service, port in STEPS:
        step_id = rng.getrandbits(64)
        spans.append(span(f"step {step}", step_id, saga_id, SpanKind.INTERNAL, {
            **saga, "saga.step": step, "saga.phase": "action", "saga.attempts": 1,
            "saga.step.status": "succeeded"}))
        spans.append(span("POST", rng.getrandbits(64), step_id, SpanKind.CLIENT, {
            **saga, "saga.step": step, "saga.phase": "action", "saga.attempt": 1,
            "saga.service": service, "http.request.method": "POST",
            "url.full": f"http://127.0.0.1:{port}/{step}", "server.address": "127.0.0.1",
            "server.port": port, "saga.outcome": "succeeded",
            "http.response.status_code": 200}))
    return spans


def per_span_us(encode: object, batch: list[ReadableSpan], repeat: int) -> float:
    started = time.perf_counter()
    for _ in range(repeat):
        encode(batch)  # type: ignore[operator]
    return (time.perf_counter() - started) / repeat / len(batch) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sagas", type=int, default=73, help="sagas per batch (73: 511 spans)")
    parser.add_argument("--repeat", type=int, default=20)
    args = parser.parse_args()
    rng = random.Random(7)
    batch = [span for number in range(args.sagas) for span in saga_spans(number, rng)]
    expected = sdk_encode(batch).SerializePartialToString()
    assert encode_spans(batch) == expected, "the encoders disagree"
    sdk = per_span_us(lambda spans: sdk_encode(spans).SerializePartialToString(), batch,
                      args.repeat)
    ours = per_span_us(encode_spans, batch, args.repeat)
    print(f"{len(batch)} spans, {len(expected)} bytes per request, same bytes: yes")
    print(f"SDK encoder:   {sdk:6.1f} us per span")
    print(f"bytes encoder: {ours:6.1f} us per span ({sdk / ours:.1f}x)")


if __name__ == "__main__":
    main()
