"""`campaign demo`: the whole engine on this machine, with nothing configured.

An embedded PostgreSQL, the Aculab simulator in-process, a generated campaign
(a few bad rows included), dispatched to completion, then a readable summary
checked against the simulator's own record of what it started.

Its data stays in a database of its own (never the one `campaign` uses by default,
even with --data-dir pointing at yours), and a small settings file beside it,
`campaign.toml` in the data folder, points the campaign command at it: the demo
ends by printing the commands that show what it did.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shlex
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

import asyncpg
from pydantic import SecretStr

from campaign.aculab import AculabClient
from campaign.db import demo_queries as dq
from campaign.db.migrate import migrate
from campaign.db.pool import connect, database_dsn, dsn_with_database, open_pool
from campaign.dispatch import Dispatcher
from campaign.logs import configure_logging
from campaign.metrics import new_metrics
from campaign.poller import Poller
from campaign.server import Server, build_app
from campaign.settings import (
    FOLDER_CONFIG,
    ListenerSettings,
    LoggingSettings,
    Settings,
    load_settings,
)
from campaign.simulator import Simulator, SimulatorConfig

SERVICE = "DemoOutboundService"
CALLER_ID = "441908273801"
DEMO_DATABASE = "campaign_demo"
CONFIG_NAME = FOLDER_CONFIG
"""The settings file the demo leaves in its data folder for looking around afterwards."""
WEBHOOK_SECRET = "demo-final-page-secret"
BAD_ROWS = [
    ("+44 909 8790000", "premium-rate number"),
    ("01908 273800", "national format without a default country"),
    ("12345", "too short to be a telephone number"),
    ("sip:no host", "broken SIP address"),
]


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--contacts", type=int, default=1000, help="good contacts to generate")
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=Path(".campaign-demo"),
        help="where the embedded PostgreSQL of the demo lives (default: .campaign-demo)",
    )
    parser.add_argument("--cps", type=float, default=250.0, help="the account's calls per second")


def main(args: argparse.Namespace) -> int:
    if not 1 <= args.contacts <= 1_000_000:
        print("demo: --contacts must be between 1 and 1000000", file=sys.stderr)
        return 2
    return asyncio.run(run_demo(args.contacts, args.data_dir, args.cps))


def demo_destinations(count: int, seed: int = 7) -> list[str]:
    """`count` distinct valid UK numbers in assorted spellings, plus the bad rows."""
    rng = random.Random(seed)
    numbers = rng.sample(range(200000, 999999), count)
    spellings = ["+44 1908 {n}", "441908{n}", "tel:+441908{n}", "+44-1908-{n}"]
    good = [rng.choice(spellings).format(n=n) for n in numbers]
    dupes = [good[0].replace(" ", "")] if good else []
    return good + dupes + [d for d, _ in BAD_ROWS]


@dataclass
class Summary:
    wall_seconds: float
    states: dict[str, int]
    started: int
    requests: int
    mismatched: int
    reasons: dict[str, int]
    outcomes: dict[str, int]
    sources: dict[str, int]
    attempts: dict[int, int]
    campaign_state: str


async def run_demo(contacts: int, data_dir: Path, cps: float, out: TextIO | None = None) -> int:
    out = out or sys.stdout
    configure_logging(LoggingSettings(level="warning", format="console"), stream=sys.stderr)
    began = time.monotonic()
    print(f"demo: starting embedded PostgreSQL under {data_dir} and the Aculab simulator", file=out)
    base = load_settings(None, database={"data_dir": data_dir})
    async with database_dsn(base.database) as admin_dsn:
        dsn = await _fresh_database(admin_dsn)
        config = write_config(data_dir)
        async with open_pool(dsn, min_size=2, max_size=8) as pool:
            async with pool.acquire() as conn:
                await migrate(conn)
            listener = ListenerSettings(port=0, webhook_secret=SecretStr(WEBHOOK_SECRET))
            server = Server(build_app(pool, listener, new_metrics(), dict), listener)
            async with server:
                sim_config = SimulatorConfig(
                    service_passwords={SERVICE: "demo-password"},
                    calls_per_second=cps,
                    answered_seconds=(0.2, 1.5),
                    ring_seconds=(0.1, 0.5),
                    final_page_url=f"{server.url}/final/{WEBHOOK_SECRET}",
                    callback_loss=0.05,
                    seed=1,
                )
                async with Simulator(sim_config) as sim:
                    settings = _settings(sim, sim_config, dsn, data_dir, cps)
                    async with pool.acquire() as conn:
                        campaign_id = await dq.create_demo_campaign(conn, SERVICE, CALLER_ID, cps)
                        destinations = demo_destinations(contacts)
                        await dq.load_destinations(conn, campaign_id, destinations)
                        await dq.suppress(
                            conn, _digits(destinations[1]), "demo: asked not to be called"
                        )
                    print(
                        f"demo: campaign 'demo' with {len(destinations)} contacts "
                        f"({len(BAD_ROWS)} bad rows, 1 duplicate, 1 on the do-not-call list); "
                        f"account at {cps:g} calls/s; outcomes pushed to the final page, "
                        "5 % of them lost and found again by polling",
                        file=out,
                    )
                    summary = await _run(pool, settings, sim, campaign_id, began, out)
    _print_summary(summary, out)
    _print_look_around(config, data_dir, out)
    return 0 if summary.mismatched == 0 and summary.campaign_state == "completed" else 1


def write_config(data_dir: Path) -> Path:
    """The settings that point `campaign` at the demo's database, in its data folder."""
    path = data_dir / CONFIG_NAME
    # A JSON string is a TOML basic string; the absolute path works from any folder.
    path.write_text(
        "# Written by `campaign demo`: the settings that show its data, e.g.\n"
        f"#   campaign --config {path} status\n"
        "[database]\n"
        f"data_dir = {json.dumps(str(data_dir.resolve()))}\n"
        f'embedded_database = "{DEMO_DATABASE}"\n',
        encoding="utf-8",
    )
    return path


