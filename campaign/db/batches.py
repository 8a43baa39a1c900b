"""SQL of `campaign batches` and `campaign resolve`: listing batches, resolving parked ones.

A parked batch is one whose send may have started calls at Aculab but which the
daemons will not re-send (too old for the idempotency window, or an answer that
could not be matched to its calls). Only a person who has asked Aculab what that
unique_id started can settle it; these statements record the decision.

Named statements next to thin typed functions, as in `admin.py`; refusals are
`CommandError`s (exit 2, one line).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Final, Literal

import asyncpg

from campaign.assumptions import UNIQUE_ID_RETENTION_SECONDS
from campaign.db.admin import (
    CANCELLED_CONTACT_ERROR,
    CommandError,
    Pool,
    campaign_by_name,
)
from campaign.db.queries import Conn
from campaign.vocabulary import BatchState, CampaignState, ResolveAction

Listing = Literal["open", "parked", "all"]

OPEN_BATCH_STATES: Final[tuple[BatchState, ...]] = ("pending", "parked")
"""Batches that still hold contacts in `dispatching`: being sent, or waiting for a person."""


class BatchNotFound(CommandError):
    def __init__(self, batch_id: int) -> None:
        super().__init__(f"no batch with id {batch_id}")


class NotParked(CommandError):
    """Only a parked batch waits for a person; any other state needs nothing."""


class ResendRefused(CommandError):
    """A re-send that could start the calls twice, or that would never go out."""


class ReasonRequired(CommandError):
    pass


# --- listing ----------------------------------------------------------------------------


@dataclass(frozen=True)
class BatchListRow:
    id: int
    campaign_id: int
    campaign: str
    unique_id: str
    state: BatchState
    in_doubt: bool
    sends: int
    contacts: int
    """Calls in the batch (its contact_ids)."""
    created_at: datetime
    age_seconds: float
    """By the database's clock, so a skewed operator laptop shows true ages."""
    next_send_at: datetime
    owner: str | None
    last_error: str | None
    raw_answer: str | None


@dataclass(frozen=True)
class BatchList:
    rows: list[BatchListRow]
    more: bool
    """More batches matched than the limit let through."""


_LIST_COLUMNS = """
b.id, b.campaign_id, c.name AS campaign, b.unique_id, b.state, b.in_doubt, b.sends,
cardinality(b.contact_ids) AS contacts, b.created_at,
extract(epoch FROM now() - b.created_at)::float8 AS age_seconds,
b.next_send_at, b.owner, b.last_error, b.raw_answer
"""

# Open batches oldest first: the one that has waited longest is the one most likely
# to outlive Aculab's memory of its unique_id.
LIST_BATCHES_IN_STATES = f"""
SELECT {_LIST_COLUMNS}
FROM batches b JOIN campaigns c ON c.id = b.campaign_id
WHERE b.state = ANY($1::text[]) AND ($2::bigint IS NULL OR b.campaign_id = $2)
ORDER BY b.created_at, b.id
LIMIT $3
"""

# Every state, newest first: what just happened. Read backwards through the primary key.
LIST_ALL_BATCHES = f"""
SELECT {_LIST_COLUMNS}
FROM batches b JOIN campaigns c ON c.id = b.campaign_id
WHERE $1::bigint IS NULL OR b.campaign_id = $1
ORDER BY b.id DESC
LIMIT $2
"""


def _list_row(r: asyncpg.Record) -> BatchListRow:
    return BatchListRow(
        id=r["id"],
        campaign_id=r["campaign_id"],
        campaign=r["campaign"],
        unique_id=r["unique_id"],
        state=r["state"],
        in_doubt=r["in_doubt"],
        sends=r["sends"],
        contacts=r["contacts"],
        created_at=r["created_at"],
        age_seconds=r["age_seconds"],
        next_send_at=r["next_send_at"],
        owner=r["owner"],
        last_error=r["last_error"],
        raw_answer=r["raw_answer"],
    )


async def list_batches(
    pool: Pool, *, campaign: str | None, listing: Listing, limit: int
) -> BatchList:
    """Batches of every campaign or of one (CampaignNotFound), at most `limit` of them."""
    async with pool.acquire() as conn, conn.transaction(readonly=True):
        campaign_id = None if campaign is None else (await campaign_by_name(conn, campaign)).id
        # One row past the limit says whether there are more, without counting them all.
        if listing == "all":
            rows = await conn.fetch(LIST_ALL_BATCHES, campaign_id, limit + 1)
        else:
            states = list(OPEN_BATCH_STATES) if listing == "open" else ["parked"]
            rows = await conn.fetch(LIST_BATCHES_IN_STATES, states, campaign_id, limit + 1)
    return BatchList([_list_row(r) for r in rows[:limit]], more=len(rows) > limit)


# --- resolving a parked batch -------------------------------------------------------------


