"""``ray job`` (Ray's job CLI) against a ``tests/cluster.py`` cluster, as a user types it.

Every command runs the real ``ray job ...`` executable with the cluster's environment
(``RayCluster.subprocess_env()``): ``RAY_AUTH_MODE=token`` and the cluster's token file, so
the job server's token check is passed the way a user passes it, from the environment. The
job server is the head's dashboard: start the head with ``start_head(dashboard=True)``.

Blocking code (subprocesses): call it from sync code, or through ``asyncio.to_thread``.
"""

from __future__ import annotations

import re
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from tests.cluster import RayCluster

# `ray job status` words each state differently (ray/dashboard/modules/job/cli.py).
_STATUS_LINES = (
    (re.compile(r"Status for job '[^']+': (\w+)"), None),
    (re.compile(r"Job '[^']+' succeeded"), "SUCCEEDED"),
    (re.compile(r"Job '[^']+' was stopped"), "STOPPED"),
    (re.compile(r"Job '[^']+' failed"), "FAILED"),
)
TERMINAL = frozenset({"SUCCEEDED", "STOPPED", "FAILED"})
# Plain output: record style, no colour codes to strip before matching.
_PLAIN = ("--log-style=record", "--log-color=false")


class RayJobs:
    """The job CLI pointed at ``cluster``'s job server (``--address`` its dashboard URL)."""

    def __init__(self, cluster: RayCluster, timeout: float = 120.0) -> None:
        self.cluster = cluster
        self.address = cluster.dashboard_url
        self.timeout = timeout
        self._ray = str(Path(cluster.ray_executable))

    def submit_command(self, submission_id: str, entrypoint: Sequence[str]) -> list[str]:
        """``ray job submit --address URL --no-wait --submission-id ID -- ENTRYPOINT...``."""
        return [self._ray, "job", "submit", "--address", self.address, "--no-wait",
                "--submission-id", submission_id, *_PLAIN, "--", *entrypoint]

    def submit(self, submission_id: str, entrypoint: Sequence[str]) -> str:
        """Submit without waiting for the job; returns the CLI's output."""
        return self._run(self.submit_command(submission_id, entrypoint)).stdout

    def status(self, submission_id: str) -> str:
        """PENDING, RUNNING, STOPPED, SUCCEEDED or FAILED, as ``ray job status`` reports it."""
        out = self._job("status", submission_id).stdout
        for pattern, fixed in _STATUS_LINES:
            found = pattern.search(out)
            if found is not None:
                return fixed or found.group(1)
        raise AssertionError(f"no status in `ray job status` output:\n{out}")

    def logs(self, submission_id: str) -> str:
        return self._job("logs", submission_id).stdout

    def stop(self, submission_id: str) -> str:
        """``ray job stop ID``: returns once the job has exited (the CLI waits for it)."""
        return self._job("stop", submission_id).stdout

    def wait_status(self, submission_id: str, wanted: frozenset[str],
                    timeout: float = 60.0) -> str:
        deadline = time.monotonic() + timeout
        while True:
            status = self.status(submission_id)
            if status in wanted or time.monotonic() > deadline:
                return status
            time.sleep(0.5)

    def _job(self, verb: str, submission_id: str) -> subprocess.CompletedProcess[str]:
        return self._run([self._ray, "job", verb, "--address", self.address, *_PLAIN,
                          submission_id])

    def _run(self, command: list[str], env: Mapping[str, str] | None = None,
             ) -> subprocess.CompletedProcess[str]:
        done = self.run(command, env)
        if done.returncode != 0:
            raise AssertionError(f"`{' '.join(command[1:4])}` exited {done.returncode}\n"
                                 f"--- stdout\n{done.stdout}\n--- stderr\n{done.stderr}")
        return done

    def run(self, command: list[str], env: Mapping[str, str] | None = None,
            ) -> subprocess.CompletedProcess[str]:
        """Run ``command`` with the cluster's environment plus ``env``; never raises on exit."""
        return subprocess.run(command, env=self.cluster.subprocess_env(env), text=True,
                              capture_output=True, timeout=self.timeout, check=False,
                              stdin=subprocess.DEVNULL)
