"""`campaign load`: contacts from a CSV file into one campaign, through COPY.

The file is streamed: rows are parsed and checked in chunks in a worker thread while
the previous chunk is being copied, so memory stays flat and the parser and
PostgreSQL work at the same time. Every chunk goes into one transaction: a load is
all or nothing, so a crash or an interrupted load never leaves half a file behind to
be loaded twice.

Rows are checked for structure (columns, JSON, zones, numbers, timestamps, encoding):
a row that fails a check is refused and reported by line number; the others load.
The checks are plain functions rather than a pydantic model per row: at the rates a
load runs at, building a model per row would cost more than the COPY itself. For the
same reason rows are converted a column at a time, in batches (see "column
converters"), and a value that repeats down the file (the same headers, zone or
priority on every row) is checked once.

Every loaded row is also judged by the dispatcher's own rules (dispatch.contact_verdict:
the destination, caller ID, call object, time zones; then, in the database before the
commit, the do-not-call list and the numbers already in the file or the campaign): the
rows a daemon will never dial are loaded all the same, so that the claim accounts for
them as invalid, suppressed or duplicate, and reported by line (see _Judge, _Judging).

Where the time goes (bench/load_rate.py, 1,000,000 rows): the parsing is a small part
(about 0.7 s for one column, 2 s for five); judging costs more per row than PostgreSQL's
COPY (mostly reading and classifying the number), hence the worker processes; of
PostgreSQL's share, half is the per-row foreign-key check on contacts.campaign_id and a
third the indexes, neither of which a load may skip.

Rows are sent in COPY's text format rather than with `copy_records_to_table`: the
pool's json/jsonb codec is a text codec, which binary COPY cannot use, and the text
format lets one code path carry every column.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import csv
import dataclasses
import json
import multiprocessing
import os
import signal
from collections.abc import AsyncIterator, Callable, Generator, Iterable, Sequence
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from itertools import chain, islice
from pathlib import Path
from typing import Any, Final, TextIO, assert_never

from campaign import windows
from campaign.db import admin
from campaign.db import queries as q
from campaign.db.admin import CommandError
from campaign.dispatch import Rules, Skipped, contact_verdict
from campaign.vocabulary import NEVER_STATES, CampaignState, NeverState

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
# Rows read and converted at a time. Under the garbage collector's first threshold
# (700 new container objects, by default), so that a batch's row lists are freed before
# a collection runs: at 1,000 the collector ran ~2,000 times per million rows and took a
# third of the loader's CPU time. Small batches also stay in the CPU cache.
_BATCH_ROWS: Final = 500
PROGRESS_EVERY: Final = 100_000
MAX_REPORTED: Final = 50
PARALLEL_FROM_BYTES: Final = 4_000_000
"""Files this large (some 250,000 rows) are judged in worker processes (see _Judging)."""
MAX_WORKERS: Final = 8
_INT4_MIN: Final = -(2**31)
_INT4_MAX: Final = 2**31 - 1
_COPY_NULL: Final = "\\N"
# contacts.priority is NOT NULL DEFAULT 0 and COPY has no per-row "use the default";
# tests/test_loader.py pins this to the schema's default.
_DEFAULT_PRIORITY: Final = "0"
_SHOWN_VALUE_CHARS: Final = 40
# Distinct values a column remembers the conversion of before starting afresh: about
# a chunk's worth, so that a file of huge, all-different values costs no more memory
# than the chunks themselves.
_DISTINCT_LIMIT: Final = 10_000


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
class NeverDialed:
    """A loaded row the claim will mark `state` instead of dialing it."""

    line: int
    """The line the record starts on."""
    state: NeverState
    """The state the claim will give the contact."""
    reason: str

    def __str__(self) -> str:
        return f"line {self.line}: will be {self.state}: {self.reason}"


@dataclass(frozen=True)
class LoadResult:
    campaign: str
    campaign_state: CampaignState
    loaded: int
    refused: int
    refusals: list[Refusal]
    """The first `max_reported` refusals, in file order; `refused` counts them all."""
    never: dict[str, int] = field(default_factory=dict)
    """Loaded rows the claim will never dial, by the state it will give them."""
    warnings: list[NeverDialed] = field(default_factory=list)
    """The first `max_reported` of those rows, in file order."""
    committed: bool = True
    """False when --strict refused the file: nothing was loaded."""

    @property
    def never_dialed(self) -> int:
        return sum(self.never.values())


class _RowError(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


# --- field converters: one CSV value -> COPY text ------------------------------------------


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


# Built once: json.loads/json.dumps with options build a new decoder/encoder per call.
# NaN/Infinity are Python extensions that jsonb refuses.
_JSON_DECODER: Final = json.JSONDecoder(parse_constant=_reject_json_constant)
_JSON_ENCODER: Final = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))


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
    if text.startswith("\ufeff"):
        # What json.loads says; the decoder itself would only say "Expecting value".
        raise _RowError("extra_sip_headers: not valid JSON (Unexpected UTF-8 BOM)")
    try:
        parsed = _JSON_DECODER.decode(text)
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
    return _copy_escape(_JSON_ENCODER.encode(headers))


def _timezone(raw: str) -> str:
    name = raw.strip()
    if not name:
        return _COPY_NULL
    try:
        # The dispatcher's own rule, so that a zone it would mark `invalid` never loads.
        windows.usable_zone(name)
    except windows.UnusableZone as exc:
        if exc.reason == windows.NOT_IANA:
            raise _RowError(f"timezone: unknown IANA zone {_shown(name)}") from None
        raise _RowError(f"timezone: {exc}") from None
    return _copy_escape(name)


# --- column converters: one column of a batch of rows -> COPY text --------------------------
#
# A batch is converted a column at a time: a C-level builtin (map, set, str.join) run over a
# whole column costs a fraction of a Python call per field, and a column that needs no
# escaping is proven so by one scan. A converter returns the column's COPY values in row
# order and notes the rows it refuses in `refused` (position in the column -> reason); a row
# keeps the first reason found, the columns being converted in header order. A refused row's
# value is a placeholder: the row is left out of the COPY.

_Refused = dict[int, str]
_ColumnConverter = Callable[[Sequence[str], _Refused], list[str]]


def _escaped(values: list[str]) -> list[str]:
    # One scan of the whole column: most columns of most batches need no escaping.
    joined = "".join(values)
    if "\\" in joined or "\t" in joined or "\n" in joined or "\r" in joined:
        return [_copy_escape(v) for v in values]
    return values


def _empty_as_null(values: list[str]) -> list[str]:
    # After escaping: the NULL marker's backslash must stay unescaped.
    return [v or _COPY_NULL for v in values] if "" in values else values


def _destination_column(raw: Sequence[str], refused: _Refused) -> list[str]:
    values = list(map(str.strip, raw))
    if "" in values:
        for i, value in enumerate(values):
            if not value:
                refused.setdefault(i, "empty destination")
    return _escaped(values)


def _stripped_column(raw: Sequence[str], refused: _Refused) -> list[str]:
    return _empty_as_null(_escaped(list(map(str.strip, raw))))


def _verbatim_column(raw: Sequence[str], refused: _Refused) -> list[str]:
    # Passed to the outbound service as is: surrounding spaces may be meaningful.
    return _empty_as_null(_escaped(list(raw)))


def _token_column(raw: Sequence[str], refused: _Refused) -> list[str]:
    if raw and max(map(len, raw)) > MAX_TOKEN_LENGTH:
        for i, value in enumerate(raw):
            if len(value) > MAX_TOKEN_LENGTH:
                refused.setdefault(
                    i, f"token: {len(value)} characters (at most {MAX_TOKEN_LENGTH})"
                )
    return _verbatim_column(raw, refused)


class _ByDistinctValue:
    """A column converted once per distinct value, remembered across batches.

    For the columns whose values repeat down a contact list (the same headers, zone or
    priority on every row) and whose conversion is the dear part (JSON, zone lookup,
    timestamp parsing). The memory is bounded: past `limit` values it starts afresh.
    """

    def __init__(self, convert: Callable[[str], str], limit: int = _DISTINCT_LIMIT) -> None:
        self._convert = convert
        self._limit = limit
        self._converted: dict[str, str] = {}
        self._reasons: dict[str, str] = {}

    def __call__(self, raw: Sequence[str], refused: _Refused) -> list[str]:
        converted = self._converted
        reasons = self._reasons
        distinct = set(raw)
        new = distinct.difference(converted)
        if len(converted) + len(new) > self._limit:
            converted.clear()
            reasons.clear()
            new = distinct
        for value in new:
            try:
                converted[value] = self._convert(value)
            except _RowError as exc:
                converted[value] = ""
                reasons[value] = exc.reason
        if reasons and not distinct.isdisjoint(reasons):
            for i, value in enumerate(raw):
                reason = reasons.get(value)
                if reason is not None:
                    refused.setdefault(i, reason)
        return list(map(converted.__getitem__, raw))


def _column_converters() -> dict[str, _ColumnConverter]:
    """Fresh converters for one load (the distinct-value ones carry what they have seen)."""
    return {
        "destination": _destination_column,
        "caller_id": _stripped_column,
        "token": _token_column,
        "outbound_parameters": _verbatim_column,
        "extra_sip_headers": _ByDistinctValue(_extra_sip_headers),
        "timezone": _ByDistinctValue(_timezone),
        "priority": _ByDistinctValue(_priority),
        "not_before": _ByDistinctValue(_not_before),
    }


def _row_problem(row: list[str]) -> str | None:
    """Why a row of the right width is refused whole (bad encoding, NUL), or None."""
    joined = "".join(row)
    if not joined.isascii():
        try:
            joined.encode("utf-8")
        except UnicodeEncodeError:
            # surrogateescape turned the undecodable bytes into lone surrogates.
            return "invalid UTF-8"
    if "\x00" in joined:
        return "NUL byte in a field"
    return None


def _rows_are_clean(rows: list[list[str]]) -> bool:
    """True when no row has bad encoding or a NUL: one scan of the batch's text."""
    text = "".join(chain.from_iterable(rows))
    if "\x00" in text:
        return False
    if text.isascii():
        return True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


