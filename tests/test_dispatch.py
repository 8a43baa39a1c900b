"""The dispatch protocol, step by step, against a real PostgreSQL and the simulator."""

from __future__ import annotations

import json

import asyncpg
import pytest

from campaign.aculab import AculabClient
from campaign.db import queries as q
from campaign.dispatch import unique_id_for
from campaign.simulator import Simulator, SimulatorConfig
from tests.engine import (
    CALLER_ID,
    SERVICE,
    add_contacts,
    create_campaign,
    dispatcher,
    engine_settings,
    run_engine,
    run_until_idle,
    states,
    uk_numbers,
)
from tests.helpers import db_clock_offset, worst_window


async def references_by_contact(pool: asyncpg.Pool, campaign_id: int) -> dict[int, str]:
    rows = await pool.fetch(
        "SELECT id, reference FROM contacts WHERE campaign_id = $1 AND reference IS NOT NULL",
        campaign_id,
    )
    return {r["id"]: r["reference"] for r in rows}


def assert_each_started_once(sim: Simulator, destinations: list[str]) -> None:
    counts = {d: sim.calls_to(d) for d in destinations}
    assert all(n == 1 for n in counts.values()), {d: n for d, n in counts.items() if n != 1}
    assert sim.started_count() == len(destinations)


async def test_pending_contacts_become_dialing_with_references_in_request_order(
    db_pool: asyncpg.Pool, simulator: Simulator
) -> None:
    settings = engine_settings(simulator)
    cid = await create_campaign(db_pool, batch_size=7)
    numbers = uk_numbers(20)
    ids = await add_contacts(db_pool, cid, numbers)

    await run_until_idle(db_pool, settings)

    assert await states(db_pool, cid) == {"dialing": 20}
    refs = await references_by_contact(db_pool, cid)
    for contact_id, number in zip(ids, numbers, strict=True):
        call = simulator.call(refs[contact_id])
        assert call.to == "".join(ch for ch in number if ch.isdigit())
        assert call.from_ == CALLER_ID
    assert_each_started_once(simulator, numbers)
    calls = await db_pool.fetch("SELECT contact_id, attempt, reference FROM calls")
    assert len(calls) == 20 and {c["attempt"] for c in calls} == {1}
    batches = await db_pool.fetch("SELECT state, contact_ids FROM batches ORDER BY id")
    assert [len(b["contact_ids"]) for b in batches] == [7, 7, 6]
    assert {b["state"] for b in batches} == {"submitted"}


async def test_batch_payload_is_stored_before_sending_and_sent_byte_for_byte(
    db_pool: asyncpg.Pool, simulator: Simulator
) -> None:
    settings = engine_settings(simulator)
    cid = await create_campaign(db_pool)
    await add_contacts(db_pool, cid, uk_numbers(3))
    await db_pool.execute(
        "UPDATE contacts SET token = 'tok-' || id, outbound_parameters = 'p',"
        ' extra_sip_headers = \'[{"name": "X-Account", "value": "bob/1"}]\''
    )
    async with dispatcher(db_pool, settings) as d:
        campaign = (await _active(db_pool))[0]
        [batch], _ = await d.claim(campaign)
        assert batch is not None
        stored = await db_pool.fetchrow(
            "SELECT rest_calls, unique_id, state FROM batches WHERE id = $1", batch.id
        )
        assert stored["state"] == "pending"
        assert await states(db_pool, cid) == {"dispatching": 3}
        assert simulator.started_count() == 0  # persisted, nothing sent yet
        calls = json.loads(stored["rest_calls"])
        assert calls[0]["extra_sip_headers"] == [{"name": "X-Account", "value": "bob/1"}]
        assert calls[0]["token"].startswith("tok-")
    await run_until_idle(db_pool, settings)
    assert await states(db_pool, cid) == {"dialing": 3}
    remembered = simulator.call((await references_by_contact(db_pool, cid)).popitem()[1]).unique_id
    assert remembered == stored["unique_id"]


async def _active(pool: asyncpg.Pool) -> list:  # type: ignore[type-arg]
    from campaign.db import queries as q

    async with pool.acquire() as conn:
        return await q.active_campaigns(conn)


