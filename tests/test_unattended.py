"""Long and odd failures heal without an operator (real PostgreSQL, the simulator over HTTP).

Long failures are made short by shrinking the settings: an idempotency window of
two seconds, a give-up age of one second. Each test names the promise it proves;
the ones reproducing a reported failure say which.
"""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
import pytest
from structlog.testing import capture_logs

from campaign.aculab import AculabClient
from campaign.breaker import Breaker
from campaign.db import outcomes as oq
from campaign.db import queries as q
from campaign.db.admin import change_state
from campaign.dispatch import Dispatcher
from campaign.metrics import new_metrics
from campaign.poller import Poller
from campaign.runtime import backoff_delay, doubling
from campaign.settings import Settings
from campaign.simulator import Simulator, SimulatorConfig
from tests.engine import (
    SERVICE,
    add_contacts,
    create_campaign,
    dispatcher,
    engine_settings,
    run_engine,
    run_until_idle,
    running_dispatcher,
    states,
    uk_numbers,
)
from tests.helpers import Cli, events, logging_restored, max_overlap, point_at, wait_until

MakeSimulator = Callable[..., Awaitable[Simulator]]

# A window of two seconds; a request takes at most 0.2 + 0.3 s, so a batch is never
# sent after it is 1.5 s old.
SHORT_WINDOW = {
    "dispatcher": {
        "idempotency_window_seconds": 2.0,
        "retry_initial_delay": 0.05,
        "retry_max_delay": 0.3,
        "breaker_threshold": 3,
    },
    "http": {"connect_timeout": 0.2, "read_timeout": 0.3},
}


def fast_sim(**kw: Any) -> SimulatorConfig:
    return SimulatorConfig(calls_per_second=100_000, **kw)


async def everyone_called(pool: asyncpg.Pool, campaign_id: int) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        waiting = await pool.fetchval(
            "SELECT count(*) FROM contacts WHERE campaign_id = $1 AND attempts = 0", campaign_id
        )
        return bool(waiting == 0)

    return check


async def batch_states(pool: asyncpg.Pool) -> dict[str, int]:
    rows = await pool.fetch("SELECT state, count(*) AS n FROM batches GROUP BY state")
    return {r["state"]: r["n"] for r in rows}


async def park_in_doubt(pool: asyncpg.Pool, sim: Simulator, settings: Settings) -> None:
    """Send the campaign's one batch, lose the answer after its calls started, then
    keep Aculab away until the batch is too old to send: it is parked in doubt."""
    calls = await pool.fetchval("SELECT count(*) FROM contacts")
    sim.faults.force("drop_after")
    async with running_dispatcher(pool, settings) as d:
        await wait_until(lambda: sim.started_count() == calls, 5, "the calls to start")
        await sim.go_down()
        await wait_until(lambda: d.counters.parked == 1, 10, "the batch to be parked")


async def back_after(sim: Simulator, seconds: float) -> None:
    await asyncio.sleep(seconds)
    await sim.come_back()


def assert_each_called_once(sim: Simulator, numbers: list[str]) -> None:
    counts = {n: sim.calls_to(n) for n in numbers}
    assert {n: c for n, c in counts.items() if c != 1} == {}


# --- 1. what may have reached Aculab ------------------------------------------------------


async def test_an_outage_longer_than_the_window_parks_nothing_and_everyone_is_called_once_after(
    db_pool: asyncpg.Pool, make_simulator: MakeSimulator
) -> None:
    # Reported: Aculab refusing connections for longer than the idempotency window
    # parked every batch and called nobody, ever. Refused connections never reached
    # Aculab, so their batches are released and their contacts called afterwards.
    sim = await make_simulator(fast_sim())
    settings = engine_settings(sim, **SHORT_WINDOW)
    cid = await create_campaign(db_pool, batch_size=10)
    numbers = uk_numbers(60)
    await add_contacts(db_pool, cid, numbers)
    await sim.go_down()
    outage = asyncio.create_task(back_after(sim, 5.0))  # two and a half windows

    with capture_logs() as logs:
        await run_engine(db_pool, settings, until=await everyone_called(db_pool, cid), timeout=40)

    assert outage.done()
    found = await batch_states(db_pool)
    assert "parked" not in found
    assert found.get("released", 0) >= 1
    assert_each_called_once(sim, numbers)
    attempts = await db_pool.fetch("SELECT DISTINCT attempts FROM contacts")
    assert [r["attempts"] for r in attempts] == [1]
    assert len(events(logs, "aculab_unreachable")) == 1
    [back] = events(logs, "aculab_reachable")
    assert back["down_seconds"] > 1
    released = events(logs, "batch_released")
    assert released and all("Nothing reached Aculab" in e["reason"] for e in released)


