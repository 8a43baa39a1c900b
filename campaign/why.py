"""`campaign why NAME`: why a campaign's contacts are not being dialed right now.

One snapshot of the database (admin.read_snapshot) is read into a report whose sections
each name one thing that holds contacts back: the campaign's state, Aculab unreachable
(from the daemons' own reports), the calling window, retry delays, not_before, contacts
that will never be dialed, pacing, the concurrency cap, the do-not-call list, parked
batches and batches still in flight. A section is shown only when it applies; the JSON
document always carries every key (null when a section does not apply) and lists the
ones that apply under "reasons", so scripts need not parse the text.

Contacts a claim has yet to judge (due now, or never looked at by a daemon) are judged
here by the claim's own function, `dispatch.contact_verdict`, and checked against the
do-not-call list and the numbers already claimed, so that "due now" counts only the
contacts a daemon would dial now: the others wait for their window (next opening per
zone) or will be marked invalid, suppressed or duplicate. At most EXAMINE_LIMIT of them
are judged, the first in the order a daemon takes them; beyond that the report says its
figures are a sample. The daemon's `campaign_outlook` line at start comes from here too.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final, Literal, assert_never

from campaign.db import admin
from campaign.db import queries as q
from campaign.db.admin import CampaignView, ParkedSummary, PendingGroup
from campaign.dispatch import DUPLICATE_REASON, Deferred, Ready, Rules, Skipped, contact_verdict
from campaign.status import format_age, format_window, window_json
from campaign.vocabulary import ACCOUNT_BUDGET, campaign_budget

PACING_WINDOW_SECONDS: Final = 10.0
"""Pacing is measured over the grants of this many seconds."""
AT_CAP_SHARE: Final = 0.9
"""A budget achieving this share of its cap counts as the limit."""
PARKED_SHOWN: Final = 3
GROUPS_SHOWN: Final = 10
"""Window openings and retry results listed in the text (JSON lists them all)."""
EXAMINE_LIMIT: Final = 10_000
"""Contacts judged by the claim's rules at most: the first a daemon would take."""
SUPPRESSED_REASON: Final = "on the do-not-call list"
"""The claim's reason for a suppressed contact."""

Reason = Literal[
    "campaign_not_active",
    "aculab_unreachable",
    "calling_window",
    "retry_wait",
    "not_before",
    "never_dialed",
    "pacing",
    "concurrency",
    "suppressed",
    "parked_batches",
    "batches_in_flight",
    "due_now",
]
HeldBy = Literal["campaign_not_active", "aculab_unreachable", "concurrency", "pacing"]


@dataclass(frozen=True)
class WaitGroup:
    label: str
    """The window's opening (the dispatcher's last_error) or the retried last_result."""
    contacts: int
    earliest: datetime


@dataclass(frozen=True)
class Waiting:
    """Pending contacts not due yet for one reason; `earliest` is when the first is due."""

    contacts: int
    earliest: datetime
    groups: list[WaitGroup]


@dataclass(frozen=True)
class NeverGroup:
    """Contacts the claim will mark `state` (invalid, suppressed, duplicate) instead of dialing."""

    state: str
    reason: str
    """The claim's reason, without the (masked) number it quotes, so that alike ones group."""
    contacts: int


@dataclass(frozen=True)
class Examined:
    """How many contacts the claim's rules were applied to, of how many it has yet to judge."""

    contacts: int
    of: int
    limit: int

    @property
    def sample(self) -> bool:
        return self.of > self.contacts


@dataclass(frozen=True)
class Budget:
    cap: float
    """Calls per second allowed."""
    granted: int
    """Calls granted in the last `seconds`."""
    seconds: float

    @property
    def rate(self) -> float:
        return self.granted / self.seconds

    @property
    def at_cap(self) -> bool:
        return self.granted > 0 and self.rate >= AT_CAP_SHARE * self.cap


@dataclass(frozen=True)
class Concurrency:
    open_calls: int
    """Calls started and not finished (calls.finished_at IS NULL)."""
    dispatching: int
    """Contacts in a batch not yet acknowledged by Aculab."""
    cap: int

    @property
    def at_cap(self) -> bool:
        return self.open_calls + self.dispatching >= self.cap


