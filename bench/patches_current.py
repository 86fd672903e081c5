"""This and the previous round's candidates, toggles of changes now in the code, probes.

See ``bench/experiments.py`` for how patches are applied; docs/performance.md has
what each measured.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

from bench.experiments import patch


@patch("short-busy")
def _short_busy() -> None:
    """The journal's writer retries a locked file every 0.1-0.3 ms instead of sleeping 1-10 ms.

    Three processes (the API and two hosts) write one SQLite file. A writer that finds
    the lock taken waits in SQLite's busy handler, which sleeps 1, 2, 5, 10 ms between
    tries, while the lock is typically held for one fsync (about 0.3 ms here). Here the
    writer's connection has ``busy_timeout = 0`` and ``GroupCommitWriter`` retries the
    batch itself with short jittered sleeps (0.2 ms doubling to 2 ms).
    """
    import sqlite3

    from coordinator.journal import sqlite as store
    from coordinator.journal import sqlite_db, sqlite_writer

    original_open = store.SQLiteJournal._open_writer

    def open_writer(self: store.SQLiteJournal) -> sqlite3.Connection:
        conn = original_open(self)
        conn.execute("PRAGMA busy_timeout = 0")
        return conn

    def short_delays(first: float = 0.0002, cap: float = 0.002):  # type: ignore[no-untyped-def]
        return sqlite_db.backoff_delays(first, cap)

    store.SQLiteJournal._open_writer = open_writer  # type: ignore[method-assign]
    sqlite_writer.backoff_delays = short_delays


@patch("no-feed-views")
def _no_feed_views() -> None:
    """Waited starts without the finish feed's views: the API reads the journal again.

    Reverts, in the API process only, the hand-over's ``report_to`` (the host then
    sends no terminal views), to split the change's cost between API and hosts.
    """
    from coordinator.executions import ExecutionService

    original = ExecutionService._dispatch

    def dispatch(self: ExecutionService, *args: object, **kwargs: object) -> None:
        kwargs["report_to"] = None
        original(self, *args, **kwargs)  # type: ignore[arg-type]

    ExecutionService._dispatch = dispatch  # type: ignore[method-assign]


@patch("no-opening-round")
def _no_opening_round() -> None:
    """Starts without the opening round: the API journals ``ExecutionStarted`` alone and
    the host journals its assignment and first attempts before sending them (as before)."""
    from coordinator.executions import ExecutionService

    def no_opening(self: ExecutionService, *args: object) -> list[object]:
        return []

    ExecutionService._opening = no_opening  # type: ignore[assignment,method-assign]


@patch("no-host-link")
def _no_host_link() -> None:
    """Hand-overs and finish-feed polls over Ray actor calls only (as before the link)."""
    from coordinator.pool import HostPool

    original = HostPool._learn_node

    def learn_node(self: HostPool, name: str, answer: dict[str, str | None]) -> None:
        answer.pop("link", None)
        original(self, name, answer)

    HostPool._learn_node = learn_node  # type: ignore[method-assign]


@patch("no-host-history")
def _no_host_history() -> None:
    """Tracing on: the hosts re-read each finished saga's journal for its spans (as before)."""
    from coordinator import host_core

    original = host_core.HostCore._drive

    async def drive(self: host_core.HostCore, runner: host_core.ExecutionRunner) -> object:
        runner.history = None  # nothing kept: the spans come from a journal read
        if self._tracing is None:
            return await original(self, runner)
        state = await runner.run()
        if state.terminal and not runner.fenced_out:
            history = [s.event for s in await self._journal.read(state.execution_id)]
            self._tracing.execution_ended(state, history)
        return state

    host_core.HostCore._drive = drive  # type: ignore[assignment,method-assign]


@patch("adaptive-window")
def _adaptive_window() -> None:
    """Group commit waits up to 1 ms for more requests, only while they come in batches.

    Each commit costs an fsync (about 0.1-0.15 ms of CPU here, most of a writer
    thread's time). After a batch of more than one request (the writer is under
    load), the next batch waits up to 1 ms after its first request for more to
    join it; after a batch of one (one saga at a time), it commits at once.
    """
    import queue
    import time

    from coordinator.journal import sqlite_writer

    def next_batch(self: sqlite_writer.GroupCommitWriter) -> tuple[list[object], bool]:
        first = self._queue.get()
        if first is None:
            return [], True
        batch = [first]
        window = 0.001 if getattr(self, "_bench_last", 1) > 1 else 0.0
        deadline = time.monotonic() + window
        while len(batch) < self._max_batch:
            try:
                remaining = deadline - time.monotonic()
                item = (self._queue.get(timeout=remaining) if remaining > 0
                        else self._queue.get_nowait())
            except queue.Empty:
                break
            if item is None:
                return batch, True
            batch.append(item)
        self._bench_last = len(batch)  # type: ignore[attr-defined]
        return batch, False

    sqlite_writer.GroupCommitWriter._next_batch = next_batch  # type: ignore[assignment,method-assign]


