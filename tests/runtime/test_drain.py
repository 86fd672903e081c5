"""Draining one host core, step by step: real SQLite journal, real demo services, no Ray.

The elastic pool's end-to-end tests (``tests/faults/test_elastic.py``) race real actors;
these pin each drain rule down deterministically: a start given to a draining host hands
its lease back, a running execution stops after its attempt in flight replied (or
abandons it after the grace) and releases its lease, and the next host finishes it with
each step's effect once.
"""

from __future__ import annotations

import pytest

from coordinator.core import events as ev
from coordinator.host_config import HostConfig
from coordinator.host_core import HostCore
from coordinator.journal.base import Journal
from tests.runtime.hostcore import charges, create, events_of, until_started


async def test_a_start_reaching_a_draining_host_gives_its_lease_back(
        setup: tuple[Journal, HostConfig]) -> None:
    journal, config = setup
    core = HostCore("h1", config)
    assert await core.drain(0.0) == 0
    started = await create(journal, "h1", {})
    execution_id = started[0].execution_id  # type: ignore[attr-defined]
    answer = await core.start(execution_id, started, 1)
    assert answer["status"] == "draining" and core.stats()["refused"] == 1
    row = await journal.get_execution(execution_id)
    assert row is not None and row.owner is None and row.fence == 1
    assert await core.cancel(execution_id, None) == "owned_elsewhere"
    await core.close()


@pytest.mark.parametrize(("grace", "waited"), [(5.0, True), (0.2, False)])
async def test_a_drained_execution_moves_with_each_effect_once(
        setup: tuple[Journal, HostConfig], demo_services: dict[str, str], grace: float,
        waited: bool) -> None:
    """The attempt in flight (a 1.5 s charge) replies within the grace and is journaled, or
    is abandoned and re-sent by the next host with the same key: one charge either way."""
    journal, config = setup
    leaving = HostCore("h1", HostConfig(**{**vars(config), "drain_seconds": grace}))
    started = await create(journal, "h1", {"charge_payment": "latency=1500"})
    execution_id = started[0].execution_id  # type: ignore[attr-defined]
    assert (await leaving.start(execution_id, started, 1))["status"] == "running"
    await until_started(journal, execution_id, "charge_payment")

    assert await leaving.drain(10.0) == 0
    assert leaving.stats()["released"] == 1
    row = await journal.get_execution(execution_id)
    assert row is not None and row.owner is None and row.status == "running"
    history = await events_of(journal, execution_id)
    replied = [e for e in history if isinstance(e, ev.StepAttemptSucceeded)
               and e.step == "charge_payment"]
    assert bool(replied) is waited, history
    # Nothing decided after the drain: the last event is the reply or the attempt's start.
    assert isinstance(history[-1], ev.StepAttemptSucceeded | ev.StepAttemptStarted)
    await leaving.close()

    taking = HostCore("h2", config)
    assert (await taking.start(execution_id))["status"] == "running"
    assert await taking.wait(execution_id, 30.0)
    final = await events_of(journal, execution_id)
    assert final[-1].type == "execution_completed", final[-1]
    interrupted = [e for e in final if isinstance(e, ev.StepAttemptFailed)
                   and e.step == "charge_payment"]
    assert bool(interrupted) is not waited, final
    assert len(await charges(demo_services, execution_id)) == 1
    await taking.close()
