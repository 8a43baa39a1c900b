"""Commands on campaigns: create, pause/resume/cancel, status, why, plan, export, dashboard."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from campaign import assumptions, plan, spec, status, why
from campaign.cli.common import (
    EXIT_RUNTIME,
    DbAction,
    database,
    db_command,
    fail,
    one_line,
    port,
    settings_of,
    setup_logging,
)
from campaign.db import admin
from campaign.redact import Scrubber
from campaign.settings import Settings
from campaign.spec import CreateCampaignArgs

# --- create ---------------------------------------------------------------------------


async def _create(args: argparse.Namespace, pool: admin.Pool, settings: Settings) -> int:
    try:
        checked = CreateCampaignArgs(
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
            window_start=args.window_start,
            window_end=args.window_end,
            window_days=args.window_days,
            paused=args.paused,
        )
    except ValidationError as exc:
        raise admin.InvalidValue(spec.validation_problem(exc)) from None
    campaign_id = await admin.create_campaign(pool, checked.to_new_campaign())
    print(campaign_id)
    return 0


def add_create_parser(commands: Any) -> None:
    create = commands.add_parser(
        "create",
        help="create a campaign; prints its id",
        description=(
            "Create a campaign and print its id. Options left out keep the schema's "
            "defaults (see docs/settings.md)."
        ),
    )
    create.add_argument("name", metavar="NAME")
    create.add_argument("--service", required=True, help="the Aculab outbound service name")
    create.add_argument("--caller-id", help="`from` for telephone numbers")
    create.add_argument("--batch-size", type=int, metavar="N", help="contacts per request")
    create.add_argument(
        "--calls-per-second",
        type=float,
        metavar="R",
        help="this campaign's calls per second (> 0, at most 100000), under the account's",
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
    create.add_argument(
        "--window-start",
        metavar="HH:MM",
        help="calling window opens, in each contact's local time (default 09:00)",
    )
    create.add_argument(
        "--window-end",
        metavar="HH:MM",
        help="calling window closes (default 20:00; 24:00 = midnight; before the start: "
        "the window runs past midnight)",
    )
    create.add_argument(
        "--window-days",
        metavar="DAYS",
        help="ISO weekdays the window opens on: 1,2,3,4,5 (1 = Monday) or mon-fri, "
        "mon,wed,fri, weekdays, weekend, all (default all)",
    )
    create.add_argument("--paused", action="store_true", help="create it paused")
    create.set_defaults(handler=db_command(_create))


# --- pause / resume / cancel ----------------------------------------------------------


def _state_command(action: admin.Action) -> DbAction:
    async def change(args: argparse.Namespace, pool: admin.Pool, settings: Settings) -> int:
        result = await admin.change_state(pool, args.name, action, args.reason)
        name = result.campaign.name
        if result.changed:
            line = f"campaign {name!r}: {result.previous} -> {result.campaign.state}"
        else:
            line = f"campaign {name!r} is already {result.campaign.state}"
        if action == "cancel":
            line += f"; {result.contacts_cancelled:,} pending contacts cancelled"
        print(line, flush=True)
        if action == "cancel":
            await _purge_aculab_queue(pool, settings, result.campaign)
        return 0

    return change


async def _purge_aculab_queue(
    pool: admin.Pool, settings: Settings, campaign: admin.CampaignRef
) -> None:
    """After a cancel: empty Aculab's queue for the campaign's service, unless shared.

    Calls still queued at Aculab would start however the database says the campaign
    stands. The cancel itself is already committed (the database is the truth), so a
    purge that fails is a warning with what to do, not a failed command.
    """
    use = await admin.service_use(pool, campaign.id)
    service = use.service_name
    if use.others:
        names = ", ".join(repr(n) for n in use.others)
        print(
            f"not purging Aculab's queue for service {service}: "
            f"also used by active or paused campaign{'s' if len(use.others) > 1 else ''} {names}"
        )
        return
    from campaign.aculab import AculabClient, AculabError

    try:
        async with AculabClient(settings.aculab, settings.http) as client:
            body = await client.purge_queue(service)
    except AculabError as exc:
        # Aculab's own words when it answered; else ours, which say what to set.
        detail = exc.reason if exc.status is not None else one_line(exc)
        detail = Scrubber.from_settings(settings)(detail)
        print(
            f"warning: Aculab's queue for service {service} was not purged ({detail}); "
            "calls already queued there will still start: fix that and run "
            f"`campaign cancel {campaign.name}` again (safe to repeat), "
            "or purge the queue in the Aculab console",
            file=sys.stderr,
        )
        return
    count = body.get(assumptions.PURGE_BODY_KEYS[1]) if isinstance(body, dict) else None
    if isinstance(count, int) and not isinstance(count, bool):
        print(f"purged {count:,} queued calls at Aculab for service {service}")
    else:
        print(f"purged the queued calls at Aculab for service {service} (count not given)")
    # The purged starts are finished at Aculab; the poller records them at once.
    await admin.poll_unfinished_calls_now(pool, campaign.id)


def add_state_parsers(commands: Any) -> None:
    state_commands: tuple[tuple[admin.Action, str, str], ...] = (
        ("pause", "stop dialing a campaign (active -> paused)", ""),
        ("resume", "dial a paused campaign again (paused/completed -> active)", ""),
        (
            "cancel",
            "cancel a campaign and its pending contacts",
            " Then, unless another active or paused campaign uses the same outbound "
            "service, purge Aculab's queue for that service (needs aculab.api_access_key) "
            "so that calls queued there never start. If Aculab cannot be reached the "
            "cancel still holds and a warning says so; repeating the command is safe.",
        ),
    )
    for action, text, more in state_commands:
        sub = commands.add_parser(action, help=text, description=text + "." + more)
        sub.add_argument("name", metavar="NAME")
        sub.add_argument("--reason", metavar="TEXT", help="recorded as the campaign's state_reason")
        sub.set_defaults(handler=db_command(_state_command(action)))


# --- status ---------------------------------------------------------------------------


async def _status(args: argparse.Namespace, pool: admin.Pool, settings: Settings) -> int:
    statuses = await status.gather_status(pool, args.name)
    print(status.render_json(statuses) if args.json else status.render_table(statuses))
    return 0


def add_status_parser(commands: Any) -> None:
    report = commands.add_parser("status", help="contact counts, calls and batches per campaign")
    report.add_argument("name", metavar="NAME", nargs="?", help="one campaign (default: all)")
    report.add_argument("--json", action="store_true", help="one JSON document, for scripts")
    report.set_defaults(handler=db_command(_status))


# --- why ------------------------------------------------------------------------------


async def _why(args: argparse.Namespace, pool: admin.Pool, settings: Settings) -> int:
    report = await why.gather_why(
        pool,
        args.name,
        settings.aculab.calls_per_second,
        # The heartbeat refreshes a daemon's row every lease_seconds / 3.
        alive_within=settings.dispatcher.lease_seconds,
    )
    print(why.render_json(report) if args.json else why.render_text(report))
    return 0


def add_why_parser(commands: Any) -> None:
    explain = commands.add_parser(
        "why",
        help="why a campaign's contacts are not being dialed right now",
        description=(
            "Say what holds a campaign's contacts back right now: the campaign's state, "
            "the calling window, retry delays, not_before, contacts that will never be "
            "dialed, pacing, the concurrency cap, the do-not-call list, parked batches and "
            "batches in flight, with counts and the earliest time each wait ends. Contacts "
            "no daemon has judged yet are judged by the dispatcher's own rules (at most "
            "10,000, the first a daemon would take), so 'due now' counts only the contacts "
            "a daemon would dial now."
        ),
    )
    explain.add_argument("name", metavar="NAME")
    explain.add_argument("--json", action="store_true", help="one JSON document, for scripts")
    explain.set_defaults(handler=db_command(_why))


# --- plan -----------------------------------------------------------------------------


async def _plan(args: argparse.Namespace, pool: admin.Pool, settings: Settings) -> int:
    result = await plan.forecast(pool, args.name, settings)
    print(plan.render_json(result) if args.json else plan.render_text(result))
    return 0


def add_plan_parser(commands: Any) -> None:
    forecast = commands.add_parser(
        "plan",
        help="when a campaign will finish, and what it will do until then",
        description=(
            "Forecast when a campaign will finish and what it will do until then: the "
            "finish time, what holds it back most (pacing, the concurrency cap, calling "
            "windows, retry delays, not_before) and calls and finished contacts hour by "
            "hour. A small simulation of the engine's rules over the open contacts (when "
            "each becomes due, its zones' calling windows), the calls in progress, the "
            "outcome mix and call durations so far, the retry delays, pacing (the "
            "campaign's and the account's calls per second) and the concurrency cap. A "
            "paused campaign is forecast as if resumed now."
        ),
    )
    forecast.add_argument("name", metavar="NAME")
    forecast.add_argument("--json", action="store_true", help="one JSON document, for scripts")
    forecast.set_defaults(handler=db_command(_plan))


# --- export ---------------------------------------------------------------------------


# 128 + SIGPIPE: what a shell reports for a writer whose reader went away (`| head`).
EXIT_BROKEN_PIPE = 141


def _export_handler(args: argparse.Namespace) -> int:
    """Refuse a bad --since or an unwritable --output before starting any database; an
    --output file is only ever the complete export (see export.OutputFile)."""
    from campaign import export

    args.since_moment = None if args.since is None else export.parse_since(args.since)
    if args.spreadsheet and args.format != "csv":
        raise admin.InvalidValue("--spreadsheet applies to --format csv only")
    args.output_file = None if args.output is None else export.OutputFile.create(Path(args.output))
    try:
        return db_command(_export)(args)
    finally:
        if args.output_file is not None:
            args.output_file.discard()


async def _export(args: argparse.Namespace, pool: admin.Pool, settings: Settings) -> int:
    from campaign import export
    from campaign.progress import Progress

    output: export.OutputFile | None = args.output_file
    if output is None:
        sys.stdout.flush()
        out = sys.stdout.buffer
    else:
        out = output.handle
    # Rows going to the terminal are their own progress: a line rewritten under them
    # would only garble them.
    rows_on_terminal = output is None and sys.stdout.isatty()
    progress = Progress(None, "") if rows_on_terminal else Progress.on_terminal("rows written")
    try:
        await export.export_results(
            pool,
            args.name,
            out,
            fmt=args.format,
            since=args.since_moment,
            spreadsheet=args.spreadsheet,
            on_progress=progress.update,
        )
        if output is not None:
            output.commit()
    except BrokenPipeError:
        # Nothing more can reach the reader; stdout is pointed at /dev/null so that
        # the interpreter's last flush at exit does not fail again.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return EXIT_BROKEN_PIPE
    except export.OutputFailed as exc:
        target = "standard output" if output is None else f"{output.path} (left as it was)"
        return fail(args, f"cannot write {target}: {exc}", EXIT_RUNTIME)
    finally:
        progress.finish()
    return 0


def add_export_parser(commands: Any) -> None:
    export = commands.add_parser(
        "export",
        help="write a campaign's results (the contact_results view) as CSV or JSON lines",
        description=(
            "Write one row per contact of campaign NAME from the contact_results view "
            "(see docs/tables.md: contact_results): CSV with a header row of the view's column "
            "names, or JSON lines (one object per line). The destination is written as "
            "loaded, unmasked: the export is your own data for your own CRM. Rows come "
            "oldest change first (updated_at, then contact_id), read by a cursor in "
            "chunks, so memory stays flat for millions of contacts. Progress (rows "
            "written, rate) is shown on stderr when it is a terminal."
        ),
    )
    export.add_argument("name", metavar="NAME")
    export.add_argument(
        "--format", choices=("csv", "jsonl"), default="csv", help="output format (default csv)"
    )
    export.add_argument(
        "--since",
        metavar="TIMESTAMP",
        help="only contacts changed at or after this ISO 8601 time (updated_at >= it), "
        "e.g. 2024-05-01T09:00:00+01:00; without an offset it is UTC",
    )
    export.add_argument(
        "--output",
        metavar="FILE",
        help="write FILE, all or nothing: a failure part way leaves it as it was "
        "(default: standard output)",
    )
    export.add_argument(
        "--spreadsheet",
        action="store_true",
        help="CSV for a spreadsheet: text cells starting with = + - @ get a leading ' so "
        "they are not run as formulas (a CRM import wants the values as they are)",
    )
    export.set_defaults(handler=_export_handler)


# --- dashboard ------------------------------------------------------------------------


def _dashboard(args: argparse.Namespace) -> int:
    from campaign import dashboard

    settings = settings_of(args)
    setup_logging(settings)
    host = settings.dashboard.host if args.host is None else args.host
    port = settings.dashboard.port if args.port is None else args.port
    # Refused before the database is touched: one line, status 2.
    dashboard.check_address(host, settings.dashboard.password.get_secret_value())

    def announce(url: str) -> None:
        guarded = " (password required)" if settings.dashboard.password.get_secret_value() else ""
        print(f"dashboard on {url}{guarded}; read-only; Ctrl-C stops it", flush=True)

    async def run() -> int:
        async with database(settings, "dashboard", dashboard.STATEMENT_TIMEOUT) as pool:
            await dashboard.run(pool, settings, host, port, announce)
        return 0

    try:
        return asyncio.run(run())
    except dashboard.CannotListen as exc:
        return fail(args, str(exc), EXIT_RUNTIME)


def add_dashboard_parser(commands: Any) -> None:
    board = commands.add_parser(
        "dashboard",
        help="a read-only web page of every campaign (and its JSON at /api/status)",
        description=(
            "Serve a read-only web page of every campaign, refreshed every "
            "dashboard.refresh_seconds: state, contacts by state, calls started per minute "
            "over the last hour, outcomes, pacing against the campaign's and the account's "
            "budgets, the concurrency cap, an ETA, the calling window, the reasons `campaign "
            "why` gives, parked batches, and whether Aculab is reachable from the daemons. "
            "Scripts read the same document at /api/status (`campaign status --json` "
            "extended). Anywhere but loopback needs dashboard.password (HTTP Basic, any user "
            "name)."
        ),
    )
    board.add_argument(
        "--host", metavar="H", help="listening address (default dashboard.host, 127.0.0.1)"
    )
    board.add_argument(
        "--port", type=port, metavar="P", help="listening port (default dashboard.port, 8090)"
    )
    board.set_defaults(handler=_dashboard)