@patch("time-start")
def _time_start() -> None:
    """Measures, changes nothing: where a start's time goes inside the API process.

    Wraps ``ExecutionService.start`` and ``SQLiteJournal.create_execution`` (and the
    writer's transaction, in its thread) with a clock; every 100 starts the medians
    in ms go to ``$SAGARAY_BENCH_TIMES`` (default /tmp/sagaray-start-times.txt).
    """
    import statistics
    import time

    from coordinator.executions import ExecutionService
    from coordinator.journal import sqlite_writer
    from coordinator.journal.sqlite import SQLiteJournal

    times: dict[str, list[float]] = {"service": [], "create": [], "transaction": []}
    out = os.environ.get("SAGARAY_BENCH_TIMES", "/tmp/sagaray-start-times.txt")

    def timed(name: str, func):  # type: ignore[no-untyped-def]
        async def wrapper(*args, **kwargs):  # type: ignore[no-untyped-def]
            began = time.perf_counter()
            try:
                return await func(*args, **kwargs)
            finally:
                times[name].append((time.perf_counter() - began) * 1000)
                if name == "service" and len(times[name]) % 100 == 0:
                    line = {k: round(statistics.median(v[-100:]), 3) for k, v in times.items() if v}
                    with open(out, "a") as file:
                        file.write(f"{line}\n")
        return wrapper

    original_transaction = sqlite_writer.GroupCommitWriter._transaction

    def transaction(self, conn, batch):  # type: ignore[no-untyped-def]
        began = time.perf_counter()
        try:
            return original_transaction(self, conn, batch)
        finally:
            times["transaction"].append((time.perf_counter() - began) * 1000)

    ExecutionService.start = timed("service", ExecutionService.start)  # type: ignore[method-assign]
    SQLiteJournal.create_execution = timed(  # type: ignore[method-assign]
        "create", SQLiteJournal.create_execution)
    sqlite_writer.GroupCommitWriter._transaction = transaction  # type: ignore[method-assign]


@patch("time-handover")
def _time_handover() -> None:
    """Measures, changes nothing: per hand-over, the time from the API's start to the
    host's ``start_many`` and to the runner's first send, appended to
    ``$SAGARAY_TIME_HANDOVER_DIR/handover-<pid>.txt`` (one line per execution)."""
    import os
    import time

    from coordinator import host_core, runner

    folder = os.environ.get("SAGARAY_TIME_HANDOVER_DIR", "/tmp")
    original_start_many = host_core.HostCore.start_many
    original_spawn = runner.ExecutionRunner._spawn
    entered: dict[str, float] = {}

    async def start_many(self: host_core.HostCore, batch: Any) -> Any:
        now = time.time()
        for item in batch:
            entered[item[0]] = now
        return await original_start_many(self, batch)

    def spawn(self: runner.ExecutionRunner, command: Any) -> None:
        original_spawn(self, command)
        began = entered.pop(self.execution_id, None)
        if began is not None:
            started = self.state.created_at
            with open(f"{folder}/handover-{os.getpid()}.txt", "a") as out:
                out.write(f"{(began - started) * 1000:.3f} {(time.time() - started) * 1000:.3f}\n")

    host_core.HostCore.start_many = start_many  # type: ignore[method-assign]
    runner.ExecutionRunner._spawn = spawn  # type: ignore[method-assign]


@patch("handover-calls-4")
def _handover_calls_4() -> None:
    """Up to 4 ``start_many`` calls in flight per host instead of 1 (smaller batches,
    less waiting behind the previous call's round trip)."""
    from coordinator import handover

    def put(self: Any, execution_id: str, events: Any, fence: Any = None,
            report_to: Any = None) -> Any:
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._items.append(((execution_id, events, fence, report_to), future))
        pump(self)
        return future

    def pump(self: Any) -> None:
        calls = getattr(self, "_calls", 0)
        while self._items and calls < 4:
            batch = self._items[:handover.MAX_BATCH]
            self._items = self._items[handover.MAX_BATCH:]
            calls += 1
            asyncio.get_running_loop().create_task(call(self, batch))
        self._calls = calls

    async def call(self: Any, batch: Any) -> None:
        try:
            answers = await self._start_many([item for item, _ in batch])
        except Exception as error:
            for _, future in batch:
                if not future.done():
                    future.set_exception(error)
        else:
            for (_, future), answer in zip(batch, answers, strict=True):
                if not future.done():
                    future.set_result(dict(answer))
        finally:
            self._calls -= 1
            pump(self)

    handover.HandOverQueue.put = put  # type: ignore[method-assign]


