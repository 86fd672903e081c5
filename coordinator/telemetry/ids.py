"""The ids of a saga's trace, as journaled in ``ExecutionStarted.trace``; no OTel imports.

The API journals, at start: ``traceparent`` (the W3C header naming the start
request's span, the saga span's parent), ``tracestate`` when there is one,
``trace_id``, ``saga_span_id`` and ``saga_start_ns``. Every other long-lived span
of the saga gets an id derived from these, so any host, before or after a crash,
computes the same parent for the attempts it sends.
"""

from __future__ import annotations

import functools
import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass

from coordinator.core.state import ExecutionState

_TRACEPARENT = re.compile(r"[0-9a-f]{2}-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")
_HEX16 = re.compile(r"[0-9a-f]{16}")
_HEX32 = re.compile(r"[0-9a-f]{32}")


def traceparent(trace_id: int, span_id: int, flags: int) -> str:
    """The W3C ``traceparent`` header (version 00) naming a span; ``_TRACEPARENT`` reads it."""
    return f"00-{trace_id:032x}-{span_id:016x}-{flags:02x}"


@dataclass(frozen=True, slots=True)
class SagaIds:
    trace_id: int
    parent_span_id: int  # the start request's span
    saga_span_id: int
    trace_flags: int
    start_ns: int | None = None
    tracestate: str | None = None

    @classmethod
    def from_trace(cls, trace: Mapping[str, str] | None) -> SagaIds | None:
        """The ids in a journaled trace, or None when it was started without tracing."""
        if not trace:
            return None
        return _parse(trace.get("traceparent", ""), trace.get("trace_id", ""),
                      trace.get("saga_span_id", ""), trace.get("saga_start_ns", ""),
                      trace.get("tracestate") or None)

    @property
    def trace_id_hex(self) -> str:
        return f"{self.trace_id:032x}"

    def phase_span_id(self, step: str, phase: str, budget_from: int) -> int:
        """The span id of a step's forward (``action``) or ``compensation`` span.

        ``budget_from`` tells the runs of a phase apart: it moves only when a
        failed execution is resumed, which starts that phase anew.
        """
        return self._derived(f"{step}/{phase}/{budget_from}")

    def attempt_span_id(self, step: str, phase: str, attempt: int) -> int:
        """The span id of an attempt, so the host that takes over an execution can
        emit an attempt its dead predecessor left in flight (see ``history``)."""
        return self._derived(f"{step}/{phase}/attempt/{attempt}")

    def _derived(self, key: str) -> int:
        return _derive(self.saga_span_id, key)


# A step's span id is asked for at each of its attempts and again at the saga's end.
@functools.lru_cache(maxsize=8192)
def _derive(saga_span_id: int, key: str) -> int:
    digest = hashlib.blake2b(f"{saga_span_id:016x}/{key}".encode(), digest_size=8)
    return int.from_bytes(digest.digest(), "big") or 1  # zero is the invalid span id


# Each attempt of a saga asks for its ids (three regular expressions and four int
# parses): remembered per saga, as the host runs the same sagas' attempts over again.
@functools.lru_cache(maxsize=4096)
def _parse(traceparent: str, trace_id: str, saga_span_id: str, start: str,
           tracestate: str | None) -> SagaIds | None:
    header = _TRACEPARENT.fullmatch(traceparent)
    if header is None or not _HEX32.fullmatch(trace_id) or not _HEX16.fullmatch(saga_span_id):
        return None
    return SagaIds(
        trace_id=int(trace_id, 16), parent_span_id=int(header[2], 16),
        saga_span_id=int(saga_span_id, 16), trace_flags=int(header[3], 16),
        start_ns=int(start) if start.isdigit() else None, tracestate=tracestate)


def span_phase(recovering: bool, phase: str) -> str:
    """The span an attempt belongs to: re-sending an action to learn what to undo is
    part of compensating, so it sits under the compensation span."""
    return "compensation" if recovering or phase == "compensation" else "action"


def attempt_parent(ids: SagaIds, state: ExecutionState, step: str, phase: str) -> int:
    """The span id of the step or compensation span an attempt of ``step`` belongs to."""
    attempts = state.steps[step].compensation if phase == "compensation" else \
        state.steps[step].action
    return ids.phase_span_id(step, phase, attempts.budget_from)
