"""SQL of `campaign plan`: everything its forecast starts from, read in one snapshot.

The open contacts (pending, dispatching, dialing) are read as groups, not one by one, so
that a campaign of millions costs a few thousand rows: by state, attempts used, what
holds a pending contact (as `campaign why` classifies it) and when it is due (or, for a
call in progress, when it started), in time buckets that are one second wide for the
next ten minutes and then grow by 1 % each (about 1,700 of them cover a year). Beside
the groups, a sample of the contacts themselves (all of them when there are few enough),
spread evenly over the campaign, for the claim's rules to find each one's time zones.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final, Literal

from campaign.db import queries as q
from campaign.db.admin import (
    CampaignNotFound,
    CampaignView,
    Pool,
    alive_daemons,
    campaign_view,
    open_batches,
)
from campaign.vocabulary import OpenState

Hold = Literal["due", "not_before", "window", "retry", "dispatching", "dialing"]

FINE_BUCKET_SECONDS: Final = 600
"""Due times within this many seconds of now are grouped by the second."""
BUCKET_GROWTH: Final = 1.01
"""Beyond them, each bucket is 1 % wider than the one before."""
CAMPAIGN_HISTORY_CALLS: Final = 10_000
"""The campaign's latest calls its outcome mix and call durations are drawn from."""
ACCOUNT_HISTORY_CALLS: Final = 10_000
"""The account's latest finished calls stand in for a campaign that has none yet."""
COMPLETE_CALLS_ENOUGH: Final = 20
"""Fewer calls than this that started before the oldest call in progress: the mix is
drawn from every finished call of the campaign instead (short ones over-counted)."""


# The old name of CampaignView, for the modules that still import it.


@dataclass(frozen=True)
class OpenGroup:
    """Open contacts alike in state, attempts, hold and time bucket."""

    state: OpenState
    attempts: int
    """Calls already started for each (a dialing contact's current call included)."""
    hold: Hold
    detail: str | None
    """window: the dispatcher's last_error, which names the opening and its zones."""
    bucket: int
    contacts: int
    at: datetime
    """Their mean due time (pending), call start (dialing) or the snapshot (dispatching)."""

    @property
    def key(self) -> tuple[str, int, str, str | None, int]:
        return (self.state, self.attempts, self.hold, self.detail, self.bucket)


@dataclass(frozen=True)
class SampledContact:
    """One open contact as the claim reads it, and the group it belongs to."""

    contact: q.ContactRow
    key: tuple[str, int, str, str | None, int]


@dataclass(frozen=True)
class CauseStats:
    cause: str
    calls: int
    mean_seconds: float
    """From the call's start to its outcome being recorded: how long it holds a slot
    under the concurrency cap."""


@dataclass(frozen=True)
class PlanSnapshot:
    taken_at: datetime
    campaign: CampaignView
    rules: q.CampaignRow
    """The campaign as the claim reads it (dispatch.contact_verdict)."""
    contact_states: dict[str, int]
    groups: list[OpenGroup]
    sample: list[SampledContact]
    parked_contacts: int
    """Dispatching contacts in parked batches: they wait for an operator."""
    campaign_causes: list[CauseStats]
    account_causes: list[CauseStats]
    """The account's latest finished calls (every campaign); read only when the
    campaign has none of its own."""
    daemons_alive: int
    other_active_campaigns: int
    """Active campaigns sharing the account's calls per second with this one."""


# The open contacts with what a forecast needs of each. A pending contact is held as
# `campaign why` holds it (admin._HELD); a dispatching one in a parked batch is left
# out (an operator decides its fate); a dialing one is dated by its call's start.
_OPEN = f"""
WITH open AS (
    SELECT c.*,
           CASE c.state
               WHEN 'pending' THEN
                   greatest(c.next_attempt_at, coalesce(c.not_before, c.next_attempt_at))
               -- One look-up by reference per call in progress (at most the cap),
               -- never a join with every call the account has made.
               WHEN 'dialing' THEN coalesce(
                   (SELECT k.started_at FROM calls k WHERE k.reference = c.reference), now())
               ELSE now()
           END AS at
    FROM contacts c
    WHERE c.campaign_id = $1
      AND c.state IN ('pending', 'dispatching', 'dialing')
      AND NOT (c.state = 'dispatching' AND EXISTS (
          SELECT 1 FROM batches b WHERE b.id = c.batch_id AND b.state = 'parked'))
), held AS (
    SELECT *,
           CASE
               WHEN state <> 'pending' THEN state
               WHEN at <= now() THEN 'due'
               WHEN not_before IS NOT NULL AND not_before >= next_attempt_at THEN 'not_before'
               WHEN waiting_for_window THEN 'window'
               ELSE 'retry'
           END AS hold,
           abs(extract(epoch FROM at - now())) AS distance
    FROM open
), keyed AS (
    SELECT *,
           CASE hold WHEN 'window' THEN coalesce(last_error, 'outside the calling window') END
               AS detail,
           CASE
               WHEN distance < {FINE_BUCKET_SECONDS} THEN floor(distance)
               ELSE {FINE_BUCKET_SECONDS}
                    + floor(ln(distance / {FINE_BUCKET_SECONDS}) / ln({BUCKET_GROWTH}))
           END::bigint AS bucket
    FROM held
)
"""

PLAN_OPEN_GROUPS = f"""
{_OPEN}
SELECT state, attempts, hold, detail, bucket, count(*) AS n,
       to_timestamp(avg(extract(epoch FROM at))) AS at
FROM keyed
GROUP BY 1, 2, 3, 4, 5
ORDER BY 7, 1, 2
"""

