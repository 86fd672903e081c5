from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from coordinator.host_config import HostConfig
from coordinator.journal.base import Journal
from tests.conftest import DemoStack

TERMINAL = ("completed", "compensated", "failed")


class Api:
    """A small client of the coordinator's HTTP API and of the services' ledgers."""

    def __init__(self, session: aiohttp.ClientSession, stack: DemoStack) -> None:
        self.session = session
        self.stack = stack

    async def post(self, path: str, body: Any = None, **kwargs: Any) -> tuple[int, Any]:
        async with self.session.post(self.stack.url + path, json=body, **kwargs) as response:
            return response.status, await response.json()

    async def get(self, path: str) -> tuple[int, Any]:
        async with self.session.get(self.stack.url + path) as response:
            return response.status, await response.json()

    async def start(self, saga: str, value: Any, wait: float | None = None,
                    key: str | None = None) -> tuple[int, Any]:
        query = f"?wait={wait}" if wait is not None else ""
        headers = {"Idempotency-Key": key} if key else None
        return await self.post(f"/v1/sagas/{saga}/executions{query}", {"input": value},
                               headers=headers)

    async def run(self, saga: str, value: Any, wait: float = 30) -> dict[str, Any]:
        status, body = await self.start(saga, value, wait=wait)
        assert status == 200, body
        assert body["status"] in TERMINAL, body
        return dict(body)

    async def wait(self, execution_id: str, seconds: float = 30) -> dict[str, Any]:
        status, body = await self.get(f"/v1/executions/{execution_id}?wait={seconds}")
        assert status == 200, body
        return dict(body)

    async def ledger(self, service: str, prefix: str | None = None) -> list[dict[str, Any]]:
        url = self.stack.services[service]
        async with self.session.get(f"{url}/_ledger") as response:
            entries: list[dict[str, Any]] = (await response.json())["entries"]
        if prefix is None:
            return entries
        return [e for e in entries if (e.get("idempotency_key") or "").startswith(prefix)]

    async def fault(self, service: str, rule: dict[str, Any]) -> None:
        url = self.stack.services[service]
        async with self.session.post(f"{url}/_faults", json=rule) as response:
            assert response.status in (200, 201), await response.text()


@pytest.fixture
async def api(stack: DemoStack) -> AsyncIterator[Api]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as session:
        yield Api(session, stack)


@pytest.fixture
async def setup(demo_services: dict[str, str],
                tmp_path: Path) -> AsyncIterator[tuple[Journal, HostConfig]]:
    """A journal and host configuration for one host core in this process."""
    # Here, not at the top: hostcore needs tests.faults.conftest, which needs Api above.
    from tests.runtime.hostcore import host_journal

    async with host_journal(demo_services, tmp_path) as found:
        yield found
