"""SQL of the operator commands (create, load, pause/resume/cancel, status, suppress, why).

Named statements next to thin typed functions; every value travels as a parameter.
The functions raise `CommandError` subclasses for what the operator got wrong (the
CLI prints the message as one line and exits 2) and let database failures through.
"""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator, AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime
from types import MappingProxyType
from typing import Any, Final, Literal, TypeAlias

import asyncpg

from campaign.db import queries as q
from campaign.db.migrate import pending
from campaign.db.queries import Conn
from campaign.vocabulary import ACCOUNT_BUDGET, CampaignState, campaign_budget

Pool: TypeAlias = "asyncpg.Pool[asyncpg.Record]"


Action = Literal["pause", "resume", "cancel"]

CANCELLED_CONTACT_ERROR: Final = "campaign cancelled"


class CommandError(Exception):
    """The operator asked for something that cannot be done; the message is one line."""


class CampaignNotFound(CommandError):
    def __init__(self, name: str) -> None:
        super().__init__(f"no campaign named {name!r}")


class CampaignExists(CommandError):
    def __init__(self, name: str) -> None:
        super().__init__(f"a campaign named {name!r} already exists")


class InvalidValue(CommandError):
    """A value the schema refuses (a CHECK constraint), named by its column."""


class IllegalTransition(CommandError):
    """A state change the campaign's current state does not allow."""


class NotMigrated(CommandError):
    def __init__(self, missing: Sequence[str], elsewhere: str = "") -> None:
        """`elsewhere`: where the data the operator is after lives instead, if known."""
        super().__init__(
            f"{elsewhere} (its default database is not migrated)"
            if elsewhere
            else f"database is not migrated: run `campaign migrate` ({len(missing)} pending)"
        )
        self.missing = list(missing)


# --- schema check ---------------------------------------------------------------------


async def require_migrated(pool: Pool) -> None:
    """Refuse to work on a database whose schema lags behind this program."""
    async with pool.acquire() as conn:
        missing = await pending(conn)
    if missing:
        raise NotMigrated(missing)


# --- campaigns ------------------------------------------------------------------------


@dataclass(frozen=True)
class CampaignRef:
    id: int
    name: str
    state: CampaignState
    state_reason: str | None


CAMPAIGN_BY_NAME = """
SELECT id, name, state, state_reason FROM campaigns WHERE name = $1
"""

# FOR UPDATE: a state change waits for in-flight claims of this campaign (they hold
# FOR SHARE) and then wins; claims that start afterwards see the new state.
LOCK_CAMPAIGN_BY_NAME = """
SELECT id, name, state, state_reason FROM campaigns WHERE name = $1 FOR UPDATE
"""

# FOR SHARE, taken just before a load commits: a concurrent cancel either commits
# first (and the load sees `cancelled` and rolls back) or waits for the load's commit
# and then cancels the freshly loaded contacts too. Either way none is stranded.
SHARE_CAMPAIGN = """
SELECT id, name, state, state_reason FROM campaigns WHERE id = $1 FOR SHARE
"""


def _ref(row: asyncpg.Record) -> CampaignRef:
    return CampaignRef(
        id=row["id"], name=row["name"], state=row["state"], state_reason=row["state_reason"]
    )


async def campaign_by_name(conn: Conn, name: str) -> CampaignRef:
    row = await conn.fetchrow(CAMPAIGN_BY_NAME, name)
    if row is None:
        raise CampaignNotFound(name)
    return _ref(row)


async def share_campaign(conn: Conn, campaign_id: int) -> CampaignRef | None:
    row = await conn.fetchrow(SHARE_CAMPAIGN, campaign_id)
    return None if row is None else _ref(row)


@dataclass(frozen=True)
class NewCampaign:
    """A campaign to create; None leaves the column's default from the schema."""

    name: str
    service_name: str
    caller_id: str | None = None
    batch_size: int | None = None
    calls_per_second: float | None = None
    max_concurrent_calls: int | None = None
    max_attempts: int | None = None
    retry_delays: Mapping[str, float] | None = None
    default_country: str | None = None
    default_timezone: str | None = None
    priority: int | None = None
    window_start: str | None = None
    """'HH:MM' local time; None keeps the schema's default."""
    window_end: str | None = None
    """'HH:MM' local time, '24:00' allowed; None keeps the schema's default."""
    window_days: Sequence[int] | None = None
    """ISO weekdays (1 = Monday) on which the window opens."""
    paused: bool = False


INSERT_CAMPAIGN = """
INSERT INTO campaigns (name, service_name) VALUES ($1, $2) RETURNING id
"""

# A second statement rather than one INSERT naming every column: the defaults then
# live in the schema only (coalesce keeps the default where no value was given).
SET_CAMPAIGN_POLICY = """
UPDATE campaigns
SET caller_id            = coalesce($2, caller_id),
    batch_size           = coalesce($3, batch_size),
    calls_per_second     = coalesce($4, calls_per_second),
    max_concurrent_calls = coalesce($5, max_concurrent_calls),
    max_attempts         = coalesce($6, max_attempts),
    retry_delays         = coalesce($7::jsonb, retry_delays),
    default_country      = coalesce($8, default_country),
    default_timezone     = coalesce($9, default_timezone),
    priority             = coalesce($10, priority),
    state                = CASE WHEN $11 THEN 'paused' ELSE state END,
    state_reason         = CASE WHEN $11 THEN 'created paused' ELSE state_reason END,
    window_start         = coalesce($12::text::time, window_start),
    window_end           = coalesce($13::text::time, window_end),
    window_days          = coalesce($14::smallint[], window_days)
WHERE id = $1
"""

