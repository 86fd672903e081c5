"""Fixtures for tests on a real two-node Ray cluster (``tests/cluster.py``).

Load them in a test module with ``pytest_plugins = ("tests.cluster_fixtures",)``.

``ray_cluster`` is module-scoped: a cluster costs ~10 s to start, and tests that crash a node
leave it changed, so each module gets a fresh one and tests within a module share it.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tests.cluster import ClusterNode, RayCluster

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")

# The custom resource that only the worker node has, to pin work onto it.
WORKER_RESOURCE = "node_b"


def _start(cluster: RayCluster, dashboard: bool) -> tuple[ClusterNode, ClusterNode]:
    head = cluster.start_head(cpus=1, dashboard=dashboard)
    worker = cluster.add_worker(cpus=1, resources={WORKER_RESOURCE: 1})
    return head, worker


def _two_nodes(dashboard: bool) -> Iterator[RayCluster]:
    """Start the cluster, yield it, stop it; failing to start fails the test, never skips."""
    cluster: RayCluster | None = None
    failure = None
    try:
        cluster = RayCluster()
        _start(cluster, dashboard)
    except Exception as exc:
        if cluster is not None:
            cluster.stop()
        where = "in CI (CI=true)" if IN_CI else "on this machine"
        failure = f"could not start a two-node Ray cluster {where}:\n{exc}"
    if failure is not None or cluster is None:
        # Outside the except block, so that the report shows the log tail once.
        pytest.fail(failure or "no cluster", pytrace=False)
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[RayCluster]:
    """A head (1 CPU) and one worker (1 CPU, ``node_b: 1``), both joined and alive.

    ``cluster.head`` and ``cluster.workers[0]`` are the nodes. Failing to start is a test
    failure, never a skip: a cluster test that silently does not run proves nothing, in CI
    (CI=true) least of all.
    """
    yield from _two_nodes(dashboard=False)


@pytest.fixture(scope="module")
def ray_job_cluster() -> Iterator[RayCluster]:
    """``ray_cluster`` with the dashboard, hence the job server, on the head.

    ``cluster.dashboard_url`` is the address ``ray job`` takes (``tests/ray_jobs.py``).
    """
    yield from _two_nodes(dashboard=True)
