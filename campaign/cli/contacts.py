"""Commands on contacts and the numbers never to call: load, suppress add/remove/load/list."""

from __future__ import annotations

import argparse
import contextlib
import sys
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from campaign import spec, suppressions
from campaign.cli.common import EXIT_USAGE, db_command
from campaign.db import admin
from campaign.loader import load_csv
from campaign.settings import Settings


def _delimiter(value: str) -> str:
    named = {"\\t": "\t", "tab": "\t"}
    return named.get(value, value)


async def _load_file(args: argparse.Namespace, pool: admin.Pool, settings: Settings) -> int:
    from campaign.progress import Progress

    # One updating line on a terminal; nothing at all when stderr is piped or a file.
    progress = Progress.on_terminal("rows read", "refused")
    try:
        result = await load_csv(
            pool,
            args.name,
            Path(args.file),
            delimiter=args.delimiter,
            on_progress=progress.update if progress.shown else None,
            progress_every=1,  # every chunk: the line itself is rewritten at most 4 times a second
            strict=args.strict,
            check=not args.no_check,
        )
    finally:
        progress.finish()
    for refusal in result.refusals:
        print(refusal, file=sys.stderr)
    if result.refused > len(result.refusals):
        print(f"... and {result.refused - len(result.refusals):,} more", file=sys.stderr)
    for warning in result.warnings:
        print(warning, file=sys.stderr)
    if result.never_dialed > len(result.warnings):
        print(f"... and {result.never_dialed - len(result.warnings):,} more", file=sys.stderr)
    never = ", ".join(f"{n:,} {state}" for state, n in result.never.items() if n)
    if not result.committed:
        problems = []
        if result.refused:
            problems.append(f"{result.refused:,} rows refused")
        if result.never_dialed:
            problems.append(f"{result.never_dialed:,} rows would never be dialed: {never}")
        print(
            f"campaign load: nothing loaded (--strict): {'; '.join(problems)} (see above)",
            file=sys.stderr,
        )
        return EXIT_USAGE
    summary = f"loaded {result.loaded:,} rows"
    if result.refused:
        summary += f", refused {result.refused:,} rows"
    if result.never_dialed:
        summary += f"; {result.never_dialed:,} will never be dialed: {never}"
    if result.refused or result.never_dialed:
        summary += " (see above)"
    print(summary)
    if result.loaded and result.campaign_state != "active":
        print(
            f"note: campaign {result.campaign!r} is {result.campaign_state}: "
            f"run `campaign resume {result.campaign}` to dial these contacts",
            file=sys.stderr,
        )
    return 0


def add_load_parser(commands: Any) -> None:
    load = commands.add_parser(
        "load",
        help="load contacts from a CSV file",
        description=(
            "Load contacts from a CSV file whose header names contact columns: destination "
            "(required), caller_id, token, outbound_parameters, extra_sip_headers, timezone, "
            "priority, not_before. Refused rows are listed on stderr; the rest load. "
            "Rows the dispatcher will never dial (impossible, premium-rate or national-format "
            "numbers, numbers on the do-not-call list, the same number twice in the file or "
            "already in the campaign, ...) are loaded, so that they are accounted for as "
            "invalid, suppressed or duplicate, and listed on stderr by line."
        ),
    )
    load.add_argument("name", metavar="NAME")
    load.add_argument("file", metavar="FILE.csv")
    load.add_argument(
        "--strict",
        action="store_true",
        help="load nothing if any row is refused or would never be dialed",
    )
    load.add_argument(
        "--no-check",
        action="store_true",
        help="do not judge the rows by the claim's rules (no warnings about rows that will "
        "never be dialed): about twice as fast for millions of rows; the dispatcher still "
        "judges every contact when it claims it",
    )
    load.add_argument(
        "--delimiter",
        default=",",
        type=_delimiter,
        metavar="CHAR",
        help="field separator (default: ,) - use '\\t' or 'tab' for tabs",
    )
    load.set_defaults(handler=db_command(_load_file))


# --- suppress -------------------------------------------------------------------------------


def _suppress_options(args: argparse.Namespace) -> suppressions.SuppressOptions:
    try:
        return suppressions.SuppressOptions(
            campaign=args.campaign,
            reason=getattr(args, "reason", None),
            default_country=getattr(args, "default_country", None),
        )
    except ValidationError as exc:
        raise admin.InvalidValue(spec.validation_problem(exc)) from None


async def _suppress_add(args: argparse.Namespace, pool: admin.Pool, settings: Settings) -> int:
    options = _suppress_options(args)
    scope = await suppressions.scope_of(pool, options)
    number = suppressions.number_for(args.number, scope)
    added = await admin.add_suppression(pool, number, scope.campaign_id, options.reason)
    if added.added:
        print(f"suppressed {number} for {scope.text}")
    else:
        known = f" (reason: {added.reason})" if added.reason else ""
        print(f"{number} is already suppressed for {scope.text}{known}")
    return 0