CHECK_CONSTRAINT = """
SELECT a.attname AS column_name, pg_get_constraintdef(c.oid) AS definition
FROM pg_constraint c
LEFT JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = c.conkey[1]
WHERE c.conname = $1 AND c.conrelid = to_regclass($2)
"""


async def create_campaign(pool: Pool, spec: NewCampaign) -> int:
    """Insert the campaign; its id. Raises CampaignExists or InvalidValue."""
    async with pool.acquire() as conn:
        try:
            async with conn.transaction():
                campaign_id: int = await conn.fetchval(
                    INSERT_CAMPAIGN, spec.name, spec.service_name
                )
                await conn.execute(
                    SET_CAMPAIGN_POLICY,
                    campaign_id,
                    spec.caller_id,
                    spec.batch_size,
                    spec.calls_per_second,
                    spec.max_concurrent_calls,
                    spec.max_attempts,
                    None if spec.retry_delays is None else dict(spec.retry_delays),
                    spec.default_country,
                    spec.default_timezone,
                    spec.priority,
                    spec.paused,
                    spec.window_start,
                    spec.window_end,
                    None if spec.window_days is None else list(spec.window_days),
                )
        except asyncpg.UniqueViolationError:
            raise CampaignExists(spec.name) from None
        except asyncpg.CheckViolationError as exc:
            # Looked up after the rollback: the failed transaction accepts no queries.
            raise await _check_failure(conn, exc, _campaign_values(spec)) from None
    return campaign_id


def _campaign_values(spec: NewCampaign) -> dict[str, Any]:
    return {
        "name": spec.name,
        "service_name": spec.service_name,
        "caller_id": spec.caller_id,
        "batch_size": spec.batch_size,
        "calls_per_second": spec.calls_per_second,
        "max_concurrent_calls": spec.max_concurrent_calls,
        "max_attempts": spec.max_attempts,
        "retry_delays": spec.retry_delays,
        "default_country": spec.default_country,
        "default_timezone": spec.default_timezone,
        "priority": spec.priority,
        "window_start": spec.window_start,
        "window_end": spec.window_end,
        "window_days": None if spec.window_days is None else list(spec.window_days),
    }


async def _check_failure(
    conn: Conn, exc: asyncpg.CheckViolationError, values: Mapping[str, Any]
) -> InvalidValue:
    constraint = exc.constraint_name or ""
    row = await conn.fetchrow(CHECK_CONSTRAINT, constraint, exc.table_name or "campaigns")
    if row is None or row["column_name"] is None:
        return InvalidValue(f"rejected by the database: {' '.join(str(exc).split())}")
    column: str = row["column_name"]
    value = values.get(column)
    shown = "" if value is None else f" {value!r}"
    rule = _unwrap(str(row["definition"]).removeprefix("CHECK "))
    return InvalidValue(f"invalid {column}{shown}: must satisfy {rule}")


def _unwrap(expression: str) -> str:
    """`((a) AND (b))` -> `(a) AND (b)`: drop parentheses that enclose the whole text."""
    while expression.startswith("(") and expression.endswith(")"):
        depth = 0
        for i, char in enumerate(expression):
            depth += {"(": 1, ")": -1}.get(char, 0)
            if depth == 0 and i < len(expression) - 1:
                return expression  # the first "(" closes early: "(a) AND (b)"
        expression = expression[1:-1]
    return expression


# --- load: the rows the claim will never dial -------------------------------------------
#
# `campaign load` judges each row by the claim's rules as it streams the file; the rows
# that may be dialed leave their destination key and number in load_keys, and once the
# whole file is in, one statement finds the ones on the do-not-call list and the ones
# that repeat a number: of the file, or of a contact already in the campaign. All of it
# inside the load's transaction, so a --strict refusal rolls it all back.

CREATE_LOAD_KEYS = """
CREATE TEMP TABLE load_keys (
    line       bigint,  -- the row's line in the file; NULL for a contact already there
    contact_id bigint,  -- the contact already in the campaign
    priority   integer NOT NULL,
    key        text NOT NULL,
    number     text
) ON COMMIT DROP
"""

LAST_CONTACT_ID = """
SELECT coalesce(max(id), 0) FROM contacts
"""

# Contacts of the campaign no claim has judged yet (dispatch_count 0: a claim records
# the number's owner and counts the dispatch in one transaction) whose numbers may be
# among the file's, to be judged by the loader (their keys exist nowhere else). Only
# those whose last 7 digits are some loaded number's, or, when the file has addresses
# that are not numbers, those that are not plain numbers: a national spelling ends in
# the same digits as the international one. Contacts of this load (ids past $2) are not
# "already there".
EXISTING_UNJUDGED = f"""
SELECT {q.CONTACT_COLUMNS}, priority
FROM contacts
WHERE campaign_id = $1 AND state = 'pending' AND dispatch_count = 0 AND id <= $2
  AND (right(regexp_replace(destination, '[^0-9]', '', 'g'), 7) IN (
           SELECT right(number, 7) FROM load_keys WHERE number IS NOT NULL)
       OR (destination !~ '^[0-9 +().-]*$'
           AND EXISTS (SELECT 1 FROM load_keys WHERE number IS NULL)))
"""

