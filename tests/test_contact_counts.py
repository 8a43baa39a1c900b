"""Contacts per campaign and state kept by migration 0009's triggers, and the progress
lines that read them: the kept counts always equal a fresh count(*) ... GROUP BY."""

from __future__ import annotations

import asyncio
import random
import shutil
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from structlog.testing import capture_logs

from campaign.daemon import Progress
from campaign.db import queries as q
from campaign.db.migrate import MIGRATIONS_DIR, migrate
from campaign.db.pool import connect
from campaign.metrics import new_metrics
from campaign.simulator import Simulator
from campaign.vocabulary import CONTACT_STATES
from tests.engine import create_campaign, dispatcher, engine_settings, uk_numbers

HYPOTHESIS = settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

STATES = st.sampled_from(CONTACT_STATES)
CAMPAIGNS = 3


async def fresh_counts(conn: Any, campaign_ids: list[int]) -> dict[int, dict[str, int]]:
    rows = await conn.fetch(
        "SELECT campaign_id, state, count(*) AS n FROM contacts"
        " WHERE campaign_id = ANY($1::bigint[]) GROUP BY campaign_id, state",
        campaign_ids,
    )
    out: dict[int, dict[str, int]] = {cid: {} for cid in campaign_ids}
    for r in rows:
        out[r["campaign_id"]][r["state"]] = r["n"]
    return out


async def assert_exact(conn: Any, campaign_ids: list[int]) -> None:
    assert await q.state_counts(conn, campaign_ids) == await fresh_counts(conn, campaign_ids)


# One change to contacts, as SQL and its arguments; `k` picks the campaign, `m`/`r`
# a subset of contacts by id (id % m = r), so that the same draw works whatever ids exist.
def insert_op() -> st.SearchStrategy[tuple[str, str, tuple[Any, ...]]]:
    return st.builds(
        lambda k, states: (
            "insert",
            "INSERT INTO contacts (campaign_id, destination, state)"
            " SELECT $1, '441908' || (200000 + i), s"
            " FROM unnest($2::text[]) WITH ORDINALITY AS t(s, i)",
            (k, states),
        ),
        st.integers(0, CAMPAIGNS - 1),
        st.lists(STATES, min_size=0, max_size=30),
    )


def subset() -> st.SearchStrategy[tuple[int, int]]:
    return st.integers(1, 5).flatmap(lambda m: st.tuples(st.just(m), st.integers(0, m - 1)))


OPS = st.one_of(
    insert_op(),
    st.builds(
        lambda mr, state: (
            "set state",
            "UPDATE contacts SET state = $3 WHERE id % $1 = $2",
            (*mr, state),
        ),
        subset(),
        STATES,
    ),
    st.builds(
        lambda mr: (
            "rotate states",
            # Each row to another state, depending on the row: many groups at once.
            "UPDATE contacts"
            " SET state = ($3::text[])[1 + (id + length(state)) % cardinality($3::text[])]"
            " WHERE id % $1 = $2",
            (*mr, list(CONTACT_STATES)),
        ),
        subset(),
    ),
    st.builds(
        lambda mr, k: (
            "move campaign",
            "UPDATE contacts SET campaign_id = $3 WHERE id % $1 = $2",
            (*mr, k),
        ),
        subset(),
        st.integers(0, CAMPAIGNS - 1),
    ),
    st.builds(
        lambda mr: (
            "no state change",
            "UPDATE contacts SET next_attempt_at = now() + interval '1 hour' WHERE id % $1 = $2",
            mr,
        ),
        subset(),
    ),
    st.builds(
        lambda mr: ("delete", "DELETE FROM contacts WHERE id % $1 = $2", mr),
        subset(),
    ),
    st.just(("truncate", "TRUNCATE contacts CASCADE", ())),
    st.just(("fold", "", ())),
)

STEPS = st.lists(st.tuples(OPS, st.booleans()), min_size=1, max_size=12)