async def test_a_batch_in_doubt_is_parked_when_the_outage_outlasts_its_window(
    db_pool: asyncpg.Pool, make_simulator: MakeSimulator
) -> None:
    # Its first send started the calls and lost the answer: only its unique_id can
    # say so, and past the window nobody may re-send it blindly.
    sim = await make_simulator(fast_sim())
    settings = engine_settings(sim, **SHORT_WINDOW)
    cid = await create_campaign(db_pool, batch_size=5)
    await add_contacts(db_pool, cid, uk_numbers(5))

    await park_in_doubt(db_pool, sim, settings)

    batch = await db_pool.fetchrow("SELECT state, in_doubt, last_error FROM batches")
    assert (batch["state"], batch["in_doubt"]) == ("parked", True)
    assert "may have started the calls" in batch["last_error"]
    assert "campaign resolve" in batch["last_error"]
    assert await states(db_pool, cid) == {"dispatching": 5}


async def test_a_throttle_longer_than_the_window_releases_the_batch_instead_of_parking_it(
    db_pool: asyncpg.Pool, make_simulator: MakeSimulator
) -> None:
    # Reported: a 429 whose Retry-After went past the window parked a batch that
    # started nothing.
    sim = await make_simulator(fast_sim())
    settings = engine_settings(sim, **SHORT_WINDOW)
    cid = await create_campaign(db_pool, batch_size=4)
    numbers = uk_numbers(4)
    await add_contacts(db_pool, cid, numbers)
    sim.faults.retry_after_seconds = 30
    sim.faults.force("throttle")

    await run_until_idle(db_pool, settings, timeout=20)

    found = await batch_states(db_pool)
    assert found == {"released": 1, "submitted": 1}
    assert_each_called_once(sim, numbers)
    released = await db_pool.fetchrow(
        "SELECT unique_id, last_error FROM batches WHERE state = 'released'"
    )
    assert "Nothing reached Aculab" in released["last_error"]
    assert sim.first_start(released["unique_id"]) is None


async def test_taking_over_a_batch_whose_owner_died_mid_send_counts_it_in_doubt(
    db_pool: asyncpg.Pool, simulator: Simulator
) -> None:
    settings = engine_settings(simulator)
    cid = await create_campaign(db_pool)
    await add_contacts(db_pool, cid, uk_numbers(3))
    async with dispatcher(db_pool, settings, owner="dead") as d:
        async with db_pool.acquire() as conn:
            [campaign] = await q.active_campaigns(conn)
        [batch], _ = await d.claim(campaign)
    assert not batch.in_doubt
    # The claimer died before recording what became of its send.
    await db_pool.execute("UPDATE batches SET lease_until = now() - interval '1 second'")
    async with db_pool.acquire() as conn:
        [taken] = await q.take_due_batches(conn, "heir", 30, 10, [], 3600)
    assert taken.previous_owner == "dead" and taken.in_doubt
    # A clean stop in the middle of a send hands the batch back in doubt too.
    await db_pool.execute("UPDATE batches SET in_doubt = false, sending = true")
    async with db_pool.acquire() as conn:
        assert await q.release_leases(conn, "heir", [taken.id]) == 1
    assert await db_pool.fetchval("SELECT in_doubt AND NOT sending FROM batches")


# --- 2. the circuit breaker ------------------------------------------------------------------


async def test_while_aculab_is_unreachable_nothing_new_is_claimed_and_one_probe_goes_at_a_time(
    db_pool: asyncpg.Pool, make_simulator: MakeSimulator
) -> None:
    sim = await make_simulator(fast_sim())
    settings = engine_settings(
        sim,
        dispatcher={
            "retry_initial_delay": 0.05,
            "retry_max_delay": 0.4,
            "breaker_threshold": 3,
            "idempotency_window_seconds": 120,
        },
        http={"connect_timeout": 0.5, "read_timeout": 1.0},
    )
    cid = await create_campaign(db_pool, batch_size=5, calls_per_second=200)
    numbers = uk_numbers(2000)
    await add_contacts(db_pool, cid, numbers)
    # Every request takes a tenth of a second, so concurrent ones overlap at Aculab.
    sim.faults.delay_before_seconds = 0.1
    metrics = new_metrics()
    stop = asyncio.Event()
    async with AculabClient(settings.aculab, settings.http) as client:
        d = Dispatcher(db_pool, client, settings, "solo", rng=random.Random(1), metrics=metrics)
        with capture_logs() as logs:
            running = asyncio.create_task(d.run(stop))
            await wait_until(lambda: d.counters.batches_submitted >= 8, 10, "a fan-out")
            sim.faults.error_before = 1.0  # Aculab answers nothing but 500s
            await wait_until(lambda: d.breaker.is_open, 10, "the breaker to open")
            # A round that began before it opened may still send what it had taken.
            settled = sim.clock() + 0.3
            assert metrics.aculab_reachable._value.get() == 0
            await asyncio.sleep(2.0)
            sim.faults.error_before = 0.0
            await wait_until(lambda: not d.breaker.is_open, 10, "the breaker to close")
            closed = sim.clock()
            await wait_until(
                lambda: max_overlap(r for r in sim.start_requests if r.at > closed) >= 3,
                10,
                "a fan-out after the outage",
            )
            stop.set()
            await running
    requests = sorted(sim.start_requests, key=lambda r: r.at)
    recovered = min(
        r.answered_at for r in requests if r.outcome != "error_before" and r.at > settled
    )
    during = [r for r in requests if settled < r.at < recovered]
    assert len(during) >= 2, "it kept probing"
    assert max_overlap(during) == 1
    claimed_before = {r.unique_id for r in requests if r.at <= settled}
    assert {r.unique_id for r in during} <= claimed_before, "nothing new was claimed"
    assert len(events(logs, "aculab_unreachable")) == 1
    [back] = events(logs, "aculab_reachable")
    assert back["down_seconds"] >= 2.0
    assert metrics.aculab_reachable._value.get() == 1
    assert metrics.aculab_outages._value.get() == 1
    assert all(sim.calls_to(n) <= 1 for n in numbers)
    assert "parked" not in await batch_states(db_pool)


