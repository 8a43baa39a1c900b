"""The migration runner, the pool helpers and the embedded server, on a real PostgreSQL."""

from __future__ import annotations

import asyncio
import hashlib
import subprocess
import sys
import textwrap
import time
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest
from pydantic import SecretStr
from structlog.testing import capture_logs

from campaign.db.migrate import (
    LOCK_KEY,
    MIGRATIONS_DIR,
    MigrationError,
    load_migrations,
    migrate,
    pending,
    status,
)
from campaign.db.pool import (
    DatabaseUnavailable,
    connect,
    database_dsn,
    describe_dsn,
    dsn_with_database,
    open_pool,
    resolve_dsn,
)
from campaign.settings import DatabaseSettings
from tests.helpers import events

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
async def conn(empty_dsn: str) -> AsyncIterator[asyncpg.Connection[asyncpg.Record]]:
    c = await connect(empty_dsn, command_timeout=None)
    try:
        yield c
    finally:
        await c.close()


def write(directory: Path, files: dict[str, str]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for name, sql in files.items():
        (directory / name).write_text(sql, encoding="utf-8")
    return directory


THREE = {
    # Deliberately written out of order and with a gap: order is numeric, not listing order.
    "0010_c.sql": "INSERT INTO t (step) VALUES ('c');",
    "0001_a.sql": "CREATE TABLE t (step text NOT NULL);",
    "0002_b.sql": "INSERT INTO t (step) VALUES ('b');\nINSERT INTO t (step) VALUES ('b2');",
}
THREE_NAMES = ["0001_a.sql", "0002_b.sql", "0010_c.sql"]


async def test_applies_in_order_and_records(
    tmp_path: Path, conn: asyncpg.Connection[asyncpg.Record]
) -> None:
    directory = write(tmp_path / "m", THREE)

    assert await migrate(conn, directory) == THREE_NAMES

    assert [r["step"] for r in await conn.fetch("SELECT step FROM t")] == ["b", "b2", "c"]
    rows = await conn.fetch("SELECT * FROM schema_migrations ORDER BY version")
    assert [(r["version"], r["name"]) for r in rows] == [
        (1, "0001_a.sql"),
        (2, "0002_b.sql"),
        (10, "0010_c.sql"),
    ]
    assert rows[0]["checksum"] == hashlib.sha256(THREE["0001_a.sql"].encode()).hexdigest()
    assert all(r["applied_at"] is not None for r in rows)


async def test_second_run_is_a_noop(
    tmp_path: Path, conn: asyncpg.Connection[asyncpg.Record]
) -> None:
    directory = write(tmp_path / "m", THREE)
    await migrate(conn, directory)

    assert await migrate(conn, directory) == []
    assert await pending(conn, directory) == []
    assert await conn.fetchval("SELECT count(*) FROM t") == 3


async def test_new_file_is_applied_later(
    tmp_path: Path, conn: asyncpg.Connection[asyncpg.Record]
) -> None:
    directory = write(tmp_path / "m", THREE)
    await migrate(conn, directory)
    write(directory, {"0011_d.sql": "INSERT INTO t (step) VALUES ('d');"})

    assert await pending(conn, directory) == ["0011_d.sql"]
    assert await migrate(conn, directory) == ["0011_d.sql"]


async def test_concurrent_runs_apply_each_file_once(tmp_path: Path, empty_dsn: str) -> None:
    directory = write(
        tmp_path / "m",
        {
            # The sleep keeps the first runner inside the lock while the second arrives.
            "0001_log.sql": "CREATE TABLE log (name text); SELECT pg_sleep(0.3);"
            " INSERT INTO log VALUES ('0001');",
            "0002_more.sql": "INSERT INTO log VALUES ('0002');",
        },
    )
    first = await connect(empty_dsn, command_timeout=None)
    second = await connect(empty_dsn, command_timeout=None)
    try:
        results = await asyncio.gather(migrate(first, directory), migrate(second, directory))
        counts = await first.fetch("SELECT name, count(*) AS n FROM log GROUP BY name")
    finally:
        await first.close()
        await second.close()

    # One runner did everything; the other waited for the lock and found nothing to do.
    assert sorted(results, key=len) == [[], ["0001_log.sql", "0002_more.sql"]]
    assert {r["name"]: r["n"] for r in counts} == {"0001": 1, "0002": 1}


async def test_failing_migration_rolls_back_alone(
    tmp_path: Path, conn: asyncpg.Connection[asyncpg.Record], empty_dsn: str
) -> None:
    directory = write(
        tmp_path / "m",
        {
            "0001_ok.sql": "CREATE TABLE ok (x int);",
            "0002_bad.sql": "CREATE TABLE half (x int);\n\nSELECT nope FROM nowhere;\n",
            "0003_after.sql": "CREATE TABLE after (x int);",
        },
    )

    with pytest.raises(MigrationError, match=r"0002_bad\.sql failed at line 3: .*nowhere"):
        await migrate(conn, directory)

    assert await conn.fetchval("SELECT array_agg(version) FROM schema_migrations") == [1]
    assert await conn.fetchval("SELECT to_regclass('ok') IS NOT NULL")
    assert await conn.fetchval("SELECT to_regclass('half') IS NULL")
    assert await conn.fetchval("SELECT to_regclass('after') IS NULL")
    # The lock was released: another session can take it.
    other = await connect(empty_dsn)
    try:
        assert await other.fetchval("SELECT pg_try_advisory_lock($1)", LOCK_KEY)
        await other.execute("SELECT pg_advisory_unlock($1)", LOCK_KEY)
    finally:
        await other.close()

    write(directory, {"0002_bad.sql": "CREATE TABLE half (x int);\n"})
    assert await migrate(conn, directory) == ["0002_bad.sql", "0003_after.sql"]


async def test_edited_applied_migration_is_refused(
    tmp_path: Path, conn: asyncpg.Connection[asyncpg.Record]
) -> None:
    directory = write(tmp_path / "m", THREE)
    await migrate(conn, directory)
    # The same text with Windows line ends is not an edit.
    (directory / "0002_b.sql").write_bytes(THREE["0002_b.sql"].replace("\n", "\r\n").encode())
    assert await migrate(conn, directory) == []

    write(directory, {"0001_a.sql": "CREATE TABLE t (step text);"})
    with pytest.raises(MigrationError, match=r"0001_a\.sql was changed after it was applied"):
        await migrate(conn, directory)
    with pytest.raises(MigrationError, match=r"0001_a\.sql was changed"):
        await pending(conn, directory)


async def test_database_newer_than_files_is_refused(
    tmp_path: Path, conn: asyncpg.Connection[asyncpg.Record]
) -> None:
    await migrate(conn, write(tmp_path / "new", THREE))
    old = write(tmp_path / "old", {"0001_a.sql": THREE["0001_a.sql"]})

    message = "database is at version 10, this program knows up to 1: upgrade the program"
    with pytest.raises(MigrationError, match=message):
        await migrate(conn, old)
    with pytest.raises(MigrationError, match=message):
        await status(conn, old)


async def test_unapplied_older_number_is_refused(
    tmp_path: Path, conn: asyncpg.Connection[asyncpg.Record]
) -> None:
    directory = write(tmp_path / "m", {"0001_a.sql": "SELECT 1;", "0003_c.sql": "SELECT 3;"})
    await migrate(conn, directory)
    write(directory, {"0002_b.sql": "SELECT 2;"})

    with pytest.raises(MigrationError, match=r"0002_b\.sql is not applied .* version 3"):
        await migrate(conn, directory)


@pytest.mark.parametrize(
    "name",
    ["1_short.sql", "0001-dash.sql", "0001_.sql", "abcd_x.sql", "0001_x.SQL", "0001 x.sql"],
)
def test_malformed_file_name_is_refused(tmp_path: Path, name: str) -> None:
    directory = write(tmp_path / "m", {"0001_a.sql": "SELECT 1;", name: "SELECT 2;"})

    with pytest.raises(MigrationError, match="malformed migration file name"):
        load_migrations(directory)


def test_duplicate_number_is_refused(tmp_path: Path) -> None:
    # Two spellings of one number.
    directory = write(tmp_path / "m", {"0001_a.sql": "SELECT 1;", "00001_b.sql": "SELECT 2;"})

    with pytest.raises(
        MigrationError, match=r"duplicate migration number 1: 00001_b\.sql and 0001_a\.sql"
    ):
        load_migrations(directory)


def test_other_files_are_ignored(tmp_path: Path) -> None:
    directory = write(
        tmp_path / "m",
        {"README.md": "notes", ".gitkeep": "", "0002_b.sql": "", "0001_a.sql": ""},
    )
    (directory / "subdir.sql").mkdir()

    assert [m.name for m in load_migrations(directory)] == ["0001_a.sql", "0002_b.sql"]


def test_missing_directory_is_refused(tmp_path: Path) -> None:
    with pytest.raises(MigrationError, match="migrations directory not found"):
        load_migrations(tmp_path / "nope")


def test_default_directory_is_the_packages_link_to_the_repository_migrations() -> None:
    # In a checkout the package reads the top-level source itself, not a copy of it (a
    # built wheel carries the files: tests/test_wheel.py).
    assert Path(str(MIGRATIONS_DIR)).resolve() == REPO_ROOT / "migrations"


async def test_pending_on_an_empty_database_creates_nothing(
    tmp_path: Path, conn: asyncpg.Connection[asyncpg.Record]
) -> None:
    directory = write(tmp_path / "m", THREE)

    assert await pending(conn, directory) == THREE_NAMES
    state = await status(conn, directory)
    assert (state.applied, state.pending) == ([], THREE_NAMES)
    assert (state.database_version, state.latest_version) == (0, 10)
    assert await conn.fetchval("SELECT to_regclass('schema_migrations') IS NULL")


async def test_migrate_refuses_to_run_inside_a_transaction(
    tmp_path: Path, conn: asyncpg.Connection[asyncpg.Record]
) -> None:
    directory = write(tmp_path / "m", THREE)
    async with conn.transaction():
        with pytest.raises(RuntimeError, match="outside a transaction"):
            await migrate(conn, directory)


# --- the fixtures and the pool --------------------------------------------------------------


async def test_test_database_is_migrated_with_the_real_migrations(
    db_pool: asyncpg.Pool[asyncpg.Record],
) -> None:
    async with db_pool.acquire() as c:
        assert await pending(c) == []
        # json and jsonb come back as Python objects, and go in as them.
        assert await c.fetchval("SELECT $1::jsonb", {"a": [1, "é"]}) == {"a": [1, "é"]}
        assert await c.fetchval("""SELECT '{"b": null}'::json""") == {"b": None}
        assert await c.fetchval("SELECT current_setting('application_name')") == "campaign"


def test_dsn_with_database_handles_both_forms() -> None:
    assert (
        dsn_with_database("postgresql://u:p%40ss@db.example:6543/postgres?sslmode=require", "x")
        == "postgresql://u:p%40ss@db.example:6543/x?sslmode=require"
    )
    assert (
        dsn_with_database("postgresql://postgres:@/postgres?host=/tmp/pg", "test_1")
        == "postgresql://postgres:@/test_1?host=/tmp/pg"
    )
    assert dsn_with_database("postgresql://h/?dbname=a", "b") == "postgresql://h/b"


async def test_unreachable_server_is_one_line_without_password() -> None:
    dsn = "postgresql://bob:s3cr%2Fet@127.0.0.1:1/calls"

    with pytest.raises(DatabaseUnavailable) as caught:
        await connect(dsn)
    message = str(caught.value)
    assert message.startswith("cannot reach PostgreSQL at 127.0.0.1:1/calls: ")
    assert "s3cr" not in message
    assert "\n" not in message

    with pytest.raises(DatabaseUnavailable, match=r"^cannot reach PostgreSQL at 127\.0\.0\.1:1/"):
        async with open_pool(dsn):
            pass


def test_describe_dsn_forms() -> None:
    assert describe_dsn("postgresql://postgres:@/postgres?host=/run/pg") == "/run/pg:5432/postgres"
    assert describe_dsn("postgresql://u:pw@[::1]:5433/x") == "[::1]:5433/x"
    assert describe_dsn("postgresql://u:pw@h/?dbname=z") == "h:5432/z"


async def test_pool_close_is_bounded_when_a_connection_is_never_released(db_dsn: str) -> None:
    grace = 0.3
    with capture_logs() as logs:
        try:
            # Without the bound, leaving the block waits for the connection for ever.
            async with asyncio.timeout(60):
                async with open_pool(db_dsn, min_size=1, max_size=2, close_timeout=grace) as pool:
                    await pool.acquire()  # never released
                    leaving = time.monotonic()
        except TimeoutError:
            pytest.fail("closing the pool waited for a connection that was never released")
    waited = time.monotonic() - leaving

    # It gave the connection its grace to come back, then cut it.
    assert waited >= grace
    assert [e["seconds"] for e in events(logs, "db_pool_close_timeout")] == [grace]

    # The pool was terminated: the server sees its sessions go away.
    observer = await connect(db_dsn)
    try:
        others = -1
        for _ in range(50):
            others = await observer.fetchval(
                "SELECT count(*) FROM pg_stat_activity"
                " WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
            if others == 0:
                break
            await asyncio.sleep(0.05)
        assert others == 0
    finally:
        await observer.close()


# --- the embedded server --------------------------------------------------------------------


async def test_configured_dsn_is_used_as_is() -> None:
    settings = DatabaseSettings(dsn=SecretStr("postgresql://u:p@h/db"))
    assert await resolve_dsn(settings) == "postgresql://u:p@h/db"
    async with database_dsn(settings) as dsn:
        assert dsn == "postgresql://u:p@h/db"


async def test_database_dsn_keeps_the_embedded_data(tmp_path: Path) -> None:
    settings = DatabaseSettings(data_dir=tmp_path / "state")

    async with database_dsn(settings) as dsn:
        c = await connect(dsn)
        try:
            await c.execute("CREATE TABLE kept (x int); INSERT INTO kept VALUES (1)")
        finally:
            await c.close()
    # The block held the only handle: the server is stopped.
    with pytest.raises(DatabaseUnavailable):
        await connect(dsn)

    async with database_dsn(settings) as again:
        c = await connect(again)
        try:
            assert await c.fetchval("SELECT count(*) FROM kept") == 1
        finally:
            await c.close()


RUN_ONCE = textwrap.dedent(
    """
    import asyncio, sys
    from pathlib import Path
    from campaign.db.pool import connect, resolve_dsn
    from campaign.settings import DatabaseSettings

    async def main() -> None:
        dsn = await resolve_dsn(DatabaseSettings(data_dir=Path(sys.argv[1])))
        conn = await connect(dsn)
        try:
            await conn.execute(sys.argv[2])
            print(await conn.fetchval("SELECT count(*) FROM kept"))
        finally:
            await conn.close()

    asyncio.run(main())
    """
)


def test_resolve_dsn_reuses_the_embedded_data_across_runs(tmp_path: Path) -> None:
    # Separate processes: a "run" ends with the process, whose exit stops the server.
    data_dir = tmp_path / "state"

    def run(sql: str) -> str:
        done = subprocess.run(
            [sys.executable, "-c", RUN_ONCE, str(data_dir), sql],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=REPO_ROOT,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        return done.stdout.strip()

    assert run("CREATE TABLE kept (x int); INSERT INTO kept VALUES (1)") == "1"
    assert (data_dir / "postgres" / "PG_VERSION").is_file()
    assert not (data_dir / "postgres" / "postmaster.pid").exists()
    assert run("INSERT INTO kept VALUES (2)") == "2"