@HYPOTHESIS
@given(steps=STEPS)
async def test_kept_counts_equal_a_fresh_count_after_any_mix_of_changes(
    db_pool: asyncpg.Pool, steps: list[tuple[tuple[str, str, tuple[Any, ...]], bool]]
) -> None:
    async with db_pool.acquire() as conn:
        ids = sorted(
            await conn.fetchval("SELECT array_agg(id) FROM campaigns WHERE name LIKE 'counted-%'")
            or [await create_campaign(db_pool, f"counted-{k}") for k in range(CAMPAIGNS)]
        )
        for (kind, sql, args), rolled_back in steps:
            if kind in ("insert", "move campaign"):
                k = args[0] if kind == "insert" else args[2]
                args = (ids[k], *args[1:]) if kind == "insert" else (*args[:2], ids[k])
            if kind == "fold":
                await q.fold_contact_counts(conn)
            elif rolled_back:
                # Changes that never commit leave no trace in the counts either.
                tr = conn.transaction()
                await tr.start()
                await conn.execute(sql, *args)
                await tr.rollback()
            else:
                await conn.execute(sql, *args)
            await assert_exact(conn, ids)


async def test_several_statements_in_one_transaction_are_counted_once_each(
    db_pool: asyncpg.Pool,
) -> None:
    cid = await create_campaign(db_pool, "one-transaction")
    async with db_pool.acquire() as conn:
        async with conn.transaction():
            await conn.execute(
                "INSERT INTO contacts (campaign_id, destination)"
                " SELECT $1, '441908' || (200000 + i) FROM generate_series(1, 10) AS i",
                cid,
            )
            await conn.execute(
                "UPDATE contacts SET state = 'dispatching' WHERE campaign_id = $1 AND id % 2 = 0",
                cid,
            )
            await conn.execute(
                "UPDATE contacts SET state = 'dialing' WHERE state = 'dispatching'"
                " AND campaign_id = $1",
                cid,
            )
            await conn.execute("DELETE FROM contacts WHERE campaign_id = $1 AND id % 5 = 0", cid)
            await assert_exact(conn, [cid])
        await assert_exact(conn, [cid])
        assert sum((await q.state_counts(conn, [cid]))[cid].values()) == 8
        # A campaign asked for twice is counted once.
        assert await q.state_counts(conn, [cid, cid]) == await q.state_counts(conn, [cid])


async def test_a_fold_leaves_open_transactions_alone_and_concurrent_folds_move_each_delta_once(
    db_pool: asyncpg.Pool, db_dsn: str
) -> None:
    cid = await create_campaign(db_pool, "folded")
    await db_pool.execute(
        "INSERT INTO contacts (campaign_id, destination)"
        " SELECT $1, '441908' || (200000 + i) FROM generate_series(1, 50) AS i",
        cid,
    )
    writer, folder_a, folder_b = await asyncio.gather(*(connect(db_dsn) for _ in range(3)))
    try:
        open_change = writer.transaction()
        await open_change.start()
        await writer.execute(
            "UPDATE contacts SET state = 'dialing' WHERE campaign_id = $1 AND id % 2 = 0", cid
        )
        # Folding while that change is open: its deltas are not visible, so stay.
        fold_a = folder_a.transaction()
        await fold_a.start()
        await q.fold_contact_counts(folder_a)
        # A second fold at the same time waits for the first, then moves nothing twice.
        second = asyncio.create_task(q.fold_contact_counts(folder_b))
        await asyncio.sleep(0.2)
        await open_change.commit()
        await fold_a.commit()
        await asyncio.wait_for(second, 10)
        await assert_exact(folder_a, [cid])
        await q.fold_contact_counts(folder_a)
        assert await folder_a.fetchval("SELECT count(*) FROM contact_count_deltas") == 0
        assert (await q.state_counts(folder_a, [cid]))[cid] == {"pending": 25, "dialing": 25}
    finally:
        await asyncio.gather(writer.close(), folder_a.close(), folder_b.close())


async def test_the_migration_counts_the_contacts_that_were_already_there(
    empty_dsn: str, tmp_path: Path
) -> None:
    before = tmp_path / "before"
    before.mkdir()
    for path in MIGRATIONS_DIR.glob("*.sql"):
        if path.name < "0009":
            shutil.copy(path, before / path.name)
    conn = await connect(empty_dsn)
    try:
        await migrate(conn, before)
        ids = [
            await conn.fetchval(
                "INSERT INTO campaigns (name, service_name) VALUES ($1, 'S') RETURNING id", name
            )
            for name in ("old-a", "old-b")
        ]
        rng = random.Random(9)
        await conn.executemany(
            "INSERT INTO contacts (campaign_id, destination, state) VALUES ($1, $2, $3)",
            [
                (rng.choice(ids), f"441908{200000 + i}", rng.choice(CONTACT_STATES))
                for i in range(300)
            ],
        )
        await migrate(conn)
        await assert_exact(conn, ids)
        assert await conn.fetchval("SELECT count(*) FROM contact_count_deltas") == 0
    finally:
        await conn.close()


