"""SQL for outcomes: recording them once, the poller's schedule, campaign completion."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from campaign.db.queries import Conn, state_counts

if TYPE_CHECKING:
    import asyncpg

    from campaign.outcomes import Outcome


@dataclass(frozen=True)
class FinishedCall:
    contact_id: int
    campaign_id: int
    attempt: int


@dataclass(frozen=True)
class LockedContact:
    campaign_state: str
    state: str
    reference: str | None
    attempts: int
    max_attempts: int
    retry_delays: dict[str, Any]


# `finished_at IS NULL` makes the first writer win: a second outcome for the
# same call updates no row.
FINISH_CALL = """
UPDATE calls
SET call_cause = $2, call_raw_cause = $3, duration = $4, outcome_source = $5,
    outcome_reason = $6, finished_at = now(), next_poll_at = NULL
WHERE reference = $1 AND finished_at IS NULL
RETURNING contact_id, campaign_id, attempt
"""


async def finish_call(conn: Conn, outcome: Outcome, source: str) -> FinishedCall | None:
    row = await conn.fetchrow(
        FINISH_CALL,
        outcome.reference,
        outcome.cause,
        outcome.raw_cause,
        outcome.duration,
        source,
        outcome.reason,
    )
    if row is None:
        return None
    return FinishedCall(row["contact_id"], row["campaign_id"], row["attempt"])


CALL_FINISHED = "SELECT finished_at IS NOT NULL FROM calls WHERE reference = $1"


async def call_finished(conn: Conn, reference: str) -> bool | None:
    """Whether the call has its outcome; None when no such call exists."""
    value: bool | None = await conn.fetchval(CALL_FINISHED, reference)
    return value


LOCK_CONTACT = """
SELECT k.state AS campaign_state, c.state, c.reference, c.attempts, k.max_attempts,
       k.retry_delays
FROM contacts c JOIN campaigns k ON k.id = c.campaign_id
WHERE c.id = $1
FOR UPDATE OF c
"""


async def lock_contact(conn: Conn, contact_id: int) -> LockedContact | None:
    row = await conn.fetchrow(LOCK_CONTACT, contact_id)
    if row is None:
        return None
    delays = row["retry_delays"] if isinstance(row["retry_delays"], dict) else {}
    return LockedContact(
        row["campaign_state"],
        row["state"],
        row["reference"],
        row["attempts"],
        row["max_attempts"],
        delays,
    )


APPLY_DECISION = """
UPDATE contacts
SET state = $2,
    next_attempt_at = CASE WHEN $3::float8 IS NULL THEN next_attempt_at
                           ELSE now() + make_interval(secs => $3::float8) END,
    last_result = $4, last_error = $5, updated_at = now()
WHERE id = $1
"""


async def apply_decision(
    conn: Conn, contact_id: int, state: str, delay: float | None, cause: str, reason: str
) -> None:
    await conn.execute(APPLY_DECISION, contact_id, state, delay, cause, reason)


# The outcome of a call whose contact has moved on changes nothing about the contact
# but its results (contact_results shows the last call's cause and duration): the
# contact is marked changed, so that `campaign export --since` carries the outcome.
TOUCH_CONTACT = "UPDATE contacts SET updated_at = now() WHERE id = $1"


async def touch_contact(conn: Conn, contact_id: int) -> None:
    await conn.execute(TOUCH_CONTACT, contact_id)


# --- outcomes pushed before their batch was acknowledged ---------------------------

STASH_UNMATCHED = """
INSERT INTO unmatched_outcomes (reference, call_cause, call_raw_cause, duration)
VALUES ($1, $2, $3, $4)
ON CONFLICT (reference) DO NOTHING
"""


async def stash_unmatched(conn: Conn, outcome: Outcome) -> None:
    await conn.execute(
        STASH_UNMATCHED, outcome.reference, outcome.cause, outcome.raw_cause, outcome.duration
    )


# Taken (deleted) by one daemon; each is then recorded like a fresh push.
TAKE_MATCHED = """
DELETE FROM unmatched_outcomes u
USING calls c
WHERE c.reference = u.reference
RETURNING u.reference, u.call_cause, u.call_raw_cause, u.duration
"""

FORGET_OLD_UNMATCHED = """
DELETE FROM unmatched_outcomes WHERE received_at < now() - make_interval(secs => $1)
"""


@dataclass(frozen=True)
class Unmatched:
    reference: str
    cause: str
    raw_cause: str | None
    duration: float | None


async def take_matched(conn: Conn, keep_seconds: float) -> list[Unmatched]:
    await conn.execute(FORGET_OLD_UNMATCHED, keep_seconds)
    rows = await conn.fetch(TAKE_MATCHED)
    return [
        Unmatched(r["reference"], r["call_cause"], r["call_raw_cause"], r["duration"]) for r in rows
    ]


# --- the poller --------------------------------------------------------------------


@dataclass(frozen=True)
class DueCall:
    id: int
    reference: str
    campaign_id: int
    polls: int
    age_seconds: float


# The next poll is scheduled when the call is taken, so a daemon that dies
# mid-poll leaves the call to be polled again later, and two daemons never
# poll the same call at once. Backoff: interval doubling up to max_interval.
TAKE_DUE_CALLS = """
WITH due AS (
    SELECT id FROM calls
    WHERE finished_at IS NULL AND next_poll_at <= now()
    ORDER BY next_poll_at
    LIMIT $1
    FOR UPDATE SKIP LOCKED
)
UPDATE calls c
SET polls = c.polls + 1,
    -- polls capped in the exponent: 2 ^ 1024 overflows, and a call polled every
    -- max_interval for a week gets there.
    next_poll_at = now() + make_interval(
        secs => least($3::float8, $2::float8 * 2 ^ least(c.polls, 30)))
