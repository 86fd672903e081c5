"""Several instances of one demo service, on loopback ports of their own.

The instances share one :class:`~services.common.SharedStore` (records, ledger,
stored replies), as instances behind one database would, so a saga may create a
booking on one and confirm it on another. Fault rules and settings stay per
instance: ``POST /_faults`` with path ``/**`` on one instance's URL makes that
instance slow (``latency=MS``) or failing (``error``), health check included;
:meth:`RunningInstances.stop` kills it (its port refuses connections) and
:meth:`RunningInstances.restart` brings it back on the same port.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from aiohttp import web

from services.app import build_app, config_from_env
from services.common import STATE_KEY, ServiceConfig, ServiceSpec, ServiceState, SharedStore
from services.registry import get_spec
from services.serve import DEFAULT_HOST, base_url
from services.tracing import instrument


@dataclass
class RunningInstances:
    """``count`` instances of service ``name``; index ``i`` is ``urls[i]``."""

    spec: ServiceSpec
    host: str
    configs: list[ServiceConfig]
    environ: Mapping[str, str] | None
    store: SharedStore = field(default_factory=SharedStore)
    ports: list[int] = field(default_factory=list)
    apps: list[web.Application] = field(default_factory=list)
    runners: list[web.AppRunner | None] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def urls(self) -> list[str]:
        return [base_url(self.host, port) for port in self.ports]

    def state(self, index: int) -> ServiceState:
        return self.apps[index][STATE_KEY]

    def requests(self) -> list[int]:
        """Business requests each instance received (since it last (re)started)."""
        return [self.state(i).requests for i in range(len(self.apps))]

    async def _serve(self, index: int, port: int) -> None:
        app = build_app(self.spec, self.configs[index], self.store)
        instrument(app, self.name, self.environ)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        try:
            await web.TCPSite(runner, self.host, port).start()
        except BaseException:
            await runner.cleanup()
            raise
        bound = int(runner.addresses[0][1])
        if index == len(self.apps):
            self.apps.append(app)
            self.runners.append(runner)
            self.ports.append(bound)
        else:
            self.apps[index], self.runners[index] = app, runner

    async def stop(self, index: int, *, abort: bool = False) -> None:
        """Kill instance ``index``: its port refuses new connections from now on.

        ``abort`` also cuts its open connections at once, as a crash would: callers
        with a request in flight see the connection lost (their outcome unknown),
        while the handler still finishes against the shared store.
        """
        runner = self.runners[index]
        self.runners[index] = None
        if runner is None:
            return
        if abort and runner.server is not None:
            for connection in list(runner.server.connections):
                if connection.transport is not None:
                    connection.transport.abort()
        await runner.cleanup()

    async def restart(self, index: int) -> None:
        """Serve instance ``index`` again on its port, with no fault rules."""
        await self.stop(index)
        await self._serve(index, self.ports[index])

    async def close(self) -> None:
        for index in range(len(self.runners)):
            await self.stop(index)


async def start_instances(
    name: str,
    count: int,
    host: str = DEFAULT_HOST,
    *,
    configs: Sequence[ServiceConfig] | None = None,
    environ: Mapping[str, str] | None = None,
) -> RunningInstances:
    """Start ``count`` instances of service ``name`` on free ports in this event loop.

    ``configs`` (one per instance) sets each instance's behaviour, e.g. a slow one
    with ``latency_ms``; by default each is configured as ``config_from_env`` would.
    """
    if count < 1:
        raise ValueError(f"start at least one instance of {name!r}, not {count}")
    spec = get_spec(name)
    chosen = list(configs) if configs is not None else [
        config_from_env(spec, environ) for _ in range(count)]
    if len(chosen) != count:
        raise ValueError(f"{count} instances of {name!r} need {count} configs, not {len(chosen)}")
    running = RunningInstances(spec, host, chosen, environ)
    try:
        for index in range(count):
            await running._serve(index, 0)
    except BaseException:
        await running.close()
        raise
    return running
