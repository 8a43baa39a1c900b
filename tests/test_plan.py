"""`campaign plan NAME`: when a campaign will finish, and what holds it back until then.

The model (`campaign.forecast.simulate`) against cases worked out by hand: pacing-bound,
concurrency-bound (Little's law), a window opening later (and one that closes before the
work is done, across a daylight saving change), retries with a known outcome mix,
not_before, calls in progress; then properties over generated campaigns. Then the
forecast of a real database (`campaign.plan.forecast`): the open contacts with their
zones, the outcome mix it draws on, paused, cancelled and completed campaigns, a sample
for a large campaign; and the command's text and JSON.
"""

from __future__ import annotations

import json
import threading
import time as clock
from datetime import UTC, datetime, time, timedelta
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from campaign import plan, windows
from campaign.db.admin import CampaignNotFound, Pool
from campaign.forecast import (
    ASSUMED_MIX,
    HORIZON_DAYS,
    CauseShare,
    Cohort,
    InFlight,
    Limits,
    Mix,
    PlanInputs,
    Projection,
    expected_calls,
    simulate,
)
from campaign.plan import forecast, forecast_on, render_json, render_text, to_json_document
from campaign.settings import Settings, load_settings
from tests.engine import add_contacts, create_campaign, uk_numbers
from tests.helpers import Cli, one_line, window_closed_now
from tests.parked_batches import add_batch

pytestmark = pytest.mark.usefixtures("restore_logging")

MONDAY_10_UTC = datetime(2026, 1, 5, 10, 0, tzinfo=UTC)
"""Winter: London's clock is UTC."""
ANY_TIME = windows.Window(time(0), time(0), frozenset(range(1, 8)))
LONDON = ("Europe/London",)
STEP = 0.25


def inputs(
    cohorts: list[Cohort],
    *,
    mix: Mix = ASSUMED_MIX,
    cps: float = 10,
    account_cps: float = 10_000,
    cap: int = 100_000,
    in_flight: list[InFlight] | None = None,
    retry_delays: dict[str, Any] | None = None,
    max_attempts: int = 3,
    window: windows.Window = ANY_TIME,
    now: datetime = MONDAY_10_UTC,
    poll_interval: float = 0.0,
) -> PlanInputs:
    """A campaign as the model sees it; no pacing guard and no poll delay unless asked,
    so that the hand-worked figures stay round."""
    return PlanInputs(
        now=now,
        cohorts=tuple(cohorts),
        in_flight=tuple(in_flight or ()),
        mix=mix,
        limits=Limits(cps, account_cps, cap, 0.0, poll_interval=poll_interval),
        max_attempts=max_attempts,
        retry_delays=retry_delays or {},
        window=window,
    )


def answered_after(seconds: float) -> Mix:
    return Mix((CauseShare("completed", 1.0, seconds),), "campaign", 100)


def eta(p: Projection) -> float:
    assert p.eta_seconds is not None, "the forecast says the campaign never finishes"
    return p.eta_seconds


# --- the model, by hand ---------------------------------------------------------------------


def test_pacing_bound_campaign_finishes_when_its_last_paced_call_ends() -> None:
    # 1,000 calls at 10/s: the last goes out just under 100 s in, and lasts 5 s.
    p = simulate(inputs([Cohort(0, 0, (), 1000)], mix=answered_after(5), cps=10), STEP)

    assert eta(p) == pytest.approx(105, abs=STEP)
    assert p.binding == "pacing"
    assert p.calls == pytest.approx(1000)
    assert p.contacts == pytest.approx(1000)
    assert p.constraint_seconds["pacing"] == pytest.approx(100, abs=STEP)


def test_the_slower_of_the_campaigns_and_the_accounts_pacing_binds() -> None:
    campaign_slower = simulate(inputs([Cohort(0, 0, (), 500)], cps=5, account_cps=50), STEP)
    account_slower = simulate(inputs([Cohort(0, 0, (), 500)], cps=50, account_cps=5), STEP)

    assert eta(campaign_slower) == pytest.approx(100, abs=STEP)
    assert eta(account_slower) == pytest.approx(100, abs=STEP)


def test_pacing_counts_whole_calls_per_sliding_window_and_the_guard() -> None:
    # dispatch.Budget: 10/s with a 0.02 s guard is 10 calls per 1.02 s; 0.5/s is one
    # call per 2.02 s.
    assert Limits(10, 100, 1, 0.02).pacing_rate == pytest.approx(10 / 1.02)
    assert Limits(0.5, 100, 1, 0.02).pacing_rate == pytest.approx(1 / 2.02)