@dataclass(frozen=True)
class Resolution:
    """What `resolve_batch` did, as recorded in batch_resolutions."""

    id: int
    batch_id: int
    campaign_id: int
    campaign: str
    campaign_state: CampaignState
    unique_id: str
    in_doubt: bool
    action: ResolveAction
    contacts: int
    """The batch's contacts that were still `dispatching` in it, now changed."""
    contacts_state: str
    """Where those contacts are now: dispatching, pending, cancelled or failed."""
    reason: str | None
    resolved_by: str
    resolved_at: datetime
    age_seconds: float
    forced: bool


# The batch is locked so that two operators (or an operator and a daemon) cannot
# both act on it; the campaign is shared-locked as a load does, so a concurrent
# `campaign cancel` either commits first (and is seen here) or waits for this
# transaction and then cancels the contacts it gave back to `pending`.
LOCK_BATCH = """
SELECT b.id, b.campaign_id, b.state, b.unique_id, b.in_doubt,
       extract(epoch FROM now() - b.created_at)::float8 AS age_seconds,
       c.name AS campaign, c.state AS campaign_state
FROM batches b JOIN campaigns c ON c.id = b.campaign_id
WHERE b.id = $1
FOR UPDATE OF b
FOR SHARE OF c
"""

LAST_RESOLUTION = """
SELECT action, resolved_by, resolved_at FROM batch_resolutions
WHERE batch_id = $1 ORDER BY resolved_at DESC, id DESC LIMIT 1
"""

# Back to the daemons with the same bytes and unique_id. window_from restarts the
# idempotency window from now; in_doubt stays as it is (an earlier send may still
# have started the calls, and Aculab then answers with their references).
# finished_at is cleared: the batch is open again.
RESEND_BATCH = """
WITH b AS (
    UPDATE batches
    SET state = 'pending', owner = NULL, lease_until = NULL, sending = false,
        next_send_at = now(), window_from = now(), finished_at = NULL, held_for_window = false,
        last_error = $2 || coalesce('; was parked: ' || last_error, '')
    WHERE id = $1 AND state = 'parked'
    RETURNING id
), marked AS (
    UPDATE contacts c SET last_error = $2, updated_at = now()
    FROM b WHERE c.batch_id = b.id AND c.state = 'dispatching'
    RETURNING c.id
)
SELECT count(*) FROM marked
"""

# A parked batch closed by an operator (released or failed), `$2` their reason: the
# batch's own last_error is kept after it.
_CLOSE_PARKED = """
    UPDATE batches
    SET state = '{state}', finished_at = now(), owner = NULL, lease_until = NULL,
        sending = false, last_error = $2 || coalesce('; was parked: ' || last_error, '')
    WHERE id = $1 AND state = 'parked'
    RETURNING id
"""

# Nothing started, so no attempt was used: attempts stay as they are, and the next
# batch gets a new unique_id because dispatch_count was raised when this one was made.
RELEASE_BATCH = f"""
WITH b AS ({_CLOSE_PARKED.format(state="released")}), back AS (
    UPDATE contacts c
    SET state = CASE WHEN $3 THEN 'cancelled' ELSE 'pending' END, batch_id = NULL,
        next_attempt_at = now(), last_error = $4, updated_at = now()
    FROM b WHERE c.batch_id = b.id AND c.state = 'dispatching'
    RETURNING c.id
)
SELECT count(*) FROM back
"""

FAIL_BATCH = f"""
WITH b AS ({_CLOSE_PARKED.format(state="failed")}), failed AS (
    UPDATE contacts c
    SET state = 'failed', last_result = 'failed', last_error = $3, updated_at = now()
    FROM b WHERE c.batch_id = b.id AND c.state = 'dispatching'
    RETURNING c.id
)
SELECT count(*) FROM failed
"""

RECORD_RESOLUTION = """
INSERT INTO batch_resolutions (batch_id, campaign_id, action, reason, contacts, resolved_by)
VALUES ($1, $2, $3, $4, $5, $6)
RETURNING id, resolved_at
"""

# Contacts back in `pending` (or a batch back in the queue) change no row a wake
# trigger watches: tell the daemons now rather than at their next poll.
WAKE_DAEMONS = "SELECT pg_notify('campaign_wake', 'batches')"

_ALREADY: Final = {
    "pending": "the daemons are still sending it, by its unique_id, until Aculab "
    "acknowledges it or it is parked",
    "submitted": "Aculab acknowledged it: its calls started and their outcomes are tracked",
    "split": "Aculab refused the list and it was split into new batches (see "
    "`campaign batches --all`); resolve those if they are parked",
    "rejected": "Aculab refused it, so it started nothing, and its contacts were settled",
    "released": "it started nothing and its contacts went back to the queue",
    "failed": "its contacts were marked failed",
}


