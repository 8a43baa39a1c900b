"""The claim query is pinned to its partial index, however many contacts are finished;
the export reads one range of its index, however many other contacts there are."""

from __future__ import annotations

import json
from typing import Any

import asyncpg
import pytest

from campaign.db import dashboard as dashboard_db
from campaign.db import queries as q
from campaign.db import results
from tests.engine import create_campaign


def _nodes(plan: dict[str, Any]) -> list[dict[str, Any]]:
    out = [plan]
    for child in plan.get("Plans", []):
        out.extend(_nodes(child))
    return out


async def _plan(
    pool: asyncpg.Pool, sql: str, *args: Any, generic: bool = False
) -> list[dict[str, Any]]:
    """The plan for `sql`; with generic=True the plan a long-lived prepared statement gets."""
    async with pool.acquire() as conn:
        if not generic:
            raw = await conn.fetchval(f"EXPLAIN (FORMAT JSON) {sql}", *args)
        else:
            async with conn.transaction():
                await conn.execute("SET LOCAL plan_cache_mode = force_generic_plan")
                await conn.execute(
                    f"PREPARE claim_plan(bigint, int, bigint, bigint, bigint, bigint) AS {sql}"
                )
                raw = await conn.fetchval(
                    "EXPLAIN (FORMAT JSON) EXECUTE claim_plan(1, 50, 0, 100, 2147483647, 1000000)"
                )
                await conn.execute("DEALLOCATE claim_plan")
    doc = json.loads(raw) if isinstance(raw, str) else raw
    return _nodes(doc[0]["Plan"])


async def test_claim_query_is_an_index_scan_on_the_pending_index(db_pool: asyncpg.Pool) -> None:
    busy = await create_campaign(db_pool, "busy")
    other = await create_campaign(db_pool, "other")
    # 300k contacts: most finished, a few thousand pending, spread over two campaigns.
    await db_pool.execute(
        """
        INSERT INTO contacts (campaign_id, destination, state, priority)
        SELECT CASE WHEN g % 2 = 0 THEN $1::bigint ELSE $2::bigint END,
               '4419082' || lpad(g::text, 5, '0'),
               CASE WHEN g % 50 = 0 THEN 'pending'
                    WHEN g % 3 = 0 THEN 'dialing'
                    ELSE 'completed' END,
               g % 3
        FROM generate_series(1, 300000) AS g
        """,
        busy,
        other,
    )
    await db_pool.execute("ANALYZE contacts")
    for nodes in [
        await _plan(db_pool, q.CLAIM_CONTACTS, busy, 50, *q.FIRST_KEY, *q.LAST_KEY),
        # Resuming after the last contact taken: the key bounds the index range.
        await _plan(db_pool, q.CLAIM_CONTACTS, busy, 50, -1, 150_000, *q.LAST_KEY),
        await _plan(db_pool, q.CLAIM_CONTACTS, generic=True),
    ]:
        scans = [n for n in nodes if n.get("Relation Name") == "contacts"]
        assert scans, nodes
        assert all(n["Node Type"] in {"Index Scan", "Index Only Scan"} for n in scans), scans
        assert {n["Index Name"] for n in scans} == {"contacts_claim_idx"}
        assert all("ROW(" in n["Index Cond"] for n in scans), scans
        assert not any(n["Node Type"] == "Sort" for n in nodes), "the index gives the order"


async def test_group_claim_walks_each_campaigns_range_of_the_pending_index(
    db_pool: asyncpg.Pool,
) -> None:
    busy = await create_campaign(db_pool, "busy")
    other = await create_campaign(db_pool, "other")
    await db_pool.execute(
        """
        INSERT INTO contacts (campaign_id, destination, state, priority)
        SELECT CASE WHEN g % 2 = 0 THEN $1::bigint ELSE $2::bigint END,
               '4419082' || lpad(g::text, 5, '0'),
               CASE WHEN g % 50 = 0 THEN 'pending' ELSE 'completed' END,
               g % 3
        FROM generate_series(1, 300000) AS g
        """,
        busy,
        other,
    )
    await db_pool.execute("ANALYZE contacts")
    nodes = await _plan(
        db_pool,
        q.CLAIM_GROUP_CONTACTS,
        [busy, other],
        [50, 100],
        [q.FIRST_KEY[0], -1],
        [q.FIRST_KEY[1], 150_000],
        [q.LAST_KEY[0]] * 2,
        [q.LAST_KEY[1]] * 2,
    )
    scans = [n for n in nodes if n.get("Relation Name") == "contacts"]
    assert len(scans) == 1, nodes
    [scan] = scans
    assert scan["Node Type"] in {"Index Scan", "Index Only Scan"}, scan
    assert scan["Index Name"] == "contacts_claim_idx"
    assert "ROW(" in scan["Index Cond"], scan
    # The index gives each campaign's order; at most the rows claimed are put in
    # the group's order (an incremental sort over input already in it).
    assert not any(n["Node Type"] == "Sort" for n in nodes), nodes


async def _changed_contacts(pool: asyncpg.Pool, campaign_id: int, count: int) -> None:
    """`count` contacts whose changes (updated_at) run in an order unrelated to their ids,
    as a real campaign's do, some of them with calls."""
    await pool.execute(
        """
        INSERT INTO contacts (campaign_id, destination, state, attempts, updated_at)
        SELECT $1, '4420' || (70000000 + g), 'completed', 1,
               now() - make_interval(secs => (g::bigint * 7919) % $2)
        FROM generate_series(1, $2) AS g
        """,
        campaign_id,
        count,
    )
    batch = await pool.fetchval(
        "INSERT INTO batches (campaign_id, service_name, unique_id, rest_calls, contact_ids) "
        "VALUES ($1, 'S', 'u' || $1::bigint, '', '{}') RETURNING id",
        campaign_id,
    )
    await pool.execute(
        "INSERT INTO calls (contact_id, campaign_id, batch_id, attempt, reference) "
        "SELECT id, campaign_id, $2, 1, 'ref-' || id FROM contacts "
        "WHERE campaign_id = $1 AND id % 3 = 0",
        campaign_id,
        batch,
    )


