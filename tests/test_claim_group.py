"""One claim transaction serves several campaigns (issue 11), each as if claimed alone.

Many due campaigns with little to send each share one transaction's locks, reads
and commit; the account budget is shared across them in fair order, and each
campaign's own budget, concurrency cap, state, do-not-call list and duplicates
apply to it as they do to a claim of one campaign.
"""

from __future__ import annotations

import asyncio

import asyncpg

from campaign.db import queries as q
from campaign.dispatch import Wanted
from campaign.simulator import Simulator
from tests.engine import (
    add_contacts,
    create_campaign,
    dispatcher,
    engine_settings,
    running_dispatcher,
    states,
    uk_numbers,
)
from tests.helpers import wait_until


async def _campaign_rows(pool: asyncpg.Pool) -> dict[int, q.CampaignRow]:
    async with pool.acquire() as conn:
        return {c.id: c for c in await q.active_campaigns(conn)}


async def _granted(pool: asyncpg.Pool, key: str) -> int:
    n: int = await pool.fetchval(
        "SELECT coalesce(sum(calls), 0)::int FROM rate_grants WHERE key = $1", key
    )
    return n


async def test_one_claim_transaction_serves_several_small_campaigns(
    db_pool: asyncpg.Pool, simulator: Simulator
) -> None:
    ids = [await create_campaign(db_pool, f"small{i}") for i in range(6)]
    for n, cid in enumerate(ids):
        await add_contacts(db_pool, cid, uk_numbers(3, start=10 * n))
    settings = engine_settings(simulator, dispatcher={"max_in_flight_batches": 8})

    async with running_dispatcher(db_pool, settings) as d:
        await wait_until(lambda: simulator.started_count() == 18, 10, "every contact started")

    # The service is not known good at first: one campaign's request goes alone, the
    # other five then share one transaction (a look racing a claim may add one).
    assert d.campaign_claims >= 6
    assert d.claims <= 3, (d.claims, d.campaign_claims)
    for cid in ids:
        assert await states(db_pool, cid) == {"dialing": 3}
    sizes = await db_pool.fetch("SELECT campaign_id, cardinality(contact_ids) AS n FROM batches")
    assert sorted((r["campaign_id"], r["n"]) for r in sizes) == [(cid, 3) for cid in ids]


async def test_a_group_claim_is_one_transaction_with_a_batch_per_campaign(
    db_pool: asyncpg.Pool, simulator: Simulator
) -> None:
    ids = [await create_campaign(db_pool, f"c{i}", batch_size=10) for i in range(4)]
    for n, cid in enumerate(ids):
        await add_contacts(db_pool, cid, uk_numbers(5, start=10 * n))
    rows = await _campaign_rows(db_pool)
    async with dispatcher(db_pool, engine_settings(simulator)) as d:
        results = await d.claim_group([Wanted(rows[cid]) for cid in ids])
    assert d.claims == 1
    assert [[len(b.contact_ids) for b in batches] for batches, _ in results] == [[5]] * 4
    assert [b.campaign_id for batches, _ in results for b in batches] == ids
    for cid in ids:
        assert await states(db_pool, cid) == {"dispatching": 5}
        assert await _granted(db_pool, f"campaign:{cid}") == 5
    assert await _granted(db_pool, "account") == 20


async def test_the_account_budget_is_not_exceeded_across_a_group(
    db_pool: asyncpg.Pool, simulator: Simulator
) -> None:
    # 10 calls per second for the account; five campaigns of one full batch of 4.
    settings = engine_settings(simulator, aculab={"calls_per_second": 10})
    ids = [await create_campaign(db_pool, f"c{i}", batch_size=4) for i in range(5)]
    for n, cid in enumerate(ids):
        await add_contacts(db_pool, cid, uk_numbers(4, start=10 * n))
    rows = await _campaign_rows(db_pool)
    # Fair order starts at the third campaign: the budget goes to those first in it.
    order = ids[2:] + ids[:2]
    async with dispatcher(db_pool, settings) as d:
        results = await d.claim_group([Wanted(rows[cid]) for cid in order])
        again = await d.claim_group([Wanted(rows[cid]) for cid in order])

    # Two full batches fit in 10; the third would need 4 of the 2 left: it waits, as
    # a claim of that campaign alone would.
    assert [sum(len(b.contact_ids) for b in batches) for batches, _ in results] == [4, 4, 0, 0, 0]
    assert all(batches == [] for batches, _ in again)
    assert await _granted(db_pool, "account") == 8
    for cid in order[:2]:
        assert await states(db_pool, cid) == {"dispatching": 4}
    for cid in order[2:]:
        assert await states(db_pool, cid) == {"pending": 4}


