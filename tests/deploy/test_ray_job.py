"""The coordinator as a Ray job on a real multi-node cluster (issue 8, deploy/README.md).

A head (with the dashboard, whose job server takes the job) and a worker, each a real
``ray start`` with token auth; the demo services on loopback. The test submits
``sagaray serve --ray-address auto ...`` with ``ray job submit``, exactly as the README's
"The coordinator as a Ray job" shows, runs a saga that completes and one that compensates
through the job's HTTP API, then stops the job with ``ray job stop``.

Everything blocking (the ``ray`` CLI) runs in a thread: the demo services serve from this
test's event loop.
"""

from __future__ import annotations

import asyncio
import re
import shlex
import time
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from coordinator.cli import build_parser
from services.runner import write_services_file
from tests.cluster import RayCluster
from tests.conftest import ROOT, free_port
from tests.order_variants import write_order_variant
from tests.ray_jobs import TERMINAL as JOB_TERMINAL
from tests.ray_jobs import RayJobs

pytest_plugins = ("tests.cluster_fixtures",)
pytestmark = [pytest.mark.ray, pytest.mark.timeout(420)]

SAGA = "job_order"
SERVICES = ("inventory", "payments", "shipping", "orders", "notifications")
READY_TIMEOUT = 180.0


def write_sagas(directory: Path) -> Path:
    """``tests/sagas/faulty_order.yaml`` as ``job_order``, with a 5 s per-attempt timeout.

    faulty_order's 400 ms suits one quiet process; here a loaded 2-core machine runs two Ray
    nodes, and a slow first call must not turn the saga meant to complete into a rollback.
    """
    write_order_variant(directory, SAGA, timeout="5s")
    return directory


def serve_entrypoint(base: Path, port: int) -> list[str]:
    """The job's entrypoint: the real CLI, joining the cluster the job runs on."""
    return [
        "sagaray", "serve", "--ray-address", "auto",
        "--journal", f"sqlite:///{base / 'j.db'}",
        "--sagas", str(base / "sagas"), "--services", str(base / "services.yaml"),
        "--port", str(port), "--namespace", f"job-{uuid.uuid4().hex[:6]}",
    ]


async def wait_ready(session: aiohttp.ClientSession, url: str, jobs: RayJobs,
                     job_id: str) -> dict[str, Any]:
    """Poll ``/readyz`` until 200; a job that ended first fails the test with its logs."""
    deadline = time.monotonic() + READY_TIMEOUT
    last: object = None
    while time.monotonic() < deadline:
        try:
            async with session.get(f"{url}/readyz") as response:
                body: dict[str, Any] = await response.json(content_type=None)
                if response.status == 200:
                    return body
                last = (response.status, body)
        except (aiohttp.ClientError, TimeoutError) as error:
            last = error
        status = await asyncio.to_thread(jobs.status, job_id)
        if status in JOB_TERMINAL:
            logs = await asyncio.to_thread(jobs.logs, job_id)
            raise AssertionError(f"job {job_id} ended ({status}) before serving:\n{logs}")
        await asyncio.sleep(1.0)
    logs = await asyncio.to_thread(jobs.logs, job_id)
    raise AssertionError(f"{url}/readyz not 200 after {READY_TIMEOUT:.0f} s: {last!r}\n{logs}")


async def run_saga(session: aiohttp.ClientSession, url: str,
                   value: dict[str, Any]) -> dict[str, Any]:
    """Start ``job_order`` through the API and wait (server side) for its end."""
    async with session.post(f"{url}/v1/sagas/{SAGA}/executions?wait=60",
                            json={"input": value}) as response:
        body: dict[str, Any] = await response.json()
        assert response.status in (200, 202), body
    execution_id = body["execution_id"]
    for _ in range(6):
        if body["status"] in ("completed", "compensated", "failed"):
            return body
        async with session.get(f"{url}/v1/executions/{execution_id}?wait=30") as response:
            body = await response.json()
            assert response.status == 200, body
    raise AssertionError(f"execution {execution_id} not terminal: {body}")


