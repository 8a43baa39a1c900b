"""Pacing shared by every daemon, the concurrency cap, and pause taking effect."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import asyncpg
import pytest

from campaign.aculab import AculabClient
from campaign.daemon import GRANT_HISTORY_SECONDS
from campaign.db import queries as q
from campaign.dispatch import Budget, Dispatcher, pacing_room
from campaign.simulator import Simulator, SimulatorConfig
from tests.daemons import daemon_env, sim_config, start_daemon, stop
from tests.engine import (
    add_contacts,
    create_campaign,
    dispatcher,
    engine_settings,
    run_engine,
    states,
    uk_numbers,
)

MakeSim = Callable[[SimulatorConfig], Awaitable[Simulator]]


def worst_window(times: list[float], seconds: float = 1.0) -> int:
    """The most submissions inside any half-open window of `seconds`."""
    times = sorted(times)
    worst, lo = 0, 0
    for hi, t in enumerate(times):
        while times[lo] <= t - seconds:
            lo += 1
        worst = max(worst, hi - lo + 1)
    return worst


@pytest.mark.slow
async def test_three_daemons_share_the_account_cps_budget(
    db_pool: asyncpg.Pool, db_dsn: str, make_simulator: MakeSim, tmp_path: Path
) -> None:
    budget = 20
    sim = await make_simulator(sim_config())
    cid = await create_campaign(db_pool, batch_size=5, calls_per_second=1000)
    await add_contacts(db_pool, cid, uk_numbers(2000))
    env = daemon_env(sim, db_dsn, CAMPAIGN_ACULAB__CALLS_PER_SECOND=str(budget))
    procs = [await start_daemon(env, tmp_path / f"d{i}.log") for i in range(3)]
    await asyncio.sleep(14)
    for p in procs:
        await stop(p)
    # What the daemons granted themselves through PostgreSQL, to the microsecond.
    grants: list[float] = []
    for r in await db_pool.fetch(
        "SELECT extract(epoch FROM granted_at)::float8 AS at, calls FROM rate_grants"
        " WHERE key = 'account'"
    ):
        grants.extend([r["at"]] * r["calls"])
    # What reached "Aculab": the steady state, after the first second (daemons
    # opening their first connections send one batch later than granted).
    arrivals = sorted(c.submitted_at for c in sim.calls)
    begin = arrivals[0] + 1.0
    steady = [t for t in arrivals if begin <= t < begin + 10.0]
    # From the first arrival of the steady state to the first one after it: whole
    # pacing windows, so the batch boundaries do not skew the figure.
    first = steady[0]
    end = next(t for t in arrivals if t >= begin + 10.0)
    rate = sum(1 for t in arrivals if first <= t < end) / (end - first)
    print(
        f"pacing: 3 daemons, budget {budget}/s, achieved {rate:.2f}/s, worst 1-s window "
        f"{worst_window(steady)} at the simulator, {worst_window(grants)} granted"
    )
    assert abs(rate - budget) / budget <= 0.05
    assert worst_window(grants) <= budget
    assert worst_window(steady) <= budget
    owners = await db_pool.fetchval("SELECT count(*) FROM batches")
    assert owners > 3


async def test_concurrency_cap_is_never_exceeded(
    db_pool: asyncpg.Pool, make_simulator: MakeSim
) -> None:
    sim = await make_simulator(
        SimulatorConfig(cause_weights={"completed": 1.0}, answered_seconds=(0.3, 0.6))
    )
    settings = engine_settings(sim)
    cid = await create_campaign(db_pool, batch_size=10, max_concurrent_calls=7)
    await add_contacts(db_pool, cid, uk_numbers(40))
    peak = 0

    async def done() -> bool:
        nonlocal peak
        now = time.time()
        running = sum(1 for c in sim.calls if c.submitted_at <= now < c.finish_at)
        peak = max(peak, running)
        return await states(db_pool, cid) == {"completed": 40}

    await run_engine(db_pool, settings, done, timeout=60)
    batches = await db_pool.fetch("SELECT cardinality(contact_ids) AS n FROM batches")
    assert max(b["n"] for b in batches) <= 7
    assert 0 < peak <= 7


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
    cid = await create_campaign(db_pool, batch_size=5, calls_per_second=100)
    await add_contacts(db_pool, cid, uk_numbers(3000))
    env = daemon_env(sim, db_dsn, CAMPAIGN_DISPATCHER__POLL_INTERVAL="5")
    procs = [await start_daemon(env, tmp_path / f"d{i}.log") for i in range(3)]
    while sim.started_count() < 100:
        await asyncio.sleep(0.1)
    await db_pool.execute("UPDATE campaigns SET state = 'paused' WHERE id = $1", cid)
    paused_at = time.time()
    await asyncio.sleep(3)
    last = max(c.submitted_at for c in sim.calls)
    latency = max(0.0, last - paused_at)
    print(f"pause latency: {latency * 1000:.0f} ms")
    assert latency <= 2.0
    before = sim.started_count()
    await asyncio.sleep(1)
    assert sim.started_count() == before
    # Resume: the rest is dialed, nothing twice.
    await db_pool.execute("UPDATE campaigns SET state = 'active' WHERE id = $1", cid)

    async def all_dialing() -> bool:
        return (await states(db_pool, cid)).get("dialing", 0) == 3000

    deadline = time.monotonic() + 60
    while not await all_dialing():
        assert time.monotonic() < deadline
        await asyncio.sleep(0.2)
    for p in procs:
        await stop(p)
    assert sim.started_count() == 3000
    assert all(sim.calls_to(n) == 1 for n in uk_numbers(3000))


async def test_deep_aculab_queue_holds_submissions_back(
    db_pool: asyncpg.Pool, make_simulator: MakeSim
) -> None:
    # The service starts 1 call/s at Aculab although the account allows 5/s.
    sim = await make_simulator(SimulatorConfig(calls_per_second=1))
    settings = engine_settings(
        sim,
        aculab={"calls_per_second": 5},
        dispatcher={"max_queue_seconds": 1.0, "queue_check_interval": 0.1},
    )
    cid = await create_campaign(db_pool, batch_size=5)
    await add_contacts(db_pool, cid, uk_numbers(40))

    async def a_while() -> bool:
        await asyncio.sleep(4)
        return True

    await run_engine(db_pool, settings, a_while, timeout=30)
    # Without the check 5/s for 4 s would be ~20 submitted, ~16 of them queued.
    assert sim.queue_length("MyOutboundService") <= 5 + 5
    assert sim.started_count() <= 15


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
