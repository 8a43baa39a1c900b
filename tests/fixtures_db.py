"""Database fixtures: one PostgreSQL per session, a migrated template, a fresh database per test.

The server is `CAMPAIGN_TEST_DSN` when set (its database is used as the admin database),
else an embedded pgserver started under the session's temporary directory. The template
is migrated once with the real `migrations/`; every test gets its own clone of it
(`CREATE DATABASE ... TEMPLATE`, a file copy: much faster than migrating), dropped at
teardown. Transaction rollback would not do: the daemon uses several connections and
NOTIFY is delivered only on commit.

Session fixtures yield strings only: connections belong to an event loop, and tests run
in their own function-scoped loops. Per-test work uses short-lived connections.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import pytest_asyncio

from campaign.db.migrate import migrate
from campaign.db.pool import connect, dsn_with_database, open_pool

__all__ = ["db_dsn", "db_pool", "empty_dsn", "pg_admin_dsn", "template_db"]

TEST_DSN_ENV = "CAMPAIGN_TEST_DSN"
TEMPLATE_NAME = "campaign_template"
_MAX_SOCKET_PATH = 107  # sockaddr_un.sun_path on Linux, minus the terminating NUL


def quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


async def create_database(admin_dsn: str, name: str, *, template: str) -> None:
    conn = await connect(admin_dsn)
    try:
        await conn.execute(f"CREATE DATABASE {quote_ident(name)} TEMPLATE {quote_ident(template)}")
    finally:
        await conn.close()


async def drop_database(admin_dsn: str, name: str) -> None:
    conn = await connect(admin_dsn)
    try:
        # FORCE: a test that leaked a connection must not make teardown fail or hang.
        await conn.execute(f"DROP DATABASE IF EXISTS {quote_ident(name)} WITH (FORCE)")
    finally:
        await conn.close()


def _start_embedded(pgdata: Path) -> Any:
    from pgserver.postgres_server import get_server

    # "delete": the cluster is scratch; stopping it also frees the disk space.
    server: Any = get_server(pgdata, cleanup_mode="delete")
    socket_dir = server.get_postmaster_info().socket_dir
    # pgserver falls back from pgdata to a runtime directory when the socket path would
    # be too long; say where it went if even that did not fit, rather than fail obscurely.
    if socket_dir is not None and len(str(socket_dir / ".s.PGSQL.5432")) > _MAX_SOCKET_PATH:
        server.cleanup()
        raise RuntimeError(f"socket directory too long for a unix socket: {socket_dir}")
    return server


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def pg_admin_dsn(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[str]:
    """DSN of the test server's admin database (CAMPAIGN_TEST_DSN, else embedded)."""
    configured = os.environ.get(TEST_DSN_ENV, "")
    if configured:
        yield configured
        return
    # A short directory name keeps the socket path (pgdata/.s.PGSQL.5432) within limits.
    pgdata = tmp_path_factory.mktemp("pg") / "data"
    server = await asyncio.to_thread(_start_embedded, pgdata)
    try:
        yield str(server.get_uri())
    finally:
        await asyncio.to_thread(server.cleanup)


def _template_name() -> str:
    # pytest-xdist workers share a server; each needs its own template.
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    return f"{TEMPLATE_NAME}_{worker}" if worker else TEMPLATE_NAME


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def template_db(pg_admin_dsn: str) -> AsyncIterator[str]:
    """Name of a database migrated with the real migrations/, cloned by each test."""
    name = _template_name()
    # Rebuilt every session: a leftover from an older run may lack newer migrations.
    await drop_database(pg_admin_dsn, name)
    await create_database(pg_admin_dsn, name, template="template0")
    try:
        conn = await connect(dsn_with_database(pg_admin_dsn, name), command_timeout=None)
        try:
            await migrate(conn)
        finally:
            # Closed before any clone: CREATE DATABASE refuses a template in use.
            await conn.close()
        yield name
    finally:
        await drop_database(pg_admin_dsn, name)


@pytest_asyncio.fixture
async def db_dsn(pg_admin_dsn: str, template_db: str) -> AsyncIterator[str]:
    """DSN of a fresh, migrated database for this test only."""
    name = f"test_{uuid.uuid4().hex[:16]}"
    await create_database(pg_admin_dsn, name, template=template_db)
    try:
        yield dsn_with_database(pg_admin_dsn, name)
    finally:
        await drop_database(pg_admin_dsn, name)


@pytest_asyncio.fixture
async def db_pool(db_dsn: str) -> AsyncIterator[asyncpg.Pool[asyncpg.Record]]:
    """A pool on this test's database; closed at teardown, terminated if that hangs."""
    async with open_pool(db_dsn, min_size=1, max_size=10, close_timeout=5.0) as pool:
        yield pool


@pytest_asyncio.fixture
async def empty_dsn(pg_admin_dsn: str) -> AsyncIterator[str]:
    """DSN of a database never migrated (no tables at all), for this test only."""
    name = f"test_empty_{uuid.uuid4().hex[:12]}"
    await create_database(pg_admin_dsn, name, template="template0")
    try:
        yield dsn_with_database(pg_admin_dsn, name)
    finally:
        await drop_database(pg_admin_dsn, name)
