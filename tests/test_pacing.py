"""Pacing shared by every daemon, the concurrency cap, and pause taking effect."""

from __future__ import annotations

import asyncio
import itertools
import random
from collections.abc import Awaitable, Callable
from pathlib import Path

import asyncpg
import pytest

from campaign.aculab import AculabClient
from campaign.daemon import GRANT_HISTORY_SECONDS
from campaign.db import queries as q
from campaign.dispatch import Budget, Dispatcher, pacing_room
from campaign.settings import DispatcherSettings
from campaign.simulator import Simulator, SimulatorConfig
from tests.daemons import (
    daemon_env,
    sim_config,
    start_daemon,
    stop,
    submitted_batches,
    wait_for,
    wait_for_event,
)
from tests.engine import (
    add_contacts,
    create_campaign,
    dispatcher,
    engine_settings,
    run_engine,
    states,
    uk_numbers,
)
from tests.helpers import db_clock_offset, peak_overlap, worst_window

MakeSim = Callable[[SimulatorConfig], Awaitable[Simulator]]


GUARD = DispatcherSettings().pacing_guard_seconds  # the daemons run with the default


async def granted_times(pool: asyncpg.Pool, key: str) -> list[float]:
    """One time per call granted from budget `key`, to the microsecond (database clock)."""
    rows = await pool.fetch(
        "SELECT extract(epoch FROM granted_at)::float8 AS at, calls FROM rate_grants"
        " WHERE key = $1",
        key,
    )
    return [r["at"] for r in rows for _ in range(r["calls"])]


@pytest.mark.slow
async def test_three_daemons_share_the_account_cps_budget(
    db_pool: asyncpg.Pool, db_dsn: str, make_simulator: MakeSim, tmp_path: Path
) -> None:
    budget = 20
    sim = await make_simulator(sim_config())
    cid = await create_campaign(db_pool, batch_size=5, calls_per_second=1000)
    await add_contacts(db_pool, cid, uk_numbers(2000))
    env = daemon_env(sim, db_dsn, CAMPAIGN_ACULAB__CALLS_PER_SECOND=str(budget))
    logs = [tmp_path / f"d{i}.log" for i in range(3)]
    procs = [await start_daemon(env, log) for log in logs]
    try:
        for proc, log in zip(procs, logs, strict=True):
            await wait_for_event(proc, log, "listener_started")

        async def enough() -> bool:
            # Eight seconds' worth of the budget, and each daemon has sent some of it.
            return sim.started_count() >= 8 * budget and all(map(submitted_batches, logs))

        await wait_for(enough, 60, "eight seconds of calls from all three daemons")
    finally:
        codes = [(await stop(p))[0] for p in procs]
    assert codes == [0, 0, 0]

    # Each daemon sent its share: no batch by two of them, and none by nobody.
    by_daemon = [submitted_batches(log) for log in logs]
    assert all(by_daemon), f"batches per daemon: {[len(b) for b in by_daemon]}"
    assert sum(map(len, by_daemon)) == len(set().union(*by_daemon))
    submitted = await db_pool.fetch("SELECT id FROM batches WHERE state = 'submitted'")
    assert set().union(*by_daemon) == {r["id"] for r in submitted}

    # The promise, from what the daemons granted themselves through PostgreSQL: at
    # most `budget` calls in any window of one second plus the guard, slid exactly.
    # The budget binds (2,000 contacts wait), so the worst window holds all of it.
    grants = await granted_times(db_pool, "account")
    assert worst_window(grants, 1.0 + GUARD) == budget
    # What reached "Aculab", slid over every one-second window of the simulator's
    # arrival times once the daemons were sending (each daemon's first request also
    # opens its connection, and arrives a little later than granted).
    arrivals = sorted(c.submitted_at for c in sim.calls)
    steady = [t for t in arrivals if t >= arrivals[0] + 1.0]
    assert worst_window(steady, 1.0) <= budget
    print(
        f"pacing: 3 daemons, budget {budget}/s, {len(arrivals)} calls; worst window: "
        f"{worst_window(steady)} in 1 s at the simulator, "
        f"{worst_window(grants, 1.0 + GUARD)} in {1.0 + GUARD:g} s granted"
    )


