"""SQL of `campaign export`: the `contact_results` view (migration 0006), read by a cursor.

The view is the documented read interface for a CRM; `RESULT_COLUMNS` is its shape,
which tests/test_export.py pins against the database.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, Mapping
from datetime import datetime
from types import MappingProxyType
from typing import Final, Literal

import asyncpg

from campaign.db.admin import Pool

RESULT_COLUMNS: Final = (
    "campaign",
    "campaign_id",
    "contact_id",
    "token",
    "destination",
    "state",
    "attempts",
    "last_result",
    "last_error",
    "last_cause",
    "first_call_at",
    "last_call_at",
    "last_call_duration",
    "references",
    "next_attempt_at",
    "created_at",
    "updated_at",
)
"""The view's columns, in its order (the export's CSV header)."""

TIME_COLUMNS: Final = frozenset(
    {"first_call_at", "last_call_at", "next_attempt_at", "created_at", "updated_at"}
)
TEXT_COLUMNS: Final = frozenset(
    {"campaign", "token", "destination", "state", "last_result", "last_error", "last_cause"}
)
"""The columns that hold text (the others are numbers, times and `references`)."""

# What makes a spreadsheet run a cell as a formula (OWASP's list: = + - @, tab, CR).
_FORMULA_START: Final = r"left({v}, 1) IN ('=', '+', '-', '@', E'\t', E'\r')"


def _csv_field(name: str, spreadsheet: bool) -> str:
    """The column as one CSV field (RFC 4180), made by PostgreSQL: in C, at about three
    times the speed of Python's csv module, and beside the client's work, not in it.

    Text is always quoted, so that an empty text ("") and a NULL (an empty field) stay
    apart; numbers and times never need quoting. Times are ISO 8601 with the offset,
    in the transaction's zone (UTC, see result_chunks); `references` is a JSON array.
    """
    v = f'r."{name}"'
    if name in TEXT_COLUMNS:
        if spreadsheet:
            # An apostrophe first: spreadsheets read the cell as text and do not show it.
            v = f"CASE WHEN {_FORMULA_START.format(v=v)} THEN '''' || {v} ELSE {v} END"
        return f"""coalesce('"' || replace({v}, '"', '""') || '"', '')"""
    if name in TIME_COLUMNS:
        return f"coalesce(to_json({v}) #>> '{{}}', '')"
    if name == "references":
        return f"""'"' || replace(to_json({v})::text, '"', '""') || '"'"""
    return f"coalesce({v}::text, '')"


# Oldest change first: one range of contacts_campaign_updated_idx, no sort, so the
# first rows come at once however large the campaign. A missing --since is
# -infinity, which keeps the condition a range of that index either way.
_FROM: Final = """
FROM contact_results r
WHERE r.campaign_id = $1 AND r.updated_at >= coalesce($2::timestamptz, '-infinity')
ORDER BY r.updated_at, r.contact_id
"""


def _csv_query(spreadsheet: bool) -> str:
    fields = " || ',' || ".join(_csv_field(name, spreadsheet) for name in RESULT_COLUMNS)
    return f"SELECT {fields}{_FROM}"


EXPORT_CSV: Final = _csv_query(spreadsheet=False)
"""One CSV line per row (without its line end), fields in RESULT_COLUMNS order."""

EXPORT_CSV_SPREADSHEET: Final = _csv_query(spreadsheet=True)
"""The same, with text cells that a spreadsheet would run as formulas prefixed by '."""

EXPORT_JSONL: Final = f"SELECT row_to_json(r)::text{_FROM}"
"""One JSON object per row, keyed by the view's column names in its order; times as
ISO 8601 strings in the transaction's zone, `references` a list, NULL null."""

ExportQuery = Literal["csv", "csv_spreadsheet", "jsonl"]
EXPORT_QUERIES: Final[Mapping[ExportQuery, str]] = MappingProxyType(
    {"csv": EXPORT_CSV, "csv_spreadsheet": EXPORT_CSV_SPREADSHEET, "jsonl": EXPORT_JSONL}
)


async def result_chunks(
    pool: Pool, query: ExportQuery, campaign_id: int, since: datetime | None, chunk_rows: int
) -> AsyncGenerator[list[asyncpg.Record], None]:
    """The lines of `query` (see EXPORT_QUERIES) for the campaign's contacts changed at
    `since` or later, in chunks of `chunk_rows`, read by a server-side cursor.

    The next chunk is asked for before this one is handed over, so that PostgreSQL
    prepares it while the caller writes this one (two cores working, not one at a
    time). Rows stay asyncpg records of one text each.
    """
    async with (
        pool.acquire() as conn,
        # A cursor lives in a transaction; it reads the snapshot taken when it opens,
        # so a contact changing during the export appears once, as it was then.
        conn.transaction(readonly=True),
    ):
        # Times are written in UTC whatever the server's or the session's zone.
        await conn.execute("SET LOCAL TimeZone = 'UTC'")
        cursor = await conn.cursor(EXPORT_QUERIES[query], campaign_id, since)
        ahead = asyncio.ensure_future(cursor.fetch(chunk_rows))
        try:
            while rows := await ahead:
                ahead = asyncio.ensure_future(cursor.fetch(chunk_rows))
                await asyncio.sleep(0)  # lets it send its request before we go on
                yield rows
        finally:
            # The caller stopped early (its output failed), or a fetch failed.
            if not ahead.done():
                ahead.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await ahead