# The claim checks the do-not-call list before the duplicates (own_keys), so a
# suppressed row owns no number. The others are ranked per key as the claims will meet
# them: the contact a claim already recorded, then priority, then the contacts already
# there before the file's, then by id (file order, for the file's).
LOAD_FATES = """
CREATE TEMP TABLE load_fates ON COMMIT DROP AS
WITH listed AS (
    SELECT DISTINCT destination FROM suppressions
    WHERE (campaign_id IS NULL OR campaign_id = $1)
      AND destination IN (SELECT number FROM load_keys WHERE number IS NOT NULL)
), judged AS (
    SELECT k.*, coalesce(k.number IN (SELECT destination FROM listed), false) AS on_list
    FROM load_keys k
), contenders AS (
    SELECT NULL::bigint AS line, o.contact_id, 0 AS tier, 0 AS priority, o.key
    FROM contact_keys o
    WHERE o.campaign_id = $1 AND o.key IN (SELECT key FROM load_keys)
    UNION ALL
    SELECT line, contact_id, 1, priority, key FROM judged WHERE NOT on_list
), ranked AS (
    SELECT line,
           row_number() OVER w AS nth,
           first_value(line) OVER w AS first_line,
           first_value(contact_id) OVER w AS first_contact
    FROM contenders
    WINDOW w AS (PARTITION BY key ORDER BY tier, priority DESC, line IS NOT NULL, contact_id, line)
)
SELECT line, 'suppressed'::text AS state, NULL::bigint AS first_line,
       NULL::bigint AS first_contact
FROM judged WHERE on_list AND line IS NOT NULL
UNION ALL
SELECT line, 'duplicate', first_line, first_contact
FROM ranked WHERE nth > 1 AND line IS NOT NULL
"""

LOAD_FATE_COUNTS = """
SELECT state, count(*) AS n FROM load_fates GROUP BY state
"""

FIRST_LOAD_FATES = """
SELECT line, state, first_line, first_contact FROM load_fates ORDER BY line LIMIT $1
"""


@dataclass(frozen=True)
class LoadFate:
    line: int
    state: Literal["suppressed", "duplicate"]
    first_line: int | None
    """duplicate: the line whose contact the claim will dial instead."""
    first_contact: int | None
    """duplicate: the contact already in the campaign that the claim dials instead."""


async def start_load_keys(conn: Conn) -> int:
    """Create this load's load_keys table; the last contact id before the load."""
    await conn.execute(CREATE_LOAD_KEYS)
    last: int = await conn.fetchval(LAST_CONTACT_ID)
    return last


async def existing_unjudged(
    conn: Conn, campaign_id: int, last_before: int
) -> list[tuple[q.ContactRow, int]]:
    """Contacts already in the campaign that may share a number with the file (and
    their priorities), for the loader to judge."""
    rows = await conn.fetch(EXISTING_UNJUDGED, campaign_id, last_before)
    return [(q.contact_row(r), r["priority"]) for r in rows]


async def load_fates(
    conn: Conn, campaign_id: int, shown: int
) -> tuple[dict[str, int], list[LoadFate]]:
    """The loaded rows the claim will mark suppressed or duplicate: counts by state,
    and the first `shown` in file order."""
    await conn.execute(LOAD_FATES, campaign_id)
    counts = {r["state"]: r["n"] for r in await conn.fetch(LOAD_FATE_COUNTS)}
    first = [
        LoadFate(r["line"], r["state"], r["first_line"], r["first_contact"])
        for r in await conn.fetch(FIRST_LOAD_FATES, shown)
    ]
    return counts, first


# --- pause / resume / cancel ------------------------------------------------------------

TARGET_STATE: Final[Mapping[Action, CampaignState]] = MappingProxyType(
    {"pause": "paused", "resume": "active", "cancel": "cancelled"}
)
ALLOWED_FROM: Final[Mapping[Action, frozenset[CampaignState]]] = MappingProxyType(
    {
        "pause": frozenset({"active"}),
        "resume": frozenset({"paused", "completed"}),
        "cancel": frozenset({"active", "paused", "completed"}),
    }
)
DEFAULT_REASON: Final[Mapping[Action, str | None]] = MappingProxyType(
    {"pause": "paused by operator", "resume": None, "cancel": "cancelled by operator"}
)
_WHY_NOT: Final[Mapping[tuple[Action, CampaignState], str]] = MappingProxyType(
    {
        ("pause", "cancelled"): "a cancelled campaign is finished",
        ("pause", "completed"): "it has nothing left to dial",
        ("resume", "cancelled"): "a cancelled campaign cannot be resumed; create a new one",
    }
)


@dataclass(frozen=True)
class StateChange:
    campaign: CampaignRef
    """The campaign as it is now."""
    previous: CampaignState
    changed: bool
    """False when the campaign already was in the target state (nothing to do)."""
    contacts_cancelled: int


SET_CAMPAIGN_STATE = """
UPDATE campaigns SET state = $2, state_reason = $3, updated_at = now() WHERE id = $1
"""

# Only `pending` contacts: those in a batch (dispatching/dialing) belong to the
# dispatcher and the tracker, which finish them with their real outcome.
CANCEL_PENDING_CONTACTS = """
UPDATE contacts
SET state = 'cancelled', last_error = $2, waiting_for_window = false, updated_at = now()
WHERE campaign_id = $1 AND state = 'pending'
"""


