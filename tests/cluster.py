"""Real multi-node Ray clusters on one machine, each node a ``ray start`` (docs/cluster-tests.md).

``RayCluster`` runs each node as its own ``ray start --block`` process tree, so a node can
be crashed (SIGKILL of every one of its processes) while the rest of the cluster lives on.
It is plain blocking code (subprocesses): use it from sync fixtures and tests.

Isolation from every other Ray on the machine (the session's own ``ray.init()``, other
engineers' runs) rests on four things:

* each node has its own loopback address (127.0.0.2 for the head, 127.0.0.3, ... for workers)
  and its own ports, taken below the kernel's ephemeral range, so nothing else is handed them;
* each node has its own ``--temp-dir`` under a fresh directory, never the default /tmp/ray
  whose ``ray_current_cluster`` a bare ``ray.init()`` reads;
* the cluster has its own auth token (a file, named by ``RAY_AUTH_TOKEN_PATH``), and the
  variables that would point a process elsewhere are removed from every child's environment;
* processes are found and stopped by their session id and pid, never by name and never with
  ``ray stop`` (which ends every Ray process of the machine).

A process can be connected to one Ray cluster only, and the pytest process may already be
connected to the session's instance: drivers for this cluster run as subprocesses
(``run_driver``/``start_driver``, or any command given ``subprocess_env()``).
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

# Ray turns 127.0.0.1 into the machine's first non-loopback address, which would take the
# cluster off loopback; other 127/8 addresses are kept as given, and one per node lets a
# node be told apart by its NodeManagerAddress.
HEAD_IP = "127.0.0.2"
WORKER_IP_PREFIX = "127.0.0."

# With Ray's defaults (a check every 3 s, dead after 5 misses in a row) a SIGKILLed node was
# reported dead ~13 s after the kill here. A killed raylet refuses connections at once, so
# the period and the threshold are what count: ~1.5-2 s with these. The 2 s timeout keeps a
# raylet that is merely slow on a loaded 2-core machine from being declared dead. The GCS
# runs the checks and reads these from its environment (every node gets them, harmlessly).
FAST_FAILURE_DETECTION: dict[str, str] = {
    "RAY_health_check_initial_delay_ms": "1000",
    "RAY_health_check_period_ms": "500",
    "RAY_health_check_timeout_ms": "2000",
    "RAY_health_check_failure_threshold": "4",
}

# Inherited values of these would send a child to another cluster or make it present
# another token (RAY_AUTH_TOKEN outranks RAY_AUTH_TOKEN_PATH).
_FOREIGN_RAY_VARS = (
    "RAY_ADDRESS",
    "RAY_AUTH_TOKEN",
    "RAY_AUTH_TOKEN_PATH",
    "RAY_AUTH_MODE",
    "RAY_NAMESPACE",
    "RAY_JOB_CONFIG_JSON_ENV_VAR",
    "RAY_RAYLET_PID",
)

# Below the ephemeral range nothing is bound to a port by chance, and Ray's own defaults
# (6379, 8265, 10001, 10002-19999 for workers, 52365) are avoided too.
_PORT_LOW = 20000
_SINGLE_PORTS_PER_NODE = 12
_reserved_ports: set[int] = set()

# Joining an existing node takes a driver connection (~1 s); an overloaded CI box may
# need far more than a quiet laptop.
DEFAULT_START_TIMEOUT = 90.0

# A new driver: ray.init waits for the GCS, and then for the node to show up alive.
_JOIN_PROBE = """
import json, sys, time
import ray
address, ip, deadline = sys.argv[1], sys.argv[2], float(sys.argv[3])
while True:
    try:
        ray.init(address=address, namespace="_cluster_probe", logging_level="ERROR",
                 log_to_driver=False)
        break
    except Exception:
        if time.time() > deadline:
            raise
        ray.shutdown()
        time.sleep(0.5)
