"""`campaign run` as a real subprocess: kill -9, SIGTERM, several daemons, its logs."""

from __future__ import annotations

import asyncio
import json
import random
import signal
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import asyncpg
import pytest

from campaign.db.migrate import LOCK_KEY
from campaign.db.pool import connect
from campaign.simulator import Simulator, SimulatorConfig
from tests.daemons import (
    API_KEY,
    BAD_PASSWORD,
    BAD_SERVICE,
    PASSWORD,
    daemon_env,
    log_events,
    log_size,
    sim_config,
    start_daemon,
    stop,
    submitted_batches,
    wait_for,
    wait_for_event,
)
from tests.engine import add_contacts, create_campaign, states, uk_numbers

pytestmark = pytest.mark.slow


def started_once(sim: Simulator, numbers: list[str]) -> tuple[int, int]:
    """(duplicated, lost) counted from the simulator's own record."""
    counts = [sim.calls_to(n) for n in numbers]
    return sum(1 for c in counts if c > 1), sum(1 for c in counts if c == 0)


async def test_kill_9_at_random_moments_starts_every_contact_exactly_once(
    db_pool: asyncpg.Pool,
    db_dsn: str,
    make_simulator: Callable[[SimulatorConfig], Awaitable[Simulator]],
    tmp_path: Path,
) -> None:
    sim = await make_simulator(sim_config())
    # Every answer takes a quarter of a second (calls already started), so most
    # kills land between Aculab starting the calls and the acknowledgement.
    sim.faults.slow = 0.85
    sim.faults.slow_seconds = 0.25
    sim.faults.error_after = 0.1
    sim.faults.drop_after = 0.05
    cid = await create_campaign(db_pool, batch_size=20, calls_per_second=250)
    numbers = uk_numbers(3000)
    await add_contacts(db_pool, cid, numbers)
    env = daemon_env(sim, db_dsn)
    log = tmp_path / "daemon.log"
    rng = random.Random(1234)

    kills = 0
    mid_flight = 0  # kills that left a persisted, unacknowledged batch behind
    for _ in range(6):
        offset = log_size(log)
        proc = await start_daemon(env, log)
        # However long the start takes on a busy machine, the kill lands while it dials.
        await wait_for_event(proc, log, "listener_started", offset=offset)
        await asyncio.sleep(rng.uniform(0.2, 1.5))
        proc.kill()
        await proc.wait()
        kills += 1
        after = await states(db_pool, cid)
        mid_flight += after.get("dispatching", 0) > 0
        print(f"after kill {kills}: {after}")

    async def all_dialing() -> bool:
        return await states(db_pool, cid) == {"dialing": 3000}

    final = await start_daemon(env, log)
    await wait_for(all_dialing, 90, "every contact to be dialing")
    code, _ = await stop(final)

    duplicated, lost = started_once(sim, numbers)
    print(
        f"kill test: kills={kills} (with batches in flight: {mid_flight}) "
        f"contacts={len(numbers)} duplicated={duplicated} lost={lost}"
    )
    assert mid_flight >= 2, "the kills did not interrupt any dispatch"

    assert (duplicated, lost) == (0, 0)
    assert sim.started_count() == 3000
    assert code == 0
    assert await db_pool.fetchval("SELECT count(*) FROM batches WHERE state = 'parked'") == 0
    assert await db_pool.fetchval("SELECT count(*) FROM calls") == 3000


