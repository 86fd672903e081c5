"""The HTTP step invoker: sends one rendered attempt and reports what it observed.

Contract: one pooled ``aiohttp.ClientSession`` per host process, keep-alive on;
every request carries the attempt's ``Idempotency-Key``; the per-attempt timeout
covers the whole exchange. It never retries by itself (the core decides) and
never raises for a failed call: every outcome, including a refused connection,
comes back as a :class:`Reply`. Service headers (tokens) are added here, after
the core, so they never reach the journal, logs, spans or API responses.

Each attempt is routed by the service's :class:`~coordinator.traffic.ServiceTraffic`
(instance choice, outlier ejection, bulkhead, health checks: docs/traffic.md); an
attempt it refuses is never sent and comes back as a retryable reply. A retry is
recognised by its idempotency key (the same for every attempt of a step's action or
compensation) and goes to another instance than the failed attempt when it can; that
memory is this host's only, so after a hand-over the first retry may land anywhere.
"""

from __future__ import annotations

import contextlib
import json
import logging
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from typing import Any

import aiohttp
import orjson

from coordinator.core.commands import HttpRequest
from coordinator.core.outcomes import Reply
from coordinator.traffic import DEFAULT_POLICY, ServiceTraffic, TrafficPolicy

log = logging.getLogger(__name__)
# Called with the URL and the headers just before a request leaves; it may add
# headers (tracing adds ``traceparent``) and must not keep them: they hold secrets.
SendHook = Callable[[str, dict[str, str]], None]


@dataclass(frozen=True)
class Endpoint:
    """Where a service lives, how to authenticate (``headers`` resolves secrets late),
    and how its traffic is spread and limited."""

    name: str
    urls: tuple[str, ...]
    headers: Callable[[], dict[str, str]] = field(default=dict, repr=False)
    traffic: TrafficPolicy = DEFAULT_POLICY


class HttpInvoker:
    """``rng`` breaks ties between instances and ``clock`` (monotonic seconds) times
    ejections; both are injected so tests can make them deterministic."""

    def __init__(self, endpoints: Mapping[str, Endpoint], *, pool_size: int = 512,
                 on_send: SendHook | None = None, rng: random.Random | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._endpoints = dict(endpoints)
        self._pool_size = pool_size
        self._on_send = on_send
        self._session: aiohttp.ClientSession | None = None
        chooser = rng or random.Random()
        self._traffic = {name: ServiceTraffic(name, e.urls, e.traffic, chooser, clock)
                         for name, e in self._endpoints.items()}

    async def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(limit=self._pool_size, keepalive_timeout=30)
            self._session = aiohttp.ClientSession(
                connector=connector, json_serialize=_dumps, raise_for_status=False
            )
        return self._session

    async def close(self) -> None:
        for traffic in self._traffic.values():
            await traffic.close()
        if self._session is not None:
            await self._session.close()

    def traffic_snapshot(self) -> dict[str, list[dict[str, Any]]]:
        """Per-instance circuit state and per-service bulkhead counters of this host."""
        instances: list[dict[str, Any]] = []
        bulkheads: list[dict[str, Any]] = []
        for traffic in self._traffic.values():
            found, bulkhead = traffic.snapshot()
            instances += found
            if bulkhead is not None:
                bulkheads.append(bulkhead)
        return {"instances": instances, "bulkheads": bulkheads}

    async def invoke(self, request: HttpRequest) -> Reply:
        endpoint = self._endpoints.get(request.service)
        if endpoint is None:
            return Reply(failure="connection_refused", error=f"unknown service {request.service!r}")
        try:
            headers = {**request.headers, **endpoint.headers(),
                       "Idempotency-Key": request.idempotency_key}
        except KeyError as missing:
            # Names the service, header and variable; never a value.
            return Reply(failure="connection_refused", error=str(missing))
        traffic = self._traffic[request.service]
        traffic.start_health_checks(self._client)

        async def send(base: str) -> Reply:
            url = base + request.path
            if self._on_send is not None:
                self._on_send(url, headers)
            return await self._send(request, url, headers)

        return await traffic.send(request.idempotency_key, send)

    async def _send(self, request: HttpRequest, url: str, headers: dict[str, str]) -> Reply:
        session = await self._client()
        timeout = aiohttp.ClientTimeout(total=request.timeout)
        try:
            async with session.request(
                request.method, url, json=request.body, headers=headers, timeout=timeout
            ) as response:
                payload = await _read_body(response)
                return Reply(status_code=response.status, body=payload,
                             retry_after=_retry_after(response.headers.get("Retry-After")))
        except (TimeoutError, aiohttp.ServerTimeoutError):
            return Reply(failure="timeout", error=f"no reply within {request.timeout:g}s")
        except aiohttp.ClientConnectorError as error:
            return Reply(failure="connection_refused", error=f"cannot connect: {error.os_error}")
        except (aiohttp.ClientError, OSError) as error:
            # Sent, then the connection broke: the service may or may not have acted.
            return Reply(failure="connection_lost", error=f"connection lost: {error!r}"[:300])


async def _read_body(response: aiohttp.ClientResponse) -> Any:
    raw = await response.read()
    if not raw:
        return None
    if "json" in response.headers.get("Content-Type", ""):
        # orjson first (the profile's hot spot was text() then json.loads); json for
        # what orjson refuses but JSON allows, such as integers beyond 64 bits.
        with contextlib.suppress(ValueError):
            return orjson.loads(raw)
        with contextlib.suppress(ValueError):
            return json.loads(raw)
    return raw.decode(response.charset or "utf-8", errors="replace")


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    with contextlib.suppress(ValueError):
        return max(0.0, float(value))
    with contextlib.suppress(TypeError, ValueError):
        return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
    return None


def _dumps(value: Any) -> str:
    try:
        return orjson.dumps(value).decode()
    except TypeError:  # e.g. an integer beyond 64 bits, which json writes as is
        return json.dumps(value, separators=(",", ":"))
