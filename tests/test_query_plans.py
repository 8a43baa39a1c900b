"""The claim query is pinned to its partial index, however many contacts are finished."""

from __future__ import annotations

import json
from typing import Any

import asyncpg

from campaign.db import queries as q
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