@dataclass(frozen=True)
class WhyReport:
    campaign: CampaignView
    as_of: datetime
    contact_states: dict[str, int]
    calling_window: Waiting | None
    retry_wait: Waiting | None
    not_before: Waiting | None
    never_dialed: list[NeverGroup]
    """Pending contacts the claim will mark invalid, suppressed or duplicate."""
    due: int
    """Pending contacts whose time has come and that a daemon would dial now."""
    due_not_examined: int
    """Pending contacts whose time has come, beyond the ones the rules were applied to."""
    examined: Examined
    campaign_pacing: Budget
    account_pacing: Budget
    concurrency: Concurrency
    parked: ParkedSummary
    in_flight_batches: int
    in_flight_contacts: int
    daemons: list[admin.DaemonRow]
    """The daemons alive now, each with whether it can reach Aculab."""

    @property
    def active(self) -> bool:
        return self.campaign.state == "active"

    @property
    def pending(self) -> int:
        return self.contact_states.get("pending", 0)

    @property
    def suppressed(self) -> int:
        return self.contact_states.get("suppressed", 0)

    @property
    def never(self) -> int:
        return sum(g.contacts for g in self.never_dialed)

    @property
    def due_all(self) -> int:
        """Due now, counting the due contacts that were not examined."""
        return self.due + self.due_not_examined

    @property
    def aculab_unreachable(self) -> list[admin.DaemonRow]:
        """The daemons that cannot reach Aculab (their circuit breaker is open)."""
        return [d for d in self.daemons if d.aculab_unreachable_since is not None]

    @property
    def pacing_at_cap(self) -> bool:
        return self.campaign_pacing.at_cap or self.account_pacing.at_cap

    @property
    def due_held_by(self) -> HeldBy | None:
        """What keeps due contacts from going out at once (None: nothing)."""
        if not self.active:
            return "campaign_not_active"
        if self.daemons and len(self.aculab_unreachable) == len(self.daemons):
            return "aculab_unreachable"
        if self.concurrency.at_cap:
            return "concurrency"
        if self.pacing_at_cap:
            return "pacing"
        return None

    @property
    def reasons(self) -> list[Reason]:
        """The sections that apply, in the order they are shown."""
        found: list[Reason] = []
        if not self.active:
            found.append("campaign_not_active")
        if self.aculab_unreachable:
            found.append("aculab_unreachable")
        if self.calling_window is not None:
            found.append("calling_window")
        if self.retry_wait is not None:
            found.append("retry_wait")
        if self.not_before is not None:
            found.append("not_before")
        if self.never_dialed:
            found.append("never_dialed")
        held = self.due_held_by if self.due_all else None
        if held == "pacing":
            found.append("pacing")
        if held == "concurrency":
            found.append("concurrency")
        if self.suppressed:
            found.append("suppressed")
        if self.parked.count:
            found.append("parked_batches")
        if self.in_flight_batches:
            found.append("batches_in_flight")
        if self.due_all and held is None:
            found.append("due_now")
        return found


def _waiting(groups: list[PendingGroup], hold: str) -> Waiting | None:
    mine = [g for g in groups if g.hold == hold]
    if not mine:
        return None
    mine.sort(key=lambda g: (g.earliest, g.detail or ""))
    return Waiting(
        contacts=sum(g.contacts for g in mine),
        earliest=mine[0].earliest,
        groups=[WaitGroup(g.detail or "", g.contacts, g.earliest) for g in mine],
    )


@dataclass(frozen=True)
class _Fate:
    """What the claim will do with one examined contact."""

    item: admin.Examinable
    kind: Literal["dial", "window", "never", "later"]
    """dial: due and dialed now; window: due but waits for its window; never: marked
    `state`; later: not due yet and nothing against it (stays in its group)."""
    state: str = ""
    reason: str = ""
    until: datetime | None = None


# The claim's reasons quote the number, masked ("... country: 0190*****00"); without it
# alike contacts group.
_QUOTED_NUMBER: Final = re.compile(r": \+?[0-9*]*\*[0-9*]*$")


