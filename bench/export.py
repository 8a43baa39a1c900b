"""`campaign export` of a large campaign: peak RSS of the export process and rows/s.

Loads N contacts (default 1,000,000) into campaign `bench` of a fresh database on the
embedded PostgreSQL with INSERT ... SELECT generate_series (seconds, not minutes): a
mix of completed, failed, retrying, never-dialed and invalid contacts, with 1 to 3
calls each for the dialed ones, their `updated_at` spread over a day in an order
unrelated to their ids (as a real campaign's are), and a second campaign of N/2
contacts beside them. Then runs the real command as a subprocess, for CSV and for
JSONL, into a file (--output) and into a pipe (its stdout read by this process), and
an incremental export (--since) of the last 1 %. For each: wall time, rows/s and the
process's peak RSS (ru_maxrss, from wait4). With --explain, also EXPLAIN ANALYZE of
the export's query, whole and incremental, with the index of migration 0006 and
without it.

    .venv/bin/python bench/export.py [--contacts 1000000] [--explain]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from scratch import ROOT, create_scratch, drop_scratch

from campaign.db.migrate import migrate
from campaign.db.pool import connect, database_dsn
from campaign.db.results import EXPORT_CSV
from campaign.settings import load_settings

DATABASE = "bench_export"

# Contact g's fate by g % 10: 0-4 completed (1-3 calls), 5-6 failed after 3 busy calls,
# 7 pending after a no_answer (a retry due), 8 pending never dialed, 9 invalid.
CONTACTS = """
INSERT INTO contacts (campaign_id, destination, token, state, attempts, dispatch_count,
                      last_result, last_error, next_attempt_at, created_at, updated_at)
SELECT $1, '+4420' || (70000000 + g), 'customer-' || g, f.state, f.attempts, f.attempts,
       f.last_result, f.last_error, $2::timestamptz + interval '1 day', $2::timestamptz,
       -- A permutation of 0..n-1 milliseconds after the start (7919 is prime to 10^k):
       -- the order of changes has nothing to do with the order of the rows.
       $2::timestamptz + make_interval(secs => ((g::bigint * 7919) % $3) / 1000.0)
FROM generate_series(1, $3) AS g
CROSS JOIN LATERAL (
    SELECT CASE WHEN g % 10 < 5 THEN 'completed' WHEN g % 10 < 7 THEN 'failed'
                WHEN g % 10 < 9 THEN 'pending' ELSE 'invalid' END AS state,
           CASE WHEN g % 10 < 5 THEN 1 + (g / 10) % 3 WHEN g % 10 < 7 THEN 3
                WHEN g % 10 = 7 THEN 1 ELSE 0 END AS attempts,
           CASE WHEN g % 10 < 5 THEN 'completed' WHEN g % 10 < 7 THEN 'busy'
                WHEN g % 10 = 7 THEN 'no_answer' WHEN g % 10 = 9 THEN 'invalid' END
               AS last_result,
           CASE WHEN g % 10 BETWEEN 5 AND 6 THEN 'busy: attempts exhausted (3 of 3)'
                WHEN g % 10 = 9 THEN 'not a valid number for its region' END AS last_error
) AS f
"""

CALLS = """
INSERT INTO calls (contact_id, campaign_id, batch_id, attempt, reference, started_at,
                   call_cause, duration, outcome_source, finished_at)
SELECT c.id, c.campaign_id, $2, a, 'bench-' || c.id || '.' || a,
       c.updated_at - make_interval(mins => 10 * (c.attempts - a) + 1),
       CASE WHEN a < c.attempts THEN 'busy' ELSE c.last_result END,
       CASE WHEN a = c.attempts AND c.state = 'completed' THEN 20 + c.id % 100 END,
       'push', c.updated_at - make_interval(mins => 10 * (c.attempts - a))
FROM contacts c CROSS JOIN LATERAL generate_series(1, c.attempts) AS a
WHERE c.campaign_id = $1 AND c.attempts > 0
"""


async def prepare(dsn: str, contacts: int, others: int) -> datetime:
    """The database: two campaigns and their contacts and calls; returns the first
    contact's change time (changes then run one per millisecond)."""
    conn = await connect(dsn, command_timeout=None)
    try:
        await migrate(conn)
        # The rows are consistent by construction: skip the per-row foreign-key
        # triggers (superuser, this database only), which would triple the load time.
        await conn.execute("SET session_replication_role = replica")
        start: datetime = await conn.fetchval(
            "SELECT date_trunc('second', now()) - interval '2 days'"
        )
        for name, count in (("bench", contacts), ("other", others)):
            cid = await conn.fetchval(
                "INSERT INTO campaigns (name, service_name, caller_id) "
                "VALUES ($1, 'S', '441908273801') RETURNING id",
                name,
            )
            batch = await conn.fetchval(
                "INSERT INTO batches (campaign_id, service_name, unique_id, rest_calls, "
                "contact_ids, state) VALUES ($1, 'S', $2, '', '{}', 'submitted') RETURNING id",
                cid,
                f"bench-{name}",
            )
            await conn.execute(CONTACTS, cid, start, count)
            await conn.execute(CALLS, cid, batch)
        await conn.execute("VACUUM ANALYZE contacts")
        await conn.execute("VACUUM ANALYZE calls")
        return start
    finally:
        await conn.close()


