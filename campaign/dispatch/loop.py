"""The dispatcher's loop: the due campaigns (due.py) in what order, and when to look again.

Each tick re-sends the batches that are due again (steps 2-5 and, for a batch
another daemon left behind, step 6: send.py), then claims for the due campaigns
in a fair order (step 1: claim.py), a group of campaigns per transaction, and
hands each batch claimed to its own task (send.py). Between ticks it sleeps until
a notification, the next contact due, the pacing (pacing.py), a cooldown or the
stop, whichever comes first. While Aculab is unreachable it claims nothing and
sends one probe at a time.
"""

from __future__ import annotations

import asyncio
import functools
import random
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import asyncpg
import structlog

from campaign.aculab import AculabClient
from campaign.breaker import Breaker
from campaign.db import queries as q
from campaign.dispatch.claim import Claimed, Claimer, Wanted
from campaign.dispatch.due import DueCampaigns
from campaign.dispatch.pacing import QueueDelay
from campaign.dispatch.send import Counters, Sender
from campaign.runtime import (
    DB_ERRORS,
    Episode,
    after_database_error,
    backoff_delay,
    database_episode,
    db_error_kind,
    describe_db_error,
    sleep_until_woken,
)
from campaign.settings import DispatcherSettings, Settings

if TYPE_CHECKING:
    from campaign.metrics import Metrics

log = structlog.get_logger("campaign.dispatch")