def test_concurrency_bound_campaign_runs_at_cap_over_mean_duration() -> None:
    # Little's law: 20 slots held 10 s each carry 2 calls/s, well under the 100/s of
    # pacing: 600 calls go out in 30 rounds of 20, the last ending 300 s in.
    limits = Limits(100, 100, 20, 0.0, poll_interval=0.0)
    assert limits.concurrency_rate(10) == pytest.approx(2)

    p = simulate(inputs([Cohort(0, 0, (), 600)], mix=answered_after(10), cps=100, cap=20), STEP)

    assert eta(p) == pytest.approx(300, abs=2 * STEP)
    assert p.binding == "concurrency"


def test_room_under_the_cap_waits_for_the_dispatcher_to_look_again() -> None:
    # Nothing wakes the dispatcher when a call ends: at the cap it looks every
    # poll_interval, so a freed slot stays empty 1 s on average (half of 2 s).
    limits = Limits(100, 100, 20, 0.0, poll_interval=2.0)
    assert limits.concurrency_rate(10) == pytest.approx(20 / 11)

    p = simulate(
        inputs([Cohort(0, 0, (), 600)], mix=answered_after(10), cps=100, cap=20, poll_interval=2.0),
        STEP,
    )

    # 30 rounds of 11 s, the last call ending 10 s into its round.
    assert eta(p) == pytest.approx(29 * 11 + 10, abs=2 * STEP)


def test_a_window_opening_later_holds_the_campaign_until_it_opens() -> None:
    # 10:00 UTC; the window opens at 12:00 London (UTC in January): 2 h of waiting,
    # then 1,000 calls at 10/s.
    window = windows.Window(time(12), time(13), frozenset(range(1, 8)))

    p = simulate(inputs([Cohort(0, 0, LONDON, 1000)], cps=10, window=window), STEP)

    assert eta(p) == pytest.approx(7200 + 100, abs=STEP)
    assert p.binding == "calling_window"
    assert [(h.start.hour, round(h.calls), h.held_by) for h in p.hours] == [
        (10, 0, "calling_window"),
        (11, 0, "calling_window"),
        (12, 1000, "pacing"),
    ]


def test_work_the_window_cannot_hold_waits_for_the_next_days_opening() -> None:
    # One hour a day at 10/s is 36,000 calls: 72,000 take two days' windows, finishing
    # at 13:00 on Tuesday.
    window = windows.Window(time(12), time(13), frozenset(range(1, 8)))

    p = simulate(inputs([Cohort(0, 0, LONDON, 72_000)], cps=10, window=window))

    assert p.finish_at == pytest.approx(
        datetime(2026, 1, 6, 13, 0, tzinfo=UTC), abs=timedelta(seconds=10)
    )
    busy = [(h.start, round(h.calls)) for h in p.hours if h.calls]
    assert busy == [
        (datetime(2026, 1, 5, 12, 0, tzinfo=UTC), 36_000),
        (datetime(2026, 1, 6, 12, 0, tzinfo=UTC), 36_000),
    ]


def test_windows_follow_daylight_saving() -> None:
    # Saturday 2026-03-07 15:00 UTC is 10:00 in New York, just after its 09:00-10:00
    # window; the clocks go forward that night, so Sunday's 09:00 is 13:00 UTC, not 14:00.
    window = windows.Window(time(9), time(10), frozenset(range(1, 8)))
    now = datetime(2026, 3, 7, 15, 0, tzinfo=UTC)

    p = simulate(
        inputs([Cohort(0, 0, ("America/New_York",), 100)], cps=10, window=window, now=now), STEP
    )

    assert p.finish_at == pytest.approx(
        datetime(2026, 3, 8, 13, 0, 10, tzinfo=UTC), abs=timedelta(seconds=1)
    )


def test_contacts_in_several_zones_are_dialed_only_when_every_window_is_open() -> None:
    # 09:00-18:00 in London and New York overlap from 14:00 to 18:00 UTC.
    window = windows.Window(time(9), time(18), frozenset(range(1, 8)))

    p = simulate(
        inputs([Cohort(0, 0, ("America/New_York", "Europe/London"), 100)], window=window), STEP
    )

    assert p.finish_at == pytest.approx(
        datetime(2026, 1, 5, 14, 0, 10, tzinfo=UTC), abs=timedelta(seconds=1)
    )


