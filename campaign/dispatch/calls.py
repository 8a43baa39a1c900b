"""The dispatch protocol: pending contacts become started calls, exactly once.

This module reads top to bottom like design.md's six steps:

1. claim and persist — one transaction picks eligible contacts, validates them,
   stores the batch with its exact `rest_calls` string and deterministic
   `unique_id`, marks the contacts `dispatching`, and commits before any request;
2. send — `service_start` with exactly the stored string and id;
3. acknowledge — one transaction stores each reference against its contact;
4. transient failure — the same bytes and id again later, with capped
   exponential backoff and jitter, never after the idempotency window;
5. permanent failure — split a rejected list until the bad contacts stand
   alone; an authentication failure pauses the campaigns of that service;
6. crash recovery — a batch whose owner stopped heartbeating is re-sent by any
   daemon with its stored id, so Aculab answers with the original references.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import json
import math
import random
import time
from collections import Counter
from collections.abc import Callable, Container, Coroutine, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import asyncpg
import structlog

from campaign import assumptions, windows
from campaign.aculab import (
    AculabClient,
    AculabError,
    AuthenticationError,
    PermanentError,
    TransientError,
    UnusableAnswer,
    call_problem,
    encode_rest_calls,
)
from campaign.breaker import Breaker
from campaign.db import queries as q
from campaign.destinations import Destination, Rejected, parse_destination
from campaign.runtime import (
    DB_ERRORS,
    Episode,
    after_database_error,
    backoff_delay,
    database_episode,
    db_error_kind,
    describe_db_error,
    doubling,
    sleep_until_woken,
)
from campaign.settings import DispatcherSettings, Settings

if TYPE_CHECKING:
    from campaign.metrics import Metrics

log = structlog.get_logger("campaign.dispatch")

# Statuses that mean "this request, as built, is unacceptable": a list is split
# to find the bad call objects. Other 4xx point at configuration, not contacts.
DUPLICATE_REASON = "same destination as another contact of this campaign"

# Slack between this daemon's clock and the database's when deciding which
# grants came after an open-calls count: counting a grant twice only makes the
# bound safer.
OPEN_COUNT_MARGIN = 0.1
OPEN_COUNT_REUSE_SECONDS = 1.0

# How a held re-send's last_error starts; migration 0004's window trigger finds
# held batches by it, so the two must stay the same.
HELD_FOR_WINDOW = "re-send held outside the calling window:"

REJECTED_STATUSES = frozenset({400, 413, 422})
DATABASE_RETRY_MAX_SECONDS = 5.0
# While Aculab is unreachable, a pending batch due within this many seconds is the
# next probe; one due later does not hold the probing up.
PROBE_WAITS_FOR_DUE_BATCH = 1.0
# Answers that cannot be matched to the calls, in a row for one service, after
# which its campaigns pause: something between us and Aculab answers 200 with
# the wrong body, and every further batch would park for a person.
UNUSABLE_PAUSE_AFTER = 3
MAX_REMEMBERED_CRASHES = 10_000
# Due campaigns served by one claim transaction at most (fewer when fewer send
# slots are free: each campaign claimed takes at least one). Many small campaigns
# then share one transaction's locks, reads and commit instead of paying each.
CLAIM_GROUP_CAMPAIGNS = 50
VALIDATION_CODES = frozenset({"0001", "0002", "0003", "0004"})


def unique_id_for(namespace: str, campaign_id: int, contacts: Sequence[tuple[int, int]]) -> str:
    """The batch's idempotency key from (namespace, campaign, contact ids, attempt numbers).

    The attempt number is the contact's dispatch count: it rises every time the
    contact is put in a new batch, so a new attempt never reuses an old id.
    """
    digest = hashlib.sha256(f"{namespace}\x1f{campaign_id}".encode())
    for contact_id, attempt in contacts:
        digest.update(f"\x1e{contact_id}:{attempt}".encode())
    return f"{namespace}-{campaign_id}-{digest.hexdigest()[:32]}"


def child_unique_id(
    namespace: str, campaign_id: int, parent: str, contact_ids: Sequence[int]
) -> str:
    """A split batch's id: derived from its parent's id and its own contacts."""
    digest = hashlib.sha256(f"{parent}\x1f".encode())
    digest.update(",".join(map(str, contact_ids)).encode())
    return f"{namespace}-{campaign_id}-{digest.hexdigest()[:32]}"


def reference_problem(references: Sequence[str], calls: int) -> str | None:
    """Why `references` cannot be matched one to one with `calls` call objects, or None."""
    if len(references) != calls:
        return f"{len(references)} references for {calls} calls"
    repeated = [(r, n) for r, n in Counter(references).items() if n > 1]
    if repeated:
        reference, times = repeated[0]
        return f"reference {reference[:80]!r} appears {times} times"
    return None


def normalise_caller_id(raw: str | None) -> str | None:
    """A caller ID as Aculab wants it for telephone calls: international digits, no + or 0."""
    if raw is None:
        return None
    digits = "".join(ch for ch in raw.strip() if ch not in " -.()")
    digits = digits.removeprefix("+")
    if not digits.isdigit() or not digits.isascii() or digits.startswith("0"):
        return None
    return digits


@dataclass(frozen=True)
class Skipped:
    contact_id: int
    state: str
    reason: str


@dataclass(frozen=True)
class Ready:
    contact: q.ContactRow
    destination: Destination
    call: dict[str, Any]


@dataclass(frozen=True)
class Deferred:
    contact_id: int
    until: datetime
    reason: str
    # What it will be checked against (do-not-call list, duplicates) once its window opens.
    destination: Destination | None = None


@dataclass
class Prepared:
    ready: list[Ready] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)
    deferred: list[Deferred] = field(default_factory=list)


_UNREADABLE = object()


def _decode_json(value: Any) -> Any:
    """A jsonb column read as text; _UNREADABLE when Python cannot decode it."""
    if not isinstance(value, str):
        return value
    try:
        return json.loads(value)
    except (ValueError, RecursionError):
        return _UNREADABLE


def window_verdict(
    zones: Sequence[str], window: windows.Window, now: datetime, start_by: datetime
) -> Deferred | Skipped | None:
    """None when a call placed now starts inside the window in every zone.

    `start_by` is when Aculab is expected to start it (now plus its queue): the
    window must still be open then, or the contact waits for the next opening.
    """
    until = windows.open_until(now, zones, window)
    if until is not None and until > start_by:
        return None
    after = until if until is not None else now
    opening = windows.next_opening(after, zones, window)
    if opening is None:
        return Skipped(
            0, "invalid", "the calling window is never open in all of the number's time zones"
        )
    return Deferred(0, opening, windows.describe_opening(after, zones, window))


RULES_MEMORY = 10_000
"""Distinct caller IDs and zones a Rules object remembers the verdict on."""


@dataclass
class Rules:
    """One campaign's per-contact rules at one moment: built once per claim (and per
    `campaign why`, `campaign load`), so that what is the same for every contact is
    worked out once."""

    campaign: q.CampaignRow
    window: windows.Window
    now: datetime
    start_by: datetime
    always_open: bool
    # Raw caller ID -> normalised (usually the campaign's one caller ID).
    _callers: dict[str | None, str | None] = field(default_factory=dict)
    # (contacts.timezone, the number's zones) -> the zones that decide, or why none do.
    _zones: dict[tuple[str | None, tuple[str, ...]], tuple[str, ...] | str] = field(
        default_factory=dict
    )
    # Zones -> their window verdict: the same for every contact with those zones.
    _windows: dict[tuple[str, ...], Deferred | Skipped | None] = field(default_factory=dict)

    @classmethod
    def of(cls, campaign: q.CampaignRow, now: datetime, start_by: datetime | None = None) -> Rules:
        window = windows.Window.from_row(
            campaign.window_start or "00:00", campaign.window_end or "24:00", campaign.window_days
        )
        return cls(campaign, window, now, start_by or now, window.always_open)

    def caller(self, raw: str | None) -> str | None:
        if raw in self._callers:
            return self._callers[raw]
        if len(self._callers) >= RULES_MEMORY:
            self._callers.clear()  # a load of all-different caller IDs: memory stays flat
        caller = self._callers[raw] = normalise_caller_id(raw)
        return caller

    def zones(self, own: str | None, number_zones: tuple[str, ...]) -> tuple[str, ...] | str:
        key = (own, number_zones)
        found = self._zones.get(key)
        if found is None:
            if len(self._zones) >= RULES_MEMORY:
                self._zones.clear()
            found = self._zones[key] = windows.contact_zones(
                own, number_zones, self.campaign.default_timezone
            )
        return found

    def window_verdict(self, zones: tuple[str, ...]) -> Deferred | Skipped | None:
        if zones not in self._windows:
            self._windows[zones] = window_verdict(zones, self.window, self.now, self.start_by)
        return self._windows[zones]


def contact_verdict(
    contact: q.ContactRow, rules: Rules, taken: Container[str] = frozenset()
) -> Ready | Skipped | Deferred:
    """What the claim does with one contact (no I/O): send it (Ready), mark it
    invalid or duplicate (Skipped), or wait for its calling window (Deferred).

    `taken`: destination keys already going out in this claim; a contact with one of
    them is a duplicate. The do-not-call list and the keys owned by earlier claims are
    checked afterwards, in the database, for the Ready ones. The one place these rules
    live: the claim, `campaign why` and `campaign load` all ask this function.
    """
    campaign = rules.campaign
    parsed = parse_destination(contact.destination, default_region=campaign.default_country)
    if isinstance(parsed, Rejected):
        return Skipped(contact.id, "invalid", parsed.reason)
    if parsed.key in taken:
        return Skipped(contact.id, "duplicate", DUPLICATE_REASON)
    call: dict[str, Any] = {"to": parsed.to}
    if parsed.is_telephone:
        raw_from = contact.caller_id or campaign.caller_id
        caller = rules.caller(raw_from)
        if caller is None:
            reason = (
                "no caller ID: set campaigns.caller_id or contacts.caller_id"
                if not raw_from
                else "caller ID must be a full international number (digits, no leading 0)"
            )
            return Skipped(contact.id, "invalid", reason)
        call["from"] = caller
    elif contact.caller_id:
        call["from"] = contact.caller_id
    if contact.token is not None:
        call["token"] = contact.token
    if contact.outbound_parameters is not None:
        call["outbound_parameters"] = contact.outbound_parameters
    if contact.extra_sip_headers is not None:
        headers = _decode_json(contact.extra_sip_headers)
        if headers is _UNREADABLE:
            return Skipped(contact.id, "invalid", "extra_sip_headers is not readable JSON")
        call["extra_sip_headers"] = headers
    problem = call_problem(call)
    if problem is not None:
        return Skipped(contact.id, "invalid", problem)
    if not rules.always_open:
        zones = rules.zones(contact.timezone, parsed.timezones)
        if isinstance(zones, str):
            return Skipped(contact.id, "invalid", zones)
        verdict = rules.window_verdict(zones)
        if isinstance(verdict, Skipped):
            return Skipped(contact.id, verdict.state, verdict.reason)
        if isinstance(verdict, Deferred):
            return Deferred(contact.id, verdict.until, verdict.reason, parsed)
    return Ready(contact, parsed, call)


def prepare(
    contacts: Sequence[q.ContactRow],
    campaign: q.CampaignRow,
    now: datetime,
    start_by: datetime | None = None,
) -> Prepared:
    """Each contact's verdict, in claim order; the same destination twice goes out once."""
    out = Prepared()
    rules = Rules.of(campaign, now, start_by)
    seen: set[str] = set()
    for contact in contacts:
        verdict = contact_verdict(contact, rules, seen)
        if isinstance(verdict, Ready):
            seen.add(verdict.destination.key)
            out.ready.append(verdict)
        elif isinstance(verdict, Skipped):
            out.skipped.append(verdict)
        else:
            out.deferred.append(verdict)
    return out


