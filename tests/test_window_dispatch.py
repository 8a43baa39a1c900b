"""Calling windows at claim time: nobody is called outside the hours the campaign sets."""

from __future__ import annotations

import zoneinfo
from datetime import UTC, datetime, time, timedelta

import asyncpg
from hypothesis import given, settings
from hypothesis import strategies as st

from campaign import windows
from campaign.db import queries as q
from campaign.dispatch import prepare
from campaign.settings import Settings
from campaign.simulator import Simulator
from tests.engine import (
    add_contacts,
    create_campaign,
    dispatcher,
    engine_settings,
    run_engine,
    run_until_idle,
    states,
)

ZONES = sorted(zoneinfo.available_timezones())


def campaign_row(
    start: time | None,
    end: time | None,
    days: tuple[int, ...] = (1, 2, 3, 4, 5, 6, 7),
    **kw: object,
) -> q.CampaignRow:
    return q.CampaignRow(
        id=1,
        name="c",
        service_name="S",
        caller_id="441908273801",
        batch_size=50,
        calls_per_second=10,
        default_country=None,
        priority=0,
        window_start=start,
        window_end=end,
        window_days=days,
        **kw,  # type: ignore[arg-type]
    )


def contact(i: int, destination: str, tz: str | None = None) -> q.ContactRow:
    return q.ContactRow(i, destination, None, None, None, None, 0, tz)


def closed_window_now() -> tuple[time, time]:
    """A UTC window that opens two hours from now (and is closed now)."""
    now = datetime.now(UTC)
    start = (now + timedelta(hours=2)).time().replace(second=0, microsecond=0)
    end = (now + timedelta(hours=3)).time().replace(second=0, microsecond=0)
    return start, end


async def test_contacts_outside_their_window_wait_without_using_an_attempt(
    db_pool: asyncpg.Pool, simulator: Simulator
) -> None:
    start, end = closed_window_now()
    cid = await create_campaign(db_pool, window_start=start, window_end=end, default_timezone="UTC")
    ids = await add_contacts(db_pool, cid, ["sip:alice@example.com", "sip:bob@example.com"])
    await run_until_idle(db_pool, engine_settings(simulator))

    assert simulator.started_count() == 0
    rows = await db_pool.fetch(
        "SELECT state, dispatch_count, attempts, last_result, last_error,"
        " extract(epoch FROM next_attempt_at - now()) AS wait FROM contacts ORDER BY id"
    )
    assert len(rows) == len(ids)
    for r in rows:
        assert r["state"] == "pending"
        assert (r["dispatch_count"], r["attempts"]) == (0, 0)
        assert r["last_result"] == "outside_window"
        assert "UTC" in r["last_error"]
        assert 2 * 3600 - 120 < r["wait"] <= 2 * 3600 + 60


async def test_changing_the_window_reconsiders_waiting_contacts_at_once(
    db_pool: asyncpg.Pool, simulator: Simulator
) -> None:
    start, end = closed_window_now()
    cid = await create_campaign(db_pool, window_start=start, window_end=end, default_timezone="UTC")
    await add_contacts(db_pool, cid, ["sip:alice@example.com"])
    settings_ = engine_settings(simulator)
    await run_until_idle(db_pool, settings_)
    assert simulator.started_count() == 0

    await db_pool.execute(
        "UPDATE campaigns SET window_start = '00:00', window_end = '24:00' WHERE id = $1", cid
    )
    await run_until_idle(db_pool, settings_)
    assert await states(db_pool, cid) == {"dialing": 1}


async def test_number_without_a_usable_zone_is_never_called(
    db_pool: asyncpg.Pool, simulator: Simulator
) -> None:
    cid = await create_campaign(db_pool, window_start=time(9), window_end=time(20))
    await add_contacts(db_pool, cid, ["sip:alice@example.com", "+44 1908 273800"])
    await db_pool.execute(
        "UPDATE contacts SET timezone = 'Mars/Olympus_Mons' WHERE destination LIKE '+44%'"
    )
    await run_until_idle(db_pool, engine_settings(simulator))
    rows = await db_pool.fetch("SELECT state, last_error FROM contacts ORDER BY id")
    assert [r["state"] for r in rows] == ["invalid", "invalid"]
    assert "time zone" in rows[0]["last_error"]
    assert "Mars/Olympus_Mons" in rows[1]["last_error"]
    assert simulator.started_count() == 0


