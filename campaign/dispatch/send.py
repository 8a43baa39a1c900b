"""Steps 2 to 5 of the protocol, for one persisted batch at a time.

2. send: `service_start` with exactly the stored `rest_calls` and `unique_id`;
   a re-send first checks that its campaign is still active and its calling
   window open (else it is held, released or parked);
3. acknowledge: one transaction stores each reference against its contact; an
   answer that cannot be matched to the calls parks the batch for a person,
   and a few in a row pause the service;
4. transient failure: the same bytes and id again later, with capped
   exponential backoff and jitter (never before Retry-After); a batch whose next
   send could begin too close to the end of the idempotency window expires:
   released when nothing of it can have reached Aculab, parked when in doubt;
5. permanent failure: an authentication or configuration refusal pauses the
   campaigns of that service; a rejected list is split until the bad contacts
   stand alone, each then marked invalid or failed.

Step 6, crash recovery, is the loop's (loop.py): a batch whose owner stopped
heartbeating is taken over and sent here again under its stored id. The
circuit breaker (Aculab unreachable), cooldowns after failures and the
services whose credentials are known good are kept here: the loop asks them
what it may take next.
"""

from __future__ import annotations

import asyncio
import json
import random
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

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
)
from campaign.breaker import Breaker
from campaign.db import queries as q
from campaign.destinations import Rejected, parse_destination
from campaign.dispatch.calls import (
    Skipped,
    child_unique_id,
    reference_problem,
    window_verdict,
)
from campaign.dispatch.pacing import QueueDelay
from campaign.runtime import (
    DB_ERRORS,
    RequestTimer,
    Shielded,
    after_database_error,
    describe_db_error,
    doubling,
)
from campaign.settings import DispatcherSettings, Settings

if TYPE_CHECKING:
    from campaign.metrics import Metrics

log = structlog.get_logger("campaign.dispatch")

# How a held re-send's last_error starts, for people; since migration 0011 held
# batches are found by batches.held_for_window.
HELD_FOR_WINDOW = "re-send held outside the calling window:"
# Statuses that mean "this request, as built, is unacceptable": a list is split
# to find the bad call objects. Other 4xx point at configuration, not contacts.
REJECTED_STATUSES = frozenset({400, 413, 422})
# Aculab's error codes that say a call object is invalid (not merely refused).
VALIDATION_CODES = frozenset({"0001", "0002", "0003", "0004"})
# Answers that cannot be matched to the calls, in a row for one service, after
# which its campaigns pause: something between us and Aculab answers 200 with
# the wrong body, and every further batch would park for a person.
UNUSABLE_PAUSE_AFTER = 3
MAX_REMEMBERED_CRASHES = 10_000


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


