"""The two processes the benchmark suite starts: the demo services, and the coordinator.

    python -m bench.procs services      # inventory, payments, shipping + a control app
    python -m bench.procs coordinator --journal URL --services FILE [--otlp URL]

Each prints one JSON line (its URLs and pids) once it is ready, then serves until
SIGTERM or SIGINT. They are separate processes so that the CPU time read from
/proc for the coordinator's processes (the API process and its Ray workers) holds
nothing of the services' or the load generator's work.

The services process adds, for the benchmark only, a middleware in front of each
demo service (nothing in ``services/`` changes):
- the arrival time (``time.time()``) of the first request of each execution at
  the first step's route, keyed by the execution id taken from the attempt's
  ``Idempotency-Key`` (``<execution id>:<step>:<phase>``): scenario C;
- a gate: while closed, requests to one route wait in the service: scenario B.
Its control app also accepts ``POST /v1/traces`` (OTLP/HTTP) and discards it: the
receiver of the tracing-on variant.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import secrets
import signal
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from aiohttp import web

BENCH_SERVICES = ("inventory", "payments", "shipping")
FIRST_STEP = ("POST", "/reservations")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


# -- the services process ---------------------------------------------------------


class Probe:
    """Arrival times of first-step calls, the hold gate, and the OTLP sink's counters."""

    def __init__(self) -> None:
        self.arrivals: dict[str, float] = {}
        self.gate_path: str | None = None
        self.gate = asyncio.Event()
        self.gate.set()
        self.held = 0
        self.passed_gate = 0
        self.requests = 0
        self.otlp_posts = 0
        self.otlp_bytes = 0

    def middleware(self) -> Any:
        @web.middleware
        async def probe(request: web.Request, handler: Handler) -> web.StreamResponse:
            now = time.time()
            self.requests += 1
            if (request.method, request.path) == FIRST_STEP:
                key = request.headers.get("Idempotency-Key", "")
                execution_id = key.split(":", 1)[0]
                if execution_id and execution_id not in self.arrivals:
                    self.arrivals[execution_id] = now
            if self.gate_path is not None and request.path == self.gate_path:
                self.held += 1
                try:
                    await self.gate.wait()
                finally:
                    self.held -= 1
                    self.passed_gate += 1
            return await handler(request)

        return probe

    def control_app(self, apps: dict[str, web.Application]) -> web.Application:
        from services.common import STATE_KEY

        async def arrivals(request: web.Request) -> web.Response:
            data = dict(self.arrivals)
            if request.query.get("clear"):
                self.arrivals.clear()
            return web.json_response({"arrivals": data})

        async def gate(request: web.Request) -> web.Response:
            if request.method == "POST":
                body = await request.json()
                if body.get("closed"):
                    self.gate_path = body["path"]
                    self.gate.clear()
                else:
                    self.gate.set()
                    self.gate_path = None
            return web.json_response({"path": self.gate_path, "held": self.held,
                                      "passed": self.passed_gate})

        async def reset(request: web.Request) -> web.Response:
            for app in apps.values():
                app[STATE_KEY].reset()
            self.arrivals.clear()
            self.requests = 0
            self.passed_gate = 0
            return web.json_response({"reset": True})

        async def stats(request: web.Request) -> web.Response:
            return web.json_response({
                "pid": os.getpid(), "requests": self.requests, "otlp_posts": self.otlp_posts,
                "otlp_bytes": self.otlp_bytes, "held": self.held,
                "ledger": {name: len(app[STATE_KEY].ledger.entries) for name, app in apps.items()},
            })

        async def traces(request: web.Request) -> web.Response:
            body = await request.read()
            self.otlp_posts += 1
            self.otlp_bytes += len(body)
            # An empty ExportTraceServiceResponse (protobuf) is an empty body.
            return web.Response(body=b"", content_type="application/x-protobuf")

        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_get("/_bench/arrivals", arrivals)
        app.router.add_route("*", "/_bench/gate", gate)
        app.router.add_post("/_bench/reset", reset)
        app.router.add_get("/_bench/stats", stats)
        app.router.add_post("/v1/traces", traces)
        return app


async def run_services() -> None:
    from services.app import build_app, config_from_env
    from services.registry import get_spec
    from services.serve import start_apps

    probe = Probe()
    apps: dict[str, web.Application] = {}
    for name in BENCH_SERVICES:
        spec = get_spec(name)
        app = build_app(spec, config_from_env(spec))
        app.middlewares.insert(0, probe.middleware())
        apps[name] = app
    running = await start_apps({**apps, "_control": probe.control_app(apps)}, "127.0.0.1", {})
    urls = dict(running.urls)
    control = urls.pop("_control")
    print(json.dumps({"urls": urls, "control": control, "pid": os.getpid()}), flush=True)
    await _until_signalled()
    probe.gate.set()
    await running.close()


