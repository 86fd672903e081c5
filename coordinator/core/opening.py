"""The opening round: the first attempts journaled with the start, sent by the host as is.

An execution created already leased to its host can carry, in the same journal
write as its ``ExecutionStarted``, that host's assignment and the attempts of its
first round of decisions. The host then sends those attempts at once, with no
append of its own before the first call: one commit less between a start and its
first step. Both sides derive the round from ``decide``, so they cannot disagree:
:func:`opening_round` writes it, :func:`handed_attempts` finds the very commands
again from the events, and refuses (None) anything that is not exactly such a round.
"""

from __future__ import annotations

from collections.abc import Sequence

from coordinator.core import events as ev
from coordinator.core.commands import Invoke, WaitUntil
from coordinator.core.decide import decide
from coordinator.core.definition import SagaDefinition
from coordinator.core.replay import apply, replay


def opening_round(definition: SagaDefinition, started: ev.ExecutionStarted, now: float,
                  host: str, node_id: str | None) -> list[ev.Event]:
    """``HostAssigned`` and the first round's started attempts, or ``[]``.

    Empty when the first round is not only attempts (a skipped step, a template
    that fails, a saga with no step): the host decides those itself as usual.
    """
    assigned = ev.HostAssigned(at=now, host=host, node_id=node_id)
    state = replay(definition, [started])
    apply(definition, state, assigned)
    commands = decide(definition, state, now)
    invokes = [c for c in commands if isinstance(c, Invoke)]
    if not invokes or not all(isinstance(c, Invoke | WaitUntil) for c in commands):
        return []
    return [assigned, *(invoke.started(now) for invoke in invokes)]


def handed_attempts(definition: SagaDefinition,
                    events: Sequence[ev.Event]) -> tuple[ev.HostAssigned, list[Invoke]] | None:
    """The assignment and the attempts to send of events that open with such a round.

    ``events`` must be exactly ``ExecutionStarted``, ``HostAssigned`` and the started
    attempts that ``decide`` gives for that state at their time; else None.
    """
    if len(events) < 3 or not isinstance(events[0], ev.ExecutionStarted) \
            or not isinstance(events[1], ev.HostAssigned):
        return None
    assigned, attempts = events[1], list(events[2:])
    if any(not isinstance(e, ev.StepAttemptStarted) or e.at != assigned.at for e in attempts):
        return None
    state = replay(definition, events[:2])
    commands = decide(definition, state, assigned.at)
    invokes = [c for c in commands if isinstance(c, Invoke)]
    if [invoke.started(assigned.at) for invoke in invokes] != attempts:
        return None
    return assigned, invokes