while time.time() < deadline:
    for node in ray.nodes():
        if node["Alive"] and node["NodeManagerAddress"] == ip:
            print(json.dumps({"node_id": node["NodeID"], "resources": node["Resources"]}))
            sys.exit(0)
    time.sleep(0.2)
sys.exit(3)
"""


class ClusterStartError(RuntimeError):
    """A node did not start or did not join in time; the message ends with its log tail."""


@dataclass(frozen=True)
class _Proc:
    pid: int
    ppid: int
    sid: int
    state: str
    start_ticks: int


def _read_proc(pid: int) -> _Proc | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    # The command name may itself hold spaces and parentheses: split after the last ')'.
    fields = raw[raw.rindex(")") + 2 :].split()
    return _Proc(pid, int(fields[1]), int(fields[3]), fields[0], int(fields[19]))


def _all_procs() -> list[_Proc]:
    procs = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (proc := _read_proc(int(entry))) is not None:
            procs.append(proc)
    return procs


def _is_running(pid: int, start_ticks: int) -> bool:
    """Alive and the same process: a zombie has ended, and a reused pid is someone else."""
    proc = _read_proc(pid)
    return proc is not None and proc.start_ticks == start_ticks and proc.state not in "ZXx"


def _port_is_free(port: int) -> bool:
    # Binding the wildcard address conflicts with a listener on any address, and Ray binds
    # some of its ports on the wildcard and others on the node address.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("", port))
        except OSError:
            return False
    return True


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def _free_port_block(size: int, attempts: int = 200) -> list[int]:
    """``size`` consecutive free ports below the ephemeral range, held by no other cluster here."""
    high = _ephemeral_low() - size
    for _ in range(attempts):
        base = random.randrange(_PORT_LOW, high)
        block = list(range(base, base + size))
        if _reserved_ports.isdisjoint(block) and all(_port_is_free(p) for p in block):
            _reserved_ports.update(block)
            return block
    raise ClusterStartError(f"no block of {size} free ports found in [{_PORT_LOW}, {high})")


def _tail(path: Path, lines: int) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


@dataclass
class ClusterNode:
    """One node: the ``ray start --block`` process, whose session holds all of its processes."""

    name: str
    ip: str
    is_head: bool
    cpus: int
    resources: dict[str, float]
    temp_dir: Path
    ports: dict[str, int]
    command: list[str]
    process: subprocess.Popen[bytes]
    log_path: Path
    node_id: str | None = None
    # What the cluster reports, custom resources included (filled in once the node joined).
    reported_resources: dict[str, float] = field(default_factory=dict)
    # pid -> start time: every process ever seen in this node, so that "none left alive"
    # can be checked after the fact without mistaking a reused pid for a survivor.
    seen: dict[int, int] = field(default_factory=dict)
    killed_at: float | None = None

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def pids(self) -> set[int]:
        return set(self.seen)

    def refresh_pids(self) -> set[int]:
        """Record and return the node's running processes.

        ``ray start`` runs in a session of its own (start_new_session), and Ray's processes
        keep that session even where they make their own process group (workers do), so
        the session id finds them all; descendants are added in case one ever calls setsid.
        """
        procs = _all_procs()
        children: dict[int, list[_Proc]] = {}
        for proc in procs:
            children.setdefault(proc.ppid, []).append(proc)
        found = {p.pid: p for p in procs if p.sid == self.pid and p.state not in "ZXx"}
        stack = [self.pid, *found]
        while stack:
            for child in children.get(stack.pop(), []):
                if child.pid not in found and child.state not in "ZXx":
                    found[child.pid] = child
                    stack.append(child.pid)
        for pid, proc in found.items():
            self.seen.setdefault(pid, proc.start_ticks)
        return set(found)

    def alive_pids(self) -> set[int]:
        """Recorded processes still running, plus any new one in the node's session."""
        self.refresh_pids()
        return {pid for pid, ticks in self.seen.items() if _is_running(pid, ticks)}

    def session_dir(self) -> Path | None:
        latest = self.temp_dir / "session_latest"
        return latest.resolve() if latest.exists() else None

    def log_tail(self, lines: int = 25) -> str:
        """The end of ``ray start``'s own output and of the node's main process logs."""
        parts = [f"--- {self.log_path}\n{_tail(self.log_path, lines)}"]
        session = self.session_dir()
        if session is not None:
            for name in ("gcs_server.err", "gcs_server.out", "raylet.err", "raylet.out"):
                text = _tail(session / "logs" / name, lines)
                if text.strip():
                    parts.append(f"--- {session / 'logs' / name}\n{text}")
        return "\n".join(parts)