def serve_pids(cluster: RayCluster) -> set[int]:
    """The head's processes whose command line is ``... sagaray serve ...`` (the job's driver)."""
    assert cluster.head is not None
    found = set()
    for pid in cluster.head.refresh_pids():
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        words = [Path(w.decode(errors="replace")).name for w in argv]
        if "sagaray" in words and "serve" in words:
            found.add(pid)
    return found


async def test_the_coordinator_runs_as_a_ray_job_and_stops_with_it(
    ray_job_cluster: RayCluster, demo_services: dict[str, str], tmp_path: Path
) -> None:
    cluster = ray_job_cluster
    jobs = RayJobs(cluster)
    await asyncio.to_thread(write_sagas, tmp_path / "sagas")
    await asyncio.to_thread(write_services_file,
                            {name: demo_services[name] for name in SERVICES},
                            tmp_path / "services.yaml")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    job_id = f"sagaray-{uuid.uuid4().hex[:8]}"

    # The job server checks the cluster's token: a wrong one is turned away.
    refused = await asyncio.to_thread(
        jobs.run, jobs.submit_command(f"{job_id}-refused", ["true"]),
        {"RAY_AUTH_TOKEN": "0" * 64})
    assert refused.returncode != 0, refused.stdout
    assert "InvalidAuthToken" in refused.stdout + refused.stderr, refused.stderr

    await asyncio.to_thread(jobs.submit, job_id, serve_entrypoint(tmp_path, port))
    timeout = aiohttp.ClientTimeout(total=120)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        ready = await wait_ready(session, url, jobs, job_id)
        assert ready["status"] == "ready", ready

        done = await run_saga(session, url, {"order_id": f"{job_id}-ok"})
        assert done["status"] == "completed", done
        assert {s["name"]: s["status"] for s in done["steps"]} == dict.fromkeys(
            ("reserve_inventory", "charge_payment", "create_shipment", "confirm_order",
             "notify"), "succeeded")

        undone = await run_saga(session, url, {"order_id": f"{job_id}-undo",
                                               "faults": {"create_shipment": "business"}})
        assert undone["status"] == "compensated", undone
        steps = {s["name"]: s["status"] for s in undone["steps"]}
        assert steps["reserve_inventory"] == steps["charge_payment"] == "compensated", steps
        assert steps["create_shipment"] == "failed", steps

    assert await asyncio.to_thread(jobs.status, job_id) == "RUNNING"
    driver = await asyncio.to_thread(serve_pids, cluster)
    assert driver, "no `sagaray serve` process found on the head node"

    await asyncio.to_thread(jobs.stop, job_id)
    status = await asyncio.to_thread(jobs.wait_status, job_id, frozenset({"STOPPED"}))
    assert status == "STOPPED", await asyncio.to_thread(jobs.logs, job_id)
    assert cluster.head is not None
    assert driver.isdisjoint(cluster.head.alive_pids()), "the job's driver outlived the stop"
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
        with pytest.raises(aiohttp.ClientConnectionError):
            async with session.get(f"{url}/healthz"):
                pass


def test_the_readme_shows_the_ray_job_the_test_runs(tmp_path: Path) -> None:
    """README's "The coordinator as a Ray job" submits what the test above submits."""
    readme = (ROOT / "README.md").read_text()
    section = readme.split("### The coordinator as a Ray job", 1)[1].split("\n### ", 1)[0]
    block = re.sub(r"\\\n\s*", " ", section.split("```sh\n", 1)[1].split("```", 1)[0])
    submit = next(line for line in block.splitlines() if line.startswith("ray job submit"))
    ray_part, _, entrypoint = submit.partition(" -- ")
    documented = shlex.split(entrypoint)
    tested = serve_entrypoint(tmp_path, 8080)
    assert documented[:2] == tested[:2] == ["sagaray", "serve"]

    def flags(argv: list[str]) -> set[str]:
        return {word for word in argv if word.startswith("--")}

    # The test adds only a namespace of its own, so that its actors stay apart.
    assert flags(documented) == flags(tested) - {"--namespace"}
    assert build_parser().parse_args(documented[1:]).ray_address == "auto"
    assert set(shlex.split(ray_part)) >= {"--address", "--no-wait", "--submission-id"}
    assert {verb for verb in ("status", "logs", "stop") if f"ray job {verb} " in block} == {
        "status", "logs", "stop"}