def test_call_that_would_start_after_the_window_closes_waits_for_the_next_opening() -> None:
    campaign = campaign_row(time(9), time(17), default_timezone="UTC")
    now = datetime(2026, 11, 27, 16, 59, 30, tzinfo=UTC)  # a Friday, window open
    c = [contact(1, "sip:a@example.com")]
    assert len(prepare(c, campaign, now, now + timedelta(seconds=10)).ready) == 1
    late = prepare(c, campaign, now, now + timedelta(seconds=45))
    assert late.ready == []
    assert late.deferred[0].until == datetime(2026, 11, 28, 9, 0, tzinfo=UTC)


def test_uk_number_uses_london_time_across_the_dst_change() -> None:
    campaign = campaign_row(time(9), time(20))
    number = [contact(1, "+44 1908 273800")]
    # 29 March 2026: London moves to BST (UTC+1) at 01:00 UTC.
    before = datetime(2026, 3, 28, 8, 30, tzinfo=UTC)  # 08:30 GMT: closed
    after = datetime(2026, 3, 29, 8, 30, tzinfo=UTC)  # 09:30 BST: open
    assert prepare(number, campaign, before).ready == []
    assert len(prepare(number, campaign, after).ready) == 1


def test_contact_timezone_overrides_the_zone_of_the_number() -> None:
    campaign = campaign_row(time(9), time(20))
    now = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)  # 13:00 London, 05:00 Los Angeles
    assert len(prepare([contact(1, "+44 1908 273800")], campaign, now).ready) == 1
    la = prepare([contact(1, "+44 1908 273800", "America/Los_Angeles")], campaign, now)
    assert la.ready == [] and len(la.deferred) == 1


