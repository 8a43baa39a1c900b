"""Small helpers shared by test modules (never imported from another test module)."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, MutableMapping
from typing import Any

import asyncpg

from campaign.simulator import StartRequest

Check = Callable[[], bool] | Callable[[], Awaitable[bool]]


async def wait_until(check: Check, timeout: float, what: str = "the condition") -> None:
    """Poll `check` (sync or async) every 20 ms until it holds; fail after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.02)


def events(
    logs: Iterable[MutableMapping[str, Any]], name: str, **fields: Any
) -> list[MutableMapping[str, Any]]:
    """The captured log events called `name` whose fields include `fields`."""
    return [
        e for e in logs if e.get("event") == name and all(e.get(k) == v for k, v in fields.items())
    ]


def peak_overlap(intervals: Iterable[tuple[float, float]]) -> int:
    """The most half-open intervals [start, end) holding one moment, swept exactly."""
    edges: list[tuple[float, int]] = []
    for start, end in intervals:
        edges.append((start, 1))
        edges.append((end, -1))
    # At equal times an end comes first: back-to-back intervals do not overlap.
    edges.sort(key=lambda e: (e[0], e[1]))
    most = current = 0
    for _, step in edges:
        current += step
        most = max(most, current)
    return most


def max_overlap(requests: Iterable[StartRequest]) -> int:
    """The most requests the simulator was handling at one moment."""
    return peak_overlap((r.at, r.answered_at) for r in requests)


def worst_window(times: Iterable[float], seconds: float = 1.0) -> int:
    """The most of `times` inside any half-open window of `seconds`, slid exactly."""
    ordered = sorted(times)
    worst, lo = 0, 0
    for hi, t in enumerate(ordered):
        while ordered[lo] <= t - seconds:
            lo += 1
        worst = max(worst, hi - lo + 1)
    return worst


async def db_clock_offset(pool: asyncpg.Pool) -> float:
    """Seconds to add to a time read from PostgreSQL to put it on this host's clock
    (the simulator's): 0 give or take a millisecond with the embedded server, and
    measured, not assumed, for a server elsewhere (CAMPAIGN_TEST_DSN)."""
    best: tuple[float, float] | None = None
    for _ in range(5):
        before = time.time()
        db_now: float = await pool.fetchval("SELECT extract(epoch FROM clock_timestamp())::float8")
        after = time.time()
        if best is None or after - before < best[0]:
            best = (after - before, (before + after) / 2 - db_now)
    assert best is not None
    return best[1]


def counts(rows: Iterable[Mapping[str, Any]], key: str = "state", n: str = "n") -> dict[Any, int]:
    return {r[key]: r[n] for r in rows}
