"""The engine's SQL: named statements next to thin typed functions.

Every statement is parameterised and works on whole batches (unnest/ANY), so
the number of round trips per batch is fixed whatever its size.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple, TypeAlias

import asyncpg

from campaign.vocabulary import CampaignState

# The one connection type of campaign/db: a connection of its own or one from the pool.
# A string, so that asyncpg's generic classes are not subscripted at run time.
Conn: TypeAlias = (
    "asyncpg.Connection[asyncpg.Record] | asyncpg.pool.PoolConnectionProxy[asyncpg.Record]"
)


@dataclass(frozen=True)
class CampaignRow:
    id: int
    name: str
    service_name: str
    caller_id: str | None
    batch_size: int
    calls_per_second: float
    default_country: str | None
    priority: int
    max_concurrent_calls: int = 100
    default_timezone: str | None = None
    window_start: str | None = None
    """Local time as PostgreSQL prints it ('09:00:00', '24:00:00')."""
    window_end: str | None = None
    window_days: tuple[int, ...] = (1, 2, 3, 4, 5, 6, 7)


class ContactRow(NamedTuple):
    """A contact as the claim judges it. A named tuple rather than a frozen dataclass:
    `campaign load` builds one per row of the file, and this is four times cheaper."""

    id: int
    destination: str
    caller_id: str | None
    token: str | None
    outbound_parameters: str | None
    extra_sip_headers: Any
    dispatch_count: int
    timezone: str | None = None


@dataclass(frozen=True)
class BatchRow:
    """A persisted batch, as a daemon sends it."""

    id: int
    campaign_id: int
    campaign_name: str
    service_name: str
    unique_id: str
    rest_calls: str
    contact_ids: list[int]
    sends: int
    age_seconds: float
    previous_owner: str | None = None
    # True only for a batch this daemon has just claimed: its contacts' calling
    # windows were checked a moment ago. Any other is checked again before a send.
    first_send: bool = False
    # Some earlier send of it may have started calls at Aculab (batches.in_doubt,
    # including a send its previous owner never recorded the end of).
    in_doubt: bool = False


_CAMPAIGN_COLUMNS = """
    id, name, service_name, caller_id, batch_size, calls_per_second, default_country, priority,
    max_concurrent_calls, default_timezone,
    -- As text: asyncpg cannot decode time '24:00' (the end of the day) into datetime.time.
    window_start::text AS window_start, window_end::text AS window_end, window_days
"""

ACTIVE_CAMPAIGNS = f"""
SELECT {_CAMPAIGN_COLUMNS}
FROM campaigns
WHERE state = 'active'
ORDER BY priority DESC, id
"""


def _campaign(row: asyncpg.Record) -> CampaignRow:
    return CampaignRow(
        id=row["id"],
        name=row["name"],
        service_name=row["service_name"],
        caller_id=row["caller_id"],
        batch_size=row["batch_size"],
        calls_per_second=row["calls_per_second"],
        default_country=row["default_country"],
        priority=row["priority"],
        max_concurrent_calls=row["max_concurrent_calls"],
        default_timezone=row["default_timezone"],
        window_start=row["window_start"],
        window_end=row["window_end"],
        window_days=tuple(row["window_days"]),
    )


async def active_campaigns(conn: Conn) -> list[CampaignRow]:
    return [_campaign(r) for r in await conn.fetch(ACTIVE_CAMPAIGNS)]


@dataclass(frozen=True)
class DueCampaign:
    """An active campaign as the dispatcher's loop sees it before taking any lock."""

    id: int
    priority: int
    service_name: str
    due_in: float | None
    """Seconds until its first pending contact is due (0 or less: due now); None when
    it has no pending contact."""


# One lookup per active campaign: the first entry of its range in contacts_due_idx
# (migration 0008), never a scan of its contacts. `$1` NULL: every active campaign;
# else only those ids (the ones a notification named, or a claim just emptied).
DUE_CAMPAIGNS = """
SELECT k.id, k.priority, k.service_name,
       extract(epoch FROM (
           SELECT min(greatest(c.next_attempt_at, c.not_before))
           FROM contacts c
           WHERE c.campaign_id = k.id AND c.state = 'pending') - now())::float8 AS due_in
FROM campaigns k
WHERE k.state = 'active' AND ($1::bigint[] IS NULL OR k.id = ANY($1::bigint[]))
"""


async def due_campaigns(conn: Conn, ids: Sequence[int] | None = None) -> list[DueCampaign]:
    rows = await conn.fetch(DUE_CAMPAIGNS, None if ids is None else list(ids))
    return [DueCampaign(r["id"], r["priority"], r["service_name"], r["due_in"]) for r in rows]


# The claim's first locks in one round trip, for every campaign of the claim. The
# campaigns FOR SHARE, in id order (a pause of several campaigns locks them in the
# same order, PAUSE_SERVICE_CAMPAIGNS): a concurrent pause/cancel waits for this
# claim to commit, and a claim that starts after the pause committed sees the
# campaign inactive. Their budgets as LOCK_BUDGETS does; they are locked even when a
# campaign turns out not to be active, which only holds them until this transaction
# ends.
LOCK_CAMPAIGNS_AND_BUDGETS = f"""
WITH budgets AS (
    INSERT INTO rate_budgets (key)
    SELECT k FROM unnest($2::text[]) AS k ORDER BY k
    ON CONFLICT (key) DO UPDATE SET key = excluded.key
)
SELECT {_CAMPAIGN_COLUMNS}
FROM campaigns
WHERE id = ANY($1::bigint[]) AND state = 'active'
ORDER BY id
FOR SHARE
"""