@dataclass(frozen=True)
class Budget:
    """A calls-per-second budget as whole calls per sliding window."""

    calls: int
    window: float

    @classmethod
    def of(cls, rate: float, guard: float) -> Budget:
        # Below one call per second the window stretches: 0.5/s is 1 call per 2 s.
        # The guard widens the window a little, so that the jitter between a
        # grant and the request reaching Aculab cannot put two windows' worth
        # of calls into one second at Aculab.
        seconds = max(1.0, 1.0 / rate)
        return cls(max(1, math.floor(rate * seconds + 1e-9)), seconds + guard)


def pacing_room(
    grants: dict[str, list[q.Grant]], budgets: dict[str, Budget], need: int
) -> tuple[int, float]:
    """(calls available now, seconds until `need` calls are) over every budget.

    Each budget counts only the grants inside its own window: the grants are read
    over the longest window of all, which for a campaign slower than one call per
    second is far longer than the account's second.
    """
    inside = {k: [g for g in grants.get(k, []) if g.age < b.window] for k, b in budgets.items()}
    available = min(b.calls - sum(g.calls for g in inside[k]) for k, b in budgets.items())
    wait = 0.0
    for key, budget in budgets.items():
        recent = inside[key]
        deficit = need - (budget.calls - sum(g.calls for g in recent))
        freed = 0
        for g in recent:  # oldest first
            if deficit <= 0:
                break
            freed += g.calls
            if freed >= deficit:
                wait = max(wait, budget.window - g.age)
                break
    return max(0, available), max(0.005, wait)


def _budget_key(campaign_id: int) -> str:
    return f"campaign:{campaign_id}"


@dataclass(frozen=True)
class Wanted:
    """A campaign to claim for: up to `batches` batches, whose calls Aculab is expected
    to hold `queue_delay` seconds in its queue before starting them."""

    campaign: q.CampaignRow | q.DueCampaign
    queue_delay: float = 0.0
    batches: int = 1


@dataclass
class _Part:
    """One campaign's share of a claim transaction, as the claim works it out."""

    campaign: q.CampaignRow
    queue_delay: float
    batches: int
    size: int
    budget: Budget
    grants_window: float
    """Its grants and the account's are read over this (the longer of their windows)."""
    need: int = 0
    grant: int = 0
    limit: int = 0
    contacts: list[q.ContactRow] = field(default_factory=list)
    last: q.ClaimKey | None = None
    prepared: Prepared = field(default_factory=Prepared)
    ready: list[Ready] = field(default_factory=list)

    @property
    def key(self) -> str:
        return _budget_key(self.campaign.id)


@dataclass
class Counters:
    claimed: int = 0
    submitted: int = 0
    batches_submitted: int = 0
    resends: int = 0
    parked: int = 0
    released: int = 0
    takeovers: int = 0
    by_campaign: dict[int, int] = field(default_factory=dict)