@given(
    zone=st.sampled_from(ZONES),
    start_q=st.integers(0, 95),
    length_q=st.integers(1, 95),
    days=st.sets(st.integers(1, 7), min_size=1),
    now=st.datetimes(
        min_value=datetime(2000, 1, 1), max_value=datetime(2040, 1, 1), timezones=st.just(UTC)
    ),
    queue=st.integers(0, 600),
)
@settings(max_examples=400, deadline=None)
def test_no_contact_is_ready_outside_its_window_now_or_at_its_projected_start(
    zone: str, start_q: int, length_q: int, days: set[int], now: datetime, queue: int
) -> None:
    start = time(start_q // 4, (start_q % 4) * 15)
    end_q = (start_q + length_q) % 96
    end = time(end_q // 4, (end_q % 4) * 15)
    if start == end:
        return
    campaign = campaign_row(start, end, tuple(sorted(days)))
    start_by = now + timedelta(seconds=queue)
    out = prepare([contact(1, "sip:a@example.com", zone)], campaign, now, start_by)
    window = windows.Window.from_row(start, end, tuple(days))
    for _ in out.ready:
        for moment in (now, start_by):
            local = moment.astimezone(zoneinfo.ZoneInfo(zone))
            assert windows.is_open(moment, [zone], window), (zone, local)
    for d in out.deferred:
        assert d.until >= now
        assert windows.is_open(d.until, [zone], window)


async def _claimed_by_a_dead_daemon(
    db_pool: asyncpg.Pool, simulator: Simulator, settings_: Settings
) -> int:
    """A batch claimed while its window was open, by a daemon that died before sending."""
    # Open all day on every day but one three days off: not "always open" (so the
    # contacts' zones are checked), and open whichever side of midnight the claim
    # falls (today's weekday alone would close at 00:00 UTC, mid-test).
    closed_day = (datetime.now(UTC).isoweekday() + 2) % 7 + 1
    cid = await create_campaign(
        db_pool, window_start=time(0), window_end=time(12), default_timezone="UTC"
    )
    await db_pool.execute(
        "UPDATE campaigns SET window_end = '24:00', window_days = $2 WHERE id = $1",
        cid,
        [day for day in range(1, 8) if day != closed_day],
    )
    await add_contacts(db_pool, cid, ["sip:alice@example.com", "sip:bob@example.com"])
    async with dispatcher(db_pool, settings_, owner="dead-daemon") as d:
        [campaign] = await d_active(db_pool)
        [batch], _ = await d.claim(campaign)
        assert len(batch.contact_ids) == 2
    # Later: the window has closed (here: moved two hours ahead), and the lease expired.
    start, end = closed_window_now()
    await db_pool.execute(
        "UPDATE campaigns SET window_start = $2, window_end = $3, window_days = '{1,2,3,4,5,6,7}'"
        " WHERE id = $1",
        cid,
        start,
        end,
    )
    await db_pool.execute("UPDATE batches SET lease_until = now() - interval '1 second'")
    return cid


async def d_active(db_pool: asyncpg.Pool) -> list[q.CampaignRow]:
    async with db_pool.acquire() as conn:
        return await q.active_campaigns(conn)


async def test_resend_after_the_window_closed_waits_for_the_next_opening(
    db_pool: asyncpg.Pool, simulator: Simulator
) -> None:
    settings_ = engine_settings(simulator, dispatcher={"idempotency_window_seconds": 6 * 3600})
    cid = await _claimed_by_a_dead_daemon(db_pool, simulator, settings_)

    await run_engine(db_pool, settings_, lambda: _held(db_pool), owners=["survivor"])

    assert simulator.started_count() == 0
    row = await db_pool.fetchrow(
        "SELECT state, owner, last_error, extract(epoch FROM next_send_at - now()) AS wait"
        " FROM batches"
    )
    assert (row["state"], row["owner"]) == ("pending", None)
    assert 2 * 3600 - 120 < row["wait"] <= 2 * 3600 + 60
    assert "calling window" in row["last_error"]
    assert await states(db_pool, cid) == {"dispatching": 2}


async def test_widening_the_window_sends_a_held_batch_at_once(
    db_pool: asyncpg.Pool, simulator: Simulator
) -> None:
    settings_ = engine_settings(simulator, dispatcher={"idempotency_window_seconds": 6 * 3600})
    cid = await _claimed_by_a_dead_daemon(db_pool, simulator, settings_)
    await run_engine(db_pool, settings_, lambda: _held(db_pool), owners=["survivor"])

    await db_pool.execute(
        "UPDATE campaigns SET window_start = '00:00', window_end = '24:00' WHERE id = $1", cid
    )
    await run_until_idle(db_pool, settings_, owners=["survivor"])

    assert await states(db_pool, cid) == {"dialing": 2}
    assert simulator.started_count() == 2


async def _held(db_pool: asyncpg.Pool) -> bool:
    return bool(
        await db_pool.fetchval("SELECT next_send_at > now() + interval '1 hour' FROM batches")
    )


async def test_resend_whose_window_opens_after_the_idempotency_window_is_parked_not_sent(
    db_pool: asyncpg.Pool, simulator: Simulator
) -> None:
    settings_ = engine_settings(simulator)  # idempotency window: 1 hour
    await _claimed_by_a_dead_daemon(db_pool, simulator, settings_)

    await run_until_idle(db_pool, settings_, owners=["survivor"])

    assert simulator.started_count() == 0
    row = await db_pool.fetchrow("SELECT state, last_error FROM batches")
    assert row["state"] == "parked"
    assert "calling window is closed" in row["last_error"]


async def test_resend_of_a_contact_without_a_usable_zone_is_parked_not_sent(
    db_pool: asyncpg.Pool, simulator: Simulator
) -> None:
    # Claimed while the campaign dialled at any hour; by the re-send it has a
    # window, and these SIP contacts have no zone to check it in: fail closed.
    settings_ = engine_settings(simulator)
    cid = await create_campaign(db_pool)
    await add_contacts(db_pool, cid, ["sip:alice@example.com", "sip:bob@example.com"])
    async with dispatcher(db_pool, settings_, owner="dead-daemon") as d:
        [campaign] = await d_active(db_pool)
        claimed, _ = await d.claim(campaign)
        assert len(claimed) == 1
    await db_pool.execute(
        "UPDATE campaigns SET window_start = '09:00', window_end = '17:00' WHERE id = $1", cid
    )
    await db_pool.execute("UPDATE batches SET lease_until = now() - interval '1 second'")

    await run_until_idle(db_pool, settings_, owners=["survivor"])

    assert simulator.started_count() == 0
    row = await db_pool.fetchrow("SELECT state, last_error FROM batches")
    assert row["state"] == "parked"
    assert row["last_error"].startswith("not re-sent:")
    assert await states(db_pool, cid) == {"dispatching": 2}