DATABASE_RETRY_MAX_SECONDS = 5.0
# While Aculab is unreachable, a pending batch due within this many seconds is the
# next probe; one due later does not hold the probing up.
PROBE_WAITS_FOR_DUE_BATCH = 1.0
# Due campaigns served by one claim transaction at most (fewer when fewer send
# slots are free: each campaign claimed takes at least one). Many small campaigns
# then share one transaction's locks, reads and commit instead of paying each.
CLAIM_GROUP_CAMPAIGNS = 50


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
        self._clock = clock
        self._wake = asyncio.Event()
        self._queue_delay = QueueDelay(client, settings, clock)
        self.claimer = Claimer(
            pool, settings, owner, clock, note_pacing=self._note_pacing, read_again=self._read_again
        )
        self.sender = Sender(
            pool,
            client,
            settings,
            owner,
            counters=self.counters,
            queue_delay=self._queue_delay,
            wake=self._wake,
            rng=rng or random.Random(),
            clock=clock,
            metrics=metrics,
        )
        # batch id -> its send task, and its service.
        self._inflight: dict[int, asyncio.Task[None]] = {}
        self._inflight_services: dict[int, str] = {}
        self._pacing_wait: float | None = None
        self.due = DueCampaigns(
            pool,
            settings,
            clock,
            was_read=self.claimer.forget,
            became_active=self.sender.confirmed.discard,
        )
        # Priority -> the campaign served last: the next round starts after it.
        self._cursor: dict[int, int] = {}
        self._db_trouble = database_episode(log, "dispatcher")
        self._bug = Episode(log, "dispatcher_failed", "dispatcher_recovered")

    @property
    def _cfg(self) -> DispatcherSettings:
        return self.settings.dispatcher

    # What tests, benchmarks and the daemon read of the parts.
    @property
    def breaker(self) -> Breaker:
        return self.sender.breaker

    @property
    def claims(self) -> int:
        return self.claimer.claims

    @property
    def campaign_claims(self) -> int:
        return self.claimer.campaign_claims

    @property
    def full_reads(self) -> int:
        return self.due.full_reads

    @property
    def _listening(self) -> bool:
        return self.due.listening

    async def _due_campaigns(self) -> list[q.DueCampaign]:
        return await self.due.now()

    async def claim(
        self, campaign: q.CampaignRow | q.DueCampaign, queue_delay: float = 0.0, batches: int = 1
    ) -> Claimed:
        """Claim up to `batches` batches for `campaign` (claim.py, step 1)."""
        [result] = await self.claim_group([Wanted(campaign, queue_delay, batches)])
        return result

    async def claim_group(self, wanted: Sequence[Wanted]) -> list[Claimed]:
        """Claim for several campaigns in one transaction (claim.py, step 1)."""
        results = await self.claimer.claim_group(wanted)
        self.counters.claimed += sum(len(b.contact_ids) for got, _ in results for b in got)
        return results

    def aculab_unreachable(self) -> tuple[float, str | None] | None:
        """(seconds since the breaker opened, the last error) while Aculab is unreachable."""
        if self.breaker.opened_at is None:
            return None
        return self._clock() - self.breaker.opened_at, self.breaker.last_error

    def wake(self, payload: str | None = None) -> None:
        """A notification: '<table>:<campaign id>' names the campaign that changed;
        anything else (or nothing) means look at every campaign again."""
        self.due.heard(payload)
        self._wake.set()

    def listening(self, up: bool) -> None:
        """The LISTEN connection is up (notifications are heard) or down."""
        self.due.listening = up
        self._wake.set()

    def _read_again(self, campaign_id: int) -> None:
        self.due.read_again(campaign_id)

    def _note_pacing(self, seconds: float) -> None:
        seconds = max(0.005, seconds)
        self._pacing_wait = (
            seconds if self._pacing_wait is None else min(self._pacing_wait, seconds)
        )

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
        campaigns = await self.due.now()
        if self.breaker.is_open:
            return await self._tick_unreachable(free, campaigns)
        # A service not yet known good gets one request at a time.
        careful = [
            s for s in set(self._inflight_services.values()) if s not in self.sender.confirmed
        ]
        async with self.pool.acquire() as conn:
            due = await q.take_due_batches(
                conn,
                self.owner,
                self._cfg.lease_seconds,
                free,
                self._busy(),
                self.sender.expire_after,
                skip_services=careful,
                confirmed_services=sorted(self.sender.confirmed),
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
            known_good = campaign.service_name in self.sender.confirmed
            if not known_good and (
                campaign.service_name in self._inflight_services.values()
                or campaign.service_name in careful_here
            ):
                continue
            wait = self.sender.service_wait.get(campaign.service_name, 0.0) - self._clock()
            if wait > 0:
                self._note_pacing(wait)
                continue
            queue_delay = await self._queue_delay(campaign.service_name)
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
                self.sender.expire_after,
                only_expired=True,
            )
        for row in expired:
            self._spawn(row)
        if self.sender.requests:
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
                self.sender.expire_after,
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
        await self.sender.probe()
        return bool(expired)

    def _busy(self) -> list[int]:
        """Batches not to take now: being sent here, or cooling down after a failure."""
        return [*self._inflight, *self.sender.cooling()]

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
        if self.due.to_read:
            return 0.005
        # A tick every poll_interval at least (batches due to be re-sent are found by
        # the tick, not by notifications), which reads every campaign again when
        # that is due; sooner when a campaign's next contact is due.
        wait = min(self._cfg.poll_interval, self.due.next_read - now)
        later = self.due.next_due()
        if later is not None:
            wait = min(wait, later - now)
        if self._pacing_wait is not None:
            wait = min(wait, self._pacing_wait)
        if self._inflight:
            wait = min(wait, 0.5)
        cool = self.sender.next_cool()
        if cool is not None:
            wait = min(wait, max(0.0, cool - now))
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
        task = asyncio.create_task(self.sender.send(batch), name=f"batch-{batch.id}")
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
        await self.sender.writes.wait(5)
        try:
            async with asyncio.timeout(3):
                async with self.pool.acquire() as conn:
                    released = await q.release_leases(
                        conn, self.owner, sorted(self.sender.requested)
                    )
            if released:
                log.info("leases_released", batches=released)
        except Exception as exc:  # shutting down: a failure here only delays takeover
            log.warning("leases_not_released", error=repr(exc))