class Dispatcher:
    """Runs the protocol for one daemon; several daemons share one database safely."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        client: AculabClient,
        settings: Settings,
        owner: str,
        *,
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.monotonic,
        metrics: Metrics | None = None,
    ) -> None:
        self.pool = pool
        self.client = client
        self.settings = settings
        self.owner = owner
        self.counters = Counters()
        self.metrics = metrics
        self._rng = rng or random.Random()
        self._clock = clock
        self._inflight: dict[int, asyncio.Task[None]] = {}
        # batch id -> its service, for the batches in _inflight.
        self._inflight_services: dict[int, str] = {}
        self._critical: set[asyncio.Task[Any]] = set()
        self._wake = asyncio.Event()
        self._pacing_wait: float | None = None
        self._queue_cache: dict[str, tuple[float, float]] = {}
        # campaign id -> (when, open calls counted then, the cap they were counted up to).
        self._open_counts: dict[int, tuple[float, int, int]] = {}
        # The active campaigns, as last read, and when (this daemon's clock) each one's
        # first pending contact is due (absent: none pending). Only campaigns due now
        # are claimed; the loop sleeps until the earliest of the others.
        self._campaigns: dict[int, q.DueCampaign] = {}
        self._due_at: dict[int, float] = {}
        # Campaigns to read again before the next claims: named by a notification, or
        # emptied by a claim (their next due time is then unknown here).
        self._recheck: set[int] = set()
        # Read every active campaign again: at start, on a notification that names
        # none, and whatever the notifications said (one query) every
        # recheck_all_seconds while they are heard, every poll_interval while the LISTEN
        # connection is down, so that a missed notification delays work by that much
        # at most. Between those, due times come from the last read: a contact that
        # becomes due sooner is notified (migrations 0008 and 0010).
        self._refresh_all = True
        self._refreshed_at = -math.inf
        self._listening = False
        # When (this daemon's clock) the last tick picked the campaigns due.
        self._looked_at = -math.inf
        # Campaign -> the claim-order key of the last contact claimed: the next claim
        # resumes there (q.CLAIM_CONTACTS), until the campaign is read again.
        self._claim_after: dict[int, q.ClaimKey] = {}
        # Priority -> the campaign served last: the next round starts after it.
        self._cursor: dict[int, int] = {}
        # Claim transactions begun (for tests and benchmarks: idle campaigns cost none),
        # the campaigns they were for (one transaction can serve several), and reads
        # of every active campaign's due time.
        self.claims = 0
        self.campaign_claims = 0
        self.full_reads = 0
        # batch id -> when (this daemon's clock) it may be taken again, after its
        # send or its acknowledgement failed in a way that left it pending.
        self._cooldown: dict[int, float] = {}
        # batch id -> such failures in a row, so that the wait grows like a backoff.
        self._crashes: Counter[int] = Counter()
        # Services whose credentials Aculab accepted since their campaigns became
        # active (for this daemon): until then, one request at a time.
        self._confirmed: set[str] = set()
        self._active: set[int] = set()
        # service_start requests under way (sends, not batches being closed).
        self._requests = 0
        # Batches whose request this daemon began and whose end it has not recorded
        # yet: at a stop, only these may have gone out (the others taken and not sent
        # are handed back without doubt).
        self._requested: set[int] = set()
        # service -> answers in a row that could not be matched to the calls.
        self._unusable: Counter[str] = Counter()
        # service -> when (this daemon's clock) Aculab's last Retry-After for it ends.
        self._service_wait: dict[str, float] = {}
        self.breaker = Breaker(
            self._cfg.breaker_threshold,
            self._cfg.retry_initial_delay,
            self._cfg.retry_max_delay,
            clock,
        )
        # Batches rescheduled because Aculab was unreachable: due again the moment
        # it answers, whatever their backoff said.
        self._outage_batches: set[int] = set()
        self._db_trouble = database_episode(log, "dispatcher")
        self._bug = Episode(log, "dispatcher_failed", "dispatcher_recovered")

    @property
    def _cfg(self) -> DispatcherSettings:
        return self.settings.dispatcher

    @property
    def _margin(self) -> float:
        """The longest a request can take: no (re-)send begins later than this before the
        end of the idempotency window."""
        return self.settings.http.connect_timeout + self.settings.http.read_timeout

    @property
    def _expire_after(self) -> float:
        """Age beyond which a batch is never sent under its unique_id again."""
        return max(0.0, self._cfg.idempotency_window_seconds - self._margin)

    def wake(self, payload: str | None = None) -> None:
        """A notification: '<table>:<campaign id>' names the campaign that changed;
        anything else (or nothing) means look at every campaign again."""
        _, _, tail = (payload or "").partition(":")
        if tail.isdigit():
            self._recheck.add(int(tail))
        else:
            self._refresh_all = True
        self._wake.set()

    def listening(self, up: bool) -> None:
        """The LISTEN connection is up (notifications are heard) or down."""
        self._listening = up
        self._wake.set()

    @property
    def _refresh_every(self) -> float:
        cfg = self._cfg
        if self._listening:
            return max(cfg.poll_interval, cfg.recheck_all_seconds)
        return cfg.poll_interval

    def aculab_unreachable(self) -> tuple[float, str | None] | None:
        """(seconds since the breaker opened, the last error) while Aculab is unreachable."""
        if self.breaker.opened_at is None:
            return None
        return self._clock() - self.breaker.opened_at, self.breaker.last_error

    # --- the loop ---------------------------------------------------------------

    async def run(self, stop: asyncio.Event, *, until_idle: bool = False) -> None:
        """Dispatch until `stop` is set (or, with until_idle, until nothing is left)."""
        failures = 0
        never = asyncio.Event()
        try:
            while not stop.is_set():
                self._wake.clear()
                try:
                    worked = await self.tick()
                except DB_ERRORS as exc:
                    failures += 1
                    self._db_trouble.failed(db_error_kind(exc), **describe_db_error(exc))
                    await after_database_error(self.pool, exc)
                    # Short, and woken when the LISTEN connection is back (the
                    # database is): dispatching resumes within moments of it.
                    delay = backoff_delay(failures, cap=DATABASE_RETRY_MAX_SECONDS)
                    await sleep_until_woken(stop, self._wake, delay)
                    continue
                except Exception as exc:
                    # A bug of ours, or an answer nobody foresaw: never a tight loop,
                    # never a dead daemon; the first traceback is logged.
                    failures += 1
                    self._bug.failed(error=repr(exc), exc_info=exc)
                    await sleep_until_woken(stop, never, backoff_delay(failures))
                    continue
                failures = 0
                self._db_trouble.recovered()
                self._bug.recovered()
                if worked:
                    continue
                if until_idle and not self._inflight and await self._idle():
                    return
                await sleep_until_woken(stop, self._wake, self._sleep_for())
        finally:
            await self._drain()

    async def tick(self) -> bool:
        """One round: re-send due batches, then claim new ones. True if anything happened."""
        self._pacing_wait = None
        free = self._cfg.max_in_flight_batches - len(self._inflight)
        if free <= 0:
            await asyncio.wait(list(self._inflight.values()), return_when=asyncio.FIRST_COMPLETED)
            return True
        campaigns = await self._due_campaigns()
        if self.breaker.is_open:
            return await self._tick_unreachable(free, campaigns)
        # A service not yet known good gets one request at a time.
        careful = [s for s in set(self._inflight_services.values()) if s not in self._confirmed]
        async with self.pool.acquire() as conn:
            due = await q.take_due_batches(
                conn,
                self.owner,
                self._cfg.lease_seconds,
                free,
                self._busy(),
                self._expire_after,
                skip_services=careful,
                confirmed_services=sorted(self._confirmed),
            )
        for row in due:
            self._spawn(row)
        free -= len(due)
        worked = bool(due)
        order = self._fair_order(campaigns)
        group: list[Wanted] = []
        # Send slots the group may fill, if each campaign in it takes its whole share.
        planned = 0
        # Services not yet known good that have a campaign in the group: one request
        # at a time for each.
        careful_here: set[str] = set()
        for i, campaign in enumerate(order):
            if group and (free - planned <= 0 or len(group) >= CLAIM_GROUP_CAMPAIGNS):
                taken, did = await self._claim_and_spawn(group)
                free -= taken
                worked = worked or did
                group, planned, careful_here = [], 0, set()
            if free <= 0:
                break
            known_good = campaign.service_name in self._confirmed
            if not known_good and (
                campaign.service_name in self._inflight_services.values()
                or campaign.service_name in careful_here
            ):
                continue
            wait = self._service_wait.get(campaign.service_name, 0.0) - self._clock()
            if wait > 0:
                self._note_pacing(wait)
                continue
            queue_delay = await self.queue_delay(campaign.service_name)
            if queue_delay > self._cfg.max_queue_seconds:
                # Aculab already holds enough for this service: what we send now
                # would wait where pause, cancel and windows cannot reach it.
                self._note_pacing(min(1.0, queue_delay - self._cfg.max_queue_seconds))
                continue
            # The free send slots are shared out among the campaigns still to go.
            share = max(1, (free - planned) // (len(order) - i)) if known_good else 1
            if not known_good:
                careful_here.add(campaign.service_name)
            group.append(Wanted(campaign, queue_delay, share))
            planned += share
        if group:
            _, did = await self._claim_and_spawn(group)
            worked = worked or did
        return worked

    async def _claim_and_spawn(self, group: list[Wanted]) -> tuple[int, bool]:
        """Claim for `group` in one transaction and send what it got: (batches sent,
        whether anything changed)."""
        taken, worked = 0, False
        for wanted, (claimed, did) in zip(group, await self.claim_group(group), strict=True):
            self._cursor[wanted.campaign.priority] = wanted.campaign.id
            worked = worked or did
            for batch in claimed:
                self._spawn(batch)
            taken += len(claimed)
        return taken, worked

    async def _tick_unreachable(self, free: int, campaigns: list[q.DueCampaign]) -> bool:
        """Aculab cannot be reached: claim nothing, send one probe at a time.

        Batches past their idempotency window are still closed (released or
        parked) on time, however long the outage lasts.
        """
        async with self.pool.acquire() as conn:
            expired = await q.take_due_batches(
                conn,
                self.owner,
                self._cfg.lease_seconds,
                free,
                self._busy(),
                self._expire_after,
                only_expired=True,
            )
        for row in expired:
            self._spawn(row)
        if self._requests:
            return bool(expired)  # the probe is still out
        wait = self.breaker.probe_in()
        if wait > 0:
            self._note_pacing(wait)
            return bool(expired)
        # The probe: the batch due first; else, with nothing waiting to be re-sent,
        # one newly claimed batch.
        async with self.pool.acquire() as conn:
            due = await q.take_due_batches(
                conn,
                self.owner,
                self._cfg.lease_seconds,
                1,
                self._busy(),
                self._expire_after,
            )
            later = None if due else await q.next_due_in(conn, self.owner)
        if due:
            self.breaker.probe_sent()
            self._spawn(due[0])
            return True
        if later is not None and later <= PROBE_WAITS_FOR_DUE_BATCH:
            self._note_pacing(max(later, 0.05))
            return bool(expired)
        # Nothing due soon (a batch held for its window, another daemon's): a batch
        # of new contacts is the probe, lest recovery wait for that one.
        for campaign in self._fair_order(campaigns):
            claimed, _ = await self.claim(campaign, 0.0, 1)
            if claimed:
                self.breaker.probe_sent()
                self._spawn(claimed[0])
                return True
        await self._probe_without_a_batch()
        return bool(expired)

    async def _probe_without_a_batch(self) -> None:
        """Nothing to send at all: ask Aculab something harmless, so that the breaker
        (and what `campaign why` and /healthz say) closes when Aculab is back."""
        if not self.settings.aculab.api_access_key.get_secret_value():
            return
        self.breaker.probe_sent()
        try:
            await self.client.outbound_queues()
        except TransientError as exc:
            if exc.outage:
                self.breaker.failure(exc.reason)
                return
        except AculabError as exc:
            if exc.status is None:
                return
        self._answered(None)

    async def _due_campaigns(self) -> list[q.DueCampaign]:
        """The active campaigns with a contact due now, read in one query before any
        lock is taken: every campaign now and then (_refresh_every, or when a
        notification named none), else only those a notification named or a claim
        emptied."""
        now = self._clock()
        if self._refresh_all or now - self._refreshed_at >= self._refresh_every:
            self._refresh_all = False
            self._recheck.clear()
            self._refreshed_at = now
            self.full_reads += 1
            async with self.pool.acquire() as conn:
                rows = await q.due_campaigns(conn)
            self._note_active(rows, None, now)
        elif self._recheck:
            ids, self._recheck = sorted(self._recheck), set()
            async with self.pool.acquire() as conn:
                rows = await q.due_campaigns(conn, ids)
            self._note_active(rows, set(ids), now)
        self._looked_at = now
        return [c for c in self._campaigns.values() if self._due_at.get(c.id, math.inf) <= now]

    def _note_active(
        self, rows: list[q.DueCampaign], looked_at: set[int] | None, now: float
    ) -> None:
        """Record what was read of the campaigns in `looked_at` (None: of every
        campaign); those not in `rows` are no longer active. A campaign that became
        active (at start, after a resume) must prove its service's credentials again
        before its requests fan out."""
        for campaign_id in set(self._campaigns) if looked_at is None else looked_at:
            self._campaigns.pop(campaign_id, None)
            self._due_at.pop(campaign_id, None)
            # Each look at a campaign (every _refresh_every at least) makes its next claim
            # start from its first contact again, so that none due behind the point
            # where claims stopped waits longer than that (a retry, a release, a new
            # contact of higher priority); in between, claims resume where they stopped.
            self._claim_after.pop(campaign_id, None)
        for campaign in rows:
            if campaign.id not in self._active:
                self._confirmed.discard(campaign.service_name)
            self._campaigns[campaign.id] = campaign
            if campaign.due_in is not None:
                self._due_at[campaign.id] = now + campaign.due_in
        self._active = set(self._campaigns)

    def _busy(self) -> list[int]:
        """Batches not to take now: being sent here, or cooling down after a failure."""
        now = self._clock()
        for batch_id in [b for b, until in self._cooldown.items() if until <= now]:
            del self._cooldown[batch_id]
        return [*self._inflight, *self._cooldown]

    async def queue_delay(self, service: str) -> float:
        """Seconds a new start would wait in Aculab's queue for `service` (cached briefly).

        0 when the queue cannot be read (no API access key, Aculab unreachable):
        the engine's own pacing still keeps the queue about a second deep.
        """
        if not self.settings.aculab.api_access_key.get_secret_value():
            return 0.0
        now = self._clock()
        cached = self._queue_cache.get(service)
        if cached is not None and now - cached[0] < self._cfg.queue_check_interval:
            return cached[1]
        try:
            length = await self.client.queue_length(service)
        except AculabError as exc:
            log.debug("queue_length_unavailable", service=service, error=exc.reason)
            length = 0
        delay = length / self.settings.aculab.calls_per_second
        self._queue_cache[service] = (now, delay)
        return delay

    def _fair_order(self, campaigns: list[q.DueCampaign]) -> list[q.DueCampaign]:
        """Priority first; among campaigns of equal priority, round-robin: the order
        starts after the campaign served last, so every due campaign gets its turn
        however many there are."""
        out: list[q.DueCampaign] = []
        for prio in sorted({c.priority for c in campaigns}, reverse=True):
            group = sorted((c for c in campaigns if c.priority == prio), key=lambda c: c.id)
            last = self._cursor.get(prio)
            shift = 0 if last is None else next((i for i, c in enumerate(group) if c.id > last), 0)
            out.extend(group[shift:] + group[:shift])
        return out

    def _sleep_for(self) -> float:
        now = self._clock()
        if self._recheck or self._refresh_all:
            return 0.005
        # A tick every poll_interval at least (batches due to be re-sent are found by
        # the tick, not by notifications), which reads every campaign again when
        # _refresh_every has passed; sooner when a campaign's next contact is due.
        wait = min(self._cfg.poll_interval, self._refreshed_at + self._refresh_every - now)
        # Campaigns due at the look that were not claimed wait for their pacing, cap or
        # slot; those due after it are waited for, even if that moment has passed
        # since (the look found them due a moment later than it was made).
        later = [t for t in self._due_at.values() if t > self._looked_at]
        if later:
            wait = min(wait, min(later) - now)
        if self._pacing_wait is not None:
            wait = min(wait, self._pacing_wait)
        if self._inflight:
            wait = min(wait, 0.5)
        if self._cooldown:
            wait = min(wait, max(0.0, min(self._cooldown.values()) - now))
        return max(0.005, wait)

    async def _idle(self) -> bool:
        async with self.pool.acquire() as conn:
            return await q.nothing_to_do(conn)

    def _spawn(self, batch: q.BatchRow) -> None:
        if batch.previous_owner not in (None, self.owner):
            self.counters.takeovers += 1
            log.warning(
                "batch_taken_over",
                campaign_id=batch.campaign_id,
                batch_id=batch.id,
                previous_owner=batch.previous_owner,
                unique_id=batch.unique_id,
                in_doubt=batch.in_doubt,
            )
        task = asyncio.create_task(self._send(batch), name=f"batch-{batch.id}")
        self._inflight[batch.id] = task
        self._inflight_services[batch.id] = batch.service_name
        task.add_done_callback(functools.partial(self._finished, batch.id))

    def _finished(self, batch_id: int, task: asyncio.Task[None]) -> None:
        self._inflight.pop(batch_id, None)
        self._inflight_services.pop(batch_id, None)
        self._wake.set()
        if not task.cancelled() and task.exception() is not None:
            exc = task.exception()
            log.error("batch_send_crashed", batch_id=batch_id, error=repr(exc), exc_info=exc)

    async def _drain(self) -> None:
        """Let in-flight sends finish within the grace period; what is left stays persisted."""
        if self._inflight:
            log.info("dispatcher_draining", in_flight=len(self._inflight))
            _, pending = await asyncio.wait(
                list(self._inflight.values()), timeout=self._cfg.shutdown_grace_seconds
            )
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending, timeout=2)
        if self._critical:
            await asyncio.wait(list(self._critical), timeout=5)
        try:
            async with asyncio.timeout(3):
                async with self.pool.acquire() as conn:
                    released = await q.release_leases(conn, self.owner, sorted(self._requested))
            if released:
                log.info("leases_released", batches=released)
        except Exception as exc:  # shutting down: a failure here only delays takeover
            log.warning("leases_not_released", error=repr(exc))

    async def _shielded(self, coro: Coroutine[Any, Any, None]) -> None:
        """Run a write that must complete even if the daemon is being stopped."""
        task = asyncio.create_task(coro)
        self._critical.add(task)
        task.add_done_callback(self._critical.discard)
        await asyncio.shield(task)

    # --- step 1: claim and persist ------------------------------------------------

    async def claim(
        self,
        campaign: q.CampaignRow | q.DueCampaign,
        queue_delay: float = 0.0,
        batches: int = 1,
    ) -> tuple[list[q.BatchRow], bool]:
        """Claim up to `batches` batches for `campaign`: (the batches, whether anything changed).

        `queue_delay` is how long Aculab is expected to hold a new start in its
        queue: the calling window must still be open then. Several batches in
        one claim share its fixed cost (campaign and budget locks, suppression
        and duplicate checks, commit) when the sender has room for them.
        """
        [result] = await self.claim_group([Wanted(campaign, queue_delay, batches)])
        return result

    async def claim_group(self, wanted: Sequence[Wanted]) -> list[tuple[list[q.BatchRow], bool]]:
        """Claim for several campaigns (each once) in one transaction: for each of
        `wanted`, in its order, what claim() returns for it.

        Each campaign is locked, capped, paced and checked as if it were claimed
        alone, one after the other in `wanted`'s order (the fair order): the account
        budget is shared, and what one campaign takes of it the next does not get.
        Each step is one statement for the whole group, so the transaction's fixed
        cost is paid once however many campaigns it serves: what many campaigns
        with little to send each need.
        """
        guard = self._cfg.pacing_guard_seconds
        account = Budget.of(self.settings.aculab.calls_per_second, guard)
        trial = self.settings.aculab.account_type == "trial"
        self.claims += 1
        self.campaign_claims += len(wanted)
        ids = [w.campaign.id for w in wanted]
        results: dict[int, tuple[list[q.BatchRow], bool]] = {i: ([], False) for i in ids}
        claimed: dict[int, list[q.BatchRow]] = {}
        async with self.pool.acquire() as conn, conn.transaction():
            locked = await q.lock_campaigns_and_budgets(
                conn, ids, ["account", *(_budget_key(i) for i in sorted(ids))]
            )
            parts: list[_Part] = []
            for w in wanted:
                campaign = locked.get(w.campaign.id)
                if campaign is None:
                    # Paused, cancelled or finished meanwhile: read again, claim nothing.
                    self._recheck.add(w.campaign.id)
                    continue
                budget = Budget.of(campaign.calls_per_second, guard)
                parts.append(
                    _Part(
                        campaign,
                        w.queue_delay,
                        max(1, w.batches),
                        1 if trial else campaign.batch_size,
                        budget,
                        max(account.window, budget.window),
                    )
                )
            if parts:
                grants = await q.recent_grants(
                    conn,
                    ["account", *(p.key for p in parts)],
                    max(p.grants_window for p in parts),
                )
                parts = await self._paced(conn, parts, account, grants)
            if parts:
                await self._take_contacts(conn, parts)
                parts = [p for p in parts if p.contacts]
            if parts:
                now = datetime.now(UTC)
                for p in parts:
                    p.prepared = prepare(
                        p.contacts, p.campaign, now, now + timedelta(seconds=p.queue_delay)
                    )
                    p.ready = p.prepared.ready
                    results[p.campaign.id] = ([], True)
                await self._check_ready(conn, parts, account, grants["account"])
                await self._record_verdicts(conn, parts, now)
                claimed = await self._persist(conn, [p for p in parts if p.ready])
        for p in parts:
            if p.ready:
                results[p.campaign.id] = (claimed[p.campaign.id], True)
        # Committed: from here on a crash loses nothing, each batch is re-sent by id.
        for batches, _ in results.values():
            for batch in batches:
                self.counters.claimed += len(batch.contact_ids)
                log.debug(
                    "batch_persisted",
                    campaign_id=batch.campaign_id,
                    batch_id=batch.id,
                    unique_id=batch.unique_id,
                    calls=len(batch.contact_ids),
                )
        return [results[i] for i in ids]

    async def _paced(
        self,
        conn: q.Conn,
        parts: list[_Part],
        account: Budget,
        grants: dict[str, list[q.Grant]],
    ) -> list[_Part]:
        """The parts that may claim now, each with its grant and limit: under its
        concurrency cap, and with a full batch's room in its budget and in what the
        account had before this claim (what the group's earlier campaigns take of
        the account is counted in _check_ready). The others note when to look again.
        Called under the budget locks."""
        open_calls = await self._open_calls(conn, parts, grants)
        paced = []
        for p in parts:
            budgets = {"account": account, p.key: p.budget}
            # Counted under the account budget's lock, which every claim of every
            # daemon holds until it commits: two claims cannot both use the same room.
            room = p.campaign.max_concurrent_calls - open_calls[p.campaign.id]
            if room <= 0:
                # At the concurrency cap: outcomes free room (the poller wakes us).
                self._note_pacing(self._cfg.poll_interval)
                continue
            # Wait for a full batch (at most one second's worth): fewer, fuller
            # requests, and never more than the budget in any one-second window.
            p.need = min(p.size, room, *(b.calls for b in budgets.values()))
            available, wait = pacing_room(grants, budgets, p.need)
            if available < p.need:
                self._note_pacing(wait)
                continue
            p.grant = min(p.size * p.batches, room, available)
            # Whole batches are claimed even when the grant is smaller, so that
            # contacts skipped below (invalid, duplicate...) do not leave it short.
            p.limit = p.size * math.ceil(p.grant / p.size)
            paced.append(p)
        return paced

    async def _take_contacts(self, conn: q.Conn, parts: list[_Part]) -> None:
        """Lock each part's due contacts, up to its limit, resuming where its last
        claim stopped: one statement for the group (two when some ran short)."""
        after = {p.campaign.id: self._claim_after.get(p.campaign.id, q.FIRST_KEY) for p in parts}
        found = await q.claim_group_contacts(
            conn, [q.ContactRange(p.campaign.id, p.limit, after[p.campaign.id]) for p in parts]
        )
        for p in parts:
            p.contacts, p.last = found[p.campaign.id]
        # Before where the last claim stopped: contacts due again (a retry, a
        # release), or added with a higher priority, since.
        short = [
            p for p in parts if len(p.contacts) < p.limit and after[p.campaign.id] != q.FIRST_KEY
        ]
        if short:
            more = await q.claim_group_contacts(
                conn,
                [
                    q.ContactRange(
                        p.campaign.id,
                        p.limit - len(p.contacts),
                        q.FIRST_KEY,
                        after[p.campaign.id],
                    )
                    for p in short
                ],
            )
            for p in short:
                rows, last = more[p.campaign.id]
                p.contacts += rows
                p.last = last or p.last
        for p in parts:
            if len(p.contacts) < p.limit:
                # No more due now: the campaign is left alone until its next contact
                # is due (read again before the next claims) or a notification.
                self._due_at.pop(p.campaign.id, None)
                self._recheck.add(p.campaign.id)

    async def _check_ready(
        self, conn: q.Conn, parts: list[_Part], account: Budget, account_grants: list[q.Grant]
    ) -> None:
        """Take out of each part's ready contacts those on the do-not-call list, those
        beyond its pacing grant, and those whose number another contact of its campaign
        owns; the account budget is granted part after part, in the group's order."""
        wanted = [(p.campaign.id, r.destination.number) for p in parts for r in p.ready]
        numbers = [(cid, n) for cid, n in wanted if n]
        blocked = await q.suppressed_pairs(conn, [c for c, _ in numbers], [n for _, n in numbers])
        granted = list(account_grants)
        for p in parts:
            if blocked:
                keep = []
                for r in p.ready:
                    if (p.campaign.id, r.destination.number) in blocked:
                        p.prepared.skipped.append(
                            Skipped(r.contact.id, "suppressed", "on the do-not-call list")
                        )
                    else:
                        keep.append(r)
                p.ready = keep
            if p.ready:
                # What the campaigns before this one in the group took is the
                # account's as much as what earlier claims took.
                available, wait = pacing_room({"account": granted}, {"account": account}, p.need)
                if available < p.need:
                    self._note_pacing(wait)
                    p.ready = []
                    continue  # where the next claim resumes stays as it was
                # Beyond the pacing grant, contacts stay pending for the next batch.
                p.ready = p.ready[: min(p.grant, available)]
                granted.append(q.Grant(0.0, len(p.ready)))
            if p.last is not None:
                self._claim_after[p.campaign.id] = p.last
        owners = await q.own_keys(
            conn,
            [p.campaign.id for p in parts for _ in p.ready],
            [r.destination.key for p in parts for r in p.ready],
            [r.contact.id for p in parts for r in p.ready],
        )
        for p in parts:
            keep = []
            for r in p.ready:
                if r.contact.id in owners:
                    keep.append(r)
                else:
                    p.prepared.skipped.append(Skipped(r.contact.id, "duplicate", DUPLICATE_REASON))
            p.ready = keep

    async def _record_verdicts(self, conn: q.Conn, parts: list[_Part], now: datetime) -> None:
        """Mark the skipped contacts and defer those outside their window: one
        statement each for the group; one log line per contact skipped and per
        campaign deferred."""
        skipped = [s for p in parts for s in p.prepared.skipped]
        await q.set_states(
            conn,
            [s.contact_id for s in skipped],
            [s.state for s in skipped],
            [s.reason for s in skipped],
        )
        deferred = [d for p in parts for d in p.prepared.deferred]
        await q.defer(
            conn,
            [d.contact_id for d in deferred],
            [max(0.0, (d.until - now).total_seconds()) for d in deferred],
            [d.reason for d in deferred],
        )
        for p in parts:
            for s in p.prepared.skipped:
                log.info(
                    f"contact_{s.state}",
                    campaign_id=p.campaign.id,
                    contact_id=s.contact_id,
                    reason=s.reason,
                )
            if p.prepared.deferred:
                log.info(
                    "contacts_deferred",
                    campaign_id=p.campaign.id,
                    contacts=len(p.prepared.deferred),
                    earliest=min(d.until for d in p.prepared.deferred).isoformat(),
                )

    async def _persist(self, conn: q.Conn, parts: list[_Part]) -> dict[int, list[q.BatchRow]]:
        """Store each part's ready contacts as batches with their exact request and id,
        the contacts becoming dispatching, and the calls granted against the budgets:
        one round trip for the group. The batches, by campaign."""
        made = [
            (p, group)
            for p in parts
            for group in (p.ready[i : i + p.size] for i in range(0, len(p.ready), p.size))
        ]
        new = [
            q.NewBatch(
                p.campaign.id,
                p.campaign.service_name,
                unique_id_for(
                    self._cfg.namespace,
                    p.campaign.id,
                    [(r.contact.id, r.contact.dispatch_count + 1) for r in group],
                ),
                encode_rest_calls([r.call for r in group], self.settings.aculab.account_type),
                [r.contact.id for r in group],
            )
            for p, group in made
        ]
        grants = {"account": sum(len(p.ready) for p in parts)}
        grants.update((p.key, len(p.ready)) for p in parts)
        ids = (
            await q.insert_dispatching_batches(
                conn,
                batches=new,
                owner=self.owner,
                lease_seconds=self._cfg.lease_seconds,
                grants=grants,
            )
            if new
            else []
        )
        out: dict[int, list[q.BatchRow]] = {p.campaign.id: [] for p in parts}
        for batch_id, b, (p, _) in zip(ids, new, made, strict=True):
            out[p.campaign.id].append(
                q.BatchRow(
                    id=batch_id,
                    campaign_id=p.campaign.id,
                    campaign_name=p.campaign.name,
                    service_name=p.campaign.service_name,
                    unique_id=b.unique_id,
                    rest_calls=b.rest_calls,
                    contact_ids=b.contact_ids,
                    sends=0,
                    age_seconds=0.0,
                    first_send=True,
                )
            )
        return out

    async def _open_calls(
        self, conn: q.Conn, parts: list[_Part], grants: dict[str, list[q.Grant]]
    ) -> dict[int, int]:
        """Each part's open calls, or a bound above them; called under the budget lock.

        Counting is exact but grows with the calls open (up to the cap), so an
        exact count is reused for less than the window of grants just read: the
        count then, plus every grant recorded since by any daemon, bounds the
        calls open now from above (calls that finished since are not taken off).
        The count is redone when the bound would hold this claim back; the
        campaigns that need one are counted in one statement.
        """
        now = self._clock()
        out: dict[int, int] = {}
        caps: dict[int, int] = {}
        for p in parts:
            cap = p.campaign.max_concurrent_calls
            # Reuse only within the grants just read (and at most a second: grants are
            # kept longer than that, but claims further apart gain nothing from it),
            # and only under the cap it was counted with, since a count stops at its cap.
            horizon = min(p.grants_window, OPEN_COUNT_REUSE_SECONDS)
            counted = self._open_counts.get(p.campaign.id)
            if (
                counted is not None
                and counted[2] == cap
                and now - counted[0] + OPEN_COUNT_MARGIN < horizon
            ):
                since = now - counted[0] + OPEN_COUNT_MARGIN
                bound = counted[1] + sum(g.calls for g in grants[p.key] if g.age <= since)
                if bound + p.size * p.batches <= cap:
                    out[p.campaign.id] = bound
                    continue
            caps[p.campaign.id] = cap
        if caps:
            for campaign_id, n in (await q.open_calls(conn, caps)).items():
                self._open_counts[campaign_id] = (now, n, caps[campaign_id])
                out[campaign_id] = n
        return out

    def _note_pacing(self, seconds: float) -> None:
        seconds = max(0.005, seconds)
        self._pacing_wait = (
            seconds if self._pacing_wait is None else min(self._pacing_wait, seconds)
        )

    # --- step 2: send ---------------------------------------------------------------

    async def _send(self, batch: q.BatchRow) -> None:
        with structlog.contextvars.bound_contextvars(
            campaign_id=batch.campaign_id, batch_id=batch.id, unique_id=batch.unique_id
        ):
            try:
                await self._send_and_record(batch)
                self._requested.discard(batch.id)  # what became of it is recorded
                self._crashes.pop(batch.id, None)
            except DB_ERRORS as exc:
                # Recording the result failed (the database went away): the batch
                # stays pending under our lease and is re-sent by its unique_id,
                # once the backoff has passed.
                delay = self._cool_down(batch)
                await after_database_error(self.pool, exc)
                log.warning("batch_record_failed", **describe_db_error(exc), retry_in=delay)
            except Exception as exc:
                # Whatever failed, the batch is not touched again before its backoff:
                # an answer nobody foresaw must not become a storm of requests.
                delay = self._cool_down(batch)
                log.error("batch_send_crashed", error=repr(exc), retry_in=delay, exc_info=exc)

    def _cool_down(self, batch: q.BatchRow) -> float:
        if len(self._crashes) > MAX_REMEMBERED_CRASHES:
            # Batches another daemon finished are never forgotten otherwise; losing
            # the counts only makes their next wait start small again.
            self._crashes.clear()
        self._crashes[batch.id] += 1
        delay = self.backoff(batch.sends + self._crashes[batch.id])
        self._cooldown[batch.id] = self._clock() + delay
        return round(delay, 2)

    async def _send_and_record(self, batch: q.BatchRow) -> None:
        taken = self._clock()
        if batch.age_seconds >= self._expire_after:
            await self._expire(batch, batch.in_doubt, self._too_late(batch.age_seconds))
            return
        if not batch.first_send and await self._held_back(batch):
            return
        # The checks above may have waited (Aculab's queue, the database): the age
        # is counted again right before the request, so none begins too late.
        age = batch.age_seconds + (self._clock() - taken)
        if age >= self._expire_after:
            await self._expire(batch, batch.in_doubt, self._too_late(age))
            return
        if batch.sends > 0:
            self.counters.resends += 1
            self._count_batch("resent")
            log.info("batch_resending", sends=batch.sends, age_seconds=round(batch.age_seconds, 1))
        began = self._clock()
        self._requests += 1
        self._requested.add(batch.id)
        try:
            references = await self.client.service_start(
                batch.service_name, batch.rest_calls, batch.unique_id
            )
        except TransientError as exc:
            self._observe(began, "transient")
            if exc.outage:
                self._outage(exc, batch)
            else:
                self._answered(batch.service_name)
            await self._shielded(self._retry_later(batch, exc))
            return
        except AuthenticationError as exc:
            self._observe(began, "permanent")
            if exc.status is not None:
                self._answered(None)
            self._confirmed.discard(batch.service_name)
            await self._shielded(self._pause_for_auth(batch, exc))
            return
        except PermanentError as exc:
            self._observe(began, "permanent")
            # Aculab checks credentials first: a refusal of the request proves them.
            self._answered(batch.service_name if exc.status is not None else None)
            await self._shielded(self._rejected(batch, exc))
            return
        except UnusableAnswer as exc:
            self._observe(began, "unusable")
            self._answered(batch.service_name)
            reason = (
                "Aculab answered 200 with a body that is not a list of references "
                f"({exc.reason}); the calls started"
            )
            await self._shielded(self._park(batch, self._unmatched(reason), exc.raw))
            await self._shielded(self._unusable_answer(batch))
            return
        except Exception as exc:
            # A bug of ours: the request may have gone out, so it counts as in doubt.
            self._observe(began, "transient")
            log.error("batch_send_crashed", error=repr(exc), exc_info=exc)
            await self._shielded(self._retry_later(batch, TransientError(repr(exc))))
            return
        finally:
            self._requests -= 1
        self._observe(began, "ok")
        self._answered(batch.service_name)
        await self._shielded(self._acknowledge(batch, references))

    def _outage(self, exc: TransientError, batch: q.BatchRow) -> None:
        self._outage_batches.add(batch.id)
        if self.breaker.failure(exc.reason):
            if self.metrics is not None:
                self.metrics.aculab_reachable.set(0)
                self.metrics.aculab_outages.inc()
            log.error(
                "aculab_unreachable",
                failures=self.breaker.failures,
                error=exc.reason,
                probe_in=round(self.breaker.probe_in(), 2),
            )

    def _answered(self, service: str | None) -> None:
        """Aculab answered a request (even with a refusal): it is reachable."""
        if service is not None:
            self._confirmed.add(service)
        lasted = self.breaker.success()
        if lasted is None:
            return
        if self.metrics is not None:
            self.metrics.aculab_reachable.set(1)
        log.info(
            "aculab_reachable",
            down_seconds=round(lasted, 1),
            probes=self.breaker.probes,
            batches_waiting=len(self._outage_batches),
        )
        # Resume at full speed: batches that waited out the outage are due now.
        waiting, self._outage_batches = sorted(self._outage_batches), set()
        task = asyncio.create_task(self._due_now(waiting))
        self._critical.add(task)
        task.add_done_callback(self._critical.discard)
        self._wake.set()

    async def _due_now(self, batch_ids: list[int]) -> None:
        try:
            async with self.pool.acquire() as conn:
                await q.due_now(conn, batch_ids, self.owner)
        except DB_ERRORS as exc:  # they become due at their own time anyway
            log.warning("batches_not_rescheduled", **describe_db_error(exc))
        self._wake.set()

    async def _held_back(self, batch: q.BatchRow) -> bool:
        """Hold, release or park a re-send that must not go out now.

        A re-send can come long after the claim (backoff, a takeover, a resume).
        Its campaign may have been paused or cancelled since: it is handed back,
        to be taken again after a resume. And if the first send started nothing,
        this one starts the calls: the window is checked again for every contact,
        as at the claim. The batch cannot lose a contact (its bytes and id are
        fixed), so it waits for the next moment all of them are open; when that
        is beyond the idempotency window it is released (never reached Aculab)
        or parked (in doubt). Aculab's queue is read first: that can take a
        request's time, and the rest must be decided on what holds when the
        request goes out.
        """
        queue = await self.queue_delay(batch.service_name)
        async with self.pool.acquire() as conn:
            found = await q.batch_places(conn, batch.campaign_id, batch.contact_ids)
            if found is not None and found.campaign_state != "active":
                reason = f"re-send held while the campaign is {found.campaign_state}"
                await q.hold(conn, batch.id, self.owner, 0.0, reason)
                log.info("batch_held_for_campaign", state=found.campaign_state)
                return True
        if found is None:
            return False
        campaign = found.campaign
        window = windows.Window.from_row(
            campaign.window_start or "00:00", campaign.window_end or "24:00", campaign.window_days
        )
        if window.always_open:
            return False
        zones: set[str] = set()
        for destination, timezone in found.places:
            parsed = parse_destination(destination, default_region=campaign.default_country)
            number_zones = () if isinstance(parsed, Rejected) else parsed.timezones
            found_zones = windows.contact_zones(timezone, number_zones, campaign.default_timezone)
            if isinstance(found_zones, str):
                await self._expire(batch, batch.in_doubt, f"not re-sent: {found_zones}")
                return True
            zones.update(found_zones)
        now = datetime.now(UTC)
        verdict = window_verdict(sorted(zones), window, now, now + timedelta(seconds=queue))
        if verdict is None:
            return False
        if isinstance(verdict, Skipped):
            await self._expire(batch, batch.in_doubt, f"not re-sent: {verdict.reason}")
            return True
        wait = (verdict.until - now).total_seconds()
        if batch.age_seconds + wait >= self._expire_after:
            await self._expire(
                batch,
                batch.in_doubt,
                f"not re-sent: the calling window is closed ({verdict.reason}), and "
                f"{self._too_late(batch.age_seconds + wait)}",
            )
            return True
        async with self.pool.acquire() as conn:
            await q.hold(
                conn,
                batch.id,
                self.owner,
                wait,
                f"{HELD_FOR_WINDOW} {verdict.reason}",
            )
        log.info("batch_held_for_window", until=verdict.until.isoformat(), reason=verdict.reason)
        return True

    def _observe(self, began: float, result: str) -> None:
        if self.metrics is not None:
            self.metrics.request_seconds.labels(endpoint="service_start", result=result).observe(
                self._clock() - began
            )

    def _count_batch(self, outcome: str) -> None:
        if self.metrics is not None:
            self.metrics.batches.labels(outcome=outcome).inc()

    # --- step 3: acknowledge ---------------------------------------------------------

    async def _acknowledge(self, batch: q.BatchRow, references: list[str]) -> None:
        problem = reference_problem(references, len(batch.contact_ids))
        raw = json.dumps(references, ensure_ascii=False)
        if problem is not None:
            reason = f"Aculab's answer cannot be matched to the calls ({problem}); they started"
            await self._park(batch, self._unmatched(reason), raw)
            await self._unusable_answer(batch)
            return
        try:
            async with self.pool.acquire() as conn:
                done = await q.acknowledge(
                    conn, batch.id, references, self.settings.poller.first_poll_delay
                )
        except asyncpg.UniqueViolationError as exc:
            # A reference already belongs to another call: these calls started, but
            # the answer does not say which reference is whose.
            reason = (
                f"Aculab returned a reference already recorded for another call "
                f"({exc.constraint_name}); the calls started"
            )
            await self._park(batch, self._unmatched(reason), raw)
            await self._unusable_answer(batch)
            return
        self._crashes.pop(batch.id, None)
        self._unusable.pop(batch.service_name, None)
        if done is None:
            await self._answered_too_late(batch, raw)
            return
        self._outage_batches.discard(batch.id)
        self.counters.submitted += len(references)
        self.counters.batches_submitted += 1
        self._count_batch("submitted")
        if self.metrics is not None:
            self.metrics.calls_started.labels(campaign=batch.campaign_name).inc(len(references))
        self.counters.by_campaign[batch.campaign_id] = self.counters.by_campaign.get(
            batch.campaign_id, 0
        ) + len(references)
        log.info(
            "batch_submitted",
            campaign=batch.campaign_name,
            calls=len(references),
            sends=batch.sends + 1,
        )

    async def _answered_too_late(self, batch: q.BatchRow, raw: str) -> None:
        """References for a batch that was closed meanwhile (acknowledged by another
        daemon, or released or failed by a person): say so, loudly if they contradict."""
        async with self.pool.acquire() as conn:
            state = await q.batch_state(conn, batch.id)
        if state == "submitted":
            log.info("batch_already_acknowledged")
            return
        # Released: it was judged never to have reached Aculab, yet it started calls;
        # failed: a person gave up on it. Either way its contacts may be dialled again.
        log.error(
            "batch_answered_after_it_was_closed",
            state=state,
            references=raw,
            reason="these calls started; check the batch's contacts by hand",
        )

    async def _unusable_answer(self, batch: q.BatchRow) -> None:
        """One more answer that cannot be used: pause the service after a few in a row."""
        self._unusable[batch.service_name] += 1
        if self._unusable[batch.service_name] < UNUSABLE_PAUSE_AFTER:
            return
        self._unusable.pop(batch.service_name, None)
        reason = (
            f"Aculab answered {UNUSABLE_PAUSE_AFTER} requests in a row for service "
            f"{batch.service_name!r} with a body that cannot be matched to the calls: check "
            "aculab.base_url (a proxy or another server answering?), then resolve the parked "
            "batches and resume"
        )
        async with self.pool.acquire() as conn:
            paused = await q.pause_service(conn, batch.service_name, reason)
        log.error("campaign_paused", service=batch.service_name, campaigns=paused, reason=reason)

    @staticmethod
    def _unmatched(reason: str) -> str:
        return (
            f"{reason}: the answer is kept in batches.raw_answer. Find the calls at Aculab "
            "by this unique_id, then run `campaign resolve` for this batch"
        )

    # --- step 4: transient failure ---------------------------------------------------

    def backoff(self, sends: int, retry_after: float | None = None) -> float:
        """Capped exponential backoff with equal jitter; never sooner than Retry-After."""
        ceiling = doubling(self._cfg.retry_initial_delay, sends, self._cfg.retry_max_delay)
        delay = ceiling / 2 + self._rng.uniform(0, ceiling / 2)
        if retry_after is not None:
            delay = max(delay, retry_after)
        return delay

    async def _retry_later(self, batch: q.BatchRow, exc: TransientError) -> None:
        in_doubt = batch.in_doubt or exc.may_have_started
        if exc.retry_after:
            # New claims for the service wait too (up to the backoff cap): a released
            # batch's contacts must not come straight back through a fresh claim.
            self._service_wait[batch.service_name] = self._clock() + min(
                exc.retry_after, self._cfg.retry_max_delay
            )
        delay = self.backoff(batch.sends, exc.retry_after)
        plain = self.backoff(batch.sends)
        if in_doubt and batch.age_seconds + delay >= self._expire_after > batch.age_seconds + plain:
            # Retry-After reaches past the window, the backoff alone does not: one
            # last try under this id can still settle the doubt, which parking cannot.
            delay = plain
        if batch.age_seconds + delay >= self._expire_after:
            reason = f"{self._too_late(batch.age_seconds + delay)}; last error: {exc.reason}"
            await self._expire(batch, in_doubt, reason)
            return
        async with self.pool.acquire() as conn:
            kept = await q.reschedule(
                conn, batch.id, self.owner, exc.reason[:500], delay, exc.may_have_started
            )
        log.warning(
            "batch_send_failed",
            error=exc.reason,
            status=exc.status,
            sends=batch.sends + 1,
            retry_in=round(delay, 2),
            in_doubt=in_doubt,
            lease_kept=kept,
        )

    def _too_late(self, age: float) -> str:
        window = self._cfg.idempotency_window_seconds
        return (
            f"unacknowledged for {age:.0f}s: the next send would begin less than "
            f"{self._margin:g}s before the end of the {window:.0f}s idempotency window"
        )

    async def _expire(self, batch: q.BatchRow, in_doubt: bool, reason: str) -> None:
        """The batch can no longer be sent under its unique_id.

        In doubt, it is parked for a person (re-sending could start the calls
        twice). Otherwise nothing of it ever reached Aculab: it is released, and
        its contacts go back to the queue without using an attempt.
        """
        if in_doubt:
            await self._park(
                batch,
                f"{reason}. An earlier send may have started the calls: check with Aculab "
                "whether this unique_id started calls, then run `campaign resolve` for "
                "this batch",
            )
        else:
            await self._release(batch, f"{reason}. Nothing reached Aculab: back in the queue")

    async def _park(self, batch: q.BatchRow, reason: str, raw_answer: str | None = None) -> None:
        async with self.pool.acquire() as conn:
            if not await q.park(conn, batch.id, self.owner, reason, raw_answer):
                log.warning("batch_no_longer_ours", action="park", reason=reason)
                return
        self._outage_batches.discard(batch.id)
        self._crashes.pop(batch.id, None)
        self.counters.parked += 1
        self._count_batch("parked")
        log.error(
            "batch_parked",
            campaign=batch.campaign_name,
            contacts=len(batch.contact_ids),
            reason=reason,
        )

    async def _release(self, batch: q.BatchRow, reason: str) -> None:
        async with self.pool.acquire() as conn:
            freed = await q.release(conn, batch.id, self.owner, reason)
        if freed is None:
            log.warning("batch_no_longer_ours", action="release", reason=reason)
            return
        self._outage_batches.discard(batch.id)
        self._crashes.pop(batch.id, None)
        self.counters.released += 1
        self._count_batch("released")
        log.warning(
            "batch_released",
            campaign=batch.campaign_name,
            contacts=freed,
            reason=reason,
        )
        self._wake.set()

    # --- step 5: permanent failure ---------------------------------------------------

    async def _pause_for_auth(self, batch: q.BatchRow, exc: AuthenticationError) -> None:
        reason = f"Aculab refused the credentials for service {batch.service_name!r}: {exc.reason}"
        await self._pause_service(batch, reason)

    async def _pause_service(self, batch: q.BatchRow, reason: str) -> None:
        """Aculab refused the request itself (credentials, configuration): pause the service.

        This refusal started nothing. If no earlier send may have started the
        calls either, the batch closes and its contacts wait in `pending` for the
        resume. Otherwise (Aculab checks credentials before it looks up a
        unique_id) the batch keeps its id and is re-sent after the resume, or
        parked once too old.
        """
        async with self.pool.acquire() as conn, conn.transaction():
            if not batch.in_doubt:
                if await q.close_batch(conn, batch.id, "rejected", reason, self.owner) is None:
                    log.warning("batch_no_longer_ours", action="reject", reason=reason)
                    return
                await q.return_to_pending(conn, batch.id, reason)
            else:
                delay = self.backoff(batch.sends)
                if not await q.reschedule(
                    conn, batch.id, self.owner, reason[:500], delay, may_have_started=False
                ):
                    return
            paused = await q.pause_service(conn, batch.service_name, reason)
        if not batch.in_doubt:
            self._count_batch("rejected")
        else:
            log.warning("batch_kept_in_doubt", reason="an earlier send may have started the calls")
        log.error("campaign_paused", service=batch.service_name, campaigns=paused, reason=reason)

    async def _rejected(self, batch: q.BatchRow, exc: PermanentError) -> None:
        if exc.status not in REJECTED_STATUSES:
            # Not about a call object (404, 405, ...): likely configuration; pause, lose nothing.
            reason = f"service_start refused for service {batch.service_name!r}: {exc.reason}"
            await self._pause_service(batch, reason)
            return
        if batch.in_doubt:
            # An earlier send may have started these calls; a refusal now may mean
            # that Aculab changed (a shorter list limit, a caller ID withdrawn), not
            # that the first send started nothing. New ids, or marking the contacts
            # invalid, could call them twice or lose live calls: a person decides.
            await self._park(
                batch,
                f"Aculab refused a re-send ({exc.reason}) of a batch an earlier send of "
                "which may have started the calls: not split under new ids. Check with "
                "Aculab whether this unique_id started calls, then run `campaign resolve` "
                "for this batch",
            )
            return
        if len(batch.contact_ids) == 1:
            state = "invalid" if exc.code in VALIDATION_CODES else "failed"
            reason = f"Aculab refused the call: {exc.reason}"
            async with self.pool.acquire() as conn, conn.transaction():
                if await q.close_batch(conn, batch.id, "rejected", reason, self.owner) is None:
                    log.warning("batch_no_longer_ours", action="reject", reason=reason)
                    return
                await q.fail_contacts(conn, batch.id, state, reason)
            self._count_batch("rejected")
            log.warning(f"contact_{state}", contact_id=batch.contact_ids[0], reason=reason)
            return
        await self._split(batch, exc)

    async def _split(self, batch: q.BatchRow, exc: PermanentError) -> None:
        """Split a rejected list: named bad indices alone, else halves."""
        calls = json.loads(batch.rest_calls)
        n = len(batch.contact_ids)
        bad = sorted(
            {i for d in exc.details if (i := assumptions.detail_index(d)) is not None and i < n}
        )
        groups: list[list[int]]
        if bad and len(bad) < n:
            rest = [i for i in range(n) if i not in bad]
            groups = [[i] for i in bad] + [rest]
        else:
            half = n // 2
            groups = [list(range(half)), list(range(half, n))]
        reason = f"split after Aculab refused the list: {exc.reason}"
        children = []
        async with self.pool.acquire() as conn, conn.transaction():
            if await q.close_batch(conn, batch.id, "split", reason, self.owner) is None:
                log.warning("batch_no_longer_ours", action="split", reason=reason)
                return
            for group in groups:
                ids = [batch.contact_ids[i] for i in group]
                child_id = await q.insert_batch(
                    conn,
                    campaign_id=batch.campaign_id,
                    parent_id=batch.id,
                    service_name=batch.service_name,
                    unique_id=child_unique_id(
                        self._cfg.namespace, batch.campaign_id, batch.unique_id, ids
                    ),
                    rest_calls=json.dumps(
                        [calls[i] for i in group], separators=(",", ":"), ensure_ascii=False
                    ),
                    contact_ids=ids,
                    owner=self.owner,
                    lease_seconds=self._cfg.lease_seconds,
                )
                await q.move_contacts(conn, child_id, ids, batch.id)
                children.append(child_id)
        self._count_batch("split")
        log.warning("batch_split", reason=reason, children=children, sizes=[len(g) for g in groups])
        self._wake.set()


__all__ = [
    "AculabError",
    "Dispatcher",
    "Rules",
    "Wanted",
    "contact_verdict",
    "prepare",
    "reference_problem",
    "unique_id_for",
]
