"""``sagaray serve`` as a subprocess of a test, and what the fault tests need around it.

A process can join one Ray cluster only, and the pytest process may already be joined to
the session's local Ray: a coordinator for a test cluster (``tests/cluster.py``) therefore
runs as its own ``sagaray serve --ray-address ...`` process, with the cluster's environment
(``RayCluster.subprocess_env()``: token auth, and the FLIGHTS_TOKEN of this process).

- :class:`ServeProcess`: launch, wait until serving, SIGKILL (a crash) or SIGTERM; its output
  goes to a log file whose tail every failure message carries.
- :class:`HostProbe`: one long-lived driver of the cluster that reads the SagaHosts' stats
  (pid, node) and removes a namespace's detached actors after a test.
- :class:`SagaClient`: the HTTP API as the fault tests use it: bursts of starts that retry
  with an Idempotency-Key, statuses of every execution from the list endpoint, views.
- :func:`check_ledgers`: the services' ledgers against the executions' final statuses.

Everything here that blocks (subprocesses, pipes) is plain sync code; async tests call it
through ``asyncio.to_thread`` so that the demo services in their event loop keep serving.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from tests.cluster import RayCluster

TERMINAL = frozenset({"completed", "compensated", "failed"})
# Every demo service a saga of the order family (faulty_order and its variants) calls.
ORDER_SERVICES = ("inventory", "payments", "shipping", "orders", "notifications")
SERVING_LINE = re.compile(r"sagaray serving on (\S+) \((\d+) hosts, .*?(\d+) unfinished")
READY_TIMEOUT = 120.0


def sagaray_executable() -> str:
    beside = Path(sys.executable).with_name("sagaray")
    if beside.exists():
        return str(beside)
    found = shutil.which("sagaray")
    if found is None:
        raise RuntimeError("no `sagaray` executable beside the interpreter or on PATH")
    return found


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


# -- the serve process --------------------------------------------------------------------


@dataclass
class ServeProcess:
    """One ``sagaray serve`` in a session of its own; ``kill`` is a crash, ``stop`` a shutdown."""

    name: str
    process: subprocess.Popen[bytes]
    port: int
    namespace: str
    log_path: Path
    launched_at: float
    hosts: int
    ready_at: float | None = None
    # From the "sagaray serving on ..." line: executions handed out at start.
    resumed: int | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def host_names(self) -> list[str]:
        return [f"{self.namespace}-host-{index}" for index in range(self.hosts)]

    def alive(self) -> bool:
        return self.process.poll() is None

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return f"--- {self.log_path}\n" + "\n".join(text.splitlines()[-lines:])

    def wait_ready(self, timeout: float = READY_TIMEOUT) -> float:
        """Block until the process printed its serving line; returns seconds since launch."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.alive():
                raise AssertionError(
                    f"serve {self.name} exited with {self.process.returncode} before serving\n"
                    f"{self.log_tail()}"
                )
            try:
                text = self.log_path.read_text(errors="replace")
            except OSError:
                text = ""
            found = SERVING_LINE.search(text)
            if found is not None:
                self.ready_at = time.time()
                self.resumed = int(found.group(3))
                return self.ready_at - self.launched_at
            time.sleep(0.1)
        raise AssertionError(f"serve {self.name} not serving after {timeout:.0f} s\n"
                             f"{self.log_tail()}")

    def kill(self) -> float:
        """SIGKILL the process (and anything in its session); returns when it was sent."""
        at = time.time()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pid, signal.SIGKILL)
        self.process.wait(timeout=30)
        return at

    def stop(self, grace: float = 10.0) -> None:
        """SIGTERM, then SIGKILL after ``grace`` seconds; nothing when already gone."""
        if not self.alive():
            self.process.wait()
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            self.kill()


def launch_serve(
    *,
    name: str,
    env: Mapping[str, str],
    sagas_dir: Path,
    services_file: Path,
    journal_url: str,
    namespace: str,
    log_dir: Path,
    hosts: int = 2,
    lease_seconds: float = 2.0,
    ray_address: str | None = None,
    port: int | None = None,
    extra_args: Sequence[str] = (),
) -> ServeProcess:
    """Start ``sagaray serve`` (not waiting for it: see ``ServeProcess.wait_ready``)."""
    port = port or free_port()
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"serve-{name}-{uuid.uuid4().hex[:6]}.log"
    command = [
        sagaray_executable(), "serve", "--host", "127.0.0.1", "--port", str(port),
        "--sagas", str(sagas_dir), "--services", str(services_file), "--journal", journal_url,
        "--hosts", str(hosts), "--namespace", namespace, "--lease-seconds", f"{lease_seconds:g}",
    ]
    if ray_address is not None:
        command += ["--ray-address", ray_address]
    command += list(extra_args)
    # Only the flags configure it: an inherited SAGARAY_* (say, API tokens) must not.
    child_env = {k: v for k, v in env.items() if not k.startswith("SAGARAY_")}
    child_env["PYTHONUNBUFFERED"] = "1"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            command, env=child_env, stdin=subprocess.DEVNULL, stdout=log,
            stderr=subprocess.STDOUT, start_new_session=True,
        )
    return ServeProcess(name, process, port, namespace, log_path, time.time(), hosts)


