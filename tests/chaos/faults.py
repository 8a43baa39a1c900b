"""Faults the simulator does not inject itself: application_status failures.

The simulator's `Faults` cover service_start only. In a poll-only run the polls
are most of the requests, so the chaos suites fail a share of them too, with a
middleware added to the simulator's app before it starts.
"""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from collections.abc import Mapping
from typing import Any

from aiohttp import web

from campaign.simulator import Simulator

__all__ = ["add_poll_faults"]


def add_poll_faults(
    sim: Simulator, shares: Mapping[str, float], rng: random.Random, slow_seconds: float = 1.5
) -> Counter[str]:
    """Fail a share of application_status requests; returns the tally, kept up to date.

    `shares`: "error" (HTTP 500), "drop" (connection closed without an answer) and
    "slow" (answered after `slow_seconds`). Installed inside the simulator's error
    middleware, so a 500 has Aculab's documented error shape. Errors and drops never
    reach the simulator's handler (nor `sim.requests`); slow ones do, late.
    """
    if sim.app.frozen:
        raise RuntimeError("add the poll faults before the simulator starts")
    injected: Counter[str] = Counter()
    error = shares.get("error", 0.0)
    drop = shares.get("drop", 0.0)
    slow = shares.get("slow", 0.0)

    @web.middleware
    async def poll_faults(request: web.Request, handler: Any) -> web.StreamResponse:
        if request.path != "/application_status":
            return await handler(request)
        roll = rng.random()
        if roll < error:
            injected["error"] += 1
            raise web.HTTPInternalServerError(reason="internal error")
        if roll < error + drop:
            injected["drop"] += 1
            if request.transport is not None:
                request.transport.close()
            return web.Response(status=200)  # goes nowhere: the transport is closed
        if roll < error + drop + slow:
            injected["slow"] += 1
            await asyncio.sleep(slow_seconds)
        return await handler(request)

    sim.app.middlewares.append(poll_faults)
    return injected