FROM due
WHERE c.id = due.id
RETURNING c.id, c.reference, c.campaign_id, c.polls,
          extract(epoch FROM now() - c.started_at)::float8 AS age_seconds
"""


async def take_due_calls(
    conn: Conn, limit: int, interval: float, max_interval: float
) -> list[DueCall]:
    return _due_calls(await conn.fetch(TAKE_DUE_CALLS, limit, interval, max_interval))


# For a daemon that does not poll: calls past the give-up age whose poll schedule
# was never moved (next_poll_at is still the start plus first_poll_delay), through
# the partial index on next_poll_at. Calls that a polling daemon polls are left
# to it: their next_poll_at has moved on.
ABANDONED_CALLS = """
SELECT id, reference, campaign_id, polls,
       extract(epoch FROM now() - started_at)::float8 AS age_seconds
FROM calls
WHERE finished_at IS NULL
  AND next_poll_at <= now() - make_interval(secs => greatest($2::float8 - $3::float8, 0))
  AND started_at <= now() - make_interval(secs => $2::float8)
ORDER BY next_poll_at
LIMIT $1
"""


async def abandoned_calls(
    conn: Conn, limit: int, give_up_after: float, first_poll_delay: float
) -> list[DueCall]:
    return _due_calls(await conn.fetch(ABANDONED_CALLS, limit, give_up_after, first_poll_delay))


def _due_calls(rows: list[asyncpg.Record]) -> list[DueCall]:
    """Rows of TAKE_DUE_CALLS or ABANDONED_CALLS (the same columns)."""
    return [
        DueCall(r["id"], r["reference"], r["campaign_id"], r["polls"], r["age_seconds"])
        for r in rows
    ]


# --- campaign completion -------------------------------------------------------------

# Completion is decided in two statements of one transaction. The first locks
# the campaigns that look finished, FOR UPDATE SKIP LOCKED: a transaction that is
# inserting contacts into a campaign (`campaign load`, an INSERT ... SELECT) holds
# a FOR KEY SHARE lock on its row through the foreign key until it commits, so
# that campaign is skipped this round; one that starts inserting after our lock
# waits for our commit. The second statement takes a new snapshot, which sees
# every insert committed before the lock was granted, and decides again: a single
# UPDATE would decide on a snapshot older than the lock and could complete a
# campaign whose new pending contact committed a moment before.
FINISHED_CAMPAIGNS = """
SELECT k.id
FROM campaigns k
WHERE k.state = 'active'
  AND EXISTS (SELECT 1 FROM contacts c WHERE c.campaign_id = k.id)
  AND NOT EXISTS (
      SELECT 1 FROM contacts c
      WHERE c.campaign_id = k.id AND c.state IN ('pending', 'dispatching', 'dialing'))
FOR UPDATE OF k SKIP LOCKED
"""

COMPLETE_CAMPAIGNS = """
UPDATE campaigns k
SET state = 'completed', state_reason = 'every contact has finished', updated_at = now()
WHERE k.id = ANY($1::bigint[])
  AND k.state = 'active'
  AND NOT EXISTS (
      SELECT 1 FROM contacts c
      WHERE c.campaign_id = k.id AND c.state IN ('pending', 'dispatching', 'dialing'))
RETURNING k.id, k.name
"""


async def complete_campaigns(conn: Conn) -> list[tuple[int, str, dict[str, int]]]:
    """Mark finished campaigns completed; returns (id, name, totals) for each, once."""
    async with conn.transaction():
        candidates = [r["id"] for r in await conn.fetch(FINISHED_CAMPAIGNS)]
        if not candidates:
            return []
        completed = await conn.fetch(COMPLETE_CAMPAIGNS, candidates)
        if not completed:
            return []
        totals = await state_counts(conn, [row["id"] for row in completed])
        return [(row["id"], row["name"], totals[row["id"]]) for row in completed]
