"""`campaign plan NAME`: when a campaign will finish and what it will do until then.

One snapshot of the database (db.plan.plan_snapshot) becomes the inputs of the
simulation in `campaign.forecast`: the open contacts as cohorts (when each becomes due,
attempts used, the zones whose calling windows decide when it is dialed), the calls in
progress, the outcome mix and call durations so far, the retry policy, pacing and the
concurrency cap. Zones come from the claim's own judgement of each contact
(`dispatch.contact_verdict`); beyond SAMPLE_LIMIT open contacts, of a sample spread
over the campaign, whose mix of zones is applied to each group of alike contacts.

`forecast()` (its own snapshot) and `forecast_on()` (inside the caller's read-only
snapshot, as a dashboard reads) are the entry points for other views: they return a
frozen `Forecast` whose `eta_seconds` and `finish_at` are None unless the campaign is
active and will finish on its own (`outlook()` says why not).
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Final, Literal, assert_never

from campaign import windows
from campaign.db import plan as db
from campaign.db.admin import CampaignView, Pool
from campaign.db.queries import Conn
from campaign.dispatch import Rules, Skipped, contact_verdict
from campaign.forecast import (
    HORIZON_DAYS,
    Arrival,
    Cohort,
    Constraint,
    InFlight,
    Limits,
    Mix,
    PlanInputs,
    Projection,
    Zones,
    expected_calls,
    simulate,
)
from campaign.settings import Settings
from campaign.status import format_age, format_window, window_json

SAMPLE_LIMIT: Final = 20_000
"""Open contacts judged one by one at most; beyond, a sample stands for the rest."""
ZONES_SHOWN: Final = 10
"""Zone sets listed in the text (JSON lists them all)."""

CONSTRAINT_TEXT: Final[dict[Constraint, str]] = {
    "pacing": "pacing",
    "concurrency": "the concurrency cap",
    "calling_window": "calling windows",
    "retries": "retry delays",
    "not_before": "not_before",
    "calls_in_progress": "calls in progress",
}


@dataclass(frozen=True)
class ZoneLoad:
    """Open contacts whose calls wait for the window in these zones."""

    zones: tuple[str, ...]
    """() when the window is open at any time."""
    contacts: float
    open_now: bool
    changes_at: datetime | None
    """When it closes (open now) or opens next; None: never within the horizon."""


@dataclass(frozen=True)
class Workload:
    pending: int
    dispatching: int
    """Not counting the ones in parked batches."""
    dialing: int
    parked: int
    """Dispatching in parked batches: an operator decides; not in the forecast."""
    never_dialed: float
    """Pending contacts the claim will mark invalid (estimated from the sample)."""
    total: int

    @property
    def open(self) -> int:
        return self.pending + self.dispatching + self.dialing


@dataclass(frozen=True)
class Forecast:
    campaign: CampaignView
    as_of: datetime
    inputs: PlanInputs
    projection: Projection | None
    """What happens from now on if the campaign is (or were) active; None when it is
    cancelled or completed."""
    workload: Workload
    zones: tuple[ZoneLoad, ...]
    judged: int
    """Open contacts whose zones were found one by one (all of them unless a sample)."""
    daemons_alive: int
    other_active_campaigns: int

    @property
    def active(self) -> bool:
        return self.campaign.state == "active"

    @property
    def sample(self) -> bool:
        return self.judged < self.workload.open

    @property
    def eta_seconds(self) -> float | None:
        """Seconds until the campaign finishes: None unless it is active (and will
        finish), 0 once completed."""
        if self.campaign.state == "completed":
            return 0.0
        if not self.active or self.projection is None or self.workload.parked:
            return None
        return self.projection.eta_seconds

    @property
    def finish_at(self) -> datetime | None:
        """When it finishes (active), or finished (completed: its last change)."""
        if self.campaign.state == "completed":
            return self.campaign.updated_at
        if not self.active or self.projection is None or self.workload.parked:
            return None
        return self.projection.finish_at

    @property
    def calls_per_new_contact(self) -> float:
        i = self.inputs
        return expected_calls(0, i.mix, i.max_attempts, i.retry_delays)


# --- from the snapshot to the model's inputs --------------------------------------------


def zones_of(contact: Any, rules: Rules) -> Zones:
    """The zones whose windows decide when the claim dials this contact; None when it
    never will (the claim marks it invalid)."""
    verdict = contact_verdict(contact, rules)
    if isinstance(verdict, Skipped):
        return None
    if rules.always_open:
        return ()
    destination = verdict.destination
    found = rules.zones(contact.timezone, () if destination is None else destination.timezones)
    if isinstance(found, str):
        return None
    return tuple(sorted(set(found)))


def _shares(counts: Counter[Zones]) -> list[tuple[Zones, float]]:
    total = sum(counts.values())
    return [(zones, n / total) for zones, n in sorted(counts.items(), key=_zone_order)]


def _zone_order(item: tuple[Zones, int]) -> tuple[int, tuple[str, ...]]:
    zones, n = item
    return (-n, zones or ())


_ARRIVALS: Final[dict[str, Arrival]] = {
    "not_before": "not_before",
    "window": "window",
    "retry": "retry",
}


def build_inputs(
    snap: db.PlanSnapshot,
    account_calls_per_second: float,
    pacing_guard_seconds: float = 0.02,
    poll_interval: float = 2.0,
) -> PlanInputs:
    """The simulation's inputs: the open contacts as cohorts with their zones."""
    now = snap.taken_at
    rules = Rules.of(snap.rules, now)
    by_group: dict[tuple[Any, ...], Counter[Zones]] = {}
    by_kind: dict[tuple[Any, ...], Counter[Zones]] = {}
    overall: Counter[Zones] = Counter()
    for s in snap.sample:
        zones = zones_of(s.contact, rules)
        by_group.setdefault(s.key, Counter())[zones] += 1
        state, _, hold, detail, _ = s.key
        by_kind.setdefault((state, hold, detail), Counter())[zones] += 1
        overall[zones] += 1
    cohorts: list[Cohort] = []
    in_flight: list[InFlight] = []
    for g in snap.groups:
        # The group's own sampled contacts, else alike ones (a window-deferred group
        # shares its opening, hence its zones), else the whole sample's mix.
        counts = by_group.get(g.key) or by_kind.get((g.state, g.hold, g.detail)) or overall
        if not counts:
            counts = Counter({() if rules.always_open else None: 1})
        offset = (g.at - now).total_seconds()
        for zones, share in _shares(counts):
            amount = g.contacts * share
            if g.state == "pending":
                arrival = _ARRIVALS.get(g.hold, "due")
                cohorts.append(Cohort(max(0.0, offset), g.attempts, zones, amount, arrival))
            elif g.state == "dispatching":
                in_flight.append(InFlight(0.0, g.attempts + 1, zones, amount))
            else:
                in_flight.append(InFlight(min(0.0, offset), g.attempts, zones, amount))
    c = snap.campaign
    own = {s.cause: (s.calls, s.mean_seconds) for s in snap.campaign_causes}
    account = {s.cause: (s.calls, s.mean_seconds) for s in snap.account_causes}
    mix = Mix.of(own, "campaign") if own else Mix.of(account, "account")
    return PlanInputs(
        now=now,
        cohorts=tuple(cohorts),
        in_flight=tuple(in_flight),
        mix=mix,
        limits=Limits(
            campaign_cps=c.calls_per_second,
            account_cps=account_calls_per_second,
            max_concurrent_calls=c.max_concurrent_calls,
            pacing_guard_seconds=pacing_guard_seconds,
            batch_size=c.batch_size,
            poll_interval=poll_interval,
        ),
        max_attempts=c.max_attempts,
        retry_delays=c.retry_delays,
        window=rules.window,
    )


