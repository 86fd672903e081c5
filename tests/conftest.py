"""Session-wide fixtures: one real Ray, real demo services on loopback, one real stack.

Ray is started once per session (starting it costs seconds); each test isolates
itself by its own executions and inputs instead of restarting anything.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import socket
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from aiohttp import web
from blockbuster import BlockBuster, blockbuster_ctx

if TYPE_CHECKING:
    from coordinator.server import ServeOptions

ROOT = Path(__file__).resolve().parents[1]
# The flights service demands this token and the coordinator sends it from the
# environment; set before Ray starts so the SagaHost processes inherit it.
os.environ.setdefault("FLIGHTS_TOKEN", secrets.token_hex(16))
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


@pytest.fixture(autouse=True)
def no_blocking_in_event_loop() -> Iterator[BlockBuster]:
    """Fail any test in which our code blocks the event loop (file, socket, sleep)."""
    with blockbuster_ctx(["coordinator", "services"]) as guard:
        yield guard


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture(scope="session")
def ray_session() -> Iterator[None]:
    import ray

    ray.init(num_cpus=2, include_dashboard=False, namespace="sagaray-tests",
             log_to_driver=False, logging_level="WARNING")
    yield
    ray.shutdown()


@dataclass
class DemoStack:
    url: str
    services: dict[str, str]
    stack: object
    journal_path: Path


@pytest.fixture(scope="session")
async def demo_services() -> AsyncIterator[dict[str, str]]:
    from services.runner import start_services

    running = await start_services()
    yield dict(running.urls)
    await running.close()


@pytest.fixture(scope="session")
async def stack(
    ray_session: None, demo_services: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[DemoStack]:
    """The whole coordinator on real Ray, with the API served on a free port."""
    base = tmp_path_factory.mktemp("stack")
    options = await stack_options(base, demo_services, hosts=2, namespace="sagaray-tests")
    async with serving(options, demo_services, base / "journal.db") as served:
        yield served


async def stack_options(base: Path, demo_services: dict[str, str], *, patient: bool = True,
                        **overrides: Any) -> ServeOptions:
    """Options of a stack of its own in ``base``: the demo services' file written there, a
    SQLite journal there, the project's sagas, the test sagas and (``patient``) the patient
    copy of ``faulty_order``."""
    from coordinator.server import ServeOptions
    from services.runner import write_services_file

    services_file = base / "services.yaml"
    await asyncio.to_thread(write_services_file, demo_services, services_file)
    extra = [ROOT / "tests" / "sagas"]
    if patient:
        extra.append(await asyncio.to_thread(write_patient_copy, base / "patient"))
    return ServeOptions(**{
        "sagas_dir": ROOT / "sagas", "services_file": services_file,
        "journal_url": f"sqlite:///{base / 'journal.db'}", "extra_sagas": tuple(extra),
        **overrides})


def write_patient_copy(target: Path) -> Path:
    """``faulty_order_patient``: ``faulty_order`` with a 10 s attempt timeout.

    ``faulty_order``'s 400 ms timeout keeps its failure-path tests fast, but under a
    load test on two busy cores a healthy call can take longer; its timed-out
    ``create_shipment`` (not retried: outcome unknown) then compensates a saga the
    test expects to complete.
    """
    from tests.order_variants import write_order_variant

    write_order_variant(target, "faulty_order_patient", timeout="10s")
    return target


async def serve_on_loopback(app: web.Application) -> tuple[web.AppRunner, str]:
    """Serve ``app`` on a free loopback port, as ``sagaray serve`` does; (runner, base URL).

    The caller ends it with ``runner.cleanup()``.
    """
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner, f"http://127.0.0.1:{port}"


@contextlib.asynccontextmanager
async def serving(options: ServeOptions, demo_services: dict[str, str],
                  journal_path: Path) -> AsyncIterator[DemoStack]:
    """``build_stack`` plus the API on a free loopback port, as ``sagaray serve`` does."""
    from coordinator.server import build_stack

    built = await build_stack(options)
    runner, url = await serve_on_loopback(built.app)
    try:
        yield DemoStack(url, demo_services, built, journal_path)
    finally:
        await runner.cleanup()
        await built.close()