async def lock_campaigns_and_budgets(
    conn: Conn, campaign_ids: Sequence[int], budget_keys: Sequence[str]
) -> dict[int, CampaignRow]:
    """Lock the campaigns (those active are returned, by id) and the budgets `budget_keys`.

    The budgets' grants must then be read by a later statement (recent_grants), so
    that they include every grant committed by a claim that held the lock before us.
    """
    rows = await conn.fetch(LOCK_CAMPAIGNS_AND_BUDGETS, sorted(campaign_ids), list(budget_keys))
    return {r["id"]: _campaign(r) for r in rows}


# In any state, unlocked: what `campaign why` and `campaign load` judge contacts by.
CAMPAIGN_BY_ID = f"""
SELECT {_CAMPAIGN_COLUMNS}
FROM campaigns
WHERE id = $1
"""


async def campaign_row(conn: Conn, campaign_id: int) -> CampaignRow | None:
    row = await conn.fetchrow(CAMPAIGN_BY_ID, campaign_id)
    return _campaign(row) if row is not None else None


# --- pacing: a sliding one-second window shared by every daemon -------------------

# The budget rows' locks serialise every daemon's claims on the same budgets.
# One upsert creates a budget on first use and locks it either way (DO UPDATE
# takes the row lock, as FOR UPDATE would); rows are taken in key order so two
# claims cannot deadlock.
LOCK_BUDGETS = """
INSERT INTO rate_budgets (key)
SELECT k FROM unnest($1::text[]) AS k ORDER BY k
ON CONFLICT (key) DO UPDATE SET key = excluded.key
"""

# now() (the transaction's start, a little earlier) bounds the index range scan,
# which clock_timestamp() cannot; the ages are exact and each budget keeps only
# the grants inside its own window (dispatch.pacing_room).
RECENT_GRANTS = """
SELECT key, extract(epoch FROM clock_timestamp() - granted_at)::float8 AS age, calls
FROM rate_grants
WHERE key = ANY($1::text[]) AND granted_at > now() - make_interval(secs => $2)
ORDER BY granted_at
"""

# Grants are kept as long as the longest budget window needs them: 1/cps seconds, up to
# 1,000 s at 0.001 calls/s (the daemon passes 1,060 s, daemon.GRANT_HISTORY_SECONDS),
# not "a few seconds" as migration 0002's comment says (corrected in migration 0011).
FORGET_OLD_GRANTS = """
DELETE FROM rate_grants WHERE granted_at < now() - make_interval(secs => $1)
"""


@dataclass(frozen=True)
class Grant:
    age: float
    calls: int


async def recent_grants(
    conn: Conn, keys: Sequence[str], window_seconds: float
) -> dict[str, list[Grant]]:
    """Each budget's grants inside the window, oldest first (read after its lock)."""
    grants: dict[str, list[Grant]] = {k: [] for k in keys}
    for r in await conn.fetch(RECENT_GRANTS, list(keys), window_seconds):
        grants[r["key"]].append(Grant(r["age"], r["calls"]))
    return grants


# What counts against max_concurrent_calls: calls started and not finished plus
# contacts being started now, each counted only up to the cap, because the claim
# needs "how much room is left" and an uncapped count grows with the campaign. One
# row per campaign of `$1`, each with its own cap in `$2`.
OPEN_CALLS = """
SELECT w.id,
       (SELECT count(*) FROM (
            SELECT 1 FROM calls
            WHERE campaign_id = w.id AND finished_at IS NULL LIMIT w.cap) AS c)
     + (SELECT count(*) FROM (
            SELECT 1 FROM contacts
            WHERE campaign_id = w.id AND state = 'dispatching' LIMIT w.cap) AS d) AS n
FROM unnest($1::bigint[], $2::int[]) AS w(id, cap)
"""


async def open_calls(conn: Conn, caps: dict[int, int]) -> dict[int, int]:
    """Each campaign's calls started and not finished, plus those being started now
    (at most 2 x its cap in `caps`)."""
    rows = await conn.fetch(OPEN_CALLS, list(caps), list(caps.values()))
    return {r["id"]: r["n"] for r in rows}


async def forget_old_grants(conn: Conn, older_than_seconds: float) -> None:
    await conn.execute(FORGET_OLD_GRANTS, older_than_seconds)


# --- step 1: claim and persist --------------------------------------------------

# What the claim judges a contact by (dispatch.contact_verdict); `campaign why` and
# `campaign load` select the same columns.
CONTACT_COLUMNS = """
    id, destination, caller_id, token, outbound_parameters,
    -- As text, decoded per contact by the dispatcher: one hostile value (JSON
    -- nested too deep to decode) must make one contact invalid, not fail the claim.
    extra_sip_headers::text AS extra_sip_headers, dispatch_count, timezone
"""

# Walks contacts_claim_idx (migration 0008) in claim order, priority first, from
# just after the key `($3, $4)` up to the key `($5, $6)` included, a key being
# (-priority, id). A dispatcher resumes after the last contact it took, so that it
# does not walk again, claim after claim, over the entries of contacts that left
# `pending` and that no VACUUM has removed yet; from time to time it starts from
# the first key again (dispatch.Dispatcher.claim_group). CLAIM_GROUP_CONTACTS is
# this query for several campaigns at once.
CLAIM_CONTACTS = f"""
SELECT {CONTACT_COLUMNS}, -(priority::bigint) AS rank
FROM contacts
WHERE campaign_id = $1
  AND state = 'pending'
  AND (-(priority::bigint), id) > ($3::bigint, $4::bigint)
  AND (-(priority::bigint), id) <= ($5::bigint, $6::bigint)
  AND next_attempt_at <= now()
  AND (not_before IS NULL OR not_before <= now())
ORDER BY -(priority::bigint), id
LIMIT $2
FOR UPDATE SKIP LOCKED
"""

