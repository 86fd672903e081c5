"""Auth, app factories, the services file, and the services run as real processes."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

import aiohttp
import pytest
import yaml

from services.app import config_from_env
from services.common import STATE_KEY, ServiceConfig
from services.registry import DEFAULT_PORTS, SERVICE_NAMES, SPECS, create_app
from services.runner import render_services_yaml, start_services, write_services_file
from tests.conftest import free_port
from tests.services.helpers import call

ROOT = Path(__file__).resolve().parents[2]
TRIP = {"trip": "T-1", "passenger": "Ada"}
FLIGHTS_HEADER_LINE = '    headers: {Authorization: "Bearer ${env:FLIGHTS_TOKEN}"}'


async def test_flights_requires_the_configured_token(http: aiohttp.ClientSession) -> None:
    configs = {"flights": ServiceConfig("flights", required_token="s3cret")}
    async with await start_services(["flights"], configs=configs) as running:
        url = running.urls["flights"]
        missing = await call(http, "POST", f"{url}/bookings", TRIP)
        assert (missing.status, missing.content_type) == (401, "application/problem+json")
        assert missing.headers["WWW-Authenticate"].startswith("Bearer")
        wrong = await call(http, "POST", f"{url}/bookings", TRIP,
                           headers={"Authorization": "Bearer nope"})
        assert wrong.status == 401
        right = await call(http, "POST", f"{url}/bookings", TRIP,
                           headers={"Authorization": "Bearer s3cret"})
        assert right.status == 201
        # Control routes stay open for tests and demos.
        assert (await call(http, "GET", f"{url}/healthz")).status == 200
        assert len((await call(http, "GET", f"{url}/_ledger")).body["entries"]) == 1


def test_token_comes_from_the_env_only_for_flights() -> None:
    env = {"FLIGHTS_TOKEN": "t", "HOTELS_TOKEN": "h"}
    assert config_from_env(SPECS["flights"], env).required_token == "t"
    assert config_from_env(SPECS["flights"], {"FLIGHTS_TOKEN": ""}).required_token is None
    assert config_from_env(SPECS["hotels"], env).required_token is None
    assert config_from_env(SPECS["flights"], {}, latency_ms=5).latency_ms == 5


def test_create_app_by_name_or_config() -> None:
    by_name = create_app("payments", error_rate=0.5)
    assert by_name[STATE_KEY].config == ServiceConfig("payments", error_rate=0.5)
    by_config = create_app(ServiceConfig("flights", latency_ms=7), required_token="x")
    assert by_config[STATE_KEY].config == ServiceConfig("flights", "x", latency_ms=7)
    with pytest.raises(ValueError, match="unknown service"):
        create_app("trains")
    with pytest.raises(ValueError, match="error_rate"):
        create_app("cars", error_rate=2.0)


def test_services_file_format(tmp_path: Path) -> None:
    urls = {name: f"http://127.0.0.1:{port}" for name, port in DEFAULT_PORTS.items()}
    text = render_services_yaml(urls)
    assert FLIGHTS_HEADER_LINE in text.splitlines()
    parsed = yaml.safe_load(text)["services"]
    assert list(parsed) == list(SERVICE_NAMES)
    assert parsed["flights"]["headers"] == {"Authorization": "Bearer ${env:FLIGHTS_TOKEN}"}
    assert parsed["orders"] == {"url": "http://127.0.0.1:9108"}
    written = write_services_file(urls, tmp_path / "services.yaml")
    assert written.read_text(encoding="utf-8") == text
    # The repository's services.yaml is the one for the default ports.
    assert (ROOT / "services.yaml").read_text(encoding="utf-8") == text


async def test_explicit_ports_and_a_taken_port(http: aiohttp.ClientSession) -> None:
    port = free_port()
    async with await start_services(["orders"], ports={"orders": port}) as running:
        assert running.urls == {"orders": f"http://127.0.0.1:{port}"}
        assert (await call(http, "GET", f"{running.urls['orders']}/healthz")).status == 200
        with pytest.raises(OSError):
            await start_services(["cars", "orders"], ports={"orders": port})


async def _wait_healthy(http: aiohttp.ClientSession, url: str, proc: asyncio.subprocess.Process,
                        ) -> None:
    for _ in range(200):
        if proc.returncode is not None:
            raise AssertionError(f"the service exited with {proc.returncode}")
        try:
            async with http.get(f"{url}/healthz") as response:
                if response.status == 200:
                    return
        except aiohttp.ClientConnectionError:
            pass
        await asyncio.sleep(0.05)
    raise AssertionError(f"{url} never became healthy")


async def _spawn(*args: str, env: dict[str, str]) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable, *args, cwd=ROOT, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,
    )


async def test_python_m_flights_runs_alone_and_reads_its_token(
    http: aiohttp.ClientSession,
) -> None:
    port = free_port()
    env = {**os.environ, "FLIGHTS_TOKEN": "from-env"}
    proc = await _spawn("-m", "services.flights", "--port", str(port), env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        await _wait_healthy(http, url, proc)
        assert (await call(http, "POST", f"{url}/bookings", TRIP)).status == 401
        authorized = await call(http, "POST", f"{url}/bookings", TRIP,
                                headers={"Authorization": "Bearer from-env"})
        assert authorized.status == 201
    finally:
        proc.terminate()
        assert await asyncio.wait_for(proc.wait(), 10) == 0


async def test_run_all_serves_every_service_until_sigterm(
    http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    ports = {name: 0 for name in SERVICE_NAMES}
    script = (f"from services.runner import run_all; "
              f"run_all(ports={ports!r}, services_file={str(tmp_path / 's.yaml')!r})")
    env = {key: value for key, value in os.environ.items() if key != "FLIGHTS_TOKEN"}
    proc = await _spawn("-c", script, env=env)
    assert proc.stdout is not None
    urls: dict[str, str] = {}
    try:
        while len(urls) < len(SERVICE_NAMES):
            line = (await asyncio.wait_for(proc.stdout.readline(), 10)).decode()
            assert line, "run_all exited early"
            name, _, url = line.strip().partition("  ")
            urls[name] = url.strip()
        for url in urls.values():
            await _wait_healthy(http, url, proc)
        assert (await call(http, "POST", f"{urls['flights']}/bookings", TRIP)).status == 201
    finally:
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 10) == 0
    parsed = yaml.safe_load((tmp_path / "s.yaml").read_text(encoding="utf-8"))["services"]
    assert {name: entry["url"] for name, entry in parsed.items()} == urls
