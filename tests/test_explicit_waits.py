"""What a contact or a batch waits for is a column (migration 0011), not a message.

A window change wakes the contacts deferred to their window and the re-sends held for
it, whatever their last_result or last_error say; and a database migrated before 0011
keeps every such wait across the upgrade.
"""

from __future__ import annotations

import shutil
import uuid
from datetime import time
from pathlib import Path

import asyncpg
import pytest

from campaign.db import queries as q
from campaign.db.migrate import MIGRATIONS_DIR, migrate
from campaign.db.pool import connect, dsn_with_database
from tests.engine import add_contacts, create_campaign
from tests.fixtures_db import create_database, drop_database

OLD_HOLD = "re-send held outside the calling window: opens at 09:00 Europe/London"


async def _window_campaign(pool: asyncpg.Pool, contacts: int) -> tuple[int, list[int]]:
    """A campaign with a 09:00-17:00 window, and its contacts."""
    cid = await create_campaign(pool, window_start=time(9), window_end=time(17))
    return cid, await add_contacts(pool, cid, [f"sip:c{i}@example.com" for i in range(contacts)])


async def _batch(pool: asyncpg.Pool, campaign_id: int, contact_ids: list[int], n: int) -> int:
    """A pending batch, unowned, due in an hour."""
    batch_id: int = await pool.fetchval(
        "INSERT INTO batches (campaign_id, service_name, unique_id, rest_calls, contact_ids,"
        " next_send_at) VALUES ($1, 'S', $2, '[]', $3, now() + interval '1 hour') RETURNING id",
        campaign_id,
        f"u{n}",
        contact_ids,
    )
    return batch_id


async def _widen_window(pool: asyncpg.Pool, campaign_id: int) -> None:
    await pool.execute(
        "UPDATE campaigns SET window_start = '00:00', window_end = '24:00' WHERE id = $1",
        campaign_id,
    )


async def _due_now(pool: asyncpg.Pool, table: str, column: str, ids: list[int]) -> set[int]:
    rows = await pool.fetch(
        f"SELECT id FROM {table} WHERE id = ANY($1::bigint[]) AND {column} <= now()", ids
    )
    return {r["id"] for r in rows}


async def test_a_window_change_wakes_the_deferred_contacts_and_only_them(
    db_pool: asyncpg.Pool,
) -> None:
    cid, (deferred, retrying) = await _window_campaign(db_pool, 2)
    async with db_pool.acquire() as conn:
        await q.defer(conn, [deferred], [3600.0], ["opens at 09:00 UTC"])
    # A retry an hour away whose last_result happens to read like a deferral: it waits
    # for its retry delay, not for the window.
    await db_pool.execute(
        "UPDATE contacts SET next_attempt_at = now() + interval '1 hour',"
        " last_result = 'outside_window' WHERE id = $1",
        retrying,
    )

    await _widen_window(db_pool, cid)

    assert await _due_now(db_pool, "contacts", "next_attempt_at", [deferred, retrying]) == {
        deferred
    }


async def test_a_claimed_or_skipped_contact_no_longer_waits_for_its_window(
    db_pool: asyncpg.Pool,
) -> None:
    cid, (skipped, claimed) = await _window_campaign(db_pool, 2)
    async with db_pool.acquire() as conn:
        await q.defer(conn, [skipped, claimed], [3600.0, 3600.0], ["closed", "closed"])
        await q.set_states(conn, [skipped], ["invalid"], ["no usable time zone"])
        await q.insert_dispatching_batches(
            conn,
            batches=[q.NewBatch(cid, "S", "u1", "[]", [claimed])],
            owner="d",
            lease_seconds=60.0,
            grants={},
        )
    rows = await db_pool.fetch("SELECT waiting_for_window FROM contacts ORDER BY id")
    assert [r["waiting_for_window"] for r in rows] == [False, False]