async def change_state(pool: Pool, name: str, action: Action, reason: str | None) -> StateChange:
    """Pause, resume or cancel a campaign. Raises CampaignNotFound or IllegalTransition.

    Asking for the state the campaign is already in changes nothing and succeeds (a
    repeated cancel still cancels contacts inserted since).
    """
    target = TARGET_STATE[action]
    async with pool.acquire() as conn, conn.transaction():
        row = await conn.fetchrow(LOCK_CAMPAIGN_BY_NAME, name)
        if row is None:
            raise CampaignNotFound(name)
        current = _ref(row)
        changed = current.state != target
        if changed and current.state not in ALLOWED_FROM[action]:
            why = _WHY_NOT.get((action, current.state), "")
            raise IllegalTransition(
                f"cannot {action} campaign {name!r}: it is {current.state}"
                + (f" ({why})" if why else "")
            )
        new_reason = current.state_reason
        if changed or reason is not None:
            new_reason = reason if reason is not None else DEFAULT_REASON[action]
            await conn.execute(SET_CAMPAIGN_STATE, current.id, target, new_reason)
        cancelled = 0
        if target == "cancelled":
            status = await conn.execute(
                CANCEL_PENDING_CONTACTS, current.id, CANCELLED_CONTACT_ERROR
            )
            cancelled = _row_count(status)
    return StateChange(
        campaign=CampaignRef(current.id, current.name, target, new_reason),
        previous=current.state,
        changed=changed,
        contacts_cancelled=cancelled,
    )


def _row_count(command_tag: str) -> int:
    # asyncpg returns the command tag, e.g. "UPDATE 42".
    return int(command_tag.rsplit(" ", 1)[-1])


# --- status -----------------------------------------------------------------------------


@dataclass(frozen=True)
class CallingWindow:
    """A campaign's calling window, as stored (times as 'HH:MM'; '24:00' is midnight)."""

    start: str
    end: str
    days: tuple[int, ...]
    """ISO weekdays (1 = Monday ... 7 = Sunday) on which the window opens."""
    default_timezone: str | None


# time '24:00' has no Python equivalent: times travel as text.
WINDOW_COLUMNS = """
to_char(window_start, 'HH24:MI') AS window_start,
to_char(window_end, 'HH24:MI') AS window_end,
window_days, default_timezone
"""


@dataclass(frozen=True)
class CampaignView:
    """A campaign as the operator's commands show it (`status`, `why`, `plan`): its state
    and what it was set to. The engine judges contacts by queries.CampaignRow instead,
    which `why` and `plan` read beside this one as their `rules`."""

    id: int
    name: str
    state: CampaignState
    state_reason: str | None
    window: CallingWindow
    service_name: str
    calls_per_second: float
    max_concurrent_calls: int
    batch_size: int
    max_attempts: int
    retry_delays: dict[str, Any]
    updated_at: datetime


# The old names of CampaignView, for the modules that still import them.

# `$1` NULL: every campaign, by id.
CAMPAIGN_VIEWS = f"""
SELECT id, name, state, state_reason, {WINDOW_COLUMNS}, service_name, calls_per_second,
       max_concurrent_calls, batch_size, max_attempts, retry_delays::text AS retry_delays,
       updated_at
FROM campaigns
WHERE $1::text IS NULL OR name = $1
ORDER BY id
"""


async def campaign_views(conn: Conn, name: str | None = None) -> list[CampaignView]:
    """Every campaign, or the one named (none if there is none)."""
    return [
        CampaignView(
            id=r["id"],
            name=r["name"],
            state=r["state"],
            state_reason=r["state_reason"],
            window=CallingWindow(
                start=r["window_start"],
                end=r["window_end"],
                days=tuple(sorted(r["window_days"])),
                default_timezone=r["default_timezone"],
            ),
            service_name=r["service_name"],
            calls_per_second=r["calls_per_second"],
            max_concurrent_calls=r["max_concurrent_calls"],
            batch_size=r["batch_size"],
            max_attempts=r["max_attempts"],
            retry_delays=json.loads(r["retry_delays"]),
            updated_at=r["updated_at"],
        )
        for r in await conn.fetch(CAMPAIGN_VIEWS, name)
    ]


async def campaign_view(conn: Conn, name: str) -> CampaignView:
    """The campaign named; raises CampaignNotFound."""
    found = await campaign_views(conn, name)
    if not found:
        raise CampaignNotFound(name)
    return found[0]


@dataclass(frozen=True)
class ParkedBatchRow:
    id: int
    campaign_id: int
    created_at: datetime
    age_seconds: float
    last_error: str | None
    contacts: int
    in_doubt: bool
    """A send of it may have started calls at Aculab."""


# Ages come from the database clock, so a skewed operator laptop shows true ages.
# `$2` NULL: all of them (LIMIT NULL is no limit).
PARKED_BATCHES = """
SELECT id, campaign_id, created_at,
       extract(epoch FROM now() - created_at)::float8 AS age_seconds,
       last_error, cardinality(contact_ids) AS contacts, in_doubt
FROM batches
WHERE campaign_id = ANY($1::bigint[]) AND state = 'parked'
ORDER BY campaign_id, id
LIMIT $2
"""