# CLAIM_CONTACTS for each campaign of one claim transaction, in one round trip: row
# w of the arrays is a campaign, its limit and its two keys; each campaign's range
# of contacts_claim_idx is walked as CLAIM_CONTACTS walks it.
CLAIM_GROUP_CONTACTS = f"""
SELECT w.campaign_id, c.*
FROM unnest($1::bigint[], $2::int[], $3::bigint[], $4::bigint[], $5::bigint[], $6::bigint[])
     WITH ORDINALITY AS w(campaign_id, lim, after_rank, after_id, upto_rank, upto_id, ord)
CROSS JOIN LATERAL (
    SELECT {CONTACT_COLUMNS}, -(priority::bigint) AS rank
    FROM contacts
    WHERE campaign_id = w.campaign_id
      AND state = 'pending'
      AND (-(priority::bigint), id) > (w.after_rank, w.after_id)
      AND (-(priority::bigint), id) <= (w.upto_rank, w.upto_id)
      AND next_attempt_at <= now()
      AND (not_before IS NULL OR not_before <= now())
    ORDER BY -(priority::bigint), id
    LIMIT w.lim
    FOR UPDATE SKIP LOCKED
) AS c
ORDER BY w.ord, c.rank, c.id
"""

ClaimKey = tuple[int, int]
"""A contact's place in claim order: (-priority, id)."""
FIRST_KEY: ClaimKey = (-(2**63), -(2**63))
"""Before every contact."""
LAST_KEY: ClaimKey = (2**63 - 1, 2**63 - 1)
"""After every contact."""


def contact_row(r: asyncpg.Record) -> ContactRow:
    """A row selected with CONTACT_COLUMNS."""
    return ContactRow(
        id=r["id"],
        destination=r["destination"],
        caller_id=r["caller_id"],
        token=r["token"],
        outbound_parameters=r["outbound_parameters"],
        extra_sip_headers=r["extra_sip_headers"],
        dispatch_count=r["dispatch_count"],
        timezone=r["timezone"],
    )


async def claim_contacts(
    conn: Conn,
    campaign_id: int,
    limit: int,
    after: ClaimKey = FIRST_KEY,
    up_to: ClaimKey = LAST_KEY,
) -> tuple[list[ContactRow], ClaimKey | None]:
    """Due contacts in claim order between the keys `after` (excluded) and `up_to`,
    locked; and the key of the last one (None when there is none)."""
    rows = await conn.fetch(CLAIM_CONTACTS, campaign_id, limit, *after, *up_to)
    last = (rows[-1]["rank"], rows[-1]["id"]) if rows else None
    return [contact_row(r) for r in rows], last


@dataclass(frozen=True)
class ContactRange:
    """One campaign's part of CLAIM_GROUP_CONTACTS."""

    campaign_id: int
    limit: int
    after: ClaimKey = FIRST_KEY
    up_to: ClaimKey = LAST_KEY


async def claim_group_contacts(
    conn: Conn, ranges: Sequence[ContactRange]
) -> dict[int, tuple[list[ContactRow], ClaimKey | None]]:
    """claim_contacts for each range (one per campaign) in one statement."""
    out: dict[int, tuple[list[ContactRow], ClaimKey | None]] = {
        r.campaign_id: ([], None) for r in ranges
    }
    if not ranges:
        return out
    rows = await conn.fetch(
        CLAIM_GROUP_CONTACTS,
        [r.campaign_id for r in ranges],
        [r.limit for r in ranges],
        [r.after[0] for r in ranges],
        [r.after[1] for r in ranges],
        [r.up_to[0] for r in ranges],
        [r.up_to[1] for r in ranges],
    )
    for r in rows:
        contacts, _ = out[r["campaign_id"]]
        contacts.append(contact_row(r))
        out[r["campaign_id"]] = (contacts, (r["rank"], r["id"]))
    return out


# The do-not-call list for several campaigns at once: row w is a number that
# campaign `$1[w]` is about to call; it is blocked by an entry for every campaign
# or for that one.
SUPPRESSED = """
SELECT DISTINCT w.campaign_id, w.number
FROM unnest($1::bigint[], $2::text[]) AS w(campaign_id, number)
JOIN suppressions s
  ON s.destination = w.number AND (s.campaign_id IS NULL OR s.campaign_id = w.campaign_id)
"""


async def suppressed_pairs(
    conn: Conn, campaign_ids: Sequence[int], numbers: Sequence[str]
) -> set[tuple[int, str]]:
    """The (campaign, number) pairs on the do-not-call list."""
    if not numbers:
        return set()
    rows = await conn.fetch(SUPPRESSED, list(campaign_ids), list(numbers))
    return {(r["campaign_id"], r["number"]) for r in rows}


async def suppressed(conn: Conn, campaign_id: int, numbers: Sequence[str]) -> set[str]:
    pairs = await suppressed_pairs(conn, [campaign_id] * len(numbers), numbers)
    return {number for _, number in pairs}


# A key already owned by another contact of the same campaign (committed, or
# inserted concurrently: ON CONFLICT then waits for that transaction) is not ours.
# Row w: a contact of campaign `$1[w]` wanting the key `$2[w]`.
OWN_KEYS = """
WITH wanted AS (
    SELECT * FROM unnest($1::bigint[], $2::text[], $3::bigint[]) AS w(campaign_id, key, contact_id)
), inserted AS (
    INSERT INTO contact_keys (campaign_id, key, contact_id)
    SELECT campaign_id, key, contact_id FROM wanted
    ON CONFLICT (campaign_id, key) DO NOTHING
    RETURNING campaign_id, key
)
SELECT w.contact_id
FROM wanted w
LEFT JOIN inserted i ON i.campaign_id = w.campaign_id AND i.key = w.key
LEFT JOIN contact_keys k ON k.campaign_id = w.campaign_id AND k.key = w.key
WHERE i.key IS NOT NULL OR k.contact_id = w.contact_id
"""