# -- the coordinator process ------------------------------------------------------


async def run_coordinator(args: argparse.Namespace) -> None:
    import ray

    from coordinator.server import ServeOptions, build_stack

    otel: dict[str, str] = {}
    if args.otlp:
        otel = {"OTEL_EXPORTER_OTLP_ENDPOINT": args.otlp,
                "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf"}
    options = ServeOptions(
        sagas_dir=Path(args.sagas), services_file=Path(args.services),
        journal_url=args.journal, hosts=args.hosts, namespace=args.namespace,
        otel_env=otel, max_in_flight=args.max_in_flight,
        max_in_flight_per_host=args.max_in_flight_per_host,
    )
    stack = await build_stack(options)
    pids: list[int] = []

    async def bench_stats(request: web.Request) -> web.Response:
        stats = await stack.pool.stats()
        return web.json_response({"api_pid": os.getpid(), "hosts": stats})

    # A route of the benchmark's own, on this process's copy of the app.
    stack.app.router.add_get("/_bench/stats", bench_stats)
    runner = web.AppRunner(stack.app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    stats = await stack.pool.stats()
    pids = [int(s["pid"]) for s in stats]
    print(json.dumps({"url": f"http://127.0.0.1:{port}", "api_pid": os.getpid(),
                      "host_pids": pids, "tracing": stack.tracing is not None,
                      "patches": args.patch,
                      "ray_version": ray.__version__}), flush=True)
    await _until_signalled()
    await runner.cleanup()
    # Give queued hand-overs a moment, then tear everything down.
    with contextlib.suppress(Exception):
        stack.pool.shutdown()
    await stack.close()


def coordinator_main(args: argparse.Namespace) -> None:
    import ray

    # The flights service demands this token when set; the hosts inherit it from Ray's env.
    os.environ.setdefault("FLIGHTS_TOKEN", secrets.token_hex(16))
    runtime_env: dict[str, Any] = {}
    if args.patch:
        from bench import experiments

        # Here, and in every Ray worker before it takes a task.
        os.environ[experiments.ENV] = args.patch
        os.environ["PYTHONPATH"] = os.pathsep.join(
            [str(Path(__file__).resolve().parents[1]), os.environ.get("PYTHONPATH", "")])
        experiments.apply(args.patch)
        runtime_env["worker_process_setup_hook"] = "bench.experiments.apply_from_env"
    ray.init(num_cpus=args.cpus, include_dashboard=False, namespace=args.namespace,
             log_to_driver=False, logging_level="WARNING",
             object_store_memory=args.object_store_mb * 1024 * 1024,
             runtime_env=runtime_env or None)
    try:
        from coordinator import eventloop

        eventloop.run(run_coordinator(args))
    finally:
        ray.shutdown()


async def _until_signalled() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    # Also stop when the parent (the suite) goes away and closes our stdin.
    loop.add_reader(sys.stdin.fileno(), lambda: stop.set() if not sys.stdin.read(1) else None)
    await stop.wait()


def main() -> None:
    logging.basicConfig(level=logging.WARNING)
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="what", required=True)
    sub.add_parser("services", help="the three demo services + the control app")
    coord = sub.add_parser("coordinator", help="Ray + SagaHosts + the HTTP API")
    coord.add_argument("--journal", required=True)
    coord.add_argument("--services", required=True, help="services file")
    coord.add_argument("--sagas", default=str(Path(__file__).parent / "sagas"))
    coord.add_argument("--hosts", type=int, default=2)
    coord.add_argument("--cpus", type=int, default=2)
    coord.add_argument("--object-store-mb", type=int, default=128)
    coord.add_argument("--namespace", default=f"sagaray-bench-{uuid.uuid4().hex[:8]}")
    coord.add_argument("--otlp", default=None, help="OTLP/HTTP endpoint: tracing on")
    coord.add_argument("--max-in-flight", type=int, default=20_000)
    coord.add_argument("--max-in-flight-per-host", type=int, default=10_000)
    coord.add_argument("--patch", default="",
                       help="comma-separated bench.experiments patches to apply")
    args = parser.parse_args()
    if args.what == "services":
        os.environ.setdefault("FLIGHTS_TOKEN", secrets.token_hex(16))
        asyncio.run(run_services())
    else:
        coordinator_main(args)


if __name__ == "__main__":
    main()