async def parked_batches(
    conn: Conn, campaign_ids: Sequence[int], limit: int | None = None
) -> list[ParkedBatchRow]:
    """The parked batches of these campaigns, by campaign then id (the first `limit`)."""
    return [
        ParkedBatchRow(
            id=r["id"],
            campaign_id=r["campaign_id"],
            created_at=r["created_at"],
            age_seconds=r["age_seconds"],
            last_error=r["last_error"],
            contacts=r["contacts"],
            in_doubt=r["in_doubt"],
        )
        for r in await conn.fetch(PARKED_BATCHES, list(campaign_ids), limit)
    ]


@dataclass(frozen=True)
class ResolutionRow:
    """An operator's decision on a parked batch (`campaign resolve`)."""

    campaign_id: int
    batch_id: int
    action: str
    reason: str | None
    contacts: int
    resolved_by: str
    resolved_at: datetime


@dataclass(frozen=True)
class StatusSnapshot:
    """Everything `campaign status` shows, read in one consistent snapshot."""

    taken_at: datetime
    campaigns: list[CampaignView]
    contact_counts: dict[int, dict[str, int]]
    calls_started: dict[int, int]
    batches_in_flight: dict[int, int]
    parked: list[ParkedBatchRow]
    outcomes: dict[int, dict[str, int]]
    """Calls per call_cause ('awaiting' while no outcome has arrived)."""
    attempts: dict[int, dict[int, int]]
    """Contacts per number of calls started for them."""
    released: dict[int, int]
    """Batches that started nothing and gave their contacts back to the queue."""
    resolutions: list[ResolutionRow]
    """The latest resolutions per campaign, newest first."""


STATUS_OUTCOMES = """
SELECT campaign_id, coalesce(call_cause, 'awaiting') AS cause, count(*) AS n
FROM calls
WHERE campaign_id = ANY($1::bigint[])
GROUP BY 1, 2
"""

STATUS_ATTEMPTS = """
SELECT campaign_id, attempts, count(*) AS n
FROM contacts
WHERE campaign_id = ANY($1::bigint[])
GROUP BY 1, 2
"""

STATUS_BATCHES_IN_FLIGHT = """
SELECT campaign_id, count(*) AS n
FROM batches
WHERE campaign_id = ANY($1::bigint[]) AND state = 'pending'
GROUP BY campaign_id
"""

STATUS_RELEASED_BATCHES = """
SELECT campaign_id, count(*) AS n
FROM batches
WHERE campaign_id = ANY($1::bigint[]) AND state = 'released'
GROUP BY campaign_id
"""

# The newest few per campaign, each read through batch_resolutions_campaign_idx.
STATUS_RESOLUTIONS = """
SELECT r.campaign_id, r.batch_id, r.action, r.reason, r.contacts, r.resolved_by, r.resolved_at
FROM unnest($1::bigint[]) AS k(id)
CROSS JOIN LATERAL (
    SELECT * FROM batch_resolutions
    WHERE campaign_id = k.id
    ORDER BY resolved_at DESC, id DESC
    LIMIT $2
) r
ORDER BY r.campaign_id, r.resolved_at DESC, r.id DESC
"""

STATUS_NOW = "SELECT now()"


@asynccontextmanager
async def read_snapshot(pool: Pool) -> AsyncIterator[Conn]:
    """A connection inside one read-only, repeatable-read transaction for the block.

    Every query in the block sees the same committed state, so figures read by
    several statements add up with each other, and none of them can change a thing.
    """
    async with (
        pool.acquire() as conn,
        conn.transaction(isolation="repeatable_read", readonly=True),
    ):
        yield conn


async def read_status(
    conn: Conn, name: str | None = None, *, resolutions_shown: int = 5
) -> StatusSnapshot:
    """The status of every campaign, or of the one named (CampaignNotFound if none), read
    on a connection inside `read_snapshot`: one snapshot for every count, so that the
    numbers add up with each other."""
    taken_at: datetime = await conn.fetchval(STATUS_NOW)
    campaigns = await campaign_views(conn, name)
    if name is not None and not campaigns:
        raise CampaignNotFound(name)
    ids = [c.id for c in campaigns]
    # The counts kept by migration 0009 (exact in any snapshot): no scan of the contacts.
    counts = await q.state_counts(conn, ids)
    outcomes: dict[int, dict[str, int]] = {}
    for r in await conn.fetch(STATUS_OUTCOMES, ids):
        outcomes.setdefault(r["campaign_id"], {})[r["cause"]] = r["n"]
    calls = {cid: sum(by_cause.values()) for cid, by_cause in outcomes.items()}
    attempts: dict[int, dict[int, int]] = {}
    for r in await conn.fetch(STATUS_ATTEMPTS, ids):
        attempts.setdefault(r["campaign_id"], {})[r["attempts"]] = r["n"]
    in_flight = {r["campaign_id"]: r["n"] for r in await conn.fetch(STATUS_BATCHES_IN_FLIGHT, ids)}
    parked = await parked_batches(conn, ids)
    released = {r["campaign_id"]: r["n"] for r in await conn.fetch(STATUS_RELEASED_BATCHES, ids)}
    resolutions = [
        ResolutionRow(
            campaign_id=r["campaign_id"],
            batch_id=r["batch_id"],
            action=r["action"],
            reason=r["reason"],
            contacts=r["contacts"],
            resolved_by=r["resolved_by"],
            resolved_at=r["resolved_at"],
        )
        for r in await conn.fetch(STATUS_RESOLUTIONS, ids, resolutions_shown)
    ]
    return StatusSnapshot(
        taken_at,
        campaigns,
        counts,
        calls,
        in_flight,
        parked,
        outcomes,
        attempts,
        released,
        resolutions,
    )