def _reason_kind(reason: str) -> str:
    return _QUOTED_NUMBER.sub("", _one_line(reason))


async def _judge(conn: q.Conn, snap: admin.WhySnapshot) -> list[_Fate]:
    """The claim's verdict on each examined contact (see the module docstring)."""
    rules = Rules.of(snap.rules, snap.taken_at)
    judged = [(item, contact_verdict(item.contact, rules)) for item in snap.examined]
    live = [(item, v) for item, v in judged if not isinstance(v, Skipped)]
    destinations = [v.destination for _, v in live]
    numbers = sorted({d.number for d in destinations if d is not None and d.number})
    keys = sorted({d.key for d in destinations if d is not None})
    blocked = await admin.suppressed_numbers(conn, snap.campaign.id, numbers)
    owners = await admin.key_owners(conn, snap.campaign.id, keys)
    fates: list[_Fate] = []
    for item, v in judged:
        if isinstance(v, Skipped):
            fates.append(_Fate(item, "never", v.state, v.reason))
    # As the claims will meet them: the contacts dialed now first, in claim order, then
    # the others as their windows open. The first with a number owns it (own_keys).
    live.sort(key=lambda iv: not (iv[0].hold == "due" and isinstance(iv[1], Ready)))
    taken: dict[str, int] = dict(owners)
    for item, v in live:
        dest = v.destination
        contact_id = item.contact.id
        if dest is not None and dest.number is not None and dest.number in blocked:
            fates.append(_Fate(item, "never", "suppressed", SUPPRESSED_REASON))
            continue
        if dest is not None and taken.setdefault(dest.key, contact_id) != contact_id:
            fates.append(_Fate(item, "never", "duplicate", DUPLICATE_REASON))
            continue
        if item.hold != "due":
            fates.append(_Fate(item, "later"))
        elif isinstance(v, Deferred):
            fates.append(_Fate(item, "window", reason=v.reason, until=v.until))
        else:
            fates.append(_Fate(item, "dial"))
    return fates


@dataclass(frozen=True)
class _Regrouped:
    pending: list[PendingGroup]
    never: list[NeverGroup]
    due: int
    due_not_examined: int


def _regroup(groups: list[PendingGroup], fates: list[_Fate]) -> _Regrouped:
    """The database's groups, with each examined contact moved to where its verdict puts it."""
    counts: dict[tuple[admin.Hold, str | None], list[Any]] = {
        (g.hold, g.detail): [g.contacts, g.earliest] for g in groups
    }
    never: Counter[tuple[str, str]] = Counter()

    def leave(item: admin.Examinable) -> None:
        entry = counts.get((item.hold, item.detail))
        if entry is not None:
            entry[0] -= 1

    for fate in fates:
        if fate.kind == "never":
            leave(fate.item)
            never[(fate.state, _reason_kind(fate.reason))] += 1
        elif fate.kind == "window" and fate.until is not None:
            leave(fate.item)
            entry = counts.setdefault(("window", fate.reason), [0, fate.until])
            entry[0] += 1
            entry[1] = min(entry[1], fate.until)
    due_total = next((g.contacts for g in groups if g.hold == "due"), 0)
    due_examined = sum(1 for f in fates if f.item.hold == "due")
    pending = [
        PendingGroup(hold, detail, n, earliest)
        for (hold, detail), (n, earliest) in counts.items()
        if n > 0
    ]
    return _Regrouped(
        pending=pending,
        never=[
            NeverGroup(state, reason, n)
            for (state, reason), n in sorted(never.items(), key=lambda kv: (-kv[1], kv[0]))
        ],
        due=sum(1 for f in fates if f.kind == "dial"),
        due_not_examined=due_total - due_examined,
    )


async def gather_why(
    pool: admin.Pool,
    name: str,
    account_calls_per_second: float,
    alive_within: float = 60.0,
    examine: int = EXAMINE_LIMIT,
) -> WhyReport:
    """The report for one campaign. Raises CampaignNotFound.

    `account_calls_per_second` is the account's CPS from the settings (aculab.calls_per_second);
    a daemon that refreshed its row within `alive_within` seconds counts as running. The
    claim's rules are applied to at most `examine` contacts.
    """
    async with admin.read_snapshot(pool) as conn:
        return await read_why_report(
            conn, name, account_calls_per_second, alive_within=alive_within, examine=examine
        )


