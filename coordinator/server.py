"""``sagaray serve``: wire the registry, journal, Ray host pool and HTTP API together.

The serve process owns no execution: it journals starts, hands executions to
hosts, and answers reads from the journal. Started against a journal that holds
unfinished executions, it hands every one of them back to a host.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import ray
from aiohttp import web

from coordinator.admission import (
    DEFAULT_MAX_IN_FLIGHT,
    DEFAULT_MAX_IN_FLIGHT_PER_HOST,
    Admission,
    AdmissionLimits,
    stop,
)
from coordinator.api import create_app
from coordinator.auth import ApiTokens, auth_middleware, check_exposure
from coordinator.executions import ExecutionService, SagaCatalog
from coordinator.gc_tuning import relax_gc
from coordinator.host_config import HostConfig
from coordinator.invoker import Endpoint
from coordinator.journal.base import Journal
from coordinator.journal.factory import journal_from_url
from coordinator.leases import DEFAULT_LEASE_SECONDS
from coordinator.loader import Registry, ServiceConfig, load_registry, resolve_headers
from coordinator.metrics.api import ApiMetrics
from coordinator.pool import HostPool
from coordinator.scaling import DEFAULT_SCALE_DOWN_AFTER, DEFAULT_TARGET_PER_HOST, ScalePolicy
from coordinator.telemetry import api_tracing, otel_env

if TYPE_CHECKING:
    from coordinator.telemetry.http import ApiTracing

log = logging.getLogger(__name__)
DEFAULT_JOURNAL = "sqlite:///.sagaray/journal.db"


@dataclass(frozen=True)
class ServeOptions:
    host: str = "127.0.0.1"
    port: int = 8080
    sagas_dir: Path = Path("sagas")
    services_file: Path = Path("services.yaml")
    journal_url: str = DEFAULT_JOURNAL
    ray_address: str | None = None
    hosts: int | None = None
    # Elastic pool bounds (``hosts`` is a fixed pool: both at once is an error).
    min_hosts: int | None = None
    max_hosts: int | None = None
    target_per_host: float = DEFAULT_TARGET_PER_HOST
    scale_down_after: float = DEFAULT_SCALE_DOWN_AFTER
    scale_interval: float = 1.0
    # CPUs each SagaHost requests: above 0, more hosts make a Ray autoscaler add nodes.
    host_cpus: float = 0.0
    drain_seconds: float = 5.0
    namespace: str = "sagaray"
    jaeger_url: str | None = None
    extra_sagas: tuple[Path, ...] = field(default_factory=tuple)
    # OTEL_* settings for the API and the hosts; None reads them from the environment.
    otel_env: Mapping[str, str] | None = None
    lease_seconds: float = DEFAULT_LEASE_SECONDS
    fault_points: Mapping[str, float] = field(default_factory=dict)
    # Bearer tokens of the API (none: no authentication; only allowed on loopback
    # unless ``insecure``).
    api_tokens: ApiTokens = field(default_factory=ApiTokens)
    insecure: bool = False
    max_in_flight: int = DEFAULT_MAX_IN_FLIGHT
    max_in_flight_per_host: int = DEFAULT_MAX_IN_FLIGHT_PER_HOST
    host_link: bool = True


@dataclass
class Stack:
    """A running control plane; ``close`` releases what ``build_stack`` took."""

    registry: Registry
    journal: Journal
    pool: HostPool
    service: ExecutionService
    app: web.Application
    tracing: ApiTracing | None = None
    refresher: asyncio.Task[None] | None = None

    async def close(self) -> None:
        await stop(self.refresher)
        self.pool.close()
        await self.service.close()
        await self.journal.close()
        if self.tracing is not None:
            await self.tracing.close()


def endpoints_of(services: Mapping[str, ServiceConfig]) -> dict[str, Endpoint]:
    # partial, not a lambda: it travels to Ray actors by pickle, and reads the
    # environment of the host process at request time.
    return {name: Endpoint(name, config.urls, partial(resolve_headers, config),
                           config.traffic_only())
            for name, config in services.items()}


def init_ray(address: str | None, namespace: str) -> None:
    """Join ``address`` (``auto`` for a running cluster) or start a local Ray."""
    if ray.is_initialized():
        return
    ray.init(address=address, namespace=namespace, include_dashboard=False,
             log_to_driver=False, logging_level=logging.WARNING)


def pool_size(requested: int | None) -> int:
    if requested:
        return requested
    return max(1, int(ray.cluster_resources().get("CPU", 1)))


class PoolConfigError(ValueError):
    """Pool bounds that cannot work together (a usage error of ``serve``)."""


def scale_policy(options: ServeOptions) -> ScalePolicy:
    """The pool's bounds: ``--hosts N`` is a fixed pool; ``--min-hosts``/``--max-hosts``
    an elastic one (min defaults to 1, max to the larger of min and the CPU count);
    none of them, a fixed pool of the cluster's CPU count, as before elastic pools."""
    check_pool_options(options)
    if options.min_hosts is None and options.max_hosts is None:
        return ScalePolicy.fixed(pool_size(options.hosts))
    low = options.min_hosts or 1
    high = options.max_hosts or max(low, pool_size(None))
    return ScalePolicy(low, high, options.target_per_host, options.scale_down_after)