def test_retries_follow_the_outcome_mix_and_the_retry_delays() -> None:
    # Half the calls are busy (2 s), retried after 60 s; three attempts. 100 + 50 + 25
    # calls; the last round goes out at 2 x (2 + 60) = 124 s and its answered half
    # ends 10 s later.
    mix = Mix((CauseShare("completed", 0.5, 10), CauseShare("busy", 0.5, 2)), "campaign", 10)
    three = inputs([Cohort(0, 0, (), 100)], mix=mix, cps=1000, retry_delays={"busy": 60})
    two = inputs(
        [Cohort(0, 0, (), 100)], mix=mix, cps=1000, retry_delays={"busy": 60}, max_attempts=2
    )

    p = simulate(three, STEP)
    assert p.calls == pytest.approx(175)
    assert eta(p) == pytest.approx(134, abs=STEP)
    assert p.binding == "retries"
    assert expected_calls(0, mix, 3, {"busy": 60}) == pytest.approx(1.75)

    p = simulate(two, STEP)
    assert p.calls == pytest.approx(150)
    assert eta(p) == pytest.approx(72, abs=STEP)


def test_a_cause_without_a_retry_delay_is_never_retried() -> None:
    mix = Mix((CauseShare("completed", 0.5, 1), CauseShare("unobtainable", 0.5, 1)), "campaign", 2)

    p = simulate(inputs([Cohort(0, 0, (), 100)], mix=mix, retry_delays={"busy": 60}), STEP)

    assert p.calls == pytest.approx(100)
    assert expected_calls(0, mix, 3, {"busy": 60}) == 1


def test_contacts_with_attempts_used_have_fewer_retries_left() -> None:
    mix = Mix((CauseShare("busy", 1.0, 1),), "campaign", 1)

    assert expected_calls(0, mix, 3, {"busy": 10}) == 3
    assert expected_calls(2, mix, 3, {"busy": 10}) == 1
    assert expected_calls(3, mix, 3, {"busy": 10}) == 0


def test_with_no_call_finished_every_call_is_assumed_answered_at_once() -> None:
    p = simulate(inputs([Cohort(0, 0, (), 100)], cps=10, cap=1, retry_delays={"busy": 1}), STEP)

    # No retries, and the cap of 1 does not bind: no duration is known.
    assert p.calls == pytest.approx(100)
    assert eta(p) == pytest.approx(10, abs=STEP)


def test_not_before_holds_contacts_until_their_time() -> None:
    p = simulate(inputs([Cohort(600, 0, (), 100, "not_before")], cps=10), STEP)

    assert eta(p) == pytest.approx(610, abs=STEP)
    assert p.binding == "not_before"


def test_a_contact_that_will_never_be_dialed_finishes_uncalled_when_due() -> None:
    p = simulate(inputs([Cohort(0, 0, (), 100), Cohort(50, 0, None, 30)], cps=10), STEP)

    assert p.calls == pytest.approx(100)
    assert p.contacts == pytest.approx(130)
    assert eta(p) == pytest.approx(50, abs=STEP)


def test_calls_in_progress_end_by_the_mix_and_hold_their_slots() -> None:
    # 10 calls started 4 s ago, lasting 10 s on average, fill the cap of 10: the 10
    # pending contacts go out when they end, 6 s from now, and end 10 s later.
    p = simulate(
        inputs(
            [Cohort(0, 0, (), 10)],
            mix=answered_after(10),
            cps=100,
            cap=10,
            in_flight=[InFlight(-4, 1, (), 10)],
        ),
        STEP,
    )

    assert eta(p) == pytest.approx(16, abs=2 * STEP)
    assert p.calls == pytest.approx(10)
    assert p.contacts == pytest.approx(20)
    assert p.constraint_seconds["concurrency"] == pytest.approx(6, abs=2 * STEP)


def test_a_campaign_with_nothing_open_is_finished_now() -> None:
    p = simulate(inputs([]))

    assert eta(p) == 0
    assert p.calls == 0


def test_contacts_whose_window_never_opens_never_finish() -> None:
    # Tokyo and New York are 14 hours apart: a one-hour window is never open in both.
    window = windows.Window(time(9), time(10), frozenset(range(1, 8)))

    p = simulate(inputs([Cohort(0, 0, ("America/New_York", "Asia/Tokyo"), 5)], window=window))

    assert p.finish_at is None
    assert p.eta_seconds is None


