"""`campaign load` speed: a generated CSV of N rows loaded through the real command.

Prints rows per second for a one-column file (destination only) and for a
five-column one (distinct valid London numbers), each into a fresh database on the
embedded PostgreSQL, twice: with every row judged by the claim's rules (the
default) and with `--no-check` (COPY alone), so the cost of the judging is measured
in the same run. Also printed: the
command's fixed cost (the same load of a one-row file: start-up, imports,
connecting), the rate without it, and the load average before the run (on a
shared machine, a high one means the figure is noisy).

    .venv/bin/python bench/load_rate.py [--rows 1000000] [--narrow-only]
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from scratch import create_scratch

from campaign.db.migrate import migrate
from campaign.db.pool import connect, database_dsn
from campaign.settings import load_settings


def write_csv(path: Path, rows: int, wide: bool) -> None:
    # Distinct valid London numbers (+44 20 7000 0000 onwards, up to 30 million): the load
    # judges every row by the claim's rules, and a valid number is the dearer verdict.
    with path.open("w", newline="") as fh:
        out = csv.writer(fh)
        if wide:
            out.writerow(["destination", "token", "priority", "timezone", "extra_sip_headers"])
            headers = json.dumps([{"name": "X-Account", "value": "bench"}])
            for i in range(rows):
                n = 70_000_000 + i
                out.writerow(
                    [
                        f"+44 20 {n // 10_000} {n % 10_000:04d}",
                        f"customer-{i}",
                        i % 3,
                        "Europe/London",
                        headers,
                    ]
                )
        else:
            out.writerow(["destination"])
            for i in range(rows):
                out.writerow([f"4420{70_000_000 + i}"])


async def fresh_database(admin_dsn: str, name: str) -> str:
    dsn = await create_scratch(admin_dsn, name)
    conn = await connect(dsn, command_timeout=None)
    await migrate(conn)
    await conn.execute(
        "INSERT INTO campaigns (name, service_name, caller_id)"
        " VALUES ('bench', 'S', '441908273801')"
    )
    await conn.close()
    return dsn


async def run_load(dsn: str, path: Path, *options: str) -> tuple[float, str]:
    """Seconds taken by `campaign load bench PATH [OPTIONS]`, and its stdout."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CAMPAIGN_")}
    env["CAMPAIGN_DATABASE__DSN"] = dsn
    began = time.perf_counter()
    proc = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "campaign", "load", "bench", str(path), *options],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    seconds = time.perf_counter() - began
    if proc.returncode != 0:
        raise SystemExit(f"load failed: {proc.stderr.strip()[-500:]}")
    return seconds, proc.stdout.strip()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--narrow-only", action="store_true", help="the one-column file only")
    parser.add_argument(
        "--data-dir", type=Path, default=Path(tempfile.gettempdir()) / "campaign-bench"
    )
    args = parser.parse_args()
    base = load_settings(None, database={"data_dir": args.data_dir})
    with tempfile.TemporaryDirectory() as tmp:
        async with database_dsn(base.database) as admin_dsn:
            for wide in (False,) if args.narrow_only else (False, True):
                path = Path(tmp) / f"contacts_{'wide' if wide else 'narrow'}.csv"
                write_csv(path, args.rows, wide)
                one_row = Path(tmp) / "one_row.csv"
                write_csv(one_row, 1, wide)
                # On a database of its own, then dropped: the big load starts on a fresh one.
                fixed, _ = await run_load(await fresh_database(admin_dsn, "bench_load"), one_row)
                columns = 5 if wide else 1
                for options in ((), ("--no-check",)):
                    dsn = await fresh_database(admin_dsn, "bench_load")
                    load_average = os.getloadavg()[0]
                    seconds, output = await run_load(dsn, path, *options)
                    how = "rows judged" if not options else "--no-check"
                    print(
                        f"{args.rows:,} rows, {columns} column(s), {how}: {seconds:.1f} s, "
                        f"{args.rows / seconds:,.0f} rows/s (target 100,000) — {output}; "
                        f"fixed cost {fixed:.1f} s, without it "
                        f"{args.rows / (seconds - fixed):,.0f} rows/s; "
                        f"load average before {load_average:.2f}"
                    )


if __name__ == "__main__":
    asyncio.run(main())