async def read_why_report(
    conn: q.Conn,
    name: str,
    account_calls_per_second: float,
    *,
    alive_within: float = 60.0,
    examine: int = EXAMINE_LIMIT,
) -> WhyReport:
    """`gather_why` on a connection inside `admin.read_snapshot`: every figure of the
    report, the do-not-call and duplicate checks included, comes from that snapshot."""
    snap = await admin.read_why(
        conn,
        name,
        window_seconds=PACING_WINDOW_SECONDS,
        parked_shown=PARKED_SHOWN,
        alive_within=alive_within,
        examine=examine,
    )
    c = snap.campaign
    regrouped = _regroup(snap.pending, await _judge(conn, snap))
    return WhyReport(
        campaign=c,
        as_of=snap.taken_at,
        contact_states=snap.contact_states,
        calling_window=_waiting(regrouped.pending, "window"),
        retry_wait=_waiting(regrouped.pending, "retry"),
        not_before=_waiting(regrouped.pending, "not_before"),
        never_dialed=regrouped.never,
        due=regrouped.due,
        due_not_examined=regrouped.due_not_examined,
        examined=Examined(len(snap.examined), sum(g.examinable for g in snap.pending), examine),
        campaign_pacing=Budget(
            c.calls_per_second, snap.granted[campaign_budget(c.id)], snap.window_seconds
        ),
        account_pacing=Budget(
            account_calls_per_second, snap.granted[ACCOUNT_BUDGET], snap.window_seconds
        ),
        concurrency=Concurrency(
            snap.open_calls, snap.contact_states.get("dispatching", 0), c.max_concurrent_calls
        ),
        parked=snap.parked,
        in_flight_batches=snap.in_flight_batches,
        in_flight_contacts=snap.in_flight_contacts,
        daemons=snap.daemons,
    )


# --- JSON -------------------------------------------------------------------------------


def _iso(moment: datetime) -> str:
    return moment.isoformat()


def _waiting_json(w: Waiting | None, key: str) -> dict[str, Any] | None:
    if w is None:
        return None
    return {
        "contacts": w.contacts,
        "earliest": _iso(w.earliest),
        "groups": [
            {key: g.label, "contacts": g.contacts, "earliest": _iso(g.earliest)} for g in w.groups
        ],
    }


def _budget_json(b: Budget) -> dict[str, Any]:
    return {
        "cap": b.cap,
        "granted": b.granted,
        "rate": round(b.rate, 3),
        "at_cap": b.at_cap,
    }


