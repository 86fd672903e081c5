"""A traced stack of its own: OTLP receiver, demo services and coordinator hosts.

The session's stack runs without tracing; this module builds a second one on the
same Ray, in its own namespace (so with its own SagaHost actors), whose API,
hosts and services all export to a real OTLP/HTTP receiver on loopback.
"""

from __future__ import annotations

import asyncio
import os
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest

from coordinator.server import ServeOptions, Stack, build_stack
from tests.conftest import ROOT, serve_on_loopback
from tests.tracing.receiver import OtlpReceiver

# Set before Ray starts (conftests load at collection), since the hosts resolve the
# flights service's "Bearer ${env:FLIGHTS_TOKEN}" from the environment they inherit.
TOKEN = os.environ.setdefault("FLIGHTS_TOKEN", f"secret-{secrets.token_hex(16)}")
NAMESPACE = "sagaray-tracing"
JAEGER_URL = "http://jaeger.test:16686"


@dataclass
class TracedStack:
    url: str
    services: dict[str, str]
    receiver: OtlpReceiver
    built: Stack
    session: aiohttp.ClientSession
    token: str


@pytest.fixture(scope="module")
async def receiver() -> AsyncIterator[OtlpReceiver]:
    found = OtlpReceiver()
    await found.start()
    yield found
    await found.close()


@pytest.fixture(scope="module")
async def traced(
    ray_session: None, receiver: OtlpReceiver, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[TracedStack]:
    from services.runner import start_services, write_services_file

    env = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url,
        "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
        # Short batches, so a test sees spans a moment after they end.
        "OTEL_BSP_SCHEDULE_DELAY": "50",
        "OTEL_RESOURCE_ATTRIBUTES": "deployment.environment.name=test",
    }
    running = await start_services(environ={**env, "FLIGHTS_TOKEN": TOKEN})
    base: Path = tmp_path_factory.mktemp("traced")
    services_file = base / "services.yaml"
    await asyncio.to_thread(write_services_file, running.urls, services_file)
    options = ServeOptions(
        sagas_dir=ROOT / "sagas", services_file=services_file,
        journal_url=f"sqlite:///{base / 'journal.db'}", hosts=2, namespace=NAMESPACE,
        jaeger_url=JAEGER_URL, extra_sagas=(ROOT / "tests" / "sagas",), otel_env=env)
    built = await build_stack(options)
    runner, url = await serve_on_loopback(built.app)
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session:
        yield TracedStack(url, dict(running.urls), receiver, built,
                          session, TOKEN)
    await runner.cleanup()
    built.pool.shutdown()
    await built.close()
    await running.close()
