from __future__ import annotations

from typing import Any

import yaml

from coordinator.core.definition import SagaDefinition


def saga(text: str, **overrides: Any) -> SagaDefinition:
    raw = yaml.safe_load(text)
    raw.update(overrides)
    raw.setdefault("name", "test_saga")
    raw.setdefault("version", 1)
    return SagaDefinition.model_validate(raw)