def to_json_document(r: WhyReport) -> dict[str, Any]:
    c = r.campaign
    return {
        "campaign": {
            "id": c.id,
            "name": c.name,
            "state": c.state,
            "state_reason": c.state_reason,
            "service_name": c.service_name,
        },
        "as_of": _iso(r.as_of),
        "window": window_json(c.window),
        "reasons": list(r.reasons),
        "contacts": {
            "total": sum(r.contact_states.values()),
            "pending": r.pending,
            "due": r.due,
            "never_dialed": r.never,
            "dispatching": r.contact_states.get("dispatching", 0),
            "dialing": r.contact_states.get("dialing", 0),
            "suppressed": r.suppressed,
        },
        "campaign_not_active": (
            None if r.active else {"state": c.state, "state_reason": c.state_reason}
        ),
        "calling_window": _waiting_json(r.calling_window, "reason"),
        "retry_wait": _waiting_json(r.retry_wait, "last_result"),
        "not_before": None
        if r.not_before is None
        else {"contacts": r.not_before.contacts, "earliest": _iso(r.not_before.earliest)},
        "never_dialed": None
        if not r.never_dialed
        else {
            "contacts": r.never,
            "groups": [
                {"state": g.state, "reason": g.reason, "contacts": g.contacts}
                for g in r.never_dialed
            ],
        },
        "examined": {
            "contacts": r.examined.contacts,
            "of": r.examined.of,
            "limit": r.examined.limit,
            "sample": r.examined.sample,
        },
        "pacing": {
            "window_seconds": r.campaign_pacing.seconds,
            "campaign": _budget_json(r.campaign_pacing),
            "account": _budget_json(r.account_pacing),
        },
        "concurrency": {
            "open_calls": r.concurrency.open_calls,
            "dispatching": r.concurrency.dispatching,
            "cap": r.concurrency.cap,
            "at_cap": r.concurrency.at_cap,
        },
        "suppressed": {"contacts": r.suppressed} if r.suppressed else None,
        "parked_batches": None
        if not r.parked.count
        else {
            "count": r.parked.count,
            "contacts": r.parked.contacts,
            "first": [
                {
                    "id": b.id,
                    "age_seconds": round(b.age_seconds, 3),
                    "contacts": b.contacts,
                    "reason": b.last_error,
                }
                for b in r.parked.first
            ],
        },
        "batches_in_flight": None
        if not r.in_flight_batches
        else {"count": r.in_flight_batches, "contacts": r.in_flight_contacts},
        "due": None
        if not r.due_all
        else {
            "contacts": r.due,
            "not_examined": r.due_not_examined,
            "held_by": r.due_held_by,
        },
        "daemons": {
            "alive": len(r.daemons),
            "aculab_unreachable": [
                {
                    "owner": d.owner,
                    "since": _iso(d.aculab_unreachable_since),
                    "error": d.aculab_error,
                }
                for d in r.aculab_unreachable
                if d.aculab_unreachable_since is not None
            ],
        },
    }


def render_json(report: WhyReport) -> str:
    return json.dumps(to_json_document(report), indent=2, ensure_ascii=False)


# --- text -------------------------------------------------------------------------------


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _plural(n: int, word: str) -> str:
    return f"{n:,} {word}{'' if n == 1 else 's'}"


def _when(moment: datetime, now: datetime) -> str:
    shown = moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    ahead = (moment - now).total_seconds()
    return f"{shown} (in {format_age(ahead)})" if ahead > 0 else shown


OUTSIDE_WINDOW_PREFIX: Final = "outside the calling window; "
"""How the dispatcher's last_error for a deferred contact starts; the rest names the opening."""


# "opens 2026-11-30T09:00:00+00:00 (09:00 Europe/London, 04:00 America/New_York)":
# windows.describe_opening's text, as the dispatcher stores it and contact_verdict gives it.
_OPENING: Final = re.compile(r"opens \S+ \((?P<clocks>[^()]*)\)$")


def _clocks(text: str) -> str:
    """'09:00 Europe/Guernsey, 09:00 Europe/London' -> '09:00 Europe/Guernsey, Europe/London'."""
    out: list[str] = []
    shown = None
    for part in text.split(", "):
        clock, _, zone = part.partition(" ")
        out.append(zone if clock == shown else part)
        shown = clock
    return ", ".join(out)


def _group_label(g: WaitGroup, now: datetime) -> str:
    label = _one_line(g.label)
    if label.startswith(OUTSIDE_WINDOW_PREFIX):
        opening = _OPENING.search(label)
        if opening is not None:
            ahead = (g.earliest - now).total_seconds()
            when = f"in {format_age(ahead)}" if ahead > 0 else "now"
            return f"wait for {_clocks(opening['clocks'])}, {when}"
    return f"{label}, first due {_when(g.earliest, now)}"


def _waiting_lines(title: str, w: Waiting, now: datetime) -> list[str]:
    lines = [f"  {title}: {_plural(w.contacts, 'contact')}, first due {_when(w.earliest, now)}"]
    if len(w.groups) > 1 or (w.groups and w.groups[0].label):
        width = max(len(f"{g.contacts:,}") for g in w.groups[:GROUPS_SHOWN])
        for g in w.groups[:GROUPS_SHOWN]:
            lines.append(f"    {g.contacts:>{width},}  {_group_label(g, now)}")
        if len(w.groups) > GROUPS_SHOWN:
            lines.append(f"    ... and {len(w.groups) - GROUPS_SHOWN} more (see --json)")
    return lines