def test_contacts_due_beyond_the_horizon_never_finish_and_the_hours_stop_at_it() -> None:
    # not_before is any timestamp a file holds: twenty years on, or the year 9999.
    for years in (20, 7_000):
        p = simulate(inputs([Cohort(years * 365 * 86400.0, 0, (), 5, "not_before")]))

        assert p.finish_at is None
        assert len(p.hours) <= HORIZON_DAYS * 24 + 1
        assert sum(p.constraint_seconds.values()) <= (HORIZON_DAYS * 86400 + 1)


def test_a_large_campaign_costs_a_bounded_number_of_steps() -> None:
    # Two million contacts over five days of windows in six zones, with retries.
    zones = [("Europe/London",), ("America/New_York",), ("Asia/Tokyo",), ("Australia/Sydney",)]
    mix = Mix(
        (
            CauseShare("completed", 0.7, 60),
            CauseShare("busy", 0.2, 5),
            CauseShare("no_answer", 0.1, 30),
        ),
        "campaign",
        1000,
    )
    cohorts = [Cohort(h * 3600.0, a, z, 100_000) for h in range(5) for a in range(1) for z in zones]
    window = windows.Window(time(9), time(20), frozenset(range(1, 6)))
    big = inputs(
        cohorts,
        mix=mix,
        cps=50,
        cap=500,
        window=window,
        retry_delays={"busy": 600, "no_answer": 1800},
    )

    started = clock.perf_counter()
    p = simulate(big)
    took = clock.perf_counter() - started

    assert p.finish_at is not None
    assert p.calls == pytest.approx(
        2_000_000 * expected_calls(0, mix, 3, big.retry_delays), rel=1e-3
    )
    assert p.step_seconds <= 60
    assert took < 20, f"{took:.1f} s for a forecast"


# --- the model, over generated campaigns ------------------------------------------------------

causes = st.sampled_from(["completed", "hung_up", "busy", "no_answer", "failed", "unobtainable"])


@st.composite
def campaigns(draw: st.DrawFn) -> PlanInputs:
    names = draw(st.lists(causes, min_size=1, max_size=4, unique=True))
    weights = [draw(st.floats(0.05, 1)) for _ in names]
    mix = Mix(
        tuple(
            CauseShare(n, w / sum(weights), draw(st.floats(0, 30)))
            for n, w in zip(names, weights, strict=True)
        ),
        "campaign",
        100,
    )
    cohorts = [
        Cohort(draw(st.floats(0, 600)), draw(st.integers(0, 2)), (), draw(st.floats(1, 300)))
        for _ in range(draw(st.integers(1, 4)))
    ]
    return inputs(
        cohorts,
        mix=mix,
        cps=draw(st.floats(0.5, 50)),
        account_cps=draw(st.floats(0.5, 100)),
        cap=draw(st.integers(1, 200)),
        retry_delays={"busy": draw(st.floats(0, 120)), "no_answer": draw(st.floats(0, 120))},
        poll_interval=draw(st.sampled_from([0.0, 2.0])),
    )


@settings(max_examples=60, deadline=None)
@given(campaigns())
def test_every_forecast_finishes_within_pacing_with_every_expected_call(i: PlanInputs) -> None:
    p = simulate(i)

    expected = sum(
        c.contacts * expected_calls(c.attempts, i.mix, 3, i.retry_delays) for c in i.cohorts
    )
    # It stops when fewer than half a contact is left: at most that many contacts' calls
    # are not counted.
    assert expected - 0.5 * 3 - 1e-6 <= p.calls <= expected + 1e-6
    assert eta(p) >= 0
    rate = i.limits.pacing_rate
    busiest = max(h.calls for h in p.hours)
    assert busiest <= rate * 3600 + 1e-6
    # Nothing goes out faster than pacing: the calls need at least that long.
    assert eta(p) >= (p.calls - 1) / rate - p.step_seconds - 1e-6


@settings(max_examples=30, deadline=None)
@given(campaigns())
def test_a_finer_step_changes_the_forecast_by_little(i: PlanInputs) -> None:
    coarse = eta(simulate(i, 1.0))
    fine = eta(simulate(i, 0.25))

    assert fine == pytest.approx(coarse, abs=max(5.0, 0.05 * fine))


# --- the forecast of a database ------------------------------------------------------------


def plan_settings(**dispatcher: Any) -> Settings:
    return load_settings(
        None, aculab={"calls_per_second": 100}, dispatcher={"poll_interval": 2.0, **dispatcher}
    )


