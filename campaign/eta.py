"""When a campaign will have started its last call: the dashboard's ETA, in one function.

`estimate_finish` is a stand-in for `campaign plan`'s `forecast()` (being written on
another branch): once that is merged, make this function call it and nothing else
changes. Until then the estimate is rate-based and deliberately simple: the contacts
still to be sent, at the pace calls were started over the last ten minutes or so. It knows
nothing of calling windows (a campaign that stops at 20:00 finishes later than this
says), of retries still to come, or of a pace about to change; it says which rate it
used, so that the page can show how it was reached.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Final, Literal

RATE_MINUTES: Final = 10
"""Whole minutes of calls started the rate is measured over, besides the current one."""
MIN_SPAN_SECONDS: Final = 5.0
"""A rate measured over less than this is measured over this (a start is a burst)."""

Basis = Literal["done", "not_active", "no_recent_calls", "recent_rate"]


@dataclass(frozen=True)
class EtaInput:
    """What the estimate is made from, for one campaign."""

    now: datetime
    active: bool
    """The campaign's state is `active` (a paused campaign does not move)."""
    remaining: int
    """Contacts still to be sent: pending, plus dispatching (in a batch not yet answered)."""
    calls_per_minute: Sequence[int]
    """Calls started per minute, oldest first; the last is the current minute, so far."""
    current_minute_seconds: float
    """How much of the current minute has passed."""


@dataclass(frozen=True)
class Eta:
    finish_at: datetime | None
    """When the last remaining contact is expected to be sent; None when unknown or done."""
    basis: Basis
    calls_per_minute: float | None
    """The rate the estimate assumes (recent_rate only)."""
    text: str
    """One line for people: 'about 1h20m at 250 calls/min (over the last 10m)'."""


def estimate_finish(given: EtaInput) -> Eta:
    """The dashboard's ETA for one campaign (see the module docstring)."""
    if given.remaining == 0:
        return Eta(None, "done", None, "nothing left to send")
    if not given.active:
        return Eta(None, "not_active", None, "none while the campaign is not active")
    # The last RATE_MINUTES whole minutes and the current one so far, from the first
    # call among them: a campaign that started five minutes ago is measured over five.
    recent = list(given.calls_per_minute[-(RATE_MINUTES + 1) :])
    while recent and recent[0] == 0:
        recent.pop(0)
    if not recent:
        return Eta(None, "no_recent_calls", None, "unknown: no calls started recently")
    if 1 < len(recent) <= RATE_MINUTES and sum(recent[1:]) > 0:
        # Its first minute began before its first call: counted whole, it would make
        # the pace look slower than it is. (Unless nothing came after it yet: a new
        # minute has only just begun.)
        recent.pop(0)
    span = len(recent) - 1 + max(given.current_minute_seconds, MIN_SPAN_SECONDS) / 60
    rate = sum(recent) / span
    minutes = given.remaining / rate
    finish = given.now + timedelta(minutes=minutes)
    return Eta(
        finish,
        "recent_rate",
        rate,
        f"about {_duration(minutes * 60)} at {_rate(rate)} calls/min "
        f"(over the last {_duration(span * 60)})",
    )


def _duration(seconds: float) -> str:
    s = max(1, round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def _rate(per_minute: float) -> str:
    return f"{per_minute:,.0f}" if per_minute >= 10 else f"{per_minute:.1f}"
