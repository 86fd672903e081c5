"""Active health checks: one task per service polls each instance's ``health_path``.

Contract: every ``health_interval`` the task sends ``GET url + health_path`` to all
instances of its service at once, each bounded by ``health_timeout``, through the
invoker's pooled session. A 2xx passes; anything else (status, timeout, refused
connection) fails. The verdict goes to the instance's circuit
(:meth:`Circuit.health_checked`). The task never raises: it logs a state change
and carries on until cancelled by the invoker's ``close``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence

import aiohttp

from coordinator.traffic.balancer import Instance
from coordinator.traffic.origin import origin

log = logging.getLogger(__name__)
SessionSource = Callable[[], Awaitable[aiohttp.ClientSession]]


async def check_once(session: aiohttp.ClientSession, url: str, timeout: float) -> bool:
    """True when ``url`` answers 2xx within ``timeout`` seconds."""
    try:
        async with session.get(url, timeout=aiohttp.ClientTimeout(total=timeout)) as response:
            await response.read()
            return 200 <= response.status < 300
    except (TimeoutError, aiohttp.ClientError, OSError):
        return False


async def check_all(session: aiohttp.ClientSession, service: str, instances: Sequence[Instance],
                    path: str, timeout: float) -> None:
    verdicts = await asyncio.gather(*(check_once(session, i.url + path, timeout)
                                      for i in instances))
    for instance, passed in zip(instances, verdicts, strict=True):
        if passed != instance.circuit.healthy:
            log.warning("service %s instance %s: health check %s", service, origin(instance.url),
                        "passes again" if passed else "failed; out of rotation")
        instance.circuit.health_checked(passed)


async def run_health_checks(session: SessionSource, service: str, instances: Sequence[Instance],
                            path: str, interval: float, timeout: float) -> None:
    """Check forever, ``interval`` seconds apart; ends only by cancellation."""
    while True:
        try:
            await check_all(await session(), service, instances, path, timeout)
        except Exception:  # a closed session during shutdown, or a bug: keep checking
            log.exception("health checks of service %s failed", service)
        await asyncio.sleep(interval)