async def finished_calls(
    pool: Pool, campaign_id: int, count: int, cause: str, seconds: float, *, start: int = 0
) -> None:
    """`count` contacts whose single call ended with `cause` after `seconds`."""
    ids = await add_contacts(pool, campaign_id, uk_numbers(count, start=start))
    batch = await pool.fetchval(
        "INSERT INTO batches (campaign_id, service_name, unique_id, rest_calls, contact_ids,"
        " state) VALUES ($1, 'Svc', gen_random_uuid()::text, '[]', $2, 'submitted') RETURNING id",
        campaign_id,
        ids,
    )
    await pool.execute(
        "INSERT INTO calls (contact_id, campaign_id, batch_id, attempt, reference, call_cause,"
        " started_at, finished_at)"
        " SELECT c, $1, $2, 1, gen_random_uuid()::text, $4,"
        "        now() - make_interval(secs => $5 + 60), now() - interval '60 seconds'"
        " FROM unnest($3::bigint[]) AS c",
        campaign_id,
        batch,
        ids,
        cause,
        seconds,
    )
    await pool.execute(
        "UPDATE contacts SET state = 'completed', attempts = 1 WHERE id = ANY($1::bigint[])", ids
    )


async def test_the_open_contacts_are_forecast_in_their_zones_windows(db_pool: Pool) -> None:
    start, end = window_closed_now("Europe/London")
    cid = await create_campaign(
        db_pool,
        "spring",
        window_start=time.fromisoformat(start),
        window_end=time.fromisoformat(end),
        calls_per_second=10,
    )
    await add_contacts(db_pool, cid, uk_numbers(30))
    ids = await add_contacts(db_pool, cid, uk_numbers(10, start=100))
    await db_pool.execute(
        "UPDATE contacts SET timezone = 'America/New_York' WHERE id = ANY($1::bigint[])", ids
    )
    await add_contacts(db_pool, cid, ["+44 909 8790000"])  # premium rate: never dialed

    f = await forecast(db_pool, "spring", plan_settings())

    loads = {z.zones: z for z in f.zones}
    assert {k: round(v.contacts) for k, v in loads.items()} == {
        ("Europe/London",): 30,
        ("America/New_York",): 10,
    }
    london, new_york = loads[("Europe/London",)], loads[("America/New_York",)]
    assert not london.open_now and not new_york.open_now
    assert london.changes_at is not None and new_york.changes_at is not None
    # Each zone's contacts go out when its own window opens; the last ones in New York.
    assert f.finish_at is not None
    assert new_york.changes_at < f.finish_at < new_york.changes_at + timedelta(minutes=1)
    assert f.workload.pending == 41
    assert f.workload.never_dialed == pytest.approx(1)
    assert not f.sample
    assert f.projection is not None and f.projection.binding == "calling_window"


async def test_the_outcome_mix_is_the_campaigns_else_the_accounts_else_assumed(
    db_pool: Pool,
) -> None:
    cid = await create_campaign(db_pool, "spring")
    await add_contacts(db_pool, cid, uk_numbers(5))
    assumed = await forecast(db_pool, "spring", plan_settings())

    other = await create_campaign(db_pool, "autumn")
    await finished_calls(db_pool, other, 30, "busy", 4.0, start=1000)
    account = await forecast(db_pool, "spring", plan_settings())

    await finished_calls(db_pool, cid, 20, "completed", 40.0, start=2000)
    await finished_calls(db_pool, cid, 20, "no_answer", 20.0, start=3000)
    own = await forecast(db_pool, "spring", plan_settings())

    assert (assumed.inputs.mix.source, assumed.inputs.mix.causes) == ("assumed", ())
    assert account.inputs.mix.source == "account"
    assert [(c.cause, c.share) for c in account.inputs.mix.causes] == [("busy", 1.0)]
    assert account.inputs.mix.causes[0].seconds == pytest.approx(4.0, abs=0.01)
    assert own.inputs.mix.source == "campaign"
    assert [(c.cause, c.share) for c in own.inputs.mix.causes] == [
        ("completed", 0.5),
        ("no_answer", 0.5),
    ]
    assert own.inputs.mix.mean_seconds == pytest.approx(30.0, abs=0.01)
    assert "no call has finished yet" in render_text(assumed)
    assert "the account's latest 30 finished calls" in render_text(account)