def run_export(dsn: str, fmt: str, *, into: Path | None, since: str | None) -> dict[str, Any]:
    """`campaign export bench --format FMT` into `into` (--output) or a pipe read here."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CAMPAIGN_")}
    env["CAMPAIGN_DATABASE__DSN"] = dsn
    argv = [sys.executable, "-m", "campaign", "export", "bench", "--format", fmt]
    if into is not None:
        argv += ["--output", str(into)]
    if since is not None:
        argv += ["--since", since]
    began = time.perf_counter()
    proc = subprocess.Popen(
        argv,
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE if into is None else subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    size = lines = 0
    if into is None:
        assert proc.stdout is not None
        while block := proc.stdout.read(1 << 20):
            size += len(block)
            lines += block.count(b"\n")
    assert proc.stderr is not None
    errors = proc.stderr.read().decode(errors="replace")
    # wait4, not wait: it also gives the child's peak RSS (ru_maxrss, in kB on Linux).
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    seconds = time.perf_counter() - began
    if proc.returncode != 0:
        raise SystemExit(f"export failed ({proc.returncode}): {errors.strip()[-500:]}")
    if into is not None:
        size = into.stat().st_size
        with into.open("rb") as fh:
            lines = sum(block.count(b"\n") for block in iter(lambda: fh.read(1 << 20), b""))
    rows = lines - 1 if fmt == "csv" else lines
    return {
        "rows": rows,
        "seconds": seconds,
        "rate": rows / seconds,
        "peak_rss_mb": usage.ru_maxrss / 1024,
        "cpu_s": usage.ru_utime + usage.ru_stime,
        "mb": size / 1e6,
    }


class _Rollback(Exception):
    """Leaves EXPLAIN's transaction, undoing the dropped index."""


async def explain(dsn: str, since: datetime) -> None:
    """EXPLAIN ANALYZE of the export's query (asyncpg's cursor is a protocol portal,
    planned like this plain statement), with and without migration 0006's index."""
    conn = await connect(dsn, command_timeout=None)
    try:
        cid = await conn.fetchval("SELECT id FROM campaigns WHERE name = 'bench'")
        for with_index in (True, False):
            try:
                async with conn.transaction():
                    if not with_index:
                        await conn.execute("DROP INDEX contacts_campaign_updated_idx")
                    for label, moment in (("whole campaign", None), ("--since last 1 %", since)):
                        raw = await conn.fetchval(
                            f"EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) {EXPORT_CSV}",
                            cid,
                            moment,
                        )
                        plan = (json.loads(raw) if isinstance(raw, str) else raw)[0]
                        print(
                            f"EXPLAIN ANALYZE, {label}, "
                            f"{'with' if with_index else 'without'} the index: "
                            f"{plan['Execution Time']:,.0f} ms; {_outline(plan['Plan'])}"
                        )
                    raise _Rollback
            except _Rollback:
                pass
    finally:
        await conn.close()


def _outline(node: dict[str, Any], depth: int = 0) -> str:
    """The plan's nodes, outermost first: 'Index Scan (contacts_campaign_updated_idx)'."""
    name = node["Node Type"]
    if "Index Name" in node:
        name += f" ({node['Index Name']})"
    elif "Relation Name" in node:
        name += f" ({node['Relation Name']})"
    if "Sort Method" in node:
        name += f" [{node['Sort Method']}, {node.get('Sort Space Used', '?')} kB]"
    children = [_outline(child, depth + 1) for child in node.get("Plans", [])]
    return name + (" > [" + "; ".join(children) + "]" if children else "")


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--contacts", type=int, default=1_000_000)
    parser.add_argument("--explain", action="store_true", help="EXPLAIN ANALYZE the query too")
    parser.add_argument("--keep", action="store_true", help="keep the database (to look at it)")
    parser.add_argument(
        "--data-dir", type=Path, default=Path(tempfile.gettempdir()) / "campaign-bench"
    )
    args = parser.parse_args()
    base = load_settings(None, database={"data_dir": args.data_dir})
    async with database_dsn(base.database) as admin_dsn:
        dsn = await create_scratch(admin_dsn, DATABASE)
        try:
            began = time.perf_counter()
            start = await prepare(dsn, args.contacts, args.contacts // 2)
            print(
                f"loaded {args.contacts:,} contacts (and {args.contacts // 2:,} in another "
                f"campaign) with their calls in {time.perf_counter() - began:.1f} s"
            )
            # Changes run one per millisecond from `start`: the last 1 % of them.
            since_moment = start + timedelta(milliseconds=args.contacts * 0.99)
            if args.explain:
                await explain(dsn, since_moment)
            with tempfile.TemporaryDirectory() as tmp:
                runs: list[tuple[str, str, Path | None, str | None]] = []
                for fmt in ("csv", "jsonl"):
                    runs.append((fmt, "file", Path(tmp) / f"results.{fmt}", None))
                    runs.append((fmt, "pipe", None, None))
                runs.append(
                    (
                        "csv",
                        "file, --since last 1 %",
                        Path(tmp) / "since.csv",
                        since_moment.isoformat(),
                    )
                )
                for fmt, where, into, since in runs:
                    load_average = os.getloadavg()[0]
                    r = await asyncio.to_thread(run_export, dsn, fmt, into=into, since=since)
                    print(
                        f"{fmt:5} into a {where}: {r['rows']:,} rows in {r['seconds']:.1f} s, "
                        f"{r['rate']:,.0f} rows/s, peak RSS {r['peak_rss_mb']:.1f} MB, "
                        f"{r['mb']:.0f} MB written, export CPU {r['cpu_s']:.1f} s; "
                        f"load average before {load_average:.2f}"
                    )
        finally:
            if not args.keep:
                await drop_scratch(admin_dsn, DATABASE)


if __name__ == "__main__":
    asyncio.run(main())