def zone_loads(inputs: PlanInputs) -> tuple[ZoneLoad, ...]:
    """The open contacts per set of zones, with whether the window is open there now."""
    counts: dict[tuple[str, ...], float] = {}
    for c in inputs.cohorts:
        if c.zones is not None:
            counts[c.zones] = counts.get(c.zones, 0.0) + c.contacts
    for f in inputs.in_flight:
        if f.zones is not None:
            counts[f.zones] = counts.get(f.zones, 0.0) + f.contacts
    loads = []
    for zones, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])):
        if inputs.window.always_open or not zones:
            loads.append(ZoneLoad(zones, n, True, None))
            continue
        until = windows.open_until(inputs.now, zones, inputs.window)
        if until is not None:
            loads.append(ZoneLoad(zones, n, True, until))
        else:
            opening = windows.next_opening(inputs.now, zones, inputs.window)
            loads.append(ZoneLoad(zones, n, False, opening))
    return tuple(loads)


def plan_from_snapshot(snap: db.PlanSnapshot, settings: Settings) -> Forecast:
    """The forecast of one snapshot with these settings (no I/O)."""
    inputs = build_inputs(
        snap,
        settings.aculab.calls_per_second,
        settings.dispatcher.pacing_guard_seconds,
        settings.dispatcher.poll_interval,
    )
    c = snap.campaign
    # A paused campaign is forecast as if resumed now; a cancelled or completed one
    # dials nothing more.
    projection = simulate(inputs) if c.state in ("active", "paused") else None
    states = snap.contact_states
    return Forecast(
        campaign=c,
        as_of=snap.taken_at,
        inputs=inputs,
        projection=projection,
        workload=Workload(
            pending=states.get("pending", 0),
            dispatching=max(0, states.get("dispatching", 0) - snap.parked_contacts),
            dialing=states.get("dialing", 0),
            parked=snap.parked_contacts,
            never_dialed=sum(ch.contacts for ch in inputs.cohorts if ch.zones is None),
            total=sum(states.values()),
        ),
        zones=zone_loads(inputs),
        judged=len(snap.sample),
        daemons_alive=snap.daemons_alive,
        other_active_campaigns=snap.other_active_campaigns,
    )


