"""Copies of ``tests/sagas/faulty_order.yaml`` with budgets for harder conditions.

``faulty_order``'s 400 ms attempt timeout and 3 attempts keep its failure-path tests fast
in one quiet process. Tests that load two cores, run several Ray nodes or kill hosts use a
copy with a longer timeout (a timed-out ``create_shipment`` is not retried: its outcome is
unknown, so the saga compensates) and, where hosts die, more attempts (an attempt in
flight on a dying host is journaled as interrupted and uses one up).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

SOURCE = Path(__file__).resolve().parent / "sagas" / "faulty_order.yaml"


def write_order_variant(directory: Path, name: str, *, timeout: str,
                        attempts: int | None = None, max_backoff: str | None = None,
                        description: str | None = None) -> Path:
    """Write ``<name>.yaml`` into ``directory`` and return the file's path.

    ``attempts`` replaces every step's and compensation's attempt budget (the steps' own
    ``retry`` blocks are dropped so the default applies to all of them); ``max_backoff``
    replaces both policies' longest wait.
    """
    definition: dict[str, Any] = yaml.safe_load(SOURCE.read_text())
    definition["name"] = name
    definition["defaults"]["timeout"] = timeout
    if description:
        definition["description"] = description
    for policy in ("retry", "compensation_retry"):
        if max_backoff:
            definition["defaults"][policy]["max_backoff"] = max_backoff
        if attempts is not None:
            definition["defaults"][policy]["max_attempts"] = attempts
    if attempts is not None:
        for step in definition["steps"]:
            step.pop("retry", None)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{name}.yaml"
    path.write_text(yaml.safe_dump(definition, sort_keys=False))
    return path
