"""Connections to PostgreSQL: the DSN (configured or embedded), the pool, single connections.

Every connection made here decodes and encodes `json`/`jsonb` as Python objects, so the
rest of the code never calls `json.loads` on a column.

Embedded PostgreSQL (an empty `database.dsn`) lives under `database.data_dir`, in the
`postgres` subdirectory, and is reused by every run and every process pointing at that
directory. Two ways to get its DSN, both keyed on pgserver's own per-process handle
count (no state is kept here):

* `database_dsn(db)` - an async context manager; the server handle is held while the
  block runs. On exit the handle is released, and the server is stopped if no other
  holder (in this process or another process) remains. This is what long-running
  commands should use: shutdown is deterministic.
* `resolve_dsn(db)` - returns the DSN and keeps the handle for the rest of the process;
  pgserver's `atexit` hook releases it (stopping the server when this was the last
  process using it). Handy for one-shot commands and scripts.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import warnings
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

import asyncpg
import structlog

from campaign.db.dsn import UNKNOWN, describe_dsn, is_uri
from campaign.redact import Scrubber
from campaign.settings import DatabaseSettings

DEFAULT_COMMAND_TIMEOUT = 30.0
"""Seconds before a statement on a pooled connection is abandoned (client side)."""
DEFAULT_CONNECT_TIMEOUT = 10.0
"""Seconds to wait for a connection; an unreachable server should fail fast and loudly."""
DEFAULT_CLOSE_TIMEOUT = 5.0
"""Seconds `open_pool` waits for connections to be released before terminating them."""
EMBEDDED_SUBDIR = "postgres"
"""The cluster lives in a subdirectory so data_dir can hold other files (initdb wants it empty)."""
APPLICATION_NAME = "campaign"

# Linux's sockaddr_un.sun_path is 108 bytes including the terminating NUL.
_MAX_SOCKET_PATH = 107
_SOCKET_NAME = ".s.PGSQL.5432"

# Connection failures that mean "the database is not there for us", as opposed to bugs.
# ClientConfigurationError (a malformed DSN) is both an InterfaceError and a ValueError.
_CONNECT_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    OverflowError,  # a port number out of range reaches socket.connect()
    TimeoutError,
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    ValueError,
)


class DatabaseUnavailable(Exception):
    """PostgreSQL cannot be reached or started; the message is one line with no secrets."""


# --- error messages -----------------------------------------------------------------------


def _reason(exc: BaseException, dsn: str) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    # Drivers echo the piece of a DSN they could not parse (asyncpg quotes a "port"
    # that is really half a password): scrub every reading of the password.
    return Scrubber.for_dsn(dsn)(text)


def _unavailable(dsn: str, exc: BaseException) -> DatabaseUnavailable:
    where = describe_dsn(dsn)
    reason = _reason(exc, dsn)
    if isinstance(exc, ValueError) and not is_uri(dsn):
        reason += (
            "; database.dsn must be a postgresql:// URI (asyncpg does not read the "
            "keyword=value form)"
        )
    elif isinstance(exc, ValueError) and where == UNKNOWN:
        # The driver choked on the DSN and quotes the piece it could not read: with a
        # password that is not percent-encoded, that piece is part of the password.
        reason = (
            f"database.dsn cannot be read ({type(exc).__name__}): characters such as "
            "/ # ? @ : in a URI password must be percent-encoded"
        )
    return DatabaseUnavailable(f"cannot reach PostgreSQL at {where}: {reason}")


# --- connections and the pool -------------------------------------------------------------


def _encode_json(value: Any) -> str:
    # Compact and non-ASCII preserving: these values are stored, not displayed.
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


async def _set_codecs(conn: asyncpg.Connection[asyncpg.Record]) -> None:
    for typename in ("json", "jsonb"):
        await conn.set_type_codec(
            typename,
            schema="pg_catalog",
            encoder=_encode_json,
            decoder=json.loads,
            format="text",
        )


async def _keep_session(conn: asyncpg.Connection[asyncpg.Record]) -> None:
    """What a connection going back to the pool needs beyond asyncpg's own clean-up
    (which rolls back an open transaction and drops listeners): nothing.

    asyncpg's default sends "SELECT pg_advisory_unlock_all(); CLOSE ALL; UNLISTEN *;
    RESET ALL" on every release: a round trip and a transaction per acquire, a sixth
    of the daemon's transactions with many small campaigns. Nothing here leaves
    session state on a pooled connection: settings are SET LOCAL, cursors live in
    transactions, LISTEN has its own connection, and the one session lock (the
    migration's) is released by the code that takes it.
    """


async def connect(
    dsn: str,
    *,
    command_timeout: float | None = DEFAULT_COMMAND_TIMEOUT,
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
    writable: bool = False,
) -> asyncpg.Connection[asyncpg.Record]:
    """One connection with the json/jsonb codecs (e.g. the dedicated LISTEN connection).

    Pass `command_timeout=None` for a connection that runs migrations: a migration may
    legitimately wait on the migration lock or build an index for minutes. With
    `writable`, only a server that accepts writes will do (see open_pool).
    Raises DatabaseUnavailable when the server cannot be reached.
    """
    try:
        conn: asyncpg.Connection[asyncpg.Record] = await asyncpg.connect(
            dsn,
            timeout=connect_timeout,
            command_timeout=command_timeout,
            server_settings={"application_name": APPLICATION_NAME},
            **_session_attrs(writable),
        )
    except _CONNECT_ERRORS as exc:
        raise _unavailable(dsn, exc) from exc
    try:
        await _set_codecs(conn)
    except BaseException:
        # Also on cancellation: a half-set-up connection must not outlive this call.
        conn.terminate()
        raise
    return conn


def _session_attrs(writable: bool) -> dict[str, Any]:
    return {"target_session_attrs": "read-write"} if writable else {}


async def _close_bounded(pool: asyncpg.Pool[asyncpg.Record], grace: float) -> None:
    try:
        async with asyncio.timeout(grace):
            await pool.close()
    except TimeoutError:
        # A connection still checked out (or a server that stopped answering) would make
        # close() wait forever; shutdown must finish, so cut the sockets.
        structlog.get_logger("campaign.db").warning("db_pool_close_timeout", seconds=grace)
        pool.terminate()
    except BaseException:
        pool.terminate()
        raise


@asynccontextmanager
async def open_pool(
    dsn: str,
    *,
    min_size: int = 2,
    max_size: int = 10,
    command_timeout: float | None = DEFAULT_COMMAND_TIMEOUT,
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
    close_timeout: float = DEFAULT_CLOSE_TIMEOUT,
    writable: bool = False,
) -> AsyncIterator[asyncpg.Pool[asyncpg.Record]]:
    """An asyncpg pool with the json/jsonb codecs, closed on exit within `close_timeout`.

    Raises DatabaseUnavailable when the first connections cannot be made. After
    `close_timeout` seconds waiting for connections to come back, the pool is
    terminated, so leaving the block never hangs. With `writable` (the daemon),
    a new connection is refused by a server that does not accept writes (a
    standby, or the old primary after a failover), and with several hosts in the
    DSN the writable one is found.
    """
    try:
        pool: asyncpg.Pool[asyncpg.Record] = await asyncpg.create_pool(
            dsn,
            min_size=min_size,
            max_size=max_size,
            init=_set_codecs,
            reset=_keep_session,
            timeout=connect_timeout,
            command_timeout=command_timeout,
            server_settings={"application_name": APPLICATION_NAME},
            **_session_attrs(writable),
        )
    except _CONNECT_ERRORS as exc:
        raise _unavailable(dsn, exc) from exc
    try:
        yield pool
    finally:
        await _close_bounded(pool, close_timeout)


# --- embedded PostgreSQL ------------------------------------------------------------------


def _pgdata(db: DatabaseSettings) -> Path:
    return (db.data_dir.expanduser().resolve()) / EMBEDDED_SUBDIR


class _ServerChatter(logging.Filter):
    """pgserver's info lines (initdb and pg_ctl runs and their output, about fourteen lines
    per command) are detail of our own start-up: they count as debug, shown only at
    `logging.level = "debug"`. Its warnings and errors (a server that failed to start,
    with its log) pass as they are.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno > logging.INFO:
            return True
        record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        # Judged at emit time against the configured level, so that a command that
        # configures logging after importing this module is still obeyed.
        return logging.getLogger().isEnabledFor(logging.DEBUG)