async def forecast(
    pool: Pool, name: str, settings: Settings, *, sample: int = SAMPLE_LIMIT
) -> Forecast:
    """When the named campaign will finish (`eta_seconds`, `finish_at`) and what it will
    do until then. Raises CampaignNotFound.

    From the settings: the account's calls per second (aculab.calls_per_second), the
    dispatcher's pacing guard and poll interval, and its lease (a daemon that refreshed
    its row within dispatcher.lease_seconds counts as running, as for `campaign why`).
    At most `sample` open contacts are judged one by one.
    """
    snap = await db.plan_snapshot(
        pool, name, sample=sample, alive_within=settings.dispatcher.lease_seconds
    )
    return await asyncio.to_thread(plan_from_snapshot, snap, settings)


async def forecast_on(
    conn: Conn, name: str, settings: Settings, *, sample: int = SAMPLE_LIMIT
) -> Forecast:
    """`forecast` on a connection the caller holds inside a read-only, repeatable-read
    transaction (a dashboard's snapshot: the forecast then agrees with the rest of what
    it read). Raises CampaignNotFound."""
    snap = await db.read_plan(
        conn, name, sample=sample, alive_within=settings.dispatcher.lease_seconds
    )
    # The simulation is pure CPU, up to a minute for a campaign of a million contacts
    # in dozens of zones: off the event loop, so that a dashboard keeps answering.
    return await asyncio.to_thread(plan_from_snapshot, snap, settings)


# --- words shared by the text and the JSON ----------------------------------------------


def notes(f: Forecast) -> list[str]:
    """What the forecast assumes, in words, when it matters."""
    out = []
    mix = f.inputs.mix
    if mix.source == "account":
        out.append(
            f"no call of this campaign has finished yet: the outcome mix and call durations "
            f"are the account's latest {mix.calls:,} finished calls"
        )
    elif mix.source == "assumed":
        out.append(
            "no call has finished yet: the forecast assumes every call is answered (no "
            "retries) and that the concurrency cap does not bind"
        )
    if f.sample:
        out.append(
            f"time zones from a sample of {f.judged:,} of the {f.workload.open:,} open contacts"
        )
    if f.workload.parked:
        out.append(
            f"{f.workload.parked:,} contacts in parked batches wait for an operator "
            "(`campaign resolve`) and are not in the forecast"
        )
    if f.other_active_campaigns:
        out.append(
            f"{f.other_active_campaigns:,} other active campaigns share the account's "
            f"{f.inputs.limits.account_cps:g} calls/s: the forecast gives this one all of it"
        )
    if f.campaign.state in ("active", "paused") and f.workload.open and not f.daemons_alive:
        out.append("no daemon is running: the forecast assumes one starts now")
    return out