async def test_a_wrong_service_password_costs_one_request_before_the_campaign_pauses(
    db_pool: asyncpg.Pool, make_simulator: MakeSimulator
) -> None:
    # Reported: max_in_flight_batches requests (4 at once) before the pause.
    sim = await make_simulator(fast_sim())
    settings = engine_settings(sim, aculab={"service_passwords": {SERVICE: "not-the-one"}})
    cid = await create_campaign(db_pool, batch_size=5)
    await add_contacts(db_pool, cid, uk_numbers(40))

    await run_until_idle(db_pool, settings, timeout=20)

    assert sim.request_count("service_start") == 1
    assert await db_pool.fetchval("SELECT state FROM campaigns") == "paused"
    assert await states(db_pool, cid) == {"pending": 40}


async def test_requests_fan_out_only_after_the_credentials_were_accepted_once(
    db_pool: asyncpg.Pool, make_simulator: MakeSimulator
) -> None:
    sim = await make_simulator(fast_sim())
    sim.faults.delay_before_seconds = 0.2
    settings = engine_settings(sim)
    cid = await create_campaign(db_pool, batch_size=3)
    numbers = uk_numbers(30)
    await add_contacts(db_pool, cid, numbers)

    await run_until_idle(db_pool, settings, timeout=20)

    requests = sorted(sim.start_requests, key=lambda r: r.at)
    first = requests[0]
    assert all(r.at >= first.answered_at for r in requests[1:]), "the first went alone"
    assert max_overlap(requests) >= 2, "then they fanned out"
    assert_each_called_once(sim, numbers)


# --- 3. never give up without asking --------------------------------------------------------


def poll_settings(sim: Simulator, give_up_after: float) -> Settings:
    return engine_settings(
        sim,
        poller={
            "give_up_after": give_up_after,
            "first_poll_delay": 0.0,
            "interval": 0.05,
            "max_interval": 0.1,
        },
    )


async def poll_until_settled(pool: asyncpg.Pool, poller: Poller, timeout: float = 20) -> None:
    async def settled() -> bool:
        await poller.round()
        left = await pool.fetchval("SELECT count(*) FROM calls WHERE finished_at IS NULL")
        return bool(left == 0)

    await wait_until(settled, timeout, "every call to have its outcome")


async def test_calls_older_than_the_give_up_age_after_downtime_are_asked_about_not_given_up(
    db_pool: asyncpg.Pool, simulator: Simulator
) -> None:
    # Reported: daemons down longer than give_up_after recorded every call `unknown`
    # without asking, and called all the contacts who had answered again.
    settings = poll_settings(simulator, give_up_after=1.0)
    cid = await create_campaign(db_pool)
    numbers = uk_numbers(20)
    await add_contacts(db_pool, cid, numbers)
    await run_until_idle(db_pool, settings)
    await asyncio.sleep(1.5)  # down for longer than give_up_after

    async with AculabClient(settings.aculab, settings.http) as client:
        await poll_until_settled(db_pool, Poller(db_pool, client, settings))

    calls = await db_pool.fetch("SELECT reference, call_cause, outcome_source FROM calls")
    assert {c["outcome_source"] for c in calls} == {"poll"}
    assert {c["reference"]: c["call_cause"] for c in calls} == {
        c["reference"]: simulator.call(c["reference"]).call_cause for c in calls
    }
    assert simulator.request_count("application_status") >= 20
    assert_each_called_once(simulator, numbers)


