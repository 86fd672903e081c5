"""The multi-node harness itself: real nodes, a real node crash, and nothing left behind.

Drivers of the cluster run as subprocesses (this process may be connected to the session's
own Ray), and print their results as one JSON line. Run with ``-s`` to see the figures.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest

from tests.cluster import RayCluster, last_json

pytest_plugins = ("tests.cluster_fixtures",)
pytestmark = [pytest.mark.ray, pytest.mark.timeout(180)]

NAMESPACE = "cluster-harness"

# Two detached actors that each hold a whole CPU on 1-CPU nodes: SPREAD must put them on
# different nodes, and no tie-break of the scheduler can make the test flaky. The one on
# the head is then killed, to free the CPU the other needs to restart there.
PLACE = f"""
import json, ray
ray.init(namespace={NAMESPACE!r}, logging_level="ERROR", log_to_driver=False)

@ray.remote(num_cpus=1, max_restarts=-1, max_task_retries=-1)
class Probe:
    def node(self):
        return ray.get_runtime_context().get_node_id()

actors = {{
    f"spread-{{i}}": Probe.options(
        name=f"spread-{{i}}", lifetime="detached", scheduling_strategy="SPREAD"
    ).remote()
    for i in range(2)
}}
placement = {{name: ray.get(actor.node.remote(), timeout=60) for name, actor in actors.items()}}
head = next(
    n["NodeID"] for n in ray.nodes() if n["Alive"] and "node:__internal_head__" in n["Resources"]
)
for name, actor in actors.items():
    if placement[name] == head:
        ray.kill(actor, no_restart=True)
print(json.dumps({{"placement": placement}}))
"""

# Connects before the crash (so that its start-up is not counted), then times from the
# SIGKILL, whose wall-clock time it reads on stdin, to the node reported dead and to the
# detached actor answering again.
OBSERVE = f"""
import json, sys, time, ray
name, dead_node = sys.argv[1], sys.argv[2]
ray.init(namespace={NAMESPACE!r}, logging_level="ERROR", log_to_driver=False)
actor = ray.get_actor(name)
print("ready", flush=True)
killed_at = float(sys.stdin.readline())
while not any(n["NodeID"] == dead_node and not n["Alive"] for n in ray.nodes()):
    if time.time() - killed_at > 60:
        sys.exit("the crashed node was never reported dead")
    time.sleep(0.05)
detected = time.time()
while True:
    try:
        node = ray.get(actor.node.remote(), timeout=5)
        break
    except ray.exceptions.RayError:
        if time.time() - killed_at > 60:
            raise
restarted = time.time()
print(json.dumps({{
    "detect_s": round(detected - killed_at, 3),
    "restart_s": round(restarted - killed_at, 3),
    "actor_node": node,
    "alive": {{n["NodeID"]: n["Alive"] for n in ray.nodes()}},
}}))
"""


def _session_ray() -> dict[str, Any] | None:
    """The pytest process's own Ray (the ``ray_session`` fixture), if it is connected."""
    import ray

    if not ray.is_initialized():
        return None
    alive = sorted(n["NodeID"] for n in ray.nodes() if n["Alive"])
    return {"gcs": ray.get_runtime_context().gcs_address, "alive": alive}


def _assert_session_ray_unaffected(before: dict[str, Any] | None) -> None:
    import ray

    if before is None:
        print("the session's own Ray is not running in this process: nothing to compare")
        return
    assert _session_ray() == before
    assert ray.get(ray.remote(num_cpus=0)(lambda: 42).remote(), timeout=60) == 42
    print(f"the session's own Ray at {before['gcs']} is unaffected")


def test_two_nodes_crash_and_restart(
    ray_cluster: RayCluster, record_property: Callable[[str, object], None]
) -> None:
    started = time.monotonic()
    session = _session_ray()
    head, worker = ray_cluster.head, ray_cluster.workers[0]
    assert head is not None and head.node_id and worker.node_id
    assert head.node_id != worker.node_id
    assert worker.reported_resources.get("node_b") == 1.0
    assert "node_b" not in head.reported_resources

    placement = last_json(ray_cluster.run_driver(PLACE).stdout)["placement"]
    assert isinstance(placement, dict)
    print(f"\nSPREAD placement: {placement}")
    assert set(placement.values()) == {head.node_id, worker.node_id}
    survivor = next(name for name, node in placement.items() if node == worker.node_id)

    observer = ray_cluster.start_driver(OBSERVE, survivor, worker.node_id)
    assert observer.stdin is not None and observer.stdout is not None
    ready = observer.stdout.readline()
    assert ready.strip() == "ready", observer.communicate(timeout=30)
    killed_at = ray_cluster.kill_node(worker)
    assert not worker.alive_pids()
    observer.stdin.write(f"{killed_at}\n")
    observer.stdin.flush()
    out, err = observer.communicate(timeout=90)
    assert observer.returncode == 0, f"{out}\n{err}"
    figures = last_json(out)
    detect_s, restart_s = figures["detect_s"], figures["restart_s"]
    assert isinstance(detect_s, float) and isinstance(restart_s, float)
    print(
        f"node death detected {detect_s:.2f} s after SIGKILL; detached actor answering on the"
        f" head {restart_s:.2f} s after SIGKILL ({restart_s - detect_s:.2f} s after detection)"
    )
    record_property("node_death_detect_s", detect_s)
    record_property("actor_restart_s", restart_s)
    assert figures["alive"] == {head.node_id: True, worker.node_id: False}
    assert figures["actor_node"] == head.node_id

    recorded = ray_cluster.recorded_pids()
    # Both nodes' gcs/raylet/agents/workers, and the drivers.
    assert len(recorded) >= 10
    ray_cluster.stop()
    assert not ray_cluster.alive_pids()
    assert not ray_cluster.base_dir.exists()
    _assert_session_ray_unaffected(session)
    print(f"whole test body: {time.monotonic() - started:.1f} s")