def _delay_text(seconds: Any) -> str:
    return format_age(float(seconds)) if isinstance(seconds, int | float) else str(seconds)


# --- JSON -------------------------------------------------------------------------------


def _iso(moment: datetime | None) -> str | None:
    return None if moment is None else moment.isoformat()


def _round(value: float | None, digits: int = 3) -> float | None:
    return None if value is None else round(value, digits)


def to_json_document(f: Forecast) -> dict[str, Any]:
    c, p, i = f.campaign, f.projection, f.inputs
    limits, mix = i.limits, i.mix
    paused = c.state == "paused" and p is not None
    w = f.workload
    return {
        "campaign": {"id": c.id, "name": c.name, "state": c.state, "state_reason": c.state_reason},
        "as_of": _iso(f.as_of),
        "eta_seconds": _round(f.eta_seconds),
        "finish_at": _iso(f.finish_at),
        "outlook": outlook(f)[0],
        "outlook_reason": outlook(f)[1],
        "if_resumed": None
        if not paused or p is None
        else {"eta_seconds": _round(p.eta_seconds), "finish_at": _iso(p.finish_at)},
        # What the simulation gives whatever the state: as if resumed (paused), for the
        # contacts not in parked batches; null when cancelled or completed.
        "projected": None
        if p is None
        else {"eta_seconds": _round(p.eta_seconds), "finish_at": _iso(p.finish_at)},
        "binding_constraint": None if p is None else p.binding,
        "constraint_seconds": None
        if p is None
        else {k: round(v, 3) for k, v in p.constraint_seconds.items()},
        "contacts": {
            "total": w.total,
            "open": w.open,
            "pending": w.pending,
            "dispatching": w.dispatching,
            "dialing": w.dialing,
            "parked": w.parked,
            "never_dialed": round(w.never_dialed, 1),
        },
        "expected": None
        if p is None
        else {
            "calls": round(p.calls, 1),
            "contacts_finishing": round(p.contacts, 1),
            "calls_per_new_contact": round(f.calls_per_new_contact, 3),
        },
        "pacing": {
            "campaign_calls_per_second": limits.campaign_cps,
            "account_calls_per_second": limits.account_cps,
            "guard_seconds": limits.pacing_guard_seconds,
            "poll_interval": limits.poll_interval,
            "batch_size": limits.batch_size,
            "calls_per_second": round(limits.pacing_rate, 3),
        },
        "concurrency": {
            "cap": limits.max_concurrent_calls,
            "mean_call_seconds": round(mix.mean_seconds, 3) if mix.causes else None,
            "calls_per_second": _round(limits.concurrency_rate(mix.mean_seconds)),
        },
        "outcome_mix": {
            "source": mix.source,
            "calls": mix.calls,
            "causes": [
                {
                    "cause": s.cause,
                    "share": round(s.share, 4),
                    "mean_seconds": round(s.seconds, 3),
                    "retry_delay": i.retry_delays.get(s.cause),
                }
                for s in mix.causes
            ],
        },
        "max_attempts": i.max_attempts,
        "retry_delays": dict(i.retry_delays),
        "window": window_json(c.window),
        "zones": [
            {
                "zones": list(z.zones),
                "contacts": round(z.contacts, 1),
                "open_now": z.open_now,
                "changes_at": _iso(z.changes_at),
            }
            for z in f.zones
        ],
        "sample": {"contacts": f.judged, "of": w.open, "sample": f.sample},
        "hours": []
        if p is None
        else [
            {
                "start": _iso(h.start),
                "calls": round(h.calls, 1),
                "finished": round(h.finished, 1),
                "held_by": h.held_by,
            }
            for h in p.hours
        ],
        "daemons_alive": f.daemons_alive,
        "other_active_campaigns": f.other_active_campaigns,
        "step_seconds": None if p is None else p.step_seconds,
        "notes": notes(f),
    }


def render_json(f: Forecast) -> str:
    return json.dumps(to_json_document(f), indent=2, ensure_ascii=False)


# --- text -------------------------------------------------------------------------------


def _when(moment: datetime, now: datetime) -> str:
    shown = moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    ahead = (moment - now).total_seconds()
    return f"{shown} (in {format_age(ahead)})" if ahead > 0 else shown