def _budget_text(who: str, b: Budget) -> str:
    text = f"{who} cap {b.cap:g}/s, achieved {b.rate:.2f}/s ({b.granted:,} granted)"
    return text + (" - at the cap" if b.at_cap else "")


def render_text(r: WhyReport) -> str:
    c = r.campaign
    now = r.as_of
    lines = [
        f"campaign {c.name} (id {c.id}), {c.state}, as of {_when(now, now)}",
        f"  calling window: {format_window(c.window)}",
    ]
    if not r.active:
        reason = f" ({_one_line(c.state_reason)})" if c.state_reason else ""
        lines.append(f"  campaign is {c.state}{reason}: nothing is dialed")
        if c.state == "paused":
            lines.append(f"    `campaign resume {c.name}` dials it again")
    for d in r.aculab_unreachable:
        if d.aculab_unreachable_since is None:
            continue
        error = f": {_one_line(d.aculab_error)}" if d.aculab_error else ""
        lasted = format_age((now - d.aculab_unreachable_since).total_seconds())
        lines.append(
            f"  Aculab unreachable from daemon {d.owner} for {lasted} "
            f"(since {_when(d.aculab_unreachable_since, now)}){error}"
        )
        lines.append(
            "    it claims nothing new and probes with one request at a time; "
            "dialing resumes by itself when Aculab answers"
        )
    if r.calling_window is not None:
        lines += _waiting_lines("waiting for the calling window", r.calling_window, now)
    if r.retry_wait is not None:
        lines += _waiting_lines("waiting for a retry", r.retry_wait, now)
    if r.not_before is not None:
        lines.append(
            f"  not before a set time (not_before): {_plural(r.not_before.contacts, 'contact')}, "
            f"first due {_when(r.not_before.earliest, now)}"
        )
    if r.never_dialed:
        lines.append(f"  will never be dialed: {_plural(r.never, 'contact')}")
        width = max(len(f"{g.contacts:,}") for g in r.never_dialed[:GROUPS_SHOWN])
        for g in r.never_dialed[:GROUPS_SHOWN]:
            lines.append(f"    {g.contacts:>{width},}  will be {g.state}: {g.reason}")
        if len(r.never_dialed) > GROUPS_SHOWN:
            lines.append(f"    ... and {len(r.never_dialed) - GROUPS_SHOWN} more (see --json)")
    if r.examined.sample:
        e = r.examined
        lines.append(
            f"  (a sample: the claim's rules were applied to the first {e.contacts:,} of the "
            f"{e.of:,} contacts no daemon has judged yet, in the order a daemon takes them)"
        )
    if r.due_all or r.campaign_pacing.granted or r.account_pacing.granted:
        lines.append(
            f"  pacing over the last {r.campaign_pacing.seconds:g} s: "
            f"{_budget_text('campaign', r.campaign_pacing)}; "
            f"{_budget_text('account', r.account_pacing)}"
        )
    cc = r.concurrency
    if cc.open_calls or cc.dispatching:
        parked = f" ({r.parked.contacts:,} in parked batches)" if r.parked.contacts else ""
        lines.append(
            f"  concurrency: {_plural(cc.open_calls, 'call')} in progress, "
            f"{cc.dispatching:,} dispatching{parked}, cap {cc.cap:,}"
            + (" - at the cap" if cc.at_cap else "")
        )
    if r.suppressed:
        lines.append(
            f"  suppressed (do-not-call list): {_plural(r.suppressed, 'contact')}, not dialed"
        )
    if r.parked.count:
        lines.append(
            f"  parked batches: {r.parked.count:,} holding {_plural(r.parked.contacts, 'contact')}"
            " - an operator must decide: `campaign resolve BATCH_ID` (docs/operations.md: "
            "Resolving a parked batch)"
        )
        for b in r.parked.first:
            reason = _one_line(b.last_error) if b.last_error else "no reason recorded"
            lines.append(f"    batch {b.id}: age {format_age(b.age_seconds)}: {reason}")
        if r.parked.count > len(r.parked.first):
            lines.append(f"    ... and {r.parked.count - len(r.parked.first):,} more")
    if r.in_flight_batches:
        lines.append(
            f"  batches in flight: {r.in_flight_batches:,} "
            f"({_plural(r.in_flight_contacts, 'contact')}) awaiting Aculab's answer"
        )
    if r.due_all:
        lines.append(_due_line(r))
    elif r.pending and r.active:
        lines.append(_nothing_due_line(r))
    if r.pending == 0 and len(lines) == 2:
        total = sum(r.contact_states.values())
        lines.append(
            f"  no pending contacts ({_plural(total, 'contact')} in all; "
            f"`campaign status {c.name}` shows where they are)"
        )
    return "\n".join(lines)


