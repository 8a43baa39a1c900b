"""`campaign load` speed: a generated CSV of N rows loaded through the real command.

Prints rows per second for a one-column file (destination only) and for a
five-column one, each into a fresh database on the embedded PostgreSQL.

    .venv/bin/python bench/load_rate.py [--rows 1000000]
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
    with path.open("w", newline="") as fh:
        out = csv.writer(fh)
        if wide:
            out.writerow(["destination", "token", "priority", "timezone", "extra_sip_headers"])
            headers = json.dumps([{"name": "X-Account", "value": "bench"}])
            for i in range(rows):
                out.writerow(
                    [f"+44 1908 {i:07d}", f"customer-{i}", i % 3, "Europe/London", headers]
                )
        else:
            out.writerow(["destination"])
            for i in range(rows):
                out.writerow([f"441908{i:07d}"])


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


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument(
        "--data-dir", type=Path, default=Path(tempfile.gettempdir()) / "campaign-bench"
    )
    args = parser.parse_args()
    base = load_settings(None, database={"data_dir": args.data_dir})
    with tempfile.TemporaryDirectory() as tmp:
        async with database_dsn(base.database) as admin_dsn:
            for wide in (False, True):
                path = Path(tmp) / f"contacts_{'wide' if wide else 'narrow'}.csv"
                write_csv(path, args.rows, wide)
                dsn = await fresh_database(admin_dsn, "bench_load")
                env = {k: v for k, v in os.environ.items() if not k.startswith("CAMPAIGN_")}
                env["CAMPAIGN_DATABASE__DSN"] = dsn
                began = time.perf_counter()
                proc = await asyncio.to_thread(
                    subprocess.run,
                    [sys.executable, "-m", "campaign", "load", "bench", str(path)],
                    env=env,
                    capture_output=True,
                    text=True,
                    check=False,
                )
                seconds = time.perf_counter() - began
                if proc.returncode != 0:
                    raise SystemExit(f"load failed: {proc.stderr.strip()[-500:]}")
                columns = 5 if wide else 1
                print(
                    f"{args.rows:,} rows, {columns} column(s): {seconds:.1f} s, "
                    f"{args.rows / seconds:,.0f} rows/s (target 100,000) — {proc.stdout.strip()}"
                )


if __name__ == "__main__":
    asyncio.run(main())