@patch("no-gc-relaxed")
def _no_gc_relaxed() -> None:
    """CPython's default cyclic GC (threshold 700, nothing frozen), as before gc_tuning.py."""
    from coordinator import hosts, server

    def default_gc() -> None:
        return None

    hosts.relax_gc = default_gc  # type: ignore[attr-defined]
    server.relax_gc = default_gc  # type: ignore[attr-defined]


@patch("no-uvloop")
def _no_uvloop() -> None:
    """asyncio's own event loop in the API process and the SagaHosts (before uvloop).

    Applied before ``ray.init`` and the API's loop: the raylet, and so every worker,
    inherits the switch Ray reads when it builds an async actor's loop."""
    os.environ["RAY_USE_UVLOOP"] = "0"


@patch("switch-1ms")
def _switch_1ms() -> None:
    """The GIL changes hands after 1 ms instead of 5 when another thread waits for it:
    the journal's writer thread (and the span exporter's) need not wait for a busy event
    loop to give it up."""
    import sys

    sys.setswitchinterval(0.001)


@patch("sdk-span-encoder")
def _sdk_span_encoder() -> None:
    """The OTLP exporter encodes spans with the SDK's encoder (before otlp_encoding.py)."""
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    from coordinator.telemetry import otlp_encoding

    def sdk_exporter(endpoint: str, headers: dict[str, str] | None) -> OTLPSpanExporter:
        return OTLPSpanExporter(endpoint=endpoint, headers=headers)

    otlp_encoding.fast_exporter = sdk_exporter  # type: ignore[assignment]


@patch("time-start-tail")
def _time_start_tail() -> None:
    """Measures, changes nothing: the raw timings behind a start's tail, per process.

    Appends to ``$SAGARAY_BENCH_TAIL_DIR/tail-<pid>.txt`` (default /tmp) one line per
    event: ``start <wall> <ms>`` for ``ExecutionService.start``, ``create <wall> <ms>``,
    ``txn <wall> <ms> <retries>`` for each writer commit (with its lock retries), and
    ``lag <wall> <ms>`` whenever the event loop wakes a 1 ms timer more than 5 ms late.
    """
    import threading
    import time

    from coordinator.executions import ExecutionService
    from coordinator.journal import sqlite_writer
    from coordinator.journal.sqlite import SQLiteJournal

    folder = os.environ.get("SAGARAY_BENCH_TAIL_DIR", "/tmp")
    lines: list[str] = []
    guard = threading.Lock()

    def note(line: str) -> None:
        with guard:
            lines.append(line)
            if len(lines) >= 200:
                with open(f"{folder}/tail-{os.getpid()}.txt", "a") as out:
                    out.write("\n".join(lines) + "\n")
                lines.clear()

    async def watch_loop() -> None:
        while True:
            began = time.perf_counter()
            await asyncio.sleep(0.001)
            late = (time.perf_counter() - began) * 1000 - 1
            if late > 5:
                note(f"lag {time.time():.4f} {late:.2f}")

    def timed(name: str, func):  # type: ignore[no-untyped-def]
        async def wrapper(*args, **kwargs):  # type: ignore[no-untyped-def]
            if not getattr(wrapper, "watching", False):
                wrapper.watching = True  # type: ignore[attr-defined]
                asyncio.get_running_loop().create_task(watch_loop())
            began = time.perf_counter()
            try:
                return await func(*args, **kwargs)
            finally:
                note(f"{name} {time.time():.4f} {(time.perf_counter() - began) * 1000:.2f}")
        return wrapper

    original_commit = sqlite_writer.GroupCommitWriter._commit_batch

    def commit_batch(self, conn, batch):  # type: ignore[no-untyped-def]
        began, retries = time.perf_counter(), self.stats.lock_retries
        try:
            return original_commit(self, conn, batch)
        finally:
            note(f"txn {time.time():.4f} {(time.perf_counter() - began) * 1000:.2f} "
                 f"{self.stats.lock_retries - retries} {len(batch)}")

    ExecutionService.start = timed("start", ExecutionService.start)  # type: ignore[method-assign]
    SQLiteJournal.create_execution = timed(  # type: ignore[method-assign]
        "create", SQLiteJournal.create_execution)
    sqlite_writer.GroupCommitWriter._commit_batch = commit_batch  # type: ignore[method-assign]



