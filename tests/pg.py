"""A throwaway PostgreSQL server for tests: initdb in a temp dir, a free port, torn down after.

``PgServer`` is plain blocking code (subprocesses): call it from sync fixtures, or
through ``asyncio.to_thread`` from async tests (e.g. ``await asyncio.to_thread(
server.restart)`` while load runs), so the event loop keeps serving the load.

PostgreSQL refuses to run as root, and the tests run as root in CI: then every
server command runs as the unprivileged ``postgres`` user, which the Debian
``postgresql-15`` package creates. The binaries are looked up in ``$SAGARAY_PG_BIN``,
then ``/usr/lib/postgresql/<newest>/bin``, then ``PATH``.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from blockbuster import BlockBuster

INSTALL_HINT = "install the server: apt-get install -y postgresql-15"
SERVER_USER = "postgres"  # only used when running as root
START_TIMEOUT = 30


def find_bin_dir() -> Path | None:
    """The directory holding initdb, pg_ctl and postgres, or None when not installed."""
    configured = os.environ.get("SAGARAY_PG_BIN")
    candidates = [Path(configured)] if configured else []
    versions = sorted(
        Path("/usr/lib/postgresql").glob("*/bin"),
        key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0,
        reverse=True,
    )
    candidates.extend(versions)
    on_path = shutil.which("initdb")
    if on_path:
        candidates.append(Path(on_path).resolve().parent)
    for directory in candidates:
        if all((directory / tool).is_file() for tool in ("initdb", "pg_ctl", "postgres")):
            return directory
    return None


def missing_reason() -> str | None:
    """Why a server cannot be started here, or None when it can."""
    if find_bin_dir() is None:
        return f"PostgreSQL server binaries (initdb, pg_ctl, postgres) not found; {INSTALL_HINT}"
    if os.geteuid() == 0:
        try:
            pwd.getpwnam(SERVER_USER)
        except KeyError:
            return (
                f"running as root, but there is no {SERVER_USER!r} user to run the server as;"
                f" {INSTALL_HINT} (it creates that user)"
            )
    return None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class PgServer:
    """One PostgreSQL cluster in a temp dir; ``url`` points at its ``postgres`` database."""

    def __init__(self, *, user: str = "sagaray", password: str | None = None) -> None:
        bin_dir = find_bin_dir()
        if bin_dir is None:
            raise RuntimeError(missing_reason())
        self.bin_dir = bin_dir
        self.user = user
        # Random, so that a test can check it never shows up in a message.
        self.password = password or "pw-" + secrets.token_hex(8)
        self.port = free_port()
        self.base = Path(tempfile.mkdtemp(prefix="sagaray-pg-"))
        self.data_dir = self.base / "data"
        self.log_file = self.base / "server.log"
        self._as_root = os.geteuid() == 0
        if self._as_root:
            owner = pwd.getpwnam(SERVER_USER)
            os.chown(self.base, owner.pw_uid, owner.pw_gid)
        self._initialized = False

    # -- addresses ------------------------------------------------------------

    @property
    def url(self) -> str:
        return self.url_for("postgres")

    def url_for(self, database: str) -> str:
        return f"postgresql://{self.user}:{self.password}@127.0.0.1:{self.port}/{database}"

    @property
    def pid(self) -> int | None:
        """The postmaster's pid while the server runs (first line of postmaster.pid)."""
        try:
            first = (self.data_dir / "postmaster.pid").read_text().split("\n", 1)[0]
        except FileNotFoundError:
            return None
        return int(first) if first.strip().isdigit() else None

    # -- lifecycle ------------------------------------------------------------

    def start(self) -> None:
        if not self._initialized:
            self._initdb()
        self._run(
            "pg_ctl",
            "-D",
            str(self.data_dir),
            "-l",
            str(self.log_file),
            "-w",
            "-t",
            str(START_TIMEOUT),
            "start",
        )

    def stop(self, mode: str = "fast") -> None:
        """Stop the server: ``fast`` (clean), or ``immediate`` (like a crash: recovery on start)."""
        if self.pid is None:
            return
        self._run("pg_ctl", "-D", str(self.data_dir), "-m", mode, "-w", "stop")

    def restart(self, mode: str = "fast") -> None:
        """Stop and start again on the same port, so clients can reconnect to the same URL."""
        self.stop(mode)
        self.start()

    def kill(self) -> None:
        """SIGKILL the postmaster only (its backends notice and exit); ``start`` recovers."""
        pid = self.pid
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    def cleanup(self) -> None:
        with contextlib.suppress(subprocess.CalledProcessError):
            self.stop("immediate")
        shutil.rmtree(self.base, ignore_errors=True)

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_file.read_text().splitlines()[-lines:])
        except FileNotFoundError:
            return "(no server log)"

    def _initdb(self) -> None:
        pwfile = self.base / "pwfile"
        pwfile.write_text(self.password + "\n")
        self._give_to_server_user(pwfile)
        try:
            self._run(
                "initdb",
                "-D",
                str(self.data_dir),
                "-U",
                self.user,
                f"--pwfile={pwfile}",
                # TCP clients prove the password, so tests see real authentication.
                "--auth-host=scram-sha-256",
                "--auth-local=trust",
                "-E",
                "UTF8",
                "--locale=C.UTF-8",
                # Only initdb's own final sync is skipped; the server runs with fsync=on.
                "--no-sync",
                "--no-instructions",
            )
        finally:
            pwfile.unlink(missing_ok=True)
        settings = {
            "listen_addresses": "'127.0.0.1'",
            "port": str(self.port),
            "unix_socket_directories": f"'{self.base}'",
            "fsync": "on",
            "synchronous_commit": "on",
            "max_connections": "200",
            "shared_buffers": "32MB",
        }
        with (self.data_dir / "postgresql.conf").open("a") as conf:
            conf.write("\n# tests/pg.py\n")
            conf.writelines(f"{name} = {value}\n" for name, value in settings.items())
        self._initialized = True

    def _give_to_server_user(self, path: Path) -> None:
        if self._as_root:
            owner = pwd.getpwnam(SERVER_USER)
            os.chown(path, owner.pw_uid, owner.pw_gid)

    def _run(self, tool: str, *args: str) -> None:
        command = [str(self.bin_dir / tool), *args]
        if self._as_root:
            command = ["runuser", "-u", SERVER_USER, "--", *command]
        done = subprocess.run(
            command,
            capture_output=True,
            text=True,
            timeout=START_TIMEOUT + 30,
            check=False,
            cwd=self.base,  # runuser keeps the cwd, which the server user may not be able to read
        )
        if done.returncode != 0:
            raise RuntimeError(
                f"{tool} failed ({done.returncode}): {done.stdout}{done.stderr}\n"
                f"server log:\n{self.log_tail()}"
            )