class _Judge:
    """The claim's verdict on each loaded row, by the claim's own `contact_verdict`.

    A row the claim would mark invalid is noted with its reason; any other row gives its
    destination key and number, to be checked against the do-not-call list and the other
    contacts of the campaign in the database once the whole file is in (a duplicate may
    be a million lines away). Runs beside the COPY (see _Judging).
    """

    def __init__(self, columns: list[str], rules: Rules, max_reported: int) -> None:
        self._rules = rules
        self._max_reported = max_reported
        at = {name: i for i, name in enumerate(columns)}
        self._destination = at["destination"]
        self._caller_id = at.get("caller_id")
        self._token = at.get("token")
        self._outbound_parameters = at.get("outbound_parameters")
        self._extra_sip_headers = at.get("extra_sip_headers")
        self._timezone = at.get("timezone")
        self._priority = at.get("priority")
        self._others = [c for c in columns if c not in ("destination", "priority", "not_before")]

    def judge(self, rows: Sequence[list[str]], lines: Sequence[int]) -> _Judged:
        """The COPY text for load_keys (line, priority, key, number) of the rows that may
        be dialed, and the first of the others with their reasons."""
        invalid: list[tuple[int, str]] = []
        keys = self(rows, lines, invalid)
        return _Judged(keys, invalid[: self._max_reported], len(invalid))

    def __call__(
        self, rows: Sequence[list[str]], lines: Sequence[int], invalid: list[tuple[int, str]]
    ) -> str:
        """COPY text for load_keys (line, priority, key, number) of the rows that may be
        dialed; the others go into `invalid` as (line, reason)."""
        rules = self._rules
        at = self._destination
        # Each row as the database will hold it (see the column converters: stripped or
        # verbatim, empty as NULL); a file of destinations alone needs none of that.
        full = len(self._others) > 0
        out: list[str] = []
        for row, line in zip(rows, lines, strict=True):
            contact = (
                self._contact(row, line)
                if full
                else q.ContactRow(line, row[at].strip(), None, None, None, None, 0, None)
            )
            verdict = contact_verdict(contact, rules)
            if isinstance(verdict, Skipped):
                invalid.append((line, verdict.reason))
                continue
            destination = verdict.destination
            if destination is None:  # a Deferred always carries it; keeps the types honest
                continue
            priority = (row[self._priority].strip() if self._priority is not None else "") or "0"
            number = destination.number
            if number is not None:  # digits: the key is the number, nothing to escape
                out.append(f"{line}\t{priority}\t{number}\t{number}\n")
            else:
                out.append(f"{line}\t{priority}\t{_copy_escape(destination.key)}\t{_COPY_NULL}\n")
        return "".join(out)

    def _contact(self, row: list[str], line: int) -> q.ContactRow:
        return q.ContactRow(
            line,
            row[self._destination].strip(),
            _stripped(row, self._caller_id),
            _verbatim(row, self._token),
            _verbatim(row, self._outbound_parameters),
            _stripped(row, self._extra_sip_headers),
            0,
            _stripped(row, self._timezone),
        )