async def own_keys(
    conn: Conn, campaign_ids: Sequence[int], keys: Sequence[str], contact_ids: Sequence[int]
) -> set[int]:
    """Record each contact as the owner of its destination key in its campaign; return
    the owners."""
    if not keys:
        return set()
    rows = await conn.fetch(OWN_KEYS, list(campaign_ids), list(keys), list(contact_ids))
    return {r["contact_id"] for r in rows}


SET_OUTCOME_STATES = """
UPDATE contacts c
SET state = t.state, last_result = t.state, last_error = t.reason, waiting_for_window = false,
    updated_at = now()
FROM unnest($1::bigint[], $2::text[], $3::text[]) AS t(id, state, reason)
WHERE c.id = t.id
"""


async def set_states(
    conn: Conn, ids: Sequence[int], states: Sequence[str], reasons: Sequence[str]
) -> None:
    if ids:
        await conn.execute(SET_OUTCOME_STATES, list(ids), list(states), list(reasons))


# The wait is a delay on the database's clock, which the claim compares
# next_attempt_at with: an absolute time from a daemon whose clock runs behind
# would bring the contacts back before their window opens, claim after claim.
# waiting_for_window is what a window change wakes (migration 0011's trigger) and
# what `campaign why` and `campaign plan` group by; last_result says the same to a
# person reading an export.
DEFER_CONTACTS = """
UPDATE contacts c
SET next_attempt_at = now() + make_interval(secs => t.wait), waiting_for_window = true,
    last_result = 'outside_window', last_error = t.reason, updated_at = now()
FROM unnest($1::bigint[], $2::float8[], $3::text[]) AS t(id, wait, reason)
WHERE c.id = t.id
"""


async def defer(
    conn: Conn, ids: Sequence[int], waits: Sequence[float], reasons: Sequence[str]
) -> None:
    """Contacts outside their calling window wait `waits` seconds; no attempt is used."""
    if ids:
        await conn.execute(DEFER_CONTACTS, list(ids), list(waits), list(reasons))


# A split's children: owned by the daemon that split, which wakes to take and send
# them (not `sending` yet: nothing can have gone out under their new ids).
INSERT_BATCH = """
INSERT INTO batches (campaign_id, parent_id, service_name, unique_id, rest_calls, contact_ids,
                     owner, lease_until, sending)
VALUES ($1, $2, $3, $4, $5, $6, $7, now() + make_interval(secs => $8), false)
RETURNING id
"""


# New batches of one claim (of one campaign or several), their contacts and the
# pacing grants, in one statement (one round trip however many batches a claim
# takes): the contacts become `dispatching` and name their batch; each one's
# dispatch count rises, so a later batch of the same contact gets a new unique_id.
# Batch i is of campaign `$1[i]` and service `$2[i]`; its contacts are those of `$5`
# whose `$6` is i (from 1), in request order. `sending`: the claiming daemon sends
# them at once; should it die before recording what became of a send, whoever takes
# the batch over counts it as in doubt. Each budget `$9[k]` is granted `$10[k]`
# calls. Returns the batch ids in the order of `$3`.
INSERT_DISPATCHING_BATCHES = """
WITH input AS (
    SELECT * FROM unnest($1::bigint[], $2::text[], $3::text[], $4::text[])
        WITH ORDINALITY AS t(campaign_id, service_name, unique_id, rest_calls, ord)
), members AS (
    SELECT * FROM unnest($5::bigint[], $6::bigint[]) WITH ORDINALITY AS m(contact_id, ord, pos)
), b AS (
    INSERT INTO batches (campaign_id, parent_id, service_name, unique_id, rest_calls,
                         contact_ids, owner, lease_until, sending)
    SELECT i.campaign_id, NULL, i.service_name, i.unique_id, i.rest_calls,
           ARRAY(SELECT m.contact_id FROM members m WHERE m.ord = i.ord ORDER BY m.pos),
           $7, now() + make_interval(secs => $8), true
    FROM input i
    ORDER BY i.ord
    RETURNING id, unique_id
), marked AS (
    UPDATE contacts c
    SET state = 'dispatching', dispatch_count = c.dispatch_count + 1,
        batch_id = b.id, last_error = NULL, waiting_for_window = false, updated_at = now()
    FROM b, input i, members m
    WHERE i.unique_id = b.unique_id AND m.ord = i.ord AND c.id = m.contact_id
), granted AS (
    INSERT INTO rate_grants (key, granted_at, calls)
    SELECT g.key, clock_timestamp(), g.calls FROM unnest($9::text[], $10::int[]) AS g(key, calls)
)
SELECT b.id FROM b JOIN input i ON i.unique_id = b.unique_id ORDER BY i.ord
"""


@dataclass(frozen=True)
class NewBatch:
    campaign_id: int
    service_name: str
    unique_id: str
    rest_calls: str
    contact_ids: list[int]


async def insert_dispatching_batches(
    conn: Conn,
    *,
    batches: Sequence[NewBatch],
    owner: str,
    lease_seconds: float,
    grants: dict[str, int],
) -> list[int]:
    """Store new batches under our lease, mark their contacts `dispatching`, and record
    the calls granted against each budget of `grants`; the batch ids, in order."""
    members = [cid for b in batches for cid in b.contact_ids]
    places = [n for n, b in enumerate(batches, 1) for _ in b.contact_ids]
    rows = await conn.fetch(
        INSERT_DISPATCHING_BATCHES,
        [b.campaign_id for b in batches],
        [b.service_name for b in batches],
        [b.unique_id for b in batches],
        [b.rest_calls for b in batches],
        members,
        places,
        owner,
        lease_seconds,
        list(grants),
        list(grants.values()),
    )
    return [r["id"] for r in rows]


