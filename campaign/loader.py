"""`campaign load`: contacts from a CSV file into one campaign, through COPY.

The file is streamed: rows are parsed and checked in chunks in a worker thread while
the previous chunk is being copied, so memory stays flat and the parser and
PostgreSQL work at the same time. Every chunk goes into one transaction: a load is
all or nothing, so a crash or an interrupted load never leaves half a file behind to
be loaded twice.

Rows are checked for structure only (columns, JSON, zones, numbers, timestamps,
encoding). Destinations are not phone-validated here: the dispatcher does that at
claim time and marks bad ones `invalid` with a reason, which keeps the load fast.
A row that fails a check is refused and reported by line number; the others load.
The checks are plain functions rather than a pydantic model per row: at the rates a
load runs at, building a model per row would cost more than the COPY itself.

Rows are sent in COPY's text format rather than with `copy_records_to_table`: the
pool's json/jsonb codec is a text codec, which binary COPY cannot use, and the text
format lets one code path carry every column.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import json
import zoneinfo
from collections.abc import AsyncIterator, Callable, Generator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final, TextIO

from campaign.db import admin
from campaign.db.admin import CampaignState, CommandError

COLUMNS: Final = (
    "destination",
    "caller_id",
    "token",
    "outbound_parameters",
    "extra_sip_headers",
    "timezone",
    "priority",
    "not_before",
)
"""The contact columns a CSV header may name; `destination` is required."""

MAX_TOKEN_LENGTH: Final = 5000
CHUNK_ROWS: Final = 10_000
PROGRESS_EVERY: Final = 100_000
MAX_REPORTED: Final = 50
_INT4_MIN: Final = -(2**31)
_INT4_MAX: Final = 2**31 - 1
_COPY_NULL: Final = "\\N"
# contacts.priority is NOT NULL DEFAULT 0 and COPY has no per-row "use the default";
# tests/test_loader.py pins this to the schema's default.
_DEFAULT_PRIORITY: Final = "0"
_SHOWN_VALUE_CHARS: Final = 40


class LoadError(CommandError):
    """The whole file is refused (unknown header, unreadable file, malformed CSV)."""


@dataclass(frozen=True)
class Refusal:
    line: int
    """The line the record starts on (1 = the header)."""
    reason: str
    end_line: int

    def __str__(self) -> str:
        spans = (
            f" (record spans lines {self.line}-{self.end_line})"
            if self.end_line > self.line
            else ""
        )
        return f"line {self.line}: {self.reason}{spans}"


@dataclass(frozen=True)
class LoadResult:
    campaign: str
    campaign_state: CampaignState
    loaded: int
    refused: int
    refusals: list[Refusal]
    """The first `max_reported` refusals, in file order; `refused` counts them all."""


class _RowError(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


# --- field converters: CSV text -> COPY text ---------------------------------------------


def _copy_escape(value: str) -> str:
    # COPY text format: backslash, tab, newline and carriage return must be escaped.
    return (
        value.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r")
    )


def _shown(value: str) -> str:
    """A value quoted for a refusal message, cut short (it may be a whole garbled line)."""
    if len(value) > _SHOWN_VALUE_CHARS:
        value = value[: _SHOWN_VALUE_CHARS - 3] + "..."
    return repr(value)


def _destination(raw: str) -> str:
    value = raw.strip()
    if not value:
        raise _RowError("empty destination")
    return _copy_escape(value)


def _stripped_text(raw: str) -> str:
    value = raw.strip()
    return _copy_escape(value) if value else _COPY_NULL


def _verbatim_text(raw: str) -> str:
    # Passed to the outbound service as is: surrounding spaces may be meaningful.
    return _copy_escape(raw) if raw else _COPY_NULL


def _token(raw: str) -> str:
    if len(raw) > MAX_TOKEN_LENGTH:
        raise _RowError(f"token: {len(raw)} characters (at most {MAX_TOKEN_LENGTH})")
    return _verbatim_text(raw)


def _priority(raw: str) -> str:
    value = raw.strip()
    if not value:
        return _DEFAULT_PRIORITY
    try:
        number = int(value)
    except ValueError:
        raise _RowError(f"priority: not an integer: {_shown(value)}") from None
    if not _INT4_MIN <= number <= _INT4_MAX:
        raise _RowError(f"priority: {number} is out of range")
    return str(number)


def _not_before(raw: str) -> str:
    value = raw.strip()
    if not value:
        return _COPY_NULL
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise _RowError(f"not_before: not an ISO 8601 timestamp: {_shown(value)}") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    try:
        # Sent in UTC: Python accepts offsets (with seconds) that PostgreSQL does not.
        return moment.astimezone(UTC).isoformat()
    except OverflowError:
        raise _RowError(f"not_before: out of range: {_shown(value)}") from None


def _reject_json_constant(name: str) -> Any:
    raise ValueError(f"{name} is not allowed")


def _clean_json_string(what: str, value: object) -> str:
    if not isinstance(value, str):
        raise _RowError(f"extra_sip_headers: {what} must be a string")
    if "\x00" in value:
        # jsonb refuses \u0000.
        raise _RowError(f"extra_sip_headers: {what} contains a NUL character")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise _RowError(f"extra_sip_headers: {what} contains an unpaired surrogate") from None
    return value


def _extra_sip_headers(raw: str) -> str:
    text = raw.strip()
    if not text:
        return _COPY_NULL
    try:
        # NaN/Infinity are Python extensions that jsonb refuses.
        parsed = json.loads(text, parse_constant=_reject_json_constant)
    except (ValueError, RecursionError) as exc:
        reason = exc.msg if isinstance(exc, json.JSONDecodeError) else str(exc) or "too deep"
        raise _RowError(f"extra_sip_headers: not valid JSON ({reason})") from None
    if not isinstance(parsed, list):
        raise _RowError("extra_sip_headers: must be a JSON list of {name, value} objects")
    headers = []
    for item in parsed:
        if not isinstance(item, dict) or set(item) != {"name", "value"}:
            raise _RowError(
                "extra_sip_headers: each item must be an object with exactly name and value"
            )
        name = _clean_json_string("name", item["name"])
        if not name.strip():
            raise _RowError("extra_sip_headers: empty header name")
        headers.append({"name": name, "value": _clean_json_string("value", item["value"])})
    return _copy_escape(json.dumps(headers, ensure_ascii=False, separators=(",", ":")))


class _ZoneCheck:
    """IANA zone names, looked up once per distinct name in a load."""

    def __init__(self) -> None:
        self._known: dict[str, bool] = {}

    def __call__(self, raw: str) -> str:
        name = raw.strip()
        if not name:
            return _COPY_NULL
        valid = self._known.get(name)
        if valid is None:
            try:
                zoneinfo.ZoneInfo(name)
                valid = True
            except (zoneinfo.ZoneInfoNotFoundError, ValueError, OSError):
                # ValueError: not a relative path ("../x", "/etc/..."); OSError: a
                # directory such as "America".
                valid = False
            self._known[name] = valid
        if not valid:
            raise _RowError(f"timezone: unknown IANA zone {_shown(name)}")
        return _copy_escape(name)


def _converters() -> dict[str, Callable[[str], str]]:
    return {
        "destination": _destination,
        "caller_id": _stripped_text,
        "token": _token,
        "outbound_parameters": _verbatim_text,
        "extra_sip_headers": _extra_sip_headers,
        "timezone": _ZoneCheck(),
        "priority": _priority,
        "not_before": _not_before,
    }


# --- reading the file ----------------------------------------------------------------------


@dataclass
class _Chunk:
    data: bytes
    rows: int
    """Rows in `data`."""
    records_read: int
    """Records read so far in the file (loaded, refused and this chunk's)."""


@dataclass
class _CsvSource:
    """An open CSV file whose header has been read; yields COPY chunks."""

    path: Path
    handle: TextIO
    reader: Any  # csv reader objects have no public type
    columns: list[str]
    header_line: int
    max_reported: int
    refusals: list[Refusal] = field(default_factory=list)
    refused: int = 0

    def close(self) -> None:
        self.handle.close()

    def _refuse(self, start: int, end: int, reason: str) -> None:
        self.refused += 1
        if len(self.refusals) < self.max_reported:
            self.refusals.append(Refusal(start, reason, end))

    def chunks(self, campaign_id: int, chunk_rows: int) -> Generator[_Chunk, None, None]:
        """COPY text for the good rows, `chunk_rows` at a time; records refusals.

        Runs in a worker thread (one call of next() at a time). Raises LoadError when
        the file cannot be parsed further: then nothing of it may be loaded.
        """
        converters = _converters()
        convert = [converters[c] for c in self.columns]
        width = len(convert)
        prefix = f"{campaign_id}\t"
        reader = self.reader
        end = self.header_line
        lines: list[str] = []
        records = 0
        while True:
            start = end + 1
            try:
                row = next(reader, None)
            except csv.Error as exc:
                raise LoadError(
                    f"{self.path}: line {start}: malformed CSV ({exc}); nothing loaded"
                ) from None
            except OSError as exc:
                raise LoadError(f"cannot read {self.path}: {exc.strerror or exc}") from None
            if row is None:
                break
            # A quoted field can hold newlines: the record started at `start`.
            end = reader.line_num
            if not row:
                continue  # a blank line carries no contact
            records += 1
            if len(row) != width:
                self._refuse(start, end, f"expected {width} fields, found {len(row)}")
                continue
            joined = "".join(row)
            if not joined.isascii():
                try:
                    joined.encode("utf-8")
                except UnicodeEncodeError:
                    # surrogateescape turned the undecodable bytes into lone surrogates.
                    self._refuse(start, end, "invalid UTF-8")
                    continue
            if "\x00" in joined:
                self._refuse(start, end, "NUL byte in a field")
                continue
            try:
                values = [conv(raw) for conv, raw in zip(convert, row, strict=True)]
            except _RowError as exc:
                self._refuse(start, end, exc.reason)
                continue
            lines.append(prefix + "\t".join(values) + "\n")
            if len(lines) >= chunk_rows:
                yield _Chunk("".join(lines).encode("utf-8"), len(lines), records)
                lines = []
        if lines:
            yield _Chunk("".join(lines).encode("utf-8"), len(lines), records)


def _open_error(path: Path, exc: OSError) -> LoadError:
    return LoadError(f"cannot read {path}: {exc.strerror or exc}")


def open_csv(path: Path, *, delimiter: str = ",", max_reported: int = MAX_REPORTED) -> _CsvSource:
    """Open `path` and check its header. Raises LoadError (nothing is read further)."""
    if len(delimiter) != 1 or delimiter in '"\r\n':
        raise LoadError(f"delimiter must be one character, not a quote or newline: {delimiter!r}")
    try:
        # utf-8-sig drops a byte-order mark; surrogateescape keeps undecodable bytes
        # so that the row holding them is refused, not the whole file.
        handle = path.open(encoding="utf-8-sig", errors="surrogateescape", newline="")
    except OSError as exc:
        raise _open_error(path, exc) from None
    try:
        reader = csv.reader(handle, delimiter=delimiter)
        header: list[str] | None = None
        try:
            for row in reader:
                if row:
                    header = row
                    break
        except csv.Error as exc:
            raise LoadError(f"{path}: malformed header ({exc})") from None
        except OSError as exc:
            raise _open_error(path, exc) from None
        if header is None:
            raise LoadError(f"{path} is empty: expected a header row naming the columns")
        columns = _check_header(path, header)
        return _CsvSource(path, handle, reader, columns, reader.line_num, max_reported)
    except BaseException:
        handle.close()
        raise


def _check_header(path: Path, header: list[str]) -> list[str]:
    columns: list[str] = []
    for position, raw in enumerate(header, start=1):
        name = raw.strip().lower()
        try:
            name.encode("utf-8")
        except UnicodeEncodeError:
            raise LoadError(f"{path}: header is not valid UTF-8") from None
        if not name:
            raise LoadError(f"{path}: header column {position} has no name")
        if name not in COLUMNS:
            raise LoadError(
                f"{path}: unknown column {raw.strip()!r} in the header; "
                f"known columns: {', '.join(COLUMNS)}"
            )
        if name in columns:
            raise LoadError(f"{path}: column {name!r} appears twice in the header")
        columns.append(name)
    if "destination" not in columns:
        raise LoadError(f"{path}: the header has no destination column")
    return columns


# --- the load ----------------------------------------------------------------------------


async def load_csv(
    pool: admin.Pool,
    campaign_name: str,
    path: Path,
    *,
    delimiter: str = ",",
    chunk_rows: int = CHUNK_ROWS,
    max_reported: int = MAX_REPORTED,
    on_progress: Callable[[int], None] | None = None,
    progress_every: int = PROGRESS_EVERY,
) -> LoadResult:
    """Load the good rows of `path` into the campaign, all in one transaction.

    Raises LoadError (bad header, unreadable or malformed file), CampaignNotFound, or
    LoadError when the campaign is or becomes cancelled; then nothing is loaded.
    `on_progress(records_read)` is called about every `progress_every` records.
    """
    with contextlib.closing(open_csv(path, delimiter=delimiter, max_reported=max_reported)) as src:
        async with pool.acquire() as conn, conn.transaction():
            campaign = await admin.campaign_by_name(conn, campaign_name)
            _refuse_cancelled(campaign)
            loaded = await _copy_chunks(
                conn, src, campaign.id, chunk_rows, on_progress, progress_every
            )
            final = await admin.share_campaign(conn, campaign.id)
            if final is None:
                raise admin.CampaignNotFound(campaign_name)
            _refuse_cancelled(final, during=True)
    return LoadResult(
        campaign=campaign_name,
        campaign_state=final.state,
        loaded=loaded,
        refused=src.refused,
        refusals=list(src.refusals),
    )


def _refuse_cancelled(campaign: admin.CampaignRef, *, during: bool = False) -> None:
    if campaign.state == "cancelled":
        when = "was cancelled during the load" if during else "is cancelled"
        raise LoadError(
            f"campaign {campaign.name!r} {when}: its contacts would never be dialed; nothing loaded"
        )


async def _once(data: bytes) -> AsyncIterator[bytes]:
    yield data


async def _copy_chunks(
    conn: admin.Conn,
    src: _CsvSource,
    campaign_id: int,
    chunk_rows: int,
    on_progress: Callable[[int], None] | None,
    progress_every: int,
) -> int:
    columns = ["campaign_id", *src.columns]
    chunks = src.chunks(campaign_id, chunk_rows)
    loaded = 0
    next_report = progress_every
    # Parse chunk n+1 in a thread while chunk n is copied.
    parsing = asyncio.ensure_future(asyncio.to_thread(next, chunks, None))
    try:
        while (chunk := await parsing) is not None:
            parsing = asyncio.ensure_future(asyncio.to_thread(next, chunks, None))
            if chunk.rows:
                await conn.copy_to_table(
                    "contacts", source=_once(chunk.data), columns=columns, format="text"
                )
                loaded += chunk.rows
            if on_progress is not None and chunk.records_read >= next_report:
                on_progress(chunk.records_read)
                next_report = (chunk.records_read // progress_every + 1) * progress_every
    finally:
        # The worker thread may still be reading the file: it must be done before the
        # file is closed, and its outcome (an error, after a failed COPY) is moot.
        if not parsing.done():
            await asyncio.wait([parsing])
        if not parsing.cancelled():
            parsing.exception()
        chunks.close()
    return loaded