@dataclass(frozen=True)
class _Judged:
    keys: str
    invalid: list[tuple[int, str]]
    """The first rows the claim will mark invalid: (line, reason)."""
    invalid_count: int


# The judge of a worker process (see _Judging), set once when it starts.
_worker_judge: _Judge | None = None


def _start_worker(columns: list[str], rules: Rules, max_reported: int) -> None:
    global _worker_judge
    # Ctrl-C reaches the whole process group: the load (the parent) stops the workers,
    # rather than each printing its own KeyboardInterrupt.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _worker_judge = _Judge(columns, rules, max_reported)


def _judge_in_worker(rows: list[list[str]], lines: list[int]) -> _Judged:
    if _worker_judge is None:
        raise RuntimeError("a loader worker process was used before it started")
    return _worker_judge.judge(rows, lines)


class _Judging:
    """Judges the loaded rows beside the COPY, without holding it up.

    Judging a row (parsing and classifying its number) costs more than PostgreSQL's
    COPY of it, and every row is judged on its own: a large file is judged in worker
    processes, one per core, while the rows go in; a small one in a thread (a worker
    process takes a moment to start). The results land in load_keys on the load's own
    connection as they come back, at most two per worker waiting. Workers are spawned,
    not forked: a script that calls load_csv on a large file needs the usual
    `if __name__ == "__main__":` guard (the `campaign` command has it).
    """

    def __init__(self, columns: list[str], rules: Rules, max_reported: int, workers: int) -> None:
        self._executor: Executor
        self._call: Callable[[list[list[str]], list[int]], _Judged]
        self._call = _Judge(columns, rules, max_reported).judge
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="load-judge")
        if workers > 1:
            try:
                processes = ProcessPoolExecutor(
                    workers,
                    # Not fork: this process runs threads (the event loop's, the reader's).
                    mp_context=multiprocessing.get_context("spawn"),
                    initializer=_start_worker,
                    initargs=(columns, rules, max_reported),
                )
            except (OSError, NotImplementedError):
                pass  # no process support here (a sandbox): the thread will do
            else:
                self._executor.shutdown()
                self._executor, self._call = processes, _judge_in_worker
        self._waiting_at_most = 2 * workers
        self._pending: collections.deque[asyncio.Future[_Judged]] = collections.deque()
        self._max_reported = max_reported
        self.invalid: list[NeverDialed] = []
        self.invalid_count = 0

    async def submit(self, conn: q.Conn, rows: list[list[str]], lines: list[int]) -> None:
        loop = asyncio.get_running_loop()
        self._pending.append(loop.run_in_executor(self._executor, self._call, rows, lines))
        while len(self._pending) > self._waiting_at_most or self._pending[0].done():
            await self._collect(conn)
            if not self._pending:
                break

    async def finish(self, conn: q.Conn) -> None:
        while self._pending:
            await self._collect(conn)

    def close(self) -> None:
        for future in self._pending:
            future.cancel()
        self._executor.shutdown(wait=True, cancel_futures=True)

    async def _collect(self, conn: q.Conn) -> None:
        judged = await self._pending.popleft()
        self.invalid_count += judged.invalid_count
        if len(self.invalid) < self._max_reported:
            self.invalid.extend(NeverDialed(line, "invalid", why) for line, why in judged.invalid)
            # Batches may come back out of order: keep the first lines of the file.
            self.invalid.sort(key=lambda w: w.line)
            del self.invalid[self._max_reported :]
        if judged.keys:
            await conn.copy_to_table(
                "load_keys",
                source=_once(judged.keys.encode("utf-8")),
                columns=["line", "priority", "key", "number"],
                format="text",
            )


