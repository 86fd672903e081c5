"""The runner: the only place where the core's decisions turn into effects.

Contract of :class:`ExecutionRunner`:
- Owns one execution while it runs: its state and its in-flight attempts. It is
  the only writer of that execution's journal; every change, including a cancel
  or resume request, passes through its mailbox so writes are serialized.
- Journals before it acts: an attempt's started event is durable before the
  request is sent. A reply's event is applied at once and made durable together
  with the round of decisions it leads to, in one append (or alone, when it leads
  to none): nothing is sent before everything that led to it is durable, and a
  crash before that append loses only replies, whose attempts recovery re-sends
  with the same idempotency key.
- Retries nothing by itself: the core schedules retries; the runner only keeps
  timers. A lost journal connection is retried with backoff; a sequence conflict
  means another host took over, and the runner stops without writing more.
- Idempotent to restart: a new runner rebuilt from the journal journals the
  attempts that were in flight as interrupted and re-sends them with the same key.
  The exception is ``in_flight``: attempts its creator journaled for it in the
  execution's opening round (``core.opening``), which were never sent; it sends
  them at once, as if it had journaled them itself.
- With ``history`` (a list seeded with the events its state was built from), it
  extends that list with each append once durable: the journal's events of the
  execution, kept in memory for a caller that needs them at the end (tracing).
- After each durable append it calls ``on_journaled(state, events)`` once with every
  event of that append (the host's metrics count facts only); the hook's errors are
  logged, never raised into the execution.
- Drains on request (its host is leaving the pool): it decides nothing more,
  waits up to a grace period for the attempts in flight to reply, journals those
  replies and stops, so the next host goes on from there. An attempt still in
  flight after the grace is abandoned: the next host re-sends it with the same key.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from coordinator.core import events as ev
from coordinator.core.commands import HttpRequest, Invoke, WaitUntil
from coordinator.core.decide import decide, interrupted
from coordinator.core.definition import SagaDefinition
from coordinator.core.outcomes import Reply, judge_action, judge_compensation
from coordinator.core.replay import apply, can_cancel
from coordinator.core.state import ExecutionState
from coordinator.journal.base import Journal, JournalUnavailable

log = logging.getLogger(__name__)
Clock = Callable[[], float]


class Invoker(Protocol):
    async def invoke(self, request: HttpRequest) -> Reply: ...


# Named points where tests inject a hard crash (see ``faults.FaultPoints``).
Checkpoint = Callable[[str], None]
AFTER_STEP_STARTED = "after_step_started"
AFTER_REPLY = "after_reply"
DURING_COMPENSATION = "during_compensation"
AFTER_FINAL_EVENT = "after_final_event"


def _no_checkpoint(_: str) -> None:
    return None


# Called after each durable append with the state and every event of that append.
JournaledHook = Callable[[ExecutionState, Sequence[ev.Event]], None]


class AttemptHook(Protocol):
    """Wraps each send, e.g. in a tracing span; must return the invoker's reply."""

    def __call__(
        self, state: ExecutionState, command: Invoke, send: Callable[[], Awaitable[Reply]]
    ) -> Awaitable[Reply]: ...


@dataclass(frozen=True, slots=True)
class _Replied:
    command: Invoke
    reply: Reply


@dataclass(slots=True)
class _Control:
    kind: str  # "cancel" | "resume"
    reason: str | None
    answer: asyncio.Future[bool]


_TICK = object()
_ABANDON = object()
JOURNAL_RETRY_SECONDS = (0.05, 0.2, 0.5, 1.0, 2.0)


