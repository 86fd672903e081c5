"""The control plane behind the HTTP API: start, read, list, cancel, resume, wait.

Contract of :class:`ExecutionService`:
- Owns nothing durable itself: the journal holds every execution, hosts run them.
  Several API processes may serve one journal and one pool.
- ``start`` returns only after the execution's first events are durable, then
  hands the execution to its host; a host that is down does not lose it (the
  supervisor or the next ``serve`` resumes it from the journal).
- A start with an idempotency key is idempotent per saga: the same key and the
  same request return the first execution; a different request is a conflict.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import time
import uuid
from collections.abc import Callable
from typing import Any

from jsonschema import Draft202012Validator

from coordinator.admission import Admission, Ticket
from coordinator.completions import CompletionWatch
from coordinator.core import events as ev
from coordinator.core.definition import SagaDefinition
from coordinator.core.opening import opening_round
from coordinator.core.replay import can_cancel, replay
from coordinator.core.state import ExecutionState
from coordinator.errors import BadRequest, Conflict, InvalidInput, NotFound, Retryable
from coordinator.journal.base import (
    TERMINAL_STATUSES,
    Journal,
    JournalUnavailable,
    NewExecution,
)
from coordinator.pool import HostPool
from coordinator.views import accepted_view, execution_view, summary_view, with_links

log = logging.getLogger(__name__)
MAX_WAIT_SECONDS = 60.0
# A waiter re-reads the journal on its own at least this often (the finish feed
# only covers the host it watches), backing off from the first value to the last.
RECHECK_SECONDS = (0.5, 5.0)
# Turns the caller's trace context into the one to journal (tracing names the saga's ids).
TraceHook = Callable[[dict[str, str] | None], dict[str, str] | None]


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


class ExecutionService:
    def __init__(
        self,
        catalog: SagaCatalog,
        journal: Journal,
        pool: HostPool,
        *,
        jaeger_url: str | None = None,
        clock: Callable[[], float] = time.time,
        saga_trace: TraceHook | None = None,
        admission: Admission | None = None,
    ) -> None:
        self.catalog = catalog
        self.admission = admission
        self.started: dict[str, int] = {}  # executions created here, by saga (for metrics)
        self._saga_trace = saga_trace
        self.journal = journal
        self.pool = pool
        self._jaeger_url = jaeger_url
        self._clock = clock
        self._dispatches: set[asyncio.Task[None]] = set()
        self._completions = CompletionWatch(pool.finished_since)

    async def start(
        self,
        saga: str,
        value: Any,
        *,
        version: int | None = None,
        idempotency_key: str | None = None,
        trace: dict[str, str] | None = None,
        wait: float | None = None,
        execution_id: str | None = None,
    ) -> tuple[dict[str, Any], bool]:
        """Journal a new execution and hand it to its host; ``(view, created)``.

        With ``wait``, a new execution's view is the full one once terminal within
        ``wait`` seconds, else the accepted one; a known one's is its view then.
        Admission may refuse the start (:class:`TooManyRequests`) before anything is
        written; without ``execution_id`` it picks one that hashes to a host with room.
        """
        definition = self.catalog.get(saga, version)
        self.catalog.check_input(definition, value)
        admission = self.admission
        if admission is None:
            return await self._start(definition, value, execution_id or uuid.uuid4().hex,
                                     idempotency_key, trace, wait, None)
        ticket = admission.reserve(definition.placement == "shared", execution_id)
        try:
            return await self._start(definition, value, ticket.execution_id,
                                     idempotency_key, trace, wait, ticket)
        finally:
            admission.release(ticket)  # nothing written; a confirmed ticket stays counted

    async def _start(
        self, definition: SagaDefinition, value: Any, execution_id: str,
        idempotency_key: str | None, trace: dict[str, str] | None, wait: float | None,
        ticket: Ticket | None,
    ) -> tuple[dict[str, Any], bool]:
        saga = definition.name
        now = self._clock()
        if self._saga_trace is not None:
            trace = self._saga_trace(trace)
        started = ev.ExecutionStarted(
            at=now, execution_id=execution_id, saga=definition.name,
            version=definition.version, input=value,
            deadline=now + definition.timeout if definition.timeout else None, trace=trace)
        request_hash = _fingerprint(definition.version, value) if idempotency_key else None
        record = NewExecution(execution_id, definition.name, definition.version, now,
                              idempotency_key, request_hash)
        # Created leased to its host: the host adopts fence 1 instead of claiming it.
        lease = self.pool.lease_for(definition.placement, execution_id)
        owner, lease_until = (lease[0], now + lease[1]) if lease else (None, None)
        events = [started, *self._opening(definition, started, now, owner)]
        result = await self._journaled(self.journal.create_execution(
            record, events, owner=owner, lease_until=lease_until))
        if ticket is not None and result.created and self.admission is not None:
            self.admission.confirm(ticket)
        if not result.created:
            if result.row.request_hash != request_hash:
                raise Conflict(f"idempotency key {idempotency_key!r} was used for a different "
                               f"request to saga {saga!r} (execution {result.row.execution_id})")
            if wait is not None:
                return await self.wait(result.row.execution_id, wait), False
            return await self.get(result.row.execution_id), False
        self.started[saga] = self.started.get(saga, 0) + 1
        state = replay(definition, events)
        self._dispatch(definition, execution_id, events, 1 if owner else None, owner,
                       report_to=self._completions.reader if wait is not None else None)
        if wait is not None:
            return await self._waited_start(definition, state, wait), True
        return accepted_view(state), True

    def _opening(self, definition: SagaDefinition, started: ev.ExecutionStarted, now: float,
                 owner: str | None) -> list[ev.Event]:
        """The opening round to journal with the start, for the host it is leased to.

        Only for a host whose node this process knows (from its last answer): the
        host checks the assignment names it, and treats a stale one as a takeover.
        """
        node = self.pool.node_of(owner) if owner is not None else None
        if owner is None or node is None:
            return []
        return opening_round(definition, started, now, owner, node)

    async def _waited_start(self, definition: SagaDefinition, state: ExecutionState,
                            seconds: float) -> dict[str, Any]:
        """The full view once terminal; otherwise the accepted view, current status."""
        try:
            current = await self.wait(state.execution_id, seconds, known=(definition, state))
        except Retryable:
            # The execution is journaled: a 503 here would invite a duplicate start.
            log.warning("wait after start of %s failed; answering 202", state.execution_id,
                        exc_info=True)
            return accepted_view(state)
        if current["status"] in TERMINAL_STATUSES:
            return current
        return {**accepted_view(state), "status": current["status"]}

    def _dispatch(self, definition: SagaDefinition, execution_id: str,
                  events: list[ev.Event] | None, fence: int | None = None,
                  leased_to: str | None = None, report_to: str | None = None) -> None:
        """Hand over without holding the reply: the journal already has the execution.

        ``report_to``: this process waits for the end (its feed reader's name), so the
        host sends it the final view.
        """
        async def hand_over() -> None:
            try:
                await self.pool.dispatch(definition.placement, execution_id, events, fence,
                                         leased_to=leased_to, report_to=report_to)
            except Exception:
                log.exception("could not hand %s to a host; it stays in the journal",
                              execution_id)

        task = asyncio.get_running_loop().create_task(hand_over())
        self._dispatches.add(task)
        task.add_done_callback(self._dispatches.discard)

    async def state(self, execution_id: str) -> tuple[SagaDefinition, ExecutionState]:
        stored = await self._journaled(self.journal.read(execution_id))
        if not stored or not isinstance(stored[0].event, ev.ExecutionStarted):
            raise NotFound(f"no execution with id {execution_id!r}")
        start = stored[0].event
        definition = self.catalog.get(start.saga, start.version)
        return definition, replay(definition, [s.event for s in stored])

    async def get(self, execution_id: str) -> dict[str, Any]:
        definition, state = await self.state(execution_id)
        return execution_view(definition, state, self._jaeger_url)

    async def events(self, execution_id: str) -> list[dict[str, Any]]:
        stored = await self._journaled(self.journal.read(execution_id))
        if not stored:
            raise NotFound(f"no execution with id {execution_id!r}")
        return [s.as_json_dict() for s in stored]

    async def list(self, saga: str | None, status: str | None, limit: int,
                   cursor: str | None) -> dict[str, Any]:
        if not 1 <= limit <= 500:
            raise BadRequest(f"limit must be between 1 and 500, not {limit}")
        try:
            page = await self._journaled(self.journal.list_executions(saga, status, limit, cursor))
        except ValueError as error:
            raise BadRequest(f"invalid cursor {cursor!r}: {error}") from error
        return {"items": [summary_view(row) for row in page.items],
                "next_cursor": page.next_cursor}

    async def cancel(self, execution_id: str, reason: str | None = None) -> dict[str, Any]:
        definition, state = await self.state(execution_id)
        if not can_cancel(definition, state):
            raise Conflict(_refusal("cancel", state, definition))
        answer = await self._on_host(definition, state, "cancel", reason)
        if answer != "accepted":
            _, state = await self.state(execution_id)
            raise Conflict(_refusal("cancel", state, definition))
        return await self.get(execution_id)

    async def resume(self, execution_id: str) -> dict[str, Any]:
        definition, state = await self.state(execution_id)
        if state.status != "failed":
            raise Conflict(f"execution {execution_id} is {state.status}; only a failed "
                           "execution can be resumed")
        answer = await self._on_host(definition, state, "resume")
        if answer != "accepted":
            raise Conflict(f"execution {execution_id} could not be resumed ({answer})")
        return await self.get(execution_id)

    async def wait(self, execution_id: str, seconds: float,
                   known: tuple[SagaDefinition, ExecutionState] | None = None) -> dict[str, Any]:
        """The execution once terminal, or as it stands when ``seconds`` have passed.

        ``known`` is a state the caller just read or wrote, saving a journal read.
        """
        seconds = min(max(seconds, 0.0), MAX_WAIT_SECONDS)
        deadline = self._clock() + seconds
        definition, state = known or await self.state(execution_id)
        if not state.terminal and definition.placement != "dedicated":
            return await self._watch(definition, state, deadline)
        if not state.terminal:
            definition, state = await self._wait_on_host(definition, state, deadline)
        return execution_view(definition, state, self._jaeger_url)

    async def _watch(self, definition: SagaDefinition, state: ExecutionState,
                     deadline: float) -> dict[str, Any]:
        """Wait on the finish feed of the host that runs the execution; no Ray call.

        The view is the one the feed carried when it did (the host's own terminal
        state, durable by then, and newer than ``state``), else built from the journal.
        """
        execution_id = state.execution_id
        recheck = RECHECK_SECONDS[0]
        host = self.pool.host_name(execution_id, state.host)
        if not self._completions.is_primed(host):
            # It may finish before the feed holds a cursor: read the journal after.
            # A host that does not answer costs the waiter no more than its deadline.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._completions.primed(host),
                                       max(0.0, deadline - self._clock()))
            definition, state = await self.state(execution_id)
        while not state.terminal and (left := deadline - self._clock()) > 0:
            woken = self._completions.waiter(host, execution_id)
            final = None
            try:
                final = await asyncio.wait_for(woken, min(left, recheck))
            except TimeoutError:
                recheck = min(recheck * 2, RECHECK_SECONDS[1])
            finally:
                self._completions.discard(host, execution_id, woken)
            if final is not None and final[0] > state.last_seq:  # not an earlier run's end
                return with_links(final[1], self._jaeger_url)
            definition, state = await self.state(execution_id)
            if not state.terminal:
                host = self.pool.host_name(execution_id, state.host)
        return execution_view(definition, state, self._jaeger_url)

    async def _wait_on_host(self, definition: SagaDefinition, state: ExecutionState,
                            deadline: float) -> tuple[SagaDefinition, ExecutionState]:
        """A dedicated host's own ``wait``: one Ray call per waiter (dedicated is rare)."""
        execution_id = state.execution_id
        while not state.terminal and (left := deadline - self._clock()) > 0:
            try:
                await self.pool.call(definition.placement, execution_id, "wait", left,
                                     owner=state.host)
            except Exception:
                log.debug("wait on host failed for %s; polling", execution_id, exc_info=True)
            definition, state = await self.state(execution_id)
            if not state.terminal:
                await asyncio.sleep(min(0.05, max(deadline - self._clock(), 0)))
        return definition, state

    async def close(self) -> None:
        await self._completions.close()

    async def resume_all(self) -> int:
        """Hand every non-terminal execution to its host (at ``serve`` start)."""
        now = self._clock()
        rows = [row for row in await self._journaled(self.journal.non_terminal())
                if row.owner is None or (row.lease_until or 0.0) < now]
        for row in rows:
            self._dispatch(self.catalog.get(row.saga, row.version), row.execution_id, None)
        return len(rows)

    async def _on_host(self, definition: SagaDefinition, state: ExecutionState, method: str,
                       *args: Any) -> Any:
        execution_id = state.execution_id
        try:
            answer = await self.pool.call(definition.placement, execution_id, method, *args,
                                          owner=state.host)
        except Exception as error:
            # A host that died or restarts answers nothing now; the journal keeps the
            # execution, so the caller may simply try again.
            log.warning("host call %s(%s) failed: %r", method, execution_id, error)
            raise Retryable(f"the host of execution {execution_id} did not answer; "
                            "try again shortly", retry_after=1.0) from error
        if answer == "owned_elsewhere":
            # Ownership is moving between hosts (a lease being taken over).
            raise Retryable(f"execution {execution_id} is changing hosts; try again shortly",
                            retry_after=1.0)
        return answer

    async def _journaled(self, call: Any) -> Any:
        try:
            return await call
        except JournalUnavailable as error:
            raise Retryable(f"the journal is unavailable: {error}", retry_after=1.0) from error


def _fingerprint(version: int, value: Any) -> str:
    canonical = json.dumps({"version": version, "input": value}, sort_keys=True,
                           separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def _refusal(action: str, state: ExecutionState, definition: SagaDefinition) -> str:
    if state.terminal:
        return f"cannot {action} execution {state.execution_id}: it is already {state.status}"
    if state.status == "compensating":
        return f"cannot {action} execution {state.execution_id}: it is already compensating"
    return (f"cannot {action} execution {state.execution_id}: its pivot step "
            f"{definition.graph.pivot!r} has succeeded")
