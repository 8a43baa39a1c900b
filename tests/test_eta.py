"""The dashboard's ETA: the rate-based stand-in for `campaign plan`'s forecast()."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hypothesis import given as for_all
from hypothesis import strategies as st

from campaign.eta import RATE_MINUTES, EtaInput, estimate_finish

NOW = datetime(2026, 11, 30, 10, 0, 30, tzinfo=UTC)


def given(
    remaining: int, minutes: list[int], *, seconds: float = 30, active: bool = True
) -> EtaInput:
    return EtaInput(NOW, active, remaining, [0] * (60 - len(minutes)) + minutes, seconds)


def test_the_remaining_contacts_at_the_recent_pace_give_the_finish() -> None:
    # Ten whole minutes at 100 calls each, and 50 in the half minute so far: 100/min.
    eta = estimate_finish(given(3_000, [100] * RATE_MINUTES + [50]))
    assert eta.basis == "recent_rate"
    assert eta.calls_per_minute == 100
    assert eta.finish_at == NOW + timedelta(minutes=30)
    assert eta.text == "about 30m at 100 calls/min (over the last 10m)"


def test_older_minutes_than_the_last_ten_do_not_count() -> None:
    eta = estimate_finish(given(600, [5_000] * 20 + [60] * RATE_MINUTES + [30]))
    assert eta.calls_per_minute == 60


def test_a_campaign_that_started_minutes_ago_is_measured_after_its_first_minute() -> None:
    # Its first minute (20 calls: it began late in that minute) is left out; then one
    # whole minute and 30 s: 150 calls in 1.5 minutes, not in ten.
    eta = estimate_finish(given(500, [20, 100, 50]))
    assert eta.calls_per_minute == 100
    assert eta.finish_at == NOW + timedelta(minutes=5)


def test_a_campaign_in_its_first_minute_is_measured_over_that_minute_so_far() -> None:
    eta = estimate_finish(given(300, [0, 0, 30], seconds=20))
    assert eta.calls_per_minute == 90


def test_a_first_burst_is_measured_over_five_seconds_at_least() -> None:
    eta = estimate_finish(given(1_000, [10], seconds=0.5))
    assert eta.calls_per_minute == 120


def test_no_estimate_without_recent_calls_while_paused_or_when_nothing_is_left() -> None:
    assert estimate_finish(given(10, [])).basis == "no_recent_calls"
    assert estimate_finish(given(10, [100, 0] + [0] * RATE_MINUTES)).basis == "no_recent_calls"
    assert estimate_finish(given(10, [100], active=False)).basis == "not_active"
    done = estimate_finish(given(0, [100]))
    assert (done.basis, done.finish_at) == ("done", None)


def test_a_minute_that_has_only_just_begun_keeps_the_first_minutes_calls() -> None:
    # 600 calls in the minute the campaign started, none yet 1 s into the next one.
    eta = estimate_finish(given(1_000, [600, 0], seconds=1))
    assert eta.basis == "recent_rate"
    assert eta.calls_per_minute is not None and eta.calls_per_minute > 0


@for_all(
    st.integers(0, 10**7),
    st.lists(st.integers(0, 10**6), min_size=1, max_size=60),
    st.floats(0, 60),
    st.booleans(),
)
def test_every_series_gives_an_estimate_or_says_why_not(
    remaining: int, minutes: list[int], seconds: float, active: bool
) -> None:
    eta = estimate_finish(given(remaining, minutes, seconds=seconds, active=active))
    assert (eta.finish_at is not None) == (eta.basis == "recent_rate")
    if eta.finish_at is not None:
        assert eta.finish_at >= NOW and eta.calls_per_minute and eta.calls_per_minute > 0
