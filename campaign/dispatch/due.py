"""Which active campaigns have a contact due, before step 1 takes any lock.

One query (q.due_campaigns: an index lookup per active campaign) reads every
campaign's next due time now and then — every dispatcher.recheck_all_seconds while
notifications are heard, every poll_interval while the LISTEN connection is down —
and in between only the campaigns a notification names or a claim emptied. The
loop (loop.py) claims only campaigns due now and sleeps until the next one is due.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import asyncpg

from campaign.db import queries as q
from campaign.settings import Settings


class DueCampaigns:
    """The active campaigns and when each one's next contact is due, read as seldom
    as the notifications allow: the loop claims only for those due now."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        settings: Settings,
        clock: Callable[[], float],
        *,
        was_read: Callable[[int], None],
        became_active: Callable[[str], None],
    ) -> None:
        self.pool = pool
        self.settings = settings
        self._clock = clock
        # Told each campaign read again (its next claim starts from its first contact),
        # and the service of each campaign that became active (it must prove its
        # credentials again before its requests fan out).
        self._was_read = was_read
        self._became_active = became_active
        # The active campaigns, as last read, and when (this daemon's clock) each one's
        # first pending contact is due (absent: none pending). Only campaigns due now
        # are claimed; the loop sleeps until the earliest of the others.
        self._campaigns: dict[int, q.DueCampaign] = {}
        self._due_at: dict[int, float] = {}
        # Campaigns to read again before the next claims: named by a notification, or
        # emptied by a claim (their next due time is then unknown here).
        self._recheck: set[int] = set()
        # Read every active campaign again: at start, on a notification that names
        # none, and whatever the notifications said (one query) every
        # recheck_all_seconds while they are heard, every poll_interval while the LISTEN
        # connection is down, so that a missed notification delays work by that much
        # at most. Between those, due times come from the last read: a contact that
        # becomes due sooner is notified (migrations 0008 and 0010).
        self._refresh_all = True
        self._refreshed_at = -math.inf
        self.listening = False
        # When (this daemon's clock) the last tick picked the campaigns due.
        self._looked_at = -math.inf
        self._active: set[int] = set()
        # Reads of every active campaign's due time (for tests and benchmarks).
        self.full_reads = 0

    def heard(self, payload: str | None) -> None:
        """A notification: '<table>:<campaign id>' names the campaign that changed;
        anything else (or nothing) means look at every campaign again."""
        _, _, tail = (payload or "").partition(":")
        if tail.isdigit():
            self._recheck.add(int(tail))
        else:
            self._refresh_all = True

    def read_again(self, campaign_id: int) -> None:
        """Read the campaign again before its next claim; its next due time is unknown."""
        self._due_at.pop(campaign_id, None)
        self._recheck.add(campaign_id)

    @property
    def _refresh_every(self) -> float:
        cfg = self.settings.dispatcher
        if self.listening:
            return max(cfg.poll_interval, cfg.recheck_all_seconds)
        return cfg.poll_interval

    @property
    def to_read(self) -> bool:
        """Campaigns are waiting to be read again: the loop looks at once."""
        return bool(self._recheck) or self._refresh_all

    @property
    def next_read(self) -> float:
        """When (this daemon's clock) every campaign is read again."""
        return self._refreshed_at + self._refresh_every

    def next_due(self) -> float | None:
        """When the first campaign found due after the last look is due.

        Campaigns due at the look that were not claimed wait for their pacing, cap or
        slot; those due after it are waited for, even if that moment has passed
        since (the look found them due a moment later than it was made)."""
        later = [t for t in self._due_at.values() if t > self._looked_at]
        return min(later) if later else None

    async def now(self) -> list[q.DueCampaign]:
        """The active campaigns with a contact due now, read in one query before any
        lock is taken: every campaign now and then (every _refresh_every, or when a
        notification named none), else only those a notification named or a claim
        emptied."""
        now = self._clock()
        if self._refresh_all or now - self._refreshed_at >= self._refresh_every:
            self._refresh_all = False
            self._recheck.clear()
            self._refreshed_at = now
            self.full_reads += 1
            async with self.pool.acquire() as conn:
                rows = await q.due_campaigns(conn)
            self._note_active(rows, None, now)
        elif self._recheck:
            ids, self._recheck = sorted(self._recheck), set()
            async with self.pool.acquire() as conn:
                rows = await q.due_campaigns(conn, ids)
            self._note_active(rows, set(ids), now)
        self._looked_at = now
        return [c for c in self._campaigns.values() if self._due_at.get(c.id, math.inf) <= now]

    def _note_active(
        self, rows: list[q.DueCampaign], looked_at: set[int] | None, now: float
    ) -> None:
        """Record what was read of the campaigns in `looked_at` (None: of every
        campaign); those not in `rows` are no longer active. A campaign that became
        active (at start, after a resume) must prove its service's credentials again
        before its requests fan out."""
        for campaign_id in set(self._campaigns) if looked_at is None else looked_at:
            self._campaigns.pop(campaign_id, None)
            self._due_at.pop(campaign_id, None)
            # Each look at a campaign (every _refresh_every at least) makes its next claim
            # start from its first contact again, so that none due behind the point
            # where claims stopped waits longer than that (a retry, a release, a new
            # contact of higher priority); in between, claims resume where they stopped.
            self._was_read(campaign_id)
        for campaign in rows:
            if campaign.id not in self._active:
                self._became_active(campaign.service_name)
            self._campaigns[campaign.id] = campaign
            if campaign.due_in is not None:
                self._due_at[campaign.id] = now + campaign.due_in
        self._active = set(self._campaigns)