async def test_a_window_change_wakes_a_batch_held_for_its_window_whatever_its_message(
    db_pool: asyncpg.Pool,
) -> None:
    cid, [contact] = await _window_campaign(db_pool, 1)
    for_window = await _batch(db_pool, cid, [contact], 1)
    for_campaign = await _batch(db_pool, cid, [contact], 2)
    backing_off = await _batch(db_pool, cid, [contact], 3)
    await db_pool.execute("UPDATE batches SET owner = 'd'")
    async with db_pool.acquire() as conn:
        await q.hold_for_window(conn, for_window, "d", 3600.0, "waits for 09:00 UTC")
        await q.hold(conn, for_campaign, "d", 3600.0, "re-send held while the campaign is paused")
        await q.reschedule(conn, backing_off, "d", "429", 3600.0)
        await conn.execute("UPDATE batches SET owner = NULL WHERE id = $1", backing_off)

    await _widen_window(db_pool, cid)

    ids = [for_window, for_campaign, backing_off]
    assert await _due_now(db_pool, "batches", "next_send_at", ids) == {for_window}


async def test_a_rescheduled_batch_no_longer_waits_for_its_window(db_pool: asyncpg.Pool) -> None:
    cid, [contact] = await _window_campaign(db_pool, 1)
    batch = await _batch(db_pool, cid, [contact], 1)
    await db_pool.execute("UPDATE batches SET owner = 'd'")
    async with db_pool.acquire() as conn:
        await q.hold_for_window(conn, batch, "d", 3600.0, "waits for 09:00 UTC")
        await conn.execute("UPDATE batches SET owner = 'd' WHERE id = $1", batch)
        await q.reschedule(conn, batch, "d", "503", 3600.0)
        await conn.execute("UPDATE batches SET owner = NULL WHERE id = $1", batch)

    await _widen_window(db_pool, cid)

    assert await _due_now(db_pool, "batches", "next_send_at", [batch]) == set()


@pytest.fixture
def before_0011(tmp_path: Path) -> Path:
    """A folder of the migrations up to 0010, the last one before explicit waits."""
    folder = tmp_path / "migrations"
    folder.mkdir()
    for f in sorted(MIGRATIONS_DIR.glob("*.sql")):
        if int(f.name[:4]) <= 10:
            shutil.copy(f, folder / f.name)
    return folder


async def test_upgrading_keeps_every_wait_that_was_written_as_text(
    pg_admin_dsn: str, before_0011: Path
) -> None:
    name = f"test_waits_{uuid.uuid4().hex[:12]}"
    await create_database(pg_admin_dsn, name, template="template0")
    dsn = dsn_with_database(pg_admin_dsn, name)
    try:
        conn = await connect(dsn, command_timeout=None)
        try:
            await migrate(conn, before_0011)
            cid: int = await conn.fetchval(
                "INSERT INTO campaigns (name, service_name) VALUES ('c', 'S') RETURNING id"
            )
            deferred, retrying, _done = [
                r["id"]
                for r in await conn.fetch(
                    "INSERT INTO contacts (campaign_id, destination, state, last_result)"
                    " SELECT $1, d, s, 'outside_window' FROM unnest($2::text[], $3::text[])"
                    " WITH ORDINALITY AS t(d, s, n) ORDER BY n RETURNING id",
                    cid,
                    ["sip:a@x.com", "sip:b@x.com", "sip:c@x.com"],
                    ["pending", "pending", "completed"],
                )
            ]
            await conn.execute("UPDATE contacts SET last_result = 'busy' WHERE id = $1", retrying)
            held, _paused = [
                r["id"]
                for r in await conn.fetch(
                    "INSERT INTO batches (campaign_id, service_name, unique_id, rest_calls,"
                    " contact_ids, last_error) SELECT $1, 'S', u, '[]', '{}', e"
                    " FROM unnest($2::text[], $3::text[]) WITH ORDINALITY AS t(u, e, n)"
                    " ORDER BY n RETURNING id",
                    cid,
                    ["u1", "u2"],
                    [OLD_HOLD, "re-send held while the campaign is paused"],
                )
            ]

            assert await migrate(conn) == ["0011_explicit_waits.sql"]

            waiting = await conn.fetch("SELECT id FROM contacts WHERE waiting_for_window")
            assert [r["id"] for r in waiting] == [deferred]
            held_rows = await conn.fetch("SELECT id FROM batches WHERE held_for_window")
            assert [r["id"] for r in held_rows] == [held]
        finally:
            await conn.close()
    finally:
        await drop_database(pg_admin_dsn, name)