def _count(n: float) -> str:
    return f"{round(n):,}"


def _one_line(text: str) -> str:
    return " ".join(text.split())


def never_reason(f: Forecast) -> str:
    """Why the forecast sees no finish: the contacts whose window never opens, if any."""
    stuck = [z for z in f.zones if z.zones and not z.open_now and z.changes_at is None]
    if stuck:
        contacts = sum(z.contacts for z in stuck)
        zones = "; ".join(", ".join(z.zones) for z in stuck[:3])
        more = f" and {len(stuck) - 3} more" if len(stuck) > 3 else ""
        return (
            f"about {_count(contacts)} contacts wait for a calling window that never opens in "
            f"all their zones at once ({zones}{more})"
        )
    return f"what is left cannot be done within {HORIZON_DAYS} days"


Outlook = Literal["finishes", "never", "paused", "cancelled", "completed"]


def outlook(f: Forecast) -> tuple[Outlook, str | None]:
    """Whether the campaign finishes, in one word, and why not when it does not."""
    c, p = f.campaign, f.projection
    match c.state:
        case "completed":
            return "completed", None
        case "cancelled":
            return "cancelled", "nothing more will be dialed"
        case "paused" if p is not None:
            return "paused", "no finish time while paused (see if_resumed)"
        case "active" | "paused":
            pass
        case _:
            assert_never(c.state)
    if p is None:  # only cancelled and completed campaigns have none
        return "cancelled", "nothing more will be dialed"
    if p.finish_at is None:
        return "never", never_reason(f)
    if f.workload.parked:
        return "never", parked_reason(f)
    return "finishes", None


def parked_reason(f: Forecast) -> str:
    return (
        f"{f.workload.parked:,} contacts in parked batches wait for an operator "
        "(`campaign resolve`)"
    )


def _finish_line(f: Forecast, p: Projection, lead: str) -> str:
    if p.finish_at is None:
        return f"  {lead}: never: {never_reason(f)}"
    binding = f", held back most by {CONSTRAINT_TEXT[p.binding]}" if p.binding else ""
    return f"  {lead} {_when(p.finish_at, f.as_of)}{binding}"


def render_text(f: Forecast) -> str:
    c, p = f.campaign, f.projection
    now = f.as_of
    lines = [f"campaign {c.name} (id {c.id}), {c.state}, as of {_when(now, now)}"]
    reason = f" ({_one_line(c.state_reason)})" if c.state_reason else ""
    if c.state == "completed":
        lines.append(f"  completed{reason}, at {_when(c.updated_at, now)}: nothing left to do")
        return "\n".join(lines)
    if c.state == "cancelled":
        calls = f.workload.dialing + f.workload.dispatching
        lines.append(
            f"  cancelled{reason}: nothing more will be dialed, so it has no finish time"
            + (f"; {calls:,} calls in progress end with their outcome" if calls else "")
        )
        return "\n".join(lines)
    if p is None:  # only cancelled and completed campaigns have none
        return "\n".join(lines)
    if c.state == "paused":
        lines.append(f"  paused{reason}: no finish time while paused")
        lines.append(_finish_line(f, p, "if resumed now, it would finish"))
    elif f.workload.parked:
        lines.append(f"  finishes: never on its own: {parked_reason(f)}")
        lines.append(_finish_line(f, p, "the other contacts would finish"))
    elif p.eta_seconds == 0:
        lines.append("  nothing left to dial: finishes as soon as the engine notices")
    else:
        lines.append(_finish_line(f, p, "finishes"))
    lines += _workload_lines(f, p)
    lines += _limit_lines(f)
    lines += _window_lines(f)
    spent = p.constraint_seconds
    total = sum(spent.values())
    if total > 0:
        shares = ", ".join(
            f"{CONSTRAINT_TEXT[k]} {v / total:.0%}"
            for k, v in sorted(spent.items(), key=lambda kv: -kv[1])
            if v / total >= 0.005  # what rounds to 0 % says nothing
        )
        lines.append(f"  held back by: {shares} of the time")
    lines += _hour_lines(p)
    lines += [f"  note: {n}" for n in notes(f)]
    return "\n".join(lines)