async def test_concurrency_cap_is_never_exceeded(
    db_pool: asyncpg.Pool, make_simulator: MakeSim
) -> None:
    # Calls end within 0.4 s at Aculab, but their first poll comes 1.2 s after the start:
    # most of the time a call counts as open it is only because its outcome is not
    # known yet, which counts as running all the same.
    sim = await make_simulator(
        SimulatorConfig(
            cause_weights={"completed": 1.0},
            answered_seconds=(0.2, 0.3),
            calls_per_second=100_000,
        )
    )
    settings = engine_settings(sim, poller={"first_poll_delay": 1.2, "interval": 0.5})
    cid = await create_campaign(db_pool, batch_size=10, max_concurrent_calls=7)
    await add_contacts(db_pool, cid, uk_numbers(28))

    async def done() -> bool:
        return await states(db_pool, cid) == {"completed": 28}

    await run_engine(db_pool, settings, done, timeout=60)

    # Each call is open from the moment it reached Aculab until its outcome was
    # recorded: swept exactly, never more than the cap at once, and the cap reached.
    offset = await db_clock_offset(db_pool)
    calls = await db_pool.fetch(
        "SELECT reference, extract(epoch FROM finished_at)::float8 AS finished FROM calls"
    )
    assert len(calls) == 28
    open_ = [(sim.call(c["reference"]).submitted_at, c["finished"] + offset) for c in calls]
    assert peak_overlap(open_) == 7


async def test_two_daemons_claiming_at_once_share_one_concurrency_cap(
    db_pool: asyncpg.Pool, make_simulator: MakeSim
) -> None:
    sim = await make_simulator(sim_config())
    settings = engine_settings(sim)
    cid = await create_campaign(db_pool, batch_size=5, max_concurrent_calls=5)
    await add_contacts(db_pool, cid, uk_numbers(20))
    async with db_pool.acquire() as conn:
        [campaign] = await q.active_campaigns(conn)
    keys = ["account", f"campaign:{cid}"]
    await db_pool.execute(q.LOCK_BUDGETS, keys)
    # Both claims get as far as the budget lock while another transaction holds
    # it, then go through one after the other.
    async with db_pool.acquire() as blocker:
        tr = blocker.transaction()
        await tr.start()
        await blocker.execute(q.LOCK_BUDGETS, keys)
        async with (
            dispatcher(db_pool, settings, owner="a") as a,
            dispatcher(db_pool, settings, owner="b") as b,
        ):
            both = asyncio.gather(a.claim(campaign, batches=4), b.claim(campaign, batches=4))
            await asyncio.sleep(0.5)
            await tr.rollback()
            results = await both
    claimed = [len(batch.contact_ids) for batches, _ in results for batch in batches]
    assert sum(claimed) == 5
    assert await states(db_pool, cid) == {"dispatching": 5, "pending": 15}


async def test_reused_open_call_count_never_admits_beyond_the_cap(
    db_pool: asyncpg.Pool, make_simulator: MakeSim
) -> None:
    # Calls last longer than the run: every claim after the first must see the
    # calls granted since the last exact count, from this daemon or another.
    sim = await make_simulator(
        SimulatorConfig(cause_weights={"completed": 1.0}, answered_seconds=(30, 40))
    )
    settings = engine_settings(sim)
    cid = await create_campaign(db_pool, batch_size=3, max_concurrent_calls=10)
    await add_contacts(db_pool, cid, uk_numbers(60))
    async with db_pool.acquire() as conn:
        [campaign] = await q.active_campaigns(conn)
    async with (
        dispatcher(db_pool, settings, owner="a") as a,
        dispatcher(db_pool, settings, owner="b") as b,
    ):
        for d in (a, b, a, b, a, a, b, b):
            await d.claim(campaign)
    assert await states(db_pool, cid) == {"dispatching": 10, "pending": 50}


class FakeClock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


