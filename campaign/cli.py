"""The `campaign` command.

Settings are loaded once here and passed down. Every failure the operator can fix
ends as one line on stderr, never a traceback: exit status 2 for usage, settings and
input errors, 1 for runtime failures (database unreachable, migration failed).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
import zoneinfo
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Any, NoReturn

import asyncpg
import phonenumbers
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
)

from campaign import status
from campaign.db import admin
from campaign.db.migrate import MigrationError, migrate
from campaign.db.pool import DatabaseUnavailable, connect, database_dsn, open_pool
from campaign.loader import load_csv
from campaign.settings import ConfigError, Settings, load_settings

Handler = Callable[[argparse.Namespace], int]
DbAction = Callable[[argparse.Namespace, admin.Pool], Awaitable[int]]

EXIT_RUNTIME = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130

# Call causes a campaign may retry (aculab-api.md §5, plus the engine's `unknown` for
# a call whose outcome never arrived). Answered calls (`completed`, `hung_up`) are
# never retried, so naming them is a mistake worth reporting, like a typo.
RETRYABLE_CAUSES = frozenset({"busy", "no_answer", "unobtainable", "dropped", "failed", "unknown"})


class CommandLineParser(argparse.ArgumentParser):
    """argparse with one-line usage errors (the usage text is one --help away)."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: {message} (see {self.prog} --help)\n")


# --- settings and database ----------------------------------------------------------------


def _load(args: argparse.Namespace) -> Settings:
    return load_settings(args.config)


def _configure_logging(settings: Settings) -> None:
    from campaign.logs import configure_logging

    # stdout carries the command's own output (JSON for scripts): logs go to stderr.
    configure_logging(settings.logging, stream=sys.stderr)


@asynccontextmanager
async def _database(settings: Settings) -> AsyncIterator[admin.Pool]:
    """A small pool on the configured (or embedded) database, checked to be migrated."""
    async with (
        database_dsn(settings.database) as dsn,
        # No statement timeout: an operator command may rightly run long (a COPY of
        # millions of rows, cancelling millions of contacts); Ctrl-C stops it.
        open_pool(dsn, min_size=1, max_size=2, command_timeout=None) as pool,
    ):
        await admin.require_migrated(pool)
        yield pool


def _db_command(action: DbAction) -> Handler:
    def handler(args: argparse.Namespace) -> int:
        settings = _load(args)
        _configure_logging(settings)

        async def run() -> int:
            async with _database(settings) as pool:
                return await action(args, pool)

        return asyncio.run(run())

    return handler


# --- migrate, run, demo, check-config --------------------------------------------------------


def _migrate(args: argparse.Namespace) -> int:
    settings = _load(args)
    _configure_logging(settings)
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


def _stop_before_start(signum: int, frame: object) -> None:
    # SIGTERM while still importing and connecting: nothing is claimed yet, so
    # stopping is clean. The daemon installs its own handlers once running.
    raise SystemExit(0)


def _run(args: argparse.Namespace) -> int:
    signal.signal(signal.SIGTERM, _stop_before_start)
    from campaign.daemon import run_daemon
    from campaign.logs import configure_logging

    settings = _load(args)
    configure_logging(settings.logging)
    return asyncio.run(run_daemon(settings))


def _demo(args: argparse.Namespace) -> int:
    from campaign import demo

    return demo.main(args)


def _check_config(args: argparse.Namespace) -> int:
    settings = _load(args)
    print(f"config ok: account_type={settings.aculab.account_type}")
    return 0


# --- create ---------------------------------------------------------------------------------


def _clean_text(value: str) -> str:
    if "\x00" in value:
        raise ValueError("contains a NUL character")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("is not valid UTF-8") from None
    return value


def _retry_delays(value: Any) -> Any:
    if not isinstance(value, str):
        return value
    try:
        return json.loads(value)
    except ValueError as exc:
        raise ValueError(f"not valid JSON: {exc}") from None


def _known_causes(value: dict[str, float]) -> dict[str, float]:
    unknown = sorted(set(value) - RETRYABLE_CAUSES)
    if unknown:
        raise ValueError(
            f"unknown call cause {', '.join(map(repr, unknown))} "
            f"(retryable causes: {', '.join(sorted(RETRYABLE_CAUSES))})"
        )
    return value


def _country(value: str) -> str:
    code = value.strip().upper()
    if phonenumbers.country_code_for_region(code) == 0:
        raise ValueError(f"{value!r} is not a region code phonenumbers knows (e.g. GB, US)")
    return code


def _zone(value: str) -> str:
    try:
        zoneinfo.ZoneInfo(value)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError, OSError):
        raise ValueError(f"{value!r} is not an IANA time zone (e.g. Europe/London)") from None
    return value