_PGSERVER_LOGGER = logging.getLogger("pgserver")


def _quiet_pgserver() -> None:
    if not any(isinstance(f, _ServerChatter) for f in _PGSERVER_LOGGER.filters):
        _PGSERVER_LOGGER.addFilter(_ServerChatter())


def _start_embedded(pgdata: Path) -> Any:
    """Start (or attach to) the cluster in `pgdata`; blocking, run it in a thread."""
    _quiet_pgserver()
    try:
        pgdata.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DatabaseUnavailable(
            f"cannot create the embedded PostgreSQL directory {pgdata.parent}: {exc.strerror}"
        ) from exc
    with warnings.catch_warnings():
        # platformdirs warns at pgserver's import when XDG_RUNTIME_DIR is unset (daemons,
        # containers); it then falls back to a private directory under /tmp, which is fine.
        # Imported here, not at the top: a deployment with a DSN never needs pgserver.
        warnings.simplefilter("ignore", UserWarning)
        from pgserver.postgres_server import get_server
    try:
        # Any: pgserver's context-manager methods and lock are untyped.
        server: Any = get_server(pgdata, cleanup_mode="stop")
        with server._lock:
            # pgserver drops this process from the server's list of users when a handle is
            # released while another process still uses the server, and does not add it
            # back when the same process asks again; without this, that other process
            # would stop the server under us when it exits.
            server.global_process_id_list.get_and_add(os.getpid())
        # Count a handle of ours in pgserver's per-process counter (see database_dsn).
        server.__enter__()
    except Exception as exc:
        reason = " ".join(str(exc).split()) or type(exc).__name__
        if "suitable socket path" in reason:
            # pgserver puts the socket in pgdata, else in a runtime directory; both too long.
            reason = (
                f"no unix-socket path of at most {_MAX_SOCKET_PATH} bytes is available "
                f"(tried {pgdata / _SOCKET_NAME}, {len(str(pgdata / _SOCKET_NAME))} bytes): "
                "use a shorter database.data_dir or set XDG_RUNTIME_DIR to a short directory"
            )
        elif (pgdata / "log").is_file():
            reason += f" (server log: {pgdata / 'log'})"
        raise DatabaseUnavailable(
            f"cannot start embedded PostgreSQL in {pgdata}: {reason}"
        ) from exc
    return server