def command_name() -> str:
    """How to run `campaign` again, as this process was started."""
    invoked = sys.argv[0] if sys.argv else ""
    if invoked.endswith("__main__.py") or not invoked:
        return f"{shlex.quote(sys.executable)} -m campaign"
    found = shutil.which("campaign")
    if found is not None and os.path.realpath(found) == os.path.realpath(invoked):
        return "campaign"
    return shlex.quote(invoked)


def _print_look_around(config: Path, data_dir: Path, out: TextIO) -> None:
    run = f"{command_name()} --config {shlex.quote(str(config))}"
    print("", file=out)
    print(f"look around (the demo's data stays in {data_dir} until the next demo):", file=out)
    print(f"  {run} status demo", file=out)
    print(f"  {run} why demo", file=out)
    print(f"  {run} batches demo --all", file=out)


def _settings(
    sim: Simulator, config: SimulatorConfig, dsn: str, data_dir: Path, cps: float
) -> Settings:
    return load_settings(
        None,
        database={"data_dir": data_dir, "dsn": dsn},
        aculab={
            "base_url": sim.base_url,
            "cloud_id": config.cloud_id,
            "username": config.username,
            "api_access_key": config.api_access_key,
            "calls_per_second": cps,
            "service_passwords": config.service_passwords,
        },
        dispatcher={"namespace": "demo", "max_in_flight_batches": 4},
        poller={"first_poll_delay": 3.0, "interval": 1.0, "max_interval": 2.0},
    )


def _digits(value: str) -> str:
    return "".join(ch for ch in value if ch.isdigit())


async def _fresh_database(admin_dsn: str) -> str:
    conn = await connect(admin_dsn)
    try:
        await dq.recreate_database(conn, DEMO_DATABASE)
    finally:
        await conn.close()
    return dsn_with_database(admin_dsn, DEMO_DATABASE)


async def _run(
    pool: asyncpg.Pool,
    settings: Settings,
    sim: Simulator,
    campaign_id: int,
    began: float,
    out: TextIO,
) -> Summary:
    """The daemon's dispatcher and poller until the campaign completes (or 5 minutes)."""
    stop = asyncio.Event()
    async with AculabClient(settings.aculab, settings.http) as client:
        dispatcher = Dispatcher(pool, client, settings, "demo")
        poller = Poller(pool, client, settings)
        tasks = [
            asyncio.create_task(dispatcher.run(stop)),
            asyncio.create_task(poller.run(stop, round_seconds=0.25)),
        ]
        deadline = time.monotonic() + 300
        state = "active"
        while state == "active" and time.monotonic() < deadline:
            await asyncio.sleep(1.0)
            async with pool.acquire() as conn:
                counts = await dq.state_counts(conn, campaign_id)
                state = await dq.campaign_state(conn, campaign_id)
            shown = ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))
            print(f"demo: {time.monotonic() - began:5.1f}s  {shown}", file=out)
        stop.set()
        await asyncio.gather(*tasks)
    async with pool.acquire() as conn:
        counts = await dq.state_counts(conn, campaign_id)
        reasons = await dq.reasons(conn, campaign_id)
        outcomes = await dq.outcomes(conn, campaign_id)
        sources = await dq.sources(conn, campaign_id)
        attempts = await dq.attempts(conn, campaign_id)
        per_contact = await dq.attempts_by_destination(conn, campaign_id)
    # Checked against the simulator's own record: each contact's calls were started
    # exactly as many times as the engine made attempts.
    mismatched = sum(1 for dest, n in per_contact if sim.calls_to(dest) != n)
    return Summary(
        wall_seconds=time.monotonic() - began,
        states=counts,
        started=sim.started_count(),
        requests=sim.request_count("service_start"),
        mismatched=mismatched,
        reasons=reasons,
        outcomes=outcomes,
        sources=sources,
        attempts=attempts,
        campaign_state=state,
    )


def _print_summary(s: Summary, out: TextIO) -> None:
    print("", file=out)
    print(f"demo finished: campaign {s.campaign_state}", file=out)
    print(f"  wall time              {s.wall_seconds:.1f} s", file=out)
    print(f"  service_start requests {s.requests}", file=out)
    print(f"  calls started          {s.started} (simulator's record)", file=out)
    print(f"  contacts whose calls at Aculab differ from their attempts: {s.mismatched}", file=out)
    print("  contacts by state", file=out)
    for state, n in sorted(s.states.items(), key=lambda kv: -kv[1]):
        print(f"    {state:<12} {n}", file=out)
    print("  calls by outcome", file=out)
    for cause, n in sorted(s.outcomes.items(), key=lambda kv: -kv[1]):
        print(f"    {cause:<12} {n}", file=out)
    learned = ", ".join(f"{n} by {src}" for src, n in sorted(s.sources.items()))
    print(f"  outcomes learned       {learned}", file=out)
    used = ", ".join(f"{n} with {k}" for k, n in sorted(s.attempts.items()))
    print(f"  contacts by calls made {used}", file=out)
    if s.reasons:
        print("  why contacts were not called", file=out)
        for reason, n in sorted(s.reasons.items(), key=lambda kv: -kv[1]):
            print(f"    {n:>4} x {reason}", file=out)