# --- cancel: Aculab's queue -------------------------------------------------------------


@dataclass(frozen=True)
class ServiceUse:
    service_name: str
    others: list[str]
    """Other campaigns, active or paused, on the same outbound service (by name)."""


# Compared case-insensitively: whether Aculab tells service names apart by case is not
# documented, and a false "shared" only costs a purge, a false "alone" purges another
# campaign's calls.
SERVICE_USE = """
SELECT c.service_name,
       coalesce(array_agg(o.name ORDER BY o.name) FILTER (WHERE o.id IS NOT NULL), '{}')
           AS others
FROM campaigns c
LEFT JOIN campaigns o
       ON lower(o.service_name) = lower(c.service_name)
      AND o.id <> c.id
      AND o.state IN ('active', 'paused')
WHERE c.id = $1
GROUP BY c.id, c.service_name
"""

# The purged starts come back from application_status as finished (with an `errs`
# entry); polling them now records them within seconds instead of at their schedule.
POLL_UNFINISHED_CALLS_NOW = """
UPDATE calls SET next_poll_at = now() WHERE campaign_id = $1 AND finished_at IS NULL
"""


async def service_use(pool: Pool, campaign_id: int) -> ServiceUse:
    row = await pool.fetchrow(SERVICE_USE, campaign_id)
    if row is None:
        raise CommandError(f"campaign {campaign_id} disappeared")
    return ServiceUse(row["service_name"], list(row["others"]))


async def poll_unfinished_calls_now(pool: Pool, campaign_id: int) -> int:
    """Schedule every unfinished call of the campaign for an immediate poll; how many."""
    return _row_count(await pool.execute(POLL_UNFINISHED_CALLS_NOW, campaign_id))


# --- suppressions (do-not-call) ---------------------------------------------------------


@dataclass(frozen=True)
class CampaignCountry:
    id: int
    name: str
    default_country: str | None


CAMPAIGN_COUNTRY = """
SELECT id, name, default_country FROM campaigns WHERE name = $1
"""


async def campaign_country(pool: Pool, name: str) -> CampaignCountry:
    """The campaign's id and its country for national numbers. Raises CampaignNotFound."""
    row = await pool.fetchrow(CAMPAIGN_COUNTRY, name)
    if row is None:
        raise CampaignNotFound(name)
    return CampaignCountry(row["id"], row["name"], row["default_country"])


@dataclass(frozen=True)
class SuppressionRow:
    destination: str
    campaign: str | None
    """None: every campaign."""
    reason: str | None
    created_at: datetime


# ON CONFLICT names the unique index's expressions, so an entry already there (for the
# same scope) is left as it is, reason included, and a repeat inside one batch is too.
INSERT_SUPPRESSION = """
INSERT INTO suppressions (destination, campaign_id, reason)
VALUES ($1, $2, $3)
ON CONFLICT (destination, (coalesce(campaign_id, 0))) DO NOTHING
RETURNING id
"""

INSERT_SUPPRESSIONS = """
INSERT INTO suppressions (destination, campaign_id, reason)
SELECT d, $3, r FROM unnest($1::text[], $2::text[]) AS t(d, r)
ON CONFLICT (destination, (coalesce(campaign_id, 0))) DO NOTHING
"""

SUPPRESSION_REASON = """
SELECT reason FROM suppressions
WHERE destination = $1 AND coalesce(campaign_id, 0) = coalesce($2::bigint, 0)
"""

DELETE_SUPPRESSION = """
DELETE FROM suppressions
WHERE destination = $1 AND coalesce(campaign_id, 0) = coalesce($2::bigint, 0)
"""

# Where else a number is suppressed: helps an operator who removed it from the wrong scope.
SUPPRESSION_SCOPES = """
SELECT c.name
FROM suppressions s LEFT JOIN campaigns c ON c.id = s.campaign_id
WHERE s.destination = $1
ORDER BY c.name NULLS FIRST
"""

LIST_SUPPRESSIONS = """
SELECT s.destination, c.name AS campaign, s.reason, s.created_at
FROM suppressions s LEFT JOIN campaigns c ON c.id = s.campaign_id
WHERE $1::bigint IS NULL OR s.campaign_id IS NULL OR s.campaign_id = $1
ORDER BY s.destination, c.name NULLS FIRST
"""


@dataclass(frozen=True)
class SuppressionAdded:
    added: bool
    """False: the number was already suppressed in that scope (nothing changed)."""
    reason: str | None
    """The reason on record (the existing one when it was already there)."""


async def add_suppression(
    pool: Pool, number: str, campaign_id: int | None, reason: str | None
) -> SuppressionAdded:
    async with pool.acquire() as conn:
        if await conn.fetchval(INSERT_SUPPRESSION, number, campaign_id, reason) is not None:
            return SuppressionAdded(True, reason)
        existing: str | None = await conn.fetchval(SUPPRESSION_REASON, number, campaign_id)
    return SuppressionAdded(False, existing)


