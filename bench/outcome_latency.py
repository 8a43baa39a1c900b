"""Outcome latency: from the end of a call at "Aculab" to its outcome in the database.

Runs the same campaign twice against the simulator: once with final-page push
(the poller on as reconciliation), once poll-only. Prints p50/p95 latency and
application_status requests per finished call for each mode.

    .venv/bin/python bench/outcome_latency.py [--contacts 300] [--first-poll 2] [--interval 1]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from pydantic import SecretStr
from scratch import create_scratch, drop_scratch

from campaign.aculab import AculabClient
from campaign.db.migrate import migrate
from campaign.db.pool import database_dsn, open_pool
from campaign.dispatch import Dispatcher
from campaign.logs import configure_logging
from campaign.metrics import new_metrics
from campaign.poller import Poller
from campaign.server import Server, build_app
from campaign.settings import ListenerSettings, LoggingSettings, load_settings
from campaign.simulator import Simulator, SimulatorConfig

SECRET = "bench-final-page-secret-000"


def quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def one_mode(admin_dsn: str, mode: str, args: argparse.Namespace) -> dict[str, Any]:
    name = f"bench_outcomes_{mode}"
    dsn = await create_scratch(admin_dsn, name)
    async with open_pool(dsn, min_size=2, max_size=8) as pool:
        async with pool.acquire() as c:
            await migrate(c)
        listener = ListenerSettings(port=0, webhook_secret=SecretStr(SECRET))
        server = Server(build_app(pool, listener, new_metrics(), dict), listener)
        await server.start()
        config = SimulatorConfig(
            calls_per_second=1000,
            answered_seconds=(1.0, 5.0),
            ring_seconds=(0.5, 2.0),
            final_page_url=f"{server.url}/final/{SECRET}" if mode == "push" else None,
            seed=11,
        )
        async with Simulator(config) as sim:
            settings = load_settings(
                None,
                database={"dsn": dsn},
                aculab={
                    "base_url": sim.base_url,
                    "api_access_key": config.api_access_key,
                    "calls_per_second": 1000,
                    "service_passwords": config.service_passwords,
                },
                poller={
                    "first_poll_delay": args.first_poll,
                    "interval": args.interval,
                    "max_interval": args.interval * 4,
                },
            )
            async with pool.acquire() as c:
                cid = await c.fetchval(
                    "INSERT INTO campaigns (name, service_name, caller_id, calls_per_second,"
                    " retry_delays, window_start, window_end) VALUES ('bench',"
                    " 'MyOutboundService', '441908273801', 100, '{}', '00:00', '24:00')"
                    " RETURNING id"
                )
                await c.copy_records_to_table(
                    "contacts",
                    records=[(cid, f"4419082{i:05d}") for i in range(args.contacts)],
                    columns=["campaign_id", "destination"],
                )
            stop = asyncio.Event()
            async with AculabClient(settings.aculab, settings.http) as client:
                dispatcher = Dispatcher(pool, client, settings, "bench")
                poller = Poller(pool, client, settings)
                tasks = [
                    asyncio.create_task(dispatcher.run(stop)),
                    asyncio.create_task(poller.run(stop, round_seconds=0.2)),
                ]
                deadline = time.monotonic() + 300
                while time.monotonic() < deadline:
                    left = await pool.fetchval(
                        "SELECT count(*) FROM contacts WHERE state IN"
                        " ('pending', 'dispatching', 'dialing')"
                    )
                    if left == 0:
                        break
                    await asyncio.sleep(0.2)
                stop.set()
                await asyncio.gather(*tasks)
            rows = await pool.fetch(
                "SELECT reference, extract(epoch FROM finished_at)::float8 AS at, outcome_source"
                " FROM calls WHERE finished_at IS NOT NULL"
            )
            latencies = [r["at"] - sim.call(r["reference"]).finish_at for r in rows]
            polls = sim.request_count("application_status")
            sources: dict[str, int] = {}
            for r in rows:
                sources[r["outcome_source"]] = sources.get(r["outcome_source"], 0) + 1
        await server.stop()
    await drop_scratch(admin_dsn, name)
    return {
        "mode": mode,
        "finished": len(rows),
        "p50_s": statistics.median(latencies),
        "p95_s": quantile(latencies, 0.95),
        "status_requests_per_call": polls / max(1, len(rows)),
        "sources": sources,
    }


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--contacts", type=int, default=300)
    parser.add_argument("--first-poll", type=float, default=2.0)
    parser.add_argument("--interval", type=float, default=1.0)
    parser.add_argument(
        "--data-dir", type=Path, default=Path(tempfile.gettempdir()) / "campaign-bench"
    )
    args = parser.parse_args()
    configure_logging(LoggingSettings(level="error", format="console"), stream=sys.stderr)
    base = load_settings(None, database={"data_dir": args.data_dir})
    print(
        f"{args.contacts} calls lasting 0.5-5 s; poller first poll {args.first_poll:g} s, "
        f"then every {args.interval:g} s doubling to {args.interval * 4:g} s"
    )
    async with database_dsn(base.database) as admin_dsn:
        for mode in ("push", "poll"):
            r = await one_mode(admin_dsn, mode, args)
            print(
                f"{r['mode']:>4}: {r['finished']} outcomes, "
                f"latency p50 {r['p50_s'] * 1000:.0f} ms, p95 {r['p95_s'] * 1000:.0f} ms, "
                f"application_status requests per finished call "
                f"{r['status_requests_per_call']:.2f}, recorded by {r['sources']}"
            )


if __name__ == "__main__":
    asyncio.run(main())
