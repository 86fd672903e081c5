"""CPU time and memory of the coordinator's processes, read from /proc (no psutil).

The coordinator process (the API, which also started Ray) is the root of a tree:
Ray's own processes (gcs_server, raylet, agents, monitors) and, under the raylet,
the workers that carry the SagaHost, Supervisor and DedicatedHost actors. Each
process is classified by its command line (Ray names workers ``ray::<Actor>``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

TICK = os.sysconf("SC_CLK_TCK")
PAGE_KB = os.sysconf("SC_PAGE_SIZE") // 1024
COORDINATOR_CLASSES = ("api", "hosts", "supervisor", "dedicated", "reaped_workers")


@dataclass(frozen=True)
class Proc:
    pid: int
    ppid: int
    kind: str
    cpu: float  # utime + stime of the process itself, seconds
    reaped: float  # cutime + cstime: children that ended and were waited for, seconds


def _stat(pid: int) -> tuple[int, float, float] | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    # The command name (field 2) may hold spaces and parentheses: split after the last ')'.
    fields = raw[raw.rindex(")") + 2:].split()
    ppid = int(fields[1])
    utime, stime, cutime, cstime = (int(v) for v in fields[11:15])
    return ppid, (utime + stime) / TICK, (cutime + cstime) / TICK


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(
            errors="replace").strip()
    except (FileNotFoundError, ProcessLookupError):
        return ""


def classify(pid: int, root: int, cmdline: str) -> str:
    if pid == root:
        return "api"
    if cmdline.startswith("ray::SagaHost"):
        return "hosts"
    if cmdline.startswith("ray::Supervisor"):
        return "supervisor"
    if cmdline.startswith("ray::DedicatedHost"):
        return "dedicated"
    if cmdline.startswith("ray::IDLE"):
        return "ray_idle_workers"
    return "ray_system"


def tree(root: int) -> dict[int, Proc]:
    """The root and all its live descendants."""
    parents: dict[int, tuple[int, float, float]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            stat = _stat(int(entry))
            if stat is not None:
                parents[int(entry)] = stat
    members = {root} if root in parents else set()
    grew = True
    while grew:
        grew = False
        for pid, (ppid, _, _) in parents.items():
            if ppid in members and pid not in members:
                members.add(pid)
                grew = True
    return {pid: Proc(pid, parents[pid][0], classify(pid, root, _cmdline(pid)), parents[pid][1],
                      parents[pid][2]) for pid in members}


@dataclass
class CpuSnapshot:
    root: int
    procs: dict[int, Proc] = field(default_factory=dict)

    @classmethod
    def take(cls, root: int) -> CpuSnapshot:
        return cls(root, tree(root))


def cpu_delta(before: CpuSnapshot, after: CpuSnapshot) -> dict[str, float]:
    """CPU seconds per class between two snapshots of the same tree.

    Workers that ended in between (dedicated hosts exit with their execution) are
    counted through their parent's cutime/cstime as ``reaped_workers``, less what
    they had already used at ``before``.
    """
    out: dict[str, float] = {}
    for pid, proc in after.procs.items():
        start = before.procs.get(pid)
        used = proc.cpu - (start.cpu if start else 0.0)
        out[proc.kind] = out.get(proc.kind, 0.0) + used
    reaped = 0.0
    for pid, proc in after.procs.items():
        start = before.procs.get(pid)
        if start is not None and proc.kind == "ray_system":
            reaped += proc.reaped - start.reaped
    for pid, proc in before.procs.items():
        if pid not in after.procs and proc.kind != "ray_system":
            reaped -= proc.cpu
    out["reaped_workers"] = max(reaped, 0.0)
    out["coordinator"] = sum(out.get(k, 0.0) for k in COORDINATOR_CLASSES)
    return out


def memory_kb(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (peak RSS) of one process, in KiB."""
    values: dict[str, int] = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            name, _, rest = line.partition(":")
            if name in ("VmRSS", "VmHWM"):
                values[name] = int(rest.split()[0])
    except FileNotFoundError:
        pass
    return values


def coordinator_memory(root: int) -> dict[str, dict[str, int]]:
    """RSS and peak RSS of the API process and of each actor-carrying worker."""
    out: dict[str, dict[str, int]] = {}
    for pid, proc in sorted(tree(root).items()):
        if proc.kind in ("api", "hosts", "supervisor", "dedicated"):
            out[f"{proc.kind}:{pid}"] = memory_kb(pid)
    return out


def self_cpu() -> float:
    times = os.times()
    return times.user + times.system


def loadavg() -> list[float]:
    return [float(v) for v in Path("/proc/loadavg").read_text().split()[:3]]


def machine() -> dict[str, object]:
    model = ""
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    mem_kb = 0
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            mem_kb = int(line.split()[1])
    return {"cores": os.cpu_count(), "cpu_model": model,
            "memory_gib": round(mem_kb / 1024 / 1024, 1)}


def thread_cpu(pid: int) -> dict[str, float]:
    """CPU seconds per thread name (/proc/PID/task/*/stat) of one process."""
    out: dict[str, float] = {}
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except FileNotFoundError:
        return out
    for tid in tids:
        try:
            raw = Path(f"/proc/{pid}/task/{tid}/stat").read_text()
        except FileNotFoundError:
            continue
        name = raw[raw.index("(") + 1:raw.rindex(")")]
        fields = raw[raw.rindex(")") + 2:].split()
        # Numbered pools (e.g. "worker-3") count as one name.
        key = name.rstrip("0123456789").rstrip("-_") or name
        out[key] = out.get(key, 0.0) + (int(fields[11]) + int(fields[12])) / TICK
    return out


def tid_cpu(pid: int) -> dict[int, tuple[str, float]]:
    """(thread name, CPU seconds) per thread id of one process."""
    out: dict[int, tuple[str, float]] = {}
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except FileNotFoundError:
        return out
    for tid in tids:
        try:
            raw = Path(f"/proc/{pid}/task/{tid}/stat").read_text()
        except FileNotFoundError:
            continue
        name = raw[raw.index("(") + 1:raw.rindex(")")]
        fields = raw[raw.rindex(")") + 2:].split()
        out[int(tid)] = (name, (int(fields[11]) + int(fields[12])) / TICK)
    return out
