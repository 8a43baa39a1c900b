"""The `campaign` command.

Settings are loaded once here and passed down. Every failure the operator can fix
ends as one line on stderr, never a traceback: exit status 2 for usage, settings and
input errors, 1 for runtime failures (database unreachable, migration failed). An
unexpected exception is one line too, with its traceback at logging.level debug. No
secret is ever printed: every message, log line and traceback is scrubbed of the
secrets the settings hold (see `campaign.redact`).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import csv
import getpass
import json
import os
import shlex
import sys
import traceback
import zoneinfo
from collections.abc import AsyncIterator, Awaitable, Callable, Generator, Iterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Annotated, Any, Final, NoReturn, Self, TextIO

import asyncpg
import phonenumbers
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    model_validator,
)

from campaign import assumptions, plan, status, why
from campaign import batches as batch_output
from campaign.db import admin
from campaign.db import batches as batch_db
from campaign.db.migrate import MigrationError, migrate
from campaign.db.pool import DatabaseUnavailable, connect, database_dsn, open_pool
from campaign.destinations import NATIONAL_NEEDS_REGION, Rejected, parse_destination
from campaign.loader import MAX_REPORTED, load_csv
from campaign.redact import Scrubber, environment_secrets
from campaign.settings import FOLDER_CONFIG, ConfigError, Settings, load_settings

Handler = Callable[[argparse.Namespace], int]
DbAction = Callable[[argparse.Namespace, admin.Pool, Settings], Awaitable[int]]

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
    settings = load_settings(args.config)
    # Kept for main(): whatever fails from here on is scrubbed of these settings' secrets.
    args.loaded_settings = settings
    return settings


def _configure_logging(settings: Settings, stream: TextIO | None = None) -> None:
    from campaign.logs import configure_logging

    configure_logging(
        settings.logging,
        # stdout carries the command's own output (JSON for scripts): logs go to stderr.
        stream=sys.stderr if stream is None else stream,
        secrets=Scrubber.from_settings(settings),
    )


@asynccontextmanager
async def _database(
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
            elsewhere = _folder_settings(settings, command)
            if not elsewhere:
                raise
            raise admin.NotMigrated(exc.missing, elsewhere) from None
        yield pool


def _folder_settings(settings: Settings, command: str) -> str:
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


def _db_command(action: DbAction) -> Handler:
    def handler(args: argparse.Namespace) -> int:
        settings = _load(args)
        _configure_logging(settings)

        async def run() -> int:
            async with _database(settings, args.command) as pool:
                return await action(args, pool, settings)

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


def _run(args: argparse.Namespace) -> int:
    from campaign.daemon import run_daemon

    settings = _load(args)
    # The daemon's JSON lines are its output: stdout.
    _configure_logging(settings, stream=sys.stdout)
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


_WEEKDAYS: Final = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
_DAY_SETS: Final = MappingProxyType(
    {"all": (1, 2, 3, 4, 5, 6, 7), "weekdays": (1, 2, 3, 4, 5), "weekend": (6, 7)}
)


def _clock_time(value: str, *, end: bool) -> str:
    hours, colon, minutes = value.strip().partition(":")
    valid = (
        colon
        and hours.isascii()
        and hours.isdigit()
        and len(hours) <= 2
        and minutes.isascii()
        and minutes.isdigit()
        and len(minutes) == 2
    )
    if valid and (
        (int(hours) < 24 and int(minutes) < 60) or (end and (hours, minutes) == ("24", "00"))
    ):
        return f"{int(hours):02d}:{minutes}"
    latest = "24:00" if end else "23:59"
    raise ValueError(f"{value!r} is not a time of day as HH:MM (00:00-{latest})")


def _window_start(value: str) -> str:
    return _clock_time(value, end=False)


def _window_end(value: str) -> str:
    return _clock_time(value, end=True)


def _weekday(word: str) -> int:
    name = word.strip().lower()
    if name.isascii() and name.isdigit() and 1 <= int(name) <= 7:
        return int(name)
    for number, day in enumerate(_WEEKDAYS, start=1):
        # "mon", "Monday", "wednes": three letters at least, a prefix of the day's name.
        if len(name) >= 3 and day.startswith(name):
            return number
    raise ValueError(f"{word.strip()!r} is not a weekday (1-7 with 1 = Monday, or mon..sun)")


def _window_days(value: Any) -> Any:
    """'1,2,3,4,5', 'mon-fri', 'Mon,Wed,Fri', 'fri-mon', 'weekdays', 'all' -> ISO weekdays."""
    if not isinstance(value, str):
        return value
    days: set[int] = set()
    for part in value.split(","):
        if not part.strip():
            raise ValueError(f"{value!r} has an empty item: list days as 1,2,3 or mon-fri")
        named = _DAY_SETS.get(part.strip().lower())
        if named is not None:
            days.update(named)
            continue
        first, dash, last = part.partition("-")
        start = _weekday(first)
        stop = _weekday(last) if dash else start
        # A range may wrap past Sunday: fri-mon is Fri, Sat, Sun, Mon.
        span = (stop - start) % 7
        days.update((start - 1 + i) % 7 + 1 for i in range(span + 1))
    return sorted(days)


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
    window_start: Annotated[str, AfterValidator(_window_start)] | None = None
    window_end: Annotated[str, AfterValidator(_window_end)] | None = None
    window_days: (
        Annotated[
            list[Annotated[int, Field(ge=1, le=7)]],
            BeforeValidator(_window_days),
            Field(min_length=1),
        ]
        | None
    ) = None
    paused: bool = False

    @model_validator(mode="after")
    def _window_not_empty(self) -> Self:
        if self.window_start is not None and self.window_start == self.window_end:
            raise ValueError(
                "window_start and window_end are equal: the window would be empty "
                "(for any time of day use 00:00-24:00)"
            )
        return self

    def to_new_campaign(self) -> admin.NewCampaign:
        return admin.NewCampaign(**self.model_dump())


def _validation_problem(exc: ValidationError) -> str:
    err = exc.errors(include_url=False, include_input=False)[0]
    field = str(err["loc"][0]) if err["loc"] else ""
    message = str(err["msg"]).removeprefix("Value error, ")
    if not field:
        return message
    where = {"name": "NAME", "service_name": "--service"}.get(field, "--" + field.replace("_", "-"))
    return f"{where}: {message}"


async def _create(args: argparse.Namespace, pool: admin.Pool, settings: Settings) -> int:
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
            window_start=args.window_start,
            window_end=args.window_end,
            window_days=args.window_days,
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


# --- pause / resume / cancel ------------------------------------------------------------------


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
        detail = exc.reason if exc.status is not None else _one_line(exc)
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


# --- suppress -------------------------------------------------------------------------------


class SuppressFileError(admin.CommandError):
    """The whole suppression file is refused (unreadable, bad header)."""


class SuppressOptions(BaseModel):
    """The options every `campaign suppress` command shares, checked at the boundary."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    campaign: CleanText | None = None
    reason: CleanText | None = None
    default_country: Annotated[CleanText, AfterValidator(_country)] | None = None


