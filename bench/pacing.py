"""Pacing: configured calls per second against what reaches the simulator.

Starts 1, then 3, `campaign run` daemons against one database and the simulator,
with the account budget set to --cps, and prints for each: the achieved rate over
the steady state and the worst one-second window, at the simulator and as granted
through PostgreSQL.

    .venv/bin/python bench/pacing.py [--cps 20] [--seconds 12] [--batch-size 5]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
import tempfile
from pathlib import Path

from scratch import create_scratch, drop_scratch

from campaign.db.migrate import migrate
from campaign.db.pool import database_dsn, open_pool
from campaign.settings import load_settings
from campaign.simulator import Simulator, SimulatorConfig

SERVICE = "BenchService"
PASSWORD = "bench-password-0123"


def worst_window(times: list[float], seconds: float = 1.0) -> int:
    times = sorted(times)
    worst, lo = 0, 0
    for hi, t in enumerate(times):
        while times[lo] <= t - seconds:
            lo += 1
        worst = max(worst, hi - lo + 1)
    return worst


async def run(admin_dsn: str, daemons: int, args: argparse.Namespace) -> dict[str, float]:
    name = f"bench_pacing_{daemons}"
    dsn = await create_scratch(admin_dsn, name)
    config = SimulatorConfig(service_passwords={SERVICE: PASSWORD}, calls_per_second=100_000)
    async with open_pool(dsn) as pool, Simulator(config) as sim:
        async with pool.acquire() as c:
            await migrate(c)
            cid = await c.fetchval(
                "INSERT INTO campaigns (name, service_name, caller_id, batch_size,"
                " calls_per_second, max_concurrent_calls, window_start, window_end)"
                " VALUES ('bench', $1, '441908273801', $2, 10000, 100000, '00:00', '24:00')"
                " RETURNING id",
                SERVICE,
                args.batch_size,
            )
            await c.copy_records_to_table(
                "contacts",
                records=[(cid, f"4419082{i:05d}") for i in range(int(args.cps * 60))],
                columns=["campaign_id", "destination"],
            )
        env = {k: v for k, v in os.environ.items() if not k.startswith("CAMPAIGN_")}
        env.update(
            CAMPAIGN_DATABASE__DSN=dsn,
            CAMPAIGN_ACULAB__BASE_URL=sim.base_url,
            CAMPAIGN_ACULAB__API_ACCESS_KEY=config.api_access_key,
            CAMPAIGN_ACULAB__CALLS_PER_SECOND=str(args.cps),
            CAMPAIGN_ACULAB__SERVICE_PASSWORDS=json.dumps({SERVICE: PASSWORD}),
            CAMPAIGN_LISTENER__PORT="0",
            CAMPAIGN_LOGGING__LEVEL="warning",
        )
        procs = [
            await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "campaign",
                "run",
                env=env,
                stdout=asyncio.subprocess.DEVNULL,
            )
            for _ in range(daemons)
        ]
        await asyncio.sleep(args.seconds + 2)
        for p in procs:
            p.send_signal(signal.SIGTERM)
        await asyncio.gather(*(p.wait() for p in procs))
        grants: list[float] = []
        for r in await pool.fetch(
            "SELECT extract(epoch FROM granted_at)::float8 AS at, calls FROM rate_grants"
            " WHERE key = 'account'"
        ):
            grants.extend([r["at"]] * r["calls"])
        arrivals = sorted(c.submitted_at for c in sim.calls)
    await drop_scratch(admin_dsn, name)
    begin = arrivals[0] + 1.0
    steady = [t for t in arrivals if begin <= t < begin + args.seconds]
    end = next((t for t in arrivals if t >= begin + args.seconds), arrivals[-1])
    rate = sum(1 for t in arrivals if steady[0] <= t < end) / (end - steady[0])
    return {
        "daemons": daemons,
        "configured": args.cps,
        "achieved": rate,
        "worst_window_simulator": worst_window(steady),
        "worst_window_startup": worst_window(arrivals),
        "worst_window_granted": worst_window(grants),
    }


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--cps", type=float, default=20.0)
    parser.add_argument("--seconds", type=float, default=12.0)
    parser.add_argument("--batch-size", type=int, default=5)
    parser.add_argument(
        "--data-dir", type=Path, default=Path(tempfile.gettempdir()) / "campaign-bench"
    )
    args = parser.parse_args()
    base = load_settings(None, database={"data_dir": args.data_dir})
    async with database_dsn(base.database) as admin_dsn:
        for daemons in (1, 3):
            r = await run(admin_dsn, daemons, args)
            print(
                f"{daemons} daemon(s): configured {r['configured']:g}/s, achieved "
                f"{r['achieved']:.2f}/s ({(r['achieved'] / r['configured'] - 1) * 100:+.1f} %), "
                f"worst 1-s window {r['worst_window_simulator']} at the simulator "
                f"({r['worst_window_startup']} including the first second), "
                f"{r['worst_window_granted']} granted"
            )


if __name__ == "__main__":
    asyncio.run(main())
