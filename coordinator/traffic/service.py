"""The traffic of one service on one host: its instances, bulkhead and health task.

Contract of :class:`ServiceTraffic` (owned by the host's ``HttpInvoker``, one per
service, touched only from the host's event loop, so it needs no locks):

- :meth:`send` routes one attempt: through the bulkhead when ``max_concurrency``
  is set, then to the instance :func:`~coordinator.traffic.balancer.pick` chooses,
  avoiding the instance that the previous attempt with the same idempotency key
  failed on. It never retries: the saga's retry policy does, and a retry then
  lands on another instance when one admits it.
- An attempt refused here (bulkhead full or its queue wait timed out, or every
  instance ejected) is never sent; it comes back as a ``connection_refused``
  reply, which the core classifies as retryable with a known outcome (nothing
  happened). With every instance ejected, ``retry_after`` is the time until the
  first one may take its half-open trial.
- Outlier verdicts: a connection error, a timeout or a 5xx is a failure of the
  instance; 408 and 429 say nothing about it; any other status is a success.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from typing import Any

from coordinator.core.outcomes import Reply
from coordinator.traffic.balancer import Instance, pick
from coordinator.traffic.bulkhead import Bulkhead
from coordinator.traffic.circuit import Circuit, Clock
from coordinator.traffic.health import SessionSource, run_health_checks
from coordinator.traffic.policy import TrafficPolicy

Send = Callable[[str], Awaitable[Reply]]
# Failed attempts remembered for "retry elsewhere"; beyond this the oldest are forgotten
# (a retry then merely may land on the same instance again).
MAX_REMEMBERED = 10_000
_NEUTRAL = (408, 429)


def is_instance_failure(reply: Reply) -> bool:
    return reply.failure is not None or (reply.status_code or 0) >= 500


class ServiceTraffic:
    def __init__(self, name: str, urls: tuple[str, ...], policy: TrafficPolicy,
                 rng: random.Random, clock: Clock) -> None:
        if not urls:
            raise ValueError(f"service {name!r} has no instance")
        self.name, self.policy = name, policy
        outlier = policy.effective_outlier(len(urls))
        self.instances = [Instance(url.rstrip("/"), Circuit(outlier, clock)) for url in urls]
        self.bulkhead = (Bulkhead(policy.max_concurrency, policy.queue_size, policy.queue_timeout)
                         if policy.max_concurrency is not None else None)
        self._rng = rng
        self._several = len(urls) > 1
        # One instance that is never ejected nor health-checked: no choice to make.
        self._only = (self.instances[0] if outlier is None and policy.health_path is None
                      and not self._several else None)
        self._failed_on: dict[str, Instance] = {}
        self._health: asyncio.Task[None] | None = None

    def start_health_checks(self, session: SessionSource) -> None:
        """Start the health task once (needs a running loop); no-op without health_path."""
        path = self.policy.health_path
        if path is None or self._health is not None:
            return
        self._health = asyncio.get_running_loop().create_task(run_health_checks(
            session, self.name, self.instances, path, self.policy.health_interval,
            self.policy.health_timeout))

    async def close(self) -> None:
        if self._health is not None:
            self._health.cancel()
            await asyncio.gather(self._health, return_exceptions=True)
            self._health = None

    async def send(self, key: str, send: Send) -> Reply:
        bulkhead = self.bulkhead
        if bulkhead is None:
            return await self._route(key, send)
        if not await bulkhead.acquire():
            return Reply(failure="connection_refused",
                         error=f"service {self.name!r}: bulkhead full ({bulkhead.limit} in "
                               f"flight, {bulkhead.queued} queued); the attempt was not sent")
        try:
            return await self._route(key, send)
        finally:
            bulkhead.release()

    async def _route(self, key: str, send: Send) -> Reply:
        instance = self._only
        if instance is None:
            avoid = self._failed_on.pop(key, None) if self._several else None
            instance = pick(self.instances, self._rng, avoid)
            if instance is None:
                return self._all_ejected()
            instance.circuit.acquire()
        circuit = instance.circuit
        instance.outstanding += 1
        try:
            reply = await send(instance.url)
        except BaseException:
            circuit.released()
            raise
        finally:
            instance.outstanding -= 1
        self._judge(key, instance, reply)
        return reply

    def _judge(self, key: str, instance: Instance, reply: Reply) -> None:
        if is_instance_failure(reply):
            instance.circuit.failed()
        elif reply.status_code in _NEUTRAL:
            instance.circuit.released()
        else:
            instance.circuit.succeeded()
            return
        if self._several:
            if len(self._failed_on) >= MAX_REMEMBERED:
                del self._failed_on[next(iter(self._failed_on))]
            self._failed_on[key] = instance

    def _all_ejected(self) -> Reply:
        waits = [w for i in self.instances if (w := i.circuit.seconds_until_trial()) is not None]
        retry_after = min(waits) if waits else self.policy.health_interval
        return Reply(failure="connection_refused", retry_after=retry_after,
                     error=f"service {self.name!r}: every instance is ejected or failing its "
                           "health check; the attempt was not sent")

    def snapshot(self) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
        instances = [{"service": self.name, "url": i.url, "state": i.circuit.reported_state,
                      "outstanding": i.outstanding,
                      "consecutive_failures": i.circuit.consecutive_failures,
                      "ejections": i.circuit.ejections} for i in self.instances]
        bulkhead = self.bulkhead
        if bulkhead is None:
            return instances, None
        return instances, {"service": self.name, "active": bulkhead.active,
                           "queued": bulkhead.queued, "rejected": bulkhead.rejected}