def _suppress_options(args: argparse.Namespace) -> SuppressOptions:
    try:
        return SuppressOptions(
            campaign=args.campaign,
            reason=getattr(args, "reason", None),
            default_country=getattr(args, "default_country", None),
        )
    except ValidationError as exc:
        raise admin.InvalidValue(_validation_problem(exc)) from None


@dataclass(frozen=True)
class _Scope:
    campaign_id: int | None
    campaign: str | None
    default_country: str | None

    @property
    def text(self) -> str:
        return "every campaign" if self.campaign is None else f"campaign {self.campaign!r}"


async def _scope(pool: admin.Pool, options: SuppressOptions) -> _Scope:
    """Where the suppression applies, and the country for national-format numbers:
    --default-country, else the campaign's own (as the dispatcher uses for its contacts)."""
    if options.campaign is None:
        return _Scope(None, None, options.default_country)
    found = await admin.campaign_country(pool, options.campaign)
    return _Scope(found.id, found.name, options.default_country or found.default_country)


def normalise_number(raw: str, default_country: str | None) -> str | Rejected:
    """The digits the dispatcher compares with `suppressions.destination`, or why not."""
    parsed = parse_destination(raw, default_region=default_country)
    if isinstance(parsed, Rejected):
        if parsed.reason.startswith(NATIONAL_NEEDS_REGION):
            return Rejected(
                parsed.reason.replace("the campaign's default country", "--default-country")
            )
        return parsed
    if parsed.number is None:
        return Rejected(f"not a telephone number (a {parsed.kind} address)")
    return parsed.number


def _number(raw: str, scope: _Scope) -> str:
    number = normalise_number(raw, scope.default_country)
    if isinstance(number, Rejected):
        raise admin.InvalidValue(f"cannot use {raw.strip()!r}: {number.reason}")
    return number


async def _suppress_add(args: argparse.Namespace, pool: admin.Pool, settings: Settings) -> int:
    options = _suppress_options(args)
    scope = await _scope(pool, options)
    number = _number(args.number, scope)
    added = await admin.add_suppression(pool, number, scope.campaign_id, options.reason)
    if added.added:
        print(f"suppressed {number} for {scope.text}")
    else:
        known = f" (reason: {added.reason})" if added.reason else ""
        print(f"{number} is already suppressed for {scope.text}{known}")
    return 0


