"""A host handed an opening round sends its attempts as they are; a stale one is a takeover.

One host core in this process (no Ray, so its node id is None), a real SQLite journal
and the demo services. The API side (which node it names, when) is covered end to
end in ``test_sagas.py``; the round itself in ``tests/core/test_opening.py``.
"""

from __future__ import annotations

from coordinator.core import events as ev
from coordinator.core.definition import SagaDefinition
from coordinator.host_config import HostConfig
from coordinator.host_core import HostCore
from coordinator.journal.base import Journal
from tests.faults.conftest import SAGA
from tests.runtime.hostcore import charges, create, effects, events_of


def definition_of(config: HostConfig) -> SagaDefinition:
    return next(d for d in config.definitions if d.name == SAGA)


async def test_the_attempts_of_a_handed_round_go_out_without_a_write_before(
        setup: tuple[Journal, HostConfig], demo_services: dict[str, str]) -> None:
    journal, config = setup
    core = HostCore("h1", config)
    opening = await create(journal, "h1", {}, (definition_of(config), None))
    execution_id = opening[0].execution_id  # type: ignore[attr-defined]
    assert [e.type for e in opening] == ["execution_started", "host_assigned",
                                         "step_attempt_started"]
    assert (await core.start(execution_id, opening, 1))["status"] == "running"
    assert await core.wait(execution_id, 30.0)
    history = await events_of(journal, execution_id)
    assert history[:3] == opening
    # The host's first write is the first reply: it journaled no assignment and no
    # attempt of its own before that call, and nothing was interrupted.
    assert isinstance(history[3], ev.StepAttemptSucceeded), history[3]
    assert (history[3].step, history[3].attempt) == ("reserve_inventory", 1)
    assert sum(isinstance(e, ev.HostAssigned) for e in history) == 1
    assert not [e for e in history if isinstance(e, ev.StepAttemptFailed)]
    assert history[-1].type == "execution_completed"
    assert len(await charges(demo_services, execution_id)) == 1
    assert len(await effects(demo_services, "inventory", execution_id,
                             "reserve_inventory")) == 1
    await core.close()


async def test_a_round_naming_another_node_is_resent_as_a_takeover_would(
        setup: tuple[Journal, HostConfig], demo_services: dict[str, str]) -> None:
    """The API learnt the host's node before the host restarted elsewhere: the host
    cannot know whether that attempt was sent, so it journals it as interrupted and
    re-sends it with the same idempotency key."""
    journal, config = setup
    core = HostCore("h1", config)
    opening = await create(journal, "h1", {}, (definition_of(config), "a-node-before"))
    execution_id = opening[0].execution_id  # type: ignore[attr-defined]
    assert (await core.start(execution_id, opening, 1))["status"] == "running"
    assert await core.wait(execution_id, 30.0)
    history = await events_of(journal, execution_id)
    assigned = [e for e in history if isinstance(e, ev.HostAssigned)]
    assert [(e.host, e.node_id) for e in assigned] == [("h1", "a-node-before"), ("h1", None)]
    interrupted = next(e for e in history if isinstance(e, ev.StepAttemptFailed))
    assert isinstance(interrupted, ev.StepAttemptFailed) and interrupted.outcome == "unknown"
    assert (interrupted.step, interrupted.attempt) == ("reserve_inventory", 1)
    assert history[-1].type == "execution_completed"
    assert len(await charges(demo_services, execution_id)) == 1
    assert len(await effects(demo_services, "inventory", execution_id,
                             "reserve_inventory")) == 1
    await core.close()
