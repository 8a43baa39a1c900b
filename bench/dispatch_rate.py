"""Dispatch throughput: contacts turned into started calls per second.

The simulator runs as its own process (`campaign simulator`, CPS effectively
unlimited); the dispatcher runs in this process against the embedded
PostgreSQL. Prints contacts/s for each batch size, the requests sent, and the
CPU time per 1,000 contacts of the dispatcher and of PostgreSQL (postmaster and
every backend, reaped ones included).

    .venv/bin/python bench/dispatch_rate.py [--contacts 20000] [--batch-sizes 10,50,100]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

from scratch import PostgresCpu, create_scratch, drop_scratch, start_simulator, stop

from campaign.aculab import AculabClient
from campaign.db.migrate import migrate
from campaign.db.pool import database_dsn, open_pool
from campaign.dispatch import Dispatcher
from campaign.logs import configure_logging
from campaign.settings import LoggingSettings, load_settings

SERVICE = "BenchService"
PASSWORD = "bench-password"
API_KEY = "bench-key"


async def one_run(
    admin_dsn: str, base_url: str, contacts: int, batch_size: int
) -> dict[str, float]:
    name = f"bench_{batch_size}_{os.getpid()}"
    dsn = await create_scratch(admin_dsn, name)
    settings = load_settings(
        None,
        database={"dsn": dsn},
        aculab={
            "base_url": base_url,
            "api_access_key": API_KEY,
            "calls_per_second": 100_000,
            "service_passwords": {SERVICE: PASSWORD},
        },
        dispatcher={"max_in_flight_batches": 4, "namespace": name},
    )
    async with open_pool(dsn, min_size=2, max_size=8) as pool:
        async with pool.acquire() as c:
            await migrate(c)
            cid = await c.fetchval(
                "INSERT INTO campaigns"
                " (name, service_name, caller_id, batch_size, calls_per_second,"
                " window_start, window_end, max_concurrent_calls)"
                # No outcomes arrive here: the cap must not stop the run (100,000 at most).
                " VALUES ('bench', $1, '441908273801', $2, 100000, '00:00', '24:00', 100000)"
                " RETURNING id",
                SERVICE,
                batch_size,
            )
            await c.copy_records_to_table(
                "contacts",
                records=[(cid, f"4419082{i:05d}") for i in range(contacts)],
                columns=["campaign_id", "destination"],
            )
        meter = await PostgresCpu.attach(dsn)
        async with AculabClient(settings.aculab, settings.http) as client:
            d = Dispatcher(pool, client, settings, "bench")
            cpu0 = resource.getrusage(resource.RUSAGE_SELF)
            pg0 = meter.read()
            t0 = time.perf_counter()
            await d.run(asyncio.Event(), until_idle=True)
            wall = time.perf_counter() - t0
            cpu1 = resource.getrusage(resource.RUSAGE_SELF)
            pg1 = meter.read()
        dialing = await pool.fetchval("SELECT count(*) FROM contacts WHERE state = 'dialing'")
    await drop_scratch(admin_dsn, name)
    cpu = (cpu1.ru_utime + cpu1.ru_stime) - (cpu0.ru_utime + cpu0.ru_stime)
    assert dialing == contacts, f"only {dialing} of {contacts} dispatched"
    return {
        "batch_size": batch_size,
        "contacts": contacts,
        "seconds": wall,
        "contacts_per_s": contacts / wall,
        "requests": d.counters.batches_submitted,
        "cpu_s_per_1000": cpu / contacts * 1000,
        "postgres_cpu_s_per_1000": (pg1 - pg0) / contacts * 1000,
    }


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--contacts", type=int, default=20_000)
    parser.add_argument("--batch-sizes", default="10,50,100")
    parser.add_argument(
        "--data-dir", type=Path, default=Path(tempfile.gettempdir()) / "campaign-bench"
    )
    args = parser.parse_args()
    configure_logging(LoggingSettings(level="warning", format="console"), stream=sys.stderr)
    sim, base_url = await start_simulator(SERVICE, PASSWORD, api_key=API_KEY)
    base = load_settings(None, database={"data_dir": args.data_dir})
    results = []
    try:
        async with database_dsn(base.database) as admin_dsn:
            for size in [int(s) for s in args.batch_sizes.split(",")]:
                results.append(await one_run(admin_dsn, base_url, args.contacts, size))
                r = results[-1]
                print(
                    f"batch {r['batch_size']:>4}: {r['contacts_per_s']:8.0f} contacts/s "
                    f"({r['contacts']:.0f} in {r['seconds']:.1f} s, {r['requests']:.0f} requests), "
                    f"CPU s per 1,000 contacts: dispatcher {r['cpu_s_per_1000']:.3f},"
                    f" PostgreSQL {r['postgres_cpu_s_per_1000']:.3f}"
                )
    finally:
        await stop(sim)
    best = max(results, key=lambda r: r["contacts_per_s"])
    print(json.dumps({"best": best, "runs": results}))


if __name__ == "__main__":
    asyncio.run(main())
