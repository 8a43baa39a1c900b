"""Fixtures for the Aculab simulator: real servers on loopback, stopped at teardown."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

import aiohttp
import pytest

from campaign.simulator import Simulator, SimulatorConfig

__all__ = ["MakeSimulator", "ManualClock", "http", "make_simulator", "simulator"]


@dataclass
class ManualClock:
    """A clock that moves only when told, so timing tests need not sleep."""

    now: float = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError("the simulator's clock must not go backwards")
        self.now += seconds


MakeSimulator = Callable[..., Awaitable[Simulator]]
"""make_simulator(config=None, *, clock=None) -> a started Simulator."""


@pytest.fixture
async def simulator() -> AsyncIterator[Simulator]:
    """A started simulator with the default configuration."""
    async with Simulator() as sim:
        yield sim


@pytest.fixture
async def make_simulator() -> AsyncIterator[MakeSimulator]:
    """Start simulators with a given configuration (and clock); all stop at teardown."""
    started: list[Simulator] = []

    async def make(
        config: SimulatorConfig | None = None, *, clock: Callable[[], float] | None = None
    ) -> Simulator:
        sim = Simulator(config) if clock is None else Simulator(config, clock=clock)
        await sim.start()
        started.append(sim)
        return sim

    yield make
    for sim in reversed(started):
        await sim.stop()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    """A plain client session that asks for JSON, as Aculab's API answers (errors too);
    for tests/simulator_api.py's requests."""
    async with aiohttp.ClientSession(headers={"Accept": "application/json"}) as session:
        yield session
