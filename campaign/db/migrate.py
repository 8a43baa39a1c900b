"""Schema migrations: plain `NNNN_name.sql` files, applied in order, each once.

Each migration runs in its own transaction together with the row that records it in
`schema_migrations`, so a migration is either fully applied and recorded or not at all.
The whole run holds a session-level advisory lock: several daemons starting at once
queue up on it, and the ones that get it late find nothing left to do.

Rules for migration files: no transaction control (`BEGIN`/`COMMIT`) and nothing that
cannot run inside a transaction (`CREATE INDEX CONCURRENTLY`, `VACUUM`). An applied file
is never edited: its checksum is recorded, and a changed file stops the program; put the
change in a new file.
"""

from __future__ import annotations

import hashlib
import re
import time
from dataclasses import dataclass
from importlib.resources import files
from importlib.resources.abc import Traversable
from typing import TYPE_CHECKING, TypeAlias

import asyncpg
import structlog

if TYPE_CHECKING:
    from asyncpg.pool import PoolConnectionProxy

    Conn: TypeAlias = asyncpg.Connection[asyncpg.Record] | PoolConnectionProxy[asyncpg.Record]

MIGRATIONS_DIR: Traversable = files("campaign") / "migrations"
"""The package's `migrations`, the default source: in a checkout (an editable install) a
symlink to the top-level `migrations/` directory, in an installed wheel its copy."""

LOCK_KEY = 0x63616D706169676E
"""Advisory lock key for migration runs: the bytes of "campaign" as a big-endian bigint.

Fixed, so every process (any version, any host) serialises on the same lock, and
unusual, so it does not collide with advisory locks other applications take.
"""

_FILE_NAME = re.compile(r"(\d{4,})_(\w[\w-]*)\.sql", re.ASCII)

_CREATE_TABLE = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version    int PRIMARY KEY,
    name       text NOT NULL,
    checksum   text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
)
"""
_TABLE_EXISTS = "SELECT to_regclass('schema_migrations') IS NOT NULL"
_SELECT_APPLIED = "SELECT version, name, checksum FROM schema_migrations ORDER BY version"
_INSERT_APPLIED = "INSERT INTO schema_migrations (version, name, checksum) VALUES ($1, $2, $3)"
_LOCK = "SELECT pg_advisory_lock($1)"
_UNLOCK = "SELECT pg_advisory_unlock($1)"


class MigrationError(Exception):
    """The migrations cannot be applied; the message names the file and what to do."""


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    """The file name, e.g. `0001_schema.sql`; recorded in schema_migrations.name."""
    sql: str
    checksum: str
    """sha256 of the file's text with CRLF line ends folded to LF."""


@dataclass(frozen=True)
class AppliedMigration:
    version: int
    name: str
    checksum: str


@dataclass(frozen=True)
class MigrationStatus:
    applied: list[str]
    pending: list[str]
    database_version: int
    """Highest applied version; 0 for a database never migrated."""
    latest_version: int
    """Highest version among the files; 0 when there are none."""


def _checksum(sql: str) -> str:
    # Fold line ends so a checkout with git's autocrlf does not look like an edit.
    return hashlib.sha256(sql.replace("\r\n", "\n").encode("utf-8")).hexdigest()


def load_migrations(directory: Traversable | None = None) -> list[Migration]:
    """The migration files of `directory` (default MIGRATIONS_DIR) in version order.

    Files not ending in `.sql` (a README, `.gitkeep`) and hidden files are ignored; a
    `.sql` file with a malformed name, or two files with one number, is an error.
    """
    source = MIGRATIONS_DIR if directory is None else directory
    if not source.is_dir():
        raise MigrationError(f"migrations directory not found: {source}")
    by_version: dict[int, Migration] = {}
    for path in sorted(source.iterdir(), key=lambda p: p.name):
        if path.name.startswith(".") or not path.name.lower().endswith(".sql"):
            continue
        if not path.is_file():
            continue
        match = _FILE_NAME.fullmatch(path.name)
        if match is None:
            raise MigrationError(
                f"malformed migration file name {path.name!r} in {source}: "
                "expected NNNN_name.sql (digits, underscore, letters/digits/_/-)"
            )
        version = int(match.group(1))
        if version < 1:
            raise MigrationError(f"migration {path.name}: numbers start at 0001")
        if version in by_version:
            raise MigrationError(
                f"duplicate migration number {version}: "
                f"{by_version[version].name} and {path.name} in {source}"
            )
        try:
            sql = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise MigrationError(f"cannot read migration {path}: {exc}") from exc
        by_version[version] = Migration(version, path.name, sql, _checksum(sql))
    return [by_version[v] for v in sorted(by_version)]


async def _applied(conn: Conn) -> list[AppliedMigration]:
    rows = await conn.fetch(_SELECT_APPLIED)
    return [AppliedMigration(row["version"], row["name"], row["checksum"]) for row in rows]