class RayCluster:
    """A head and any number of worker nodes on this machine, each a real ``ray start``.

    Use it as a context manager, or call ``stop()``: both end every process of every node
    and the drivers started through the cluster, then remove its temp dir.
    """

    def __init__(
        self,
        *,
        fast_failure_detection: bool = True,
        node_env: Mapping[str, str] | None = None,
        object_store_bytes: int = 100 * 1024 * 1024,
        worker_ports: int = 64,
        start_timeout: float = DEFAULT_START_TIMEOUT,
        stop_grace: float = 2.0,
    ) -> None:
        # /tmp rather than a pytest tmp_path: Ray's unix sockets live under the temp dir and
        # their paths must stay under the 107-byte limit.
        self.base_dir = Path(tempfile.mkdtemp(prefix="sgr-rc-", dir="/tmp"))
        self.token_path = self.base_dir / "auth_token"
        # Same form as Ray's own tokens (`ray get-auth-token --generate`): 256 random bits.
        self.token_path.write_text(secrets.token_hex(32))
        self.token_path.chmod(0o600)
        self._node_env = dict(FAST_FAILURE_DETECTION) if fast_failure_detection else {}
        self._node_env.update(node_env or {})
        self.object_store_bytes = object_store_bytes
        self.worker_ports = worker_ports
        self.start_timeout = start_timeout
        self.stop_grace = stop_grace
        self.head: ClusterNode | None = None
        self.workers: list[ClusterNode] = []
        self._drivers: list[subprocess.Popen[str]] = []
        self._ray = _ray_executable()
        self._stopped = False

    # -- addresses and environment -------------------------------------------------------

    @property
    def address(self) -> str:
        """The GCS address, as ``ray.init(address=...)`` and ``ray start --address`` take it."""
        if self.head is None:
            raise RuntimeError("the head node is not started")
        return f"{self.head.ip}:{self.head.ports['gcs']}"

    @property
    def ray_executable(self) -> str:
        return self._ray

    @property
    def dashboard_url(self) -> str:
        """The dashboard's HTTP address, which ``ray job`` takes as ``--address``."""
        if self.head is None:
            raise RuntimeError("the head node is not started")
        return f"http://{self.head.ip}:{self.head.ports['dashboard']}"

    @property
    def env(self) -> dict[str, str]:
        """The variables a client of this cluster needs, on top of its usual environment."""
        return {
            "RAY_AUTH_MODE": "token",
            "RAY_AUTH_TOKEN_PATH": str(self.token_path),
            "RAY_ADDRESS": self.address,
        }

    def subprocess_env(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        """This process's environment, cleared of another cluster's settings, plus ``env``."""
        env = self._base_env()
        env.update(self.env)
        env.update(extra or {})
        return env

    def _base_env(self) -> dict[str, str]:
        # A SAGARAY_* of the caller's shell (API tokens, say) would configure a `sagaray
        # serve` run as a Ray job on a node: tests configure it by flags only.
        env = {k: v for k, v in os.environ.items()
               if k not in _FOREIGN_RAY_VARS and not k.startswith("SAGARAY_")}
        # Jobs' entrypoints run in a shell on a node: `sagaray` and `ray` must be on its PATH,
        # as they are where the package is installed system-wide (the image).
        env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
        env["RAY_AUTH_MODE"] = "token"
        env["RAY_AUTH_TOKEN_PATH"] = str(self.token_path)
        env["RAY_USAGE_STATS_ENABLED"] = "0"
        env.update(self._node_env)
        return env

    @property
    def nodes(self) -> list[ClusterNode]:
        return ([self.head] if self.head is not None else []) + self.workers

    # -- starting nodes ------------------------------------------------------------------

    def start_head(
        self, cpus: int = 1, resources: Mapping[str, float] | None = None,
        *, dashboard: bool = False,
    ) -> ClusterNode:
        """Start the head; ``dashboard=True`` serves the dashboard and its job server.

        The dashboard listens on the head's own address (``dashboard_url``), never 0.0.0.0.
        """
        if self.head is not None:
            raise RuntimeError("the head node is already started")
        singles = _free_port_block(_SINGLE_PORTS_PER_NODE)
        ports = self._node_ports(singles)
        for name, port in zip(
            ("gcs", "client_server", "dashboard", "autoscaler_metrics", "dashboard_metrics"),
            singles[6:],
            strict=False,
        ):
            ports[name] = port
        args = [
            "--head",
            f"--port={ports['gcs']}",
            # Without the dashboard, its head still runs (minimal, for usage stats), and the
            # client server always does: both get ports of ours instead of 8265 and 10001.
            f"--include-dashboard={'true' if dashboard else 'false'}",
            f"--dashboard-host={HEAD_IP}",
            f"--dashboard-port={ports['dashboard']}",
            f"--ray-client-server-port={ports['client_server']}",
        ]
        # The autoscaler monitor and the dashboard head serve Prometheus metrics on fixed
        # ports (44217, 44227) that only these variables move.
        env = {
            "AUTOSCALER_METRIC_PORT": str(ports["autoscaler_metrics"]),
            "DASHBOARD_METRIC_PORT": str(ports["dashboard_metrics"]),
        }
        gcs = f"{HEAD_IP}:{ports['gcs']}"
        self.head = self._start_node(
            "head", HEAD_IP, True, cpus, resources or {}, ports, gcs, args, env
        )
        return self.head

    def add_worker(
        self, cpus: int = 1, resources: Mapping[str, float] | None = None
    ) -> ClusterNode:
        """Start a worker node; ``resources`` defaults to ``{"node_b": 1}``."""
        if self.head is None:
            raise RuntimeError("start_head() first")
        index = len(self.workers) + 1
        ip = f"{WORKER_IP_PREFIX}{2 + index}"
        ports = self._node_ports(_free_port_block(_SINGLE_PORTS_PER_NODE))
        chosen = {"node_b": 1.0} if resources is None else dict(resources)
        args = [f"--address={self.address}"]
        node = self._start_node(
            f"worker-{index}", ip, False, cpus, chosen, ports, self.address, args
        )
        self.workers.append(node)
        return node

    def _node_ports(self, singles: list[int]) -> dict[str, int]:
        workers = _free_port_block(self.worker_ports)
        return {
            "node_manager": singles[0],
            "object_manager": singles[1],
            "dashboard_agent_listen": singles[2],
            "dashboard_agent_grpc": singles[3],
            "metrics_export": singles[4],
            "runtime_env_agent": singles[5],
            "min_worker": workers[0],
            "max_worker": workers[-1],
        }

    def _start_node(
        self,
        name: str,
        ip: str,
        is_head: bool,
        cpus: int,
        resources: Mapping[str, float],
        ports: dict[str, int],
        gcs: str,
        role_args: list[str],
        extra_env: Mapping[str, str] | None = None,
    ) -> ClusterNode:
        if self._stopped:
            raise RuntimeError("the cluster is stopped")
        temp_dir = self.base_dir / name
        temp_dir.mkdir()
        command = [
            self._ray,
            "start",
            *role_args,
            "--block",
            f"--node-ip-address={ip}",
            f"--temp-dir={temp_dir}",
            f"--num-cpus={cpus}",
            f"--object-store-memory={self.object_store_bytes}",
            f"--node-manager-port={ports['node_manager']}",
            f"--object-manager-port={ports['object_manager']}",
            f"--min-worker-port={ports['min_worker']}",
            f"--max-worker-port={ports['max_worker']}",
            # The agent's HTTP port defaults to 52365 on every node of every cluster.
            f"--dashboard-agent-listen-port={ports['dashboard_agent_listen']}",
            f"--dashboard-agent-grpc-port={ports['dashboard_agent_grpc']}",
            f"--metrics-export-port={ports['metrics_export']}",
            f"--runtime-env-agent-port={ports['runtime_env_agent']}",
            "--disable-usage-stats",
            "--log-style=record",
            "--log-color=false",
        ]
        if resources:
            command.append(f"--resources={json.dumps(dict(resources))}")
        log_path = temp_dir / "ray-start.log"
        with log_path.open("wb") as log:
            process = subprocess.Popen(
                command,
                env={**self._base_env(), **(extra_env or {})},
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        node = ClusterNode(
            name=name,
            ip=ip,
            is_head=is_head,
            cpus=cpus,
            resources=dict(resources),
            temp_dir=temp_dir,
            ports=ports,
            command=command,
            process=process,
            log_path=log_path,
        )
        node.refresh_pids()
        try:
            self._wait_joined(node, gcs)
        except BaseException:
            self._kill(node)
            raise
        node.refresh_pids()
        return node

    def _wait_joined(self, node: ClusterNode, gcs: str) -> None:
        deadline = time.time() + self.start_timeout
        if node.is_head:
            self._wait_port(node, node.ports["gcs"], deadline)
        probe = subprocess.Popen(
            [sys.executable, "-c", _JOIN_PROBE, gcs, node.ip, str(deadline)],
            env=self._base_env(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        try:
            while True:
                try:
                    out, err = probe.communicate(timeout=0.25)
                    break
                except subprocess.TimeoutExpired:
                    pass
                if node.process.poll() is not None:
                    raise self._start_error(
                        node, f"`ray start` exited with code {node.process.returncode}"
                    )
                if time.time() > deadline + 15:
                    raise self._start_error(node, "the join probe hung")
        finally:
            if probe.poll() is None:
                probe.kill()
                probe.communicate()
        if probe.returncode != 0:
            why = "did not join" if probe.returncode == 3 else "no driver could connect"
            raise self._start_error(
                node,
                f"{why} within {self.start_timeout:.0f} s (probe exit {probe.returncode})\n"
                f"--- probe stderr\n{_last_lines(err, 15)}",
            )
        joined = json.loads(out.strip().splitlines()[-1])
        node.node_id = joined["node_id"]
        node.reported_resources = {k: float(v) for k, v in joined["resources"].items()}

    def _wait_port(self, node: ClusterNode, port: int, deadline: float) -> None:
        while time.time() < deadline:
            if node.process.poll() is not None:
                raise self._start_error(
                    node, f"`ray start` exited with code {node.process.returncode}"
                )
            with socket.socket() as sock:
                sock.settimeout(0.5)
                if sock.connect_ex((node.ip, port)) == 0:
                    return
            time.sleep(0.2)
        raise self._start_error(node, f"GCS port {port} not open after {self.start_timeout:.0f} s")

    def _start_error(self, node: ClusterNode, why: str) -> ClusterStartError:
        return ClusterStartError(
            f"Ray node {node.name} ({node.ip}) failed to start: {why}\n"
            f"command: {' '.join(node.command)}\n{node.log_tail()}"
        )

    # -- drivers -------------------------------------------------------------------------

    def start_driver(
        self, script: str, *args: str, extra_env: Mapping[str, str] | None = None
    ) -> subprocess.Popen[str]:
        """``python -c script args...`` as a driver of this cluster, with text pipes.

        The process is stopped with the cluster if it is still running then.
        """
        proc = subprocess.Popen(
            [sys.executable, "-c", script, *args],
            env=self.subprocess_env(extra_env),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        self._drivers.append(proc)
        return proc

    def run_driver(
        self, script: str, *args: str, timeout: float = 60.0
    ) -> subprocess.CompletedProcess[str]:
        """Run a driver to completion; a non-zero exit raises with its output."""
        proc = self.start_driver(script, *args)
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            _kill_group(proc.pid)
            out, err = proc.communicate()
            raise AssertionError(f"driver timed out after {timeout} s\n{out}\n{err}") from None
        if proc.returncode != 0:
            raise AssertionError(
                f"driver exited {proc.returncode}\n--- stdout\n{out}\n--- stderr\n{err}"
            )
        return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)

    # -- crashing and stopping -----------------------------------------------------------

    def kill_node(self, node: ClusterNode) -> float:
        """SIGKILL every process of ``node`` (a crash: nothing is told); returns when it was sent.

        Returns once none of the node's processes runs any more.
        """
        node.refresh_pids()
        node.killed_at = time.time()
        self._kill(node)
        return node.killed_at

    def _kill(self, node: ClusterNode) -> None:
        deadline = time.time() + 10
        while True:
            # Re-read each round: a raylet may fork a worker between the read and the kill.
            running = node.alive_pids()
            for pid in running:
                _signal(pid, signal.SIGKILL)
            if not running:
                # `ray start` is our child: until waited for, it stays a zombie, and so do
                # those of its children that died before it (they are only handed to init,
                # which reaps them, once it is gone).
                node.process.wait(timeout=10)
                return
            if time.time() > deadline:
                raise RuntimeError(f"processes of {node.name} survived SIGKILL: {sorted(running)}")
            time.sleep(0.05)

    def stop(self) -> None:
        """End every driver and node process this cluster started, then remove its temp dir."""
        if self._stopped:
            return
        self._stopped = True
        for proc in self._drivers:
            if proc.poll() is None:
                _kill_group(proc.pid)
            proc.communicate()
        nodes = list(reversed(self.nodes))
        # SIGTERM first, so that raylets and the GCS may flush their logs; `ray start` itself
        # would drain for up to 30 s, hence the short grace before SIGKILL.
        for node in nodes:
            for pid in node.alive_pids():
                _signal(pid, signal.SIGTERM)
        deadline = time.time() + self.stop_grace
        while time.time() < deadline and any(node.alive_pids() for node in nodes):
            time.sleep(0.1)
        for node in nodes:
            self._kill(node)
        shutil.rmtree(self.base_dir, ignore_errors=True)

    def recorded_pids(self) -> set[int]:
        """Every process ever recorded for this cluster's nodes and drivers."""
        pids = {proc.pid for proc in self._drivers}
        for node in self.nodes:
            pids |= node.pids
        return pids

    def alive_pids(self) -> set[int]:
        """Those of ``recorded_pids`` (and new node processes) that still run."""
        alive = {proc.pid for proc in self._drivers if proc.poll() is None}
        for node in self.nodes:
            alive |= node.alive_pids()
        return alive

    def __enter__(self) -> RayCluster:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def _ray_executable() -> str:
    beside = Path(sys.executable).with_name("ray")
    if beside.exists():
        return str(beside)
    found = shutil.which("ray")
    if found is None:
        raise ClusterStartError("no `ray` executable beside the interpreter or on PATH")
    return found


def _signal(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


def _kill_group(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGKILL)


def _last_lines(text: str, lines: int) -> str:
    return "\n".join(text.splitlines()[-lines:])


def last_json(output: str) -> dict[str, object]:
    """The last JSON object a driver printed (drivers here print their results as JSON lines)."""
    for line in reversed(output.splitlines()):
        if line.strip().startswith("{"):
            loaded: dict[str, object] = json.loads(line)
            return loaded
    raise AssertionError(f"no JSON line in driver output:\n{output}")
