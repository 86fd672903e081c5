"""The API process and every SagaHost run with the relaxed cyclic GC (gc_tuning.py)."""

from __future__ import annotations

import gc
from typing import Any, cast

import pytest

from coordinator.gc_tuning import OLDER_THRESHOLDS, YOUNG_THRESHOLD
from coordinator.server import Stack
from tests.conftest import DemoStack

pytestmark = pytest.mark.ray


def gc_settings(_actor: Any) -> tuple[tuple[int, int, int], int]:
    return gc.get_threshold(), gc.get_freeze_count()


async def test_the_api_process_and_each_host_collect_young_objects_less_often(
        stack: DemoStack) -> None:
    relaxed = (YOUNG_THRESHOLD, *OLDER_THRESHOLDS)
    assert gc.get_threshold() == relaxed  # build_stack ran in this process
    pool = cast(Stack, stack.stack).pool
    for name in pool.names:
        threshold, frozen = await pool._handles[name].__ray_call__.remote(gc_settings)
        assert tuple(threshold) == relaxed, name
        assert frozen > 10_000, (name, frozen)  # what the host had loaded at start