async def test_a_call_still_running_past_the_give_up_age_is_unknown_only_after_asking(
    db_pool: asyncpg.Pool, make_simulator: MakeSimulator
) -> None:
    sim = await make_simulator(fast_sim(answered_seconds=(600, 600)))
    settings = poll_settings(sim, give_up_after=0.3)
    cid = await create_campaign(db_pool)
    await add_contacts(db_pool, cid, uk_numbers(3))
    await run_until_idle(db_pool, settings)
    await asyncio.sleep(0.4)

    async with AculabClient(settings.aculab, settings.http) as client:
        await poll_until_settled(db_pool, Poller(db_pool, client, settings))

    calls = await db_pool.fetch("SELECT call_cause, outcome_source, outcome_reason FROM calls")
    assert {(c["call_cause"], c["outcome_source"]) for c in calls} == {("unknown", "give_up")}
    assert all("still shows it running" in c["outcome_reason"] for c in calls)
    assert sim.request_count("application_status") >= 3
    # It may still ring: never retried, whatever retry_delays says about `unknown`.
    contacts = await db_pool.fetch("SELECT state, last_error FROM contacts")
    assert {c["state"] for c in contacts} == {"failed"}
    assert all("may still be live" in c["last_error"] for c in contacts)


async def test_a_call_aculab_does_not_know_past_the_give_up_age_is_unknown(
    db_pool: asyncpg.Pool, make_simulator: MakeSimulator
) -> None:
    sim = await make_simulator(fast_sim())
    settings = poll_settings(sim, give_up_after=0.3)
    cid = await create_campaign(db_pool)
    await add_contacts(db_pool, cid, uk_numbers(2))
    await run_until_idle(db_pool, settings)
    # Another account's worth of memory: this one never heard of these references.
    forgetful = await make_simulator(fast_sim())
    asked = poll_settings(forgetful, give_up_after=0.3)
    await asyncio.sleep(0.4)

    async with AculabClient(asked.aculab, asked.http) as client:
        await poll_until_settled(db_pool, Poller(db_pool, client, asked))

    reasons = await db_pool.fetch("SELECT outcome_reason FROM calls")
    assert all("does not know the instance" in r["outcome_reason"] for r in reasons)
    assert forgetful.request_count("application_status") >= 2
    # Nothing says that call is alive: the retry policy decides (unknown: 900 s).
    contacts = await db_pool.fetch("SELECT state, last_result FROM contacts")
    assert {(c["state"], c["last_result"]) for c in contacts} == {("pending", "unknown")}


async def test_while_aculab_is_unreachable_no_call_is_given_up_however_old(
    db_pool: asyncpg.Pool, make_simulator: MakeSimulator
) -> None:
    sim = await make_simulator(fast_sim())
    settings = poll_settings(sim, give_up_after=0.3)
    cid = await create_campaign(db_pool)
    await add_contacts(db_pool, cid, uk_numbers(4))
    await run_until_idle(db_pool, settings)
    await sim.go_down()
    await asyncio.sleep(0.4)

    async with AculabClient(settings.aculab, settings.http) as client:
        poller = Poller(db_pool, client, settings)
        for _ in range(10):
            await poller.round()
            await asyncio.sleep(0.05)
        assert await db_pool.fetchval("SELECT count(*) FROM calls WHERE finished_at IS NULL") == 4
        await sim.come_back()
        await poll_until_settled(db_pool, poller)

    calls = await db_pool.fetch("SELECT reference, call_cause, outcome_source FROM calls")
    assert {c["outcome_source"] for c in calls} == {"poll"}
    assert all(sim.call(c["reference"]).call_cause == c["call_cause"] for c in calls)


# --- 4. no hot loops ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "shape", ["repeat", "short", "extra", "not_strings", "not_a_list", "reused"]
)
async def test_an_answer_that_cannot_be_matched_parks_the_batch_at_once_with_the_answer(
    db_pool: asyncpg.Pool, make_simulator: MakeSimulator, shape: str
) -> None:
    # Reported: a 200 repeating one reference made the acknowledgement raise and the
    # batch be taken again at once: 1,053 requests in 20 s for two batches.
    sim = await make_simulator(fast_sim())
    settings = engine_settings(sim)
    cid = await create_campaign(db_pool, batch_size=3)
    await add_contacts(db_pool, cid, uk_numbers(3))
    await run_until_idle(db_pool, settings)  # references for "reused" to reuse
    await add_contacts(db_pool, cid, uk_numbers(3, start=3))
    sim.faults.malformed_shape = shape
    sim.faults.force("malformed")

    with capture_logs() as logs:
        await run_until_idle(db_pool, settings, timeout=20)

    batch = await db_pool.fetchrow(
        "SELECT id, unique_id, state, in_doubt, raw_answer, last_error FROM batches "
        "ORDER BY id DESC LIMIT 1"
    )
    assert (batch["state"], batch["in_doubt"]) == ("parked", True)
    assert batch["raw_answer"] and json.loads(batch["raw_answer"]) is not None
    assert "campaign resolve" in batch["last_error"]
    assert len(sim.requests_with(batch["unique_id"])) == 1, "one request, then hands off"
    assert sim.started_count() == 6  # they did start
    parked = await db_pool.fetch(
        "SELECT state, last_error FROM contacts WHERE batch_id = $1", batch["id"]
    )
    assert [r["state"] for r in parked] == ["dispatching"] * 3
    assert all(r["last_error"] == batch["last_error"] for r in parked)
    assert len(events(logs, "batch_parked")) == 1