async def insert_batch(
    conn: Conn,
    *,
    campaign_id: int,
    parent_id: int | None,
    service_name: str,
    unique_id: str,
    rest_calls: str,
    contact_ids: Sequence[int],
    owner: str,
    lease_seconds: float,
) -> int:
    batch_id: int = await conn.fetchval(
        INSERT_BATCH,
        campaign_id,
        parent_id,
        service_name,
        unique_id,
        rest_calls,
        list(contact_ids),
        owner,
        lease_seconds,
    )
    return batch_id


# --- step 3: acknowledge ---------------------------------------------------------

# One statement, so it is atomic without a transaction: the batch becomes
# `submitted` with its references, each contact gets its reference (in request
# order) and a `calls` row for the poller. A pending batch is acknowledged, and so
# is a parked one: a late answer (the daemon that sent it lost its lease, another
# parked it) settles the very doubt it was parked for. A batch already
# acknowledged (or released, or failed) returns no row and changes nothing.
# A contact that was cancelled while its batch was in flight keeps its state,
# but its call is still recorded: it was started.
ACKNOWLEDGE = """
WITH b AS (
    UPDATE batches
    SET state = 'submitted', references_ = $2::text[], sends = sends + 1, finished_at = now(),
        last_error = NULL, owner = NULL, lease_until = NULL, sending = false
    WHERE id = $1 AND state IN ('pending', 'parked')
    RETURNING contact_ids
), t AS (
    SELECT t.contact_id, t.reference
    FROM b, unnest(b.contact_ids, $2::text[]) AS t(contact_id, reference)
), u AS (
    UPDATE contacts c
    SET state = CASE WHEN c.state = 'dispatching' THEN 'dialing' ELSE c.state END,
        attempts = c.attempts + 1, reference = t.reference, last_error = NULL, updated_at = now()
    FROM t
    WHERE c.id = t.contact_id AND c.batch_id = $1
    RETURNING c.id, c.campaign_id, c.attempts, c.reference
), recorded AS (
    INSERT INTO calls (contact_id, campaign_id, batch_id, attempt, reference, next_poll_at)
    SELECT id, campaign_id, $1, attempts, reference, now() + make_interval(secs => $3::float8)
    FROM u
)
SELECT contact_ids FROM b
"""


async def acknowledge(
    conn: Conn, batch_id: int, references: Sequence[str], first_poll_delay: float
) -> list[int] | None:
    """Store the references against the contacts in request order.

    Returns the contact ids, or None when the batch was already acknowledged
    (by a daemon that took it over): then nothing changes. The caller must
    have checked that there is one reference per contact (it parks the batch
    otherwise).
    """
    contact_ids: list[int] | None = await conn.fetchval(
        ACKNOWLEDGE, batch_id, list(references), first_poll_delay
    )
    return contact_ids


# --- step 4: transient failure, parking ------------------------------------------

# The send failed; `$5`: whether this one may have started calls. Doubt, once
# there, stays: a later "connection refused" does not undo an earlier timeout.
RESCHEDULE_BATCH = """
UPDATE batches
SET sends = sends + 1, last_error = $3, next_send_at = now() + make_interval(secs => $4),
    sending = false, in_doubt = in_doubt OR $5, held_for_window = false
WHERE id = $1 AND state = 'pending' AND owner = $2
"""


async def reschedule(
    conn: Conn,
    batch_id: int,
    owner: str,
    error: str,
    delay_seconds: float,
    may_have_started: bool = True,
) -> bool:
    status: str = await conn.execute(
        RESCHEDULE_BATCH, batch_id, owner, error, delay_seconds, may_have_started
    )
    return status.endswith(" 1")


# What a re-send needs to check again: the campaign's state and window, and each
# contact's destination and time zone.
BATCH_WINDOW = f"""
SELECT {_CAMPAIGN_COLUMNS}, state
FROM campaigns WHERE id = $1
"""

BATCH_CONTACT_PLACES = """
SELECT destination, timezone FROM contacts WHERE id = ANY($1::bigint[])
"""


@dataclass(frozen=True)
class BatchPlaces:
    campaign: CampaignRow
    campaign_state: CampaignState
    places: list[tuple[str, str | None]]
    """Each contact's (destination, timezone)."""


async def batch_places(
    conn: Conn, campaign_id: int, contact_ids: Sequence[int]
) -> BatchPlaces | None:
    """The campaign, its state and each contact's place, for the checks before a re-send."""
    row = await conn.fetchrow(BATCH_WINDOW, campaign_id)
    if row is None:
        return None
    places = await conn.fetch(BATCH_CONTACT_PLACES, list(contact_ids))
    return BatchPlaces(
        _campaign(row), row["state"], [(r["destination"], r["timezone"]) for r in places]
    )


# Not sent: the batch waits, unowned, `$3` seconds by the database's clock (a
# daemon whose clock runs behind would otherwise take it back before its window
# opens, again and again); any daemon may take it then. `$5`: it waits for its
# contacts' calling window, so that a window change wakes it (migration 0011).
HOLD_BATCH = """
WITH b AS (
    UPDATE batches
    SET next_send_at = now() + make_interval(secs => $3), last_error = $4, owner = NULL,
        lease_until = NULL, sending = false, held_for_window = $5
    WHERE id = $1 AND state = 'pending' AND owner = $2
    RETURNING id
)
UPDATE contacts c SET last_error = $4, updated_at = now()
FROM b WHERE c.batch_id = b.id AND c.state = 'dispatching'
"""