# Spread over the whole campaign (a hash of the id, not the claim's order), so that a
# sample's mix of time zones is the campaign's.
PLAN_SAMPLE = f"""
{_OPEN}
SELECT {q.CONTACT_COLUMNS}, state, attempts, hold, detail, bucket
FROM keyed
ORDER BY hashint8(id), id
LIMIT $2
"""

# The campaign's latest calls by start, at most $3 of them. While calls are in
# progress, the ones already finished are the short ones: counting only the calls
# started before the oldest call still in progress (every one of which has ended)
# keeps a busy signal from looking more common, and calls shorter, than they are.
# With $2 false, the latest started calls that have finished. Read backwards through
# an index on (campaign_id, started_at) where there is one (the dashboard's migration
# adds it), the cost stays bounded however many calls the campaign has made.
PLAN_CAMPAIGN_CAUSES = """
WITH oldest_open AS (
    SELECT coalesce(min(started_at), 'infinity') AS started_at
    FROM calls WHERE campaign_id = $1 AND finished_at IS NULL
), latest AS (
    SELECT c.call_cause, c.finished_at - c.started_at AS took
    FROM calls c
    WHERE c.campaign_id = $1
      AND c.started_at < CASE WHEN $2 THEN (SELECT started_at FROM oldest_open)
                              ELSE 'infinity' END
    ORDER BY c.started_at DESC
    LIMIT $3
)
SELECT call_cause AS cause, count(*) AS n,
       avg(extract(epoch FROM took))::float8 AS mean_seconds
FROM latest
WHERE took IS NOT NULL AND call_cause IS NOT NULL
GROUP BY 1
ORDER BY 1
"""

# The newest finished calls by id (a backward walk of the primary key, cheap however
# many calls the account has made).
PLAN_ACCOUNT_CAUSES = """
WITH latest AS (
    SELECT call_cause, finished_at - started_at AS took
    FROM calls
    WHERE finished_at IS NOT NULL AND call_cause IS NOT NULL
    ORDER BY id DESC
    LIMIT $1
)
SELECT call_cause AS cause, count(*) AS n,
       avg(extract(epoch FROM took))::float8 AS mean_seconds
FROM latest
GROUP BY 1
ORDER BY 1
"""

PLAN_OTHER_ACTIVE = """
SELECT count(*) FROM campaigns WHERE state = 'active' AND id <> $1
"""


def _causes(rows: list[Any]) -> list[CauseStats]:
    return [CauseStats(r["cause"], r["n"], max(0.0, r["mean_seconds"] or 0.0)) for r in rows]


async def plan_snapshot(
    pool: Pool, name: str, *, sample: int = 20_000, alive_within: float = 30.0
) -> PlanSnapshot:
    """What the forecast of one campaign starts from. Raises CampaignNotFound.

    At most `sample` open contacts are read one by one; a daemon counts as alive when
    it refreshed its row within `alive_within` seconds.
    """
    async with (
        pool.acquire() as conn,
        # One snapshot, so that the groups, the sample and the calls add up.
        conn.transaction(isolation="repeatable_read", readonly=True),
    ):
        return await read_plan(conn, name, sample=sample, alive_within=alive_within)


async def read_plan(
    conn: q.Conn, name: str, *, sample: int = 20_000, alive_within: float = 30.0
) -> PlanSnapshot:
    """`plan_snapshot` on a connection the caller holds, inside its own read-only,
    repeatable-read transaction (so that the figures add up). Raises CampaignNotFound."""
    taken_at: datetime = await conn.fetchval("SELECT now()")
    campaign = await campaign_view(conn, name)
    rules = await q.campaign_row(conn, campaign.id)
    if rules is None:  # cannot happen inside this snapshot; keeps the types honest
        raise CampaignNotFound(name)
    states = (await q.state_counts(conn, [campaign.id]))[campaign.id]
    groups = [
        OpenGroup(r["state"], r["attempts"], r["hold"], r["detail"], r["bucket"], r["n"], r["at"])
        for r in await conn.fetch(PLAN_OPEN_GROUPS, campaign.id)
    ]
    sampled = [
        SampledContact(
            q.contact_row(r), (r["state"], r["attempts"], r["hold"], r["detail"], r["bucket"])
        )
        for r in await conn.fetch(PLAN_SAMPLE, campaign.id, sample)
    ]
    parked = (await open_batches(conn, campaign.id)).parked_contacts
    own = _causes(await conn.fetch(PLAN_CAMPAIGN_CAUSES, campaign.id, True, CAMPAIGN_HISTORY_CALLS))
    if sum(c.calls for c in own) < COMPLETE_CALLS_ENOUGH:
        own = _causes(
            await conn.fetch(PLAN_CAMPAIGN_CAUSES, campaign.id, False, CAMPAIGN_HISTORY_CALLS)
        )
    account = [] if own else _causes(await conn.fetch(PLAN_ACCOUNT_CAUSES, ACCOUNT_HISTORY_CALLS))
    daemons = len(await alive_daemons(conn, alive_within))
    others: int = await conn.fetchval(PLAN_OTHER_ACTIVE, campaign.id)
    return PlanSnapshot(
        taken_at=taken_at,
        campaign=campaign,
        rules=rules,
        contact_states=states,
        groups=groups,
        sample=sampled,
        parked_contacts=parked,
        campaign_causes=own,
        account_causes=account,
        daemons_alive=daemons,
        other_active_campaigns=others,
    )
