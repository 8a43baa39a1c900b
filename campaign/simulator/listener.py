"""The HTTP server's life: listen, stop, and outages (go_down, come_back), which
refuse connections while everything else is kept."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from aiohttp import web

logger = logging.getLogger("campaign.simulator")

# Lists sent by GET travel in the query string; the 8 KiB default line limit would
# refuse them before any handler runs.
_MAX_LINE_BYTES: Final = 1024 * 1024
# See Listener.go_down.
_GO_DOWN_SETTLE_SECONDS: Final = 0.05


@dataclass(frozen=True)
class Outage:
    """A time the simulator refused connections (go_down to come_back)."""

    began: float
    ended: float | None = None
    """None while it is still down (or if it was stopped while down)."""


def _format_base_url(host: str, port: int) -> str:
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


class Listener:
    """Serves `app` on one host and port, and takes it down and back up."""

    def __init__(self, app: web.Application, clock: Callable[[], float]) -> None:
        self._app = app
        self._clock = clock
        self.outages: list[Outage] = []
        """Every go_down, in order."""
        # Set when the server starts closing (stop or go_down): answers that are
        # waiting (delay, slow, trickle) drop their connections instead. A new one
        # for each start, so a late waiter never sees the next start's.
        self.closing = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self._listen: tuple[str, int] | None = None
        """Host and port of the first start, where come_back listens again."""
        self.down = False
        """In an outage: gone down and neither back nor stopped since."""
        # An outage asked for by the admin endpoint, and the event that ends it
        # early (without coming back) when the simulator stops.
        self._outage_task: tuple[asyncio.Task[None], asyncio.Event] | None = None
        self.base_url: str | None = None

    @property
    def listening(self) -> bool:
        return self._runner is not None

    async def start(self, host: str, port: int) -> str:
        if self._runner is not None:
            raise RuntimeError("the simulator is already started")
        # A stopped simulator may start again (an outage that ends) and keeps its
        # calls and unique_ids, as Aculab would.
        self.closing = asyncio.Event()
        runner = web.AppRunner(
            self._app,
            handle_signals=False,
            shutdown_timeout=1.0,
            access_log=None,
            max_line_size=_MAX_LINE_BYTES,
            max_field_size=_MAX_LINE_BYTES,
        )
        await runner.setup()
        try:
            site = web.TCPSite(runner, host, port)
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        bound_host, bound_port = runner.addresses[0][:2]
        self.base_url = _format_base_url(str(bound_host), int(bound_port))
        if self._listen is None:
            self._listen = (host, int(bound_port))
        return self.base_url

    async def stop(self) -> None:
        if self._outage_task is not None:
            # Not cancelled: it might be half-way through closing or starting the
            # server. Told to stop, it finishes what it is doing and stays down.
            task, stopped = self._outage_task
            stopped.set()
            await asyncio.gather(task, return_exceptions=True)
            self._outage_task = None
        await self._close_server()
        self.down = False

    async def go_down(self) -> None:
        if self._runner is None:
            raise RuntimeError("the simulator is not listening")
        self._begin_outage()
        await self._close_server()
        # The connections are closed, but a client in this process sees that only
        # when its loop next reads them; until then it would reuse a pooled one and
        # fail mid-request instead of being refused. A moment lets it notice.
        await asyncio.sleep(_GO_DOWN_SETTLE_SECONDS)

    async def come_back(self) -> str:
        if not self.down or self._listen is None:
            raise RuntimeError("the simulator is not down")
        base_url = await self.start(*self._listen)
        self.down = False
        self.outages[-1] = dataclasses.replace(self.outages[-1], ended=self._clock())
        return base_url

    def outage_under_way(self) -> bool:
        return self._outage_task is not None and not self._outage_task[0].done()

    async def go_down_after_answer(
        self, request: web.Request, answer: Callable[[int], web.StreamResponse], seconds: float
    ) -> web.StreamResponse:
        """Stop listening, send answer(number of outages) on this request, then
        close the server and come back after `seconds` of real time (unless the
        simulator stops first)."""
        runner = self._runner
        assert runner is not None  # this very request came in through it
        self._begin_outage()
        # Refuse new connections before the answer leaves, so that a client holding
        # it can count on the next connection being refused.
        await _stop_listening(runner)
        response = answer(len(self.outages))
        await response.prepare(request)
        await response.write_eof()
        stopped = asyncio.Event()
        task = asyncio.create_task(self._outage_then_back(seconds, stopped), name="outage")
        task.add_done_callback(_outage_done)
        self._outage_task = (task, stopped)
        return response

    async def _outage_then_back(self, seconds: float, stopped: asyncio.Event) -> None:
        await self._close_server()
        try:
            await asyncio.wait_for(stopped.wait(), seconds)
        except TimeoutError:
            await self.come_back()

    def _begin_outage(self) -> None:
        self.down = True
        self.outages.append(Outage(self._clock()))

    async def _close_server(self) -> None:
        runner, self._runner = self._runner, None
        if runner is None:
            return
        # Refuse new connections first, then let waiting answers drop theirs; the
        # runner then closes idle connections and waits (at most its shutdown
        # timeout) for requests being answered.
        await _stop_listening(runner)
        self.closing.set()
        await runner.cleanup()


async def _stop_listening(runner: web.AppRunner) -> None:
    for site in list(runner.sites):
        await site.stop()


def _outage_done(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        # Nobody awaits it: a port taken meanwhile, say, must not go unseen.
        logger.error("simulator outage failed", exc_info=task.exception())
