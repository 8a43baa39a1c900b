"""Small helpers shared by test modules (never imported from another test module)."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, MutableMapping
from typing import Any

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


def max_overlap(requests: Iterable[StartRequest]) -> int:
    """The most requests the simulator was handling at one moment."""
    edges: list[tuple[float, int]] = []
    for r in requests:
        edges.append((r.at, 1))
        edges.append((r.answered_at, -1))
    # At equal times an end comes first: back-to-back requests do not overlap.
    edges.sort(key=lambda e: (e[0], e[1]))
    most = current = 0
    for _, step in edges:
        current += step
        most = max(most, current)
    return most


def counts(rows: Iterable[Mapping[str, Any]], key: str = "state", n: str = "n") -> dict[Any, int]:
    return {r[key]: r[n] for r in rows}
