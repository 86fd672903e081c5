"""Candidate hot-path changes, applied as patches in the benchmark's processes only.

Nothing here changes the coordinator's code on disk: ``python -m bench.procs
coordinator --patch NAME[,NAME]`` (``bench.suite --patch``) applies the named
patches in the API process and, through Ray's ``worker_process_setup_hook``, in
every Ray worker (the SagaHosts), so a proposal can be measured against the
unpatched code in the same session before anyone edits the real files.

Each patch states the change it stands for; the report in docs/performance.md
gives the measured effect.
"""

from __future__ import annotations

import os
from collections.abc import Callable

ENV = "SAGARAY_BENCH_PATCHES"
PATCHES: dict[str, Callable[[], None]] = {}


def patch(name: str) -> Callable[[Callable[[], None]], Callable[[], None]]:
    def register(func: Callable[[], None]) -> Callable[[], None]:
        PATCHES[name] = func
        return func

    return register

def apply(names: str | None = None) -> list[str]:
    """Apply the patches named (comma-separated) or those in $SAGARAY_BENCH_PATCHES."""
    chosen = [n for n in (names if names is not None else os.environ.get(ENV, "")).split(",") if n]
    for name in chosen:
        PATCHES[name]()
    return chosen


def apply_from_env() -> None:
    """Ray's worker_process_setup_hook: runs in every worker before it takes a task."""
    apply()


# Registered by importing them (each ``@patch`` adds to PATCHES); after ``patch`` exists.
from bench import patches_current, patches_past  # noqa: E402, F401