async def _suppress_remove(args: argparse.Namespace, pool: admin.Pool, settings: Settings) -> int:
    options = _suppress_options(args)
    scope = await suppressions.scope_of(pool, options)
    number = suppressions.number_for(args.number, scope)
    if await admin.remove_suppression(pool, number, scope.campaign_id):
        print(f"removed {number} from the do-not-call list for {scope.text}")
        return 0
    elsewhere = await admin.suppression_scopes(pool, number)
    hint = ""
    if None in elsewhere:
        hint = " (it is suppressed for every campaign: leave out --campaign)"
    elif elsewhere:
        names = ", ".join(repr(n) for n in elsewhere)
        hint = f" (it is suppressed for campaign {names}: use --campaign)"
    raise admin.CommandError(f"{number} is not suppressed for {scope.text}{hint}")


async def _suppress_list(args: argparse.Namespace, pool: admin.Pool, settings: Settings) -> int:
    options = _suppress_options(args)
    scope = await suppressions.scope_of(pool, options)
    print("destination\tcampaign\treason\tadded_at")
    count = 0
    async with contextlib.aclosing(admin.list_suppressions(pool, scope.campaign_id)) as rows:
        async for row in rows:
            reason = " ".join((row.reason or "").split())
            campaign = "*" if row.campaign is None else row.campaign
            print(f"{row.destination}\t{campaign}\t{reason}\t{row.created_at.isoformat()}")
            count += 1
    where = "" if scope.campaign is None else f" applying to {scope.text}"
    print(f"{count:,} suppressions{where} ('*' = every campaign)", file=sys.stderr)
    return 0


async def _suppress_load(args: argparse.Namespace, pool: admin.Pool, settings: Settings) -> int:
    from campaign.progress import Progress

    options = _suppress_options(args)
    # One updating line on a terminal; nothing at all when stderr is piped or a file.
    progress = Progress.on_terminal("rows read", "refused")
    try:
        result = await suppressions.load_suppressions(
            pool,
            Path(args.file),
            campaign=options.campaign,
            reason=options.reason,
            default_country=options.default_country,
            on_progress=progress.update if progress.shown else None,
        )
    finally:
        progress.finish()
    for refusal in result.refusals:
        print(refusal, file=sys.stderr)
    if result.refused > len(result.refusals):
        print(f"... and {result.refused - len(result.refusals):,} more", file=sys.stderr)
    summary = f"suppressed {result.added:,} numbers for {result.scope}"
    if result.read > result.added:
        summary += f" ({result.read - result.added:,} already suppressed)"
    if result.refused:
        summary += f", refused {result.refused:,} lines (see above)"
    print(summary)
    return 0


def add_suppress_parser(commands: Any) -> None:
    suppress = commands.add_parser(
        "suppress",
        help="manage the do-not-call list (suppressions)",
        description=(
            "Add, remove, load or list do-not-call numbers. Numbers are normalised as the "
            "dispatcher does (international digits, e.g. '+44 1908 273800' -> "
            "441908273800); a national-format number (leading 0) needs --default-country, "
            "or --campaign whose default country is then used. Without --campaign an entry "
            "applies to every campaign. The dispatcher checks the list whenever it claims "
            "contacts, so a number added here is never dialed afterwards; no daemon action "
            "is needed. Removing a number does not revive contacts already marked "
            "`suppressed`."
        ),
    )
    actions = suppress.add_subparsers(dest="suppress_command", metavar="ACTION", required=True)

    def scoped(sub: argparse.ArgumentParser, reason: bool = True) -> None:
        sub.add_argument(
            "--campaign", metavar="NAME", help="only this campaign (default: every campaign)"
        )
        if reason:
            sub.add_argument("--reason", metavar="TEXT", help="why (kept with the entry)")
        sub.add_argument(
            "--default-country",
            metavar="CC",
            help="country of national-format numbers, e.g. GB (default: the campaign's)",
        )

    add = actions.add_parser(
        "add", help="suppress one number", description="Suppress one number (repeats are fine)."
    )
    add.add_argument("number", metavar="NUMBER")
    scoped(add)
    add.set_defaults(handler=db_command(_suppress_add))

    remove = actions.add_parser(
        "remove",
        help="remove one number",
        description="Remove one number from the list, in the scope given by --campaign.",
    )
    remove.add_argument("number", metavar="NUMBER")
    scoped(remove, reason=False)
    remove.set_defaults(handler=db_command(_suppress_remove))

    load = actions.add_parser(
        "load",
        help="suppress every number of a file",
        description=(
            "Suppress every number of FILE, in one transaction. FILE is either one number "
            "per line (blank lines and lines starting with # are skipped), or a "
            "comma-separated CSV file whose first line is a header naming a `destination` "
            "column and optionally a `reason` column (a row's reason, when not empty, wins "
            "over --reason). Lines that are not telephone numbers are listed on stderr as "
            "'line N: reason'; the others load. Numbers already on the list are left as "
            "they are."
        ),
    )
    load.add_argument("file", metavar="FILE")
    scoped(load)
    load.set_defaults(handler=db_command(_suppress_load))

    listing = actions.add_parser(
        "list",
        help="list the suppressions",
        description=(
            "Print the suppressions as tab-separated lines: destination, campaign ('*' = "
            "every campaign), reason, added_at. With --campaign: those that apply to it "
            "(its own and the ones for every campaign)."
        ),
    )
    listing.add_argument("--campaign", metavar="NAME", help="those that apply to this campaign")
    listing.set_defaults(handler=db_command(_suppress_list))
