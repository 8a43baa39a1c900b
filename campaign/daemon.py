"""`campaign run`: independent async tasks under one supervisor.

The TaskGroup holds the dispatcher, the lease heartbeat, the LISTEN connection
that wakes the dispatcher, and the progress reporter. The outcome tracker
(push endpoint and poller) joins the same group. One `stop` event, set by
SIGTERM/SIGINT, ends every loop; the dispatcher then drains what is in flight
within the grace period and hands its leases back.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import signal
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import asyncpg
import structlog
from aiohttp import web

from campaign import why
from campaign.aculab import AculabClient
from campaign.db import admin
from campaign.db import queries as q
from campaign.db.migrate import MigrationError, migrate, pending
from campaign.db.pool import DatabaseUnavailable, connect, database_dsn, open_pool
from campaign.dispatch import Dispatcher
from campaign.metrics import Metrics, new_metrics
from campaign.poller import Poller
from campaign.runtime import (
    DB_ERRORS,
    Episode,
    after_database_error,
    database_episode,
    db_error_kind,
    describe_db_error,
    doubling,
    sleep_until_woken,
)
from campaign.server import build_app, serve
from campaign.settings import ListenerSettings, Settings
from campaign.vocabulary import CONTACT_STATES

log = structlog.get_logger("campaign.daemon")

WAKE_CHANNEL = "campaign_wake"
# Pacing grants are read back over one budget window, which is 1/cps seconds for
# a campaign below one call per second: as long as the slowest allowed rate
# (0.001 calls/s, a window of 1,000 s) needs, plus a margin.
GRANT_HISTORY_SECONDS = 1.0 / 0.001 + 60.0


def daemon_id() -> str:
    """Names this process in batch leases: host, pid and a random suffix."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"


async def prepare_schema(pool: asyncpg.Pool, settings: Settings) -> str | None:
    """Apply pending migrations (auto_migrate) or say why the daemon cannot start."""
    async with pool.acquire() as conn:
        if settings.database.auto_migrate:
            try:
                applied = await migrate(conn)
            except MigrationError as exc:
                return str(exc)
            if applied:
                log.info("migrations_applied", migrations=applied)
            return None
        missing = await pending(conn)
    if missing:
        return f"database is not migrated ({len(missing)} pending): run `campaign migrate`"
    return None


OUTLOOK_EXAMINE = 1_000
"""Contacts per campaign judged for the start-up outlook: the first a claim will take."""
OUTLOOK_SECONDS = 10.0
"""The outlook never holds up dialing longer than this."""


async def log_outlook(pool: asyncpg.Pool, settings: Settings) -> None:
    """One `campaign_outlook` line per campaign this daemon may dial: dialing now, or
    what it waits for (the calling window until when, a pause, a retry, not_before)
    and how many contacts are due, by the same judgement as `campaign why`.

    Said before the first claim, so that a daemon that starts at night and dials
    nothing says why at once. A convenience: a failure is a warning, never a reason
    not to start.
    """
    names: list[str] = []
    done = 0
    try:
        async with asyncio.timeout(OUTLOOK_SECONDS):
            names = await admin.campaigns_to_dial(pool)
            for name in names:
                try:
                    report = await why.gather_why(
                        pool,
                        name,
                        settings.aculab.calls_per_second,
                        alive_within=settings.dispatcher.lease_seconds,
                        examine=OUTLOOK_EXAMINE,
                    )
                except admin.CampaignNotFound:
                    continue  # renamed or removed since the list was read
                finally:
                    done += 1
                seen = why.outlook(report)
                log.info(
                    "campaign_outlook",
                    campaign_id=report.campaign.id,
                    campaign=name,
                    state=report.campaign.state,
                    outlook=seen.doing,
                    due=seen.due,
                    until=None if seen.until is None else seen.until.isoformat(),
                    reason=seen.reason,
                    pending=seen.pending,
                    never_dialed=seen.never_dialed,
                    sample=seen.sample,
                )
    except TimeoutError:
        log.warning(
            "campaign_outlook_incomplete",
            reason=f"took longer than {OUTLOOK_SECONDS:g} s",
            campaigns_left=len(names) - done,
        )
    except Exception as exc:
        log.warning("campaign_outlook_failed", error=repr(exc))


# A daemon row not refreshed for this long belongs to a daemon that died without
# saying so (kill -9, a lost host): it is removed by the others.
FORGET_DAEMON_SECONDS = 3600.0