@pytest.mark.parametrize("campaigns", [1, 3])
async def test_export_reads_its_rows_through_the_campaign_updated_index(
    db_pool: asyncpg.Pool, campaigns: int
) -> None:
    # One campaign alone in the table, or one of three; a whole export, and an
    # incremental one (--since the last hour of 100,000 changes a second apart).
    ids = [await create_campaign(db_pool, f"c{i}") for i in range(campaigns)]
    for cid in ids:
        await _changed_contacts(db_pool, cid, 100_000)
    await db_pool.execute("ANALYZE contacts")
    await db_pool.execute("ANALYZE calls")
    hour_ago = await db_pool.fetchval("SELECT now() - interval '1 hour'")

    whole = await _plan(db_pool, results.EXPORT_CSV, ids[0], None)
    recent = await _plan(db_pool, results.EXPORT_CSV, ids[0], hour_ago)

    for nodes in (whole, recent):
        contacts = [n for n in nodes if n.get("Relation Name") == "contacts"]
        assert not [n for n in contacts if n["Node Type"] == "Seq Scan"], nodes
        used = [n for n in nodes if n.get("Index Name") == "contacts_campaign_updated_idx"]
        assert len(used) == 1, nodes
        calls = [n for n in nodes if n.get("Relation Name") == "calls"]
        assert [n.get("Index Name") for n in calls] == ["calls_contact_id_attempt_key"], nodes
    # The whole campaign comes in the index's order: no sort, first rows at once.
    assert not any(n["Node Type"] in {"Sort", "Incremental Sort"} for n in whole), whole
    # --since is a range of the index: only the recent changes are read (a plan may
    # then sort those few rather than walk the index in order).
    (index,) = [n for n in recent if n.get("Index Name") == "contacts_campaign_updated_idx"]
    assert "updated_at >=" in index["Index Cond"], index


async def test_the_dashboards_calls_per_minute_read_only_the_last_hour_through_its_index(
    db_pool: asyncpg.Pool,
) -> None:
    busy = await create_campaign(db_pool, "busy")
    other = await create_campaign(db_pool, "other")
    contact = await db_pool.fetchval(
        "INSERT INTO contacts (campaign_id, destination) VALUES ($1, '441908200000') RETURNING id",
        busy,
    )
    batch = await db_pool.fetchval(
        "INSERT INTO batches (campaign_id, service_name, unique_id, rest_calls, contact_ids) "
        "VALUES ($1, 'S', 'u-1', '[]', ARRAY[$2::bigint]) RETURNING id",
        busy,
        contact,
    )
    # 300k calls over 30 days, one in a hundred in the last hour, over two campaigns.
    await db_pool.execute(
        """
        INSERT INTO calls (contact_id, campaign_id, batch_id, attempt, reference, started_at)
        SELECT $1, CASE WHEN g % 2 = 0 THEN $2::bigint ELSE $3::bigint END, $4, g, 'ref-' || g,
               CASE WHEN g % 100 = 0 THEN now() - (g % 3600) * interval '1 second'
                    ELSE now() - interval '2 hours' - (g % 720) * interval '1 hour' END
        FROM generate_series(1, 300000) AS g
        """,
        contact,
        busy,
        other,
        batch,
    )
    await db_pool.execute("ANALYZE calls")

    nodes = await _plan(db_pool, dashboard_db.CALLS_PER_MINUTE, [busy, other], 60)

    # An index scan, or a bitmap heap scan over one: either way through the new index,
    # its range on started_at, never a read of the campaign's whole history.
    assert not any(n["Node Type"] == "Seq Scan" for n in nodes), nodes
    indexed = [n for n in nodes if "Index Name" in n]
    assert indexed, nodes
    assert {n["Index Name"] for n in indexed} == {"calls_campaign_started_idx"}, indexed
    assert all("started_at" in n["Index Cond"] for n in indexed), indexed


async def test_due_campaigns_query_is_one_index_lookup_per_campaign(
    db_pool: asyncpg.Pool,
) -> None:
    ids = [await create_campaign(db_pool, f"c{i}") for i in range(20)]
    # 300k contacts over 20 campaigns, most finished, the pending ones due at spread times.
    await db_pool.execute(
        """
        INSERT INTO contacts (campaign_id, destination, state, next_attempt_at, not_before)
        SELECT ($1::bigint[])[1 + g % 20], '4419082' || lpad(g::text, 5, '0'),
               CASE WHEN g % 50 = 0 THEN 'pending' ELSE 'completed' END,
               now() + make_interval(secs => g % 7), CASE WHEN g % 3 = 0 THEN now() END
        FROM generate_series(1, 300000) AS g
        """,
        ids,
    )
    await db_pool.execute("ANALYZE")
    for args in ([None], [ids[:2]]):
        nodes = await _plan(db_pool, q.DUE_CAMPAIGNS, *args)
        scans = [n for n in nodes if n.get("Relation Name") == "contacts"]
        assert scans, nodes
        assert all(n["Node Type"] in {"Index Scan", "Index Only Scan"} for n in scans), scans
        assert {n["Index Name"] for n in scans} == {"contacts_due_idx"}
        # The earliest entry of the campaign's range: the scan stops at its first row.
        assert any(n["Node Type"] == "Limit" for n in nodes), nodes
        assert not any(n["Node Type"] == "Sort" for n in nodes), nodes