@contextlib.contextmanager
def running_server() -> Iterator[PgServer]:
    """A started server, stopped and deleted on exit; fails when none can start.

    ``make test`` installs PostgreSQL 15 when it is missing, so its absence is a
    broken set-up, never a reason to skip.
    """
    problem = missing_reason()
    if problem is not None:
        pytest.fail(f"the journal tests need PostgreSQL: {problem}", pytrace=False)
    server = PgServer()
    try:
        server.start()
        yield server
    finally:
        server.cleanup()


async def fresh_schema(server: PgServer) -> str:
    """Create an empty schema on ``server``; return a URL whose sessions use only it.

    A schema costs a millisecond where CREATE DATABASE costs 50-400 ms (it copies
    and fsyncs a template), and the journal only ever names its tables unqualified.
    """
    name = "t_" + secrets.token_hex(6)
    await _admin(server, f'CREATE SCHEMA "{name}"')
    return f"{server.url}?search_path={name}"


async def drop_schema(server: PgServer, url: str) -> None:
    name = url.rsplit("search_path=", 1)[1]
    await _admin(server, f'DROP SCHEMA IF EXISTS "{name}" CASCADE', quiet=True)


async def fresh_database(server: PgServer, icu_locale: str | None = None) -> str:
    """Create an empty database on ``server`` (optionally sorting text by an ICU locale)."""
    name = "t_" + secrets.token_hex(6)
    # template0 is never touched by tests, so every copy starts from the same state.
    sql = f'CREATE DATABASE "{name}" TEMPLATE template0'
    if icu_locale is not None:
        sql += f" LOCALE_PROVIDER icu ICU_LOCALE '{icu_locale}'"
    await _admin(server, sql)
    return server.url_for(name)


async def drop_database(server: PgServer, url: str) -> None:
    name = url.rsplit("/", 1)[1].split("?", 1)[0]
    await _admin(server, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)', quiet=True)


async def _admin(server: PgServer, sql: str, *, quiet: bool = False) -> None:
    """Run ``sql`` in the ``postgres`` database; ``quiet``: the server may be down (cleanup)."""
    import asyncpg

    try:
        admin = await asyncpg.connect(server.url)
        try:
            await admin.execute(sql)
        finally:
            await admin.close()
    except (OSError, asyncpg.PostgresError):
        if not quiet:
            raise


def allow_asyncpg_config_reads(guard: BlockBuster) -> None:
    """Let asyncpg read its client files (~/.pgpass, ~/.postgresql/*) when it connects.

    Parsing the connection parameters stats and reads those files inside
    ``asyncpg.connect``, before any I/O is awaited; there is no async variant. It
    happens once per new pool connection (at most ``max_size``, on open and after a
    reconnect), not per query, so the tests tolerate it rather than fail on it.
    """
    for function in guard.functions.values():
        function.can_block_in("asyncpg/connect_utils.py", "_parse_connect_dsn_and_args")


# -- fixtures (imported by the conftest that uses them) -------------------------


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    """One server for the whole session; tests isolate themselves by database (``pg_url``)."""
    with running_server() as server:
        yield server


@pytest.fixture
async def pg_url(pg_server: PgServer) -> AsyncIterator[str]:
    """The URL of an empty schema of its own on ``pg_server``, dropped after the test."""
    url = await fresh_schema(pg_server)
    yield url
    await drop_schema(pg_server, url)