def test_unique_id_depends_on_namespace_campaign_contacts_and_attempts() -> None:
    base = unique_id_for("ns", 1, [(10, 1), (11, 1)])
    assert base == unique_id_for("ns", 1, [(10, 1), (11, 1)])
    assert base != unique_id_for("other", 1, [(10, 1), (11, 1)])
    assert base != unique_id_for("ns", 2, [(10, 1), (11, 1)])
    assert base != unique_id_for("ns", 1, [(10, 2), (11, 1)])
    assert base != unique_id_for("ns", 1, [(10, 1)])
    assert len(base) <= 80


async def test_invalid_destinations_are_marked_invalid_and_never_sent(
    db_pool: asyncpg.Pool, simulator: Simulator
) -> None:
    settings = engine_settings(simulator)
    cid = await create_campaign(db_pool)
    good = uk_numbers(3)
    bad = ["01908 273800", "+44 909 8790000", "12", "sip:  broken", ""]
    await add_contacts(db_pool, cid, [*good, *bad])

    await run_until_idle(db_pool, settings)

    assert await states(db_pool, cid) == {"dialing": 3, "invalid": 5}
    reasons = await db_pool.fetch(
        "SELECT destination, last_error FROM contacts WHERE state = 'invalid'"
    )
    assert all(r["last_error"] for r in reasons)
    by_dest = {r["destination"]: r["last_error"] for r in reasons}
    assert "premium" in by_dest["+44 909 8790000"]
    assert "leading 0" in by_dest["01908 273800"] or "national" in by_dest["01908 273800"]
    assert simulator.started_count() == 3


async def test_national_number_is_normalised_with_the_campaign_default_country(
    db_pool: asyncpg.Pool, simulator: Simulator
) -> None:
    settings = engine_settings(simulator)
    cid = await create_campaign(db_pool, default_country="GB")
    await add_contacts(db_pool, cid, ["01908 273800"])
    await run_until_idle(db_pool, settings)
    assert await states(db_pool, cid) == {"dialing": 1}
    assert simulator.calls[0].to == "441908273800"


async def test_same_destination_twice_marks_the_later_one_duplicate(
    db_pool: asyncpg.Pool, simulator: Simulator
) -> None:
    settings = engine_settings(simulator)
    cid = await create_campaign(db_pool, batch_size=2)
    ids = await add_contacts(
        db_pool, cid, ["+44 1908 273800", "441908273800", "+44 1908 273999", "tel:441908273800"]
    )
    await run_until_idle(db_pool, settings)
    rows = await db_pool.fetch("SELECT id, state, last_error FROM contacts ORDER BY id")
    assert [r["state"] for r in rows] == ["dialing", "duplicate", "dialing", "duplicate"]
    assert rows[1]["last_error"] and rows[3]["last_error"]
    assert rows[0]["id"] == ids[0]
    assert simulator.calls_to("441908273800") == 1


async def test_same_destination_in_another_campaign_is_not_a_duplicate(
    db_pool: asyncpg.Pool, simulator: Simulator
) -> None:
    settings = engine_settings(simulator)
    first = await create_campaign(db_pool, "first")
    second = await create_campaign(db_pool, "second")
    await add_contacts(db_pool, first, ["+44 1908 273800"])
    await add_contacts(db_pool, second, ["+44 1908 273800"])
    await run_until_idle(db_pool, settings)
    assert simulator.calls_to("441908273800") == 2


async def test_suppressed_number_is_never_sent(db_pool: asyncpg.Pool, simulator: Simulator) -> None:
    settings = engine_settings(simulator)
    cid = await create_campaign(db_pool)
    other = await create_campaign(db_pool, "other")
    await db_pool.execute(
        "INSERT INTO suppressions (destination, campaign_id, reason) VALUES"
        " ('441908200000', NULL, 'asked'), ('441908200001', $1, 'this campaign only'),"
        " ('441908200002', $2, 'other campaign only')",
        cid,
        other,
    )
    await add_contacts(db_pool, cid, uk_numbers(4))
    await run_until_idle(db_pool, settings)
    rows = await db_pool.fetch("SELECT destination, state FROM contacts ORDER BY id")
    assert [r["state"] for r in rows] == ["suppressed", "suppressed", "dialing", "dialing"]
    assert simulator.calls_to("441908200000") == 0
    assert simulator.calls_to("441908200002") == 1