async def heartbeat(
    pool: asyncpg.Pool,
    owner: str,
    lease: float,
    stop: asyncio.Event,
    aculab: Callable[[], tuple[float, str | None] | None] = lambda: None,
) -> None:
    """Keep this daemon's batch leases alive; a daemon that stops beating loses them.

    It also keeps the daemon's row in `daemons` (alive, and whether Aculab is
    reachable from it, for `campaign why`), and clears out history: pacing
    grants older than any window, rows of daemons long dead.
    """
    never = asyncio.Event()
    trouble = database_episode(log, "heartbeat")
    while not stop.is_set():
        unreachable = aculab()
        try:
            async with pool.acquire() as conn:
                await q.heartbeat(conn, owner, lease)
                await q.daemon_seen(
                    conn,
                    owner,
                    unreachable[0] if unreachable else None,
                    unreachable[1] if unreachable else None,
                )
                # Pacing grants older than any window are history.
                await q.forget_old_grants(conn, GRANT_HISTORY_SECONDS)
                await q.forget_daemons(conn, FORGET_DAEMON_SECONDS)
            trouble.recovered()
        except DB_ERRORS as exc:
            trouble.failed(db_error_kind(exc), **describe_db_error(exc))
            await after_database_error(pool, exc)
        await sleep_until_woken(stop, never, lease / 3)


async def listen(
    dsn: str,
    on_wake: Callable[[str | None], None],
    stop: asyncio.Event,
    on_state: Callable[[bool], None] = lambda _up: None,
) -> None:
    """LISTEN on a dedicated connection; reconnect when it dies.

    Each notification's payload ('<table>:<campaign id>') goes to `on_wake`, None
    after a (re)connection: anything may have changed while nobody listened.
    `on_state` hears whether notifications are heard: while this connection is
    down the dispatcher falls back to reading every campaign each poll_interval.
    """
    never = asyncio.Event()
    failures = 0
    trouble = Episode(log, "listen_connection_lost", "listen_connection_restored", level="warning")
    while not stop.is_set():
        try:
            conn = await connect(dsn, command_timeout=10, writable=True)
        except DatabaseUnavailable as exc:
            failures += 1
            trouble.failed(error=str(exc))
            await sleep_until_woken(stop, never, doubling(1.0, failures, 30.0))
            continue
        failures = 0
        trouble.recovered()
        lost = asyncio.Event()
        conn.add_termination_listener(_setter(lost))
        try:
            await conn.add_listener(WAKE_CHANNEL, _notified(on_wake))
            on_state(True)
            on_wake(None)  # anything that changed while we were not listening
            while not stop.is_set() and not lost.is_set():
                await sleep_until_woken(stop, lost, 10.0)
                if not stop.is_set() and not conn.is_closed():
                    # asyncpg listeners die silently with a half-open socket: probe it.
                    await q.ping(conn)
        except DB_ERRORS as exc:
            trouble.failed(db_error_kind(exc), **describe_db_error(exc))
        finally:
            on_state(False)
            if not conn.is_closed():
                try:
                    async with asyncio.timeout(2):
                        await conn.close()
                except Exception:  # closing a dead connection: cut it
                    conn.terminate()


async def _listen_http(
    app: web.Application, listener: ListenerSettings, stop: asyncio.Event
) -> None:
    try:
        await serve(app, listener, stop)
    except OSError as exc:
        raise ListenerFailed(
            f"cannot listen on {listener.host}:{listener.port} ({exc.strerror or exc}): "
            "give each daemon on a host its own listener.port (0 picks a free one), "
            "or set listener.enabled = false"
        ) from exc


class ListenerFailed(Exception):
    """The HTTP listener could not start; the message says what to change."""


def _notified(
    on_wake: Callable[[str | None], None],
) -> Callable[[asyncpg.Connection | asyncpg.pool.PoolConnectionProxy, int, str, object], None]:
    return lambda _conn, _pid, _channel, payload: on_wake(str(payload))


def _setter(event: asyncio.Event) -> Callable[[object], None]:
    return lambda _conn: event.set()


@dataclass
class _Sample:
    at: float
    done: int
    states: dict[str, int]


@dataclass
class Progress:
    """A log line per active campaign that moved since its last line: counts, rate, ETA.

    The counts come from contact_counts (migration 0009), a few rows per campaign,
    so a report costs the same with ten contacts or ten million; campaigns where
    nothing changed (paused in effect, waiting for their window) write no line.
    """

    pool: asyncpg.Pool
    dispatcher: Dispatcher
    interval: float
    metrics: Metrics | None = None
    last: dict[int, _Sample] = field(default_factory=dict)

    async def run(self, stop: asyncio.Event) -> None:
        never = asyncio.Event()
        trouble = Episode(log, "progress_failed", "progress_recovered", level="warning")
        while not stop.is_set():
            await sleep_until_woken(stop, never, self.interval)
            if stop.is_set():
                return
            try:
                await self.report()
                trouble.recovered()
            except Exception as exc:
                # Progress lines are a convenience: never a reason to stop dialing.
                trouble.failed(error=repr(exc))

    async def report(self) -> None:
        async with self.pool.acquire() as conn:
            await q.fold_contact_counts(conn)
            campaigns = await q.active_campaign_names(conn)
            counts = await q.state_counts(conn, list(campaigns)) if campaigns else {}
        now = time.monotonic()
        # Campaigns no longer active are forgotten: back, they get a line again.
        self.last = {cid: s for cid, s in self.last.items() if cid in counts}
        for campaign_id, name in campaigns.items():
            by_state = counts.get(campaign_id, {})
            before = self.last.get(campaign_id)
            if before is not None and before.states == by_state:
                # Its gauges still hold these counts: setting ten labelled gauges for
                # each of a thousand idle campaigns was most of an idle daemon's CPU.
                continue
            if self.metrics is not None:
                for state in CONTACT_STATES:
                    self.metrics.contacts.labels(campaign=name, state=state).set(
                        by_state.get(state, 0)
                    )
            waiting = by_state.get("pending", 0)
            done = sum(n for s, n in by_state.items() if s not in ("pending", "dispatching"))
            self.last[campaign_id] = _Sample(now, done, by_state)
            rate = None
            if before is not None and now > before.at:
                rate = (done - before.done) / (now - before.at)
            eta = round(waiting / rate) if rate and rate > 0 else None
            log.info(
                "campaign_progress",
                campaign_id=campaign_id,
                campaign=name,
                submitted=self.dispatcher.counters.by_campaign.get(campaign_id, 0),
                states=by_state,
                rate_per_s=round(rate, 1) if rate is not None else None,
                eta_s=eta,
            )