CleanText = Annotated[str, AfterValidator(_clean_text)]
Int4 = Annotated[int, Field(ge=-(2**31), le=2**31 - 1)]
Delay = Annotated[float, Field(ge=0, allow_inf_nan=False)]


class CreateCampaignArgs(BaseModel):
    """`campaign create` arguments, checked for shape; the schema's CHECKs judge ranges."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=False)

    name: CleanText
    service_name: CleanText
    caller_id: CleanText | None = None
    batch_size: Int4 | None = None
    calls_per_second: Annotated[float, Field(allow_inf_nan=False)] | None = None
    max_concurrent_calls: Int4 | None = None
    max_attempts: Int4 | None = None
    retry_delays: (
        Annotated[dict[str, Delay], BeforeValidator(_retry_delays), AfterValidator(_known_causes)]
        | None
    ) = None
    default_country: Annotated[CleanText, AfterValidator(_country)] | None = None
    default_timezone: Annotated[CleanText, AfterValidator(_zone)] | None = None
    priority: Int4 | None = None
    paused: bool = False

    def to_new_campaign(self) -> admin.NewCampaign:
        return admin.NewCampaign(**self.model_dump())


def _validation_problem(exc: ValidationError) -> str:
    err = exc.errors(include_url=False, include_input=False)[0]
    field = str(err["loc"][0]) if err["loc"] else ""
    where = {"name": "NAME", "service_name": "--service"}.get(field, "--" + field.replace("_", "-"))
    message = str(err["msg"]).removeprefix("Value error, ")
    return f"{where}: {message}"


async def _create(args: argparse.Namespace, pool: admin.Pool) -> int:
    try:
        spec = CreateCampaignArgs(
            name=args.name,
            service_name=args.service,
            caller_id=args.caller_id,
            batch_size=args.batch_size,
            calls_per_second=args.calls_per_second,
            max_concurrent_calls=args.max_concurrent_calls,
            max_attempts=args.max_attempts,
            retry_delays=args.retry_delays,
            default_country=args.default_country,
            default_timezone=args.default_timezone,
            priority=args.priority,
            paused=args.paused,
        )
    except ValidationError as exc:
        raise admin.InvalidValue(_validation_problem(exc)) from None
    campaign_id = await admin.create_campaign(pool, spec.to_new_campaign())
    print(campaign_id)
    return 0


# --- load -----------------------------------------------------------------------------------


def _delimiter(value: str) -> str:
    named = {"\\t": "\t", "tab": "\t"}
    return named.get(value, value)


async def _load_file(args: argparse.Namespace, pool: admin.Pool) -> int:
    def progress(records: int) -> None:
        print(f"{records:,} rows read", file=sys.stderr, flush=True)

    result = await load_csv(
        pool, args.name, Path(args.file), delimiter=args.delimiter, on_progress=progress
    )
    for refusal in result.refusals:
        print(refusal, file=sys.stderr)
    if result.refused > len(result.refusals):
        print(f"... and {result.refused - len(result.refusals):,} more", file=sys.stderr)
    summary = f"loaded {result.loaded:,} rows"
    if result.refused:
        summary += f", refused {result.refused:,} rows (see above)"
    print(summary)
    if result.loaded and result.campaign_state != "active":
        print(
            f"note: campaign {result.campaign!r} is {result.campaign_state}: "
            f"run `campaign resume {result.campaign}` to dial these contacts",
            file=sys.stderr,
        )
    return 0


# --- pause / resume / cancel ------------------------------------------------------------------


def _state_command(action: admin.Action) -> DbAction:
    async def change(args: argparse.Namespace, pool: admin.Pool) -> int:
        result = await admin.change_state(pool, args.name, action, args.reason)
        name = result.campaign.name
        if result.changed:
            line = f"campaign {name!r}: {result.previous} -> {result.campaign.state}"
        else:
            line = f"campaign {name!r} is already {result.campaign.state}"
        if action == "cancel":
            line += f"; {result.contacts_cancelled:,} pending contacts cancelled"
        print(line)
        return 0

    return change


# --- status ---------------------------------------------------------------------------------


async def _status(args: argparse.Namespace, pool: admin.Pool) -> int:
    statuses = await status.gather_status(pool, args.name)
    print(status.render_json(statuses) if args.json else status.render_table(statuses))
    return 0


# --- the parser -----------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    from campaign import demo, simulator

    parser = CommandLineParser(
        prog="campaign",
        description="Bulk-dialing campaign engine for Aculab Cloud.",
    )
    parser.add_argument(
        "--config",
        metavar="PATH",
        default=None,
        help="TOML settings file (default: $CAMPAIGN_CONFIG, else built-in defaults)",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    migrate = commands.add_parser("migrate", help="apply pending database migrations")
    migrate.set_defaults(handler=_migrate)

    run = commands.add_parser("run", help="run the dialing daemon until SIGTERM/SIGINT")
    run.set_defaults(handler=_run)

    create = commands.add_parser(
        "create",
        help="create a campaign; prints its id",
        description=(
            "Create a campaign and print its id. Options left out keep the schema's "
            "defaults (see README)."
        ),
    )
    create.add_argument("name", metavar="NAME")
    create.add_argument("--service", required=True, help="the Aculab outbound service name")
    create.add_argument("--caller-id", help="`from` for telephone numbers")
    create.add_argument("--batch-size", type=int, metavar="N", help="contacts per request")
    create.add_argument(
        "--calls-per-second", type=float, metavar="R", help="this campaign's cap (1-10000)"
    )
    create.add_argument("--max-concurrent-calls", type=int, metavar="N")
    create.add_argument("--max-attempts", type=int, metavar="N", help="attempts per contact")
    create.add_argument(
        "--retry-delays",
        metavar="JSON",
        help='seconds before a retry, per call cause, e.g. \'{"busy": 600, "no_answer": 1800}\'',
    )
    create.add_argument("--default-country", metavar="CC", help="region for national numbers")
    create.add_argument("--default-timezone", metavar="TZ", help="IANA zone, e.g. Europe/London")
    create.add_argument("--priority", type=int, metavar="N", help="higher is dialed first")
    create.add_argument("--paused", action="store_true", help="create it paused")
    create.set_defaults(handler=_db_command(_create))

    load = commands.add_parser(
        "load",
        help="load contacts from a CSV file",
        description=(
            "Load contacts from a CSV file whose header names contact columns: destination "
            "(required), caller_id, token, outbound_parameters, extra_sip_headers, timezone, "
            "priority, not_before. Refused rows are listed on stderr; the rest load."
        ),
    )
    load.add_argument("name", metavar="NAME")
    load.add_argument("file", metavar="FILE.csv")
    load.add_argument(
        "--delimiter",
        default=",",
        type=_delimiter,
        metavar="CHAR",
        help="field separator (default: ,) - use '\\t' or 'tab' for tabs",
    )
    load.set_defaults(handler=_db_command(_load_file))

    state_commands: tuple[tuple[admin.Action, str], ...] = (
        ("pause", "stop dialing a campaign (active -> paused)"),
        ("resume", "dial a paused campaign again (paused/completed -> active)"),
        ("cancel", "cancel a campaign and its pending contacts"),
    )
    for action, text in state_commands:
        sub = commands.add_parser(action, help=text, description=text)
        sub.add_argument("name", metavar="NAME")
        sub.add_argument("--reason", metavar="TEXT", help="recorded as the campaign's state_reason")
        sub.set_defaults(handler=_db_command(_state_command(action)))

    report = commands.add_parser("status", help="contact counts, calls and batches per campaign")
    report.add_argument("name", metavar="NAME", nargs="?", help="one campaign (default: all)")
    report.add_argument("--json", action="store_true", help="one JSON document, for scripts")
    report.set_defaults(handler=_db_command(_status))

    sim = commands.add_parser("simulator", help="run the Aculab simulator as an HTTP server")
    simulator.configure_parser(sim)
    sim.set_defaults(handler=lambda args: simulator.run_from_args(args))

    demo_parser = commands.add_parser(
        "demo", help="run a sample campaign against the simulator on an embedded database"
    )
    demo.configure_parser(demo_parser)
    demo_parser.set_defaults(handler=_demo)

    check = commands.add_parser("check-config", help="load the settings and report problems")
    check.set_defaults(handler=_check_config)
    return parser


def _fail(args: argparse.Namespace, message: str, code: int) -> int:
    print(f"campaign {args.command}: {message}", file=sys.stderr)
    return code


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        result: int = args.handler(args)
    except ConfigError as exc:
        for line in exc.problems:
            print(line, file=sys.stderr)
        return EXIT_USAGE
    except admin.CommandError as exc:
        return _fail(args, _one_line(exc), EXIT_USAGE)
    except (DatabaseUnavailable, MigrationError) as exc:
        return _fail(args, _one_line(exc), EXIT_RUNTIME)
    except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError) as exc:
        # The connection broke or the server refused mid-command; transactions rolled back.
        return _fail(args, f"database error: {_one_line(exc)}", EXIT_RUNTIME)
    except KeyboardInterrupt:
        return _fail(args, "interrupted", EXIT_INTERRUPTED)
    return result