async def _suppress_remove(args: argparse.Namespace, pool: admin.Pool, settings: Settings) -> int:
    options = _suppress_options(args)
    scope = await _scope(pool, options)
    number = _number(args.number, scope)
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
    scope = await _scope(pool, options)
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


@dataclass
class _Refusals:
    max_reported: int
    shown: list[str] = field(default_factory=list)
    count: int = 0

    def add(self, line: int, reason: str) -> None:
        self.count += 1
        if len(self.shown) < self.max_reported:
            self.shown.append(f"line {line}: {reason}")


SUPPRESS_COLUMNS: Final = ("destination", "reason")
SUPPRESS_CHUNK_ROWS: Final = 5_000


def _suppression_records(
    path: Path, refusals: _Refusals
) -> Generator[tuple[int, str, str | None], None, None]:
    """(line number, destination, reason) per record of a suppression file.

    Either one number per line (blank lines and lines starting with '#' skipped) or
    a CSV file whose first line is a header naming `destination` and optionally
    `reason`. Raises SuppressFileError when the file cannot be read.
    """
    try:
        handle = path.open(encoding="utf-8-sig", errors="surrogateescape", newline="")
    except OSError as exc:
        raise SuppressFileError(f"cannot read {path}: {exc.strerror or exc}") from None
    with handle:
        try:
            yield from _records_of(path, handle, refusals)
        except OSError as exc:
            raise SuppressFileError(f"cannot read {path}: {exc.strerror or exc}") from None


def _records_of(
    path: Path, handle: TextIO, refusals: _Refusals
) -> Generator[tuple[int, str, str | None], None, None]:
    line_no = 0
    for line in handle:
        line_no += 1
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        header = [name.strip().lower() for name in next(csv.reader([text]))]
        if "destination" in header:
            yield from _csv_records(path, handle, header, line_no, refusals)
        else:
            yield line_no, text, None
            yield from _plain_records(handle, line_no)
        return


def _plain_records(
    handle: TextIO, after: int
) -> Generator[tuple[int, str, str | None], None, None]:
    for line_no, line in enumerate(handle, start=after + 1):
        text = line.strip()
        if text and not text.startswith("#"):
            yield line_no, text, None


def _csv_records(
    path: Path, handle: TextIO, header: list[str], header_line: int, refusals: _Refusals
) -> Generator[tuple[int, str, str | None], None, None]:
    for name in header:
        if name not in SUPPRESS_COLUMNS:
            raise SuppressFileError(
                f"{path}: unknown column {name!r} in the header; "
                f"known columns: {', '.join(SUPPRESS_COLUMNS)}"
            )
    if len(set(header)) != len(header):
        raise SuppressFileError(f"{path}: a column appears twice in the header")
    where = header.index("destination")
    why = header.index("reason") if "reason" in header else None
    reader = csv.reader(handle)
    end = header_line
    while True:
        start = end + 1
        try:
            row = next(reader, None)
        except csv.Error as exc:
            raise SuppressFileError(
                f"{path}: line {start}: malformed CSV ({exc}); nothing loaded"
            ) from None
        if row is None:
            return
        end = header_line + reader.line_num
        if not row or not "".join(row).strip():
            continue
        if len(row) != len(header):
            refusals.add(start, f"expected {len(header)} fields, found {len(row)}")
            continue
        reason = row[why].strip() if why is not None else ""
        if reason and ("\x00" in reason or _not_utf8(reason)):
            refusals.add(start, "reason: NUL byte or invalid UTF-8")
            continue
        yield start, row[where], reason or None


def _not_utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _suppression_chunks(
    records: Iterator[tuple[int, str, str | None]],
    default_country: str | None,
    default_reason: str | None,
    refusals: _Refusals,
    chunk_rows: int,
) -> Generator[tuple[list[str], list[str | None]], None, None]:
    """Normalised numbers and their reasons, `chunk_rows` at a time (a worker thread runs it)."""
    numbers: list[str] = []
    reasons: list[str | None] = []
    for line_no, raw, reason in records:
        number = normalise_number(raw, default_country)
        if isinstance(number, Rejected):
            refusals.add(line_no, number.reason)
            continue
        numbers.append(number)
        reasons.append(reason or default_reason)
        if len(numbers) >= chunk_rows:
            yield numbers, reasons
            numbers, reasons = [], []
    if numbers:
        yield numbers, reasons