async def test_calls_in_progress_are_forecast_to_end_after_their_mean_duration(
    db_pool: Pool,
) -> None:
    cid = await create_campaign(db_pool, "spring")
    await finished_calls(db_pool, cid, 20, "completed", 30.0)
    ids = await add_contacts(db_pool, cid, uk_numbers(10, start=500))
    batch = await db_pool.fetchval(
        "INSERT INTO batches (campaign_id, service_name, unique_id, rest_calls, contact_ids,"
        " state) VALUES ($1, 'Svc', 'in-progress', '[]', $2, 'submitted') RETURNING id",
        cid,
        ids,
    )
    await db_pool.execute(
        "INSERT INTO calls (contact_id, campaign_id, batch_id, attempt, reference, started_at)"
        " SELECT c, $1, $2, 1, 'ref-' || c, now() - interval '10 seconds'"
        " FROM unnest($3::bigint[]) AS c",
        cid,
        batch,
        ids,
    )
    await db_pool.execute(
        "UPDATE contacts SET state = 'dialing', attempts = 1, reference = 'ref-' || id"
        " WHERE id = ANY($1::bigint[])",
        ids,
    )

    f = await forecast(db_pool, "spring", plan_settings())

    # Started 10 s ago, held 30 s on average: 20 s from now.
    assert f.workload.dialing == 10
    assert f.eta_seconds == pytest.approx(20, abs=1)
    assert f.projection is not None and f.projection.binding == "calls_in_progress"


async def test_a_paused_campaign_has_no_eta_but_says_when_it_would_finish_if_resumed(
    db_pool: Pool,
) -> None:
    cid = await create_campaign(db_pool, "spring", calls_per_second=10)
    await add_contacts(db_pool, cid, uk_numbers(100))
    await db_pool.execute(
        "UPDATE campaigns SET state = 'paused', state_reason = 'paused by operator' WHERE id = $1",
        cid,
    )

    f = await forecast(db_pool, "spring", plan_settings())
    doc = to_json_document(f)
    text = render_text(f)

    assert (f.eta_seconds, f.finish_at) == (None, None)
    assert (doc["eta_seconds"], doc["finish_at"], doc["outlook"]) == (None, None, "paused")
    resumed = doc["if_resumed"]
    # 100 calls at 10 per 1.02 s (the pacing guard).
    assert resumed["eta_seconds"] == pytest.approx(10 * 1.02, abs=0.5)
    assert text.splitlines()[1] == "  paused (paused by operator): no finish time while paused"
    assert text.splitlines()[2].startswith("  if resumed now, it would finish ")


async def test_cancelled_and_completed_campaigns_say_so(db_pool: Pool) -> None:
    cancelled = await create_campaign(db_pool, "cancelled")
    await add_contacts(db_pool, cancelled, uk_numbers(3))
    await db_pool.execute("UPDATE campaigns SET state = 'cancelled' WHERE id = $1", cancelled)
    done = await create_campaign(db_pool, "done")
    await db_pool.execute("UPDATE campaigns SET state = 'completed' WHERE id = $1", done)

    c = await forecast(db_pool, "cancelled", plan_settings())
    d = await forecast(db_pool, "done", plan_settings())

    assert (c.eta_seconds, c.finish_at, c.projection) == (None, None, None)
    assert "cancelled: nothing more will be dialed" in render_text(c)
    assert to_json_document(c)["hours"] == []
    assert d.eta_seconds == 0
    assert d.finish_at is not None
    assert "completed, at " in render_text(d)


async def test_a_large_campaign_is_judged_by_a_sample_that_says_so(db_pool: Pool) -> None:
    start, end = window_closed_now("Europe/London")
    cid = await create_campaign(
        db_pool,
        "spring",
        window_start=time.fromisoformat(start),
        window_end=time.fromisoformat(end),
    )
    await add_contacts(db_pool, cid, uk_numbers(300))
    ids = await add_contacts(db_pool, cid, uk_numbers(100, start=1000))
    await db_pool.execute(
        "UPDATE contacts SET timezone = 'America/New_York' WHERE id = ANY($1::bigint[])", ids
    )

    f = await forecast(db_pool, "spring", plan_settings(), sample=100)

    assert (f.judged, f.sample) == (100, True)
    # The sample's mix of zones stands for all 400 contacts.
    assert sum(z.contacts for z in f.zones) == pytest.approx(400)
    loads = {z.zones: z.contacts for z in f.zones}
    assert loads[("Europe/London",)] == pytest.approx(300, abs=60)
    assert "time zones from a sample of 100 of the 400 open contacts" in render_text(f)
    assert to_json_document(f)["sample"] == {"contacts": 100, "of": 400, "sample": True}