def _install_signals(stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, _stopper(stop, sig))


def _stopper(stop: asyncio.Event, sig: signal.Signals) -> Callable[[], None]:
    def handler() -> None:
        if not stop.is_set():
            log.info("daemon_stopping", signal=sig.name)
        stop.set()

    return handler


async def run_daemon(settings: Settings, stop: asyncio.Event | None = None) -> int:
    """Run until SIGTERM/SIGINT (or `stop`); returns the process exit status."""
    stop = stop or asyncio.Event()
    _install_signals(stop)
    owner = daemon_id()
    log.info("daemon_starting", owner=owner, account_type=settings.aculab.account_type)
    try:
        return await _run(settings, stop, owner)
    except DatabaseUnavailable as exc:
        log.error("database_unavailable", reason=str(exc))
        return 1
    except ExceptionGroup as group:
        for failure in group.exceptions:
            if isinstance(failure, ListenerFailed):
                log.error("listener_failed", reason=str(failure))
            else:
                log.error("daemon_crashed", error=repr(failure), exc_info=failure)
        return 1


async def _run(settings: Settings, stop: asyncio.Event, owner: str) -> int:
    async with (
        database_dsn(settings.database) as dsn,
        open_pool(
            dsn,
            min_size=settings.database.pool_min_size,
            max_size=settings.database.pool_max_size,
            writable=True,
        ) as pool,
    ):
        problem = await prepare_schema(pool, settings)
        if problem is not None:
            log.error("daemon_cannot_start", reason=problem)
            return 1
        await log_outlook(pool, settings)
        metrics = new_metrics()
        async with AculabClient(settings.aculab, settings.http) as client:
            dispatcher = Dispatcher(pool, client, settings, owner, metrics=metrics)
            poller = Poller(pool, client, settings, metrics)
            progress = Progress(pool, dispatcher, settings.dispatcher.progress_interval, metrics)
            running: dict[str, asyncio.Task[None]] = {}

            def health() -> dict[str, bool]:
                return {name: not task.done() for name, task in running.items()}

            async with asyncio.TaskGroup() as tasks:
                running["dispatcher"] = tasks.create_task(dispatcher.run(stop))
                running["heartbeat"] = tasks.create_task(
                    heartbeat(
                        pool,
                        owner,
                        settings.dispatcher.lease_seconds,
                        stop,
                        dispatcher.aculab_unreachable,
                    )
                )
                running["listen"] = tasks.create_task(
                    listen(dsn, dispatcher.wake, stop, dispatcher.listening)
                )
                running["progress"] = tasks.create_task(progress.run(stop))
                # The outcome tracker: poll (with reconciliation and completion) and push.
                running["poller"] = tasks.create_task(poller.run(stop))
                if settings.poller.enabled and not poller.polling:
                    log.warning(
                        "polling_disabled",
                        reason="no aculab.api_access_key: outcomes are learned by push only;"
                        " a call with no final page after poller.give_up_after ends unknown",
                    )
                if settings.listener.enabled:
                    app = build_app(
                        pool, settings.listener, metrics, health, dispatcher.aculab_unreachable
                    )
                    running["listener"] = tasks.create_task(
                        _listen_http(app, settings.listener, stop)
                    )
        await _forget_self(pool, owner)
    log.info("daemon_stopped", owner=owner, submitted=dispatcher.counters.submitted)
    return 0


async def _forget_self(pool: asyncpg.Pool, owner: str) -> None:
    """A clean stop removes this daemon from `daemons` (a dead one ages out)."""
    try:
        async with asyncio.timeout(3), pool.acquire() as conn:
            await q.daemon_gone(conn, owner)
    except Exception as exc:  # shutting down: the row ages out anyway
        log.warning("daemon_row_not_removed", error=repr(exc))
