"""The loaded saga definitions, by name and version, and their input schemas."""

from __future__ import annotations

from typing import Any

from jsonschema import Draft202012Validator

from coordinator.core.definition import SagaDefinition
from coordinator.errors import InvalidInput, NotFound


class SagaCatalog:
    """The loaded definitions by name and version (a read-only view of the registry)."""

    def __init__(self, definitions: list[SagaDefinition]) -> None:
        self._by_key = {(d.name, d.version): d for d in definitions}
        self._validators = {
            d.key: Draft202012Validator(d.input_schema) for d in definitions if d.input_schema
        }

    def names(self) -> list[str]:
        return sorted({name for name, _ in self._by_key})

    def versions(self, name: str) -> list[SagaDefinition]:
        return sorted((d for (n, _), d in self._by_key.items() if n == name),
                      key=lambda d: d.version)

    def get(self, name: str, version: int | None = None) -> SagaDefinition:
        versions = self.versions(name)
        if not versions:
            raise NotFound(f"no saga named {name!r}; loaded: {', '.join(self.names()) or 'none'}")
        if version is None:
            return versions[-1]
        for definition in versions:
            if definition.version == version:
                return definition
        known = ", ".join(str(d.version) for d in versions)
        raise NotFound(f"saga {name!r} has no version {version}; loaded versions: {known}")

    def check_input(self, definition: SagaDefinition, value: Any) -> None:
        validator = self._validators.get(definition.key)
        if validator is None:
            return
        errors = sorted(validator.iter_errors(value), key=lambda e: e.json_path)
        if errors:
            violations = [{"path": e.json_path, "message": e.message} for e in errors]
            summary = "; ".join(f"{v['path']}: {v['message']}" for v in violations)
            raise InvalidInput(f"input of saga {definition.name!r} v{definition.version} is "
                               f"invalid: {summary}", errors=violations)