async def test_each_campaigns_cap_and_budget_hold_within_a_group(
    db_pool: asyncpg.Pool, simulator: Simulator
) -> None:
    capped = await create_campaign(db_pool, "capped", batch_size=5, max_concurrent_calls=2)
    slow = await create_campaign(db_pool, "slow", batch_size=5, calls_per_second=3)
    free = await create_campaign(db_pool, "free", batch_size=5)
    for n, cid in enumerate([capped, slow, free]):
        await add_contacts(db_pool, cid, uk_numbers(10, start=100 * n))
    rows = await _campaign_rows(db_pool)
    async with dispatcher(db_pool, engine_settings(simulator)) as d:
        await d.claim_group([Wanted(rows[cid], batches=2) for cid in (capped, slow, free)])
        # Moments later: the cap is full, the slow budget is spent for its second.
        await d.claim_group([Wanted(rows[cid], batches=2) for cid in (capped, slow)])
    assert d.claims == 2
    assert await states(db_pool, capped) == {"dispatching": 2, "pending": 8}
    assert await states(db_pool, slow) == {"dispatching": 3, "pending": 7}
    assert await states(db_pool, free) == {"dispatching": 10}


async def test_a_paused_campaign_in_a_group_gets_nothing(
    db_pool: asyncpg.Pool, simulator: Simulator
) -> None:
    ids = [await create_campaign(db_pool, f"c{i}") for i in range(4)]
    for n, cid in enumerate(ids):
        await add_contacts(db_pool, cid, uk_numbers(3, start=10 * n))
    rows = await _campaign_rows(db_pool)  # read while all four were active
    await db_pool.execute("UPDATE campaigns SET state = 'paused' WHERE id = $1", ids[1])
    async with db_pool.acquire() as pauser, dispatcher(db_pool, engine_settings(simulator)) as d:
        # The fourth is paused while the claim waits for its lock: the claim sees
        # the pause once it commits.
        tr = pauser.transaction()
        await tr.start()
        await pauser.execute("UPDATE campaigns SET state = 'paused' WHERE id = $1", ids[3])
        claiming = asyncio.create_task(d.claim_group([Wanted(rows[cid]) for cid in ids]))
        await asyncio.sleep(0.3)
        assert not claiming.done()
        await tr.commit()
        results = await claiming
    assert [len(batches) for batches, _ in results] == [1, 0, 1, 0]
    assert [did for _, did in results] == [True, False, True, False]
    for cid, expected in zip(
        ids, ["dispatching", "pending", "dispatching", "pending"], strict=True
    ):
        assert await states(db_pool, cid) == {expected: 3}
    assert (
        await db_pool.fetchval(
            "SELECT count(*) FROM rate_grants WHERE key = ANY($1::text[])",
            [f"campaign:{ids[1]}", f"campaign:{ids[3]}"],
        )
        == 0
    )


async def test_do_not_call_and_duplicates_apply_per_campaign_within_a_group(
    db_pool: asyncpg.Pool, simulator: Simulator
) -> None:
    a = await create_campaign(db_pool, "a")
    b = await create_campaign(db_pool, "b")
    everyone, only_a, shared, earlier, twice = uk_numbers(5)
    await db_pool.execute(
        "INSERT INTO suppressions (destination, campaign_id, reason) VALUES"
        " ($1, NULL, 'everyone'), ($2, $3, 'campaign a only')",
        everyone.replace(" ", "").removeprefix("+"),
        only_a.replace(" ", "").removeprefix("+"),
        a,
    )
    settings = engine_settings(simulator)
    async with dispatcher(db_pool, settings) as d:
        # `earlier` already went out for campaign a: a second contact of a with it is
        # a duplicate, one of b is not.
        [first] = await add_contacts(db_pool, a, [earlier])
        rows = await _campaign_rows(db_pool)
        await d.claim(rows[a])
        a_ids = await add_contacts(db_pool, a, [everyone, only_a, shared, earlier])
        b_ids = await add_contacts(db_pool, b, [everyone, only_a, shared, earlier, twice, twice])
        results = await d.claim_group([Wanted(rows[a]), Wanted(rows[b])])
    assert d.claims == 2
    found = {
        r["id"]: r["state"]
        for r in await db_pool.fetch("SELECT id, state FROM contacts WHERE id <> $1", first)
    }
    assert [found[i] for i in a_ids] == ["suppressed", "suppressed", "dispatching", "duplicate"]
    assert [found[i] for i in b_ids] == [
        "suppressed",
        "dispatching",
        "dispatching",
        "dispatching",
        "dispatching",
        "duplicate",
    ]
    assert [sum(len(x.contact_ids) for x in batches) for batches, _ in results] == [1, 4]