def launch_on_cluster(cluster: RayCluster, **kwargs: Any) -> ServeProcess:
    """``launch_serve`` joined to ``cluster``, with its environment."""
    return launch_serve(env=cluster.subprocess_env(), ray_address=cluster.address, **kwargs)


# -- a probe of the hosts -----------------------------------------------------------------

# One request per stdin line, one "@@" + JSON answer per stdout line. Ray's own output goes
# to a log file (argv[1]): a full stderr pipe nobody reads would stall the driver.
_PROBE = r"""
import asyncio, json, os, sys
fd = os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
os.dup2(fd, 2)
import ray
ray.init(namespace="_fault_probe", logging_level="ERROR", log_to_driver=False)

def actor(name, namespace):
    try:
        return ray.get_actor(name, namespace=namespace)
    except ValueError:
        return None

def stats(request):
    found = {}
    refs = {}
    for name in request["names"]:
        handle = actor(name, request["namespace"])
        if handle is not None:
            refs[name] = handle.stats.remote()
    for name in request["names"]:
        try:
            found[name] = ray.get(refs[name], timeout=request.get("timeout", 3))
        except Exception:
            found[name] = None
    return {"hosts": found, "nodes": {n["NodeID"]: n["Alive"] for n in ray.nodes()}}

def kill(request):
    killed = []
    for name in request["names"]:
        handle = actor(name, request["namespace"])
        if handle is not None:
            ray.kill(handle, no_restart=True)
            killed.append(name)
    return {"killed": killed}

print("@@" + json.dumps({"ready": True}), flush=True)
for line in sys.stdin:
    request = json.loads(line)
    if request["op"] == "quit":
        break
    try:
        answer = {"stats": stats, "kill": kill}[request["op"]](request)
    except Exception as error:
        answer = {"error": repr(error)}
    print("@@" + json.dumps(answer), flush=True)
"""


class HostProbe:
    """A driver of the cluster that answers questions about a namespace's SagaHosts."""

    def __init__(self, cluster: RayCluster, log_path: Path) -> None:
        self._proc = cluster.start_driver(_PROBE, str(log_path))
        self._log_path = log_path
        self._lock = threading.Lock()
        first = self._read(timeout=90)
        if not first.get("ready"):
            raise AssertionError(f"host probe did not start: {first}")

    def _read(self, timeout: float) -> dict[str, Any]:
        assert self._proc.stdout is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            line = self._proc.stdout.readline()
            if not line:
                raise AssertionError(f"host probe exited:\n{self._tail()}")
            if line.startswith("@@"):
                answer: dict[str, Any] = json.loads(line[2:])
                return answer
        raise AssertionError(f"host probe silent for {timeout} s\n{self._tail()}")

    def _tail(self) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self._log_path.read_text(errors="replace").splitlines()[-20:])
        return ""

    def ask(self, request: Mapping[str, Any], timeout: float = 60.0) -> dict[str, Any]:
        assert self._proc.stdin is not None
        with self._lock:
            self._proc.stdin.write(json.dumps(request) + "\n")
            self._proc.stdin.flush()
            answer = self._read(timeout)
        if "error" in answer:
            raise AssertionError(f"host probe failed on {request}: {answer['error']}")
        return answer

    def host_stats(self, namespace: str, names: Sequence[str],
                   timeout: float = 3.0) -> dict[str, dict[str, Any] | None]:
        """Each host's ``stats()`` (pid, node_id, running...), None for one that did not answer."""
        answer = self.ask({"op": "stats", "namespace": namespace, "names": list(names),
                           "timeout": timeout})
        hosts: dict[str, dict[str, Any] | None] = answer["hosts"]
        return hosts

    def remove(self, namespace: str, names: Iterable[str]) -> list[str]:
        """Kill (no restart) the named detached actors of ``namespace``."""
        killed: list[str] = self.ask({"op": "kill", "namespace": namespace,
                                      "names": list(names)})["killed"]
        return killed

    def remove_pool(self, serve: ServeProcess) -> list[str]:
        return self.remove(serve.namespace, [*serve.host_names, f"{serve.namespace}-supervisor"])

    def close(self) -> None:
        """End the driver (its pipes stay open: the cluster's ``stop`` reaps it)."""
        if self._proc.poll() is None:
            assert self._proc.stdin is not None
            with contextlib.suppress(OSError):
                self._proc.stdin.write('{"op": "quit"}\n')
                self._proc.stdin.flush()
            try:
                self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self._proc.pid, signal.SIGKILL)
                self._proc.wait()


