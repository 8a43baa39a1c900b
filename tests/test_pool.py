"""A pooled connection goes back to the pool clean without a reset round trip.

The pool skips asyncpg's reset query (db/pool.py): what must still hold is that
the next user never inherits a transaction, and that the one session-level lock
the code takes (the migration's) never outlives the migration on a pooled
connection.
"""

from __future__ import annotations

import asyncio

import asyncpg
import pytest

from campaign.db.migrate import LOCK_KEY, migrate
from campaign.db.pool import open_pool

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