@pytest.mark.parametrize("fault", ["error_before", "error_after", "drop_after", "throttle"])
async def test_transient_failure_is_resent_with_same_id_and_starts_each_call_once(
    db_pool: asyncpg.Pool, simulator: Simulator, fault: str
) -> None:
    settings = engine_settings(simulator)
    cid = await create_campaign(db_pool, batch_size=5)
    numbers = uk_numbers(10)
    await add_contacts(db_pool, cid, numbers)
    simulator.faults.force(fault, count=3)

    await run_until_idle(db_pool, settings)

    assert await states(db_pool, cid) == {"dialing": 10}
    assert_each_started_once(simulator, numbers)
    sends = await db_pool.fetchval("SELECT sum(sends) FROM batches")
    assert sends == 2 + 3  # two batches, three failed sends among them
    # Every reference stored is one the simulator started.
    refs = await references_by_contact(db_pool, cid)
    assert {simulator.call(r).reference for r in refs.values()} == set(refs.values())


async def test_answer_slower_than_the_timeout_is_resent_with_same_id(
    db_pool: asyncpg.Pool, simulator: Simulator
) -> None:
    settings = engine_settings(simulator, http={"read_timeout": 0.3})
    simulator.faults.slow_seconds = 1.0
    cid = await create_campaign(db_pool, batch_size=5)
    numbers = uk_numbers(5)
    await add_contacts(db_pool, cid, numbers)
    simulator.faults.force("slow", count=2)

    await run_until_idle(db_pool, settings)

    assert await states(db_pool, cid) == {"dialing": 5}
    assert_each_started_once(simulator, numbers)