def _embedded_uri(server: Any, db: DatabaseSettings) -> str:
    uri = str(server.get_uri())
    return dsn_with_database(uri, db.embedded_database) if db.embedded_database else uri


def _release_embedded(server: Any) -> None:
    # pgserver stops the server once the last handle of the last process is released.
    server.__exit__(None, None, None)


async def resolve_dsn(db: DatabaseSettings) -> str:
    """The configured DSN, else that of the embedded PostgreSQL under `db.data_dir`.

    The embedded server is started if it is not running (the data directory is created
    on first use and reused afterwards: same directory, same data). The handle taken
    here is kept until the process exits; see the module docstring, and prefer
    `database_dsn` when the caller has a natural scope.
    Raises DatabaseUnavailable with one line when the server cannot be started.
    """
    configured = db.dsn.get_secret_value()
    if configured:
        return configured
    server = await asyncio.to_thread(_start_embedded, _pgdata(db))
    return _embedded_uri(server, db)


@asynccontextmanager
async def database_dsn(db: DatabaseSettings) -> AsyncIterator[str]:
    """The DSN to use while the block runs: the configured one, else the embedded server's.

    With an embedded server, the block holds a handle on it; on exit the handle is
    released and the server is stopped unless someone else still holds it (another
    `database_dsn` block or a `resolve_dsn` call in this process, or another process).
    """
    configured = db.dsn.get_secret_value()
    if configured:
        yield configured
        return
    server = await asyncio.to_thread(_start_embedded, _pgdata(db))
    try:
        yield _embedded_uri(server, db)
    finally:
        # Even if this await is cancelled, the thread runs on and stops the server.
        await asyncio.to_thread(_release_embedded, server)


def dsn_with_database(dsn: str, database: str) -> str:
    """`dsn` pointing at `database`, for both `user:pw@host:port/db` and `/db?host=/dir` forms."""
    parts = urlsplit(dsn)
    # A database named in the query would override the path; drop it.
    query = [(k, v) for k, v in parse_qsl(parts.query) if k not in {"dbname", "database"}]
    return urlunsplit(
        (
            parts.scheme,
            parts.netloc,
            "/" + quote(database, safe=""),
            urlencode(query, safe="/"),
            parts.fragment,
        )
    )