def resend_deadline_seconds(idempotency_window_seconds: float) -> float:
    """The batch age from which a re-send may outlive Aculab's memory of the unique_id.

    A batch given back to the daemons may go out as late as one idempotency window
    after the resolution (the window then counts from it), and Aculab is only
    assumed to remember the id for UNIQUE_ID_RETENTION_SECONDS after the first
    send, which is no earlier than the batch's creation.
    """
    return UNIQUE_ID_RETENTION_SECONDS - idempotency_window_seconds


async def _not_parked(conn: Conn, row: asyncpg.Record) -> NotParked:
    state: str = row["state"]
    message = f"batch {row['id']} is {state}: nothing to resolve ({_ALREADY.get(state, state)})"
    last = await conn.fetchrow(LAST_RESOLUTION, row["id"])
    if last is not None:
        when = last["resolved_at"].isoformat(timespec="seconds")
        message += f"; resolved as {last['action']} by {last['resolved_by']} at {when}"
    return NotParked(message)


def _operator(resolved_by: str, reason: str | None) -> str:
    return f"operator {resolved_by}" + (f" ({reason})" if reason else "")


async def resolve_batch(
    pool: Pool,
    batch_id: int,
    action: ResolveAction,
    *,
    reason: str | None,
    resolved_by: str,
    idempotency_window_seconds: float,
    force: bool = False,
) -> Resolution:
    """Settle a parked batch in one transaction and record who did what.

    Raises BatchNotFound, NotParked (any state but parked, checked under the row
    lock), ResendRefused (a re-send of a batch at or past `resend_deadline_seconds`
    of age without `force`, or in a cancelled campaign) and ReasonRequired
    (`failed` without a reason).
    """
    if action == "failed" and not (reason and reason.strip()):
        raise ReasonRequired("--failed needs --reason TEXT: it is what the contacts will show")
    async with pool.acquire() as conn, conn.transaction():
        row = await conn.fetchrow(LOCK_BATCH, batch_id)
        if row is None:
            raise BatchNotFound(batch_id)
        if row["state"] != "parked":
            raise await _not_parked(conn, row)
        campaign_state: CampaignState = row["campaign_state"]
        age: float = row["age_seconds"]
        who = _operator(resolved_by, reason)
        forced = False
        if action == "resend":
            if campaign_state == "cancelled":
                raise ResendRefused(
                    f"campaign {row['campaign']!r} is cancelled, so batch {batch_id} would "
                    "never be sent: resolve it with --not-started or --failed"
                )
            if age >= resend_deadline_seconds(idempotency_window_seconds):
                if not force:
                    raise ResendRefused(_too_old(batch_id, age, idempotency_window_seconds))
                forced = True
            contacts_state = "dispatching"
            contacts: int = await conn.fetchval(RESEND_BATCH, batch_id, f"re-send asked by {who}")
            await conn.execute(WAKE_DAEMONS)
        elif action == "not_started":
            cancelled = campaign_state == "cancelled"
            contacts_state = "cancelled" if cancelled else "pending"
            said = f"batch {batch_id} started nothing at Aculab (checked by {who})"
            contact_error = f"{CANCELLED_CONTACT_ERROR}; {said}" if cancelled else said
            contacts = await conn.fetchval(
                RELEASE_BATCH, batch_id, f"released: {said}", cancelled, contact_error
            )
            await conn.execute(WAKE_DAEMONS)
        else:
            contacts_state = "failed"
            contacts = await conn.fetchval(FAIL_BATCH, batch_id, f"failed by {who}", reason)
        recorded = await conn.fetchrow(
            RECORD_RESOLUTION, batch_id, row["campaign_id"], action, reason, contacts, resolved_by
        )
        assert recorded is not None  # INSERT ... RETURNING returns the row it inserted
    return Resolution(
        id=recorded["id"],
        batch_id=batch_id,
        campaign_id=row["campaign_id"],
        campaign=row["campaign"],
        campaign_state=campaign_state,
        unique_id=row["unique_id"],
        in_doubt=row["in_doubt"],
        action=action,
        contacts=contacts,
        contacts_state=contacts_state,
        reason=reason,
        resolved_by=resolved_by,
        resolved_at=recorded["resolved_at"],
        age_seconds=age,
        forced=forced,
    )


def _hours(seconds: float) -> str:
    return f"{seconds / 3600:.1f}".removesuffix(".0") + " h"


def _too_old(batch_id: int, age: float, window: float) -> str:
    return (
        f"batch {batch_id} was created {_hours(age)} ago: a re-send may go out up to the "
        f"{_hours(window)} idempotency window later, and Aculab is only assumed to remember "
        f"a unique_id for {_hours(UNIQUE_ID_RETENTION_SECONDS)} (campaign/assumptions.py), "
        "so it could start the calls twice; check with Aculab and use --not-started or "
        "--failed, or add --force to re-send anyway"
    )