async def test_contacts_whose_window_never_opens_are_forecast_invalid_as_the_claim_does(
    db_pool: Pool,
) -> None:
    # A Russian mobile number may be in any of 16 zones, from Bucharest to Anadyr: a
    # one-hour window is never open in all of them at once, and the claim marks such a
    # contact invalid. The campaign finishes then, without a call.
    cid = await create_campaign(
        db_pool, "spring", window_start=time(9), window_end=time(10), calls_per_second=10
    )
    await add_contacts(db_pool, cid, [f"+7 912 345 {6700 + i}" for i in range(5)])

    f = await forecast(db_pool, "spring", plan_settings())

    assert f.eta_seconds == 0
    assert f.workload.never_dialed == pytest.approx(5)
    assert "  open: 5 pending of 5 contacts (about 5 will never be dialed)" in render_text(f)


async def test_contacts_in_parked_batches_keep_the_campaign_from_finishing(
    db_pool: Pool,
) -> None:
    cid = await create_campaign(db_pool, "spring", calls_per_second=10)
    await add_contacts(db_pool, cid, uk_numbers(20))
    await add_batch(db_pool, cid, contacts=3)

    f = await forecast(db_pool, "spring", plan_settings())
    doc = to_json_document(f)
    lines = render_text(f).splitlines()

    assert (f.eta_seconds, f.finish_at) == (None, None)
    assert (doc["eta_seconds"], doc["finish_at"], doc["outlook"]) == (None, None, "never")
    assert doc["outlook_reason"] == (
        "3 contacts in parked batches wait for an operator (`campaign resolve`)"
    )
    assert lines[1] == (
        "  finishes: never on its own: 3 contacts in parked batches wait for an operator "
        "(`campaign resolve`)"
    )
    assert lines[2].startswith("  the other contacts would finish ")
    # The 20 others: 20 calls at 10 per 1.02 s.
    assert doc["projected"]["eta_seconds"] == pytest.approx(2 * 1.02, abs=0.5)
    assert (doc["contacts"]["parked"], doc["contacts"]["pending"]) == (3, 20)


async def test_a_forecast_reads_within_the_callers_read_only_snapshot(db_pool: Pool) -> None:
    cid = await create_campaign(db_pool, "spring", calls_per_second=10)
    await add_contacts(db_pool, cid, uk_numbers(50))

    async with (
        db_pool.acquire() as conn,
        conn.transaction(isolation="repeatable_read", readonly=True),
    ):
        before = await forecast_on(conn, "spring", plan_settings())
        # Contacts added meanwhile are not in the caller's snapshot.
        await add_contacts(db_pool, cid, uk_numbers(50, start=100))
        again = await forecast_on(conn, "spring", plan_settings())

    assert before.workload.pending == again.workload.pending == 50
    assert again.eta_seconds == pytest.approx(5 * 1.02, abs=0.5)
    assert (await forecast(db_pool, "spring", plan_settings())).workload.pending == 100


async def test_an_unknown_campaign_is_refused(db_pool: Pool) -> None:
    with pytest.raises(CampaignNotFound):
        await forecast(db_pool, "nope", plan_settings())


async def test_the_text_has_the_finish_what_binds_and_the_hours(db_pool: Pool) -> None:
    # 500 slots held 31 s carry 16 calls/s: pacing (2/s) binds, not the cap.
    cid = await create_campaign(db_pool, "spring", calls_per_second=2, max_concurrent_calls=500)
    await finished_calls(db_pool, cid, 20, "completed", 30.0)
    await add_contacts(db_pool, cid, uk_numbers(3600 * 2, start=100))

    f = await forecast(db_pool, "spring", plan_settings())
    lines = render_text(f).splitlines()

    assert lines[0].startswith("campaign spring (id 1), active, as of ")
    assert lines[1].startswith("  finishes ")
    assert lines[1].endswith(", held back most by pacing")
    assert "  open: 7,200 pending of 7,220 contacts" in lines
    assert any(
        line.startswith("  pacing: campaign 2/s, account 100/s: at most 1.96") for line in lines
    )
    assert any("Little's law" in line for line in lines)
    assert "  outcomes (this campaign's 20 calls): completed 100%" in lines
    table = lines.index(next(line for line in lines if line.startswith("  hour (UTC)")))
    hours = lines[table + 1 :]
    hours = [line for line in hours if not line.startswith("  note:")]
    # 7,200 calls at 1.96/s take a little over an hour: two or three clock hours.
    assert 2 <= len(hours) <= 3
    assert sum(int(line.split()[2].replace(",", "")) for line in hours) == pytest.approx(
        7200, abs=2
    )