def _next_due(r: WhyReport) -> datetime | None:
    waits = [w.earliest for w in (r.calling_window, r.retry_wait, r.not_before) if w is not None]
    return min(waits, default=None)


def _nothing_due_line(r: WhyReport) -> str:
    after = _next_due(r)
    if after is None:
        return "  due now: none, and no pending contact will ever be dialed"
    line = f"  due now: none; the next contact is due {_when(after, r.as_of)}"
    if not r.daemons:
        line += "; no daemon is running: start `campaign run` before then"
    return line


def _due_line(r: WhyReport) -> str:
    due = _plural(r.due, "contact")
    if r.due_not_examined:
        due += f" (and {r.due_not_examined:,} more due, not examined)"
    held = r.due_held_by
    if held is None and not r.daemons:
        return f"  due now: {due}, but no daemon is running: start `campaign run` to dial them"
    if held is None:
        return f"  due now: {due} (a running daemon will pick them up)"
    if held == "campaign_not_active":
        return f"  due: {due}, held while the campaign is {r.campaign.state}"
    if held == "aculab_unreachable":
        return f"  due: {due}, held until Aculab can be reached again"
    if held == "concurrency":
        return f"  due: {due}, waiting for calls in progress to finish (concurrency cap)"
    if held == "pacing":
        rate = min(r.campaign_pacing.cap, r.account_pacing.cap)
        return (
            f"  due: {due}, going out at the pacing cap "
            f"(about {format_age(r.due_all / rate)} at {rate:g}/s)"
        )
    assert_never(held)


# --- the daemon's outlook ---------------------------------------------------------------

Doing = Literal[
    "dialing",
    "paused",
    "waiting_for_window",
    "waiting_for_retry",
    "waiting_for_not_before",
    "nothing_to_dial",
    "nothing_pending",
]


@dataclass(frozen=True)
class Outlook:
    """What a daemon starting now will do first for one campaign (its `campaign_outlook`)."""

    doing: Doing
    due: int
    """Contacts a daemon would dial now (with those due but not examined)."""
    until: datetime | None
    """When the wait ends (the first contact becomes due); None when not waiting."""
    reason: str | None
    """The paused campaign's state_reason, or the first window group's opening."""
    pending: int
    never_dialed: int
    sample: bool


def outlook(r: WhyReport) -> Outlook:
    """The campaign's outlook, from the same report `campaign why` prints."""

    def make(doing: Doing, until: datetime | None = None, reason: str | None = None) -> Outlook:
        return Outlook(doing, r.due_all, until, reason, r.pending, r.never, r.examined.sample)

    if not r.active:
        return make("paused", reason=r.campaign.state_reason)
    if r.due_all:
        return make("dialing")
    waits: list[tuple[datetime, Doing, str | None]] = []
    if r.calling_window is not None:
        first = r.calling_window.groups[0].label if r.calling_window.groups else None
        waits.append((r.calling_window.earliest, "waiting_for_window", first))
    if r.retry_wait is not None:
        waits.append((r.retry_wait.earliest, "waiting_for_retry", None))
    if r.not_before is not None:
        waits.append((r.not_before.earliest, "waiting_for_not_before", None))
    if waits:
        until, doing, reason = min(waits, key=lambda w: w[0])
        return make(doing, until, reason)
    return make("nothing_to_dial" if r.pending else "nothing_pending")
