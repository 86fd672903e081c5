"""How coordinator processes run: the relaxed cyclic GC (gc_tuning.py) and uvloop
(eventloop.py) in the API process and in every SagaHost."""

from __future__ import annotations

import asyncio
import gc
from typing import Any, cast

import pytest
import uvloop

from coordinator import eventloop
from coordinator.gc_tuning import OLDER_THRESHOLDS, YOUNG_THRESHOLD
from coordinator.server import Stack
from tests.conftest import DemoStack

pytestmark = pytest.mark.ray


def gc_settings(_actor: Any) -> tuple[tuple[int, int, int], int]:
    return gc.get_threshold(), gc.get_freeze_count()


def loop_type(actor: Any) -> str:
    # The loop the actor's start_many ran on: the one its link serves from.
    return type(actor._listening.get_loop()).__module__


async def test_the_api_process_and_each_host_collect_young_objects_less_often(
        stack: DemoStack) -> None:
    relaxed = (YOUNG_THRESHOLD, *OLDER_THRESHOLDS)
    assert gc.get_threshold() == relaxed  # build_stack ran in this process
    pool = cast(Stack, stack.stack).pool
    for name in pool.names:
        threshold, frozen = await pool._handles[name].__ray_call__.remote(gc_settings)
        assert tuple(threshold) == relaxed, name
        assert frozen > 10_000, (name, frozen)  # what the host had loaded at start


async def test_each_host_runs_on_uvloop(stack: DemoStack) -> None:
    pool = cast(Stack, stack.stack).pool
    for name in pool.names:
        assert await pool._handles[name].__ray_call__.remote(loop_type) == "uvloop", name


def test_the_api_process_runs_on_uvloop_unless_ray_is_told_not_to(
        monkeypatch: pytest.MonkeyPatch) -> None:
    async def running() -> type[asyncio.AbstractEventLoop]:
        return type(asyncio.get_running_loop())

    monkeypatch.delenv("RAY_USE_UVLOOP", raising=False)
    assert eventloop.run(running()) is uvloop.Loop
    monkeypatch.setenv("RAY_USE_UVLOOP", "0")
    assert eventloop.run(running()) is not uvloop.Loop
    monkeypatch.setenv("RAY_USE_UVLOOP", "yes")  # off for Ray's actors too: only 1 or true
    assert eventloop.run(running()) is not uvloop.Loop
    monkeypatch.setenv("RAY_USE_UVLOOP", "True")
    assert eventloop.run(running()) is uvloop.Loop
