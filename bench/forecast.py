"""How good is `campaign plan`? Its forecast at the start against the actual finish.

Runs campaigns to the end with a real daemon (`run_daemon` in-process: dispatcher,
poller, final-page listener, LISTEN) against the simulator, on an embedded PostgreSQL,
with and without calling windows and retries:

    pacing       the campaign's calls per second binds
    concurrency  a small max_concurrent_calls with calls of a few seconds binds
    window       the calling window opens 30-90 s after the start (Europe/London,
                 the contacts' zone, at the next whole minute), then pacing
    retries      busy/no_answer/failed/dropped retried after 10-25 s, 3 attempts
    window+retries  both
    zones+retries   half the contacts in a zone whose window closes within the run,
                 half in one where it opens within it (15 minutes apart), with retries

Before them a short campaign gives the account a history: a forecast made before any
call of its campaign has finished uses the account's latest outcomes and durations.
Each scenario prints the forecast made at the start (and one made a third of the way
through, from the campaign's own calls), the actual finish (the last contact reaching a
final state, database clock) and the error. Target: within +-15 %.

    .venv/bin/python bench/forecast.py [--scale 0.5] [--only pacing,retries]

At --scale 0.5 the whole run takes about ten minutes (three of them waiting for the
windows to open).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import asyncpg
from scratch import create_scratch, drop_scratch

from campaign.daemon import run_daemon
from campaign.db.migrate import migrate
from campaign.db.pool import database_dsn, open_pool
from campaign.logs import configure_logging
from campaign.plan import Forecast, forecast
from campaign.settings import LoggingSettings, Settings, load_settings
from campaign.simulator import Simulator, SimulatorConfig

SERVICE = "BenchOutboundService"
PASSWORD = "bench-password"
SECRET = "bench-forecast-final-page-secret"
ACCOUNT_CPS = 50
ZONE = "Europe/London"
"""The zone of the +44 1908 numbers the scenarios dial."""
CAUSES = {
    "completed": 0.45,
    "hung_up": 0.15,
    "no_answer": 0.2,
    "busy": 0.12,
    "failed": 0.05,
    "dropped": 0.03,
}
"""40 % of calls end in a cause the retry scenarios retry."""
RETRY_DELAYS = {"busy": 15, "no_answer": 25, "failed": 10, "dropped": 10}
TARGET = 0.15


@dataclass
class Scenario:
    name: str
    contacts: int
    cps: float
    cap: int = 10_000
    retries: bool = False
    window: bool = False
    zones: bool = False
    """Half the contacts in Kathmandu, half in Kolkata (15 minutes behind): the window
    is open in Kathmandu now and closes within the run; in Kolkata it opens within it."""
    scored: bool = True


@dataclass
class Result:
    scenario: Scenario
    start: Forecast
    actual: float
    later: Forecast | None = None
    later_at: float = 0.0
    calls: int = 0
    notes: list[str] = field(default_factory=list)

    def error(self, f: Forecast) -> float | None:
        if f.finish_at is None:
            return None
        predicted = (f.finish_at - self.start.as_of).total_seconds()
        return (predicted - self.actual) / self.actual if self.actual else None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def window_opening_soon() -> tuple[str, str, float]:
    """A window in ZONE opening at the next whole minute at least 30 s away, for 6
    minutes: (start, end, seconds until it opens)."""
    now = datetime.now(ZoneInfo(ZONE))
    opens = (now + timedelta(seconds=90)).replace(second=0, microsecond=0)
    return f"{opens:%H:%M}", f"{opens + timedelta(minutes=6):%H:%M}", (opens - now).total_seconds()


NEAR_ZONES = ("Asia/Kathmandu", "Asia/Kolkata")
"""UTC+5:45 and UTC+5:30: the same local window opens and closes 15 minutes apart."""


def windows_in_two_zones() -> tuple[str, str, float, float]:
    """A window, in local time, open in Kathmandu now and closing there within 3-4
    minutes, that opens in Kolkata within 1-2 minutes: (start, end, seconds until it
    closes in Kathmandu, seconds until it opens in Kolkata)."""
    now = datetime.now(ZoneInfo(NEAR_ZONES[0]))
    minute = now.replace(second=0, microsecond=0)
    start, end = minute - timedelta(minutes=13), minute + timedelta(minutes=4)
    closes = (end - now).total_seconds()
    opens = (start + timedelta(minutes=15) - now).total_seconds()
    return f"{start:%H:%M}", f"{end:%H:%M}", closes, opens


async def create(pool: asyncpg.Pool, s: Scenario, number_base: int) -> tuple[int, str]:
    window = ("00:00", "24:00")
    note = ""
    if s.zones:
        start, end, closes, opens = windows_in_two_zones()
        window = (start, end)
        note = (
            f"window {start}-{end} local: closes in {closes:.0f} s in {NEAR_ZONES[0]}, "
            f"opens in {opens:.0f} s in {NEAR_ZONES[1]}"
        )
    elif s.window:
        start, end, wait = window_opening_soon()
        window = (start, end)
        note = f"window {start}-{end} {ZONE}, opens in {wait:.0f} s"
    delays = RETRY_DELAYS if s.retries else {}
    campaign_id: int = await pool.fetchval(
        "INSERT INTO campaigns (name, service_name, caller_id, calls_per_second,"
        " max_concurrent_calls, max_attempts, retry_delays, window_start, window_end)"
        " VALUES ($1, $2, '441908273801', $3, $4, 3, $5::text::jsonb,"
        "         $6::text::time, $7::text::time)"
        " RETURNING id",
        s.name,
        SERVICE,
        s.cps,
        s.cap,
        json.dumps(delays),
        *window,
    )
    await pool.copy_records_to_table(
        "contacts",
        records=[
            (
                campaign_id,
                f"+44 1908 {number_base + i:06d}",
                NEAR_ZONES[i % 2] if s.zones else None,
            )
            for i in range(s.contacts)
        ],
        columns=["campaign_id", "destination", "timezone"],
    )
    return campaign_id, note


async def last_finish(pool: asyncpg.Pool, campaign_id: int) -> datetime | None:
    """When the last contact reached a final state; None while any is open."""
    row = await pool.fetchrow(
        "SELECT count(*) FILTER (WHERE state IN ('pending', 'dispatching', 'dialing')) AS open,"
        " max(updated_at) AS last FROM contacts WHERE campaign_id = $1",
        campaign_id,
    )
    assert row is not None
    return None if row["open"] else row["last"]


async def run_scenario(
    pool: asyncpg.Pool, settings: Settings, s: Scenario, number_base: int
) -> Result:
    campaign_id, note = await create(pool, s, number_base)
    first = await forecast(pool, s.name, settings)
    eta = first.eta_seconds or 60.0
    stop = asyncio.Event()
    daemon = asyncio.create_task(run_daemon(settings, stop))
    later: Forecast | None = None
    later_at = 0.0
    began = time.monotonic()
    try:
        while True:
            await asyncio.sleep(0.5)
            if daemon.done():
                raise SystemExit(f"the daemon stopped: exit status {daemon.result()}")
            elapsed = time.monotonic() - began
            if later is None and elapsed >= eta / 3:
                later, later_at = await forecast(pool, s.name, settings), elapsed
            finished = await last_finish(pool, campaign_id)
            if finished is not None:
                break
            if elapsed > max(3 * eta, 300):
                raise SystemExit(f"{s.name}: not finished after {elapsed:.0f} s")
    finally:
        stop.set()
        await daemon
    calls = await pool.fetchval("SELECT count(*) FROM calls WHERE campaign_id = $1", campaign_id)
    result = Result(
        s, first, (finished - first.as_of).total_seconds(), later, later_at, calls, [note]
    )
    return result


def pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value:+.1%}"


def report(r: Result) -> None:
    f = r.start
    p = f.projection
    eta = "none" if f.eta_seconds is None else f"{f.eta_seconds:.1f} s"
    binding = p.binding if p is not None else None
    print(
        f"{r.scenario.name:<15} {r.scenario.contacts:>5} contacts, {r.calls:>5} calls: "
        f"forecast {eta} ({binding}, {f.inputs.mix.source} mix), actual {r.actual:.1f} s, "
        f"error {pct(r.error(f))}" + ("" if r.scenario.scored else "  (history, not scored)")
    )
    if r.later is not None:
        print(
            f"{'':<15} forecast at {r.later_at:.0f} s ({r.later.inputs.mix.source} mix): finish "
            f"{(r.later.finish_at - f.as_of).total_seconds() if r.later.finish_at else 0:.1f} s "
            f"after the start, error {pct(r.error(r.later))}"
        )
    for note in r.notes:
        if note:
            print(f"{'':<15} {note}")


SCENARIOS = [
    Scenario("history", 150, 50, scored=False),
    Scenario("pacing", 600, 10),
    Scenario("concurrency", 400, 50, cap=20),
    Scenario("window", 400, 10, window=True),
    Scenario("retries", 300, 10, retries=True),
    Scenario("window+retries", 250, 10, retries=True, window=True),
    Scenario("zones+retries", 300, 10, retries=True, zones=True),
]


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--scale", type=float, default=1.0, help="contacts per scenario, scaled")
    parser.add_argument("--only", default="", help="comma-separated scenario names")
    parser.add_argument(
        "--data-dir", type=Path, default=Path(tempfile.gettempdir()) / "campaign-bench"
    )
    args = parser.parse_args()
    configure_logging(LoggingSettings(level="error", format="console"), stream=sys.stderr)
    wanted = {w for w in args.only.split(",") if w}
    scenarios = [s for s in SCENARIOS if not wanted or s.name in wanted or s.name == "history"]
    base = load_settings(None, database={"data_dir": args.data_dir})
    print(
        f"account {ACCOUNT_CPS} calls/s; calls ring 1-3 s or are answered for 2-5 s; "
        f"outcomes {CAUSES}; retry delays {RETRY_DELAYS} (retry scenarios), 3 attempts"
    )
    results: list[Result] = []
    async with database_dsn(base.database) as admin_dsn:
        dsn = await create_scratch(admin_dsn, "bench_forecast")
        async with open_pool(dsn, min_size=1, max_size=4) as pool:
            async with pool.acquire() as conn:
                await migrate(conn)
            port = free_port()
            config = SimulatorConfig(
                service_passwords={SERVICE: PASSWORD},
                calls_per_second=ACCOUNT_CPS,
                cause_weights=CAUSES,
                answered_seconds=(2.0, 5.0),
                ring_seconds=(1.0, 3.0),
                final_page_url=f"http://127.0.0.1:{port}/final/{SECRET}",
                seed=5,
            )
            async with Simulator(config) as sim:
                settings = load_settings(
                    None,
                    database={"dsn": dsn},
                    aculab={
                        "base_url": sim.base_url,
                        "cloud_id": config.cloud_id,
                        "username": config.username,
                        "api_access_key": config.api_access_key,
                        "calls_per_second": ACCOUNT_CPS,
                        "service_passwords": config.service_passwords,
                    },
                    listener={"port": port, "webhook_secret": SECRET},
                    logging={"level": "error"},
                )
                for n, s in enumerate(scenarios):
                    s.contacts = max(20, round(s.contacts * args.scale)) if s.scored else s.contacts
                    r = await run_scenario(pool, settings, s, 200_000 + n * 100_000)
                    report(r)
                    results.append(r)
        await drop_scratch(admin_dsn, "bench_forecast")
    scored = [r for r in results if r.scenario.scored]
    errors = [abs(e) for r in scored if (e := r.error(r.start)) is not None]
    within = sum(1 for e in errors if e <= TARGET)
    if errors:
        print(
            f"overall: forecast at the start within +-{TARGET:.0%} in {within} of "
            f"{len(scored)} scenarios; mean absolute error {sum(errors) / len(errors):.1%}, "
            f"worst {max(errors):.1%}"
        )


if __name__ == "__main__":
    asyncio.run(main())
