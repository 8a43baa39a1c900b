"""The simulator's switches for outages and odd answers, proved over real HTTP.

Malformed and trickled answers, a delay before anything, outages that refuse
connections, and the record of every service_start request: each is driven here
with a plain aiohttp client on loopback, as in test_simulator.py.
"""

from __future__ import annotations

import argparse
import asyncio
import errno
import json
import signal
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import pytest

from campaign.simulator import (
    MALFORMED_SHAPES,
    Faults,
    Simulator,
    SimulatorConfig,
    StartRequest,
    configure_parser,
    faults_from_args,
)
from tests.fixtures_sim import MakeSimulator, ManualClock
from tests.helpers import REPO_ROOT
from tests.simulator_api import (
    SERVICE,
    Answer,
    application_status,
    assert_error,
    basic,
    call,
    number,
    service_auth,
    service_start,
)

CONCRETE_SHAPES = [shape for shape in MALFORMED_SHAPES if shape != "mixed"]


def references(sim: Simulator, since: int = 0) -> list[str]:
    return [c.reference for c in sim.calls[since:]]


async def eventually(condition: Callable[[], bool], seconds: float = 5.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


async def admin_post(http: aiohttp.ClientSession, sim: Simulator, path: str, body: Any) -> Answer:
    async with http.post(f"{sim.base_url}/_simulator/{path}", json=body) as response:
        return Answer(response.status, await response.json())


async def admin_get(http: aiohttp.ClientSession, sim: Simulator, path: str) -> Any:
    async with http.get(f"{sim.base_url}/_simulator/{path}") as response:
        assert response.status == 200
        return await response.json()


async def timed(awaitable: Awaitable[None]) -> float:
    began = time.monotonic()
    await awaitable
    return time.monotonic() - began


# --------------------------------------------------------------------- malformed


def expected_malformed(shape: str, true: list[str], earlier: list[str]) -> Any:
    return {
        "repeat": [true[0], true[0], true[2]],
        "short": true[:2],
        "not_strings": [None, int(true[1].rsplit(".", 1)[1]), true[2]],
        "not_a_list": {"application_instance_ids": true},
        "reused": earlier,
    }[shape]


@pytest.mark.parametrize("shape", CONCRETE_SHAPES)
async def test_malformed_answer_started_the_calls_but_cannot_be_matched_and_a_replay_is_true(
    simulator: Simulator, http: aiohttp.ClientSession, shape: str
) -> None:
    earlier = await service_start(http, simulator, [call(number(i)) for i in range(3)])
    objects = [call(number(i)) for i in range(10, 13)]
    simulator.faults.malformed_shape = shape  # type: ignore[assignment]
    simulator.faults.force("malformed")

    got = await service_start(http, simulator, objects, unique_id="m1")

    assert got.status == 200
    assert simulator.started_count() == 6
    true = references(simulator, since=3)
    if shape == "extra":
        assert got.body[:3] == true
        [made_up] = got.body[3:]
        assert isinstance(made_up, str)
        assert (await application_status(http, simulator, made_up)).status == 404
    else:
        assert got.body == expected_malformed(shape, true, earlier.body)
    assert got.body != true
    assert simulator.request_count("service_start", "malformed") == 1

    replay = await service_start(http, simulator, objects, unique_id="m1")
    assert replay.status == 200
    assert replay.body == true
    assert simulator.started_count() == 6


async def test_malformed_answer_to_a_single_call_cannot_be_matched_either(
    simulator: Simulator, http: aiohttp.ClientSession
) -> None:
    # The very first request has no earlier references to reuse: it gets made-up ones.
    for i, shape in enumerate(["reused", *CONCRETE_SHAPES]):
        simulator.faults.malformed_shape = shape  # type: ignore[assignment]
        simulator.faults.force("malformed")
        got = await service_start(http, simulator, call(number(i)), unique_id=f"one-{i}")
        assert got.status == 200
        assert simulator.started_count() == i + 1
        true = simulator.calls[-1].reference
        assert got.body != [true], shape
        replay = await service_start(http, simulator, call(number(i)), unique_id=f"one-{i}")
        assert replay.body == [true]


async def test_a_replay_can_be_answered_malformed_without_starting_anything(
    simulator: Simulator, http: aiohttp.ClientSession
) -> None:
    objects = [call(), call(number(3))]
    true = (await service_start(http, simulator, objects, unique_id="r")).body
    simulator.faults.malformed_shape = "short"
    simulator.faults.force("malformed")
    assert (await service_start(http, simulator, objects, unique_id="r")).body == true[:1]
    assert (await service_start(http, simulator, objects, unique_id="r")).body == true
    assert simulator.started_count() == 2


def malformed_kind(body: Any, true: list[str]) -> str:
    if not isinstance(body, list):
        return "not_a_list"
    if not all(isinstance(ref, str) for ref in body):
        return "not_strings"
    if len(body) != len(true):
        return "wrong_length"
    if len(set(body)) != len(body):
        return "repeat"
    return "reused" if not set(body) & set(true) else "unexpected"


async def test_mixed_malformed_shapes_vary_and_none_can_be_matched(
    simulator: Simulator, http: aiohttp.ClientSession
) -> None:
    await service_start(http, simulator, [call(number(i)) for i in range(2)])
    simulator.faults.malformed = 1.0
    simulator.faults.malformed_shape = "mixed"
    kinds: Counter[str] = Counter()
    for i in range(30):
        before = simulator.started_count()
        got = await service_start(http, simulator, [call(number(2 * i)), call(number(2 * i + 1))])
        assert got.status == 200
        kinds[malformed_kind(got.body, references(simulator, since=before))] += 1
    assert "unexpected" not in kinds
    assert len(kinds) >= 4, kinds
    assert simulator.request_count("service_start", "malformed") == 30


async def test_malformed_faults_are_set_through_the_admin_endpoint(
    simulator: Simulator, http: aiohttp.ClientSession
) -> None:
    got = await admin_post(http, simulator, "faults", {"malformed": 1, "malformed_shape": "short"})
    assert got.status == 200
    assert got.body["malformed"] == 1.0
    assert got.body["malformed_shape"] == "short"
    assert (await service_start(http, simulator, [call(), call(number(3))])).body == [
        simulator.calls[0].reference
    ]

    refused = await admin_post(http, simulator, "faults", {"malformed_shape": "triangle"})
    assert_error(refused, 400, "0002")
    assert "triangle" in refused.body["error"]["text"]
    assert simulator.faults.malformed_shape == "short"

    forced = {"reset": True, "force": [{"kind": "malformed"}], "malformed_shape": "not_a_list"}
    assert (await admin_post(http, simulator, "faults", forced)).body["forced"] == ["malformed"]
    assert simulator.faults.malformed == 0.0
    assert isinstance((await service_start(http, simulator, call())).body, dict)
    assert (await service_start(http, simulator, call())).body == [simulator.calls[-1].reference]


# --------------------------------------------------------------------- trickle


async def test_trickled_answer_outlasts_a_total_timeout_while_every_write_beats_a_read_timeout(
    simulator: Simulator, http: aiohttp.ClientSession
) -> None:
    simulator.faults.trickle_seconds = 0.1
    simulator.faults.force("trickle")
    read_timeout = 0.5
    began = time.monotonic()
    arrivals: list[float] = []
    body = b""
    async with http.post(
        simulator.base_url + "/service_start",
        data={"rest_calls": json.dumps(call())},
        headers=service_auth(simulator),
        timeout=aiohttp.ClientTimeout(sock_read=read_timeout),
    ) as response:
        assert response.status == 200
        assert simulator.started_count() == 1  # started before the first byte
        async for chunk in response.content.iter_any():
            arrivals.append(time.monotonic())
            body += chunk
    assert json.loads(body) == [simulator.calls[0].reference]
    gaps = [later - earlier for earlier, later in zip([began, *arrivals], arrivals, strict=False)]
    assert len(arrivals) >= 5
    assert max(gaps) < read_timeout
    assert arrivals[-1] - began > read_timeout  # so a total timeout of read_timeout fails
    assert simulator.request_count("service_start", "trickle") == 1


async def test_trickled_answer_lost_to_a_total_timeout_started_the_calls_and_a_replay_returns_them(
    simulator: Simulator, http: aiohttp.ClientSession
) -> None:
    simulator.faults.trickle_seconds = 0.1
    simulator.faults.force("trickle")
    with pytest.raises(TimeoutError):
        await service_start(http, simulator, call(), unique_id="t1", within=0.3)
    assert simulator.started_count() == 1
    replay = await service_start(http, simulator, call(), unique_id="t1")
    assert replay.body == [simulator.calls[0].reference]
    assert simulator.started_count() == 1


async def test_stopping_cuts_a_trickled_answer_short_instead_of_waiting_for_it(
    make_simulator: MakeSimulator, http: aiohttp.ClientSession
) -> None:
    sim = await make_simulator()
    sim.faults.trickle_seconds = 30.0
    sim.faults.force("trickle")
    request = asyncio.create_task(service_start(http, sim, call()))
    await eventually(lambda: sim.started_count() == 1)
    assert await timed(sim.stop()) < 0.9  # the server's own shutdown timeout is 1 s
    with pytest.raises(aiohttp.ClientPayloadError):
        await request


# --------------------------------------------------------------------- delay before


async def test_a_delayed_request_lets_a_concurrent_request_finish_first(
    simulator: Simulator, http: aiohttp.ClientSession
) -> None:
    simulator.faults.delay_before_seconds = 0.5
    first = asyncio.create_task(service_start(http, simulator, call(), unique_id="first"))
    await asyncio.sleep(0.1)
    simulator.faults.delay_before_seconds = 0.0
    second = await service_start(http, simulator, call(number(3)), unique_id="second")
    assert second.status == 200
    assert not first.done()
    assert (await first).status == 200

    assert [c.unique_id for c in simulator.calls] == ["second", "first"]
    [a] = simulator.requests_with("first")
    [b] = simulator.requests_with("second")
    assert a.at < b.at <= b.answered_at < a.answered_at
    assert a.answered_at - a.at >= 0.45
    assert list(simulator.start_requests) == [b, a]


async def test_the_delay_comes_before_authentication_so_a_password_changed_meanwhile_is_refused(
    simulator: Simulator, http: aiohttp.ClientSession
) -> None:
    simulator.faults.delay_before_seconds = 0.3
    request = asyncio.create_task(service_start(http, simulator, call(), unique_id="late"))
    await asyncio.sleep(0.1)
    simulator.config.service_passwords[SERVICE] = "changed-meanwhile"
    assert_error(await request, 401, "HTTP 401")
    assert simulator.started_count() == 0
    # Refused before its parameters were read, so the record knows no unique_id.
    [record] = simulator.start_requests
    assert (record.outcome, record.unique_id, record.calls) == ("unauthorized", None, None)


async def test_stopping_ends_a_delayed_request_at_once_without_starting_it(
    make_simulator: MakeSimulator, http: aiohttp.ClientSession
) -> None:
    sim = await make_simulator()
    sim.faults.delay_before_seconds = 30.0
    request = asyncio.create_task(service_start(http, sim, call(), unique_id="d"))
    await asyncio.sleep(0.2)
    assert await timed(sim.stop()) < 0.9
    with pytest.raises(aiohttp.ServerDisconnectedError):
        await request
    assert sim.started_count() == 0
    assert [r.outcome for r in sim.start_requests] == ["aborted"]


# --------------------------------------------------------------------- outages


def assert_refused(error: aiohttp.ClientConnectorError) -> None:
    # Refused, not reset or timed out: the request certainly started nothing.
    assert error.os_error.errno == errno.ECONNREFUSED, error


async def test_an_outage_refuses_connections_and_keeps_calls_and_unique_ids(
    simulator: Simulator, http: aiohttp.ClientSession
) -> None:
    base_url = simulator.base_url
    [ref] = (await service_start(http, simulator, call(), unique_id="o1")).body

    await simulator.go_down()
    assert not simulator.listening
    # The session's pooled connection was closed too, so this needs a new one.
    with pytest.raises(aiohttp.ClientConnectorError) as refused:
        await service_start(http, simulator, call(), unique_id="o1")
    assert_refused(refused.value)

    assert await simulator.come_back() == base_url
    with pytest.raises(RuntimeError, match="not down"):
        await simulator.come_back()
    assert (await service_start(http, simulator, call(), unique_id="o1")).body == [ref]
    assert simulator.started_count() == 1
    [outage] = simulator.outages
    assert outage.ended is not None
    assert outage.began <= outage.ended


async def test_going_down_cuts_open_connections_but_keeps_the_calls_they_started(
    simulator: Simulator, http: aiohttp.ClientSession
) -> None:
    simulator.faults.slow_seconds = 30.0
    simulator.faults.force("slow")
    request = asyncio.create_task(service_start(http, simulator, call(), unique_id="cut"))
    await eventually(lambda: simulator.started_count() == 1)
    assert await timed(simulator.go_down()) < 0.9
    with pytest.raises(aiohttp.ServerDisconnectedError):
        await request
    await simulator.come_back()
    replay = await service_start(http, simulator, call(), unique_id="cut")
    assert replay.body == [simulator.calls[0].reference]


async def test_an_outage_of_some_seconds_comes_back_by_itself(
    simulator: Simulator, http: aiohttp.ClientSession
) -> None:
    outage = asyncio.create_task(simulator.outage(0.3))
    await eventually(lambda: not simulator.listening)
    with pytest.raises(aiohttp.ClientConnectorError) as refused:
        await service_start(http, simulator, call())
    assert_refused(refused.value)
    await outage
    assert (await service_start(http, simulator, call())).status == 200


async def test_stopping_during_an_outage_of_some_seconds_keeps_the_simulator_stopped(
    make_simulator: MakeSimulator,
) -> None:
    sim = await make_simulator()
    outage = asyncio.create_task(sim.outage(0.2))
    await eventually(lambda: not sim.listening)
    await sim.stop()
    await outage
    assert not sim.listening
    [record] = sim.outages
    assert record.ended is None


async def test_admin_outage_answers_first_then_refuses_connections_then_comes_back(
    simulator: Simulator, http: aiohttp.ClientSession
) -> None:
    [ref] = (await service_start(http, simulator, call(), unique_id="a1")).body

    got = await admin_post(http, simulator, "outage", {"seconds": 0.5})
    assert got.status == 200
    assert got.body == {"seconds": 0.5, "outages": 1}
    # The listening socket is closed before the answer is written: no race here.
    with pytest.raises(aiohttp.ClientConnectorError) as refused:
        await service_start(http, simulator, call(), unique_id="a1")
    assert_refused(refused.value)

    await eventually(lambda: simulator.listening)
    assert (await service_start(http, simulator, call(), unique_id="a1")).body == [ref]
    record = await admin_get(http, simulator, "calls")
    [outage] = record["outages"]
    assert outage["ended"] - outage["began"] >= 0.45


async def test_simulator_command_goes_down_on_the_admin_outage_and_comes_back_on_its_port(
    http: aiohttp.ClientSession,
) -> None:
    # The way a benchmark uses it: the simulator in its own process.
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "campaign",
        "simulator",
        "--port",
        "0",
        cwd=REPO_ROOT,
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert process.stdout is not None
        base_url = (await asyncio.wait_for(process.stdout.readline(), timeout=20)).decode().strip()
        start = base_url + "/service_start"
        fields = {"rest_calls": json.dumps(call()), "unique_id": "p1"}
        auth = basic(f"1-2-0/bob@example.com/{SERVICE}", "sim-password")
        async with http.post(start, data=fields, headers=auth) as response:
            [ref] = await response.json()
        async with http.post(base_url + "/_simulator/outage", json={"seconds": 0.5}) as response:
            assert response.status == 200
        with pytest.raises(aiohttp.ClientConnectorError) as refused:
            await http.post(start, data=fields, headers=auth)
        assert_refused(refused.value)
        deadline = time.monotonic() + 10
        while True:
            try:
                async with http.post(start, data=fields, headers=auth) as response:
                    assert await response.json() == [ref]
                    break
            except aiohttp.ClientConnectorError:
                assert time.monotonic() < deadline, "the simulator did not come back"
                await asyncio.sleep(0.05)
        async with http.get(base_url + "/_simulator/requests?unique_id=p1") as response:
            record = await response.json()
        assert [r["outcome"] for r in record["requests"]] == ["ok", "replayed"]
        [outage] = record["outages"]
        assert outage["ended"] is not None
        process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(process.wait(), timeout=10) == 0
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


@pytest.mark.parametrize(
    "body",
    [{}, {"seconds": -1}, {"seconds": "5"}, {"seconds": True}, {"seconds": 1, "x": 2}, [1]],
)
async def test_admin_outage_refuses_a_body_that_is_not_seconds(
    simulator: Simulator, http: aiohttp.ClientSession, body: Any
) -> None:
    assert_error(await admin_post(http, simulator, "outage", body), 400, "0002")
    assert simulator.listening
    assert simulator.outages == []


async def test_stopping_during_an_admin_outage_does_not_wait_for_its_end(
    make_simulator: MakeSimulator, http: aiohttp.ClientSession
) -> None:
    sim = await make_simulator()
    assert (await admin_post(http, sim, "outage", {"seconds": 30})).status == 200
    await eventually(lambda: not sim.listening)
    assert await timed(sim.stop()) < 0.9
    assert not sim.listening


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
        (call(number(7)), "c", {"fault": "malformed"}),
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
        ("c", "malformed", 1, True),
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
    assert everything["outages"] == []


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


# --------------------------------------------------------------------- settings


def test_new_fault_settings_refuse_impossible_values_and_reset_ends_the_delay() -> None:
    faults = Faults()
    for name, value in [
        ("trickle_seconds", -1),
        ("delay_before_seconds", True),
        ("delay_before_seconds", float("nan")),
        ("malformed_shape", "triangle"),
        ("trickle", 2),
    ]:
        with pytest.raises(ValueError, match=name):
            setattr(faults, name, value)
    faults.update({"delay_before_seconds": 2, "trickle_seconds": 3, "malformed_shape": "extra"})
    faults.update({"reset": True})
    # The delay hits every request, so it is a fault to turn off; the rest tune kinds.
    assert faults.delay_before_seconds == 0.0
    assert (faults.trickle_seconds, faults.malformed_shape) == (3, "extra")


def test_simulator_command_has_options_for_the_new_faults() -> None:
    parser = argparse.ArgumentParser()
    configure_parser(parser)
    args = parser.parse_args(
        [
            "--malformed",
            "0.1",
            "--malformed-shape",
            "reused",
            "--trickle",
            "0.2",
            "--trickle-seconds",
            "2",
            "--delay-before-seconds",
            "0.5",
        ]
    )
    faults = faults_from_args(args)
    assert (faults.malformed, faults.malformed_shape) == (0.1, "reused")
    assert (faults.trickle, faults.trickle_seconds) == (0.2, 2.0)
    assert faults.delay_before_seconds == 0.5
    assert faults_from_args(parser.parse_args([])).as_json() == Faults().as_json()
    text = parser.format_help()
    for option in ("--malformed ", "--trickle ", "--trickle-seconds", "--delay-before-seconds"):
        assert option in text
    assert all(shape in text for shape in MALFORMED_SHAPES)