@patch("no-writer-turns")
def _no_writer_turns() -> None:
    """Toggles a change now in the code off: the SQLite writers of one file race for its
    lock in SQLite's busy handler instead of taking turns (``sqlite_turns``)."""
    from coordinator.journal import sqlite_writer

    original_init = sqlite_writer.GroupCommitWriter.__init__

    def init(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        original_init(self, *args, **kwargs)
        self._take_turns = False

    sqlite_writer.GroupCommitWriter.__init__ = init  # type: ignore[method-assign]


@patch("feed-pace")
def _feed_pace() -> None:
    """Candidate: a host answers one reader's feed poll at most every 3 ms.

    Under load each finish can cost a feed answer of its own (a link write, a wake-up
    and a decode in the API). Here an answer that would follow the previous one by
    less than 3 ms waits out the rest, so it carries more finishes; one saga at a
    time (polls 10 ms apart) is not delayed.
    """
    import contextlib
    import time

    from coordinator.finish_feed import FinishFeed

    original_since = FinishFeed.since

    async def since(self, incarnation, cursor, timeout, reader=None):  # type: ignore[no-untyped-def]
        last = getattr(self, "_bench_last", {})
        self._bench_last = last
        if cursor is not None and incarnation == self.incarnation and cursor >= self._next:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._arrived.wait(), timeout)
        gap = time.monotonic() - last.get(reader, 0.0)
        if cursor is not None and cursor < self._next and gap < 0.003:
            await asyncio.sleep(0.003 - gap)
        last[reader] = time.monotonic()
        return await original_since(self, incarnation, cursor, 0.0, reader)

    FinishFeed.since = since  # type: ignore[method-assign]


@patch("cprofile-cpu")
def _cprofile_cpu() -> None:
    """Measures: cProfile with the thread's CPU clock on the event-loop thread of the API
    and of each host, for ``$SAGARAY_CPROFILE_SECONDS`` (default 15) from the first start,
    dumped to ``$SAGARAY_CPROFILE_DIR/cpu-<pid>.prof`` (default /tmp). Unlike py-spy's
    wall-clock samples, time a preempted thread waits is not counted; cProfile's own
    overhead inflates small, often-called functions."""
    import cProfile
    import time

    from coordinator.executions import ExecutionService
    from coordinator.host_core import HostCore

    folder = os.environ.get("SAGARAY_CPROFILE_DIR", "/tmp")
    seconds = float(os.environ.get("SAGARAY_CPROFILE_SECONDS", "15"))
    started: list[cProfile.Profile] = []

    def begin() -> None:
        if started:
            return
        profiler = cProfile.Profile(time.thread_time)
        started.append(profiler)
        profiler.enable()

        def end() -> None:
            profiler.disable()
            profiler.dump_stats(f"{folder}/cpu-{os.getpid()}.prof")

        asyncio.get_running_loop().call_later(seconds, end)

    def first(func):  # type: ignore[no-untyped-def]
        async def wrapper(*args, **kwargs):  # type: ignore[no-untyped-def]
            begin()
            return await func(*args, **kwargs)
        return wrapper

    ExecutionService.start = first(ExecutionService.start)  # type: ignore[method-assign]
    HostCore.start_many = first(HostCore.start_many)  # type: ignore[method-assign]


@patch("nop-exporter")
def _nop_exporter() -> None:
    """Measures: spans are built and queued as usual, but the exporter drops each batch
    (no encoding, no OTLP post). With ``--ab-tracing``, the difference is what the span
    processor's thread costs."""
    from opentelemetry.sdk.trace.export import SpanExportResult

    from coordinator.telemetry import otlp_encoding

    def export(self: Any, spans: Any) -> SpanExportResult:
        return SpanExportResult.SUCCESS

    otlp_encoding.BytesEncodingExporter.export = export  # type: ignore[method-assign]


@patch("cprofile-export")
def _cprofile_export() -> None:
    """Measures: cProfile with the thread's CPU clock around each OTLP export (the span
    processor's thread), dumped every 10 exports to ``$SAGARAY_CPROFILE_DIR/export-<pid>.prof``."""
    import cProfile
    import time

    from coordinator.telemetry import otlp_encoding

    folder = os.environ.get("SAGARAY_CPROFILE_DIR", "/tmp")
    profiler = cProfile.Profile(time.thread_time)
    calls = [0]
    original = otlp_encoding.BytesEncodingExporter.export

    def export(self: Any, spans: Any) -> Any:
        profiler.enable()
        try:
            return original(self, spans)
        finally:
            profiler.disable()
            calls[0] += 1
            if calls[0] % 10 == 0:
                profiler.dump_stats(f"{folder}/export-{os.getpid()}.prof")

    otlp_encoding.BytesEncodingExporter.export = export  # type: ignore[method-assign]
