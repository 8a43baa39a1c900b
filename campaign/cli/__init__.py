"""The `campaign` command: the parser, and main(), which turns every failure into one line.

Settings are loaded once per command and passed down. Every failure the operator can fix
ends as one line on stderr, never a traceback: exit status 2 for usage, settings and
input errors, 1 for runtime failures (database unreachable, migration failed). An
unexpected exception is one line too, with its traceback at logging.level debug. No
secret is ever printed: every message, log line and traceback is scrubbed of the
secrets the settings hold (see `campaign.redact`).

The handlers live beside this file, grouped by what they manage: `campaigns` (create,
pause/resume/cancel, status, why, plan, export, dashboard), `contacts` (load, suppress),
`batches` (batches, resolve) and `engine` (migrate, run, demo, simulator, check-config);
`common` holds what they share.
"""

from __future__ import annotations

import argparse
import sys
import traceback
from collections.abc import Sequence
from typing import Final, NoReturn

import asyncpg

from campaign.cli import batches, campaigns, contacts, engine
from campaign.cli.common import (
    EXIT_INTERRUPTED,
    EXIT_RUNTIME,
    EXIT_USAGE,
    fail,
    one_line,
    scrubber,
)
from campaign.db import admin
from campaign.db.migrate import MigrationError
from campaign.db.pool import DatabaseUnavailable
from campaign.settings import ConfigError, Settings


class CommandLineParser(argparse.ArgumentParser):
    """argparse with one-line usage errors (the usage text is one --help away)."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: {message} (see {self.prog} --help)\n")


# Commands whose arguments come from modules that bring aiohttp's server side and
# the simulator with them (about 0.3 s to import).
_HEAVY_COMMANDS: Final = frozenset({"demo", "simulator"})


def command_word(argv: Sequence[str]) -> str | None:
    """The command in `argv`, after the global options; None when there is none."""
    words = iter(argv)
    for word in words:
        if len(word) > 2 and "--config".startswith(word):
            next(words, None)  # its value (argparse also takes "--conf" for "--config")
        elif not word.startswith("-"):
            return word
    return None


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The whole command line; given the `command` about to run, the others stay light.

    `demo` and `simulator` define their arguments in their own modules, which are
    only imported when one of them runs (or for help on all commands): every other
    command, `campaign load` among them, starts 0.3 s sooner.
    """
    full = command is None or command in _HEAVY_COMMANDS
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
    # In the order `campaign --help` lists them.
    engine.add_migrate_and_run(commands)
    campaigns.add_create_parser(commands)
    contacts.add_load_parser(commands)
    campaigns.add_state_parsers(commands)
    contacts.add_suppress_parser(commands)
    campaigns.add_export_parser(commands)
    campaigns.add_why_parser(commands)
    campaigns.add_plan_parser(commands)
    campaigns.add_status_parser(commands)
    batches.add_parsers(commands)
    campaigns.add_dashboard_parser(commands)
    engine.add_simulator_and_demo(commands, full=full)
    engine.add_check_config(commands)
    return parser


def crash(args: argparse.Namespace, exc: Exception) -> int:
    """A failure nobody foresaw (a bug, a library failing oddly): one scrubbed line.

    Its message may quote anything the failing code held, a DSN included, so it is
    scrubbed like any other; the traceback (scrubbed too) only at logging.level debug.
    """
    settings: Settings | None = getattr(args, "loaded_settings", None)
    hint = ""
    if settings is not None and settings.logging.level == "debug":
        trace = "".join(traceback.format_exception(exc))
        print(scrubber(args)(trace), file=sys.stderr, end="")
    else:
        hint = " (set logging.level = debug for the traceback)"
    return fail(
        args, f"unexpected error: {type(exc).__name__}: {one_line(exc)}{hint}", EXIT_RUNTIME
    )


def main(argv: Sequence[str] | None = None) -> int:
    words = sys.argv[1:] if argv is None else argv
    args = build_parser(command_word(words)).parse_args(words)
    if not hasattr(args, "handler"):
        # The command word was misread (an unusual spelling of the options):
        # build every command's arguments and read the line again.
        args = build_parser().parse_args(words)
    try:
        result: int = args.handler(args)
    except ConfigError as exc:
        for line in exc.problems:
            print(line, file=sys.stderr)
        return EXIT_USAGE
    except admin.CommandError as exc:
        return fail(args, one_line(exc), EXIT_USAGE)
    except (DatabaseUnavailable, MigrationError) as exc:
        return fail(args, one_line(exc), EXIT_RUNTIME)
    except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError) as exc:
        # The connection broke or the server refused mid-command; transactions rolled back.
        return fail(args, f"database error: {one_line(exc)}", EXIT_RUNTIME)
    except KeyboardInterrupt:
        return fail(args, "interrupted", EXIT_INTERRUPTED)
    except Exception as exc:
        return crash(args, exc)
    return result
