"""`campaign export`: a campaign's rows of `contact_results`, as CSV or JSON lines.

The rows are read by a server-side cursor a chunk at a time, PostgreSQL making each
line (see campaign.db.results), and each chunk is written as the next is fetched:
memory stays the same for ten contacts or ten million.

Values are the operator's own data going back to their own CRM, so they are written
as stored: the destination unmasked (logs mask it; an export must not), a token
verbatim. Formats:

- CSV: a header row of the view's column names, then one row per contact (RFC 4180,
  CRLF line ends). Text is always quoted, numbers and times never: an empty field
  is NULL, "" an empty text. Times are ISO 8601 with their offset, in UTC;
  `references` is a JSON array of strings.
- JSONL: one JSON object per line, keyed by the same names; NULL is null, times
  ISO 8601 strings, `references` a list.

Spreadsheets: a CSV cell starting with = + - @ is run as a formula by Excel,
LibreOffice and Google Sheets ("CSV injection"). A CRM import reads it as text, and
destinations rightly start with '+', so by default nothing is changed; `spreadsheet`
(`--spreadsheet`) prefixes such text cells with an apostrophe, which spreadsheets
read as "this is text" and do not show.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO, Final, Literal

from campaign.db import admin
from campaign.db import results as rdb

Format = Literal["csv", "jsonl"]
FORMATS: Final[tuple[Format, ...]] = ("csv", "jsonl")

CHUNK_ROWS: Final = 2_000
"""Rows per cursor fetch: large enough that a fetch's round trip is noise, small
enough that a chunk (a few hundred kB) is nothing next to the interpreter itself."""


class ExportError(admin.CommandError):
    """The export cannot start (a bad --since, an unwritable --output)."""


class OutputFailed(Exception):
    """Writing the output failed part way; the target file was left as it was."""


# --- --since ----------------------------------------------------------------------------


def parse_since(text: str) -> datetime:
    """An ISO 8601 timestamp (or date); one without an offset is UTC, like `not_before`
    in `campaign load`: the same words mean the same moment on every machine."""
    value = text.strip()
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise ExportError(
            f"--since: not an ISO 8601 timestamp: {value!r} "
            "(e.g. 2024-05-01T09:00:00+01:00, or 2024-05-01T08:00 for UTC)"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    try:
        return moment.astimezone(UTC)
    except OverflowError:
        raise ExportError(f"--since: out of range: {value!r}") from None


# --- formats ----------------------------------------------------------------------------


@dataclass(frozen=True)
class _Layout:
    query: rdb.ExportQuery
    header: bytes
    line_end: str


def _layout(fmt: Format, spreadsheet: bool) -> _Layout:
    """PostgreSQL makes each line (see campaign.db.results); what is left is the header
    and the line ends: CRLF for CSV (RFC 4180), LF for JSON lines."""
    if fmt == "jsonl":
        return _Layout("jsonl", b"", "\n")
    # The column names are plain words: nothing to quote.
    header = (",".join(rdb.RESULT_COLUMNS) + "\r\n").encode("ascii")
    return _Layout("csv_spreadsheet" if spreadsheet else "csv", header, "\r\n")


# --- the output -------------------------------------------------------------------------


@dataclass
class OutputFile:
    """--output FILE written all or nothing: rows go to a temporary file beside it,
    renamed over FILE only once the last row is written and on disk. A failure part
    way leaves FILE as it was (absent, or the previous export) and removes the
    temporary file; a process killed outright leaves `.FILE.*.part`, never FILE.

    The file is created readable by its owner only: it holds telephone numbers.
    """

    path: Path
    temporary: Path
    handle: BinaryIO
    committed: bool = False

    @classmethod
    def create(cls, path: Path) -> OutputFile:
        """Raises ExportError when FILE cannot be written (its folder is missing or not
        writable, FILE is a folder or read-only): checked before any work is done."""
        if path.is_dir():
            raise ExportError(f"--output {path}: is a directory")
        if path.exists() and not os.access(path, os.W_OK):
            raise ExportError(f"--output {path}: not writable")
        folder = path.parent
        try:
            fd, name = tempfile.mkstemp(dir=folder, prefix=f".{path.name}.", suffix=".part")
        except OSError as exc:
            raise ExportError(
                f"--output {path}: cannot write in {folder}: {exc.strerror or exc}"
            ) from None
        return cls(path, Path(name), os.fdopen(fd, "wb"))

    def commit(self) -> None:
        """FILE becomes the complete export; raises OutputFailed (FILE as it was) if not."""
        try:
            self.handle.flush()
            # On disk before the rename: a crash must not leave FILE naming an empty file.
            os.fsync(self.handle.fileno())
            self.handle.close()
            os.replace(self.temporary, self.path)
        except OSError as exc:
            raise OutputFailed(exc.strerror or str(exc)) from None
        self.committed = True

    def discard(self) -> None:
        """Remove the temporary file, unless committed (then there is none)."""
        if self.committed:
            return
        with contextlib.suppress(OSError):
            self.handle.close()
        with contextlib.suppress(FileNotFoundError):
            self.temporary.unlink()


# --- the export -------------------------------------------------------------------------


@dataclass(frozen=True)
class ExportResult:
    campaign: str
    rows: int


async def export_results(
    pool: admin.Pool,
    campaign: str,
    out: BinaryIO,
    *,
    fmt: Format = "csv",
    since: datetime | None = None,
    spreadsheet: bool = False,
    chunk_rows: int = CHUNK_ROWS,
    on_progress: Callable[[int], None] | None = None,
) -> ExportResult:
    """Write the campaign's rows of contact_results changed at `since` or later to `out`.

    Raises CampaignNotFound before anything is written; OutputFailed (with the
    operating system's words) when writing to `out` fails.
    """
    async with pool.acquire() as conn:
        found = await admin.campaign_by_name(conn, campaign)
    layout = _layout(fmt, spreadsheet)
    end = layout.line_end
    _write(out, layout.header)
    rows = 0
    if on_progress is not None:
        on_progress(rows)  # started: the campaign exists and the output is open
    # aclosing: a failed write ends the cursor's transaction now, not at some later GC.
    async with contextlib.aclosing(
        rdb.result_chunks(pool, layout.query, found.id, since, chunk_rows)
    ) as chunks:
        async for chunk in chunks:
            _write(out, (end.join([line for (line,) in chunk]) + end).encode("utf-8"))
            rows += len(chunk)
            if on_progress is not None:
                on_progress(rows)
    try:
        out.flush()
    except BrokenPipeError:
        raise
    except OSError as exc:
        raise OutputFailed(exc.strerror or str(exc)) from None
    return ExportResult(found.name, rows)


def _write(out: BinaryIO, data: bytes) -> None:
    try:
        out.write(data)
    except BrokenPipeError:
        raise  # the reader went away: the caller decides what that means
    except OSError as exc:
        raise OutputFailed(exc.strerror or str(exc)) from None
