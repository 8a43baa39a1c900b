"""`campaign status`: where each campaign stands, for people (a table) and scripts (JSON)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from campaign.db import admin
from campaign.db import queries as q
from campaign.db.admin import CallingWindow
from campaign.vocabulary import CONTACT_STATES, CampaignState, ContactState

MAX_PARKED_SHOWN = 20
"""Parked batches listed per campaign in the table (JSON lists them all)."""

RESOLUTIONS_SHOWN = 5
"""The latest resolutions of parked batches shown per campaign (table and JSON)."""

WEEKDAY_NAMES = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
"""ISO weekdays 1-7."""


@dataclass(frozen=True)
class ParkedBatch:
    id: int
    created_at: datetime
    age_seconds: float
    contacts: int
    reason: str | None
    in_doubt: bool
    """A send of it may have started calls at Aculab."""


@dataclass(frozen=True)
class Resolution:
    """An operator's `campaign resolve` of a parked batch."""

    batch_id: int
    action: str
    contacts: int
    reason: str | None
    resolved_by: str
    resolved_at: datetime


@dataclass(frozen=True)
class CampaignStatus:
    id: int
    name: str
    state: CampaignState
    state_reason: str | None
    window: CallingWindow
    contacts: dict[ContactState, int]
    """Every contact state, zero included, in CONTACT_STATES order."""
    calls_started: int
    batches_in_flight: int
    """Batches persisted but not yet acknowledged by Aculab (batches.state = 'pending')."""
    parked: list[ParkedBatch]
    released_batches: int
    """Batches that started nothing and gave their contacts back to the queue."""
    resolutions: list[Resolution]
    """The latest RESOLUTIONS_SHOWN resolutions, newest first."""
    as_of: datetime
    outcomes: dict[str, int]
    """Calls per call_cause; 'awaiting' for calls whose outcome has not arrived."""
    attempts: dict[int, int]
    """Contacts per number of calls started for them (0 = not called yet)."""

    @property
    def contacts_total(self) -> int:
        return sum(self.contacts.values())


async def gather_status(pool: admin.Pool, name: str | None = None) -> list[CampaignStatus]:
    """Status of every campaign (by id), or of the named one (CampaignNotFound if none)."""
    async with admin.read_snapshot(pool) as conn:
        return await read_status(conn, name)


async def read_status(conn: q.Conn, name: str | None = None) -> list[CampaignStatus]:
    """`gather_status` on a connection inside `admin.read_snapshot`."""
    snap = await admin.read_status(conn, name, resolutions_shown=RESOLUTIONS_SHOWN)
    parked: dict[int, list[ParkedBatch]] = {}
    for b in snap.parked:
        parked.setdefault(b.campaign_id, []).append(
            ParkedBatch(b.id, b.created_at, b.age_seconds, b.contacts, b.last_error, b.in_doubt)
        )
    resolutions: dict[int, list[Resolution]] = {}
    for r in snap.resolutions:
        resolutions.setdefault(r.campaign_id, []).append(
            Resolution(r.batch_id, r.action, r.contacts, r.reason, r.resolved_by, r.resolved_at)
        )
    result = []
    for c in snap.campaigns:
        counts = snap.contact_counts.get(c.id, {})
        result.append(
            CampaignStatus(
                id=c.id,
                name=c.name,
                state=c.state,
                state_reason=c.state_reason,
                window=c.window,
                contacts={state: counts.get(state, 0) for state in CONTACT_STATES},
                calls_started=snap.calls_started.get(c.id, 0),
                batches_in_flight=snap.batches_in_flight.get(c.id, 0),
                parked=parked.get(c.id, []),
                released_batches=snap.released.get(c.id, 0),
                resolutions=resolutions.get(c.id, []),
                as_of=snap.taken_at,
                outcomes=dict(sorted(snap.outcomes.get(c.id, {}).items())),
                attempts=dict(sorted(snap.attempts.get(c.id, {}).items())),
            )
        )
    return result


# --- calling windows ----------------------------------------------------------------------


def format_days(days: tuple[int, ...]) -> str:
    """ISO weekdays as text: (1, 2, 3, 4, 5) -> 'Mon-Fri', (1, 3, 6, 7) -> 'Mon, Wed, Sat-Sun'."""
    wanted = sorted(set(days))
    if wanted == list(range(1, 8)):
        return "every day"
    runs: list[list[int]] = []
    for day in wanted:
        if runs and day == runs[-1][-1] + 1:
            runs[-1].append(day)
        else:
            runs.append([day])
    parts = []
    for run in runs:
        first, last = WEEKDAY_NAMES[run[0] - 1], WEEKDAY_NAMES[run[-1] - 1]
        parts.append(first if len(run) == 1 else f"{first}-{last}")
    return ", ".join(parts)


