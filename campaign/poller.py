"""The outcome tracker's pull side: application_status for calls with no outcome yet.

Each round it also matches final-page reports that arrived before their batch
was acknowledged, and marks campaigns whose contacts have all finished as
completed. Polls are spread out (first after `first_poll_delay`, then doubling
up to `max_interval`), limited in number (`concurrency`), and after a round of
failures the whole poller backs off, so an Aculab outage never becomes a storm.

A call is given up (`unknown`) only on an answer: past `give_up_after`, a poll
that shows it still unfinished, or Aculab saying it does not know the instance.
However long the daemons were down, or Aculab unreachable, nothing is given up
without asking first (Aculab keeps results for days).
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import asyncpg
import structlog

from campaign import assumptions, outcomes, vocabulary
from campaign.aculab import AculabClient, AuthenticationError, NotFoundError, TransientError
from campaign.db import outcomes as oq
from campaign.runtime import (
    DB_ERRORS,
    Episode,
    RequestTimer,
    Shielded,
    after_database_error,
    database_episode,
    db_error_kind,
    describe_db_error,
    doubling,
    sleep_until_woken,
)
from campaign.settings import Settings

if TYPE_CHECKING:
    from campaign.metrics import Metrics

log = structlog.get_logger("campaign.poller")

UNMATCHED_KEEP_SECONDS = 24 * 3600.0
# At most this long between two looks for finished campaigns when no call ended here.
COMPLETION_CHECK_SECONDS = 5.0


@dataclass
class PollStats:
    polls: int = 0
    recorded: int = 0
    given_up: int = 0
    failures: int = 0


class Poller:
    def __init__(
        self,
        pool: asyncpg.Pool,
        client: AculabClient,
        settings: Settings,
        metrics: Metrics | None = None,
    ) -> None:
        self.pool = pool
        self.client = client
        self.settings = settings
        self.metrics = metrics
        self.stats = PollStats()
        self._wake = asyncio.Event()
        self._slots = asyncio.Semaphore(settings.poller.concurrency)
        self._failed_rounds = 0
        self._refused: str | None = None
        # Calls ended here (recorded or given up) when campaigns were last checked for
        # completion, and when (monotonic clock).
        self._ended_at_check = 0
        self._checked_at = -math.inf
        # Outcome writes: a stop must not cut one's transaction in half.
        self._critical = Shielded()
        self._timer = RequestTimer(metrics, "application_status")
        self._db_trouble = database_episode(log, "poller")
        self._bug = Episode(log, "poller_failed", "poller_recovered")
        # Rounds in which not one poll got an answer: one line when they start, one
        # when polls get through again, however long Aculab stays away.
        self._unanswered = Episode(
            log, "poll_round_failed", "poll_round_recovered", level="warning"
        )

    @property
    def polling(self) -> bool:
        """Polling needs the account's API access key; without it only push is used."""
        return self.settings.poller.enabled and bool(
            self.settings.aculab.api_access_key.get_secret_value()
        )

    def wake(self) -> None:
        self._wake.set()

    async def run(self, stop: asyncio.Event, *, round_seconds: float = 1.0) -> None:
        while not stop.is_set():
            self._wake.clear()
            try:
                busy = await self.round()
                self._db_trouble.recovered()
                self._bug.recovered()
            except DB_ERRORS as exc:
                self._db_trouble.failed(db_error_kind(exc), **describe_db_error(exc))
                await after_database_error(self.pool, exc)
                busy = False
                self._failed_rounds += 1
            except Exception as exc:
                # Outcomes must keep flowing: a bug here is logged and retried, backing off.
                self._bug.failed(error=repr(exc), exc_info=exc)
                busy = False
                self._failed_rounds += 1
            if busy and not self._failed_rounds:
                continue
            await sleep_until_woken(stop, self._wake, self._pause(round_seconds))
        await self._critical.wait(5)

    def _pause(self, round_seconds: float) -> float:
        if self._failed_rounds:
            return doubling(round_seconds, self._failed_rounds, self.settings.poller.max_interval)
        return round_seconds

    async def round(self) -> bool:
        """One pass: stashed pushes, completed campaigns, due polls. True if polls were due."""
        await self.reconcile_pushes()
        await self._complete_if_due()
        cfg = self.settings.poller
        if not self.polling:
            return await self._give_up_unpolled()
        async with self.pool.acquire() as conn:
            due = await oq.take_due_calls(conn, cfg.batch, cfg.interval, cfg.max_interval)
        if not due:
            self._failed_rounds = 0
            return False
        self._refused = None
        results = await asyncio.gather(*(self._poll(call) for call in due))
        failed = results.count(False)
        if self._refused is not None:
            # Once per round, not once per call: the operator has one thing to fix.
            log.error("poll_refused", reason=self._refused, calls=len(due))
        if failed == len(due):
            # Nothing got through: Aculab is down or refusing; back the whole poller off.
            self._failed_rounds += 1
            self._unanswered.failed(failed=failed, polled=len(due))
        else:
            # Calls whose poll failed are already rescheduled (next_poll_at); slowing
            # every other call down would stall the campaign behind the cap.
            self._failed_rounds = 0
            self._unanswered.recovered()
            if failed:
                log.info("poll_round_partly_failed", failed=failed, polled=len(due))
        return len(due) >= cfg.batch

    async def _give_up_unpolled(self) -> bool:
        """Without polling, a call whose final page never comes is still given up.

        Otherwise its contact would stay `dialing` and its campaign open for
        ever. Only calls past the give-up age are touched: in a fleet where
        other daemons poll, the calls they poll keep their schedule.
        """
        cfg = self.settings.poller
        async with self.pool.acquire() as conn:
            due = await oq.abandoned_calls(conn, cfg.batch, cfg.give_up_after, cfg.first_poll_delay)
        for call in due:
            await self._give_up(call, "polling is off")
        return len(due) >= cfg.batch

    async def _give_up(self, call: oq.DueCall, why: str = "", *, retryable: bool = True) -> None:
        because = f" ({why})" if why else ""
        outcome = outcomes.Outcome(
            call.reference,
            vocabulary.UNKNOWN,
            reason=f"no outcome {call.age_seconds:.0f}s after the start{because}; gave up",
            retryable=retryable,
        )
        await self._record(outcome, "give_up")
        self.stats.given_up += 1

    async def _poll(self, call: oq.DueCall) -> bool:
        """Poll one call; False when Aculab could not be asked (the call stays scheduled)."""
        late = call.age_seconds >= self.settings.poller.give_up_after
        async with self._slots:
            self.stats.polls += 1
            began = self._timer.start()
            try:
                body = await self.client.application_status(call.reference)
                self._timer.observe(began, "ok")
            except NotFoundError:
                self._timer.observe(began, "permanent")
                if late:
                    await self._give_up(call, "Aculab does not know the instance")
                    return True
                # Not (or not yet) known to Aculab: keep asking until the give-up age.
                log.warning("poll_unknown_instance", reference=call.reference, polls=call.polls)
                return True
            except AuthenticationError as exc:
                self._timer.observe(began, "permanent")
                self._refused = exc.reason
                return False
            except TransientError as exc:
                self._timer.observe(began, "transient")
                self.stats.failures += 1
                log.debug("poll_failed", reference=call.reference, error=exc.reason)
                return False
        finished = outcomes.from_status(call.reference, body)
        if finished is not None:
            await self._record(finished, "poll")
        elif late:
            # Still queued or running: it may yet ring, so it is not retried.
            phase = assumptions.instance_phase(body)
            await self._give_up(call, f"Aculab still shows it {phase}", retryable=False)
        return True

    async def _record(self, outcome: outcomes.Outcome, source: vocabulary.OutcomeSource) -> None:
        result = await self._critical.run(outcomes.record(self.pool, outcome, source, self.metrics))
        if result == "recorded":
            self.stats.recorded += 1

    async def reconcile_pushes(self) -> None:
        """Record final-page reports that arrived before their batch was acknowledged."""
        async with self.pool.acquire() as conn:
            matched = await oq.take_matched(conn, UNMATCHED_KEEP_SECONDS)
        for m in matched:
            await self._record(
                outcomes.Outcome(m.reference, m.cause, m.raw_cause, m.duration), "push"
            )

    async def _complete_if_due(self) -> None:
        """Look for finished campaigns after a round that ended calls here, else every
        COMPLETION_CHECK_SECONDS: the look probes every active campaign, which a
        thousand idle ones made most of an idle daemon's work at one look a second.
        Calls ended elsewhere (pushed final pages, another daemon's poller, contacts
        the dispatcher set aside) are caught by the periodic look."""
        ended = self.stats.recorded + self.stats.given_up
        now = time.monotonic()
        if ended == self._ended_at_check and now - self._checked_at < COMPLETION_CHECK_SECONDS:
            return
        self._ended_at_check, self._checked_at = ended, now
        await self.complete_campaigns()

    async def complete_campaigns(self) -> Sequence[int]:
        async with self.pool.acquire() as conn:
            done = await oq.complete_campaigns(conn)
        for campaign_id, name, totals in done:
            log.info("campaign_completed", campaign_id=campaign_id, campaign=name, totals=totals)
        return [d[0] for d in done]
