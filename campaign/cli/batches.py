"""Commands on batches (one service_start request each): list them, settle a parked one."""

from __future__ import annotations

import argparse
import getpass
import os
from typing import Any

from campaign import batches as batch_output
from campaign import spec
from campaign.cli.common import db_command, positive_int
from campaign.db import admin
from campaign.db import batches as batch_db
from campaign.settings import Settings
from campaign.vocabulary import ResolveAction


async def _batches(args: argparse.Namespace, pool: admin.Pool, settings: Settings) -> int:
    which: batch_db.Listing = "all" if args.all else "parked" if args.parked else "open"
    listing = await batch_db.list_batches(pool, campaign=args.name, listing=which, limit=args.limit)
    if args.json:
        print(batch_output.render_json(listing))
    else:
        print(batch_output.render_table(listing, which, args.name, args.limit))
    return 0


def operator_name() -> str:
    """Who resolved a batch: the OS user running the command."""
    try:
        return getpass.getuser()
    except (OSError, KeyError):
        # No login name in the environment and none in the password database (a
        # container running under an arbitrary uid): the uid still says who it was.
        return f"uid {os.getuid()}" if hasattr(os, "getuid") else "unknown"


def _resolve_action(args: argparse.Namespace) -> ResolveAction:
    if args.resend:
        return "resend"
    return "not_started" if args.not_started else "failed"


def _check_resolve(args: argparse.Namespace) -> None:
    """Refuse a malformed `campaign resolve` before connecting to anything."""
    action = _resolve_action(args)
    if args.force and action != "resend":
        raise admin.InvalidValue("--force only applies to --resend")
    if args.reason is not None:
        try:
            args.reason = spec.clean_text(args.reason).strip() or None
        except ValueError as exc:
            raise admin.InvalidValue(f"--reason {exc}") from None
    if action == "failed" and args.reason is None:
        raise batch_db.ReasonRequired(
            "--failed needs --reason TEXT: it becomes the contacts' last_error"
        )


async def _resolve(args: argparse.Namespace, pool: admin.Pool, settings: Settings) -> int:
    from campaign.logs import get_logger

    result = await batch_db.resolve_batch(
        pool,
        args.batch_id,
        _resolve_action(args),
        reason=args.reason,
        resolved_by=operator_name(),
        idempotency_window_seconds=settings.dispatcher.idempotency_window_seconds,
        force=args.force,
    )
    print(batch_output.resolution_line(result), flush=True)
    # A forced re-send is the one choice that may start calls twice: make it stand out.
    level = "warning" if result.forced else "info"
    getattr(get_logger("campaign.resolve"), level)(
        "batch_resolved",
        batch_id=result.batch_id,
        campaign_id=result.campaign_id,
        campaign=result.campaign,
        unique_id=result.unique_id,
        action=result.action,
        contacts=result.contacts,
        contacts_state=result.contacts_state,
        reason=result.reason,
        resolved_by=result.resolved_by,
        in_doubt=result.in_doubt,
        forced=result.forced,
    )
    return 0


def _resolve_handler(args: argparse.Namespace) -> int:
    _check_resolve(args)
    return db_command(_resolve)(args)


def _batch_id(value: str) -> int:
    number = positive_int(value)
    if number >= 2**63:
        raise argparse.ArgumentTypeError(f"not a batch id: {value!r}")
    return number


def add_parsers(commands: Any) -> None:
    listing = commands.add_parser(
        "batches",
        help="list batches: the open ones (pending or parked) by default",
        description=(
            "List batches (one service_start request each) with their id, campaign, "
            "unique_id, age, sends, state, whether a send may have started calls at Aculab "
            "(in_doubt), last error and number of contacts. By default the open ones "
            "(pending: being sent; parked: waiting for `campaign resolve`), oldest first."
        ),
    )
    listing.add_argument("name", metavar="NAME", nargs="?", help="one campaign (default: all)")
    which = listing.add_mutually_exclusive_group()
    which.add_argument("--parked", action="store_true", help="only parked batches")
    which.add_argument("--all", action="store_true", help="every state, newest first")
    listing.add_argument(
        "--limit", type=positive_int, default=100, metavar="N", help="at most N rows (100)"
    )
    listing.add_argument(
        "--json", action="store_true", help="one JSON document (a list), last errors whole"
    )
    listing.set_defaults(handler=db_command(_batches))

    resolve = commands.add_parser(
        "resolve",
        help="settle a parked batch: re-send it, release its contacts or fail them",
        description=(
            "Settle a parked batch once you have asked Aculab whether its unique_id started "
            "calls. --resend: give it back to the daemons, same bytes and same unique_id "
            "(safe while Aculab remembers the id: if the calls started, Aculab answers with "
            "their references and nothing is dialed twice); refused once the batch is so old "
            "that a re-send could outlive that memory, unless --force. --not-started: "
            "Aculab started nothing for it; its contacts go back to pending with no attempt "
            "used. --failed --reason TEXT: mark its contacts failed. Recorded in "
            "batch_resolutions with your user name."
        ),
    )
    resolve.add_argument(
        "batch_id", type=_batch_id, metavar="BATCH_ID", help="see `campaign batches --parked`"
    )
    how = resolve.add_mutually_exclusive_group(required=True)
    how.add_argument("--resend", action="store_true", help="send it again with the same unique_id")
    how.add_argument(
        "--not-started",
        action="store_true",
        help="Aculab started no call for it: its contacts go back to pending",
    )
    how.add_argument("--failed", action="store_true", help="its contacts become failed")
    resolve.add_argument(
        "--force",
        action="store_true",
        help="with --resend: re-send even a batch old enough to outlive Aculab's memory of "
        "its unique_id",
    )
    resolve.add_argument("--reason", metavar="TEXT", help="why (required with --failed); recorded")
    resolve.set_defaults(handler=_resolve_handler)