async def hold(conn: Conn, batch_id: int, owner: str, seconds: float, reason: str) -> None:
    """Hand a batch back unsent, to be taken again in `seconds` (0: as soon as its
    campaign is active again); not a hold for the calling window (hold_for_window)."""
    await conn.execute(HOLD_BATCH, batch_id, owner, seconds, reason, False)


async def hold_for_window(
    conn: Conn, batch_id: int, owner: str, seconds: float, reason: str
) -> None:
    """Hand a batch back unsent until its contacts' calling window opens in `seconds`;
    a change of the campaign's window wakes it at once."""
    await conn.execute(HOLD_BATCH, batch_id, owner, seconds, reason, True)


# Only by its owner, as for closing (CLOSE_BATCH). A parked batch is in doubt by
# definition: that is why it waits for a person instead of going back to the queue.
PARK_BATCH = """
WITH b AS (
    UPDATE batches
    SET state = 'parked', last_error = $2, finished_at = now(), owner = NULL, lease_until = NULL,
        sending = false, in_doubt = true, raw_answer = coalesce($4, raw_answer)
    WHERE id = $1 AND state = 'pending' AND owner = $3
    RETURNING id
), marked AS (
    UPDATE contacts c SET last_error = $2, updated_at = now()
    FROM b WHERE c.batch_id = b.id AND c.state = 'dispatching'
)
SELECT count(*) FROM b
"""


async def park(
    conn: Conn, batch_id: int, owner: str, reason: str, raw_answer: str | None = None
) -> bool:
    """pending -> parked; False when it is closed already or no longer ours."""
    n: int = await conn.fetchval(PARK_BATCH, batch_id, reason, owner, raw_answer)
    return n == 1


# A batch that never reached Aculab and can no longer be sent under its id goes
# away, and its contacts go back to the queue without using an attempt (their
# dispatch count stays raised, so their next batch has a new unique_id). In a
# cancelled campaign they are cancelled, as `campaign cancel` does with pending
# contacts. Refused for a batch in doubt: that one is parked.
RELEASE_BATCH = """
WITH b AS (
    UPDATE batches
    SET state = 'released', last_error = $2, finished_at = now(), owner = NULL,
        lease_until = NULL, sending = false
    WHERE id = $1 AND state = 'pending' AND owner = $3 AND NOT in_doubt
    RETURNING id, campaign_id
), freed AS (
    UPDATE contacts c
    SET state = CASE WHEN k.state = 'cancelled' THEN 'cancelled' ELSE 'pending' END,
        batch_id = NULL, next_attempt_at = now(), last_error = $2, updated_at = now()
    FROM b, campaigns k
    WHERE c.batch_id = b.id AND c.state = 'dispatching' AND k.id = b.campaign_id
    RETURNING c.id
)
SELECT (SELECT count(*) FROM b) AS batches, (SELECT count(*) FROM freed) AS contacts
"""


async def release(conn: Conn, batch_id: int, owner: str, reason: str) -> int | None:
    """pending, not in doubt -> released; the contacts freed, or None if refused."""
    row = await conn.fetchrow(RELEASE_BATCH, batch_id, reason, owner)
    if row is None or row["batches"] != 1:
        return None
    freed: int = row["contacts"]
    return freed


# --- step 5: permanent failure ---------------------------------------------------

# Only by its owner: a daemon whose lease ran out while it waited for Aculab must
# not close a batch that another daemon has taken over (and may have sent).
CLOSE_BATCH = """
UPDATE batches
SET state = $2, last_error = $3, finished_at = now(), owner = NULL, lease_until = NULL,
    sending = false
WHERE id = $1 AND state = 'pending' AND owner = $4
RETURNING contact_ids
"""


async def close_batch(
    conn: Conn, batch_id: int, state: str, reason: str, owner: str
) -> list[int] | None:
    """pending → split/rejected; None when it is closed already or no longer ours."""
    ids: list[int] | None = await conn.fetchval(CLOSE_BATCH, batch_id, state, reason, owner)
    return ids


MOVE_CONTACTS = """
UPDATE contacts SET batch_id = $1, updated_at = now()
WHERE id = ANY($2::bigint[]) AND batch_id = $3
"""


async def move_contacts(
    conn: Conn, child_id: int, contact_ids: Sequence[int], parent_id: int
) -> None:
    await conn.execute(MOVE_CONTACTS, child_id, list(contact_ids), parent_id)


# Nothing was started, so the contacts go back to the queue (cancelled, in a
# campaign cancelled meanwhile); the dispatch count stays raised so the next
# batch gets a fresh unique_id.
RETURN_TO_PENDING = """
UPDATE contacts c
SET state = CASE WHEN k.state = 'cancelled' THEN 'cancelled' ELSE 'pending' END,
    batch_id = NULL, last_error = $2, updated_at = now()
FROM campaigns k
WHERE c.batch_id = $1 AND c.state = 'dispatching' AND k.id = c.campaign_id
"""


async def return_to_pending(conn: Conn, batch_id: int, reason: str) -> None:
    await conn.execute(RETURN_TO_PENDING, batch_id, reason)


FAIL_BATCH_CONTACTS = """
UPDATE contacts
SET state = $2, last_result = $2, last_error = $3, updated_at = now()
WHERE batch_id = $1 AND state = 'dispatching'
"""


async def fail_contacts(conn: Conn, batch_id: int, state: str, reason: str) -> None:
    await conn.execute(FAIL_BATCH_CONTACTS, batch_id, state, reason)