async def test_two_daemons_share_a_campaign_without_duplicates(
    db_pool: asyncpg.Pool,
    db_dsn: str,
    make_simulator: Callable[[SimulatorConfig], Awaitable[Simulator]],
    tmp_path: Path,
) -> None:
    sim = await make_simulator(sim_config())
    sim.faults.error_after = 0.1
    cid = await create_campaign(db_pool, batch_size=10, calls_per_second=400)
    numbers = uk_numbers(1500)
    await add_contacts(db_pool, cid, numbers)
    env = daemon_env(sim, db_dsn)
    procs = [await start_daemon(env, tmp_path / f"d{i}.log") for i in range(2)]

    async def all_dialing() -> bool:
        return await states(db_pool, cid) == {"dialing": 1500}

    await wait_for(all_dialing, 90, "every contact to be dialing")
    codes = [(await stop(p))[0] for p in procs]
    assert codes == [0, 0]
    assert started_once(sim, numbers) == (0, 0)
    # Who sent what, from each daemon's own log: both did some of the work, no
    # batch was acknowledged by both, and every acknowledged batch is in a log.
    by_daemon = [submitted_batches(tmp_path / f"d{i}.log") for i in range(2)]
    assert all(by_daemon), f"batches acknowledged per daemon: {[len(b) for b in by_daemon]}"
    assert not by_daemon[0] & by_daemon[1]
    submitted = await db_pool.fetch("SELECT id FROM batches WHERE state = 'submitted'")
    assert by_daemon[0] | by_daemon[1] == {r["id"] for r in submitted}


async def test_sigterm_with_a_request_in_flight_exits_0_in_time_and_loses_nothing(
    db_pool: asyncpg.Pool,
    db_dsn: str,
    make_simulator: Callable[[SimulatorConfig], Awaitable[Simulator]],
    tmp_path: Path,
) -> None:
    sim = await make_simulator(sim_config())
    sim.faults.slow = 1.0
    sim.faults.slow_seconds = 30
    cid = await create_campaign(db_pool, batch_size=5)
    numbers = uk_numbers(5)
    await add_contacts(db_pool, cid, numbers)
    env = daemon_env(sim, db_dsn, CAMPAIGN_HTTP__READ_TIMEOUT="20")
    proc = await start_daemon(env, tmp_path / "d.log")

    async def sent() -> bool:
        return sim.started_count() == 5

    await wait_for(sent, 30, "the slow request to start the calls")
    code, took = await stop(proc)
    assert code == 0
    assert took < 10
    row = await db_pool.fetchrow("SELECT state, owner FROM batches")
    assert row["state"] == "pending" and row["owner"] is None  # persisted, lease handed back
    assert await states(db_pool, cid) == {"dispatching": 5}

    # The next daemon re-sends the stored batch by id: nobody is called twice.
    sim.faults.slow = 0.0
    proc = await start_daemon(env, tmp_path / "d.log")

    async def all_dialing() -> bool:
        return await states(db_pool, cid) == {"dialing": 5}

    await wait_for(all_dialing, 30, "the batch to be acknowledged")
    assert (await stop(proc))[0] == 0
    assert started_once(sim, numbers) == (0, 0)


async def test_daemon_logs_are_json_lines_with_ids_and_never_secrets_or_full_numbers(
    db_pool: asyncpg.Pool,
    db_dsn: str,
    make_simulator: Callable[[SimulatorConfig], Awaitable[Simulator]],
    tmp_path: Path,
) -> None:
    sim = await make_simulator(sim_config())
    sim.faults.force("error_after")
    good = await create_campaign(db_pool, "good", batch_size=5)
    bad = await create_campaign(db_pool, "bad", service_name=BAD_SERVICE)
    numbers = uk_numbers(10)
    await add_contacts(db_pool, good, [*numbers, "+44 909 8790000"])
    await add_contacts(db_pool, bad, uk_numbers(2, start=500))
    log = tmp_path / "daemon.log"
    proc = await start_daemon(daemon_env(sim, db_dsn), log)

    async def settled() -> bool:
        paused = await db_pool.fetchval("SELECT state FROM campaigns WHERE id = $1", bad)
        return paused == "paused" and await states(db_pool, good) == {"dialing": 10, "invalid": 1}

    await wait_for(settled, 30, "both campaigns to settle")
    await wait_for_event(proc, log, "campaign_progress")
    assert (await stop(proc))[0] == 0

    text = log.read_text()
    for secret in (PASSWORD, API_KEY, BAD_PASSWORD, "the-real-one"):
        assert secret not in text
    for number in [*numbers, "+44 909 8790000"]:
        digits = "".join(ch for ch in number if ch.isdigit())
        assert digits not in text and number not in text
    events = [json.loads(line) for line in text.splitlines() if line.strip()]
    names = {e["event"] for e in events}
    assert {"batch_submitted", "batch_send_failed", "campaign_paused", "contact_invalid"} <= names
    assert "campaign_progress" in names
    for e in events:
        assert {"ts", "level", "event"} <= set(e)
        if e["event"].startswith("batch_"):
            assert "campaign_id" in e and "batch_id" in e
        if e["event"] == "campaign_progress":
            assert "campaign_id" in e and "states" in e


