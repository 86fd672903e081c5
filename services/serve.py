"""Serving demo service apps on loopback: in the current loop, or until a signal."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import TracebackType

from aiohttp import web
from aiohttp.log import access_logger

from services.app import build_app, config_from_env
from services.common import DEFAULT_HOLD_SECONDS, ServiceSpec
from services.tracing import instrument

DEFAULT_HOST = "127.0.0.1"


@dataclass
class RunningServices:
    """Services serving in the current event loop; ``close()`` stops them all."""

    urls: dict[str, str] = field(default_factory=dict)
    apps: dict[str, web.Application] = field(default_factory=dict)
    runners: list[web.AppRunner] = field(default_factory=list)

    async def close(self) -> None:
        while self.runners:
            await self.runners.pop().cleanup()

    async def __aenter__(self) -> RunningServices:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()


def base_url(host: str, port: int) -> str:
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


async def start_apps(
    apps: Mapping[str, web.Application],
    host: str,
    ports: Mapping[str, int],
    *,
    access_log: bool = False,
) -> RunningServices:
    """Serve each app on its own runner; a port of 0 (or a missing one) picks a free port."""
    running = RunningServices()
    try:
        for name, app in apps.items():
            runner = web.AppRunner(app, access_log=access_logger if access_log else None)
            await runner.setup()
            running.runners.append(runner)
            await web.TCPSite(runner, host, ports.get(name, 0)).start()
            port = int(runner.addresses[0][1])
            running.urls[name] = base_url(host, port)
            running.apps[name] = app
    except BaseException:
        # A port in use must not leave the services started before it running.
        await running.close()
        raise
    return running


async def serve_until_signalled(
    apps: Mapping[str, web.Application],
    host: str,
    ports: Mapping[str, int],
    on_ready: Callable[[RunningServices], None],
    *,
    access_log: bool = False,
) -> None:
    """Serve until SIGINT or SIGTERM, then close every runner."""
    running = await start_apps(apps, host, ports, access_log=access_log)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    try:
        on_ready(running)
        await stop.wait()
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)
        await running.close()


def print_urls(running: RunningServices) -> None:
    width = max((len(name) for name in running.urls), default=0)
    for name, url in running.urls.items():
        print(f"{name:<{width}}  {url}", flush=True)


def service_parser(spec: ServiceSpec) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=f"python -m services.{spec.name}", description=spec.description or None
    )
    parser.add_argument("--host", default=DEFAULT_HOST, help="address to bind (loopback)")
    parser.add_argument("--port", type=int, default=spec.default_port)
    parser.add_argument("--error-rate", type=float, default=0.0, metavar="FLOAT",
                        help="chance (0..1) of a 503 before acting on each request")
    parser.add_argument("--latency-ms", type=int, default=0, metavar="N",
                        help="delay before acting on each request")
    parser.add_argument("--hold-seconds", type=float, default=DEFAULT_HOLD_SECONDS,
                        help="how long the timeout faults hold a reply back")
    parser.add_argument("--seed", type=int, default=None, help="seed of --error-rate")
    return parser


def service_main(spec: ServiceSpec, argv: Sequence[str] | None = None) -> None:
    """Entry point of ``python -m services.<name>``; the token env var applies here."""
    parser = service_parser(spec)
    args = parser.parse_args(argv)
    try:
        config = config_from_env(
            spec, error_rate=args.error_rate, latency_ms=args.latency_ms,
            hold_seconds=args.hold_seconds, seed=args.seed,
        )
    except ValueError as exc:
        parser.error(str(exc))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    auth = "bearer token required" if config.required_token else "no auth"
    apps = {spec.name: build_app(spec, config)}
    instrument(apps[spec.name], spec.name)

    def ready(running: RunningServices) -> None:
        print(f"{spec.name} listening on {running.urls[spec.name]} ({auth})", flush=True)

    ports = {spec.name: args.port}
    asyncio.run(serve_until_signalled(apps, args.host, ports, ready, access_log=True))