def _plan(migrations: list[Migration], applied: list[AppliedMigration]) -> list[Migration]:
    """The migrations still to apply, after checking the database against the files."""
    by_version = {m.version: m for m in migrations}
    latest = max(by_version, default=0)
    current = max((a.version for a in applied), default=0)
    if current > latest:
        raise MigrationError(
            f"database is at version {current}, this program knows up to {latest}: "
            "upgrade the program"
        )
    for row in applied:
        found = by_version.get(row.version)
        if found is None:
            raise MigrationError(
                f"migration {row.name} is recorded as applied but has no file: "
                "restore it (applied migrations are never removed)"
            )
        if found.checksum != row.checksum:
            raise MigrationError(
                f"migration {found.name} was changed after it was applied: "
                "restore it and put the change in a new migration"
            )
    done = {a.version for a in applied}
    todo = [m for m in migrations if m.version not in done]
    for m in todo:
        if m.version < current:
            # Applying it now would run it after migrations written without it in mind.
            raise MigrationError(
                f"migration {m.name} is not applied but the database is already at "
                f"version {current}: renumber it after {latest}"
            )
    return todo


def _failure(migration: Migration, exc: asyncpg.PostgresError) -> MigrationError:
    where = ""
    position = getattr(exc, "position", None)
    if position:
        # PostgreSQL reports a 1-based character offset into the file's text.
        line = migration.sql[: int(position) - 1].count("\n") + 1
        where = f" at line {line}"
    message = " ".join(str(exc).split())
    return MigrationError(
        f"migration {migration.name} failed{where}: {message} "
        f"(SQLSTATE {exc.sqlstate}); it was rolled back"
    )


async def migrate(conn: Conn, directory: Traversable | None = None) -> list[str]:
    """Apply the pending migrations of `directory` (default MIGRATIONS_DIR); their names.

    An empty list means the database was up to date. Safe to run from several processes
    at once: they serialise on an advisory lock and each migration is applied once.
    Raises MigrationError when a file is malformed, edited after being applied, or
    fails (it is rolled back; earlier ones stay applied), or when the database is newer
    than the files. Waiting for the lock counts against the connection's
    `command_timeout`: use a connection without one (`connect(dsn, command_timeout=None)`).
    If this raises for another reason (connection lost, cancelled), close the connection:
    that releases the lock in every case.
    """
    migrations = load_migrations(directory)
    if conn.is_in_transaction():
        # The lock would be released before the caller's commit, letting another process
        # apply the same migrations meanwhile.
        raise RuntimeError("migrate() must be called outside a transaction")
    log = structlog.get_logger("campaign.db")
    applied_now: list[str] = []
    try:
        await conn.execute(_LOCK, LOCK_KEY)
        # Created under the lock: concurrent CREATE TABLE IF NOT EXISTS can still collide.
        await conn.execute(_CREATE_TABLE)
        # Read after taking the lock: whoever held it may have applied everything.
        todo = _plan(migrations, await _applied(conn))
        for migration in todo:
            started = time.monotonic()
            try:
                async with conn.transaction():
                    await conn.execute(migration.sql)
                    await conn.execute(
                        _INSERT_APPLIED, migration.version, migration.name, migration.checksum
                    )
            except asyncpg.PostgresError as exc:
                raise _failure(migration, exc) from exc
            applied_now.append(migration.name)
            log.info(
                "migration_applied",
                migration=migration.name,
                seconds=round(time.monotonic() - started, 3),
            )
    finally:
        if not conn.is_closed():
            try:
                await conn.execute(_UNLOCK, LOCK_KEY)
            except BaseException as exc:
                # Not unlocked (a dead connection, a cancellation): end the session, which
                # ends the lock, rather than hand a locked connection back to a pool (its
                # release does not reset session state: db/pool.py). The error that got
                # us here, if any, is the one worth reporting.
                conn.terminate()
                if not isinstance(exc, asyncpg.PostgresError | asyncpg.InterfaceError | OSError):
                    raise
    return applied_now


async def status(conn: Conn, directory: Traversable | None = None) -> MigrationStatus:
    """Applied and pending migrations; creates nothing (works before the first migrate).

    Raises MigrationError on the same inconsistencies as `migrate`.
    """
    migrations = load_migrations(directory)
    applied: list[AppliedMigration] = []
    if await conn.fetchval(_TABLE_EXISTS):
        applied = await _applied(conn)
    todo = _plan(migrations, applied)
    return MigrationStatus(
        applied=[a.name for a in applied],
        pending=[m.name for m in todo],
        database_version=max((a.version for a in applied), default=0),
        latest_version=max((m.version for m in migrations), default=0),
    )


async def pending(conn: Conn, directory: Traversable | None = None) -> list[str]:
    """Names of the migrations not yet applied; creates nothing.

    Raises MigrationError on the same inconsistencies as `migrate`.
    """
    return (await status(conn, directory)).pending
