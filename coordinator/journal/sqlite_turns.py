"""Turns at the write lock for the writers of one SQLite file, by ``flock`` on a side file.

The API and every host write one journal file, each from its own writer thread. SQLite
alone lets them race: a writer that finds the file locked sleeps in SQLite's busy
handler (1, 2, 5, 10, 15, 20 ms ...) while the lock may already be free, and a writer
that tries at the right moment overtakes it. At a few hundred starts a second that
put 35-55 ms into a start's p99. Waiting in ``flock`` instead, a writer is woken by the
kernel as the previous one lets go, and what queued meanwhile joins its batch.

The turn is a courtesy between our own writers, never what makes a write safe: every
transaction still takes SQLite's own lock (``BEGIN IMMEDIATE``). A writer that does not
take turns (another version, the ``sqlite3`` shell) is handled by SQLite as before; a
lost side file only costs speed.
"""

from __future__ import annotations

import fcntl
import logging
import os
import threading
from pathlib import Path

log = logging.getLogger(__name__)


def turns_path(journal: Path) -> Path:
    return journal.with_name(journal.name + "-writelock")


class WriterTurns:
    """One writer's turns, used by its writer thread only.

    ``acquire`` tries the lock without blocking first. When another writer holds it, a
    helper thread blocks in ``flock`` and the writer waits for it with a timeout, so a
    writer stuck holding its turn makes ours report the journal unavailable instead of
    hanging. A turn the helper gets after its writer stopped waiting is given back at
    once, so a writer that timed out and then went idle holds nobody up.
    """

    def __init__(self, fd: int, path: Path) -> None:
        self._fd = fd
        self._path = path
        self._mutex = threading.Lock()  # orders the writer's waiting against the helper's grant
        self._wanted = threading.Event()
        self._granted = threading.Event()
        self._asked = False  # the helper is blocked in flock (or about to be)
        self._waiting = False  # the writer waits for the helper's grant
        self._closing = False
        self._broken = False  # flock itself failed: go on without turns, as if none existed
        self._helper: threading.Thread | None = None
        self.waits = 0  # acquisitions that found the turn taken

    @classmethod
    def open(cls, journal: Path) -> WriterTurns | None:
        """Turns for ``journal``'s writers, or None (with a warning) if the side file fails."""
        path = turns_path(journal)
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            log.warning("SQLite journal %s: writers will not take turns (%s: %s); SQLite's "
                        "busy handler alone arbitrates its write lock", journal, path, exc)
            return None
        return cls(fd, path)

    def acquire(self, timeout: float) -> bool:
        """Take the turn; False if other writers kept it for ``timeout`` seconds."""
        with self._mutex:
            if self._broken:
                return True
            if not self._asked:
                try:
                    fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    return True
                except BlockingIOError:
                    self._ask_helper()
            self._waiting = True
            self.waits += 1
        self._granted.wait(timeout)
        with self._mutex:
            self._waiting = False
            if not self._granted.is_set():
                return False
            self._granted.clear()
            self._asked = False
            return True

    def release(self) -> None:
        if not self._broken:
            fcntl.flock(self._fd, fcntl.LOCK_UN)

    def close(self) -> None:
        """End the helper and close the file; a helper still blocked closes it when it wakes."""
        with self._mutex:
            self._closing = True
            helper_blocked = self._asked
            self._wanted.set()
        if helper_blocked:
            return
        if self._helper is not None:
            self._helper.join()
        os.close(self._fd)

    def _ask_helper(self) -> None:
        self._asked = True
        if self._helper is None:
            self._helper = threading.Thread(target=self._wait_for_turns, daemon=True,
                                            name="sagaray-journal-turns")
            self._helper.start()
        self._wanted.set()

    def _wait_for_turns(self) -> None:
        while True:
            self._wanted.wait()
            self._wanted.clear()
            with self._mutex:
                if self._closing:
                    return
            try:
                fcntl.flock(self._fd, fcntl.LOCK_EX)
            except OSError as exc:  # say, ENOLCK: SQLite's own lock still keeps writes safe
                log.warning("SQLite journal turns on %s failed (%s); writers go on without "
                            "them", self._path, exc)
                with self._mutex:
                    self._broken, self._asked = True, False
                    self._granted.set()
                return
            with self._mutex:
                if self._closing:
                    os.close(self._fd)  # lets the turn go with the file
                    return
                if self._waiting:
                    self._granted.set()
                else:
                    fcntl.flock(self._fd, fcntl.LOCK_UN)
                    self._asked = False


__all__ = ["WriterTurns", "turns_path"]
