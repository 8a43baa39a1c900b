"""When a campaign will finish: a small deterministic simulation over time, no I/O.

The engine's rules, replayed in fixed steps over amounts of contacts rather than contacts
(a campaign of millions costs what one of thousands does):

- Contacts become due at their time (next_attempt_at, not_before) and are dialed when
  the calling window is open in every one of their zones (`windows.py`'s arithmetic,
  DST included); while it is closed they wait, as the dispatcher defers them.
- Each step dials at most what pacing allows (the campaign's and the account's calls per
  second, as whole calls per sliding window plus the guard: `dispatch.Budget`), and no
  more than the concurrency cap leaves room for: every call holds a slot until its
  outcome is recorded, for its cause's mean duration so far (so that in the long run
  throughput is at most cap / mean duration: Little's law).
- A call ends with each cause in the shares of the outcome mix so far; the retry policy
  (`outcomes.decide`) says whether that contact is finished or due again after the
  cause's delay, with one attempt fewer left.
- The campaign is finished when fewer than half a contact is expected to be open.

Every step also records what held dialing back (the binding constraint): pacing, the
concurrency cap, calling windows, retry delays, not_before, or calls still in progress.
The step is chosen from the work expected (about 2,000 busy steps; never under a quarter
of a second nor over a minute); idle stretches (windows closed, retries not due) are
jumped over in one step, and a simulation that would take too many steps starts again
with steps four times as long, so the cost stays bounded whatever the campaign.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Final, Literal

from campaign import windows
from campaign.dispatch import Budget
from campaign.outcomes import decide

Constraint = Literal[
    "pacing", "concurrency", "calling_window", "retries", "not_before", "calls_in_progress"
]
CONSTRAINTS: Final[tuple[Constraint, ...]] = (
    "pacing",
    "concurrency",
    "calling_window",
    "retries",
    "not_before",
    "calls_in_progress",
)
Arrival = Literal["due", "not_before", "window", "retry"]
"""Why a cohort is not due yet (as `campaign why` holds pending contacts)."""

Zones = tuple[str, ...] | None
"""The zones whose windows decide when a contact is dialed; () when the window is always
open; None for a contact the claim will never dial (it finishes, uncalled, when due)."""

OPEN_BELOW: Final = 0.5
"""The campaign is finished when fewer contacts than this are expected to be open."""
TARGET_STEPS: Final = 2_000
MIN_STEP_SECONDS: Final = 0.25
MAX_STEP_SECONDS: Final = 60.0
MAX_ITERATIONS: Final = 200_000
"""Steps one simulation may take before it starts again with longer steps."""
MAX_SLOT_REUSE_SHARE: Final = 0.99
"""A slot is taken again within its step at most 100 times (calls of no duration)."""
HORIZON_DAYS: Final = 400
"""A campaign not finished by then is reported as not finishing."""

_EPSILON: Final = 1e-9


@dataclass(frozen=True)
class Cohort:
    """Pending contacts alike for the forecast."""

    due: float
    """Seconds from now when they become due (0 or less: due now)."""
    attempts: int
    """Calls already made for each."""
    zones: Zones
    contacts: float
    arrival: Arrival = "due"


@dataclass(frozen=True)
class InFlight:
    """Contacts whose call is under way (dispatching or dialing)."""

    started: float
    """Seconds from now when the call started (0 or less)."""
    attempts: int
    """Calls made for each, this one included."""
    zones: Zones
    contacts: float


@dataclass(frozen=True)
class CauseShare:
    cause: str
    share: float
    """Of the finished calls, this share ended with this cause."""
    seconds: float
    """Their mean time from start to outcome recorded."""


@dataclass(frozen=True)
class Mix:
    """The outcome mix the forecast assumes for every call it expects."""

    causes: tuple[CauseShare, ...]
    """Empty: every call assumed answered at once (no retries, no concurrency limit)."""
    source: Literal["campaign", "account", "assumed"]
    calls: int
    """The finished calls it was drawn from."""

    @property
    def mean_seconds(self) -> float:
        return sum(c.share * c.seconds for c in self.causes)

    @classmethod
    def of(
        cls, counts: Mapping[str, tuple[int, float]], source: Literal["campaign", "account"]
    ) -> Mix:
        """From {cause: (calls, mean seconds)}; no calls at all gives the assumed mix."""
        total = sum(n for n, _ in counts.values())
        if total <= 0:
            return ASSUMED_MIX
        causes = tuple(
            CauseShare(cause, n / total, max(0.0, seconds))
            for cause, (n, seconds) in sorted(counts.items(), key=lambda kv: (-kv[1][0], kv[0]))
            if n > 0
        )
        return cls(causes, source, total)


ASSUMED_MIX: Final = Mix((), "assumed", 0)


@dataclass(frozen=True)
class Limits:
    campaign_cps: float
    account_cps: float
    max_concurrent_calls: int
    pacing_guard_seconds: float = 0.02
    batch_size: int = 50
    """Calls per request: changes no rate (a claim waits for at most one second's budget)."""
    poll_interval: float = 2.0
    """dispatcher.poll_interval: how often an idle dispatcher looks again. Nothing wakes
    it when a call ends or a retry falls due, so room under the cap and contacts that
    become due wait half of it on average before they are seen."""

    @property
    def wake_seconds(self) -> float:
        return self.poll_interval / 2

    @property
    def pacing_rate(self) -> float:
        """Calls per second the shared budgets grant at most (dispatch.Budget: whole calls
        per sliding window, widened by the guard)."""
        budgets = (
            Budget.of(self.campaign_cps, self.pacing_guard_seconds),
            Budget.of(self.account_cps, self.pacing_guard_seconds),
        )
        return min(b.calls / b.window for b in budgets)

    def concurrency_rate(self, mean_seconds: float) -> float | None:
        """Little's law: at most cap / (mean duration + the wait before a freed slot is
        seen) calls per second; None when the duration is not known (no call finished)."""
        if mean_seconds <= 0:
            return None
        return self.max_concurrent_calls / (mean_seconds + self.wake_seconds)


@dataclass(frozen=True)
class PlanInputs:
    now: datetime
    cohorts: tuple[Cohort, ...]
    in_flight: tuple[InFlight, ...]
    mix: Mix
    limits: Limits
    max_attempts: int
    retry_delays: Mapping[str, Any]
    window: windows.Window


@dataclass(frozen=True)
class Hour:
    start: datetime
    calls: float
    finished: float
    """Contacts reaching a final state (answered, given up, never dialed)."""
    held_by: Constraint | None
    """What held dialing back for most of the hour; None when nothing was left to do."""


@dataclass(frozen=True)
class Projection:
    finish_at: datetime | None
    """None: not finished within HORIZON_DAYS (a window that never opens, say)."""
    eta_seconds: float | None
    binding: Constraint | None
    """What held dialing back for the longest time."""
    constraint_seconds: dict[Constraint, float]
    hours: tuple[Hour, ...]
    """UTC clock hours from the one containing `now` to the one containing the finish."""
    calls: float
    """Calls expected from now on (the ones in progress not counted)."""
    contacts: float
    """Contacts expected to reach a final state (the ones in progress included)."""
    step_seconds: float


def expected_calls(
    attempts: int, mix: Mix, max_attempts: int, retry_delays: Mapping[str, Any]
) -> float:
    """Calls a contact that has made `attempts` is expected to need from now on."""
    total, reach = 0.0, 1.0
    for made in range(attempts + 1, max(attempts, max_attempts) + 1):
        total += reach
        reach *= sum(
            c.share
            for c in mix.causes
            if decide(c.cause, made, max_attempts, retry_delays).state == "pending"
        )
        if reach < _EPSILON:
            break
    return total


class _Gates:
    """Whether the window is open at a moment in each set of zones, remembered until the
    next change (so each opening and closing is worked out once per zone set)."""

    def __init__(self, now: datetime, window: windows.Window, wake: float = 0.0) -> None:
        self.now = now
        self.window = window
        # Contacts deferred to an opening are seen when the dispatcher next looks.
        self.wake = wake
        self._known: dict[tuple[str, ...], tuple[bool, float, float]] = {}

    def state(self, zones: tuple[str, ...], t: float) -> tuple[bool, float]:
        """(open at t, seconds from now when that changes; inf when never)."""
        if self.window.always_open or not zones:
            return True, math.inf
        known = self._known.get(zones)
        if known is not None and known[1] <= t < known[2]:
            return known[0], known[2]
        at = self.now + timedelta(seconds=t)
        until = windows.open_until(at, zones, self.window)
        if until is not None:
            found = (True, t, (until - self.now).total_seconds())
        else:
            opening = windows.next_opening(at, zones, self.window)
            # None: not open within the horizon; look again once it has passed.
            after = opening or at + timedelta(days=windows.DEFAULT_HORIZON_DAYS)
            found = (False, t, (after - self.now).total_seconds() + self.wake)
        self._known[zones] = found
        return found[0], found[2]


@dataclass
class _Run:
    """The state of one simulation: amounts of contacts, by step (time = step * dt)."""

    inputs: PlanInputs
    dt: float
    gates: _Gates
    ready: dict[tuple[tuple[str, ...], int], float] = field(default_factory=dict)
    """Due contacts by (zones, attempts made), waiting for pacing, room or their window."""
    arrivals: dict[int, dict[tuple[tuple[str, ...], int, Arrival], float]] = field(
        default_factory=dict
    )
    arrival_steps: list[int] = field(default_factory=list)
    releases: dict[int, float] = field(default_factory=dict)
    """Concurrency slots freed at each step."""
    finishes: dict[int, list[tuple[float, float]]] = field(default_factory=dict)
    """(exact time, contacts) reaching a final state, by the step that notices them."""
    events: list[int] = field(default_factory=list)
    """Steps at which something is scheduled (a heap; stale entries are skipped)."""
    busy: float = 0.0
    open: float = 0.0
    calls: float = 0.0
    finished: float = 0.0
    hours: dict[int, _HourTally] = field(default_factory=dict)
    spent: dict[Constraint, float] = field(default_factory=lambda: dict.fromkeys(CONSTRAINTS, 0.0))
    decisions: dict[tuple[str, int], tuple[bool, float]] = field(default_factory=dict)
    step: int = -1
    """The step being worked out: what it schedules happens at the next one at the earliest."""

    def step_at(self, t: float) -> int:
        """The first step whose time is at or after t, and not before the next one."""
        return max(self.step + 1, math.ceil(t / self.dt - 1e-9))

    def hour(self, t: float) -> _HourTally:
        index = math.floor((self.inputs.now.timestamp() + t) / 3600)
        tally = self.hours.get(index)
        if tally is None:
            tally = self.hours[index] = _HourTally()
        return tally

    def spend(self, t0: float, t1: float, constraint: Constraint) -> None:
        """Book [t0, t1) to `constraint`, split over the clock hours it spans."""
        self.spent[constraint] += t1 - t0
        base = self.inputs.now.timestamp()
        while t1 - t0 > _EPSILON:
            edge = (math.floor((base + t0) / 3600) + 1) * 3600 - base
            upto = min(t1, edge)
            self.hour(t0).held[constraint] += upto - t0
            t0 = upto

    def arrive(self, t: float, zones: Zones, attempts: int, amount: float, kind: Arrival) -> None:
        if zones is None:
            # The claim marks it invalid when it takes it: finished then, uncalled.
            self.finish(t, amount)
            return
        step = self.step_at(t)
        bucket = self.arrivals.get(step)
        if bucket is None:
            bucket = self.arrivals[step] = {}
            heapq.heappush(self.arrival_steps, step)
            heapq.heappush(self.events, step)
        key = (zones, attempts, kind)
        bucket[key] = bucket.get(key, 0.0) + amount

    def finish(self, t: float, amount: float) -> None:
        step = self.step_at(t)
        self.finishes.setdefault(step, []).append((t, amount))
        heapq.heappush(self.events, step)

    def hold(self, ends: float, amount: float, earliest: int) -> None:
        """Occupy `amount` concurrency slots until `ends`: freed in the two steps around
        it, in proportion, so that the mean time held is exact; never before `earliest`."""
        position = ends / self.dt
        first = math.floor(position)
        late = position - first
        for step, part in ((first, 1.0 - late), (first + 1, late)):
            if part > _EPSILON:
                at = max(step, earliest)
                self.releases[at] = self.releases.get(at, 0.0) + amount * part
                heapq.heappush(self.events, at)

    def decision(self, cause: str, made: int) -> tuple[bool, float]:
        """(retried, after how many seconds) for a call ending with `cause`."""
        key = (cause, made)
        found = self.decisions.get(key)
        if found is None:
            d = decide(cause, made, self.inputs.max_attempts, self.inputs.retry_delays)
            found = self.decisions[key] = (d.state == "pending", d.delay or 0.0)
        return found

    def calls_started(
        self, started: float, zones: Zones, made: int, amount: float, earliest: int
    ) -> None:
        """`amount` calls started at `started` (the made-th of their contacts): each cause's
        share holds its slot for the cause's duration, then finishes or is retried."""
        causes = self.inputs.mix.causes
        if not causes:
            # Nothing known of the calls: each assumed answered at once, holding no slot.
            self.finish(max(0.0, started), amount)
            return
        self.busy += amount
        wake = self.inputs.limits.wake_seconds
        for c in causes:
            part = amount * c.share
            ends = max(0.0, started + c.seconds)
            self.hold(ends + wake, part, earliest)
            retried, delay = self.decision(c.cause, made)
            if retried:
                self.arrive(ends + delay + wake, zones, made, part, "retry")
            else:
                self.finish(ends, part)

    def next_arrival(self) -> Arrival | None:
        """What the earliest cohort still to come waits for."""
        while self.arrival_steps and self.arrival_steps[0] not in self.arrivals:
            heapq.heappop(self.arrival_steps)
        if not self.arrival_steps:
            return None
        kinds = {kind for _, _, kind in self.arrivals[self.arrival_steps[0]]}
        return min(kinds, key=_ARRIVAL_ORDER.index)

    def next_event(self, after: int) -> int | None:
        while self.events and self.events[0] <= after:
            heapq.heappop(self.events)
        return self.events[0] if self.events else None


@dataclass
class _HourTally:
    calls: float = 0.0
    finished: float = 0.0
    held: dict[Constraint, float] = field(default_factory=lambda: dict.fromkeys(CONSTRAINTS, 0.0))


# When several cohorts are still to come, the first named here says what the campaign
# waits for (a retry arriving with a window-deferred cohort: the retry).
_ARRIVAL_ORDER: Final[tuple[Arrival, ...]] = ("due", "retry", "window", "not_before")
_WAITING_FOR: Final[dict[Arrival, Constraint]] = {
    "due": "calls_in_progress",
    "retry": "retries",
    "window": "calling_window",
    "not_before": "not_before",
}


def _slot_reuse(mix: Mix, wake: float, dt: float) -> float:
    """How many calls one free slot carries within a step: 1 when calls outlast the
    step; more when some end within it, the slot then taken again in the same step
    (the share of the step left after each call, as a geometric series)."""
    within = sum(c.share * max(0.0, 1.0 - (c.seconds + wake) / dt) for c in mix.causes)
    return 1.0 / (1.0 - min(within, MAX_SLOT_REUSE_SHARE))


def first_step(inputs: PlanInputs) -> float:
    """A step giving about TARGET_STEPS steps of dialing, within the bounds."""
    mix, limits = inputs.mix, inputs.limits
    work = sum(
        c.contacts * expected_calls(c.attempts, mix, inputs.max_attempts, inputs.retry_delays)
        for c in inputs.cohorts
        if c.zones is not None
    )
    rate = limits.pacing_rate
    little = limits.concurrency_rate(mix.mean_seconds)
    if little is not None:
        rate = min(rate, little)
    busy = work / rate + max((c.seconds for c in mix.causes), default=0.0)
    return min(MAX_STEP_SECONDS, max(MIN_STEP_SECONDS, busy / TARGET_STEPS))


def simulate(inputs: PlanInputs, step_seconds: float | None = None) -> Projection:
    """The forecast: when the campaign finishes, what holds it back, hour by hour.

    `step_seconds` overrides the step chosen from the work expected (tests use it).
    """
    dt = step_seconds or first_step(inputs)
    while True:
        projection = _simulate(inputs, dt)
        if projection is not None:
            return projection
        dt *= 4


def _simulate(inputs: PlanInputs, dt: float) -> Projection | None:
    """One simulation with step dt; None when it needs more than MAX_ITERATIONS steps."""
    run = _Run(inputs, dt, _Gates(inputs.now, inputs.window, inputs.limits.wake_seconds))
    wake = inputs.limits.wake_seconds
    for cohort in inputs.cohorts:
        run.open += cohort.contacts
        due = cohort.due + wake if cohort.due > 0 else 0.0
        run.arrive(due, cohort.zones, cohort.attempts, cohort.contacts, cohort.arrival)
    for call in inputs.in_flight:
        run.open += call.contacts
        run.calls_started(min(0.0, call.started), call.zones, call.attempts, call.contacts, 0)
    rate = inputs.limits.pacing_rate
    cap = float(inputs.limits.max_concurrent_calls)
    uncapped = not inputs.mix.causes
    reuse = _slot_reuse(inputs.mix, wake, dt)
    last = math.ceil(HORIZON_DAYS * 86400 / dt)
    finish: float | None = 0.0 if run.open < OPEN_BELOW else None
    step = 0
    for _ in range(MAX_ITERATIONS):
        if finish is not None or step > last:
            break
        t = step * dt
        run.step = step
        run.busy -= run.releases.pop(step, 0.0)
        for at, amount in sorted(run.finishes.pop(step, [])):
            run.open -= amount
            run.finished += amount
            run.hour(at).finished += amount
            if run.open < OPEN_BELOW:
                finish = at
                break
        if finish is not None:
            break
        for (zones, attempts, _), amount in run.arrivals.pop(step, {}).items():
            run.ready[(zones, attempts)] = run.ready.get((zones, attempts), 0.0) + amount
        demand, waiting, opens = 0.0, 0.0, math.inf
        dialable = []
        for key, amount in run.ready.items():
            if amount <= _EPSILON:
                continue
            is_open, change = run.gates.state(key[0], t)
            if is_open:
                dialable.append(key)
                demand += amount
            else:
                waiting += amount
                opens = min(opens, change)
        pacing_room = rate * dt
        # Unknown durations: no call is assumed to hold a slot. Calls shorter than a
        # step free their slot within it for another: the room grows to match.
        room = math.inf if uncapped else max(0.0, cap - run.busy) * reuse
        dialed = min(demand, pacing_room, room)
        if dialed > _EPSILON:
            for key in dialable:
                amount = run.ready[key] * dialed / demand
                run.ready[key] -= amount
                run.calls += amount
                run.hour(t).calls += amount
                run.calls_started(t, key[0], key[1] + 1, amount, step + 1)
            following = step + 1
        else:
            dialed = 0.0
            upcoming = run.next_event(step)
            candidates = [
                s for s in (upcoming, run.step_at(opens) if waiting else None) if s is not None
            ]
            if not candidates:
                break  # nothing will ever change: what is left can never be dialed
            # Never past the horizon: a not_before in the year 9999 would otherwise be
            # booked (and tabled) hour by hour, millions of them, in one jump.
            following = max(step + 1, min(min(candidates), last + 1))
        if demand > _EPSILON and demand >= min(pacing_room, room) - _EPSILON:
            # More was due than went out: the cap when it left no more room than pacing.
            held: Constraint = "concurrency" if room <= pacing_room + _EPSILON else "pacing"
        elif waiting > _EPSILON:
            held = "calling_window"
        else:
            kind = run.next_arrival()
            held = _WAITING_FOR[kind] if kind is not None else "calls_in_progress"
        run.spend(t, following * dt, held)
        step = following
    else:
        return None  # too many steps: the caller starts again with longer ones
    return _projection(run, finish)


def _projection(run: _Run, finish: float | None) -> Projection:
    now = run.inputs.now
    spent = {k: v for k, v in run.spent.items() if v > _EPSILON}
    if finish is not None:
        # Only the time until the finish counts towards what held the campaign back.
        end_hour = math.floor((now.timestamp() + finish) / 3600)
    else:
        end_hour = max(run.hours, default=math.floor(now.timestamp() / 3600))
    first_hour = math.floor(now.timestamp() / 3600)
    hours = []
    for index in range(first_hour, end_hour + 1):
        tally = run.hours.get(index, _HourTally())
        top = max(CONSTRAINTS, key=lambda c: tally.held[c])
        hours.append(
            Hour(
                start=datetime.fromtimestamp(index * 3600, UTC),
                calls=tally.calls,
                finished=tally.finished,
                held_by=top if tally.held[top] > _EPSILON else None,
            )
        )
    return Projection(
        finish_at=None if finish is None else now + timedelta(seconds=finish),
        eta_seconds=finish,
        binding=max(spent.items(), key=lambda kv: kv[1])[0] if spent else None,
        constraint_seconds=spent,
        hours=tuple(hours),
        calls=run.calls,
        contacts=run.finished,
        step_seconds=run.dt,
    )