def check_pool_options(options: ServeOptions) -> None:
    """:class:`PoolConfigError` naming the setting and value that cannot be used."""
    if options.hosts is not None and (options.min_hosts, options.max_hosts) != (None, None):
        raise PoolConfigError(
            f"--hosts {options.hosts} is a fixed pool; it cannot be combined with --min-hosts "
            f"{options.min_hosts} / --max-hosts {options.max_hosts} (from flags or SAGARAY_* "
            "variables): give either --hosts or the bounds")
    for flag, value in (("--hosts", options.hosts), ("--min-hosts", options.min_hosts),
                        ("--max-hosts", options.max_hosts)):
        if value is not None and value < 1:
            raise PoolConfigError(f"{flag} must be at least 1, not {value}")
    low, high = options.min_hosts, options.max_hosts
    if low is not None and high is not None and high < low:
        raise PoolConfigError(f"--max-hosts {options.max_hosts} is below --min-hosts "
                              f"{options.min_hosts}")
    checks = (("--target-per-host", options.target_per_host, options.target_per_host > 0),
              ("--scale-down-after", options.scale_down_after, options.scale_down_after >= 0),
              ("--host-cpus", options.host_cpus, options.host_cpus >= 0))
    for setting, amount, good in checks:
        if not good:
            raise PoolConfigError(f"{setting} cannot be {amount}")


def load(options: ServeOptions) -> Registry:
    registry = load_registry(options.sagas_dir, options.services_file)
    for extra in options.extra_sagas:
        more = load_registry(extra, options.services_file)
        registry = Registry.of([*registry.all(), *more.all()], registry.services)
    return registry


async def build_stack(options: ServeOptions, registry: Registry | None = None) -> Stack:
    if registry is None:
        registry = await asyncio.to_thread(load, options)
    relax_gc()
    otel = otel_env(options.otel_env)
    config = HostConfig(journal_url=options.journal_url, definitions=tuple(registry.all()),
                        endpoints=endpoints_of(registry.services), otel_env=otel,
                        lease_seconds=options.lease_seconds,
                        fault_points=dict(options.fault_points),
                        drain_seconds=options.drain_seconds, host_link=options.host_link)
    journal = journal_from_url(options.journal_url)
    await journal.open()
    pool = HostPool(config, scale_policy(options), namespace=options.namespace,
                    scale_interval=options.scale_interval, host_cpus=options.host_cpus,
                    journal=journal)
    await pool.start()
    tracing = api_tracing(otel)
    admission = Admission(AdmissionLimits(options.max_in_flight, options.max_in_flight_per_host),
                          lambda: pool.names, pool.host_name, journal.live_counts)
    await admission.refresh()
    service = ExecutionService(SagaCatalog(list(registry.all())), journal, pool,
                               jaeger_url=options.jaeger_url,
                               saga_trace=tracing.saga_trace if tracing else None,
                               admission=admission)

    async def ready() -> dict[str, Any]:
        await journal.ping()
        stats = await asyncio.wait_for(pool.stats(), timeout=5)
        return {"journal": "ok", "ray": "ok", "hosts": "ok" if stats else "none answered"}

    # Tracing outside authentication, so refused requests are traced too.
    middlewares = [tracing.middleware] if tracing else []
    if options.api_tokens.enabled:
        middlewares.append(auth_middleware(options.api_tokens))
    app = create_app(service, ready=ready, middlewares=middlewares,
                     metrics=ApiMetrics(service, pool))
    refresher = asyncio.get_running_loop().create_task(admission.run())
    return Stack(registry, journal, pool, service, app, tracing, refresher)


async def serve(options: ServeOptions) -> None:
    """Run the API until SIGINT or SIGTERM; :class:`InsecureBind` if exposed unauthenticated."""
    check_exposure(options.host, options.api_tokens, options.insecure)
    stack = await build_stack(options)
    runner = web.AppRunner(stack.app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, options.host, options.port).start()
    resumed = await stack.service.resume_all()
    auth = ("bearer tokens" if options.api_tokens.enabled
            else "NO authentication (--insecure)" if options.insecure else "no authentication")
    hosts = pool_description(stack.pool.policy, len(stack.pool.names))
    print(f"sagaray serving on http://{options.host}:{options.port} "
          f"({hosts}, journal {mask(options.journal_url)}, {auth}, "
          f"{resumed} unfinished executions resumed)", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await runner.cleanup()
    await stack.close()


def pool_description(policy: ScalePolicy, size: int) -> str:
    if not policy.elastic:
        return f"{size} hosts"
    return (f"{size} hosts, elastic {policy.min_hosts}..{policy.max_hosts} at "
            f"{policy.target_per_host:g} executions per host")


def mask(url: str) -> str:
    """The URL with any password replaced, for logs."""
    if "@" not in url or "://" not in url:
        return url
    scheme, rest = url.split("://", 1)
    credentials, host = rest.rsplit("@", 1)
    user = credentials.split(":", 1)[0]
    return f"{scheme}://{user}:***@{host}"