def _workload_lines(f: Forecast, p: Projection) -> list[str]:
    w = f.workload
    parts = [f"{w.pending:,} pending"]
    if w.dispatching:
        parts.append(f"{w.dispatching:,} dispatching")
    if w.dialing:
        parts.append(f"{w.dialing:,} dialing")
    never = (
        f" (about {_count(w.never_dialed)} will never be dialed)" if w.never_dialed >= 0.5 else ""
    )
    lines = [f"  open: {', '.join(parts)} of {w.total:,} contacts{never}"]
    lines.append(
        f"  expected: {_count(p.calls)} more calls, {f.calls_per_new_contact:.2f} per contact "
        f"not called yet"
    )
    return lines


def _limit_lines(f: Forecast) -> list[str]:
    i = f.inputs
    limits, mix = i.limits, i.mix
    lines = [
        f"  pacing: campaign {limits.campaign_cps:g}/s, account {limits.account_cps:g}/s: at "
        f"most {limits.pacing_rate:.2f} calls/s (guard {limits.pacing_guard_seconds:g} s); "
        f"{limits.batch_size} calls per batch"
    ]
    bound = limits.concurrency_rate(mix.mean_seconds)
    if bound is None:
        lines.append(f"  concurrency: cap {limits.max_concurrent_calls:,}; call durations unknown")
    else:
        lines.append(
            f"  concurrency: cap {limits.max_concurrent_calls:,}, calls held "
            f"{mix.mean_seconds:.1f} s on average (start to outcome) and a freed slot seen "
            f"{limits.wake_seconds:g} s later: at most {bound:.2f} calls/s (Little's law)"
        )
    if mix.causes:
        where = "this campaign's" if mix.source == "campaign" else "the account's latest"
        shares = ", ".join(f"{s.cause} {s.share:.0%}" for s in mix.causes)
        lines.append(f"  outcomes ({where} {mix.calls:,} calls): {shares}")
    delays = ", ".join(f"{k} after {_delay_text(v)}" for k, v in sorted(i.retry_delays.items()))
    lines.append(
        f"  retries: {delays or 'none'}; at most {i.max_attempts} call"
        f"{'s' if i.max_attempts != 1 else ''} per contact"
    )
    return lines


def _window_lines(f: Forecast) -> list[str]:
    lines = [f"  calling window: {format_window(f.campaign.window)}"]
    if f.inputs.window.always_open:
        return lines
    shown = f.zones[:ZONES_SHOWN]
    if not shown:
        return lines
    width = max(len(_count(z.contacts)) for z in shown)
    for z in shown:
        if z.changes_at is None:
            state = "open" if z.open_now else "not open within 8 days"
        elif z.open_now:
            state = f"open until {_when(z.changes_at, f.as_of)}"
        else:
            state = f"opens {_when(z.changes_at, f.as_of)}"
        lines.append(f"    {_count(z.contacts):>{width}}  {', '.join(z.zones)}: {state}")
    if len(f.zones) > ZONES_SHOWN:
        lines.append(f"    ... and {len(f.zones) - ZONES_SHOWN} more (see --json)")
    return lines


def _hour_lines(p: Projection) -> list[str]:
    if not p.hours:
        return []
    lines = [f"  {'hour (UTC)':<16}  {'calls':>9}  {'finished':>9}  held back by"]
    idle: list[Any] = []

    def flush() -> None:
        if not idle:
            return
        first, last = idle[0], idle[-1]
        span = f"{first.start:%Y-%m-%d %H:%M}-{(last.start + timedelta(hours=1)):%H:%M}"
        what = CONSTRAINT_TEXT[first.held_by] if first.held_by else "nothing to do"
        lines.append(f"  {span}  no calls for {len(idle)} h: {what}")
        idle.clear()

    for h in p.hours:
        quiet = round(h.calls) == 0 and round(h.finished) == 0
        if quiet and (not idle or idle[-1].held_by == h.held_by):
            idle.append(h)
            continue
        flush()
        if quiet:
            idle.append(h)
            continue
        held = CONSTRAINT_TEXT[h.held_by] if h.held_by else ""
        lines.append(
            f"  {h.start:%Y-%m-%d %H:%M}  {_count(h.calls):>9}  {_count(h.finished):>9}  {held}"
        )
    flush()
    return lines