# -- the HTTP API -------------------------------------------------------------------------


@dataclass
class Started:
    execution_id: str
    input: dict[str, Any]
    api: str
    at: float


class SagaClient:
    """The coordinator's HTTP API and the demo services' ledgers, for fault tests."""

    def __init__(self, session: aiohttp.ClientSession, services: Mapping[str, str]) -> None:
        self.session = session
        self.services = dict(services)

    async def start(self, urls: str | Sequence[str], saga: str, value: dict[str, Any],
                    deadline_s: float = 60.0) -> Started:
        """Start an execution, retrying a 503 or a lost connection with the same key.

        With several API URLs, a connection error moves on to the next one: the key is
        kept, so an execution the first API journaled before it died is not started twice.
        """
        choices = [urls] if isinstance(urls, str) else list(urls)
        key = uuid.uuid4().hex
        deadline = time.monotonic() + deadline_s
        last: object = None
        turn = 0
        while time.monotonic() < deadline:
            url = choices[turn % len(choices)]
            try:
                async with self.session.post(
                    f"{url}/v1/sagas/{saga}/executions", json={"input": value},
                    headers={"Idempotency-Key": key},
                ) as response:
                    body = await response.json(content_type=None)
                    if response.status in (200, 201, 202):
                        return Started(body["execution_id"], value, url, time.time())
                    last = (response.status, body)
                    if response.status < 500:
                        break
            except (aiohttp.ClientError, TimeoutError) as error:
                last = error
                turn += 1
            await asyncio.sleep(0.2)
        raise AssertionError(f"start of {saga} at {choices} not accepted: {last!r}")

    async def burst(self, urls: str | Sequence[str], saga: str,
                    values: Sequence[dict[str, Any]], concurrency: int = 64) -> list[Started]:
        gate = asyncio.Semaphore(concurrency)

        async def one(value: dict[str, Any]) -> Started:
            async with gate:
                return await self.start(urls, saga, value)

        return list(await asyncio.gather(*(one(v) for v in values)))

    async def view(self, url: str, execution_id: str) -> dict[str, Any]:
        for _ in range(50):
            try:
                async with self.session.get(f"{url}/v1/executions/{execution_id}") as response:
                    body: dict[str, Any] = await response.json(content_type=None)
                    if response.status == 200:
                        return body
                    if response.status < 500:
                        raise AssertionError(f"GET {execution_id}: {response.status} {body}")
            except (aiohttp.ClientError, TimeoutError):
                pass
            await asyncio.sleep(0.2)
        raise AssertionError(f"GET {execution_id} at {url} kept failing")

    async def views(self, url: str, ids: Iterable[str],
                    concurrency: int = 16) -> dict[str, dict[str, Any]]:
        gate = asyncio.Semaphore(concurrency)

        async def one(execution_id: str) -> tuple[str, dict[str, Any]]:
            async with gate:
                return execution_id, await self.view(url, execution_id)

        return dict(await asyncio.gather(*(one(i) for i in ids)))

    async def history(self, url: str, execution_id: str) -> list[dict[str, Any]]:
        """The execution's journaled events (``GET /v1/executions/{id}/events``)."""
        async with self.session.get(f"{url}/v1/executions/{execution_id}/events") as response:
            body = await response.json(content_type=None)
            if response.status != 200:
                raise AssertionError(f"events of {execution_id}: {response.status} {body}")
        events: list[dict[str, Any]] = body["events"]
        return events

    async def host_calls(self, url: str) -> dict[tuple[str, str], float]:
        """``sagaray_host_calls_total`` of the API at ``url``: (call, via) -> count."""
        from prometheus_client.parser import text_string_to_metric_families

        async with self.session.get(f"{url}/metrics") as response:
            text = await response.text()
            if response.status != 200:
                raise AssertionError(f"metrics: {response.status} {text[:200]}")
        return {(sample.labels["call"], sample.labels["via"]): sample.value
                for family in text_string_to_metric_families(text)
                for sample in family.samples if sample.name == "sagaray_host_calls_total"}

    async def statuses(self, url: str) -> dict[str, str]:
        """Every execution the journal holds, by id, from ``GET /v1/executions``."""
        found: dict[str, str] = {}
        cursor: str | None = None
        while True:
            query = "limit=500" + (f"&cursor={cursor}" if cursor else "")
            async with self.session.get(f"{url}/v1/executions?{query}") as response:
                body = await response.json(content_type=None)
                if response.status != 200:
                    raise AssertionError(f"list executions: {response.status} {body}")
            found.update({item["execution_id"]: item["status"] for item in body["items"]})
            cursor = body.get("next_cursor")
            if not cursor:
                return found

    async def wait_terminal(self, url: str, ids: Iterable[str], timeout: float,
                            poll: float = 0.25) -> tuple[dict[str, str], float]:
        """Statuses once all of ``ids`` are terminal, and when that was (wall clock).

        On timeout, raises with the executions still not terminal.
        """
        wanted = set(ids)
        deadline = time.monotonic() + timeout
        while True:
            try:
                statuses = await self.statuses(url)
            except (aiohttp.ClientError, TimeoutError):
                statuses = {}
            now = time.time()
            pending = {i for i in wanted if statuses.get(i) not in TERMINAL}
            if statuses and not pending:
                return {i: statuses[i] for i in wanted}, now
            if time.monotonic() > deadline:
                sample = sorted(pending)[:5]
                counts = Counter(statuses.get(i, "missing") for i in pending)
                raise AssertionError(f"{len(pending)} of {len(wanted)} executions not terminal "
                                     f"after {timeout:.0f} s: {dict(counts)}; e.g. {sample}")
            await asyncio.sleep(poll)

    async def ledgers(self) -> dict[str, list[dict[str, Any]]]:
        found: dict[str, list[dict[str, Any]]] = {}
        for name in ORDER_SERVICES:
            async with self.session.get(f"{self.services[name]}/_ledger") as response:
                found[name] = (await response.json())["entries"]
        return found