async def add_suppressions(
    conn: Conn, numbers: Sequence[str], reasons: Sequence[str | None], campaign_id: int | None
) -> int:
    """Insert a chunk of suppressions; how many were new (repeats are skipped)."""
    status = await conn.execute(INSERT_SUPPRESSIONS, list(numbers), list(reasons), campaign_id)
    return _row_count(status)


async def remove_suppression(pool: Pool, number: str, campaign_id: int | None) -> bool:
    """Delete the number's suppression in that scope; False when there was none."""
    return _row_count(await pool.execute(DELETE_SUPPRESSION, number, campaign_id)) > 0


async def suppression_scopes(pool: Pool, number: str) -> list[str | None]:
    """The campaigns the number is suppressed for (None: every campaign)."""
    return [r["name"] for r in await pool.fetch(SUPPRESSION_SCOPES, number)]


async def list_suppressions(
    pool: Pool, campaign_id: int | None, *, prefetch: int = 1000
) -> AsyncGenerator[SuppressionRow, None]:
    """Every suppression (or those that apply to one campaign), streamed by a cursor."""
    async with pool.acquire() as conn, conn.transaction(readonly=True):
        async for r in conn.cursor(LIST_SUPPRESSIONS, campaign_id, prefetch=prefetch):
            yield SuppressionRow(r["destination"], r["campaign"], r["reason"], r["created_at"])


# --- why --------------------------------------------------------------------------------


Hold = Literal["due", "not_before", "window", "retry"]


@dataclass(frozen=True)
class PendingGroup:
    hold: Hold
    detail: str | None
    """window: the dispatcher's last_error (names the opening); retry: last_result."""
    contacts: int
    earliest: datetime
    """When the first of them becomes due."""
    examinable: int = 0
    """Of them, due now or never judged by a claim (see `Examinable`)."""


@dataclass(frozen=True)
class Examinable:
    """A pending contact a claim has yet to judge, as the claim will read it."""

    contact: q.ContactRow
    hold: Hold
    detail: str | None
    due_at: datetime


@dataclass(frozen=True)
class ParkedSummary:
    count: int
    contacts: int
    first: list[ParkedBatchRow]


@dataclass(frozen=True)
class WhySnapshot:
    """Everything `campaign why` looks at, read in one consistent snapshot."""

    taken_at: datetime
    campaign: CampaignView
    contact_states: dict[str, int]
    pending: list[PendingGroup]
    open_calls: int
    granted: dict[str, int]
    """Calls granted per pacing budget key in the last `window_seconds`."""
    window_seconds: float
    in_flight_batches: int
    in_flight_contacts: int
    parked: ParkedSummary
    daemons: list[DaemonRow]
    """The daemons alive (seen within the snapshot's `alive_within`)."""
    rules: q.CampaignRow
    """The campaign as the claim reads it (dispatch.contact_verdict)."""
    examined: list[Examinable]
    """The first `examine` pending contacts a claim has yet to judge, in claim order."""


@dataclass(frozen=True)
class DaemonRow:
    owner: str
    seen_seconds_ago: float
    aculab_unreachable_since: datetime | None
    aculab_error: str | None


WHY_DAEMONS = """
SELECT owner, extract(epoch FROM now() - seen_at)::float8 AS seen_ago,
       aculab_unreachable_since, aculab_error
FROM daemons
WHERE seen_at > now() - make_interval(secs => $1)
ORDER BY owner
"""

# Each pending contact held by what holds it longest: due now, a not_before later than
# its next attempt, the calling window (the dispatcher deferred it to its window:
# waiting_for_window), or a retry delay (per last_result). Shared by the counts and by
# the contacts `campaign why` examines, so that both put a contact in the same group.
_HELD = """
WITH pending AS (
    SELECT *, greatest(next_attempt_at, coalesce(not_before, next_attempt_at)) AS due_at
    FROM contacts
    WHERE campaign_id = $1 AND state = 'pending'
), classified AS (
    SELECT *,
           CASE
               WHEN due_at <= now() THEN 'due'
               WHEN not_before IS NOT NULL AND not_before >= next_attempt_at THEN 'not_before'
               WHEN waiting_for_window THEN 'window'
               ELSE 'retry'
           END AS hold
    FROM pending
), held AS (
    SELECT *,
           CASE hold
               WHEN 'window' THEN coalesce(last_error, 'outside the calling window')
               WHEN 'retry' THEN coalesce(last_result, 'scheduled')
           END AS detail,
           -- What a claim has yet to judge: due now, or never looked at by a daemon
           -- (its not_before is still ahead, or the dispatcher deferred it to its
           -- window before checking the do-not-call list and duplicates).
           hold = 'due' OR dispatch_count = 0 AS examinable
    FROM classified
)
"""

WHY_PENDING = f"""
{_HELD}
SELECT hold, detail, count(*) AS n, min(due_at) AS earliest,
       count(*) FILTER (WHERE examinable) AS examinable
FROM held
GROUP BY 1, 2
ORDER BY 4, 2
"""

# In the order the claim takes them (due first), so that a sample is what the
# daemons will meet next and the first of two contacts with one number is the one
# the claim would dial.
WHY_EXAMINED = f"""
{_HELD}
SELECT {q.CONTACT_COLUMNS}, hold, detail, due_at
FROM held
WHERE examinable
ORDER BY hold <> 'due', priority DESC, id
LIMIT $2
"""

