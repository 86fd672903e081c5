"""The SagaHost pool as seen from the API process: which host runs which execution.

Shared executions map to a host by rendezvous (highest-random-weight) hashing,
a form of consistent hashing: adding or losing one host moves only the
executions that hashed to it. Dedicated executions get an actor of their own,
named after the execution so any API process can find it again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter
from typing import Any

import ray
from ray.actor import ActorHandle
from ray.exceptions import RayActorError

from coordinator.core import events as ev
from coordinator.core.definition import Placement as PlacementKind
from coordinator.handover import HandOverQueue
from coordinator.host_config import HostConfig
from coordinator.host_link import LinkClient, LinkDown, LinkRefused
from coordinator.hosts import DedicatedHost
from coordinator.journal.base import Journal
from coordinator.link_codec import (
    FINISHED_SINCE,
    START_MANY,
    decode_answers,
    decode_feed,
    encode_batch,
    encode_poll,
)
from coordinator.membership import host_name
from coordinator.pool_hashing import rendezvous
from coordinator.scaling import ScalePolicy
from coordinator.supervisor import Supervisor

log = logging.getLogger(__name__)


# How often an API process re-reads the membership from the supervisor.
REFRESH_SECONDS = 1.0
# How many times a start is re-dispatched when its host answers "draining".
REDISPATCHES = 3


def without_events(batch: list[Any]) -> list[Any]:
    """A hand-over batch to repeat after one that may have arrived: without the events,
    each start reads the journal, so an execution that ended meanwhile is not run again
    from its first events (a start of one the host runs is left alone anyway)."""
    return [(execution_id, None, fence, reader) for execution_id, _, fence, reader in batch]


class HostPool:
    """The API's view of the pool: cached membership, hand-over queues, routing.

    The supervisor owns the membership; this class reads it at ``start``, every
    ``REFRESH_SECONDS`` and whenever a host answers ``draining`` or is gone, so a
    start costs no supervisor call. A start that reaches a draining host (stale
    cache) is given back by that host (its lease released) and re-dispatched here.
    """

    def __init__(self, config: HostConfig, size: int | ScalePolicy, namespace: str = "sagaray",
                 *, scale_interval: float = 1.0, host_cpus: float = 0.0,
                 journal: Journal | None = None,
                 refresh_seconds: float | None = REFRESH_SECONDS) -> None:
        policy = ScalePolicy.fixed(size) if isinstance(size, int) else size
        if isinstance(size, int) and size < 1:
            raise ValueError(f"the host pool needs at least one host, not {size}")
        self.config = config
        self.policy = policy
        self._refresh_seconds = refresh_seconds  # None: only on demand (tests of stale views)
        self._namespace = namespace
        self._scale_interval = scale_interval
        self._host_cpus = host_cpus
        self._journal = journal  # to release a lease given to a host that is gone
        self._names: list[str] = []
        self._draining: list[str] = []
        self._handles: dict[str, ActorHandle] = {}
        self._supervisor: ActorHandle | None = None
        self._queues: dict[str, HandOverQueue] = {}
        # Each host's node as its last hand-over answered; dropped when it fails one.
        self._nodes: dict[str, str] = {}
        # Each host's direct link (host_link.py), as its last Ray hand-over named it.
        self._links: dict[str, LinkClient] = {}
        # (call, "link" or "ray") -> calls made that way: a link that is down shows here.
        self.calls: Counter[tuple[str, str]] = Counter()
        self._refresher: asyncio.Task[None] | None = None

    @property
    def names(self) -> list[str]:
        """The active hosts now (they take new work); ``len`` is the pool's size."""
        return list(self._names)

    def membership(self) -> dict[str, list[str]]:
        """The cached membership: ``active`` and ``draining`` host names."""
        return {"active": list(self._names), "draining": list(self._draining)}

    async def start(self) -> None:
        """Create (or attach to) the supervisor, which creates the hosts; wait for them."""
        self._supervisor = Supervisor.options(  # type: ignore[attr-defined]
            name=f"{self._namespace}-supervisor", namespace=self._namespace,
            get_if_exists=True, lifetime="detached",
        ).remote(self.config, self._namespace, self.policy,
                 interval=self.config.lease_seconds / 4, grace=self.config.lease_seconds,
                 scale_interval=self._scale_interval, host_cpus=self._host_cpus)
        await self.refresh()
        if self._refresh_seconds is not None:
            self._refresher = asyncio.get_running_loop().create_task(
                self._refresh_forever(self._refresh_seconds))

    async def refresh(self) -> None:
        """Read the membership from the supervisor."""
        assert self._supervisor is not None, "start() first"
        found = await self._supervisor.membership.remote()
        if not found["active"]:
            raise RuntimeError("the supervisor answered an empty pool; keeping the last view")
        self._handles = dict(found["handles"])
        self._names = [name for name in found["active"] if name in self._handles]
        self._draining = [name for name in found["draining"] if name in self._handles]
        for gone in self._queues.keys() - set(self._names):
            del self._queues[gone]
        for gone in self._nodes.keys() - set(self._names):
            del self._nodes[gone]
        for gone in self._links.keys() - set(self._names):
            self._links.pop(gone).close()

    async def _refresh_forever(self, seconds: float) -> None:
        while True:
            await asyncio.sleep(seconds)
            try:
                await self.refresh()
            except Exception as error:  # the supervisor restarting: keep the last view
                log.debug("membership refresh failed: %r", error)

    def host_for(self, execution_id: str) -> ActorHandle:
        return self._handles[self.host_name(execution_id)]

    def host_name(self, execution_id: str, owner: str | None = None) -> str:
        """The shared host that runs the execution: its recorded owner, else its hash.

        An owner that is draining hands its executions to the hash's host, so
        that is where a waiter looks.
        """
        if owner in self._names:
            return owner
        return self._names[rendezvous(execution_id, self._names)]

    async def finished_since(self, host: str, incarnation: str | None, cursor: int | None,
                             timeout: float, reader: str | None = None) -> dict[str, Any]:
        """One long poll of a host's :class:`~coordinator.finish_feed.FinishFeed`."""
        actor = self._handles.get(host)
        if actor is None:
            raise LookupError(f"{host} is not in the pool any more")
        link = self._links.get(host)
        if link is not None:
            with contextlib.suppress(LinkDown, LinkRefused):
                answer = decode_feed(await link.call(
                    FINISHED_SINCE, encode_poll(incarnation, cursor, timeout, reader)))
                self.calls[FINISHED_SINCE, "link"] += 1
                return answer
        self.calls[FINISHED_SINCE, "ray"] += 1
        return dict(await actor.finished_since.remote(incarnation, cursor, timeout, reader))

    def node_of(self, host: str) -> str | None:
        """The node ``host`` said it runs on in its last answer here; None if unknown."""
        return self._nodes.get(host)

    def lease_for(self, placement: PlacementKind, execution_id: str) -> tuple[str, float] | None:
        """``(host, seconds)`` to create a shared execution already leased to its host.

        The host then adopts fence 1 instead of claiming, one journal write less per
        saga. A host that never receives it lets the lease expire, and the supervisor
        hands the execution to a live host.
        """
        if placement == "dedicated":
            return None
        return self.host_name(execution_id), self.config.lease_seconds

    async def dispatch(
        self, placement: PlacementKind, execution_id: str, events: list[ev.Event] | None = None,
        fence: int | None = None, leased_to: str | None = None, report_to: str | None = None,
    ) -> dict[str, str | None]:
        """Start (or resume) an execution on its host; returns where it runs.

        ``fence`` is the token of the lease the journal already gave host ``leased_to``;
        ``report_to``: the reader (API process) waiting for its end; a shared host's
        feed carries the final view to it.
        """
        if placement == "dedicated":
            actor = DedicatedHost.options(  # type: ignore[attr-defined]
                name=self._dedicated_name(execution_id), namespace=self._namespace,
                get_if_exists=True, lifetime="detached",
            ).remote(self._dedicated_name(execution_id), self.config)
            return dict(await actor.start.remote(execution_id, events))
        for _ in range(REDISPATCHES):
            name = self._route(execution_id, fence, leased_to)
            try:
                answer = await self._queue(name).put(execution_id, events, fence, report_to)
                self._learn_node(name, answer)
            except (RayActorError, KeyError):
                # Removed meanwhile (or restarting): it never ran this execution.
                await self._gone(name, execution_id, fence)
                answer = {"host": name, "status": "draining"}
            if answer.get("status") != "draining":
                return answer
            # The host released the lease it was given: claim afresh elsewhere.
            fence = None
            await self.refresh()
        # Released and unowned: the supervisor's next sweep hands it over.
        return answer

    def _learn_node(self, name: str, answer: dict[str, str | None]) -> None:
        """Note the node and the link a host's answer names; the link's key goes no
        further than this pool (the answer is the caller's)."""
        address, key = answer.pop("link", None), answer.pop("link_key", None)
        if answer.get("host") != name:
            return
        node = answer.get("node_id")
        if node:
            self._nodes[name] = node
        known = self._links.get(name)
        if address and key and (known is None or not known.same(address, key)):
            if known is not None:
                known.close()
            self._links[name] = LinkClient(address, key)

    def _route(self, execution_id: str, fence: int | None, leased_to: str | None) -> str:
        """The host for a hand-over: the one holding its lease while that one is in
        the pool (the membership may have changed since the lease was written; a
        draining holder gives the lease back), else the hash's host, which claims it."""
        if fence is not None and leased_to is not None and leased_to in self._handles:
            return leased_to
        return self.host_name(execution_id)

    def _queue(self, name: str) -> HandOverQueue:
        queue = self._queues.get(name)
        if queue is None:
            # Looked up at each call: a host re-created under the same name gets a new handle.
            async def start_many(batch: list[Any]) -> Any:
                link = self._links.get(name)
                if link is not None:
                    try:
                        answers = decode_answers(await link.call(START_MANY, encode_batch(batch)))
                        self.calls[START_MANY, "link"] += 1
                        return answers
                    except LinkRefused:
                        pass  # refused before any start: Ray's call carries it as it is
                    except LinkDown as down:
                        if down.sent:
                            batch = without_events(batch)
                self.calls[START_MANY, "ray"] += 1
                return await self._handles[name].start_many.remote(batch)

            queue = self._queues[name] = HandOverQueue(start_many)
        return queue

    async def _gone(self, name: str, execution_id: str, fence: int | None) -> None:
        """A host failed a hand-over; release its lease if it left the pool."""
        self._queues.pop(name, None)
        self._nodes.pop(name, None)  # restarted, maybe on another node: learn it again
        link = self._links.pop(name, None)
        if link is not None:
            link.close()
        await self.refresh()
        if fence is not None and self._journal is not None and name not in self._names \
                and name not in self._draining:
            await self._journal.release(execution_id, name, fence)

    async def call(self, placement: PlacementKind, execution_id: str, method: str,
                   *args: Any, owner: str | None = None) -> Any:
        """Call ``method`` on the actor that runs (or would run) the execution.

        ``owner`` is the host the journal last recorded; it is asked first so a
        cancel reaches the runner that holds the lease.
        """
        actor = await self._owner(placement, execution_id, owner)
        try:
            return await getattr(actor, method).remote(execution_id, *args)
        except RayActorError:
            if placement != "dedicated":
                raise
            # The dedicated actor ended with its execution: a shared host can load it.
            return await getattr(self.host_for(execution_id), method).remote(execution_id, *args)

    async def _owner(self, placement: PlacementKind, execution_id: str,
                     owner: str | None) -> ActorHandle:
        if owner is not None and owner in self._handles:
            return self._handles[owner]
        if placement == "dedicated":
            name = self._dedicated_name(execution_id)
            try:
                # get_actor is a blocking GCS lookup: keep it off the event loop.
                return await asyncio.to_thread(ray.get_actor, name, namespace=self._namespace)
            except ValueError:
                pass
        return self.host_for(execution_id)

    def _dedicated_name(self, execution_id: str) -> str:
        return f"{self._namespace}-exec-{execution_id}"

    async def stats(self) -> list[dict[str, Any]]:
        """``stats()`` of every active host."""
        hosts = [self._handles[name] for name in self._names]
        return list(await asyncio.gather(*(host.stats.remote() for host in hosts)))

    async def host_metrics(self, timeout: float) -> dict[str, dict[str, Any] | None]:
        """Each host's metrics snapshot by name; None for a host that did not answer
        within ``timeout`` seconds (a slow or dead host must not hold up a scrape)."""
        names = list(self._names)
        hosts = [self._handles[name] for name in names]

        async def one(host: ActorHandle) -> dict[str, Any] | None:
            try:
                return dict(await asyncio.wait_for(host.metrics.remote(), timeout))
            except Exception:  # a timeout, a dead or restarting actor
                log.debug("no metrics from a host within %ss", timeout, exc_info=True)
                return None

        answers = await asyncio.gather(*(one(host) for host in hosts))
        return dict(zip(names, answers, strict=True))

    async def supervisor_stats(self) -> dict[str, Any]:
        if self._supervisor is None:
            return {}
        return dict(await self._supervisor.stats.remote())

    def close(self) -> None:
        """Stop refreshing the membership (the actors stay: they are shared)."""
        if self._refresher is not None:
            self._refresher.cancel()
        for link in self._links.values():
            link.close()
        self._links.clear()

    def shutdown(self) -> None:
        """Kill the supervisor first (so it creates no more hosts), then every host."""
        self.close()
        if self._supervisor is not None:
            ray.kill(self._supervisor)
        known = set(self._handles)
        for actor in self._handles.values():
            with contextlib.suppress(Exception):
                ray.kill(actor)
        # Hosts created since the last refresh (pending ones included).
        for index in range(self.policy.max_hosts):
            name = host_name(self._namespace, index)
            if name not in known:
                with contextlib.suppress(ValueError):
                    ray.kill(ray.get_actor(name, namespace=self._namespace))
        self._handles, self._names, self._supervisor = {}, [], None