@dataclass(frozen=True)
class SuppressLoadResult:
    scope: str
    read: int
    """Good numbers read (repeats included)."""
    added: int
    refused: int
    refusals: list[str]


async def load_suppressions(
    pool: admin.Pool,
    path: Path,
    *,
    campaign: str | None = None,
    reason: str | None = None,
    default_country: str | None = None,
    chunk_rows: int = SUPPRESS_CHUNK_ROWS,
    max_reported: int = MAX_REPORTED,
    on_progress: Callable[[int, int], None] | None = None,
) -> SuppressLoadResult:
    """Add every telephone number of `path` to the do-not-call list, in one transaction.

    Lines that are not telephone numbers are refused and reported; the others load.
    Numbers already suppressed (in the file twice, or from before) are left as they are.
    `on_progress(records_read, refused)` is called after each chunk of `chunk_rows`.
    """
    scope = await _scope(
        pool, SuppressOptions(campaign=campaign, reason=reason, default_country=default_country)
    )
    refusals = _Refusals(max_reported)
    chunks = _suppression_chunks(
        _suppression_records(path, refusals), scope.default_country, reason, refusals, chunk_rows
    )
    read = added = 0
    async with pool.acquire() as conn, conn.transaction():
        # Read and normalise chunk n+1 in a thread while chunk n is inserted.
        parsing = asyncio.ensure_future(asyncio.to_thread(next, chunks, None))
        try:
            while (chunk := await parsing) is not None:
                parsing = asyncio.ensure_future(asyncio.to_thread(next, chunks, None))
                numbers, reasons = chunk
                added += await admin.add_suppressions(conn, numbers, reasons, scope.campaign_id)
                read += len(numbers)
                if on_progress is not None:
                    # The refusals may already count some of chunk n+1's: close enough
                    # for a progress line, and exact in the result.
                    on_progress(read + refusals.count, refusals.count)
        finally:
            if not parsing.done():
                await asyncio.wait([parsing])
            if not parsing.cancelled():
                parsing.exception()
            chunks.close()
    return SuppressLoadResult(scope.text, read, added, refusals.count, refusals.shown)


async def _suppress_load(args: argparse.Namespace, pool: admin.Pool, settings: Settings) -> int:
    from campaign.progress import Progress

    options = _suppress_options(args)
    # One updating line on a terminal; nothing at all when stderr is piped or a file.
    progress = Progress.on_terminal("rows read", "refused")
    try:
        result = await load_suppressions(
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


# --- export ---------------------------------------------------------------------------------

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
        return _db_command(_export)(args)
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
        return _fail(args, f"cannot write {target}: {exc}", EXIT_RUNTIME)
    finally:
        progress.finish()
    return 0


# --- why ------------------------------------------------------------------------------------


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


# --- plan -----------------------------------------------------------------------------------


async def _plan(args: argparse.Namespace, pool: admin.Pool, settings: Settings) -> int:
    result = await plan.forecast(pool, args.name, settings)
    print(plan.render_json(result) if args.json else plan.render_text(result))
    return 0


def _add_plan_parser(commands: Any) -> None:
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
    forecast.set_defaults(handler=_db_command(_plan))


# --- status ---------------------------------------------------------------------------------


async def _status(args: argparse.Namespace, pool: admin.Pool, settings: Settings) -> int:
    statuses = await status.gather_status(pool, args.name)
    print(status.render_json(statuses) if args.json else status.render_table(statuses))
    return 0


# --- dashboard ------------------------------------------------------------------------------


def _dashboard(args: argparse.Namespace) -> int:
    from campaign import dashboard

    settings = _load(args)
    _configure_logging(settings)
    host = settings.dashboard.host if args.host is None else args.host
    port = settings.dashboard.port if args.port is None else args.port
    # Refused before the database is touched: one line, status 2.
    dashboard.check_address(host, settings.dashboard.password.get_secret_value())

    def announce(url: str) -> None:
        guarded = " (password required)" if settings.dashboard.password.get_secret_value() else ""
        print(f"dashboard on {url}{guarded}; read-only; Ctrl-C stops it", flush=True)

    async def run() -> int:
        async with _database(settings, "dashboard", dashboard.STATEMENT_TIMEOUT) as pool:
            await dashboard.run(pool, settings, host, port, announce)
        return 0

    try:
        return asyncio.run(run())
    except dashboard.CannotListen as exc:
        return _fail(args, str(exc), EXIT_RUNTIME)


def _add_dashboard_parser(commands: Any) -> None:
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
        "--port", type=_port, metavar="P", help="listening port (default dashboard.port, 8090)"
    )
    board.set_defaults(handler=_dashboard)


