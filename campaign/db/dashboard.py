"""SQL of `campaign dashboard`: what it reads besides `campaign status` and `campaign why`.

Every function runs on a connection inside `admin.read_snapshot`, so the dashboard's
document is one consistent, read-only look at the database.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Final

from campaign.db import admin
from campaign.vocabulary import ACCOUNT_BUDGET

if TYPE_CHECKING:
    from campaign.db.queries import Conn

SERIES_MINUTES: Final = 60
"""The chart's span: calls started per minute over the last hour."""

# Whole minutes, the current one (still filling) last; read through
# calls_campaign_started_idx, a range scan of the last hour per campaign.
CALLS_PER_MINUTE = """
SELECT campaign_id, date_trunc('minute', started_at) AS minute, count(*)::bigint AS calls
FROM calls
WHERE campaign_id = ANY($1::bigint[])
  AND started_at >= date_trunc('minute', now()) - make_interval(mins => $2 - 1)
GROUP BY 1, 2
"""

SERIES_START = """
SELECT date_trunc('minute', now()) - make_interval(mins => $1 - 1)
"""


@dataclass(frozen=True)
class Series:
    start: datetime
    """The first minute of the span (UTC, whole minute)."""
    calls: dict[int, list[int]]
    """Per campaign id: calls started in each minute from `start`, the current one last."""


async def calls_per_minute(
    conn: Conn, campaign_ids: Sequence[int], minutes: int = SERIES_MINUTES
) -> Series:
    """Calls started per minute, zero included, for each campaign over `minutes` minutes."""
    start: datetime = await conn.fetchval(SERIES_START, minutes)
    calls = {cid: [0] * minutes for cid in campaign_ids}
    for r in await conn.fetch(CALLS_PER_MINUTE, list(campaign_ids), minutes):
        index = int((r["minute"] - start).total_seconds() // 60)
        if 0 <= index < minutes:
            calls[r["campaign_id"]][index] = r["calls"]
    return Series(start, calls)


@dataclass(frozen=True)
class Account:
    """The account-wide figures: pacing and the daemons."""

    taken_at: datetime
    granted: int
    """Calls granted by the account's pacing budget over the last `window_seconds`."""
    window_seconds: float
    daemons: list[admin.DaemonRow]
    """The daemons alive, each with whether it can reach Aculab."""


async def account(conn: Conn, *, window_seconds: float, alive_within: float) -> Account:
    taken_at: datetime = await conn.fetchval(admin.STATUS_NOW)
    granted = await admin.granted_calls(conn, [ACCOUNT_BUDGET], window_seconds)
    return Account(
        taken_at=taken_at,
        granted=granted[ACCOUNT_BUDGET],
        window_seconds=window_seconds,
        daemons=await admin.alive_daemons(conn, alive_within),
    )
