"""Helpers for tests of parked batches: realistic rows made with SQL.

A parked batch is built as the dispatcher leaves one: its contacts were claimed
(`dispatching`, `dispatch_count` raised, `batch_id` set), the batch holds their exact
`rest_calls` and the `unique_id` derived from them, it was sent and its sends failed
in a way that may have started calls (`in_doubt`), and it was parked with the reason.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg

from campaign.db.admin import Pool
from campaign.dispatch import unique_id_for

SERVICE = "MyOutboundService"
CALLER_ID = "441908273801"
NAMESPACE = "campaign"
PARK_REASON = (
    "unacknowledged for 3700s, beyond the 3600s idempotency window: re-sending could start "
    "the calls twice. Check with Aculab whether this unique_id started calls, then resolve "
    "the contacts by hand"
)


async def new_campaign(pool: Pool, name: str, *, state: str = "active") -> int:
    campaign_id: int = await pool.fetchval(
        "INSERT INTO campaigns (name, service_name, caller_id, state, state_reason) "
        "VALUES ($1, $2, $3, $4, $5) RETURNING id",
        name,
        SERVICE,
        CALLER_ID,
        state,
        None if state == "active" else f"{state} by operator",
    )
    return campaign_id


@dataclass(frozen=True)
class Batch:
    id: int
    campaign_id: int
    unique_id: str
    rest_calls: str
    contact_ids: list[int]


async def add_batch(
    pool: Pool,
    campaign_id: int,
    *,
    contacts: int = 3,
    state: str = "parked",
    age: str = "2 hours",
    reason: str | None = PARK_REASON,
    in_doubt: bool = True,
    sends: int = 4,
    attempts: int = 0,
    raw_answer: str | None = None,
    owner: str | None = None,
) -> Batch:
    """A batch of `contacts` new contacts, in `state`, created `age` ago.

    The contacts are `dispatching` in it (with `attempts` calls already made for
    them, this batch being attempt attempts + 1), as a parked or pending batch
    leaves them; for other states the caller moves them on if it matters.
    """
    async with pool.acquire() as conn, conn.transaction():
        # Distinct, valid UK numbers across every batch of the test database.
        offset: int = await conn.fetchval("SELECT count(*) FROM contacts")
        destinations = [f"4419082{offset + i:05d}" for i in range(contacts)]
        ids: list[int] = [
            r["id"]
            for r in await conn.fetch(
                "INSERT INTO contacts (campaign_id, destination, state, attempts, dispatch_count, "
                "                      created_at) "
                "SELECT $1, d, 'dispatching', $3, $3 + 1, now() - $4::text::interval "
                "FROM unnest($2::text[]) WITH ORDINALITY AS t(d, n) ORDER BY n RETURNING id",
                campaign_id,
                destinations,
                attempts,
                age,
            )
        ]
        rest_calls = json.dumps(
            [{"to": d, "from": CALLER_ID} for d in destinations],
            separators=(",", ":"),
            ensure_ascii=False,
        )
        unique_id = unique_id_for(NAMESPACE, campaign_id, [(i, attempts + 1) for i in ids])
        batch_id: int = await conn.fetchval(
            "INSERT INTO batches (campaign_id, service_name, unique_id, rest_calls, contact_ids, "
            "                     state, sends, in_doubt, last_error, raw_answer, owner, "
            "                     created_at, next_send_at, finished_at) "
            "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, "
            "        now() - $12::text::interval, now() - $12::text::interval, "
            "        CASE WHEN $6 = 'pending' THEN NULL ELSE now() END) "
            "RETURNING id",
            campaign_id,
            SERVICE,
            unique_id,
            rest_calls,
            ids,
            state,
            sends,
            in_doubt,
            reason,
            raw_answer,
            owner,
            age,
        )
        await conn.execute(
            "UPDATE contacts SET batch_id = $1, last_error = $2 WHERE id = ANY($3::bigint[])",
            batch_id,
            reason,
            ids,
        )
    return Batch(batch_id, campaign_id, unique_id, rest_calls, ids)


async def batch_row(pool: Pool, batch_id: int) -> asyncpg.Record:
    row = await pool.fetchrow("SELECT * FROM batches WHERE id = $1", batch_id)
    assert row is not None
    return row


async def seconds_ago(pool: Pool, when: object) -> float:
    """How long ago `when` was, by the database's clock."""
    seconds: float = await pool.fetchval(
        "SELECT extract(epoch FROM now() - $1::timestamptz)::float8", when
    )
    return seconds


async def contact_rows(pool: Pool, ids: Sequence[int]) -> list[asyncpg.Record]:
    return list(
        await pool.fetch(
            "SELECT * FROM contacts WHERE id = ANY($1::bigint[]) ORDER BY id",
            list(ids),
        )
    )


async def resolutions(pool: Pool) -> list[asyncpg.Record]:
    return list(await pool.fetch("SELECT * FROM batch_resolutions ORDER BY id"))


# --- what the commands print --------------------------------------------------------------


def log_events(stderr: str, event: str) -> list[dict[str, Any]]:
    """The JSON log lines of one event among what a command wrote to stderr."""
    found = []
    for line in stderr.splitlines():
        if line.startswith("{"):
            record = json.loads(line)
            if record.get("event") == event:
                found.append(record)
    return found
