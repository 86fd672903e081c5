"""Fault specifications and the rules tests register through ``POST /_faults``."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

FLAG_FAULTS = frozenset({"business", "error", "error-once", "timeout", "timeout-once"})


class FaultSpecError(ValueError):
    """A fault string or rule that cannot be understood."""


@dataclass(frozen=True)
class FaultSet:
    """The faults that apply to one request, merged from the header, rules and flags."""

    flags: frozenset[str] = frozenset()
    latency_ms: int = 0

    def __contains__(self, flag: object) -> bool:
        return flag in self.flags

    def merge(self, other: FaultSet) -> FaultSet:
        # Latencies add up so a rule and a header both slow the request down.
        return FaultSet(self.flags | other.flags, self.latency_ms + other.latency_ms)

    def __str__(self) -> str:
        parts = sorted(self.flags)
        if self.latency_ms:
            parts.append(f"latency={self.latency_ms}")
        return ",".join(parts)


NO_FAULTS = FaultSet()


def parse_faults(text: str | None) -> FaultSet:
    """Parse ``"latency=50,error-once"``; an empty or missing value means no fault."""
    if not text or not text.strip():
        return NO_FAULTS
    flags: set[str] = set()
    latency = 0
    for raw in text.split(","):
        token = raw.strip().lower()
        if not token:
            continue
        if token.startswith("latency="):
            latency += _parse_latency(token.removeprefix("latency="))
        elif token in FLAG_FAULTS:
            flags.add(token)
        else:
            raise FaultSpecError(f"unknown fault {token!r}")
    return FaultSet(frozenset(flags), latency)


def _parse_latency(value: str) -> int:
    try:
        millis = int(value)
    except ValueError:
        raise FaultSpecError(f"latency needs whole milliseconds, got {value!r}") from None
    if millis < 0:
        raise FaultSpecError("latency cannot be negative")
    return millis


ANY_PATH = "/**"


def path_matches(pattern: str, path: str) -> bool:
    """Exact match, segment-wise match where a ``*`` segment matches any one segment,
    or ``/**``, which matches every path (to make a whole instance slow or failing)."""
    if pattern in (path, ANY_PATH):
        return True
    want = pattern.strip("/").split("/")
    got = path.strip("/").split("/")
    if len(want) != len(got):
        return False
    return all(w == "*" or w == g for w, g in zip(want, got, strict=True))


def body_contains(body: Any, expected: Any) -> bool:
    """True when every key/value of ``expected`` is present in ``body`` (recursively)."""
    if isinstance(expected, Mapping):
        if not isinstance(body, Mapping):
            return False
        return all(k in body and body_contains(body[k], v) for k, v in expected.items())
    return bool(body == expected)


@dataclass
class FaultRule:
    """A fault applied to matching requests, ``times`` times or for ever when ``None``."""

    method: str
    path: str
    faults: FaultSet
    fault_text: str
    times: int | None = None
    match_body: dict[str, Any] | None = None
    hits: int = 0
    id: int = 0  # given by FaultRules.add

    @classmethod
    def from_json(cls, data: Any) -> FaultRule:
        if not isinstance(data, dict):
            raise FaultSpecError("a fault rule is a JSON object")
        path = data.get("path")
        fault = data.get("fault")
        if not isinstance(path, str) or not path.startswith("/"):
            raise FaultSpecError("'path' must be a string starting with '/'")
        if not isinstance(fault, str) or not fault.strip():
            raise FaultSpecError("'fault' must be a non-empty string")
        return cls(
            method=_method(data.get("method", "*")),
            path=path,
            faults=parse_faults(fault),
            fault_text=fault,
            times=_times(data.get("times")),
            match_body=_match_body(data.get("match_body")),
        )

    @property
    def exhausted(self) -> bool:
        return self.times is not None and self.hits >= self.times

    def matches(self, method: str, path: str, body: Any) -> bool:
        if self.exhausted:
            return False
        if self.method not in ("*", method.upper()):
            return False
        if not path_matches(self.path, path):
            return False
        return self.match_body is None or body_contains(body, self.match_body)

    def to_json(self) -> dict[str, Any]:
        remaining = None if self.times is None else max(self.times - self.hits, 0)
        return {
            "id": self.id,
            "method": self.method,
            "path": self.path,
            "fault": self.fault_text,
            "times": self.times,
            "remaining": remaining,
            "hits": self.hits,
            "match_body": self.match_body,
        }


def _method(value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise FaultSpecError("'method' must be an HTTP method or '*'")
    return value.upper()


def _times(value: Any) -> int | None:
    if value is None:
        return None
    # bool is an int subclass; "times": true is almost certainly a mistake.
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise FaultSpecError("'times' must be a positive integer")
    return value


def _match_body(value: Any) -> dict[str, Any] | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise FaultSpecError("'match_body' must be a JSON object")
    return value


class FaultRules:
    """Registered rules; matching a request consumes one use of each rule that matched."""

    def __init__(self) -> None:
        self._rules: list[FaultRule] = []
        self._last_id = 0

    def add(self, rule: FaultRule) -> FaultRule:
        self._last_id += 1
        rule.id = self._last_id
        self._rules.append(rule)
        return rule

    def clear(self) -> int:
        count = len(self._rules)
        self._rules.clear()
        return count

    def to_json(self) -> list[dict[str, Any]]:
        return [rule.to_json() for rule in self._rules]

    def consume(self, method: str, path: str, body: Any) -> FaultSet:
        merged = NO_FAULTS
        for rule in self._rules:
            if rule.matches(method, path, body):
                rule.hits += 1
                merged = merged.merge(rule.faults)
        return merged