def _stripped(row: list[str], at: int | None) -> str | None:
    return None if at is None else row[at].strip() or None


def _verbatim(row: list[str], at: int | None) -> str | None:
    return None if at is None else row[at] or None


@dataclass
class _Converted:
    """A batch of CSV rows as COPY text."""

    contacts: str
    loaded: int
    records: int
    """Rows that are records (blank lines are not)."""
    rows: list[list[str]] = field(default_factory=list)
    """The loaded rows as read, to be judged (when asked for)."""
    lines: list[int] = field(default_factory=list)
    """The line each of `rows` starts on."""


class _RowsToCopy:
    """Turns a batch of CSV rows into COPY text lines; one per load (converters remember)."""

    def __init__(self, columns: list[str], campaign_id: int) -> None:
        converters = _column_converters()
        self._convert = [converters[c] for c in columns]
        self._width = len(columns)
        self._prefix = f"{campaign_id}\t"

    def __call__(
        self, rows: list[list[str]], refused: _Refused, lines: Sequence[int] | None = None
    ) -> _Converted:
        """The COPY text of the good rows of `rows`.

        Refused rows go into `refused` by position in `rows`; blank rows are no records.
        Given the line each row starts on, the loaded rows and their lines come back too.
        """
        good, positions, blank = self._well_formed(rows, refused)
        if not good:
            return _Converted("", 0, len(rows) - blank)
        refused_here: _Refused = {}
        by_column = zip(self._convert, zip(*good, strict=True), strict=True)
        columns = [conv(col, refused_here) for conv, col in by_column]
        values: Iterable[tuple[str, ...]] = zip(*columns, strict=True)
        kept: Sequence[int] = range(len(good))
        if refused_here:
            for position, reason in refused_here.items():
                refused[positions[position]] = reason
            values = (v for i, v in enumerate(values) if i not in refused_here)
            kept = [i for i in kept if i not in refused_here]
        prefix = self._prefix
        text = prefix + ("\n" + prefix).join(map("\t".join, values)) + "\n"
        converted = _Converted(text, len(good) - len(refused_here), len(rows) - blank)
        if lines is not None:
            converted.rows = [good[i] for i in kept]
            converted.lines = [lines[positions[i]] for i in kept]
        return converted

    def _well_formed(
        self, rows: list[list[str]], refused: _Refused
    ) -> tuple[list[list[str]], Sequence[int], int]:
        """The rows fit to convert, their positions in `rows`, and the blank-line count.

        Refuses the rows of the wrong width, bad encoding or holding a NUL. The usual
        batch, with none of those, is proven so by a few scans; only then row by row.
        """
        width = self._width
        if set(map(len, rows)) == {width} and _rows_are_clean(rows):
            return rows, range(len(rows)), 0
        good: list[list[str]] = []
        positions: list[int] = []
        blank = 0
        for i, row in enumerate(rows):
            if not row:
                blank += 1  # a blank line carries no contact
            elif len(row) != width:
                refused[i] = f"expected {width} fields, found {len(row)}"
            elif (problem := _row_problem(row)) is not None:
                refused[i] = problem
            else:
                good.append(row)
                positions.append(i)
        return good, positions, blank


