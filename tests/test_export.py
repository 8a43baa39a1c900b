"""The contact_results view: results out for a CRM.

Against a real PostgreSQL. The view's
shape is pinned here: it is the documented read interface, so a change to it must be
a deliberate change to this file and to the README.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest

from campaign import outcomes
from campaign.db import results as rdb
from campaign.db.admin import Pool
from tests.engine import (
    add_contacts,
    create_campaign,
)
from tests.helpers import logging_restored

# The view's shape, as documented in the README ("Taking results out"). Columns are
# only ever added at the end.
COLUMNS = [
    ("campaign", "text"),
    ("campaign_id", "bigint"),
    ("contact_id", "bigint"),
    ("token", "text"),
    ("destination", "text"),
    ("state", "text"),
    ("attempts", "integer"),
    ("last_result", "text"),
    ("last_error", "text"),
    ("last_cause", "text"),
    ("first_call_at", "timestamp with time zone"),
    ("last_call_at", "timestamp with time zone"),
    ("last_call_duration", "double precision"),
    ("references", "text[]"),
    ("next_attempt_at", "timestamp with time zone"),
    ("created_at", "timestamp with time zone"),
    ("updated_at", "timestamp with time zone"),
]
NAMES = [name for name, _ in COLUMNS]


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    with logging_restored():
        yield


T0 = datetime(2024, 5, 1, 10, 0, tzinfo=UTC)


async def three_contacts(pool: Pool) -> tuple[int, list[int]]:
    """Campaign 'spring': a contact answered at its second call (the calls stored out of
    attempt order), one waiting for a retry with no call, one invalid, each with a
    known updated_at (T0 + 1, 2, 3 hours)."""
    cid = await create_campaign(pool, "spring")
    ids = await add_contacts(pool, cid, ["+44 1908 273800", "441908273801", "not a number"])
    batch = await pool.fetchval(
        "INSERT INTO batches (campaign_id, service_name, unique_id, rest_calls, contact_ids) "
        "VALUES ($1, 'S', 'u-1', '', $2) RETURNING id",
        cid,
        ids[:1],
    )
    for attempt, reference, cause, duration in (
        (2, "ref-b", "completed", 42.5),
        (1, "ref-a", "busy", None),
    ):
        await pool.execute(
            "INSERT INTO calls (contact_id, campaign_id, batch_id, attempt, reference, "
            "started_at, call_cause, duration, finished_at) "
            "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $6::timestamptz + interval '1 minute')",
            ids[0],
            cid,
            batch,
            attempt,
            reference,
            T0 + timedelta(minutes=10 * (attempt - 1)),
            cause,
            duration,
        )
    await pool.execute(
        "UPDATE contacts SET state = 'completed', attempts = 2, last_result = 'completed', "
        "token = 'crm-1', updated_at = $2 WHERE id = $1",
        ids[0],
        T0 + timedelta(hours=1),
    )
    await pool.execute(
        "UPDATE contacts SET last_result = 'no_answer', next_attempt_at = $2, "
        "token = '', updated_at = $3 WHERE id = $1",
        ids[1],
        T0 + timedelta(days=1),
        T0 + timedelta(hours=2),
    )
    await pool.execute(
        "UPDATE contacts SET state = 'invalid', last_result = 'invalid', "
        "last_error = $2, updated_at = $3 WHERE id = $1",
        ids[2],
        'not a telephone number: "not a number", line 3\nsee the file',
        T0 + timedelta(hours=3),
    )
    return cid, ids


# --- the view ---------------------------------------------------------------------------


async def test_the_view_keeps_its_documented_columns_names_order_and_types(
    db_pool: Pool,
) -> None:
    rows = await db_pool.fetch(
        "SELECT a.attname, format_type(a.atttypid, a.atttypmod) AS type "
        "FROM pg_attribute a WHERE a.attrelid = 'contact_results'::regclass "
        "AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum"
    )

    assert [(r["attname"], r["type"]) for r in rows] == COLUMNS
    # The export's CSV header is the view's names.
    assert list(rdb.RESULT_COLUMNS) == NAMES


async def test_a_contact_row_has_its_calls_in_attempt_order_and_the_last_calls_outcome(
    db_pool: Pool,
) -> None:
    cid, ids = await three_contacts(db_pool)

    rows = {
        r["contact_id"]: r
        for r in await db_pool.fetch("SELECT * FROM contact_results WHERE campaign = 'spring'")
    }

    answered = rows[ids[0]]
    assert (answered["campaign"], answered["campaign_id"], answered["token"]) == (
        "spring",
        cid,
        "crm-1",
    )
    # The number as loaded: the export is the operator's own data, not a log line.
    assert answered["destination"] == "+44 1908 273800"
    assert (answered["state"], answered["attempts"], answered["last_result"]) == (
        "completed",
        2,
        "completed",
    )
    assert answered["references"] == ["ref-a", "ref-b"]
    assert (answered["first_call_at"], answered["last_call_at"]) == (
        T0,
        T0 + timedelta(minutes=10),
    )
    assert (answered["last_cause"], answered["last_call_duration"]) == ("completed", 42.5)
    assert answered["next_attempt_at"] is None

    waiting = rows[ids[1]]
    assert waiting["references"] == []
    assert (waiting["first_call_at"], waiting["last_cause"], waiting["last_call_duration"]) == (
        None,
        None,
        None,
    )
    # Only a pending contact has a next attempt.
    assert waiting["next_attempt_at"] == T0 + timedelta(days=1)
    assert rows[ids[2]]["next_attempt_at"] is None


async def test_an_outcome_for_a_contact_that_moved_on_marks_it_changed(db_pool: Pool) -> None:
    cid, ids = await three_contacts(db_pool)
    batch = await db_pool.fetchval("SELECT id FROM batches")
    await db_pool.execute(
        "INSERT INTO calls (contact_id, campaign_id, batch_id, attempt, reference) "
        "VALUES ($1, $2, $3, 1, 'ref-late')",
        ids[1],
        cid,
        batch,
    )
    # Cancelled while its call was out: the outcome moves the contact nowhere...
    await db_pool.execute("UPDATE contacts SET state = 'cancelled' WHERE id = $1", ids[1])
    before = await db_pool.fetchval("SELECT updated_at FROM contacts WHERE id = $1", ids[1])

    assert await outcomes.record(db_pool, outcomes.Outcome("ref-late", "busy"), "push") == (
        "recorded"
    )

    row = await db_pool.fetchrow(
        "SELECT state, last_cause, updated_at FROM contact_results WHERE contact_id = $1", ids[1]
    )
    # ...but its results changed, so an export --since must carry it.
    assert (row["state"], row["last_cause"]) == ("cancelled", "busy")
    assert row["updated_at"] > before