async def test_a_failing_acknowledgement_waits_a_growing_backoff_before_the_batch_is_retried(
    db_pool: asyncpg.Pool, make_simulator: MakeSimulator
) -> None:
    sim = await make_simulator(fast_sim())
    settings = engine_settings(
        sim, dispatcher={"retry_initial_delay": 0.05, "retry_max_delay": 1.0}
    )
    cid = await create_campaign(db_pool, batch_size=3)
    numbers = uk_numbers(3)
    await add_contacts(db_pool, cid, numbers)
    # The acknowledgement fails in a way nobody planned for.
    await db_pool.execute(
        "CREATE FUNCTION refuse_calls() RETURNS trigger LANGUAGE plpgsql AS "
        "$$ BEGIN RAISE EXCEPTION 'storage trouble'; END $$"
    )
    await db_pool.execute(
        "CREATE TRIGGER refuse_calls BEFORE INSERT ON calls "
        "FOR EACH ROW EXECUTE FUNCTION refuse_calls()"
    )
    stop = asyncio.Event()
    async with dispatcher(db_pool, settings) as d:
        with capture_logs() as logs:
            running = asyncio.create_task(d.run(stop))
            await asyncio.sleep(3.0)
            stop.set()
            await running
    uid = await db_pool.fetchval("SELECT unique_id FROM batches")
    sent = len(sim.requests_with(uid))
    # 0.05-0.1, 0.1-0.2, 0.2-0.4, 0.4-0.8, then 0.5-1 s between tries: a handful in 3 s.
    assert 2 <= sent <= 8
    crashed = events(logs, "batch_send_crashed")
    assert len(crashed) == sent
    assert [e["retry_in"] for e in crashed] == sorted(e["retry_in"] for e in crashed) or all(
        e["retry_in"] >= 0.05 for e in crashed
    )
    await db_pool.execute("DROP TRIGGER refuse_calls ON calls")

    await run_until_idle(db_pool, settings)

    assert await states(db_pool, cid) == {"dialing": 3}
    assert_each_called_once(sim, numbers)


# --- 8. the smaller holes -------------------------------------------------------------------


async def test_a_cancel_during_a_first_send_refused_for_credentials_cancels_its_contacts(
    db_pool: asyncpg.Pool, make_simulator: MakeSimulator
) -> None:
    # Reported: the contacts went back to `pending` in a cancelled campaign.
    sim = await make_simulator(fast_sim())
    sim.faults.delay_before_seconds = 1.0
    settings = engine_settings(sim, aculab={"service_passwords": {SERVICE: "not-the-one"}})
    cid = await create_campaign(db_pool, batch_size=5)
    await add_contacts(db_pool, cid, uk_numbers(5))
    async with running_dispatcher(db_pool, settings) as d:

        async def on_the_wire() -> bool:
            return await states(db_pool, cid) == {"dispatching": 5}

        await wait_until(on_the_wire, 5, "the first send")
        await change_state(db_pool, "spring", "cancel", None)
        await wait_until(lambda: sim.request_count("service_start") == 1, 5, "the 401")
        await wait_until(lambda: not d._inflight, 5, "the refusal to be recorded")
    assert await states(db_pool, cid) == {"cancelled": 5}
    assert await db_pool.fetchval("SELECT state FROM campaigns") == "cancelled"


async def test_a_campaign_is_not_completed_while_contacts_are_being_loaded_into_it(
    db_pool: asyncpg.Pool,
) -> None:
    # Reported: completed while a concurrent `campaign load` committed a pending contact.
    cid = await create_campaign(db_pool)
    await add_contacts(db_pool, cid, uk_numbers(2))
    await db_pool.execute("UPDATE contacts SET state = 'completed'")
    async with db_pool.acquire() as loader, db_pool.acquire() as poller:
        loading = loader.transaction()
        await loading.start()
        await loader.execute(
            "INSERT INTO contacts (campaign_id, destination) VALUES ($1, '+441908299999')", cid
        )
        assert await oq.complete_campaigns(poller) == []
        await loading.commit()
        assert await oq.complete_campaigns(poller) == []
    assert await db_pool.fetchval("SELECT state FROM campaigns") == "active"
    assert await states(db_pool, cid) == {"completed": 2, "pending": 1}
    # With nothing loading and nothing open, it completes as before.
    await db_pool.execute("UPDATE contacts SET state = 'completed'")
    async with db_pool.acquire() as conn:
        [(_, name, totals)] = await oq.complete_campaigns(conn)
    assert (name, totals) == ("spring", {"completed": 3})