# -- ledgers ------------------------------------------------------------------------------


@dataclass
class LedgerReport:
    """What the services did for a set of executions, judged against their final statuses."""

    executions: int = 0
    forward_effects: int = 0
    compensations: int = 0
    # Two effects for one idempotency key: an effect done twice.
    duplicates: list[str] = field(default_factory=list)
    # A compensated execution with an effect left in place, or a completed one undone.
    inconsistent: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.duplicates and not self.inconsistent

    def summary(self) -> str:
        return (f"{self.executions} executions, {self.forward_effects} forward effects, "
                f"{self.compensations} compensations, {len(self.duplicates)} duplicate effects, "
                f"{len(self.inconsistent)} inconsistent")


def check_ledgers(statuses: Mapping[str, str],
                  ledgers: Mapping[str, list[dict[str, Any]]]) -> LedgerReport:
    """Each forward effect at most once per key; a compensated execution fully undone.

    Keys are ``{execution_id}:{step}:{phase}``. For a compensated execution every step that
    left an effect (forward) must have exactly one compensation; a completed one none. The
    effects of a ``failed`` execution (compensation given up) are only counted.
    """
    report = LedgerReport(executions=len(statuses))
    per_key: Counter[tuple[str, str]] = Counter()
    by_execution: dict[str, dict[str, Counter[str]]] = {}
    for service, entries in ledgers.items():
        for entry in entries:
            key = entry.get("idempotency_key") or ""
            execution_id, _, rest = key.partition(":")
            if execution_id not in statuses:
                continue
            step, _, _phase = rest.partition(":")
            per_key[(service, key)] += 1
            counts = by_execution.setdefault(execution_id, {}).setdefault(step, Counter())
            counts[entry["kind"]] += 1
            if entry["kind"] == "forward":
                report.forward_effects += 1
            else:
                report.compensations += 1
    report.duplicates = [f"{service} {key} x{n}" for (service, key), n in per_key.items() if n > 1]
    for execution_id, status in statuses.items():
        for step, counts in by_execution.get(execution_id, {}).items():
            done, undone = counts["forward"], counts["compensation"]
            if status == "compensated" and done != undone:
                report.inconsistent.append(f"{execution_id} compensated but {step}: "
                                           f"{done} done, {undone} undone")
            if status == "completed" and undone:
                report.inconsistent.append(f"{execution_id} completed but {step} undone")
    return report