# --- reading the file ----------------------------------------------------------------------


@dataclass
class _Chunk:
    data: bytes
    rows: int
    """Rows in `data`."""
    records_read: int
    """Records read so far in the file (loaded, refused and this chunk's)."""
    refused: int
    """Records refused so far, as of this chunk (the reader thread goes on counting)."""
    read: list[list[str]] = field(default_factory=list)
    """The rows in `data` as read, to be judged (when asked for)."""
    lines: list[int] = field(default_factory=list)


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

    def chunks(
        self, campaign_id: int, chunk_rows: int, judged: bool = False
    ) -> Generator[_Chunk, None, None]:
        """COPY text for the good rows, a chunk per `chunk_rows` records; records refusals.

        With `judged`, each chunk also carries its rows as read, to be judged by the
        claim's rules (see _Judging). Runs in a worker thread (one call of next() at a
        time). Raises LoadError when the file cannot be parsed further: then nothing of
        it may be loaded.
        """
        to_copy = _RowsToCopy(self.columns, campaign_id)
        # Rows are read and converted in small batches (see _BATCH_ROWS), which makes the
        # pass about twice as fast as converting a chunk at once; a chunk gathers the
        # batches' text.
        batch_rows = min(chunk_rows, _BATCH_ROWS)
        last_end = self.header_line
        records = 0
        pieces: list[str] = []
        to_judge: list[list[str]] = []
        lines: list[int] = []
        loaded = 0
        taken = 0
        while True:
            rows, ends = self._read(batch_rows, last_end)
            if rows:
                refused: _Refused = {}
                # The line each record starts on (a quoted field may span lines).
                starts = [last_end + 1, *(end + 1 for end in ends[:-1])]
                converted = to_copy(rows, refused, starts if judged else None)
                for i in sorted(refused):
                    self._refuse(starts[i], ends[i], refused[i])
                last_end = ends[-1]
                records += converted.records
                taken += len(rows)
                if converted.loaded:
                    pieces.append(converted.contacts)
                    to_judge += converted.rows
                    lines += converted.lines
                    loaded += converted.loaded
            # islice stops short only at the end of the file.
            done = len(rows) < batch_rows
            if taken and (taken >= chunk_rows or done):
                yield _Chunk(
                    "".join(pieces).encode("utf-8"), loaded, records, self.refused, to_judge, lines
                )
                pieces, to_judge, lines, loaded, taken = [], [], [], 0, 0
            if done:
                return

    def _read(self, count: int, last_end: int) -> tuple[list[list[str]], list[int]]:
        """Up to `count` rows, with the line each ends on (a quoted field spans lines)."""
        reader = self.reader
        rows: list[list[str]] = []
        ends: list[int] = []
        try:
            for row in islice(reader, count):
                rows.append(row)
                ends.append(reader.line_num)
        except csv.Error as exc:
            start = (ends[-1] if ends else last_end) + 1
            raise LoadError(
                f"{self.path}: line {start}: malformed CSV ({exc}); nothing loaded"
            ) from None
        except OSError as exc:
            raise LoadError(f"cannot read {self.path}: {exc.strerror or exc}") from None
        return rows, ends


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
    on_progress: Callable[[int, int], None] | None = None,
    progress_every: int = PROGRESS_EVERY,
    strict: bool = False,
    workers: int | None = None,
    check: bool = True,
) -> LoadResult:
    """Load the good rows of `path` into the campaign, all in one transaction.

    Each loaded row is judged by the claim's own rules; the ones it will never dial
    (invalid, suppressed, duplicate) are loaded all the same, so that the claim accounts
    for them, and reported. With `strict`, a file with any such row, or any refused row,
    is refused whole: nothing is loaded and the result says so (`committed` False).
    Raises LoadError (bad header, unreadable or malformed file), CampaignNotFound, or
    LoadError when the campaign is or becomes cancelled; then nothing is loaded.
    `on_progress(records_read, refused)` is called about every `progress_every` records. Rows are
    judged in `workers` processes (default: one per core for a large file, else a thread).
    Without `check` nothing is judged (no warnings, `strict` only refuses bad rows): a
    load of millions then runs at COPY's speed, and the claim still judges every contact.
    """
    with contextlib.closing(open_csv(path, delimiter=delimiter, max_reported=max_reported)) as src:
        try:
            async with pool.acquire() as conn, conn.transaction():
                campaign = await admin.campaign_by_name(conn, campaign_name)
                _refuse_cancelled(campaign)
                row = await q.campaign_row(conn, campaign.id)
                if row is None:
                    raise admin.CampaignNotFound(campaign_name)
                rules = Rules.of(row, datetime.now(UTC))
                if check:
                    last_before = await admin.start_load_keys(conn)
                    judging = _Judging(
                        src.columns,
                        rules,
                        max_reported,
                        _workers_for(path) if workers is None else workers,
                    )
                    try:
                        loaded = await _copy_chunks(
                            conn, src, campaign.id, chunk_rows, on_progress, progress_every, judging
                        )
                    finally:
                        await asyncio.to_thread(judging.close)
                    never, warnings = await _never_dialed(
                        conn, campaign.id, rules, judging, last_before, max_reported
                    )
                else:
                    loaded = await _copy_chunks(
                        conn, src, campaign.id, chunk_rows, on_progress, progress_every
                    )
                    never, warnings = {}, []
                final = await admin.share_campaign(conn, campaign.id)
                if final is None:
                    raise admin.CampaignNotFound(campaign_name)
                _refuse_cancelled(final, during=True)
                result = LoadResult(
                    campaign=campaign_name,
                    campaign_state=final.state,
                    loaded=loaded,
                    refused=src.refused,
                    refusals=list(src.refusals),
                    never=never,
                    warnings=warnings,
                )
                if strict and (result.refused or result.never_dialed):
                    raise _StrictRefusal(result)
        except _StrictRefusal as refusal:
            return dataclasses.replace(refusal.result, loaded=0, committed=False)
    return result


