"""Final pages (§5): as each call finishes, its instance_info is POSTed to the
configured final_page_url by one supervised sender task, some lost on purpose
(callback_loss), every attempt recorded."""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import json
import logging
import random
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Final, Literal

import aiohttp

from campaign import assumptions
from campaign.simulator.calls import StartedCall
from campaign.simulator.config import SimulatorConfig

logger = logging.getLogger("campaign.simulator")

CallbackOutcome = Literal["sent", "lost", "failed"]

# A fake clock does not wake sleepers, so the sender looks again at least this often.
_CLOCK_POLL_SECONDS: Final = 0.05
_CALLBACK_TIMEOUT_SECONDS: Final = 10.0
_CALLBACK_CONCURRENCY: Final = 16


@dataclass(frozen=True)
class CallbackRecord:
    """One final-page request: sent (2xx answer), lost on purpose, or failed."""

    reference: str
    outcome: CallbackOutcome
    at: float
    status: int | None = None
    error: str | None = None


class FinalPages:
    """The final pages due, the task that sends them, and what became of each."""

    def __init__(
        self, config: SimulatorConfig, clock: Callable[[], float], calls: list[StartedCall]
    ) -> None:
        self._config = config
        self._clock = clock
        # Read at send time: a call purged meanwhile has been replaced in this list.
        self._calls = calls
        self.records: list[CallbackRecord] = []
        """Every final-page request sent, lost or failed, in order."""
        self._loss_rng = random.Random(f"{config.seed}:callback-loss")
        self._due: list[tuple[float, int, int]] = []
        self._order = itertools.count()
        self._changed = asyncio.Event()
        self._slots = asyncio.Semaphore(_CALLBACK_CONCURRENCY)
        self._tasks: set[asyncio.Task[None]] = set()
        self._sender: asyncio.Task[None] | None = None
        self._session: aiohttp.ClientSession | None = None

    def counts(self) -> Counter[str]:
        return Counter(record.outcome for record in self.records)

    def schedule(self, finishes: Sequence[tuple[float, int]]) -> None:
        """Calls just started: (finish_at, index in calls) of each."""
        if self._config.final_page_url is None:
            return
        for finish_at, index in finishes:
            heapq.heappush(self._due, (finish_at, next(self._order), index))
        self._changed.set()

    def start(self) -> None:
        """Start sending, if final pages are configured and not already sent."""
        if self._config.final_page_url is not None and self._sender is None:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=_CALLBACK_TIMEOUT_SECONDS)
            )
            self._sender = asyncio.create_task(self._send_callbacks(), name="final-page sender")

    async def stop(self) -> None:
        tasks = [t for t in (self._sender, *self._tasks) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._sender = None
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def _send_callbacks(self) -> None:
        """The one supervised task that requests final pages as calls finish."""
        while True:
            try:
                await self._next_callback()
            except asyncio.CancelledError:
                raise
            except Exception:
                # A bug here must not silence every later callback.
                logger.exception("final-page sender failed; carrying on")
                await asyncio.sleep(_CLOCK_POLL_SECONDS)

    async def _next_callback(self) -> None:
        due = self._due
        if not due:
            self._changed.clear()
            await self._changed.wait()
            return
        delay = due[0][0] - self._clock()
        if delay > 0:
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), min(delay, _CLOCK_POLL_SECONDS))
            return
        _, _, index = heapq.heappop(due)
        call = self._calls[index]
        if call.purged and not assumptions.PURGED_START_REQUESTS_FINAL_PAGE:
            return
        if self._loss_rng.random() < self._config.callback_loss:
            self.records.append(CallbackRecord(call.reference, "lost", self._clock()))
            return
        await self._slots.acquire()
        task = asyncio.create_task(self._post_final_page(call))
        self._tasks.add(task)
        task.add_done_callback(self._final_page_done)

    def _final_page_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if task.cancelled() or task.exception() is None:
            return
        # Expected failures are recorded by _post_final_page; this is a bug, kept
        # visible without stopping the other callbacks.
        logger.error("final-page request failed unexpectedly", exc_info=task.exception())

    async def _post_final_page(self, call: StartedCall) -> None:
        assert self._session is not None
        assert self._config.final_page_url is not None
        try:
            async with self._session.post(
                self._config.final_page_url,
                data=json.dumps(call.instance_info()),
                headers={"Content-Type": assumptions.FINAL_PAGE_CONTENT_TYPE},
            ) as response:
                await response.read()
                outcome: CallbackOutcome = "sent" if response.status < 300 else "failed"
                self.records.append(
                    CallbackRecord(call.reference, outcome, self._clock(), status=response.status)
                )
        except Exception as exc:
            # Whatever goes wrong with one final page is that page's failure.
            self.records.append(
                CallbackRecord(
                    call.reference, "failed", self._clock(), error=f"{type(exc).__name__}: {exc}"
                )
            )
            if not isinstance(exc, aiohttp.ClientError | TimeoutError | OSError):
                raise
        finally:
            self._slots.release()