# The campaigns are locked in id order, as a claim locks them
# (LOCK_CAMPAIGNS_AND_BUDGETS): the two cannot deadlock.
PAUSE_SERVICE_CAMPAIGNS = """
UPDATE campaigns k
SET state = 'paused', state_reason = $2, updated_at = now()
FROM (SELECT id FROM campaigns
      WHERE service_name = $1 AND state = 'active'
      ORDER BY id
      FOR UPDATE) AS locked
WHERE k.id = locked.id AND k.state = 'active'
RETURNING k.id, k.name
"""


async def pause_service(conn: Conn, service_name: str, reason: str) -> list[str]:
    rows = await conn.fetch(PAUSE_SERVICE_CAMPAIGNS, service_name, reason)
    return [r["name"] for r in rows]


# --- step 6: leases --------------------------------------------------------------

# The batches this daemon should act on now, locked against every other daemon:
# - due ones (next_send_at passed) of active campaigns, to be sent, unless
#   `$8` asks for expired ones only (Aculab is unreachable: nothing is sent but
#   the one probe);
# - expired ones (older than `$5`, counted from window_from when an operator
#   asked for a re-send), whatever their campaign's state or next_send_at: they
#   can no longer be sent under their unique_id, so the daemon releases them
#   (never reached Aculab) or parks them (in doubt).
# Services in `$6` are skipped, and services not in `$7` give at most one batch:
# their credentials are not yet known good, so one request at a time.
# Taking a batch marks it `sending`; one that was still `sending` (its last
# taker died or crashed before recording the end of its send) becomes in doubt.
TAKE_DUE_BATCHES = """
WITH due AS (
    SELECT b.id, b.owner AS previous_owner, b.service_name, b.next_send_at
    FROM batches b
    WHERE b.state = 'pending'
      AND (b.owner = $1 OR b.owner IS NULL OR b.lease_until < now())
      AND NOT (b.id = ANY($4::bigint[]))
      AND NOT (b.service_name = ANY($6::text[]))
      AND CASE
          WHEN coalesce(b.window_from, b.created_at) <= now() - make_interval(secs => $5)
          THEN true
          ELSE NOT $8 AND b.next_send_at <= now()
               AND EXISTS (SELECT 1 FROM campaigns k
                           WHERE k.id = b.campaign_id AND k.state = 'active')
      END
    ORDER BY b.next_send_at
    LIMIT $3
    FOR UPDATE OF b SKIP LOCKED
), chosen AS (
    SELECT id, previous_owner
    FROM (SELECT d.*, row_number() OVER (PARTITION BY d.service_name
                                         ORDER BY d.next_send_at, d.id) AS rank
          FROM due d) AS ranked
    WHERE rank = 1 OR service_name = ANY($7::text[])
)
UPDATE batches b
SET owner = $1, lease_until = now() + make_interval(secs => $2),
    in_doubt = b.in_doubt OR b.sending, sending = true
FROM chosen, campaigns c
WHERE b.id = chosen.id AND c.id = b.campaign_id
RETURNING b.id, b.campaign_id, c.name AS campaign_name, b.service_name, b.unique_id,
          b.rest_calls, b.contact_ids, b.sends, b.in_doubt,
          extract(epoch FROM now() - coalesce(b.window_from, b.created_at))::float8
              AS age_seconds,
          chosen.previous_owner
"""


async def take_due_batches(
    conn: Conn,
    owner: str,
    lease_seconds: float,
    limit: int,
    busy: Sequence[int],
    expire_after_seconds: float,
    *,
    skip_services: Sequence[str] = (),
    confirmed_services: Sequence[str] = (),
    only_expired: bool = False,
) -> list[BatchRow]:
    rows = await conn.fetch(
        TAKE_DUE_BATCHES,
        owner,
        lease_seconds,
        limit,
        list(busy),
        expire_after_seconds,
        list(skip_services),
        list(confirmed_services),
        only_expired,
    )
    return [
        BatchRow(
            id=r["id"],
            campaign_id=r["campaign_id"],
            campaign_name=r["campaign_name"],
            service_name=r["service_name"],
            unique_id=r["unique_id"],
            rest_calls=r["rest_calls"],
            contact_ids=list(r["contact_ids"]),
            sends=r["sends"],
            age_seconds=r["age_seconds"],
            previous_owner=r["previous_owner"],
            in_doubt=r["in_doubt"],
        )
        for r in rows
    ]


# Seconds until the next pending batch of an active campaign that daemon `$1`
# may take is due (negative when one is due now), or NULL when there is none.
NEXT_DUE_IN = """
SELECT extract(epoch FROM min(b.next_send_at) - now())::float8
FROM batches b JOIN campaigns k ON k.id = b.campaign_id
WHERE b.state = 'pending' AND k.state = 'active'
  AND (b.owner = $1 OR b.owner IS NULL OR b.lease_until < now())
"""


async def next_due_in(conn: Conn, owner: str) -> float | None:
    value: float | None = await conn.fetchval(NEXT_DUE_IN, owner)
    return value


# Batches that waited out an Aculab outage are due the moment it answers again.
DUE_NOW = """
UPDATE batches SET next_send_at = now()
WHERE id = ANY($1::bigint[]) AND state = 'pending' AND owner = $2 AND next_send_at > now()
"""


async def due_now(conn: Conn, batch_ids: Sequence[int], owner: str) -> None:
    if batch_ids:
        await conn.execute(DUE_NOW, list(batch_ids), owner)


HEARTBEAT = """
UPDATE batches SET lease_until = now() + make_interval(secs => $2)
WHERE owner = $1 AND state = 'pending'
"""


async def heartbeat(conn: Conn, owner: str, lease_seconds: float) -> None:
    await conn.execute(HEARTBEAT, owner, lease_seconds)


