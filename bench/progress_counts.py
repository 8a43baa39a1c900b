"""What keeping contact counts costs and saves (issue 11, item 4), in one run.

On a fresh database of the embedded PostgreSQL: --contacts spread over --campaigns,
a third of them then moved to `dialing`.

1. A progress report's counting: `count(*) ... GROUP BY campaign_id, state` over
   the contacts (what the daemon did before migration 0009) against folding the
   deltas and reading the kept counts (what it does now); medians of 7, after a
   first fold of the load's deltas. Both answers are compared.
2. The triggers' price on the engine's writes: transactions of three UPDATEs of
   `state`, each of up to 100 contacts of one campaign (pending -> dispatching
   -> dialing -> pending, the shape of a claim and an acknowledgement), with the
   counting triggers enabled and disabled, alternated --rounds times; the
   medians, and the difference per statement and per contact changed.

    .venv/bin/python bench/progress_counts.py [--contacts 2000000] [--campaigns 1000]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import asyncpg
from scratch import create_scratch, drop_scratch

from campaign.db import queries as q
from campaign.db.migrate import migrate
from campaign.db.pool import connect, database_dsn
from campaign.logs import configure_logging
from campaign.settings import LoggingSettings, load_settings

CHUNK = 200_000
LIST = 100
TRIGGERS = ("inserted", "deleted", "updated", "truncated")
# What the progress reporter ran before migration 0009.
COUNT_EVERY_CONTACT = """
SELECT campaign_id, state, count(*)::bigint AS n
FROM contacts
WHERE campaign_id = ANY($1::bigint[])
GROUP BY campaign_id, state
"""


async def median_ms(f: Callable[[], Awaitable[Any]], n: int = 7) -> float:
    times = []
    for _ in range(n):
        t = time.perf_counter()
        await f()
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1000


async def load(conn: asyncpg.Connection, contacts: int, campaigns: int) -> list[int]:
    ids = [
        r["id"]
        for r in await conn.fetch(
            "INSERT INTO campaigns (name, service_name) SELECT 'c' || g, 'S'"
            " FROM generate_series(1, $1) AS g ORDER BY g RETURNING id",
            campaigns,
        )
    ]
    for start in range(0, contacts, CHUNK):
        await conn.copy_records_to_table(
            "contacts",
            records=[
                (ids[i % campaigns], str(441908200000 + i))
                for i in range(start, min(contacts, start + CHUNK))
            ],
            columns=["campaign_id", "destination"],
        )
    await conn.execute("UPDATE contacts SET state = 'dialing' WHERE id % 3 = 0")
    await conn.execute("VACUUM ANALYZE contacts")
    return ids


async def counting(conn: asyncpg.Connection, ids: list[int]) -> dict[str, float]:
    t = time.perf_counter()
    await q.fold_contact_counts(conn)
    first_fold = (time.perf_counter() - t) * 1000
    await conn.execute("VACUUM ANALYZE contact_counts, contact_count_deltas")
    scan = await median_ms(lambda: conn.fetch(COUNT_EVERY_CONTACT, ids))

    async def kept() -> None:
        await q.fold_contact_counts(conn)
        await q.state_counts(conn, ids)

    kept_ms = await median_ms(kept)
    fresh = {
        (r["campaign_id"], r["state"]): r["n"] for r in await conn.fetch(COUNT_EVERY_CONTACT, ids)
    }
    counts = await q.state_counts(conn, ids)
    if fresh != {(cid, s): n for cid, by in counts.items() for s, n in by.items()}:
        raise SystemExit("the kept counts differ from count(*): a bug")
    return {"first_fold_ms": first_fold, "scan_ms": scan, "kept_ms": kept_ms}


async def triggers(conn: asyncpg.Connection, statements: int, rounds: int) -> dict[str, float]:
    # Each list from one campaign, as a claim's or an acknowledgement's.
    lists = [
        r["ids"]
        for r in await conn.fetch(
            "SELECT (array_agg(id ORDER BY id))[1:$1] AS ids FROM contacts"
            " WHERE state = 'pending' GROUP BY campaign_id ORDER BY campaign_id LIMIT 100",
            LIST,
        )
    ]

    async def cycle() -> list[float]:
        out = []
        for k in range(statements):
            ids = lists[k % len(lists)]
            t = time.perf_counter()
            async with conn.transaction():
                for state in ("dispatching", "dialing", "pending"):
                    await conn.execute(
                        "UPDATE contacts SET state = $2, updated_at = now()"
                        " WHERE id = ANY($1::bigint[])",
                        ids,
                        state,
                    )
            out.append(time.perf_counter() - t)
        return out

    got: dict[str, list[float]] = {"with": [], "without": []}
    for r in range(rounds):
        for mode in ("with", "without") if r % 2 == 0 else ("without", "with"):
            verb = "ENABLE" if mode == "with" else "DISABLE"
            for name in TRIGGERS:
                await conn.execute(f"ALTER TABLE contacts {verb} TRIGGER contacts_count_{name}")
            await conn.execute("VACUUM contacts")
            got[mode].append(statistics.median(await cycle()))
    await conn.execute("ALTER TABLE contacts ENABLE TRIGGER USER")
    with_s, without_s = statistics.median(got["with"]), statistics.median(got["without"])
    return {
        "rounds_with_us": [round(x * 1e6) for x in got["with"]],
        "rounds_without_us": [round(x * 1e6) for x in got["without"]],
        "with_us": with_s * 1e6,
        "without_us": without_s * 1e6,
        "per_statement_us": (with_s - without_s) / 3 * 1e6,
        "per_contact_us": (with_s - without_s)
        / (3 * statistics.mean(len(ids) for ids in lists))
        * 1e6,
    }


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--contacts", type=int, default=2_000_000)
    parser.add_argument("--campaigns", type=int, default=1000)
    parser.add_argument("--statements", type=int, default=300, help="transactions per round")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument(
        "--data-dir", type=Path, default=Path(tempfile.gettempdir()) / "campaign-bench"
    )
    args = parser.parse_args()
    if not (args.contacts >= 100 * LIST and args.campaigns >= 1 and args.rounds >= 2):
        parser.error("need --contacts >= 10,000, --campaigns >= 1, --rounds >= 2")
    configure_logging(LoggingSettings(level="warning", format="console"), stream=sys.stderr)
    base = load_settings(None, database={"data_dir": args.data_dir})
    name = f"bench_progress_{os.getpid()}"
    async with database_dsn(base.database) as admin_dsn:
        dsn = await create_scratch(admin_dsn, name)
        conn = await connect(dsn, command_timeout=None)
        try:
            await migrate(conn)
            t = time.perf_counter()
            ids = await load(conn, args.contacts, args.campaigns)
            print(
                f"loaded {args.contacts:,} contacts into {args.campaigns:,} campaigns, a third"
                f" dialing, in {time.perf_counter() - t:.0f} s"
            )
            c = await counting(conn, ids)
            print(
                f"progress counting: count(*) over every contact {c['scan_ms']:.1f} ms;"
                f" fold + kept counts {c['kept_ms']:.2f} ms (medians of 7; the first fold,"
                f" of the load's deltas, {c['first_fold_ms']:.1f} ms); the same answer"
            )
            tr = await triggers(conn, args.statements, args.rounds)
            print(
                f"counting triggers: three UPDATEs of state of 100 contacts in one transaction"
                f" {tr['with_us']:,.0f} us with, {tr['without_us']:,.0f} us without (medians,"
                f" {args.rounds} alternated rounds): {tr['per_statement_us']:+,.0f} us per"
                f" statement, {tr['per_contact_us']:+.2f} us per contact changed"
            )
            print(f"  rounds with: {tr['rounds_with_us']}; without: {tr['rounds_without_us']}")
        finally:
            await conn.close()
            await drop_scratch(admin_dsn, name)


if __name__ == "__main__":
    asyncio.run(main())