class ExecutionRunner:
    def __init__(
        self,
        definition: SagaDefinition,
        state: ExecutionState,
        journal: Journal,
        invoker: Invoker,
        *,
        clock: Clock = time.time,
        opening: list[ev.Event] | None = None,
        around_attempt: AttemptHook | None = None,
        fence: int | None = None,
        checkpoint: Checkpoint | None = None,
        on_journaled: JournaledHook | None = None,
        history: list[ev.Event] | None = None,
        in_flight: Sequence[Invoke] = (),
    ) -> None:
        self.definition = definition
        self.state = state
        self._journal = journal
        self._invoker = invoker
        self._clock = clock
        self._opening = list(opening or [])
        self._around_attempt = around_attempt
        self.fence = fence
        self._checkpoint = checkpoint or _no_checkpoint
        self._on_journaled = on_journaled
        self.history = history
        self._in_flight = list(in_flight)
        self._inbox: asyncio.Queue[object] = asyncio.Queue()
        # Applied to the state, not yet durable: written with the next append.
        self._pending: list[ev.Event] = []
        self._timer: asyncio.TimerHandle | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.finished = asyncio.Event()
        self.opened = asyncio.Event()  # set once the opening events are durable
        self.fenced_out = False
        self.drained = False  # stopped by drain(): its lease is for the host to release
        self._drain_grace: float | None = None

    @property
    def execution_id(self) -> str:
        return self.state.execution_id

    async def cancel(self, reason: str | None) -> bool:
        """Ask for a cancel; True once it is journaled, False when it is refused."""
        return await self._control("cancel", reason)

    async def resume(self) -> bool:
        return await self._control("resume", None)

    @property
    def ended_durably(self) -> bool:
        """Terminal, with every event of it in the journal and the execution still ours."""
        return self.state.terminal and not self._pending and not self.fenced_out

    def abandon(self) -> None:
        """Stop without writing more: another host owns the execution now."""
        self.fenced_out = True
        self._inbox.put_nowait(_ABANDON)

    def drain(self, grace: float) -> None:
        """Stop at the next safe point (see the contract); ``grace`` bounds the wait
        for attempts in flight."""
        if self._drain_grace is None:
            self._drain_grace = grace
            self._inbox.put_nowait(_TICK)  # wakes a runner waiting for replies or timers

    async def _control(self, kind: str, reason: str | None) -> bool:
        if self.finished.is_set():
            return False
        answer: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._inbox.put_nowait(_Control(kind, reason, answer))
        return await answer

    async def run(self) -> ExecutionState:
        try:
            self._open()
            while not self.state.terminal:
                if self._drain_grace is not None:
                    await self._stop_for_drain(self._drain_grace)
                if not await self._step():
                    await self._flush()
                    await self._wait()
            await self._flush()
        except _Stop:
            pass
        finally:
            self._shutdown()
        return self.state

    def _open(self) -> None:
        """Send the opening round handed over, or journal what the last host left."""
        if not self._in_flight:
            self._defer([*self._opening, *interrupted(self.state, self._clock())])
            return
        self._defer(self._opening)
        self.opened.set()  # the started events are durable: the creator wrote them
        self._checkpoint(AFTER_STEP_STARTED)
        for command in self._in_flight:
            self._spawn(command)

    async def _step(self) -> bool:
        """Journal one round of decisions, then send; False when there is nothing to do."""
        now = self._clock()
        events: list[ev.Event] = []
        sends: list[Invoke] = []
        wake: float | None = None
        for command in decide(self.definition, self.state, now):
            if isinstance(command, WaitUntil):
                wake = command.at
            elif isinstance(command, Invoke):
                events.append(command.started(now))
                sends.append(command)
            else:
                events.append(command)
        if not events:
            self._arm_timer(wake)
            return False
        await self._write(events)
        if sends:
            compensating = any(c.phase == "compensation" for c in sends)
            self._checkpoint(DURING_COMPENSATION if compensating else AFTER_STEP_STARTED)
        if self.state.terminal:
            self._checkpoint(AFTER_FINAL_EVENT)
        for command in sends:
            self._spawn(command)
        return True

    async def _wait(self) -> None:
        message = await self._inbox.get()
        await self._handle([message, *self._queued()])

    def _queued(self) -> list[object]:
        """Everything already in the inbox, without waiting."""
        batch = []
        while not self._inbox.empty():
            batch.append(self._inbox.get_nowait())
        return batch

    async def _handle(self, batch: list[object]) -> None:
        if _ABANDON in batch:
            raise _Stop()
        replies = [m for m in batch if isinstance(m, _Replied)]
        if replies:
            self._checkpoint(AFTER_REPLY)
            self._defer([self._judge(m) for m in replies])
        for control in (m for m in batch if isinstance(m, _Control)):
            await self._apply_control(control)

    async def _stop_for_drain(self, grace: float) -> None:
        """Journal what the attempts in flight answer within ``grace``, then stop."""
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=grace)
        await self._handle(self._queued())
        await self._flush()
        self.drained = not self.state.terminal
        raise _Stop()

    def _judge(self, replied: _Replied) -> ev.Event:
        command, now = replied.command, self._clock()
        step = self.definition.step_map[command.step]
        if command.phase == "compensation":
            return judge_compensation(step, command.attempt, replied.reply, now)
        return judge_action(step, command.attempt, replied.reply, now)

    async def _apply_control(self, control: _Control) -> None:
        now = self._clock()
        accepted = (
            can_cancel(self.definition, self.state)
            if control.kind == "cancel"
            else self.state.status == "failed"
        )
        if accepted:
            event: ev.Event = (ev.CancelRequested(at=now, reason=control.reason)
                               if control.kind == "cancel" else ev.ResumeRequested(at=now))
            await self._write([event])
        if not control.answer.done():
            control.answer.set_result(accepted)

    def _spawn(self, command: Invoke) -> None:
        task = asyncio.get_running_loop().create_task(self._send(command))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _send(self, command: Invoke) -> None:
        if self._around_attempt is not None:
            reply = await self._around_attempt(
                self.state, command, lambda: self._invoker.invoke(command.request)
            )
        else:
            reply = await self._invoker.invoke(command.request)
        self._inbox.put_nowait(_Replied(command, reply))

    def _arm_timer(self, wake: float | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if wake is not None:
            delay = max(0.0, wake - self._clock())
            loop = asyncio.get_running_loop()
            self._timer = loop.call_later(delay, self._inbox.put_nowait, _TICK)

    def _defer(self, events: list[ev.Event]) -> None:
        for event in events:
            apply(self.definition, self.state, event)
        self._pending.extend(events)

    async def _flush(self) -> None:
        if self._pending:
            await self._write([])

    async def _write(self, events: list[ev.Event]) -> None:
        """Apply ``events`` and make them durable with everything still pending."""
        self._defer(events)
        batch = self._pending
        after = self.state.last_seq - len(batch)
        for delay in (*JOURNAL_RETRY_SECONDS, None):
            try:
                await self._journal.append(self.execution_id, after, batch, self.state.status,
                                           fence=self.fence)
                self._pending = []
                self.opened.set()
                if self.history is not None:
                    self.history.extend(batch)
                self._journaled(batch)
                return
            except JournalUnavailable:
                if delay is None:
                    raise
                log.warning("journal unavailable for %s; retrying in %ss", self.execution_id, delay)
                await asyncio.sleep(delay)
            except Exception as error:
                # A stale fence or a sequence conflict: another host owns the execution now.
                log.warning("journal append refused for %s (%r); stopping",
                            self.execution_id, error)
                self.fenced_out = True
                raise _Stop() from None

    def _journaled(self, batch: list[ev.Event]) -> None:
        if self._on_journaled is None:
            return
        try:
            self._on_journaled(self.state, batch)
        except Exception:
            # Metrics must never stop an execution.
            log.exception("on_journaled hook failed for %s", self.execution_id)

    def _shutdown(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        for task in self._tasks:
            task.cancel()
        while not self._inbox.empty():
            message = self._inbox.get_nowait()
            if isinstance(message, _Control) and not message.answer.done():
                message.answer.set_result(False)
        self.finished.set()


class _Stop(Exception):
    """Ends a runner that may no longer write its execution's journal."""