async def test_slow_campaign_keeps_its_cap_once_its_grants_are_old(
    db_pool: asyncpg.Pool, make_simulator: MakeSim
) -> None:
    # One call per 200 s and a cap of 1: 130 s later the first call is still open,
    # its grant is older than a typical window, and the heartbeat has pruned grants.
    sim = await make_simulator(sim_config())
    settings = engine_settings(sim)
    cid = await create_campaign(
        db_pool, batch_size=1, max_concurrent_calls=1, calls_per_second=0.005
    )
    await add_contacts(db_pool, cid, uk_numbers(5))
    clock = FakeClock()
    async with AculabClient(settings.aculab, settings.http) as client:
        d = Dispatcher(db_pool, client, settings, "a", rng=random.Random(0), clock=clock)
        async with db_pool.acquire() as conn:
            [campaign] = await q.active_campaigns(conn)
        claimed, _ = await d.claim(campaign)
        assert len(claimed) == 1
        await db_pool.execute("UPDATE rate_grants SET granted_at = granted_at - interval '130 s'")
        clock.t += 130
        async with db_pool.acquire() as conn:
            await q.forget_old_grants(conn, GRANT_HISTORY_SECONDS)
        claimed, _ = await d.claim(campaign)
    assert claimed == []
    assert await states(db_pool, cid) == {"dispatching": 1, "pending": 4}


async def test_raising_the_cap_does_not_reuse_a_count_stopped_at_the_old_one(
    db_pool: asyncpg.Pool, make_simulator: MakeSim
) -> None:
    sim = await make_simulator(sim_config())
    settings = engine_settings(sim)
    cid = await create_campaign(db_pool, batch_size=5, max_concurrent_calls=20)
    await add_contacts(db_pool, cid, uk_numbers(60))
    clock = FakeClock()
    async with AculabClient(settings.aculab, settings.http) as client:
        d = Dispatcher(db_pool, client, settings, "a", rng=random.Random(0), clock=clock)
        async with db_pool.acquire() as conn:
            [campaign] = await q.active_campaigns(conn)
        claimed, _ = await d.claim(campaign, batches=4)
        assert sum(len(b.contact_ids) for b in claimed) == 20
        # Lowered to 5: the count stops at 5 and finds no room ...
        await db_pool.execute("UPDATE campaigns SET max_concurrent_calls = 5 WHERE id = $1", cid)
        clock.t += 2.0
        await db_pool.execute("UPDATE rate_grants SET granted_at = granted_at - interval '2 s'")
        assert (await d.claim(campaign, batches=4))[0] == []
        # ... raised to 15 half a second later: 20 are still open.
        await db_pool.execute("UPDATE campaigns SET max_concurrent_calls = 15 WHERE id = $1", cid)
        clock.t += 0.5
        assert (await d.claim(campaign))[0] == []
    assert await states(db_pool, cid) == {"dispatching": 20, "pending": 40}


