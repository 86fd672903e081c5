"""The suite's harness: child processes (services, coordinators), the run's shared state."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp

from bench.proc_stats import (
    loadavg,
)

ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / ".sagaray" / "bench"
RESULTS = Path(__file__).resolve().parent / "results"
SAGA = "bench_three_step"
SAGA_DEDICATED = "bench_three_step_dedicated"
SAGA_PARKED = "bench_three_step_parked"
STARTUP_TIMEOUT = 180.0

def log(message: str) -> None:
    stamp = time.strftime("%H:%M:%S")
    print(f"[{stamp} load {loadavg()[0]:.2f}] {message}", file=sys.stderr, flush=True)


# -- child processes ------------------------------------------------------------------


class Child:
    """A ``python -m bench.procs ...`` child: one JSON line when ready, stops on SIGTERM."""

    def __init__(self, name: str, args: list[str], tree: Path | None = None) -> None:
        self.name = name
        self.args = args
        # Another checkout whose coordinator code this child runs (A/B across commits).
        self.tree = tree
        self.proc: asyncio.subprocess.Process | None = None
        self.info: dict[str, Any] = {}

    async def start(self) -> dict[str, Any]:
        WORK.mkdir(parents=True, exist_ok=True)
        stderr = (WORK / f"{self.name}.log").open("ab")
        env = dict(os.environ)
        if self.tree is not None:
            # First on the path of this process and of the Ray workers it starts.
            env["PYTHONPATH"] = os.pathsep.join([str(self.tree), env.get("PYTHONPATH", "")])
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bench.procs", *self.args, cwd=self.tree or ROOT, env=env,
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=stderr,
            start_new_session=True)
        stderr.close()
        assert self.proc.stdout is not None
        try:
            line = await asyncio.wait_for(self.proc.stdout.readline(), STARTUP_TIMEOUT)
        except TimeoutError:
            await self.stop()
            raise RuntimeError(
                f"{self.name} did not start; see {WORK / (self.name + '.log')}") from None
        if not line:
            await self.stop()
            raise RuntimeError(f"{self.name} exited; see {WORK / (self.name + '.log')}")
        self.info = json.loads(line)
        return self.info

    async def stop(self) -> None:
        proc = self.proc
        if proc is None or proc.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), 60)
        except TimeoutError:
            # Only the process group this suite started (start_new_session above).
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            await proc.wait()


def services_yaml(urls: dict[str, str]) -> str:
    lines = ["services:"] + [f"  {name}:\n    url: {url}" for name, url in urls.items()]
    return "\n".join(lines) + "\n"


class Bench:
    """Shared state of one suite run: the services, the current coordinator, the results."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.run_id = time.strftime("%Y%m%d-%H%M%S")
        self.dir = WORK / self.run_id
        self.dir.mkdir(parents=True, exist_ok=True)
        self.services = Child("services", ["services"])
        self.coordinator: Child | None = None
        self.session: aiohttp.ClientSession | None = None
        self.results: list[dict[str, Any]] = []
        self.peak_rate: float | None = None

    @property
    def urls(self) -> dict[str, str]:
        return dict(self.services.info["urls"])

    @property
    def control(self) -> str:
        return str(self.services.info["control"])

    @property
    def api(self) -> str:
        assert self.coordinator is not None
        return str(self.coordinator.info["url"])

    @property
    def api_pid(self) -> int:
        assert self.coordinator is not None
        return int(self.coordinator.info["api_pid"])

    @property
    def http(self) -> aiohttp.ClientSession:
        assert self.session is not None
        return self.session

    async def start_coordinator(self, label: str, journal: str, otlp: str | None = None,
                                patch: str | None = None, tree: Path | None = None) -> None:
        services_file = self.dir / "services.yaml"
        services_file.write_text(services_yaml(self.urls))
        args = ["coordinator", "--journal", journal, "--services", str(services_file),
                "--hosts", str(self.args.hosts)]
        if otlp:
            args += ["--otlp", otlp]
        patch = self.args.patch if patch is None else patch
        if patch:
            args += ["--patch", patch]
        self.coordinator = Child(f"coordinator-{label}", args, tree)
        began = time.perf_counter()
        info = await self.coordinator.start()
        log(f"coordinator {label} up in {time.perf_counter() - began:.1f}s: {info}")

    async def stop_coordinator(self) -> None:
        if self.coordinator is not None:
            await self.coordinator.stop()
            self.coordinator = None

    async def ctl(self, method: str, path: str, body: Any = None) -> Any:
        async with self.http.request(method, self.control + path, json=body) as response:
            response.raise_for_status()
            return await response.json()

    def record(self, entry: dict[str, Any]) -> dict[str, Any]:
        self.results.append(entry)
        return entry


class NotMeasured(Exception):
    """A variant that could not run here; the reason goes in the results."""