class _StrictRefusal(Exception):
    """Leaves the load's transaction, rolling it back, with what would have loaded."""

    def __init__(self, result: LoadResult) -> None:
        super().__init__("refused by --strict")
        self.result = result


def _workers_for(path: Path) -> int:
    """Worker processes to judge `path`'s rows: one per core (up to MAX_WORKERS) for a
    file large enough to repay their start, else none (a thread judges)."""
    cores = os.cpu_count() or 1
    try:
        size = path.stat().st_size
    except OSError:
        size = 0
    return min(MAX_WORKERS, cores) if size >= PARALLEL_FROM_BYTES and cores > 1 else 1


async def _never_dialed(
    conn: q.Conn,
    campaign_id: int,
    rules: Rules,
    judging: _Judging,
    last_before: int,
    max_reported: int,
) -> tuple[dict[str, int], list[NeverDialed]]:
    """The loaded rows the claim will never dial: counts by state, the first few rows."""
    # The contacts already there that may share a number with the file: their keys are
    # known only once judged, by the same rules.
    existing = []
    for contact, priority in await admin.existing_unjudged(conn, campaign_id, last_before):
        verdict = contact_verdict(contact, rules)
        if isinstance(verdict, Skipped) or verdict.destination is None:
            continue  # owns no number: the claim will mark it invalid
        destination = verdict.destination
        existing.append(
            f"{_COPY_NULL}\t{contact.id}\t{priority}\t{_copy_escape(destination.key)}\t"
            f"{destination.number or _COPY_NULL}\n"
        )
    if existing:
        await conn.copy_to_table(
            "load_keys",
            source=_once("".join(existing).encode("utf-8")),
            columns=["line", "contact_id", "priority", "key", "number"],
            format="text",
        )
    counts, first = await admin.load_fates(conn, campaign_id, max_reported)
    found = [NeverDialed(f.line, f.state, _fate_reason(f)) for f in first]
    never = {"invalid": judging.invalid_count, **counts}
    warnings = sorted([*judging.invalid, *found], key=lambda w: w.line)[:max_reported]
    return {state: never.get(state, 0) for state in NEVER_STATES}, warnings