class Sender:
    """Sends the batches the loop takes and records what became of each one."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        client: AculabClient,
        settings: Settings,
        owner: str,
        *,
        counters: Counters,
        queue_delay: QueueDelay,
        wake: asyncio.Event,
        rng: random.Random,
        clock: Callable[[], float],
        metrics: Metrics | None,
    ) -> None:
        self.pool = pool
        self.client = client
        self.settings = settings
        self.owner = owner
        self.counters = counters
        self.metrics = metrics
        self._queue_delay = queue_delay
        # Set when the loop should look again now (a batch closed, Aculab is back).
        self._wake = wake
        self._rng = rng
        self._clock = clock
        self._timer = RequestTimer(metrics, "service_start", clock)
        # The writes that record what Aculab did: a stop waits for them.
        self.writes = Shielded()
        # batch id -> when (this daemon's clock) it may be taken again, after its
        # send or its acknowledgement failed in a way that left it pending.
        self._cooldown: dict[int, float] = {}
        # batch id -> such failures in a row, so that the wait grows like a backoff.
        self._crashes: Counter[int] = Counter()
        # Services whose credentials Aculab accepted since their campaigns became
        # active (for this daemon): until then, one request at a time.
        self.confirmed: set[str] = set()
        # service_start requests under way (sends, not batches being closed).
        self.requests = 0
        # Batches whose request this daemon began and whose end it has not recorded
        # yet: at a stop, only these may have gone out (the others taken and not sent
        # are handed back without doubt).
        self.requested: set[int] = set()
        # service -> answers in a row that could not be matched to the calls.
        self._unusable: Counter[str] = Counter()
        # service -> when (this daemon's clock) Aculab's last Retry-After for it ends.
        self.service_wait: dict[str, float] = {}
        self.breaker = Breaker(
            self._cfg.breaker_threshold,
            self._cfg.retry_initial_delay,
            self._cfg.retry_max_delay,
            clock,
        )
        # Batches rescheduled because Aculab was unreachable: due again the moment
        # it answers, whatever their backoff said.
        self._outage_batches: set[int] = set()

    @property
    def _cfg(self) -> DispatcherSettings:
        return self.settings.dispatcher

    @property
    def _margin(self) -> float:
        """The longest a request can take: no (re-)send begins later than this before the
        end of the idempotency window."""
        return self.settings.http.connect_timeout + self.settings.http.read_timeout

    @property
    def expire_after(self) -> float:
        """Age beyond which a batch is never sent under its unique_id again."""
        return max(0.0, self._cfg.idempotency_window_seconds - self._margin)

    def cooling(self) -> list[int]:
        """Batches not to take now: cooling down after a failure."""
        now = self._clock()
        for batch_id in [b for b, until in self._cooldown.items() if until <= now]:
            del self._cooldown[batch_id]
        return list(self._cooldown)

    def next_cool(self) -> float | None:
        """When (this daemon's clock) the first batch cooling down may be taken again."""
        return min(self._cooldown.values()) if self._cooldown else None

    async def probe(self) -> None:
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

    # --- step 2: send ---------------------------------------------------------------

    async def send(self, batch: q.BatchRow) -> None:
        """Steps 2 to 5 for one batch taken by the loop: whatever happens, what became
        of it is recorded, or it stays pending under this daemon's lease."""
        with structlog.contextvars.bound_contextvars(
            campaign_id=batch.campaign_id, batch_id=batch.id, unique_id=batch.unique_id
        ):
            try:
                await self._send_and_record(batch)
                self.requested.discard(batch.id)  # what became of it is recorded
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
        if batch.age_seconds >= self.expire_after:
            await self._expire(batch, batch.in_doubt, self._too_late(batch.age_seconds))
            return
        if not batch.first_send and await self._held_back(batch):
            return
        # The checks above may have waited (Aculab's queue, the database): the age
        # is counted again right before the request, so none begins too late.
        age = batch.age_seconds + (self._clock() - taken)
        if age >= self.expire_after:
            await self._expire(batch, batch.in_doubt, self._too_late(age))
            return
        if batch.sends > 0:
            self.counters.resends += 1
            self._count_batch("resent")
            log.info("batch_resending", sends=batch.sends, age_seconds=round(batch.age_seconds, 1))
        began = self._timer.start()
        self.requests += 1
        self.requested.add(batch.id)
        try:
            references = await self.client.service_start(
                batch.service_name, batch.rest_calls, batch.unique_id
            )
        except TransientError as exc:
            self._timer.observe(began, "transient")
            if exc.outage:
                self._outage(exc, batch)
            else:
                self._answered(batch.service_name)
            await self.writes.run(self._retry_later(batch, exc))
            return
        except AuthenticationError as exc:
            self._timer.observe(began, "permanent")
            if exc.status is not None:
                self._answered(None)
            self.confirmed.discard(batch.service_name)
            await self.writes.run(self._pause_for_auth(batch, exc))
            return
        except PermanentError as exc:
            self._timer.observe(began, "permanent")
            # Aculab checks credentials first: a refusal of the request proves them.
            self._answered(batch.service_name if exc.status is not None else None)
            await self.writes.run(self._rejected(batch, exc))
            return
        except UnusableAnswer as exc:
            self._timer.observe(began, "unusable")
            self._answered(batch.service_name)
            reason = (
                "Aculab answered 200 with a body that is not a list of references "
                f"({exc.reason}); the calls started"
            )
            await self.writes.run(self._park(batch, self._unmatched(reason), exc.raw))
            await self.writes.run(self._unusable_answer(batch))
            return
        except Exception as exc:
            # A bug of ours: the request may have gone out, so it counts as in doubt.
            self._timer.observe(began, "transient")
            log.error("batch_send_crashed", error=repr(exc), exc_info=exc)
            await self.writes.run(self._retry_later(batch, TransientError(repr(exc))))
            return
        finally:
            self.requests -= 1
        self._timer.observe(began, "ok")
        self._answered(batch.service_name)
        await self.writes.run(self._acknowledge(batch, references))

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
            self.confirmed.add(service)
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
        self.writes.start(self._due_now(waiting))
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
        queue = await self._queue_delay(batch.service_name)
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
        if batch.age_seconds + wait >= self.expire_after:
            await self._expire(
                batch,
                batch.in_doubt,
                f"not re-sent: the calling window is closed ({verdict.reason}), and "
                f"{self._too_late(batch.age_seconds + wait)}",
            )
            return True
        async with self.pool.acquire() as conn:
            await q.hold_for_window(
                conn,
                batch.id,
                self.owner,
                wait,
                f"{HELD_FOR_WINDOW} {verdict.reason}",
            )
        log.info("batch_held_for_window", until=verdict.until.isoformat(), reason=verdict.reason)
        return True

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
            self.service_wait[batch.service_name] = self._clock() + min(
                exc.retry_after, self._cfg.retry_max_delay
            )
        delay = self.backoff(batch.sends, exc.retry_after)
        plain = self.backoff(batch.sends)
        if in_doubt and batch.age_seconds + delay >= self.expire_after > batch.age_seconds + plain:
            # Retry-After reaches past the window, the backoff alone does not: one
            # last try under this id can still settle the doubt, which parking cannot.
            delay = plain
        if batch.age_seconds + delay >= self.expire_after:
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
