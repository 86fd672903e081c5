"""Small async helpers for tests and demos that drive the services' control routes."""

from __future__ import annotations

from typing import Any

import aiohttp


async def _json(response: aiohttp.ClientResponse) -> Any:
    response.raise_for_status()
    return await response.json(content_type=None)


async def fetch_ledger(session: aiohttp.ClientSession, url: str) -> list[dict[str, Any]]:
    """The ledger entries of the service at base ``url``, oldest first."""
    async with session.get(f"{url}/_ledger") as response:
        entries: list[dict[str, Any]] = (await _json(response))["entries"]
        return entries


async def add_fault(
    session: aiohttp.ClientSession, url: str, rule: dict[str, Any]
) -> dict[str, Any]:
    """Register a ``/_faults`` rule; returns the stored rule (with its id)."""
    async with session.post(f"{url}/_faults", json=rule) as response:
        stored: dict[str, Any] = (await _json(response))["rule"]
        return stored


async def clear_faults(session: aiohttp.ClientSession, url: str) -> int:
    """Remove every fault rule; returns how many there were."""
    async with session.delete(f"{url}/_faults") as response:
        deleted: int = (await _json(response))["deleted"]
        return deleted


async def reset(session: aiohttp.ClientSession, url: str) -> None:
    """Forget state, ledger, stored replies and fault rules."""
    async with session.post(f"{url}/_reset") as response:
        await _json(response)