# Which contact a claim already recorded as dialing each number (own_keys).
KEY_OWNERS = """
SELECT key, contact_id FROM contact_keys WHERE campaign_id = $1 AND key = ANY($2::text[])
"""

WHY_OPEN_CALLS = """
SELECT count(*) FROM calls WHERE campaign_id = $1 AND finished_at IS NULL
"""

WHY_GRANTED = """
SELECT key, sum(calls)::bigint AS calls
FROM rate_grants
WHERE key = ANY($1::text[]) AND granted_at > now() - make_interval(secs => $2)
GROUP BY key
"""

OPEN_BATCHES = """
SELECT state, count(*) AS n, coalesce(sum(cardinality(contact_ids)), 0)::bigint AS contacts
FROM batches
WHERE campaign_id = $1 AND state IN ('pending', 'parked')
GROUP BY state
"""


@dataclass(frozen=True)
class OpenBatches:
    """A campaign's batches still open: pending (in flight) and parked, and their contacts."""

    pending: int = 0
    pending_contacts: int = 0
    parked: int = 0
    parked_contacts: int = 0


async def open_batches(conn: Conn, campaign_id: int) -> OpenBatches:
    got = {r["state"]: (r["n"], r["contacts"]) for r in await conn.fetch(OPEN_BATCHES, campaign_id)}
    pending = got.get("pending", (0, 0))
    parked = got.get("parked", (0, 0))
    return OpenBatches(pending[0], pending[1], parked[0], parked[1])


async def read_why(
    conn: Conn,
    name: str,
    *,
    window_seconds: float = 10.0,
    parked_shown: int = 3,
    alive_within: float = 60.0,
    examine: int = 10_000,
) -> WhySnapshot:
    """What holds a campaign's contacts back, read on a connection inside `read_snapshot`.
    Raises CampaignNotFound.

    A daemon counts as alive when its heartbeat wrote its row within `alive_within`.
    At most `examine` contacts are read for the claim's rules to be applied to.
    """
    taken_at: datetime = await conn.fetchval(STATUS_NOW)
    campaign = await campaign_view(conn, name)
    states = (await q.state_counts(conn, [campaign.id]))[campaign.id]
    pending = [
        PendingGroup(r["hold"], r["detail"], r["n"], r["earliest"], r["examinable"])
        for r in await conn.fetch(WHY_PENDING, campaign.id)
    ]
    rules = await q.campaign_row(conn, campaign.id)
    if rules is None:  # cannot happen inside this snapshot; keeps the types honest
        raise CampaignNotFound(name)
    examined = [
        Examinable(q.contact_row(r), r["hold"], r["detail"], r["due_at"])
        for r in await conn.fetch(WHY_EXAMINED, campaign.id, examine)
    ]
    open_calls: int = await conn.fetchval(WHY_OPEN_CALLS, campaign.id)
    granted = await granted_calls(
        conn, [campaign_budget(campaign.id), ACCOUNT_BUDGET], window_seconds
    )
    batches = await open_batches(conn, campaign.id)
    first_parked = await parked_batches(conn, [campaign.id], parked_shown)
    daemons = await alive_daemons(conn, alive_within)
    return WhySnapshot(
        taken_at=taken_at,
        campaign=campaign,
        contact_states=states,
        pending=pending,
        open_calls=open_calls,
        granted=granted,
        window_seconds=window_seconds,
        in_flight_batches=batches.pending,
        in_flight_contacts=batches.pending_contacts,
        parked=ParkedSummary(batches.parked, batches.parked_contacts, first_parked),
        daemons=daemons,
        rules=rules,
        examined=examined,
    )


async def alive_daemons(conn: Conn, alive_within: float) -> list[DaemonRow]:
    """The daemons whose heartbeat wrote their row within `alive_within` seconds."""
    return [
        DaemonRow(r["owner"], r["seen_ago"], r["aculab_unreachable_since"], r["aculab_error"])
        for r in await conn.fetch(WHY_DAEMONS, alive_within)
    ]


async def granted_calls(conn: Conn, keys: Sequence[str], window_seconds: float) -> dict[str, int]:
    """Calls granted per pacing budget key over the last `window_seconds` (0 when none)."""
    granted = dict.fromkeys(keys, 0)
    for r in await conn.fetch(WHY_GRANTED, list(keys), window_seconds):
        granted[r["key"]] = r["calls"]
    return granted


async def key_owners(conn: Conn, campaign_id: int, keys: Sequence[str]) -> dict[str, int]:
    """The contact a claim recorded as dialing each of these destination keys."""
    if not keys:
        return {}
    rows = await conn.fetch(KEY_OWNERS, campaign_id, list(keys))
    return {r["key"]: r["contact_id"] for r in rows}


async def suppressed_numbers(conn: Conn, campaign_id: int, numbers: Sequence[str]) -> set[str]:
    """The numbers on the do-not-call list for this campaign, by the claim's own query."""
    return await q.suppressed(conn, campaign_id, numbers)


OUTLOOK_CAMPAIGNS = """
SELECT name FROM campaigns WHERE state IN ('active', 'paused') ORDER BY priority DESC, id
"""


async def campaigns_to_dial(pool: Pool) -> list[str]:
    """The campaigns a daemon may dial, now or after a resume, highest priority first."""
    return [r["name"] for r in await pool.fetch(OUTLOOK_CAMPAIGNS)]
