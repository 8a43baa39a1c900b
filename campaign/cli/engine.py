"""Commands that run the engine or prepare for it: migrate, run, demo, simulator, check-config."""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any

from campaign.cli.common import settings_of, setup_logging
from campaign.db.migrate import migrate
from campaign.db.pool import connect, database_dsn
from campaign.settings import Settings


def _migrate(args: argparse.Namespace) -> int:
    settings = settings_of(args)
    setup_logging(settings)
    return asyncio.run(_migrate_async(settings))


async def _migrate_async(settings: Settings) -> int:
    async with database_dsn(settings.database) as dsn:
        # No statement timeout: waiting for the migration lock, or building an index,
        # may take a while.
        conn = await connect(dsn, command_timeout=None)
        try:
            applied = await migrate(conn)
        finally:
            await conn.close()
    if not applied:
        print("database is up to date")
    for name in applied:
        print(f"applied {name}")
    return 0


def _run(args: argparse.Namespace) -> int:
    from campaign.daemon import run_daemon

    settings = settings_of(args)
    # The daemon's JSON lines are its output: stdout.
    setup_logging(settings, stream=sys.stdout)
    return asyncio.run(run_daemon(settings))


def _demo(args: argparse.Namespace) -> int:
    from campaign import demo

    return demo.main(args)


def _check_config(args: argparse.Namespace) -> int:
    settings = settings_of(args)
    print(f"config ok: account_type={settings.aculab.account_type}")
    return 0


def add_migrate_and_run(commands: Any) -> None:
    migrate = commands.add_parser("migrate", help="apply pending database migrations")
    migrate.set_defaults(handler=_migrate)

    run = commands.add_parser("run", help="run the dialing daemon until SIGTERM/SIGINT")
    run.set_defaults(handler=_run)


def add_simulator_and_demo(commands: Any, *, full: bool) -> None:
    """Their arguments come from their own modules, imported only when `full`."""
    sim = commands.add_parser("simulator", help="run the Aculab simulator as an HTTP server")
    demo_parser = commands.add_parser(
        "demo", help="run a sample campaign against the simulator on an embedded database"
    )
    if full:
        from campaign import demo, simulator

        simulator.configure_parser(sim)
        sim.set_defaults(handler=lambda args: simulator.run_from_args(args))
        demo.configure_parser(demo_parser)
        demo_parser.set_defaults(handler=_demo)


def add_check_config(commands: Any) -> None:
    check = commands.add_parser("check-config", help="load the settings and report problems")
    check.set_defaults(handler=_check_config)