# On a clean stop the leases are handed back at once, so another daemon can
# take the batches over without waiting for them to expire.
# A send still `sending` whose request had begun (`$2`) was cut off by the stop:
# it may have gone out. One taken but never requested is handed back as it was.
RELEASE_LEASES = """
UPDATE batches SET owner = NULL, lease_until = NULL,
                   in_doubt = in_doubt OR (sending AND id = ANY($2::bigint[])),
                   sending = false
WHERE owner = $1 AND state = 'pending'
"""


async def release_leases(conn: Conn, owner: str, requested: Sequence[int] = ()) -> int:
    status: str = await conn.execute(RELEASE_LEASES, owner, list(requested))
    return int(status.split()[-1])


BATCH_STATE = "SELECT state FROM batches WHERE id = $1"


async def batch_state(conn: Conn, batch_id: int) -> str | None:
    state: str | None = await conn.fetchval(BATCH_STATE, batch_id)
    return state


NOTHING_TO_DO = """
SELECT NOT EXISTS (SELECT 1 FROM batches WHERE state = 'pending')
   AND NOT EXISTS (
       SELECT 1 FROM contacts c JOIN campaigns k ON k.id = c.campaign_id
       WHERE k.state = 'active' AND c.state = 'pending'
         AND c.next_attempt_at <= now() AND (c.not_before IS NULL OR c.not_before <= now()))
"""


async def nothing_to_do(conn: Conn) -> bool:
    """No batch waits to be sent and no active campaign has a contact due now."""
    return bool(await conn.fetchval(NOTHING_TO_DO))


PING = "SELECT 1"


async def ping(conn: Conn) -> None:
    """A round trip: the connection and the server are alive."""
    await conn.execute(PING)


# --- progress --------------------------------------------------------------------

# Kept by migration 0009's triggers: a few rows per campaign, however many contacts.
# Groups that net to 0 are left out, as count(*) ... GROUP BY would.
STATE_COUNTS = """
SELECT c.campaign_id, c.state, sum(c.n)::bigint AS n
FROM (
    SELECT campaign_id, state, n FROM contact_counts
    UNION ALL
    SELECT campaign_id, state, n FROM contact_count_deltas
) AS c
JOIN (SELECT DISTINCT unnest($1::bigint[])) AS wanted (id) ON wanted.id = c.campaign_id
GROUP BY c.campaign_id, c.state
HAVING sum(c.n) <> 0
"""

# Moves the deltas the triggers appended into contact_counts, in one statement.
# Deltas of transactions still open are not seen and wait for the next fold; two
# daemons folding at once each move different deltas (the second skips those the
# first deleted). Rows are upserted in key order, so two folds cannot deadlock.
FOLD_CONTACT_COUNTS = """
WITH moved AS (
    DELETE FROM contact_count_deltas RETURNING campaign_id, state, n
)
INSERT INTO contact_counts (campaign_id, state, n)
SELECT campaign_id, state, sum(n) FROM moved
GROUP BY campaign_id, state
ORDER BY campaign_id, state
ON CONFLICT (campaign_id, state) DO UPDATE SET n = contact_counts.n + excluded.n
"""


# What a progress report needs of the active campaigns: their names, not whole rows
# (decoding a thousand rows every few seconds was most of an idle daemon's work).
ACTIVE_CAMPAIGN_NAMES = "SELECT id, name FROM campaigns WHERE state = 'active' ORDER BY id"


async def active_campaign_names(conn: Conn) -> dict[int, str]:
    return {r["id"]: r["name"] for r in await conn.fetch(ACTIVE_CAMPAIGN_NAMES)}


async def state_counts(conn: Conn, campaign_ids: Sequence[int]) -> dict[int, dict[str, int]]:
    """Contacts per state of each campaign, exact as of this statement."""
    out: dict[int, dict[str, int]] = {cid: {} for cid in campaign_ids}
    for r in await conn.fetch(STATE_COUNTS, list(campaign_ids)):
        out[r["campaign_id"]][r["state"]] = r["n"]
    return out


async def fold_contact_counts(conn: Conn) -> None:
    """Keep contact_count_deltas short (reading it stays cheap); changes no figure."""
    await conn.execute(FOLD_CONTACT_COUNTS)


# --- daemons: who is alive, and whether it can reach Aculab -----------------------

# `$2`: seconds since the daemon's circuit breaker opened (NULL: Aculab reachable).
# The first time it is seen open is kept, so the heartbeat does not move it.
DAEMON_SEEN = """
INSERT INTO daemons (owner, aculab_unreachable_since, aculab_error)
VALUES ($1, now() - make_interval(secs => $2), $3)
ON CONFLICT (owner) DO UPDATE
SET seen_at = now(),
    aculab_unreachable_since = CASE WHEN $2::float8 IS NULL THEN NULL
        ELSE coalesce(daemons.aculab_unreachable_since, excluded.aculab_unreachable_since) END,
    aculab_error = excluded.aculab_error
"""

FORGET_DAEMONS = """
DELETE FROM daemons WHERE seen_at < now() - make_interval(secs => $1)
"""

DAEMON_GONE = "DELETE FROM daemons WHERE owner = $1"


async def daemon_seen(
    conn: Conn, owner: str, unreachable_for: float | None, aculab_error: str | None
) -> None:
    """Record this daemon as alive, with whether Aculab is reachable from it."""
    await conn.execute(DAEMON_SEEN, owner, unreachable_for, aculab_error)


async def forget_daemons(conn: Conn, unseen_for_seconds: float) -> None:
    await conn.execute(FORGET_DAEMONS, unseen_for_seconds)


async def daemon_gone(conn: Conn, owner: str) -> None:
    await conn.execute(DAEMON_GONE, owner)