async def test_the_json_document_carries_eta_finish_and_every_section(db_pool: Pool) -> None:
    cid = await create_campaign(db_pool, "spring", calls_per_second=10)
    await add_contacts(db_pool, cid, uk_numbers(50))

    doc = json.loads(render_json(await forecast(db_pool, "spring", plan_settings())))

    assert doc["eta_seconds"] == pytest.approx(5 * 1.02, abs=0.5)
    finish = datetime.fromisoformat(doc["finish_at"])
    as_of = datetime.fromisoformat(doc["as_of"])
    assert (finish - as_of).total_seconds() == pytest.approx(doc["eta_seconds"], abs=0.01)
    assert doc["binding_constraint"] == "pacing"
    assert (doc["outlook"], doc["outlook_reason"]) == ("finishes", None)
    assert doc["if_resumed"] is None
    assert doc["contacts"]["pending"] == 50
    assert doc["expected"]["calls"] == 50
    assert doc["pacing"]["calls_per_second"] == pytest.approx(10 / 1.02, abs=1e-3)
    assert doc["outcome_mix"] == {"source": "assumed", "calls": 0, "causes": []}
    assert sum(h["calls"] for h in doc["hours"]) == pytest.approx(50)
    assert doc["zones"] == [{"zones": [], "contacts": 50.0, "open_now": True, "changes_at": None}]
    assert doc["notes"]


# --- the command -----------------------------------------------------------------------------


def test_plan_prints_text_or_json_with_the_accounts_cps_from_the_settings(
    cli: Cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    cli("create", "spring", "--service", "Svc", "--calls-per-second", "50")
    cli.query(
        "INSERT INTO contacts (campaign_id, destination)"
        " SELECT 1, '+44 1908 ' || (200000 + g) FROM generate_series(1, 20) g"
    )
    monkeypatch.setenv("CAMPAIGN_ACULAB__CALLS_PER_SECOND", "2")

    status, out, err = cli("plan", "spring")
    assert (status, err) == (0, "")
    assert "pacing: campaign 50/s, account 2/s" in out

    status, out, _ = cli("plan", "spring", "--json")
    assert status == 0
    doc = json.loads(out)
    assert doc["pacing"]["account_calls_per_second"] == 2
    assert doc["eta_seconds"] is not None and doc["finish_at"] is not None


def test_plan_of_a_paused_campaign_says_so(cli: Cli) -> None:
    cli("create", "spring", "--service", "Svc", "--paused")

    status, out, _ = cli("plan", "spring")

    assert status == 0
    assert "  paused (created paused): no finish time while paused" in out.splitlines()


def test_plan_refuses_an_unknown_campaign_with_status_2(cli: Cli) -> None:
    status, out, err = cli("plan", "nope")

    assert (status, out) == (2, "")
    assert one_line(err) == "campaign plan: no campaign named 'nope'"


def test_plan_of_contacts_due_in_the_year_9999_says_it_will_not_finish(
    cli: Cli, tmp_path: Any
) -> None:
    contacts = tmp_path / "far.csv"
    contacts.write_text("destination,not_before\n+441908200001,9999-12-30T00:00:00Z\n")
    cli("create", "far", "--service", "Svc")
    assert cli("load", "far", str(contacts))[0] == 0

    status, out, err = cli("plan", "far", "--json")

    assert (status, err) == (0, "")
    doc = json.loads(out)
    assert doc["eta_seconds"] is None and doc["finish_at"] is None
    status, out, err = cli("plan", "far")
    assert (status, err) == (0, "")


async def test_the_simulation_runs_off_the_event_loop_so_a_dashboard_keeps_answering(
    db_pool: Pool, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A campaign of a million contacts in thirty zones' windows takes a minute of CPU to
    # forecast: on the loop, every request to the dashboard would wait that long.
    cid = await create_campaign(db_pool, "spring", calls_per_second=10)
    await add_contacts(db_pool, cid, uk_numbers(5))
    threads: list[int] = []

    def simulated(inputs: PlanInputs) -> Projection:
        threads.append(threading.get_ident())
        return simulate(inputs)

    monkeypatch.setattr(plan, "simulate", simulated)

    async with (
        db_pool.acquire() as conn,
        conn.transaction(isolation="repeatable_read", readonly=True),
    ):
        on = await forecast_on(conn, "spring", plan_settings())
    own = await forecast(db_pool, "spring", plan_settings())

    assert on.eta_seconds is not None and own.eta_seconds is not None
    assert len(threads) == 2 and threading.get_ident() not in threads
