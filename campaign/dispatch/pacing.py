"""Pacing: how many calls may start now, for step 1 (claim.py) to claim no more.

- `Budget` and `pacing_room`: calls per second as whole calls per sliding window,
  for the account and for each campaign, counted from the grants every claim of
  every daemon records (budget_grants).
- `OpenCalls`: each campaign's open calls, held under its max_concurrent_calls;
  an exact count is reused for a moment, bounded from above by the grants since.
- `QueueDelay`: how long Aculab would hold a new start in its queue, so that the
  loop sends nothing Aculab would only queue, and the claim checks the calling
  window for when the calls will start, not when they are sent.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import structlog

from campaign.aculab import AculabClient, AculabError
from campaign.db import queries as q
from campaign.settings import Settings

log = structlog.get_logger("campaign.dispatch")

# Slack between this daemon's clock and the database's when deciding which
# grants came after an open-calls count: counting a grant twice only makes the
# bound safer.
OPEN_COUNT_MARGIN = 0.1
OPEN_COUNT_REUSE_SECONDS = 1.0


@dataclass(frozen=True)
class Budget:
    """A calls-per-second budget as whole calls per sliding window."""

    calls: int
    window: float

    @classmethod
    def of(cls, rate: float, guard: float) -> Budget:
        # Below one call per second the window stretches: 0.5/s is 1 call per 2 s.
        # The guard widens the window a little, so that the jitter between a
        # grant and the request reaching Aculab cannot put two windows' worth
        # of calls into one second at Aculab.
        seconds = max(1.0, 1.0 / rate)
        return cls(max(1, math.floor(rate * seconds + 1e-9)), seconds + guard)


def pacing_room(
    grants: dict[str, list[q.Grant]], budgets: dict[str, Budget], need: int
) -> tuple[int, float]:
    """(calls available now, seconds until `need` calls are) over every budget.

    Each budget counts only the grants inside its own window: the grants are read
    over the longest window of all, which for a campaign slower than one call per
    second is far longer than the account's second.
    """
    inside = {k: [g for g in grants.get(k, []) if g.age < b.window] for k, b in budgets.items()}
    available = min(b.calls - sum(g.calls for g in inside[k]) for k, b in budgets.items())
    wait = 0.0
    for key, budget in budgets.items():
        recent = inside[key]
        deficit = need - (budget.calls - sum(g.calls for g in recent))
        freed = 0
        for g in recent:  # oldest first
            if deficit <= 0:
                break
            freed += g.calls
            if freed >= deficit:
                wait = max(wait, budget.window - g.age)
                break
    return max(0, available), max(0.005, wait)


@dataclass(frozen=True)
class CapAsk:
    """One campaign's question to `OpenCalls`: may it add up to `calls` calls?"""

    campaign_id: int
    cap: int
    """Its max_concurrent_calls."""
    grants_window: float
    """How far back its grants were read."""
    budget: str
    """Its budget's key in the grants read."""
    calls: int


class OpenCalls:
    """Each campaign's open calls, or a bound above them, for its concurrency cap.

    Counting is exact but grows with the calls open (up to the cap), so an exact
    count is reused for less than the window of grants just read: the count then,
    plus every grant recorded since by any daemon, bounds the calls open now from
    above (calls that finished since are not taken off). The count is redone when
    the bound would hold the claim back; the campaigns that need one are counted
    in one statement.
    """

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        # campaign id -> (when, open calls counted then, the cap they were counted up to).
        self._counts: dict[int, tuple[float, int, int]] = {}

    async def count(
        self, conn: q.Conn, asks: Sequence[CapAsk], grants: dict[str, list[q.Grant]]
    ) -> dict[int, int]:
        """Open calls by campaign; called under the budget lock."""
        now = self._clock()
        out: dict[int, int] = {}
        caps: dict[int, int] = {}
        for ask in asks:
            # Reuse only within the grants just read (and at most a second: grants are
            # kept longer than that, but claims further apart gain nothing from it),
            # and only under the cap it was counted with, since a count stops at its cap.
            horizon = min(ask.grants_window, OPEN_COUNT_REUSE_SECONDS)
            counted = self._counts.get(ask.campaign_id)
            if (
                counted is not None
                and counted[2] == ask.cap
                and now - counted[0] + OPEN_COUNT_MARGIN < horizon
            ):
                since = now - counted[0] + OPEN_COUNT_MARGIN
                bound = counted[1] + sum(g.calls for g in grants[ask.budget] if g.age <= since)
                if bound + ask.calls <= ask.cap:
                    out[ask.campaign_id] = bound
                    continue
            caps[ask.campaign_id] = ask.cap
        if caps:
            for campaign_id, n in (await q.open_calls(conn, caps)).items():
                self._counts[campaign_id] = (now, n, caps[campaign_id])
                out[campaign_id] = n
        return out


class QueueDelay:
    """Seconds a new start would wait in Aculab's queue, by service (cached briefly)."""

    def __init__(
        self, client: AculabClient, settings: Settings, clock: Callable[[], float]
    ) -> None:
        self.client = client
        self.settings = settings
        self._clock = clock
        # service -> (when read, the delay then).
        self._cache: dict[str, tuple[float, float]] = {}

    async def __call__(self, service: str) -> float:
        """0 when the queue cannot be read (no API access key, Aculab unreachable):
        the engine's own pacing still keeps the queue about a second deep."""
        if not self.settings.aculab.api_access_key.get_secret_value():
            return 0.0
        now = self._clock()
        cached = self._cache.get(service)
        if cached is not None and now - cached[0] < self.settings.dispatcher.queue_check_interval:
            return cached[1]
        try:
            length = await self.client.queue_length(service)
        except AculabError as exc:
            log.debug("queue_length_unavailable", service=service, error=exc.reason)
            length = 0
        delay = length / self.settings.aculab.calls_per_second
        self._cache[service] = (now, delay)
        return delay
