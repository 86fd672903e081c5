"""``build_stack`` with API tokens on real Ray: the served app enforces them, and the CLI,
as a user runs it, authenticates with ``SAGARAY_TOKEN`` or ``--token``."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from coordinator.auth import ApiTokens
from coordinator.server import ServeOptions, Stack, build_stack
from tests.conftest import ROOT, serve_on_loopback

READ = "runtime-read-token-0123456789"
WRITE = "runtime-write-token-0123456789"
SAGARAY = str(Path(sys.executable).with_name("sagaray"))


@pytest.fixture
async def secured(ray_session: None, tmp_path: Path) -> AsyncIterator[tuple[str, Stack]]:
    options = ServeOptions(
        sagas_dir=ROOT / "sagas", services_file=ROOT / "services.yaml",
        journal_url=f"sqlite:///{tmp_path / 'journal.db'}", hosts=1,
        namespace="sagaray-auth-tests", api_tokens=ApiTokens(read=(READ,), write=(WRITE,)))
    built = await build_stack(options)
    runner, url = await serve_on_loopback(built.app)
    try:
        yield url, built
    finally:
        await runner.cleanup()
        built.pool.shutdown()
        await built.close()


async def status_of(session: aiohttp.ClientSession, method: str, url: str,
                    token: str | None = None) -> int:
    headers = {"Authorization": f"Bearer {token}"} if token else None
    async with session.request(method, url, headers=headers, json={"input": {}}) as response:
        return response.status


async def test_build_stack_enforces_the_tokens(secured: tuple[str, Stack]) -> None:
    url, _ = secured
    async with aiohttp.ClientSession() as session:
        assert await status_of(session, "GET", f"{url}/healthz") == 200
        assert await status_of(session, "GET", f"{url}/readyz") == 200
        assert await status_of(session, "GET", f"{url}/v1/sagas") == 401
        assert await status_of(session, "GET", f"{url}/openapi.json") == 401
        assert await status_of(session, "GET", f"{url}/v1/sagas", READ) == 200
        start = f"{url}/v1/sagas/trip_booking/executions"
        assert await status_of(session, "POST", start, READ) == 403
        # A write token passes authentication; the empty input then fails validation.
        assert await status_of(session, "POST", start, WRITE) == 422


async def sagaray(*args: str, token: str | None = None) -> int:
    env = {k: v for k, v in os.environ.items() if k != "SAGARAY_TOKEN"}
    if token is not None:
        env["SAGARAY_TOKEN"] = token
    process = await asyncio.create_subprocess_exec(
        SAGARAY, *args, env=env, stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL)
    return await asyncio.wait_for(process.wait(), timeout=120)


async def test_the_cli_authenticates_with_the_variable_or_the_flag(
        secured: tuple[str, Stack]) -> None:
    url, _ = secured
    assert await sagaray("list", "--url", url) == 1
    assert await sagaray("list", "--url", url, token=READ) == 0
    assert await sagaray("list", "--url", url, "--token", READ) == 0
    assert await sagaray("resume", "nope", "--url", url, token=READ) == 1  # 403
