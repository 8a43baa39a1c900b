"""The do-not-call list: telephone numbers as the dispatcher compares them, and files of them.

`normalise_number` gives the digits the claim compares with `suppressions.destination`.
`load_suppressions` reads a suppression file (one number per line, or a CSV file with a
`destination` column and optionally a `reason` column) and adds every number in one
transaction, reporting the lines that are not telephone numbers, as `loader.py` does
for contact files.
"""

from __future__ import annotations

import asyncio
import csv
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Final, TextIO

from pydantic import AfterValidator, BaseModel, ConfigDict

from campaign import spec
from campaign.db import admin
from campaign.destinations import NATIONAL_NEEDS_REGION, Rejected, parse_destination
from campaign.loader import MAX_REPORTED
from campaign.spec import CleanText


class SuppressFileError(admin.CommandError):
    """The whole suppression file is refused (unreadable, bad header)."""


class SuppressOptions(BaseModel):
    """The options every `campaign suppress` command shares, checked at the boundary."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    campaign: CleanText | None = None
    reason: CleanText | None = None
    default_country: Annotated[CleanText, AfterValidator(spec.country_code)] | None = None


@dataclass(frozen=True)
class Scope:
    campaign_id: int | None
    campaign: str | None
    default_country: str | None

    @property
    def text(self) -> str:
        return "every campaign" if self.campaign is None else f"campaign {self.campaign!r}"


async def scope_of(pool: admin.Pool, options: SuppressOptions) -> Scope:
    """Where the suppression applies, and the country for national-format numbers:
    --default-country, else the campaign's own (as the dispatcher uses for its contacts)."""
    if options.campaign is None:
        return Scope(None, None, options.default_country)
    found = await admin.campaign_country(pool, options.campaign)
    return Scope(found.id, found.name, options.default_country or found.default_country)


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


def number_for(raw: str, scope: Scope) -> str:
    number = normalise_number(raw, scope.default_country)
    if isinstance(number, Rejected):
        raise admin.InvalidValue(f"cannot use {raw.strip()!r}: {number.reason}")
    return number


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
    scope = await scope_of(
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
