"""Picking the instance for one attempt: least outstanding requests, ties at random.

Pure: the random source is injected so tests can seed it. Instances whose circuit
does not admit an attempt (ejected, failed health check, half-open with its trial
in flight) are skipped; the instance the previous attempt of the same call went
to is avoided when any other instance admits the attempt.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

from coordinator.traffic.circuit import Circuit


@dataclass(slots=True, eq=False)
class Instance:
    """One URL of a service, its attempts in flight, and its circuit."""

    url: str
    circuit: Circuit
    outstanding: int = 0


def pick(instances: Sequence[Instance], rng: random.Random,
         avoid: Instance | None = None) -> Instance | None:
    """The instance for the next attempt, or None when none admits one."""
    best: list[Instance] = []
    fallback: Instance | None = None
    low = -1
    for instance in instances:
        if not instance.circuit.admits():
            continue
        if instance is avoid:
            fallback = instance
            continue
        if not best or instance.outstanding < low:
            best, low = [instance], instance.outstanding
        elif instance.outstanding == low:
            best.append(instance)
    if not best:
        return fallback
    return best[0] if len(best) == 1 else rng.choice(best)