def _port(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {value!r}") from None
    if not 0 <= number <= 65535:
        raise argparse.ArgumentTypeError(f"not a port number (0-65535): {value!r}")
    return number


# --- batches and resolve ------------------------------------------------------------------


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


def _resolve_action(args: argparse.Namespace) -> batch_db.ResolveAction:
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
            args.reason = _clean_text(args.reason).strip() or None
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
    return _db_command(_resolve)(args)


def _positive_int(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {value!r}") from None
    if number < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1: {value!r}")
    return number


def _batch_id(value: str) -> int:
    number = _positive_int(value)
    if number >= 2**63:
        raise argparse.ArgumentTypeError(f"not a batch id: {value!r}")
    return number


# --- the parser -----------------------------------------------------------------------------


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
    create.set_defaults(handler=_db_command(_create))

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
    load.set_defaults(handler=_db_command(_load_file))

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
        sub.set_defaults(handler=_db_command(_state_command(action)))

    _add_suppress_parser(commands)
    _add_export_parser(commands)

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
    explain.set_defaults(handler=_db_command(_why))

    _add_plan_parser(commands)

    report = commands.add_parser("status", help="contact counts, calls and batches per campaign")
    report.add_argument("name", metavar="NAME", nargs="?", help="one campaign (default: all)")
    report.add_argument("--json", action="store_true", help="one JSON document, for scripts")
    report.set_defaults(handler=_db_command(_status))

    _add_batch_parsers(commands)
    _add_dashboard_parser(commands)

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

    check = commands.add_parser("check-config", help="load the settings and report problems")
    check.set_defaults(handler=_check_config)
    return parser


def _add_batch_parsers(commands: Any) -> None:
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
        "--limit", type=_positive_int, default=100, metavar="N", help="at most N rows (100)"
    )
    listing.add_argument(
        "--json", action="store_true", help="one JSON document (a list), last errors whole"
    )
    listing.set_defaults(handler=_db_command(_batches))

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


def _add_suppress_parser(commands: Any) -> None:
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
    add.set_defaults(handler=_db_command(_suppress_add))

    remove = actions.add_parser(
        "remove",
        help="remove one number",
        description="Remove one number from the list, in the scope given by --campaign.",
    )
    remove.add_argument("number", metavar="NUMBER")
    scoped(remove, reason=False)
    remove.set_defaults(handler=_db_command(_suppress_remove))

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
    load.set_defaults(handler=_db_command(_suppress_load))

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
    listing.set_defaults(handler=_db_command(_suppress_list))


def _add_export_parser(commands: Any) -> None:
    export = commands.add_parser(
        "export",
        help="write a campaign's results (the contact_results view) as CSV or JSON lines",
        description=(
            "Write one row per contact of campaign NAME from the contact_results view "
            "(see README: Taking results out): CSV with a header row of the view's column "
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


def _scrubber(args: argparse.Namespace) -> Scrubber:
    settings: Settings | None = getattr(args, "loaded_settings", None)
    if settings is None:  # failed before the settings were loaded: only PGPASSWORD is known
        return Scrubber(environment_secrets())
    return Scrubber.from_settings(settings)


def _fail(args: argparse.Namespace, message: str, code: int) -> int:
    print(f"campaign {args.command}: {_scrubber(args)(message)}", file=sys.stderr)
    return code


def _crash(args: argparse.Namespace, exc: Exception) -> int:
    """A failure nobody foresaw (a bug, a library failing oddly): one scrubbed line.

    Its message may quote anything the failing code held, a DSN included, so it is
    scrubbed like any other; the traceback (scrubbed too) only at logging.level debug.
    """
    settings: Settings | None = getattr(args, "loaded_settings", None)
    hint = ""
    if settings is not None and settings.logging.level == "debug":
        trace = "".join(traceback.format_exception(exc))
        print(_scrubber(args)(trace), file=sys.stderr, end="")
    else:
        hint = " (set logging.level = debug for the traceback)"
    return _fail(
        args, f"unexpected error: {type(exc).__name__}: {_one_line(exc)}{hint}", EXIT_RUNTIME
    )


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


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
        return _fail(args, _one_line(exc), EXIT_USAGE)
    except (DatabaseUnavailable, MigrationError) as exc:
        return _fail(args, _one_line(exc), EXIT_RUNTIME)
    except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError) as exc:
        # The connection broke or the server refused mid-command; transactions rolled back.
        return _fail(args, f"database error: {_one_line(exc)}", EXIT_RUNTIME)
    except KeyboardInterrupt:
        return _fail(args, "interrupted", EXIT_INTERRUPTED)
    except Exception as exc:
        return _crash(args, exc)
    return result