async def test_unreachable_database_is_one_clear_line_and_exit_1(
    simulator: Simulator, tmp_path: Path
) -> None:
    env = daemon_env(simulator, "postgresql://nobody:secret-pw@127.0.0.1:1/none")
    proc = await start_daemon(env, tmp_path / "d.log")
    code = await asyncio.wait_for(proc.wait(), 30)
    text = (tmp_path / "d.log").read_text()
    assert code == 1
    assert "secret-pw" not in text
    assert "database_unavailable" in text
    assert "Traceback" not in text


async def test_listener_port_in_use_is_one_clear_line_and_exit_1(
    db_dsn: str, simulator: Simulator, tmp_path: Path
) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = daemon_env(simulator, db_dsn, CAMPAIGN_LISTENER__PORT=str(port))
        proc = await start_daemon(env, tmp_path / "d.log")
        code = await asyncio.wait_for(proc.wait(), 30)
    events = [json.loads(line) for line in (tmp_path / "d.log").read_text().splitlines()]
    assert code == 1
    failed = [e for e in events if e["event"] == "listener_failed"]
    assert len(failed) == 1
    assert "listener.port" in failed[0]["reason"]


async def test_without_an_api_key_the_daemon_says_once_that_it_will_not_poll(
    db_dsn: str, simulator: Simulator, tmp_path: Path
) -> None:
    env = daemon_env(simulator, db_dsn, CAMPAIGN_ACULAB__API_ACCESS_KEY="")
    log = tmp_path / "d.log"
    proc = await start_daemon(env, log)
    await wait_for_event(proc, log, "listener_started")
    # Running: its poller goes round a few times (once a second) before it stops.
    await asyncio.sleep(2.5)
    assert (await stop(proc))[0] == 0
    events = [json.loads(line) for line in log.read_text().splitlines()]
    assert [e["event"] for e in events].count("polling_disabled") == 1
    assert not any(e["event"] == "poll_refused" for e in events)


async def test_sigterm_while_the_daemon_is_still_starting_exits_0(
    db_dsn: str, simulator: Simulator, tmp_path: Path
) -> None:
    log = tmp_path / "d.log"
    # Holding the migrations' lock keeps the daemon in its start, however fast it is.
    holder = await connect(db_dsn)
    try:
        await holder.execute("SELECT pg_advisory_lock($1)", LOCK_KEY)
        proc = await start_daemon(daemon_env(simulator, db_dsn), log)
        await wait_for_event(proc, log, "daemon_starting")

        async def waiting_for_the_lock() -> bool:
            waiting = await holder.fetchval(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
                " AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
            )
            return bool(waiting)

        await wait_for(waiting_for_the_lock, 30, "the daemon to wait for the migrations")
        proc.send_signal(signal.SIGTERM)
        began = time.monotonic()
        await holder.execute("SELECT pg_advisory_unlock($1)", LOCK_KEY)
    finally:
        await holder.close()
    code = await asyncio.wait_for(proc.wait(), 15)
    assert code == 0
    assert time.monotonic() - began < 10
    names = [e["event"] for e in log_events(log)]
    assert "daemon_stopped" in names
    assert "listener_started" not in names[: names.index("daemon_stopping")]
