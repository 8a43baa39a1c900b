"""What every command handler shares: settings loaded once, logging, the database, failures.

Settings are loaded once per command and passed down. Every failure the operator can fix
ends as one line on stderr (see `fail`), scrubbed of the secrets the settings hold.
"""

from __future__ import annotations

import argparse
import asyncio
import shlex
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import TextIO

from campaign.db import admin
from campaign.db.pool import database_dsn, open_pool
from campaign.redact import Scrubber, environment_secrets
from campaign.settings import FOLDER_CONFIG, Settings, load_settings

Handler = Callable[[argparse.Namespace], int]
DbAction = Callable[[argparse.Namespace, admin.Pool, Settings], Awaitable[int]]

EXIT_RUNTIME = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


def settings_of(args: argparse.Namespace) -> Settings:
    settings = load_settings(args.config)
    # Kept for main(): whatever fails from here on is scrubbed of these settings' secrets.
    args.loaded_settings = settings
    return settings


def setup_logging(settings: Settings, stream: TextIO | None = None) -> None:
    from campaign.logs import configure_logging

    configure_logging(
        settings.logging,
        # stdout carries the command's own output (JSON for scripts): logs go to stderr.
        stream=sys.stderr if stream is None else stream,
        secrets=Scrubber.from_settings(settings),
    )


@asynccontextmanager
async def database(
    settings: Settings, command: str = "", command_timeout: float | None = None
) -> AsyncIterator[admin.Pool]:
    """A small pool on the configured (or embedded) database, checked to be migrated."""
    async with (
        database_dsn(settings.database) as dsn,
        # No statement timeout by default: an operator command may rightly run long (a
        # COPY of millions of rows, cancelling millions of contacts); Ctrl-C stops it.
        open_pool(dsn, min_size=1, max_size=2, command_timeout=command_timeout) as pool,
    ):
        try:
            await admin.require_migrated(pool)
        except admin.NotMigrated as exc:
            elsewhere = folder_settings(settings, command)
            if not elsewhere:
                raise
            raise admin.NotMigrated(exc.missing, elsewhere) from None
        yield pool


def folder_settings(settings: Settings, command: str) -> str:
    """When the embedded data folder carries its own settings file (the demo's does) and
    they were not used: the command that uses them, since the data is in another database."""
    db = settings.database
    config = db.data_dir / FOLDER_CONFIG
    if db.dsn.get_secret_value() or db.embedded_database or not config.is_file():
        return ""
    return (
        f"the data in {db.data_dir} is read with "
        f"`campaign --config {shlex.quote(str(config))} {command or '...'}`"
    )


def db_command(action: DbAction) -> Handler:
    def handler(args: argparse.Namespace) -> int:
        settings = settings_of(args)
        setup_logging(settings)

        async def run() -> int:
            async with database(settings, args.command) as pool:
                return await action(args, pool, settings)

        return asyncio.run(run())

    return handler


def scrubber(args: argparse.Namespace) -> Scrubber:
    settings: Settings | None = getattr(args, "loaded_settings", None)
    if settings is None:  # failed before the settings were loaded: only PGPASSWORD is known
        return Scrubber(environment_secrets())
    return Scrubber.from_settings(settings)


def fail(args: argparse.Namespace, message: str, code: int) -> int:
    print(f"campaign {args.command}: {scrubber(args)(message)}", file=sys.stderr)
    return code


def one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def positive_int(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {value!r}") from None
    if number < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1: {value!r}")
    return number


def port(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {value!r}") from None
    if not 0 <= number <= 65535:
        raise argparse.ArgumentTypeError(f"not a port number (0-65535): {value!r}")
    return number