async def test_an_answer_that_trickles_in_is_cut_off_and_the_batch_re_sent_under_its_id(
    db_pool: asyncpg.Pool, make_simulator: MakeSimulator
) -> None:
    sim = await make_simulator(fast_sim())
    sim.faults.trickle_seconds = 0.3
    sim.faults.force("trickle")
    settings = engine_settings(sim, http={"connect_timeout": 0.3, "read_timeout": 0.5})
    cid = await create_campaign(db_pool, batch_size=4)
    numbers = uk_numbers(4)
    await add_contacts(db_pool, cid, numbers)

    await run_until_idle(db_pool, settings, timeout=20)

    uid = await db_pool.fetchval("SELECT unique_id FROM batches")
    assert [r.outcome for r in sim.requests_with(uid)] == ["trickle", "replayed"]
    assert await states(db_pool, cid) == {"dialing": 4}
    assert_each_called_once(sim, numbers)


# --- 9. a parked batch resolved without SQL ---------------------------------------------


async def test_a_parked_batch_resent_by_the_operator_gets_its_original_references(
    db_pool: asyncpg.Pool,
    db_dsn: str,
    make_simulator: MakeSimulator,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    sim = await make_simulator(fast_sim())
    settings = engine_settings(sim, **SHORT_WINDOW)
    cid = await create_campaign(db_pool, batch_size=5)
    numbers = uk_numbers(5)
    await add_contacts(db_pool, cid, numbers)
    await park_in_doubt(db_pool, sim, settings)
    await sim.come_back()
    batch_id = await db_pool.fetchval("SELECT id FROM batches WHERE state = 'parked'")
    point_at(monkeypatch, db_dsn)
    with logging_restored():
        status, out, _ = await Cli(db_dsn, capsys).run("resolve", str(batch_id), "--resend")
    assert status == 0, out

    await run_until_idle(db_pool, settings, timeout=20)

    assert await states(db_pool, cid) == {"dialing": 5}
    assert_each_called_once(sim, numbers)
    uid = await db_pool.fetchval("SELECT unique_id FROM batches WHERE id = $1", batch_id)
    assert [r.outcome for r in sim.requests_with(uid)][-1] == "replayed"
    refs = await db_pool.fetch("SELECT reference FROM contacts")
    assert {r["reference"] for r in refs} == {c.reference for c in sim.calls}


# --- what a review found -----------------------------------------------------------------


def test_backoffs_do_not_overflow_however_long_the_trouble_lasts() -> None:
    # 2.0 ** 1024 overflows; an outage of a few days reaches that many doublings.
    breaker = Breaker(threshold=1, initial_delay=1.0, max_delay=60.0)
    breaker.failure("down")
    for _ in range(5000):
        breaker.probe_sent()
        breaker.failure("still down")
    assert breaker.probe_in() <= 60.0
    assert doubling(0.5, 10**6, 30.0) == 30.0
    assert backoff_delay(10**6) == 30.0


async def test_a_call_polled_for_weeks_does_not_stop_the_poller(
    db_pool: asyncpg.Pool, simulator: Simulator
) -> None:
    settings = engine_settings(simulator)
    cid = await create_campaign(db_pool)
    await add_contacts(db_pool, cid, uk_numbers(1))
    await run_until_idle(db_pool, settings)
    await db_pool.execute("UPDATE calls SET polls = 5000, next_poll_at = now()")
    async with db_pool.acquire() as conn:
        [due] = await oq.take_due_calls(conn, 10, 30.0, 600.0)
    assert due.polls == 5001


async def test_an_in_doubt_batch_refused_on_its_resend_is_parked_not_split(
    db_pool: asyncpg.Pool, make_simulator: MakeSimulator
) -> None:
    # Its first send started the calls; before the re-send Aculab's list limit
    # shrank. Split under new ids, every contact would be called twice.
    sim = await make_simulator(fast_sim())
    settings = engine_settings(sim, dispatcher={"retry_initial_delay": 1.0})
    cid = await create_campaign(db_pool, batch_size=4)
    numbers = uk_numbers(4)
    await add_contacts(db_pool, cid, numbers)
    sim.faults.force("drop_after")
    async with running_dispatcher(db_pool, settings) as d:
        await wait_until(lambda: sim.request_count("service_start") == 1, 5, "the first send")
        sim.config.max_list_length = 2
        await wait_until(lambda: d.counters.parked == 1, 10, "the refused re-send")
    batches = await db_pool.fetch("SELECT state, in_doubt, last_error FROM batches")
    assert [(b["state"], b["in_doubt"]) for b in batches] == [("parked", True)]
    assert "not split" in batches[0]["last_error"]
    assert_each_called_once(sim, numbers)


async def test_three_unusable_answers_in_a_row_pause_the_services_campaigns(
    db_pool: asyncpg.Pool, make_simulator: MakeSimulator
) -> None:
    # Something answering 200 with the wrong body would otherwise park every batch.
    sim = await make_simulator(fast_sim())
    settings = engine_settings(sim, dispatcher={"max_in_flight_batches": 1})
    cid = await create_campaign(db_pool, batch_size=2)
    await add_contacts(db_pool, cid, uk_numbers(20))
    sim.faults.malformed_shape = "not_a_list"
    sim.faults.malformed = 1.0

    await run_until_idle(db_pool, settings, timeout=20)

    assert sim.request_count("service_start") == 3
    assert await batch_states(db_pool) == {"parked": 3}
    state, reason = await db_pool.fetchrow("SELECT state, state_reason FROM campaigns")
    assert state == "paused" and "cannot be matched" in reason
    assert await states(db_pool, cid) == {"dispatching": 6, "pending": 14}


async def test_a_last_try_inside_the_window_beats_a_retry_after_that_reaches_past_it(
    db_pool: asyncpg.Pool, make_simulator: MakeSimulator
) -> None:
    # A 500 with Retry-After: 3600 on a fresh batch whose calls started: parking it
    # at once would leave a person a doubt one more send under its id settles.
    sim = await make_simulator(fast_sim())
    settings = engine_settings(sim, **SHORT_WINDOW)
    cid = await create_campaign(db_pool, batch_size=3)
    numbers = uk_numbers(3)
    await add_contacts(db_pool, cid, numbers)
    sim.faults.retry_after_seconds = 3600
    sim.faults.force("error_after")

    await run_until_idle(db_pool, settings, timeout=20)

    uid = await db_pool.fetchval("SELECT unique_id FROM batches")
    assert [r.outcome for r in sim.requests_with(uid)] == ["error_after", "replayed"]
    assert await batch_states(db_pool) == {"submitted": 1}
    assert_each_called_once(sim, numbers)


async def test_a_pause_during_a_resends_slow_checks_holds_it_back(
    db_pool: asyncpg.Pool, make_simulator: MakeSimulator
) -> None:
    # Reading Aculab's queue can take a request's time; the pause that lands in
    # between must still stop the re-send.
    sim = await make_simulator(fast_sim())
    settings = engine_settings(sim, dispatcher={"queue_check_interval": 0.001})
    cid = await create_campaign(db_pool, batch_size=3)
    numbers = uk_numbers(3)
    await add_contacts(db_pool, cid, numbers)
    sim.faults.force("throttle")
    async with running_dispatcher(db_pool, settings):
        await wait_until(lambda: sim.request_count("service_start") == 1, 5, "the 429")
        sim.faults.queue_delay_seconds = 1.5
        lease = await db_pool.fetchval("SELECT lease_until FROM batches")

        async def taken_again() -> bool:
            return bool(await db_pool.fetchval("SELECT lease_until FROM batches") != lease)

        # Taken for its re-send (a take renews the lease): it now waits on the queue.
        await wait_until(taken_again, 10, "the re-send to be taken")
        await change_state(db_pool, "spring", "pause", None)
        await asyncio.sleep(2.5)
        assert sim.request_count("service_start") == 1
        held = await db_pool.fetchrow("SELECT state, owner, last_error FROM batches")
        assert (held["state"], held["owner"]) == ("pending", None)
        assert "paused" in held["last_error"]
        sim.faults.queue_delay_seconds = 0
        await change_state(db_pool, "spring", "resume", None)
        await wait_until(lambda: sim.started_count() == 3, 10, "the re-send after the resume")
    assert_each_called_once(sim, numbers)


async def test_while_aculab_is_unreachable_a_batch_due_later_does_not_hold_the_probes_up(
    db_pool: asyncpg.Pool, make_simulator: MakeSimulator
) -> None:
    sim = await make_simulator(fast_sim())
    settings = engine_settings(sim, **SHORT_WINDOW)
    held_campaign = await create_campaign(db_pool, name="held", batch_size=2)
    await add_contacts(db_pool, held_campaign, uk_numbers(2, start=100))
    async with dispatcher(db_pool, settings, owner="before") as d:
        async with db_pool.acquire() as conn:
            [campaign] = await q.active_campaigns(conn)
        [batch], _ = await d.claim(campaign)
    # A re-send held for an hour (its calling window, say), owned by nobody.
    await db_pool.execute(
        "UPDATE batches SET owner = NULL, sending = false, "
        "next_send_at = now() + interval '1 hour', created_at = now() + interval '1 hour' "
        "WHERE id = $1",
        batch.id,
    )
    cid = await create_campaign(db_pool, batch_size=5)
    numbers = uk_numbers(10)
    await add_contacts(db_pool, cid, numbers)
    await sim.go_down()
    comes_back = asyncio.create_task(back_after(sim, 3.0))

    with capture_logs() as logs:
        await run_engine(db_pool, settings, until=await everyone_called(db_pool, cid), timeout=20)

    await comes_back
    assert len(events(logs, "aculab_reachable")) == 1
    assert_each_called_once(sim, numbers)


async def test_an_idle_daemon_notices_when_aculab_is_back(
    db_pool: asyncpg.Pool, make_simulator: MakeSimulator
) -> None:
    # Nothing left to send: a harmless request probes, so that `campaign why` and
    # /healthz stop saying Aculab is unreachable.
    sim = await make_simulator(fast_sim())
    settings = engine_settings(sim, dispatcher={"breaker_threshold": 1, "retry_max_delay": 0.2})
    cid = await create_campaign(db_pool, batch_size=5)
    await add_contacts(db_pool, cid, uk_numbers(5))
    await sim.go_down()
    async with running_dispatcher(db_pool, settings) as d:
        await wait_until(lambda: d.breaker.is_open, 5, "the breaker to open")
        await change_state(db_pool, "spring", "cancel", None)
        await db_pool.execute("UPDATE batches SET state = 'rejected'")  # nothing to send
        await sim.come_back()
        await wait_until(lambda: not d.breaker.is_open, 5, "the breaker to close")
    assert sim.request_count("outbound_queues") >= 1


async def test_a_late_answer_acknowledges_a_batch_parked_meanwhile(
    db_pool: asyncpg.Pool, simulator: Simulator
) -> None:
    # The daemon that sent it lost its lease; the one that took over parked it.
    # The answer that arrives after all settles the doubt it was parked for.
    settings = engine_settings(simulator)
    cid = await create_campaign(db_pool)
    await add_contacts(db_pool, cid, uk_numbers(2))
    async with dispatcher(db_pool, settings) as d:
        async with db_pool.acquire() as conn:
            [campaign] = await q.active_campaigns(conn)
        [batch], _ = await d.claim(campaign)
        async with db_pool.acquire() as conn:
            assert await q.park(conn, batch.id, d.owner, "in doubt, too old")
            acknowledged = await q.acknowledge(conn, batch.id, ["r-1", "r-2"], 60.0)
    assert acknowledged == batch.contact_ids
    assert await states(db_pool, cid) == {"dialing": 2}
    assert await db_pool.fetchval("SELECT state FROM batches") == "submitted"


async def test_a_batch_stored_by_an_older_daemon_counts_in_doubt_once_taken(
    db_pool: asyncpg.Pool, simulator: Simulator
) -> None:
    # An older daemon, still running during a rolling upgrade, knows nothing of
    # `sending`: what it stored may have gone out.
    cid = await create_campaign(db_pool)
    [contact] = await add_contacts(db_pool, cid, uk_numbers(1))
    await db_pool.execute(
        "INSERT INTO batches (campaign_id, service_name, unique_id, rest_calls, contact_ids, "
        "owner, lease_until) VALUES ($1, $2, 'old-1', '[]', $3, 'old-daemon', now())",
        cid,
        SERVICE,
        [contact],
    )
    async with db_pool.acquire() as conn:
        [taken] = await q.take_due_batches(conn, "new-daemon", 30, 10, [], 3600)
    assert taken.in_doubt


async def test_a_stop_hands_back_a_batch_it_took_but_never_sent_without_doubt(
    db_pool: asyncpg.Pool, simulator: Simulator
) -> None:
    settings = engine_settings(simulator)
    cid = await create_campaign(db_pool, batch_size=2)
    await add_contacts(db_pool, cid, uk_numbers(4))
    async with dispatcher(db_pool, settings) as d:
        async with db_pool.acquire() as conn:
            [campaign] = await q.active_campaigns(conn)
        [first, second], _ = await d.claim(campaign, batches=2)
    async with db_pool.acquire() as conn:
        # The first one's request had begun when the stop came; the second's had not.
        assert await q.release_leases(conn, d.owner, [first.id]) == 2
    doubt = dict(await db_pool.fetch("SELECT id, in_doubt FROM batches"))
    assert doubt == {first.id: True, second.id: False}