def format_window(window: CallingWindow) -> str:
    """'09:00-20:00 local time, Mon-Fri (default zone Europe/London)'."""
    if window.start == "00:00" and window.end == "24:00" and len(set(window.days)) == 7:
        text = "any time"
    else:
        hours = f"{window.start}-{window.end}"
        if window.end != "24:00" and window.end < window.start:
            hours += " (past midnight)"
        text = f"{hours} local time, {format_days(window.days)}"
    if window.default_timezone:
        text += f" (default zone {window.default_timezone})"
    return text


def window_json(window: CallingWindow) -> dict[str, Any]:
    return {
        "start": window.start,
        "end": window.end,
        "days": list(window.days),
        "default_timezone": window.default_timezone,
        "text": format_window(window),
    }


# --- JSON -------------------------------------------------------------------------------


def to_json_document(statuses: list[CampaignStatus]) -> dict[str, Any]:
    return {
        "campaigns": [
            {
                "id": s.id,
                "name": s.name,
                "state": s.state,
                "state_reason": s.state_reason,
                "window": window_json(s.window),
                "contacts": dict(s.contacts),
                "contacts_total": s.contacts_total,
                "calls_started": s.calls_started,
                "outcomes": dict(s.outcomes),
                "attempts": {str(k): v for k, v in s.attempts.items()},
                "batches_in_flight": s.batches_in_flight,
                "parked_batches": [
                    {
                        "id": b.id,
                        "created_at": b.created_at.isoformat(),
                        "age_seconds": round(b.age_seconds, 3),
                        "contacts": b.contacts,
                        "reason": b.reason,
                        "in_doubt": b.in_doubt,
                    }
                    for b in s.parked
                ],
                "released_batches": s.released_batches,
                "resolutions": [
                    {
                        "resolved_at": r.resolved_at.isoformat(),
                        "resolved_by": r.resolved_by,
                        "action": r.action,
                        "batch_id": r.batch_id,
                        "contacts": r.contacts,
                        "reason": r.reason,
                    }
                    for r in s.resolutions
                ],
                "as_of": s.as_of.isoformat(),
            }
            for s in statuses
        ]
    }


def render_json(statuses: list[CampaignStatus]) -> str:
    return json.dumps(to_json_document(statuses), indent=2, ensure_ascii=False)


# --- the table --------------------------------------------------------------------------


def format_age(seconds: float) -> str:
    """A short age: 42s, 7m05s, 3h12m, 2d04h."""
    s = max(0, int(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def _one_line(text: str) -> str:
    # Reasons can be Aculab error bodies with newlines; a table row must stay one line.
    return " ".join(text.split())


def _block(s: CampaignStatus) -> list[str]:
    state = s.state + (f" ({_one_line(s.state_reason)})" if s.state_reason else "")
    rows: list[tuple[str, str]] = [
        ("state", state),
        ("window", format_window(s.window)),
        ("contacts", f"{s.contacts_total:,}"),
    ]
    rows += [(f"  {name}", f"{n:,}") for name, n in s.contacts.items()]
    rows += [("calls started", f"{s.calls_started:,}")]
    rows += [(f"  {cause}", f"{n:,}") for cause, n in s.outcomes.items()]
    rows += [
        (f"  contacts with {k} call{'s' if k != 1 else ''}", f"{n:,}")
        for k, n in s.attempts.items()
    ]
    rows += [
        ("batches in flight", f"{s.batches_in_flight:,}"),
        ("parked batches", f"{len(s.parked):,}"),
        ("released batches", f"{s.released_batches:,}"),
    ]
    label_width = max(len(label) for label, _ in rows)
    # Numbers right-aligned in one column; the state and window (text) are left as they are.
    text_rows = ("state", "window")
    number_width = max(len(value) for label, value in rows if label not in text_rows)
    lines = [f"campaign {s.name} (id {s.id})"]
    for label, value in rows:
        shown = value if label in text_rows else value.rjust(number_width)
        lines.append(f"  {label.ljust(label_width)}  {shown}")
    for b in s.parked[:MAX_PARKED_SHOWN]:
        reason = _one_line(b.reason) if b.reason else "no reason recorded"
        doubt = "in doubt" if b.in_doubt else "not in doubt"
        lines.append(
            f"    batch {b.id}: age {format_age(b.age_seconds)}, "
            f"{b.contacts} contact{'s' if b.contacts != 1 else ''}, {doubt}: {reason}"
        )
    if len(s.parked) > MAX_PARKED_SHOWN:
        lines.append(f"    ... and {len(s.parked) - MAX_PARKED_SHOWN} more (see --json)")
    if s.resolutions:
        lines.append("  last resolutions")
    for r in s.resolutions:
        # Whole seconds in UTC: enough to match the row in batch_resolutions.
        when = r.resolved_at.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%SZ")
        reason = f": {_one_line(r.reason)}" if r.reason else ""
        lines.append(
            f"    {when} {r.resolved_by}: {r.action} batch {r.batch_id}, "
            f"{r.contacts} contact{'s' if r.contacts != 1 else ''}{reason}"
        )
    return lines


def render_table(statuses: list[CampaignStatus]) -> str:
    if not statuses:
        return "no campaigns"
    blocks = ["\n".join(_block(s)) for s in statuses]
    return "\n\n".join(blocks)
