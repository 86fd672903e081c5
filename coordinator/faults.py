"""Test-only crash injection at the runner's named checkpoints.

A host configured with fault points exits hard (``os._exit``: no cleanup, no
flush, like SIGKILL) when a checkpoint is reached and its draw falls under the
configured probability. Production hosts have none, and then the runner calls
a no-op.
"""

from __future__ import annotations

import logging
import os
import random

log = logging.getLogger(__name__)
POINTS = ("after_step_started", "after_reply", "during_compensation", "after_final_event")
EXIT_CODE = 137


class FaultPoints:
    def __init__(self, probabilities: dict[str, float], seed: int | None = None) -> None:
        unknown = set(probabilities) - set(POINTS)
        if unknown:
            raise ValueError(f"unknown fault points {sorted(unknown)}; known: {POINTS}")
        self._probabilities = probabilities
        self._random = random.Random(seed)
        self.hits: dict[str, int] = {}

    def __call__(self, point: str) -> None:
        probability = self._probabilities.get(point, 0.0)
        if probability and self._random.random() < probability:
            log.warning("fault point %s: exiting hard", point)
            os._exit(EXIT_CODE)
        self.hits[point] = self.hits.get(point, 0) + 1
