"""Request helpers shared by the services' tests."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import aiohttp

from services.client import fetch_ledger


@dataclass
class Answer:
    status: int
    body: Any
    headers: dict[str, str]
    content_type: str


async def call(
    http: aiohttp.ClientSession,
    method: str,
    url: str,
    body: Any = None,
    *,
    key: str | None = None,
    fault: str | None = None,
    headers: dict[str, str] | None = None,
    timeout: float | None = None,
) -> Answer:
    """One request; the body is decoded as JSON whatever the content type."""
    sent = dict(headers or {})
    if key is not None:
        sent["Idempotency-Key"] = key
    if fault is not None:
        sent["X-Fault"] = fault
    options: dict[str, Any] = {"headers": sent}
    if body is not None:
        options["json"] = body
    if timeout is not None:
        options["timeout"] = aiohttp.ClientTimeout(total=timeout)
    async with http.request(method, url, **options) as response:
        data = await response.json(content_type=None) if await response.read() else None
        return Answer(response.status, data, dict(response.headers), response.content_type)


async def ledger(http: aiohttp.ClientSession, url: str) -> list[dict[str, Any]]:
    return await fetch_ledger(http, url)
