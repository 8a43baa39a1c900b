"""`campaign batches` and `campaign resolve`: what they print, for people and scripts."""

from __future__ import annotations

import json
from typing import Any, Final, assert_never

from campaign.db.batches import BatchList, BatchListRow, Listing, Resolution
from campaign.status import format_age

ERROR_WIDTH: Final = 60
"""Characters of last_error shown in the table (JSON carries it whole)."""

COLUMNS: Final = (
    "id",
    "campaign",
    "unique_id",
    "age",
    "sends",
    "state",
    "in_doubt",
    "contacts",
    "last_error",
)
_NUMERIC: Final = frozenset({"id", "sends", "contacts"})

_WHAT: Final[dict[Listing, str]] = {"open": "open", "parked": "parked", "all": ""}


def one_line(text: str) -> str:
    # Reasons can be Aculab error bodies with newlines; a table row must stay one line.
    return " ".join(text.split())


def shorten(text: str, width: int = ERROR_WIDTH) -> str:
    flat = one_line(text)
    return flat if len(flat) <= width else flat[: width - 3] + "..."


def _cells(b: BatchListRow) -> tuple[str, ...]:
    return (
        str(b.id),
        b.campaign,
        b.unique_id,
        format_age(b.age_seconds),
        str(b.sends),
        b.state,
        "yes" if b.in_doubt else "no",
        str(b.contacts),
        shorten(b.last_error) if b.last_error else "",
    )


def render_table(listing: BatchList, which: Listing, campaign: str | None, limit: int) -> str:
    scope = f" in campaign {campaign!r}" if campaign is not None else ""
    if not listing.rows:
        kind = _WHAT[which]
        return f"no {kind + ' ' if kind else ''}batches{scope}"
    rows = [COLUMNS, *(_cells(b) for b in listing.rows)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(COLUMNS))]
    lines = []
    for row in rows:
        cells = [
            cell.rjust(width) if name in _NUMERIC and row is not COLUMNS else cell.ljust(width)
            for name, cell, width in zip(COLUMNS, row, widths, strict=True)
        ]
        lines.append("  ".join(cells).rstrip())
    if listing.more:
        order = "newest" if which == "all" else "oldest"
        lines.append(f"... showing the {limit} {order}; more with --limit N")
    return "\n".join(lines)


def to_json_document(listing: BatchList) -> list[dict[str, Any]]:
    out = []
    for b in listing.rows:
        doc: dict[str, Any] = {
            "id": b.id,
            "campaign_id": b.campaign_id,
            "campaign": b.campaign,
            "unique_id": b.unique_id,
            "state": b.state,
            "in_doubt": b.in_doubt,
            "sends": b.sends,
            "contacts": b.contacts,
            "created_at": b.created_at.isoformat(),
            "age_seconds": round(b.age_seconds, 3),
            "next_send_at": b.next_send_at.isoformat(),
            "owner": b.owner,
            "last_error": b.last_error,
        }
        # Aculab's raw answer is kept only when it could not be used: rare and long.
        if b.raw_answer is not None:
            doc["raw_answer"] = b.raw_answer
        out.append(doc)
    return out


def render_json(listing: BatchList) -> str:
    return json.dumps(to_json_document(listing), indent=2, ensure_ascii=False)


# --- resolve --------------------------------------------------------------------------------


def _contacts(n: int) -> str:
    return f"{n:,} contact{'' if n == 1 else 's'}"


def resolution_line(r: Resolution) -> str:
    """The one line `campaign resolve` prints: what happened, and what happens next."""
    head = f"batch {r.batch_id} of campaign {r.campaign!r} (unique_id {r.unique_id})"
    inactive = r.campaign_state != "active"
    match r.action:
        case "resend":
            line = (
                f"{head} goes back to the daemons to be re-sent with the same bytes and id; "
                f"{_contacts(r.contacts)} stay dispatching"
            )
            if r.forced:
                line += f" (forced: created {format_age(r.age_seconds)} ago)"
            if inactive:
                line += (
                    f"; campaign {r.campaign!r} is {r.campaign_state}: it is sent after "
                    f"`campaign resume {r.campaign}`"
                )
            return line
        case "not_started":
            line = f"{head} released: {_contacts(r.contacts)} {r.contacts_state}, no attempt used"
            if r.contacts_state == "pending" and inactive:
                line += (
                    f"; campaign {r.campaign!r} is {r.campaign_state}: they are dialed after "
                    f"`campaign resume {r.campaign}`"
                )
            elif r.contacts_state == "cancelled":
                line += f" (campaign {r.campaign!r} is cancelled)"
            return line
        case "failed":
            return f"{head} failed: {_contacts(r.contacts)} failed ({one_line(r.reason or '')})"
        case _:
            assert_never(r.action)
