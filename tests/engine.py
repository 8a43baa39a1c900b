"""Helpers for tests that drive the real engine against the real simulator."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from contextlib import asynccontextmanager
from typing import Any

import asyncpg

from campaign.aculab import AculabClient
from campaign.daemon import run_daemon
from campaign.dispatch import Dispatcher
from campaign.poller import Poller
from campaign.settings import Settings, load_settings
from campaign.simulator import Simulator

SERVICE = "MyOutboundService"
CALLER_ID = "441908273801"


def engine_settings(sim: Simulator, **sections: dict[str, Any]) -> Settings:
    """Settings that point the engine at `sim`, with fast timeouts for tests."""
    base: dict[str, dict[str, Any]] = {
        "aculab": {
            "base_url": sim.base_url,
            "cloud_id": sim.config.cloud_id,
            "username": sim.config.username,
            "api_access_key": sim.config.api_access_key,
            "account_type": sim.config.account_type,
            "calls_per_second": 10_000,
            "service_passwords": dict(sim.config.service_passwords),
        },
        "http": {"connect_timeout": 1.0, "read_timeout": 2.0},
        "poller": {"first_poll_delay": 0.1, "interval": 0.1, "max_interval": 0.5},
        "dispatcher": {
            "poll_interval": 0.2,
            "retry_initial_delay": 0.05,
            "retry_max_delay": 0.2,
            "lease_seconds": 5,
        },
    }
    for name, values in sections.items():
        base.setdefault(name, {}).update(values)
    return load_settings(None, **base)


async def create_campaign(pool: asyncpg.Pool, name: str = "spring", **columns: Any) -> int:
    cols = {
        "name": name,
        "service_name": SERVICE,
        "caller_id": CALLER_ID,
        "calls_per_second": 10_000,
        # Most tests run the dispatcher without outcome tracking: no cap.
        "max_concurrent_calls": 100_000,
        **columns,
    }
    names = ", ".join(cols)
    params = ", ".join(f"${i}" for i in range(1, len(cols) + 1))
    campaign_id: int = await pool.fetchval(
        f"INSERT INTO campaigns ({names}) VALUES ({params}) RETURNING id", *cols.values()
    )
    if not {"window_start", "window_end"} & set(columns):
        # Tests run at any hour: unless a test is about windows, dial any time.
        await pool.execute(
            "UPDATE campaigns SET window_start = '00:00', window_end = '24:00' WHERE id = $1",
            campaign_id,
        )
    return campaign_id


async def add_contacts(
    pool: asyncpg.Pool, campaign_id: int, destinations: Iterable[str]
) -> list[int]:
    rows = await pool.fetch(
        "INSERT INTO contacts (campaign_id, destination) "
        "SELECT $1, d FROM unnest($2::text[]) WITH ORDINALITY AS t(d, n) ORDER BY n RETURNING id",
        campaign_id,
        list(destinations),
    )
    return [r["id"] for r in rows]


def uk_numbers(count: int, start: int = 0) -> list[str]:
    """Distinct valid UK geographic numbers (Milton Keynes range)."""
    return [f"+44 1908 {200000 + start + i:06d}" for i in range(count)]


async def states(pool: asyncpg.Pool, campaign_id: int) -> dict[str, int]:
    rows = await pool.fetch(
        "SELECT state, count(*) AS n FROM contacts WHERE campaign_id = $1 GROUP BY state",
        campaign_id,
    )
    return {r["state"]: r["n"] for r in rows}


@asynccontextmanager
async def dispatcher(
    pool: asyncpg.Pool, settings: Settings, owner: str = "test-daemon", seed: int = 0
) -> AsyncIterator[Dispatcher]:
    async with AculabClient(settings.aculab, settings.http) as client:
        yield Dispatcher(pool, client, settings, owner, rng=random.Random(seed))


@asynccontextmanager
async def running_dispatcher(
    pool: asyncpg.Pool, settings: Settings, owner: str = "test-daemon", seed: int = 0
) -> AsyncIterator[Dispatcher]:
    """A dispatcher running in the background while the block runs, then stopped
    (its in-flight sends drained) before the block is left."""
    async with dispatcher(pool, settings, owner, seed) as d:
        stop = asyncio.Event()
        running = asyncio.create_task(d.run(stop))
        try:
            yield d
        finally:
            stop.set()
            await running


@asynccontextmanager
async def running_daemon(settings: Settings) -> AsyncIterator[None]:
    """`campaign run` in this process while the block runs (dispatcher, poller, heartbeat,
    listener: what an operator runs), stopped when it is left; it must exit 0."""
    stop = asyncio.Event()
    daemon = asyncio.create_task(run_daemon(settings, stop))
    try:
        yield
    finally:
        stop.set()
        assert await daemon == 0


async def run_until_idle(
    pool: asyncpg.Pool,
    settings: Settings,
    owners: Sequence[str] = ("test-daemon",),
    timeout: float = 60,
) -> list[Dispatcher]:
    """Run one dispatcher per owner concurrently until nothing is left to send."""
    async with AculabClient(settings.aculab, settings.http) as client:
        ds = [
            Dispatcher(pool, client, settings, o, rng=random.Random(i))
            for i, o in enumerate(owners)
        ]
        stop = asyncio.Event()
        async with asyncio.timeout(timeout):
            await asyncio.gather(*(d.run(stop, until_idle=True) for d in ds))
        return ds


async def run_engine(
    pool: asyncpg.Pool,
    settings: Settings,
    until: Callable[[], Awaitable[bool]],
    timeout: float = 60,
    owners: Sequence[str] = ("test-daemon",),
) -> tuple[list[Dispatcher], Poller]:
    """Dispatchers and one poller together (as in the daemon) until `until()` holds."""
    async with AculabClient(settings.aculab, settings.http) as client:
        ds = [
            Dispatcher(pool, client, settings, o, rng=random.Random(i))
            for i, o in enumerate(owners)
        ]
        poller = Poller(pool, client, settings)
        stop = asyncio.Event()
        tasks = [asyncio.create_task(d.run(stop)) for d in ds]
        tasks.append(asyncio.create_task(poller.run(stop, round_seconds=0.05)))
        try:
            async with asyncio.timeout(timeout):
                while not await until():
                    await asyncio.sleep(0.05)
        finally:
            stop.set()
            await asyncio.gather(*tasks)
        return ds, poller


def campaign_state(pool: asyncpg.Pool, campaign_id: int) -> Callable[[], Awaitable[bool]]:
    """A condition: the campaign reached `completed`."""

    async def check() -> bool:
        state = await pool.fetchval("SELECT state FROM campaigns WHERE id = $1", campaign_id)
        return bool(state == "completed")

    return check
