"""Pieces every long-running loop of the daemon shares.

- `DB_ERRORS`: the database failures a loop waits out and retries, as opposed to
  bugs. A lost connection, a server restarting, too many connections, a
  read-only server after a failover, a statement timeout, a serialization
  failure or a deadlock all pass if the loop tries again a little later.
- `Episode`: one log line when a run of failures starts and one when it ends,
  however many retries lie between (an outage of hours is two lines, not
  thousands).
- `after_database_error`: what a failure says about the pool's connections
  (after a failover they may point at a server that is now read-only).
- `sleep_until_woken`: the one way a loop waits: a notification, the stop
  request or the timeout, whichever comes first.
- `Shielded`: writes that must complete even when the daemon is being stopped
  (an outcome, an acknowledgement), kept so that a stop waits for them.
- `RequestTimer`: how long each request to Aculab took, by endpoint and result.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, TypeVar

import asyncpg

if TYPE_CHECKING:
    from campaign.metrics import Metrics

T = TypeVar("T")

DB_ERRORS: tuple[type[BaseException], ...] = (
    # The connection or the server went away (08xxx, and asyncpg's own view of it).
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    # asyncpg leaves a connection the server dropped while idle in a state that refuses
    # the next statement with InternalClientError (MagicStack/asyncpg#784, #1069); a
    # server that is not (or no longer) writable is refused at connect with it too.
    asyncpg.exceptions.InternalClientError,
    # 57xxx: shutting down, starting up, statement timeout (57014), cancelled.
    asyncpg.exceptions.OperatorInterventionError,
    # 53xxx: too many connections (53300), out of memory, disk full.
    asyncpg.exceptions.InsufficientResourcesError,
    # 25006: a read-only server, e.g. the old primary after a failover.
    asyncpg.exceptions.ReadOnlySQLTransactionError,
    # 40001, 40P01: serialization failure, deadlock; the transaction was rolled back.
    asyncpg.exceptions.TransactionRollbackError,
    OSError,
    TimeoutError,
)


def db_error_kind(exc: BaseException) -> str:
    """What kind of database failure: its SQLSTATE, else its class."""
    return str(getattr(exc, "sqlstate", None) or type(exc).__name__)


def describe_db_error(exc: BaseException) -> dict[str, Any]:
    """Log fields for a database failure: its class, SQLSTATE when it has one, one line."""
    fields: dict[str, Any] = {
        "error_class": type(exc).__name__,
        "error": " ".join(str(exc).split())[:300] or type(exc).__name__,
    }
    sqlstate = getattr(exc, "sqlstate", None)
    if sqlstate:
        fields["sqlstate"] = sqlstate
    return fields


async def after_database_error(pool: asyncpg.Pool, exc: BaseException) -> None:
    """Make the pool reconnect when its connections may point at the wrong server.

    A read-only answer on a pooled connection means the server it is connected to
    was demoted (a failover) or switched to read-only: new connections find the
    writable server (the daemon's pool asks for target_session_attrs=read-write).
    """
    if isinstance(exc, asyncpg.exceptions.ReadOnlySQLTransactionError | asyncpg.InterfaceError):
        await pool.expire_connections()


@dataclass
class Episode:
    """Logs the start and the end of a run of failures, once each.

    `failed` logs `started_event` on the first failure only; `recovered` logs
    `ended_event` with the duration, the number of failures and, when the failures
    named their kind (a SQLSTATE, say), how many of each: the trouble may change
    on the way (a connection killed, then too many connections).
    """

    log: Any
    started_event: str
    ended_event: str
    fields: dict[str, Any] = field(default_factory=dict)
    level: str = "error"
    """Of the line that starts an episode (the end is always at info)."""
    clock: Callable[[], float] = time.monotonic
    since: float | None = None
    failures: int = 0
    kinds: Counter[str] = field(default_factory=Counter)

    @property
    def ongoing(self) -> bool:
        return self.since is not None

    def failed(self, kind: str | None = None, **details: Any) -> bool:
        """Count a failure; True (and one log line) when it starts an episode."""
        self.failures += 1
        if kind is not None:
            self.kinds[kind] += 1
        if self.since is not None:
            return False
        self.since = self.clock()
        getattr(self.log, self.level)(self.started_event, **self.fields, **details)
        return True

    def recovered(self, **details: Any) -> float | None:
        """End the episode, if one is ongoing; returns how long it lasted."""
        if self.since is None:
            return None
        lasted = self.clock() - self.since
        if self.kinds:
            details = {"errors": dict(self.kinds), **details}
        self.log.info(
            self.ended_event,
            **self.fields,
            down_seconds=round(lasted, 1),
            failures=self.failures,
            **details,
        )
        self.since = None
        self.failures = 0
        self.kinds = Counter()
        return lasted


def database_episode(log: Any, task: str) -> Episode:
    """The database outage as one task sees it: `database_unavailable` ... `database_available`."""
    return Episode(log, "database_unavailable", "database_available", {"task": task})


# Doublings past this are beyond any cap in use; 2.0 ** 1024 would overflow, and an
# outage of weeks reaches that many failures.
MAX_DOUBLINGS = 30


def doubling(initial: float, times: int, cap: float) -> float:
    """`initial` doubled `times` times, at most `cap`; never overflows, however long."""
    return float(min(cap, initial * 2.0 ** min(max(0, times), MAX_DOUBLINGS)))


def backoff_delay(failures: int, *, initial: float = 0.5, cap: float = 30.0) -> float:
    """Doubling from `initial` up to `cap` (no jitter: loops of one daemon, not a herd)."""
    return doubling(initial, failures - 1, cap)


async def sleep_until_woken(stop: asyncio.Event, wake: asyncio.Event, seconds: float) -> None:
    """Sleep until a NOTIFY/wake, a stop request or the timeout, whichever comes first."""
    waiters = [asyncio.create_task(stop.wait()), asyncio.create_task(wake.wait())]
    try:
        await asyncio.wait(waiters, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waiters:
            w.cancel()
        await asyncio.gather(*waiters, return_exceptions=True)


class Shielded:
    """Writes that must complete even if whoever awaits them is cancelled.

    A stop (or an HTTP client hanging up) must not cut a transaction that records
    what Aculab did in half. Each write runs as its own task, kept here until it
    ends, so that shutdown can wait for it and its failure is not lost.
    """

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[Any]] = set()

    def __bool__(self) -> bool:
        return bool(self._tasks)

    def start(self, coro: Coroutine[Any, Any, T]) -> asyncio.Task[T]:
        """Begin the write without waiting for it."""
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def run(self, coro: Coroutine[Any, Any, T]) -> T:
        """The write's result; a cancellation of the caller leaves the write running."""
        return await asyncio.shield(self.start(coro))

    async def wait(self, seconds: float) -> None:
        """Let the writes under way finish, for at most `seconds`."""
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=seconds)


RequestResult = Literal["ok", "transient", "permanent", "unusable"]


@dataclass(frozen=True)
class RequestTimer:
    """campaign_aculab_request_seconds for one endpoint: `began = timer.start()`
    before the request, `timer.observe(began, result)` once it is answered."""

    metrics: Metrics | None
    endpoint: str
    clock: Callable[[], float] = time.monotonic

    def start(self) -> float:
        return self.clock()

    def observe(self, began: float, result: RequestResult) -> None:
        if self.metrics is not None:
            self.metrics.request_seconds.labels(endpoint=self.endpoint, result=result).observe(
                self.clock() - began
            )