@pytest.mark.slow
async def test_pause_stops_every_daemon_within_two_seconds(
    db_pool: asyncpg.Pool, db_dsn: str, make_simulator: MakeSim, tmp_path: Path
) -> None:
    sim = await make_simulator(sim_config())
    # Ten seconds of calls at 100/s: the pause comes once all three daemons send.
    contacts = 1000
    cid = await create_campaign(db_pool, batch_size=5, calls_per_second=100)
    await add_contacts(db_pool, cid, uk_numbers(contacts))
    env = daemon_env(sim, db_dsn, CAMPAIGN_DISPATCHER__POLL_INTERVAL="5")
    logs = [tmp_path / f"d{i}.log" for i in range(3)]
    procs = [await start_daemon(env, log) for log in logs]
    try:
        # All three are claiming when the pause comes.
        async def all_sending() -> bool:
            return all(map(submitted_batches, logs))

        await wait_for(all_sending, 60, "all three daemons to send")
        async with db_pool.acquire() as conn:
            async with conn.transaction():
                await conn.execute("UPDATE campaigns SET state = 'paused' WHERE id = $1", cid)
            # The commit has returned: every claim from now on sees the pause.
            committed = await conn.fetchval("SELECT clock_timestamp()")
        # A claim in progress when the pause came finishes (the pause waited for it)
        # and its batches are still sent; give every daemon time to claim again.
        await asyncio.sleep(2)
        sent_after_pause = sim.started_count()
        await asyncio.sleep(1)
        assert sim.started_count() == sent_after_pause

        # No claim began after the pause committed, and none recorded a grant then.
        late_batches = await db_pool.fetchval(
            "SELECT count(*) FROM batches WHERE created_at >= $1", committed
        )
        late_grants = await db_pool.fetchval(
            "SELECT count(*) FROM rate_grants WHERE granted_at >= $1", committed
        )
        assert (late_batches, late_grants) == (0, 0)
        last = max(c.submitted_at for c in sim.calls)
        offset = await db_clock_offset(db_pool)
        print(f"pause: last submission {(last - committed.timestamp() - offset) * 1000:.0f} ms")

        # Resume: the rest is dialed, nothing twice.
        await db_pool.execute("UPDATE campaigns SET state = 'active' WHERE id = $1", cid)

        async def all_dialing() -> bool:
            return (await states(db_pool, cid)).get("dialing", 0) == contacts

        await wait_for(all_dialing, 60, "every contact to be dialing after the resume")
    finally:
        codes = [(await stop(p))[0] for p in procs]
    assert codes == [0, 0, 0]
    assert sim.started_count() == contacts
    assert all(sim.calls_to(n) == 1 for n in uk_numbers(contacts))


def queued_at(sim: Simulator, moment: float) -> int:
    """Calls Aculab held in its queue at `moment`: accepted, not yet started."""
    return sum(1 for c in sim.calls if c.submitted_at <= moment < c.start_at)


async def test_deep_aculab_queue_holds_submissions_back(
    db_pool: asyncpg.Pool, make_simulator: MakeSim
) -> None:
    # The service starts 1 call/s at Aculab although the account allows 5/s.
    sim = await make_simulator(SimulatorConfig(calls_per_second=1))
    max_queue_seconds, account_cps, batch = 1.0, 5, 5
    settings = engine_settings(
        sim,
        aculab={"calls_per_second": account_cps},
        dispatcher={"max_queue_seconds": max_queue_seconds, "queue_check_interval": 0.1},
    )
    cid = await create_campaign(db_pool, batch_size=batch)
    await add_contacts(db_pool, cid, uk_numbers(40))

    async def three_batches() -> bool:
        return sim.started_count() >= 3 * batch

    try:
        await run_engine(db_pool, settings, three_batches, timeout=20)
    except TimeoutError:
        pytest.fail(f"{sim.started_count()} calls sent in 20 s: the engine stopped sending")

    # A claim waits while the queue is deeper than max_queue_seconds of the account's
    # rate, so right after any request arrived Aculab held at most that plus one batch
    # (pacing alone, 5/s against 1/s, would have queued 12 by the third).
    arrivals = sorted({c.submitted_at for c in sim.calls})
    deepest = max(queued_at(sim, t) for t in arrivals)
    assert deepest <= max_queue_seconds * account_cps + batch
    # The queue, not pacing (one batch per 1.02 s), held a batch back.
    gaps = [b - a for a, b in itertools.pairwise(arrivals)]
    assert max(gaps) > 1.5, gaps


def test_each_budget_counts_only_the_grants_inside_its_own_window() -> None:
    # A campaign at 0.001 calls/s reads grants over 1,000 s; the account's calls
    # of 900 s ago must not count against the account's one-second budget.
    budgets = {
        "account": Budget.of(20, 0.02),
        "campaign:1": Budget.of(0.001, 0.02),
    }
    grants = {
        "account": [q.Grant(age=900.0 - i, calls=1) for i in range(900)],
        "campaign:1": [],
    }
    available, _ = pacing_room(grants, budgets, need=1)
    assert available == 1
    # Within its own second, the account's grants do count.
    grants["account"].append(q.Grant(age=0.5, calls=20))
    assert pacing_room(grants, budgets, need=1)[0] == 0
