"""Pick a journal store from a URL (``--journal`` / ``SAGARAY_JOURNAL``).

- ``sqlite:///relative/path.db`` and ``sqlite:////abs/path.db`` (SQLAlchemy style),
  optionally with ``?batch_window=0.002&busy_timeout=10``;
- a bare filesystem path, e.g. ``.sagaray/journal.db``;
- ``postgresql://user:password@host:port/dbname`` (or ``postgres://``), optionally with
  ``?max_size=10&min_size=1&batch_window=0&connect_timeout=10&command_timeout=30``;
  any other query parameter goes to asyncpg/libpq (``sslmode=require``) or, when
  neither knows it, to the server as a session setting.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

from coordinator.journal.base import Journal, JournalError
from coordinator.journal.postgres import PostgresJournal
from coordinator.journal.sqlite import SQLiteJournal

_SQLITE_PREFIX = "sqlite:///"
_SQLITE_OPTIONS = frozenset({"batch_window", "busy_timeout"})
_POSTGRES_OPTIONS: dict[str, type[int] | type[float]] = {
    "min_size": int,
    "max_size": int,
    "batch_window": float,
    "connect_timeout": float,
    "command_timeout": float,
}


class UnsupportedJournal(JournalError, NotImplementedError):
    """The URL names a store this build cannot open yet."""


def journal_from_url(url: str) -> Journal:
    """Build (but do not open) the journal that ``url`` names; touches no file or network."""
    looks_like_url = "://" in url or url.lower().startswith("sqlite:")
    scheme = urlsplit(url).scheme.lower() if looks_like_url else ""
    if not scheme:
        return _sqlite_journal(Path(url).expanduser(), {})
    builder = _STORES.get(scheme)
    if builder is None:
        raise ValueError(f"unknown journal URL scheme {scheme!r} in {_redact(url)!r}")
    return builder(url)


def _sqlite_from_url(url: str) -> Journal:
    if not url.startswith(_SQLITE_PREFIX):
        raise ValueError(
            f"SQLite journal URL {url!r} must look like sqlite:///relative/path.db"
            " or sqlite:////absolute/path.db"
        )
    rest, _, query = url[len(_SQLITE_PREFIX) :].partition("?")
    if not rest or rest == ":memory:":
        # Writer and readers use separate connections, which cannot share a memory DB.
        raise ValueError(f"SQLite journal URL {url!r} must name a file")
    return _sqlite_journal(Path(rest).expanduser(), _sqlite_options(url, query))


def _sqlite_options(url: str, query: str) -> dict[str, float]:
    options: dict[str, float] = {}
    for name, value in parse_qsl(query, keep_blank_values=True, strict_parsing=bool(query)):
        if name not in _SQLITE_OPTIONS:
            raise ValueError(
                f"unknown option {name!r} in journal URL {url!r};"
                f" known: {', '.join(sorted(_SQLITE_OPTIONS))}"
            )
        try:
            options[name] = float(value)
        except ValueError as exc:
            raise ValueError(f"option {name!r} in journal URL {url!r} is not a number") from exc
    return options


def _sqlite_journal(path: Path, options: dict[str, float]) -> SQLiteJournal:
    # The parent directories are created by open(), off the event loop.
    return SQLiteJournal(
        path,
        batch_window=options.get("batch_window", 0.0),
        busy_timeout=options.get("busy_timeout", 10.0),
        create_parent=True,
    )


def _postgres_journal(url: str) -> Journal:
    parts = urlsplit(url)
    options: dict[str, Any] = {}
    passed_on: list[tuple[str, str]] = []
    for name, value in parse_qsl(parts.query, keep_blank_values=True):
        kind = _POSTGRES_OPTIONS.get(name)
        if kind is None:
            passed_on.append((name, value))
            continue
        try:
            options[name] = kind(value)
        except ValueError as exc:
            expected = "an integer" if kind is int else "a number"
            raise ValueError(
                f"option {name!r} in journal URL {_redact(url)!r} is not {expected}"
            ) from exc
    # asyncpg knows postgresql:// and postgres:// alike; our own options are not its business.
    dsn = parts._replace(query=urlencode(passed_on)).geturl()
    return PostgresJournal(dsn, **options)


def _redact(url: str) -> str:
    """The URL without its password, fit for error messages and logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return parts._replace(netloc=netloc).geturl()


_STORES: dict[str, Callable[[str], Journal]] = {
    "sqlite": _sqlite_from_url,
    "postgresql": _postgres_journal,
    "postgres": _postgres_journal,
}