async def test_batch_older_than_the_idempotency_window_is_parked_not_resent(
    db_pool: asyncpg.Pool, simulator: Simulator, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = engine_settings(simulator)
    cid = await create_campaign(db_pool)
    await add_contacts(db_pool, cid, uk_numbers(3))
    async with dispatcher(db_pool, settings) as d:
        [batch], _ = await d.claim((await _active(db_pool))[0])
        assert batch is not None
    # The daemon died after sending; nobody came back within the window.
    await db_pool.execute(
        "UPDATE batches SET created_at = now() - interval '2 hours',"
        " lease_until = now() - interval '1 minute'"
    )

    await run_until_idle(db_pool, settings)

    assert simulator.started_count() == 0
    row = await db_pool.fetchrow("SELECT state, unique_id, last_error FROM batches")
    assert simulator.requests_with(row["unique_id"]) == []  # not even a request
    assert row["state"] == "parked"
    assert "idempotency window" in row["last_error"]
    contacts = await db_pool.fetch("SELECT state, last_error FROM contacts")
    assert {c["state"] for c in contacts} == {"dispatching"}
    assert all("idempotency window" in c["last_error"] for c in contacts)


async def sends_of_the_batch(
    pool: asyncpg.Pool, sim: Simulator
) -> tuple[asyncpg.Record, list[float]]:
    """The only batch, and when each request carrying its unique_id reached the
    simulator, in seconds after the batch was stored (by the simulator's clock)."""
    batch = await pool.fetchrow(
        "SELECT state, sends, unique_id, last_error,"
        " extract(epoch FROM created_at)::float8 AS created FROM batches"
    )
    stored = batch["created"] + await db_clock_offset(pool)
    return batch, [r.at - stored for r in sim.requests_with(batch["unique_id"])]


async def test_transient_failures_until_the_window_closes_park_the_batch(
    db_pool: asyncpg.Pool, simulator: Simulator
) -> None:
    window = 4.0
    settings = engine_settings(
        simulator,
        dispatcher={"idempotency_window_seconds": window, "retry_initial_delay": 0.2},
        http={"connect_timeout": 0.5, "read_timeout": 0.5},
    )
    cid = await create_campaign(db_pool)
    await add_contacts(db_pool, cid, uk_numbers(2))
    simulator.faults.error_after = 1.0

    await run_until_idle(db_pool, settings, timeout=30)

    batch, sent = await sends_of_the_batch(db_pool, simulator)
    assert batch["state"] == "parked"
    # The simulator answers every repeat of the id with the calls it started, so
    # the calls it started cannot tell a late re-send: the requests can.
    assert len(sent) >= max(2, batch["sends"])
    assert max(sent) < window, f"re-sent {max(sent):.2f}s after the batch was stored"
    assert simulator.started_count() == 2


@pytest.mark.parametrize(
    "faults",
    [
        {"error_after": 1.0},
        {"slow": 1.0},
        {"error_after": 0.4, "drop_after": 0.3, "slow": 0.3},
    ],
    ids=["5xx", "timeouts", "mixed"],
)
async def test_no_resend_begins_later_than_the_http_timeouts_before_the_window_ends(
    db_pool: asyncpg.Pool, simulator: Simulator, faults: dict[str, float]
) -> None:
    # Guarantee 1's bound: a request may take connect + read timeouts, so none may
    # begin later than that before the end of the window, or it could still be
    # starting calls once Aculab may have forgotten the id.
    window, connect, read = 4.0, 0.4, 0.6
    settings = engine_settings(
        simulator,
        dispatcher={"idempotency_window_seconds": window, "retry_max_delay": 0.2},
        http={"connect_timeout": connect, "read_timeout": read},
    )
    cid = await create_campaign(db_pool)
    await add_contacts(db_pool, cid, uk_numbers(2))
    simulator.faults.slow_seconds = read + 0.3  # the client has given up by then
    for kind, share in faults.items():
        setattr(simulator.faults, kind, share)

    await run_until_idle(db_pool, settings, timeout=30)

    # The simulator records a request once it is done with it; stopping it ends
    # the slow answers still waiting, so that every request is in the record.
    await simulator.stop()
    batch, sent = await sends_of_the_batch(db_pool, simulator)
    assert batch["state"] == "parked"
    assert len(sent) >= max(3, batch["sends"])
    # A request reaches the simulator a moment after the engine begins it (on a
    # busy machine, tens of milliseconds): that much slack, no more.
    latest = window - (connect + read)
    assert max(sent) <= latest + 0.15, (
        f"a send began {max(sent):.2f}s after the batch was stored; the last allowed "
        f"moment is {latest:.2f}s"
    )
    # And it re-sent as late as it could: it stops only when the next send could not
    # begin in time, one failed request (at most the read timeout) and one backoff
    # (at most 0.2 s) after the last.
    assert max(sent) >= latest - (read + 0.2) - 0.15


async def test_batch_of_a_dead_daemon_is_taken_over_and_resent_with_its_stored_id(
    db_pool: asyncpg.Pool, simulator: Simulator
) -> None:
    settings = engine_settings(simulator)
    cid = await create_campaign(db_pool)
    numbers = uk_numbers(4)
    await add_contacts(db_pool, cid, numbers)
    async with dispatcher(db_pool, settings, owner="dead-daemon") as d:
        [batch], _ = await d.claim((await _active(db_pool))[0])
        assert batch is not None
        # It sent the request, then died before acknowledging.
        original = await d.client.service_start(SERVICE, batch.rest_calls, batch.unique_id)
    await db_pool.execute("UPDATE batches SET lease_until = now() - interval '1 second'")

    survivors = await run_until_idle(db_pool, settings, owners=["survivor"])

    assert survivors[0].counters.takeovers == 1
    assert_each_started_once(simulator, numbers)
    refs = await db_pool.fetchval("SELECT references_ FROM batches")
    assert refs == original


async def test_live_lease_of_another_daemon_is_not_taken_over(
    db_pool: asyncpg.Pool, simulator: Simulator
) -> None:
    settings = engine_settings(simulator)
    cid = await create_campaign(db_pool)
    await add_contacts(db_pool, cid, uk_numbers(2))
    async with dispatcher(db_pool, settings, owner="busy-daemon") as d:
        [batch], _ = await d.claim((await _active(db_pool))[0])
        assert batch is not None
    async with dispatcher(db_pool, settings, owner="other") as other:
        assert await other.tick() is False
    assert simulator.started_count() == 0


async def test_rejected_list_is_split_until_the_bad_contact_stands_alone(
    db_pool: asyncpg.Pool, make_simulator: object
) -> None:
    sim = await make_simulator(  # type: ignore[operator]
        SimulatorConfig(validated_caller_ids=frozenset({CALLER_ID}))
    )
    settings = engine_settings(sim)
    cid = await create_campaign(db_pool, batch_size=8)
    ids = await add_contacts(db_pool, cid, uk_numbers(8))
    await db_pool.execute(
        "UPDATE contacts SET caller_id = '441908273999' WHERE id = ANY($1::bigint[])",
        [ids[2], ids[5]],
    )

    await run_until_idle(db_pool, settings)

    rows = await db_pool.fetch("SELECT id, state, last_error FROM contacts ORDER BY id")
    assert [r["state"] for r in rows].count("invalid") == 2
    assert {r["id"] for r in rows if r["state"] == "invalid"} == {ids[2], ids[5]}
    assert all("caller" in r["last_error"].lower() for r in rows if r["state"] == "invalid")
    assert sim.started_count() == 6


async def test_list_longer_than_aculab_accepts_is_split_in_halves(
    db_pool: asyncpg.Pool, make_simulator: object
) -> None:
    sim = await make_simulator(SimulatorConfig(max_list_length=3))  # type: ignore[operator]
    settings = engine_settings(sim)
    cid = await create_campaign(db_pool, batch_size=10)
    numbers = uk_numbers(10)
    await add_contacts(db_pool, cid, numbers)
    await run_until_idle(db_pool, settings)
    assert await states(db_pool, cid) == {"dialing": 10}
    assert_each_started_once(sim, numbers)


async def test_authentication_failure_pauses_the_campaign_and_loses_nothing(
    db_pool: asyncpg.Pool, simulator: Simulator
) -> None:
    settings = engine_settings(simulator, aculab={"service_passwords": {SERVICE: "wrong-password"}})
    cid = await create_campaign(db_pool)
    await add_contacts(db_pool, cid, uk_numbers(5))

    await run_until_idle(db_pool, settings)

    campaign = await db_pool.fetchrow(
        "SELECT state, state_reason FROM campaigns WHERE id = $1", cid
    )
    assert campaign["state"] == "paused"
    assert "credentials" in campaign["state_reason"]
    assert "wrong-password" not in campaign["state_reason"]
    assert await states(db_pool, cid) == {"pending": 5}
    assert simulator.started_count() == 0

    # Fixed and resumed: everyone is called once.
    await db_pool.execute("UPDATE campaigns SET state = 'active' WHERE id = $1", cid)
    await run_until_idle(db_pool, engine_settings(simulator))
    assert await states(db_pool, cid) == {"dialing": 5}
    assert simulator.started_count() == 5


async def test_trial_account_sends_one_call_object_per_request(
    db_pool: asyncpg.Pool, make_simulator: object
) -> None:
    sim = await make_simulator(SimulatorConfig(account_type="trial"))  # type: ignore[operator]
    settings = engine_settings(sim)
    cid = await create_campaign(db_pool, batch_size=50)
    numbers = uk_numbers(4)
    await add_contacts(db_pool, cid, numbers)
    await run_until_idle(db_pool, settings)
    assert await states(db_pool, cid) == {"dialing": 4}
    stored = await db_pool.fetch("SELECT rest_calls FROM batches")
    assert len(stored) == 4
    assert all(isinstance(json.loads(r["rest_calls"]), dict) for r in stored)
    assert_each_started_once(sim, numbers)


async def test_two_dispatchers_at_once_start_every_call_exactly_once(
    db_pool: asyncpg.Pool, simulator: Simulator
) -> None:
    settings = engine_settings(simulator, dispatcher={"max_in_flight_batches": 3})
    cid = await create_campaign(db_pool, batch_size=10)
    numbers = uk_numbers(400)
    await add_contacts(db_pool, cid, numbers)
    simulator.faults.error_after = 0.2
    simulator.faults.drop_after = 0.1

    ds = await run_until_idle(db_pool, settings, owners=["daemon-a", "daemon-b"])

    assert await states(db_pool, cid) == {"dialing": 400}
    assert_each_started_once(simulator, numbers)
    assert all(d.counters.submitted > 0 for d in ds)


async def test_paused_campaign_is_not_claimed(db_pool: asyncpg.Pool, simulator: Simulator) -> None:
    settings = engine_settings(simulator)
    cid = await create_campaign(db_pool, state="paused")
    await add_contacts(db_pool, cid, uk_numbers(3))
    await run_until_idle(db_pool, settings)
    assert simulator.started_count() == 0
    assert await states(db_pool, cid) == {"pending": 3}


async def test_campaign_cps_paces_submissions(db_pool: asyncpg.Pool, simulator: Simulator) -> None:
    settings = engine_settings(simulator)
    cid = await create_campaign(db_pool, calls_per_second=20, batch_size=50)
    await add_contacts(db_pool, cid, uk_numbers(30))
    await run_until_idle(db_pool, settings)
    assert simulator.started_count() == 30
    # 20 calls/s: at most 20 calls reach Aculab in any one second, slid over the
    # simulator's own arrival times; the grants hold the same over the window
    # plus the guard. 30 calls need the whole budget, so it really held some back.
    arrivals = [c.submitted_at for c in simulator.calls]
    assert worst_window(arrivals, 1.0) == 20
    grants = await db_pool.fetch(
        "SELECT extract(epoch FROM granted_at)::float8 AS at, calls FROM rate_grants"
        " WHERE key = $1",
        f"campaign:{cid}",
    )
    granted = [r["at"] for r in grants for _ in range(r["calls"])]
    guard = settings.dispatcher.pacing_guard_seconds
    assert len(granted) == 30
    assert worst_window(granted, 1.0 + guard) == 20


async def test_client_and_dispatcher_agree_on_the_stored_payload_shape(
    db_pool: asyncpg.Pool, simulator: Simulator
) -> None:
    # A stored payload replayed by hand is accepted byte for byte (operator tooling relies on it).
    settings = engine_settings(simulator)
    cid = await create_campaign(db_pool)
    await add_contacts(db_pool, cid, uk_numbers(2))
    await run_until_idle(db_pool, settings)
    row = await db_pool.fetchrow("SELECT rest_calls, unique_id, references_ FROM batches")
    async with AculabClient(settings.aculab, settings.http) as client:
        again = await client.service_start(SERVICE, row["rest_calls"], row["unique_id"])
    assert again == row["references_"]
    assert simulator.started_count() == 2


async def test_credentials_refused_on_a_resend_keep_the_batch_so_no_contact_is_called_twice(
    db_pool: asyncpg.Pool, simulator: Simulator
) -> None:
    settings = engine_settings(simulator)
    cid = await create_campaign(db_pool)
    numbers = uk_numbers(3)
    await add_contacts(db_pool, cid, numbers)
    async with dispatcher(db_pool, settings, owner="dead-daemon") as d:
        [batch], _ = await d.claim((await _active(db_pool))[0])
        # It started the calls, then died before acknowledging.
        await d.client.service_start(SERVICE, batch.rest_calls, batch.unique_id)
    await db_pool.execute("UPDATE batches SET lease_until = now() - interval '1 second'")

    # The survivor's password was rotated: Aculab refuses it before the unique_id.
    rotated = engine_settings(simulator, aculab={"service_passwords": {SERVICE: "rotated"}})

    async def paused() -> bool:
        state = await db_pool.fetchval("SELECT state FROM campaigns WHERE id = $1", cid)
        return bool(state == "paused")

    await run_engine(db_pool, rotated, paused, owners=["survivor"])

    assert await db_pool.fetchval("SELECT state FROM campaigns WHERE id = $1", cid) == "paused"
    assert await states(db_pool, cid) == {"dispatching": 3}
    kept = await db_pool.fetchrow("SELECT state, unique_id FROM batches")
    assert (kept["state"], kept["unique_id"]) == ("pending", batch.unique_id)

    # Fixed and resumed: the same id again, so Aculab answers with the original calls.
    await db_pool.execute("UPDATE campaigns SET state = 'active' WHERE id = $1", cid)
    await db_pool.execute("UPDATE batches SET next_send_at = now()")
    await run_until_idle(db_pool, settings, owners=["survivor"])
    assert await states(db_pool, cid) == {"dialing": 3}
    assert_each_started_once(simulator, numbers)


async def test_a_daemon_that_lost_its_lease_cannot_close_the_batch_another_took_over(
    db_pool: asyncpg.Pool, simulator: Simulator
) -> None:
    settings = engine_settings(simulator)
    cid = await create_campaign(db_pool)
    await add_contacts(db_pool, cid, uk_numbers(2))
    async with dispatcher(db_pool, settings, owner="slow-daemon") as d:
        [batch], _ = await d.claim((await _active(db_pool))[0])
    # Its lease ran out while it waited for Aculab; another daemon took the batch.
    await db_pool.execute("UPDATE batches SET owner = 'survivor' WHERE id = $1", batch.id)
    async with db_pool.acquire() as conn:
        closed = await q.close_batch(conn, batch.id, "rejected", "refused", "slow-daemon")
    assert closed is None
    assert await db_pool.fetchval("SELECT state FROM batches") == "pending"
    assert await states(db_pool, cid) == {"dispatching": 2}
