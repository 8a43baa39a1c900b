"""The simulator's record of service_start requests, proved over real HTTP.

Driven with a plain aiohttp client on loopback, as in test_simulator.py.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from campaign.simulator import (
    Simulator,
    SimulatorConfig,
    StartRequest,
)
from tests.fixtures_sim import MakeSimulator, ManualClock
from tests.test_simulator import (
    SERVICE,
    basic,
    call,
    number,
    service_start,
)


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(headers={"Accept": "application/json"}) as session:
        yield session


async def admin_get(http: aiohttp.ClientSession, sim: Simulator, path: str) -> Any:
    async with http.get(f"{sim.base_url}/_simulator/{path}") as response:
        assert response.status == 200
        return await response.json()


# --------------------------------------------------------------------- request record


async def test_every_service_start_request_is_recorded_with_its_arrival_time_and_outcome(
    make_simulator: MakeSimulator, http: aiohttp.ClientSession
) -> None:
    clock = ManualClock()
    sim = await make_simulator(clock=clock)
    t0 = clock.now
    wrong = basic(f"{sim.config.cloud_id}/{sim.config.username}/{SERVICE}", "wrong")
    sends: list[tuple[Any, str | None, dict[str, Any]]] = [
        ([call(), call(number(3))], "a", {}),  # ok
        ([call(), call(number(3))], "a", {}),  # replayed
        (call(), None, {"headers": wrong}),  # unauthorized
        ([call("01908273800")], "x", {}),  # invalid
        (call(number(5)), "a", {}),  # conflict
        (call(), "b", {"fault": "error_before"}),
        (call(), "b", {}),  # ok
        ("not json", None, {}),  # invalid
    ]
    for i, (rest_calls, unique_id, options) in enumerate(sends):
        clock.now = t0 + i
        if "fault" in options:
            sim.faults.force(options.pop("fault"))
        await service_start(http, sim, rest_calls, unique_id=unique_id, **options)

    expected = [
        ("a", "ok", 2, True),
        ("a", "replayed", 2, False),
        (None, "unauthorized", None, False),
        ("x", "invalid", 1, False),
        ("a", "conflict", 1, False),
        ("b", "error_before", 1, False),
        ("b", "ok", 1, True),
        (None, "invalid", None, False),
    ]
    assert list(sim.start_requests) == [
        StartRequest(t0 + i, t0 + i, unique_id, outcome, calls, started)
        for i, (unique_id, outcome, calls, started) in enumerate(expected)
    ]
    # The same labels as the request counter.
    counted = {oc: n for (ep, oc), n in sim.requests.items() if ep == "service_start"}
    assert Counter(r.outcome for r in sim.start_requests) == counted

    assert sim.first_start("a") == t0
    assert sim.first_start("b") == t0 + 6
    assert sim.first_start("x") is None
    assert sim.first_start("never") is None
    assert [(r.at, r.outcome) for r in sim.requests_with("a")] == [
        (t0, "ok"),
        (t0 + 1, "replayed"),
        (t0 + 4, "conflict"),
    ]
    assert sim.requests_with("never") == []

    one = await admin_get(http, sim, "requests?unique_id=b")
    assert one["first_start"] == t0 + 6
    assert [(r["at"], r["outcome"], r["started"]) for r in one["requests"]] == [
        (t0 + 5, "error_before", False),
        (t0 + 6, "ok", True),
    ]
    everything = await admin_get(http, sim, "requests")
    assert [r["outcome"] for r in everything["requests"]] == [e[1] for e in expected]


async def test_the_request_record_keeps_only_the_latest_requests(
    make_simulator: MakeSimulator, http: aiohttp.ClientSession
) -> None:
    sim = await make_simulator(SimulatorConfig(request_record_limit=3))
    for i, unique_id in enumerate(["same", "u1", "u2", "same", "u4"]):
        await service_start(http, sim, call(number(i)), unique_id=unique_id)
    assert [r.unique_id for r in sim.start_requests] == ["u2", "same", "u4"]
    assert sim.requests_with("u1") == []
    [kept] = sim.requests_with("same")
    assert kept.outcome == "conflict"  # the later one, with other parameters
    # When a unique_id first started calls outlives the records of its requests.
    assert sim.first_start("u1") is not None
    assert sim.first_start("same") == sim.calls[0].submitted_at


def test_request_record_limit_must_be_positive() -> None:
    with pytest.raises(ValueError, match="request_record_limit"):
        SimulatorConfig(request_record_limit=0)