def _fate_reason(fate: admin.LoadFate) -> str:
    match fate.state:
        case "suppressed":
            return "on the do-not-call list"
        case "duplicate":
            if fate.first_line is not None:
                return f"same destination as line {fate.first_line}"
            return f"same destination as contact {fate.first_contact}, already in the campaign"
        case _:
            assert_never(fate.state)


def _refuse_cancelled(campaign: admin.CampaignRef, *, during: bool = False) -> None:
    if campaign.state == "cancelled":
        when = "was cancelled during the load" if during else "is cancelled"
        raise LoadError(
            f"campaign {campaign.name!r} {when}: its contacts would never be dialed; nothing loaded"
        )


async def _once(data: bytes) -> AsyncIterator[bytes]:
    yield data


async def _copy_chunks(
    conn: q.Conn,
    src: _CsvSource,
    campaign_id: int,
    chunk_rows: int,
    on_progress: Callable[[int, int], None] | None,
    progress_every: int,
    judging: _Judging | None = None,
) -> int:
    columns = ["campaign_id", *src.columns]
    chunks = src.chunks(campaign_id, chunk_rows, judged=judging is not None)
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
            if judging is not None and chunk.read:
                await judging.submit(conn, chunk.read, chunk.lines)
            if on_progress is not None and chunk.records_read >= next_report:
                on_progress(chunk.records_read, chunk.refused)
                next_report = (chunk.records_read // progress_every + 1) * progress_every
    finally:
        # The worker thread may still be reading the file: it must be done before the
        # file is closed, and its outcome (an error, after a failed COPY) is moot.
        if not parsing.done():
            await asyncio.wait([parsing])
        if not parsing.cancelled():
            parsing.exception()
        chunks.close()
    if judging is not None:
        await judging.finish(conn)
    return loaded