async def test_progress_writes_a_line_only_for_campaigns_that_moved(
    db_pool: asyncpg.Pool, simulator: Simulator
) -> None:
    moving = await create_campaign(db_pool, "moving")
    still = await create_campaign(db_pool, "still")
    for cid, start in ((moving, 0), (still, 100)):
        await db_pool.execute(
            "INSERT INTO contacts (campaign_id, destination)"
            " SELECT $1, d FROM unnest($2::text[]) AS d",
            cid,
            uk_numbers(4, start=start),
        )
    async with dispatcher(db_pool, engine_settings(simulator)) as d:
        progress = Progress(db_pool, d, interval=1.0)

        def lines(logs: list[dict[str, Any]]) -> dict[int, dict[str, Any]]:
            return {e["campaign_id"]: e for e in logs if e["event"] == "campaign_progress"}

        with capture_logs() as first:
            await progress.report()
        assert set(lines(first)) == {moving, still}
        assert lines(first)[still]["states"] == {"pending": 4}

        await db_pool.execute(
            "UPDATE contacts SET state = 'dialing' WHERE campaign_id = $1 AND id % 2 = 0", moving
        )
        # A change that leaves every count as it was is not a move.
        await db_pool.execute(
            "UPDATE contacts SET next_attempt_at = now() WHERE campaign_id = $1", still
        )
        with capture_logs() as second:
            await progress.report()
        assert set(lines(second)) == {moving}
        assert lines(second)[moving]["states"] == {"pending": 2, "dialing": 2}

        with capture_logs() as third:
            await progress.report()
        assert lines(third) == {}


async def test_the_contacts_gauges_follow_the_counts_though_unmoved_campaigns_are_skipped(
    db_pool: asyncpg.Pool, simulator: Simulator
) -> None:
    cid = await create_campaign(db_pool, "gauged")
    await db_pool.execute(
        "INSERT INTO contacts (campaign_id, destination) SELECT $1, d FROM unnest($2::text[]) AS d",
        cid,
        uk_numbers(4),
    )
    metrics = new_metrics()

    def gauge(state: str) -> float | None:
        return metrics.registry.get_sample_value(
            "campaign_contacts", {"campaign": "gauged", "state": state}
        )

    async with dispatcher(db_pool, engine_settings(simulator)) as d:
        progress = Progress(db_pool, d, interval=1.0, metrics=metrics)
        await progress.report()
        first = (gauge("pending"), gauge("dialing"))
        await progress.report()  # unmoved: the gauges keep their values
        unmoved = (gauge("pending"), gauge("dialing"))
        await db_pool.execute(
            "UPDATE contacts SET state = 'dialing' WHERE campaign_id = $1 AND id % 2 = 0", cid
        )
        await progress.report()
        moved = (gauge("pending"), gauge("dialing"))

    assert first == unmoved == (4, 0)
    assert moved == (2, 2)


@pytest.mark.parametrize("state", ["paused", "completed"])
async def test_progress_forgets_a_campaign_that_left_active_and_reports_it_when_back(
    db_pool: asyncpg.Pool, simulator: Simulator, state: str
) -> None:
    cid = await create_campaign(db_pool, "back-again")
    await db_pool.execute(
        "INSERT INTO contacts (campaign_id, destination) VALUES ($1, $2)", cid, uk_numbers(1)[0]
    )
    async with dispatcher(db_pool, engine_settings(simulator)) as d:
        progress = Progress(db_pool, d, interval=1.0)
        await progress.report()
        await db_pool.execute("UPDATE campaigns SET state = $2 WHERE id = $1", cid, state)
        with capture_logs() as away:
            await progress.report()
        await db_pool.execute("UPDATE campaigns SET state = 'active' WHERE id = $1", cid)
        with capture_logs() as back:
            await progress.report()
    assert not [e for e in away if e["event"] == "campaign_progress"]
    assert [e["campaign_id"] for e in back if e["event"] == "campaign_progress"] == [cid]
