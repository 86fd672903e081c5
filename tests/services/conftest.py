"""Fixtures of the demo services' tests: every service on a free loopback port, once.

Each test starts from a clean slate: the autouse fixture resets every service
(state, ledger, stored replies, fault rules) before and after it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import pytest

from services.client import reset
from services.runner import RunningServices, start_services


@pytest.fixture(scope="session")
async def svc() -> AsyncIterator[RunningServices]:
    # environ={}: a FLIGHTS_TOKEN in the developer's shell must not turn auth on here.
    running = await start_services(environ={})
    yield running
    await running.close()


@pytest.fixture(scope="session")
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
        yield session


@pytest.fixture(autouse=True)
async def clean_services(
    svc: RunningServices, http: aiohttp.ClientSession
) -> AsyncIterator[None]:
    for url in svc.urls.values():
        await reset(http, url)
    yield
    for url in svc.urls.values():
        await reset(http, url)
