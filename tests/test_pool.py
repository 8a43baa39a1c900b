"""A pooled connection goes back to the pool clean without a reset round trip.

The pool skips asyncpg's reset query (db/pool.py): what must still hold is that
the next user never inherits a transaction, and that the one session-level lock
the code takes (the migration's) never outlives the migration on a pooled
connection.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import asyncpg
import pytest

from campaign.db.migrate import LOCK_KEY, migrate
from campaign.db.pool import open_pool
from tests.helpers import REPO_ROOT

ADVISORY_LOCKS = "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'"


async def test_a_connection_abandoned_inside_a_transaction_comes_back_outside_it(
    db_dsn: str,
) -> None:
    async with open_pool(db_dsn, min_size=1, max_size=1) as pool:
        entered = asyncio.Event()

        async def hold() -> None:
            async with pool.acquire() as conn, conn.transaction():
                await conn.execute("CREATE TEMP TABLE scratch (x int) ON COMMIT DROP")
                entered.set()
                await asyncio.sleep(60)

        task = asyncio.create_task(hold())
        await entered.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        async with pool.acquire() as conn:
            assert not conn.is_in_transaction()
            # Rolled back, not committed: the transaction's table is gone.
            assert await conn.fetchval("SELECT to_regclass('pg_temp.scratch')") is None


async def test_the_migration_lock_is_released_on_a_pooled_connection(db_dsn: str) -> None:
    async with open_pool(db_dsn, min_size=1, max_size=1) as pool:
        async with pool.acquire() as conn:
            await migrate(conn)
        async with pool.acquire() as conn:
            assert await conn.fetchval(ADVISORY_LOCKS) == 0


async def test_a_migration_cancelled_while_waiting_leaves_no_lock_behind(
    db_dsn: str, db_pool: asyncpg.Pool
) -> None:
    async with open_pool(db_dsn, min_size=1, max_size=1) as pool:
        # Another process holds the migration lock: our migration waits for it.
        async with db_pool.acquire() as holder:
            await holder.execute("SELECT pg_advisory_lock($1)", LOCK_KEY)
            try:
                async with pool.acquire() as conn:
                    waiting = asyncio.create_task(migrate(conn))
                    await asyncio.sleep(0.5)
                    waiting.cancel()
                    with pytest.raises(asyncio.CancelledError):
                        await waiting
            finally:
                await holder.execute("SELECT pg_advisory_unlock($1)", LOCK_KEY)
        # The lock request was cancelled with the statement; whatever the session was
        # left holding, the next user of the pool holds no lock.
        async with pool.acquire() as conn:
            assert await conn.fetchval(ADVISORY_LOCKS) == 0


# What pgserver says when it runs initdb and pg_ctl, and when it lets the server go.
SERVER_CHATTER = ("initdb", "pg_ctl", "Running commandline", "postmaster", "remaining pids")


def migrate_embedded(
    data_dir: Path, *settings: tuple[str, str]
) -> subprocess.CompletedProcess[str]:
    """`campaign migrate` on the embedded default under `data_dir`: first use, so the
    server is initialised, started and stopped."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CAMPAIGN_")}
    env["CAMPAIGN_DATABASE__DATA_DIR"] = str(data_dir)
    env.update(settings)
    return subprocess.run(
        [sys.executable, "-m", "campaign", "migrate"],
        env=env,
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.mark.slow
def test_the_embedded_servers_start_and_stop_chatter_shows_only_at_debug(tmp_path: Path) -> None:
    quiet = migrate_embedded(tmp_path / "info")
    assert quiet.returncode == 0, quiet.stderr
    assert quiet.stdout.startswith("applied 0001_schema.sql")
    assert not [w for w in SERVER_CHATTER if w in quiet.stderr], quiet.stderr
    # The command's own events are still there.
    assert '"event": "migration_applied"' in quiet.stderr

    debug = migrate_embedded(tmp_path / "debug", ("CAMPAIGN_LOGGING__LEVEL", "debug"))
    assert debug.returncode == 0, debug.stderr
    assert all(w in debug.stderr for w in SERVER_CHATTER), debug.stderr
