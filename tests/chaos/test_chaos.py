"""Chaos: several daemons, kill -9, a PostgreSQL restart and a faulty Aculab, all at once.

One campaign with retries enabled is run to the end by `campaign run` daemons
(real subprocesses) against one database and the simulator (in this process, on
loopback) while:

- two to three daemons run at once;
- the simulator refuses or mangles service_start requests: 429s, 500s before and
  after starting the calls, connections dropped after starting them, answers
  slower than the client's read timeout (35 %), and fails application_status
  polls the same ways (30 %, tests/chaos/faults.py): >= 25 % of all requests;
- a random daemon is killed with SIGKILL every few seconds and started again;
- PostgreSQL is stopped and started again once, mid-run (a chaos-only embedded
  server; with CAMPAIGN_TEST_DSN, which we must not restart, every connection to
  the test database is terminated instead).

Nobody operates anything: the daemons must finish the campaign on their own, and
none may exit unless killed (one that does is restarted, as a supervisor would,
so the run goes on, and the test fails).
The verdict comes from the simulator's own record of the calls it started:
for every contact, calls started at "Aculab" == attempts the engine counted ==
its rows in `calls`, and every contact ends terminal with a reason.

Size and shape from the environment: CHAOS_CONTACTS (default 2000; the full run
is CHAOS_CONTACTS=5000), CHAOS_DAEMONS (3), CHAOS_CPS (calls per second, 150),
CHAOS_SEED (random by default; printed at the start, in the summary line, with
any failure and at the end of the session: tests/chaos/seed.py),
CHAOS_PG_DOWNTIME (seconds PostgreSQL stays down, 2).

    .venv/bin/python -m pytest -m chaos -s tests/chaos
    CHAOS_CONTACTS=5000 .venv/bin/python -m pytest -m chaos -s tests/chaos
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import subprocess
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from campaign.db.migrate import migrate
from campaign.db.pool import connect, dsn_with_database, open_pool
from campaign.runtime import DB_ERRORS
from campaign.simulator import Simulator
from tests.chaos.faults import add_poll_faults
from tests.chaos.seed import REPRODUCE, SEED
from tests.daemons import daemon_env, sim_config, start_daemon, stop
from tests.engine import add_contacts, create_campaign, uk_numbers
from tests.fixtures_db import TEST_DSN_ENV, create_database, drop_database

CONTACTS = int(os.environ.get("CHAOS_CONTACTS", "2000"))
DAEMONS = int(os.environ.get("CHAOS_DAEMONS", "3"))
CPS = float(os.environ.get("CHAOS_CPS", "150"))
PG_DOWNTIME = float(os.environ.get("CHAOS_PG_DOWNTIME", "2"))

# Generous: a stuck engine fails on the wait below, with the counts, before this.
RUN_TIMEOUT = 120 + CONTACTS * 0.08
pytestmark = [
    pytest.mark.chaos,
    pytest.mark.slow,
    pytest.mark.timeout(RUN_TIMEOUT + 120),
]

MAX_ATTEMPTS = 3
RETRY_DELAYS = {"busy": 0.5, "no_answer": 0.5, "failed": 0.5, "dropped": 0.5, "unknown": 0.5}
# Answered 65 %, retried 33 % (busy, no_answer, failed, dropped), unobtainable 2 % (not retried).
CAUSES = {
    "completed": 0.5,
    "hung_up": 0.15,
    "no_answer": 0.15,
    "busy": 0.12,
    "failed": 0.03,
    "dropped": 0.03,
    "unobtainable": 0.02,
}
# service_start faults, one draw per request: 35 % in all, so the share actually
# injected stays above 25 % even over a few hundred requests.
FAULTS = {"throttle": 0.06, "error_before": 0.07, "error_after": 0.08, "drop_after": 0.07}
SLOW = 0.07
SLOW_SECONDS = 1.5  # past CAMPAIGN_HTTP__READ_TIMEOUT=1
FAULT_OUTCOMES = ("throttled", "error_before", "error_after", "drop_after", "slow")
# The simulator's Faults cover service_start only; the polls (most of the requests
# in a poll-only run) get theirs from tests/chaos/faults.py: 30 % in all.
POLL_FAULTS = {"error": 0.12, "drop": 0.09, "slow": 0.09}

KILL_GAP = (1.5, 4.0)  # seconds between two kills
RESTART_AFTER = (0.2, 1.5)  # seconds a killed daemon stays dead
PG_RESTART_AT = 0.35  # share of contacts terminal when PostgreSQL goes down

TERMINAL = frozenset({"completed", "failed", "invalid", "suppressed", "duplicate", "cancelled"})
OPEN = ("pending", "dispatching", "dialing")
# What this test's own connections may meet while PostgreSQL restarts (InternalClientError:
# asyncpg's answer on a connection the server dropped a moment before, asyncpg#784).
RETRYABLE_DB = (
    *DB_ERRORS,
    asyncpg.exceptions.OperatorInterventionError,
    asyncpg.exceptions.InternalClientError,
)


# --- a PostgreSQL of our own, to restart ---------------------------------------------------


@dataclass
class ChaosDatabase:
    dsn: str
    disrupt: Callable[[], Awaitable[str]]
    """Restart the server (or sever every connection); returns what was done."""


def _pg_ctl(server: Any, *args: str) -> None:
    from pgserver._commands import POSTGRES_BIN_PATH

    # Output to /dev/null (the server logs to a file): a pipe inherited by the
    # postmaster would keep pg_ctl's output open forever.
    try:
        subprocess.run(
            [str(POSTGRES_BIN_PATH / "pg_ctl"), "-D", str(server.pgdata), *args],
            check=True,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            user=server.system_user,  # pgserver runs postgres as its own user under root
            timeout=120,
        )
    except subprocess.CalledProcessError as exc:
        log = Path(server.log).read_text(errors="replace").splitlines()[-10:]
        raise RuntimeError(f"pg_ctl {' '.join(args)} failed ({exc}): " + " | ".join(log)) from exc


def _pg_stop(server: Any) -> None:
    _pg_ctl(server, "-w", "-m", "fast", "stop")


def _pg_start(server: Any, socket_dir: Path) -> None:
    from pgserver.utils import PostmasterInfo

    # The options pgserver itself starts the server with: unix socket only, same directory.
    _pg_ctl(server, "-w", "-o", '-h ""', "-o", f"-k {socket_dir}", "-l", str(server.log), "start")
    # pgserver stops (at cleanup) the postmaster it knows about: tell it about the new one.
    server._postmaster_info = PostmasterInfo.read_from_pgdata(server.pgdata)


def _start_server(pgdata: Path) -> Any:
    from pgserver.postgres_server import get_server

    return get_server(pgdata, cleanup_mode="delete")


async def _migrated(admin_dsn: str, name: str) -> str:
    await create_database(admin_dsn, name, template="template0")
    dsn = dsn_with_database(admin_dsn, name)
    conn = await connect(dsn, command_timeout=None)
    try:
        await migrate(conn)
    finally:
        await conn.close()
    return dsn


@pytest.fixture
async def chaos_db(tmp_path: Path) -> AsyncIterator[ChaosDatabase]:
    external = os.environ.get(TEST_DSN_ENV, "")
    if external:
        # We must not restart someone else's server: cut every connection to our
        # database instead (the daemons see the same errors, without the downtime).
        name = f"chaos_{uuid.uuid4().hex[:12]}"
        dsn = await _migrated(external, name)

        async def sever() -> str:
            conn = await connect(external)
            try:
                n = await conn.fetchval(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                    "WHERE datname = $1 AND pid <> pg_backend_pid()",
                    name,
                )
            finally:
                await conn.close()
            return f"terminated {n} connections ({TEST_DSN_ENV} is set: no restart)"

        try:
            yield ChaosDatabase(dsn, sever)
        finally:
            await drop_database(external, name)
        return

    (tmp_path / "pg").mkdir()
    server = await asyncio.to_thread(_start_server, tmp_path / "pg" / "data")
    try:
        dsn = await _migrated(str(server.get_uri()), "chaos")
        socket_dir = server.get_postmaster_info().socket_dir

        async def restart() -> str:
            began = time.monotonic()
            await asyncio.to_thread(_pg_stop, server)
            await asyncio.sleep(PG_DOWNTIME)
            await asyncio.to_thread(_pg_start, server, socket_dir)
            return f"restarted (down {time.monotonic() - began:.1f}s)"

        yield ChaosDatabase(dsn, restart)
    finally:
        await asyncio.to_thread(server.cleanup)


# --- daemons ---------------------------------------------------------------------------


@dataclass
class Daemon:
    index: int
    log: Path
    proc: asyncio.subprocess.Process | None = None
    starts: int = 0
    killed: bool = False
    restart_at: float = 0.0
    log_offset: int = 0

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.returncode is None

    async def start(self, env: dict[str, str]) -> None:
        self.log_offset = self.log.stat().st_size if self.log.exists() else 0
        self.proc = await start_daemon(env, self.log)
        self.starts += 1
        self.killed = False

    def running(self) -> bool:
        """Alive and past its start: connected, migrated, its tasks running."""
        if not self.alive:
            return False
        with self.log.open("rb") as fh:
            fh.seek(self.log_offset)
            return b'"listener_started"' in fh.read()


@dataclass
class Chaos:
    kills: int = 0
    kills_mid_flight: int = 0
    """Kills that left a persisted, unacknowledged batch of the dead daemon behind."""
    disruptions: list[str] = field(default_factory=list)
    unexpected_exits: list[str] = field(default_factory=list)
    states: dict[str, int] = field(default_factory=dict)
    back_at: float | None = None
    """When PostgreSQL was back; then seconds until calls were started and outcomes
    recorded again, without anybody touching the daemons."""
    dispatch_back_after: float | None = None
    outcomes_back_after: float | None = None


async def _db(pool: asyncpg.Pool, query: str, *args: Any, timeout: float = 60) -> Any:
    """fetch() that rides out the PostgreSQL restart."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return await pool.fetch(query, *args)
        except RETRYABLE_DB:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.5)


async def _states(pool: asyncpg.Pool, campaign_id: int) -> dict[str, int]:
    rows = await _db(
        pool,
        "SELECT state, count(*) AS n FROM contacts WHERE campaign_id = $1 GROUP BY state",
        campaign_id,
    )
    return {r["state"]: r["n"] for r in rows}


def _tail(log: Path, lines: int = 5) -> str:
    return " | ".join(log.read_text(errors="replace").splitlines()[-lines:])


async def _run_chaos(
    pool: asyncpg.Pool,
    db: ChaosDatabase,
    daemons: list[Daemon],
    env: dict[str, str],
    campaign_id: int,
    rng: random.Random,
    started: Callable[[], int],
) -> Chaos:
    """Kill, restart and disrupt until every contact is terminal (or the time is up)."""
    chaos = Chaos()
    deadline = time.monotonic() + RUN_TIMEOUT
    next_kill = time.monotonic() + rng.uniform(*KILL_GAP)
    started_then = terminal_then = 0
    while True:
        now = time.monotonic()
        chaos.states = await _states(pool, campaign_id)
        if not any(chaos.states.get(s) for s in OPEN):
            return chaos
        if now > deadline:
            raise AssertionError(
                f"contacts still open after {RUN_TIMEOUT:.0f}s: {chaos.states}; chaos so far: "
                f"kills={chaos.kills} disruptions={chaos.disruptions} "
                f"unexpected exits={chaos.unexpected_exits}"
            )
        for d in daemons:
            if d.proc is not None and d.proc.returncode is not None and not d.killed:
                # Nobody killed it: it gave up on its own. Note it and, as a supervisor
                # would, start it again so that the run can show what else goes wrong.
                chaos.unexpected_exits.append(
                    f"daemon {d.index} exited {d.proc.returncode}: {_tail(d.log)}"
                )
                await d.start(env)
            elif d.killed and now >= d.restart_at:
                await d.start(env)
        terminal = sum(n for s, n in chaos.states.items() if s in TERMINAL)
        if chaos.back_at is not None:
            if chaos.dispatch_back_after is None and started() > started_then:
                chaos.dispatch_back_after = now - chaos.back_at
            if chaos.outcomes_back_after is None and terminal > terminal_then:
                chaos.outcomes_back_after = now - chaos.back_at
        restart_due = not chaos.disruptions and terminal >= PG_RESTART_AT * CONTACTS
        alive = [d for d in daemons if d.alive]
        if now >= next_kill and not restart_due and alive:
            victim = rng.choice(alive)
            assert victim.proc is not None
            victim.proc.kill()
            await victim.proc.wait()
            victim.killed = True
            victim.restart_at = time.monotonic() + rng.uniform(*RESTART_AFTER)
            chaos.kills += 1
            rows = await _db(
                pool,
                "SELECT count(*) AS n FROM batches WHERE state = 'pending' AND owner LIKE $1",
                f"%:{victim.proc.pid}:%",
            )
            chaos.kills_mid_flight += rows[0]["n"] > 0
            next_kill = time.monotonic() + rng.uniform(*KILL_GAP)
        # Kills wait while PostgreSQL goes down, and it goes down only once every daemon
        # is past its start: one that meets a stopped server at start exits 1 by
        # design (docs/operations.md), which is its supervisor's business, not the engine's.
        settled = all(d.running() for d in daemons)
        if restart_due and settled:
            print(f"PostgreSQL going down with {chaos.states}")
            chaos.disruptions.append(await db.disrupt())
            chaos.back_at = time.monotonic()
            started_then = started()
            terminal_then = sum(
                n for s, n in (await _states(pool, campaign_id)).items() if s in TERMINAL
            )
        await asyncio.sleep(0.25)


def _secs(value: float | None) -> str:
    return "never" if value is None else f"{value:.1f}s"


def _events(logs: list[Path]) -> tuple[Counter[str], list[str]]:
    """Event names counted over every daemon log, and the lines that are not JSON."""
    events: Counter[str] = Counter()
    garbage: list[str] = []
    for log in logs:
        for line in log.read_text(errors="replace").splitlines():
            if not line.strip():
                continue
            try:
                events[json.loads(line)["event"]] += 1
            except (ValueError, KeyError, TypeError):
                garbage.append(line)
    return events, garbage


# --- the test --------------------------------------------------------------------------


@pytest.fixture
async def faulty_simulator() -> AsyncIterator[tuple[Simulator, Counter[str]]]:
    """The simulator with every fault of the scenario, and the tally of poll faults."""
    sim = Simulator(sim_config(cause_weights=CAUSES, seed=SEED))
    for kind, share in FAULTS.items():
        setattr(sim.faults, kind, share)
    sim.faults.slow = SLOW
    sim.faults.slow_seconds = SLOW_SECONDS
    poll_faults = add_poll_faults(sim, POLL_FAULTS, random.Random(f"{SEED}:polls"), SLOW_SECONDS)
    await sim.start()
    try:
        yield sim, poll_faults
    finally:
        await sim.stop()


async def test_chaos_every_attempt_started_exactly_once_and_nobody_lost(
    chaos_db: ChaosDatabase,
    faulty_simulator: tuple[Simulator, Counter[str]],
    tmp_path: Path,
) -> None:
    print(REPRODUCE)  # first, so that even a run that hangs or crashes shows it
    began = time.monotonic()
    rng = random.Random(SEED)
    sim, poll_faults = faulty_simulator

    async with open_pool(chaos_db.dsn, min_size=1, max_size=4, close_timeout=5) as pool:
        campaign_id = await create_campaign(
            pool,
            "chaos",
            batch_size=10,
            calls_per_second=CPS,
            max_concurrent_calls=2000,
            max_attempts=MAX_ATTEMPTS,
            retry_delays=RETRY_DELAYS,
        )
        numbers = uk_numbers(CONTACTS)
        await add_contacts(pool, campaign_id, numbers)

        env = daemon_env(
            sim,
            chaos_db.dsn,
            CAMPAIGN_POLLER__FIRST_POLL_DELAY="0.3",
            CAMPAIGN_POLLER__INTERVAL="0.3",
            CAMPAIGN_POLLER__MAX_INTERVAL="1",
            CAMPAIGN_HTTP__READ_TIMEOUT="1",
            CAMPAIGN_DISPATCHER__PROGRESS_INTERVAL="5",
        )
        daemons = [Daemon(i, tmp_path / f"daemon{i}.log") for i in range(DAEMONS)]
        for d in daemons:
            await d.start(env)
        dialing_began = time.monotonic()
        try:
            chaos = await _run_chaos(
                pool, chaos_db, daemons, env, campaign_id, rng, sim.started_count
            )
            run_seconds = time.monotonic() - dialing_began

            # The poller marks the campaign completed once nothing is open.
            for _ in range(60):
                rows = await _db(pool, "SELECT state FROM campaigns WHERE id = $1", campaign_id)
                if rows[0]["state"] == "completed":
                    break
                await asyncio.sleep(0.25)
            campaign_state = rows[0]["state"]
            # A daemon restarted a moment ago may still be importing: SIGTERM then finds
            # Python's default action, not the daemon's handler (exit -15, not 0).
            for _ in range(80):
                if all(d.running() for d in daemons if d.alive):
                    break
                await asyncio.sleep(0.25)
        finally:
            codes = []
            for d in daemons:
                if d.alive:
                    assert d.proc is not None
                    try:
                        codes.append((await stop(d.proc))[0])
                    except TimeoutError:
                        d.proc.kill()
                        await d.proc.wait()
                        codes.append(None)

        contacts = await _db(
            pool,
            "SELECT c.id, c.destination, c.state, c.attempts, c.last_error, "
            "       count(k.id) AS calls, "
            "       coalesce(array_agg(k.attempt ORDER BY k.attempt) "
            "                FILTER (WHERE k.id IS NOT NULL), '{}') AS numbered "
            "FROM contacts c LEFT JOIN calls k ON k.contact_id = c.id "
            "WHERE c.campaign_id = $1 GROUP BY c.id ORDER BY c.id",
            campaign_id,
        )
        recorded = await _db(
            pool, "SELECT reference, call_cause, call_raw_cause, outcome_source FROM calls"
        )
        db_references = {r["reference"] for r in recorded}
        batches = {
            r["state"]: r["n"]
            for r in await _db(pool, "SELECT state, count(*) AS n FROM batches GROUP BY state")
        }
        unfinished_calls = (
            await _db(pool, "SELECT count(*) AS n FROM calls WHERE finished_at IS NULL")
        )[0]["n"]

    # --- the simulator's record against the engine's --------------------------------
    duplicated: list[str] = []  # more calls started than attempts counted
    phantom: list[str] = []  # attempts counted for calls that never started
    unrecorded: list[str] = []  # a started call without its row in `calls`
    over_budget: list[str] = []
    misnumbered: list[str] = []
    lost: list[str] = []  # not terminal at the end
    no_reason: list[str] = []
    for c in contacts:
        started = sim.calls_to(c["destination"])
        who = f"contact {c['id']} ({c['state']}): started={started} "
        who += f"attempts={c['attempts']} calls={c['calls']}"
        if started > c["attempts"]:
            duplicated.append(who)
        if started < c["attempts"]:
            phantom.append(who)
        if started != c["calls"]:
            unrecorded.append(who)
        if started > MAX_ATTEMPTS:
            over_budget.append(who)
        if list(c["numbered"]) != list(range(1, c["calls"] + 1)):
            misnumbered.append(f"{who} numbered={list(c['numbered'])}")
        if c["state"] not in TERMINAL:
            lost.append(who)
        elif c["state"] != "completed" and not (c["last_error"] or "").strip():
            no_reason.append(who)
    sim_references = {call.reference for call in sim.calls}
    # How each call ended, as the engine recorded it and as "Aculab" ended it.
    wrong_cause = [
        f"{r['reference']}: recorded {r['call_cause']}/{r['call_raw_cause']} "
        f"({r['outcome_source']}), ended {sim.call(r['reference']).call_cause}/"
        f"{sim.call(r['reference']).call_raw_cause}"
        for r in recorded
        if r["reference"] in sim_references
        and (r["call_cause"], r["call_raw_cause"])
        != (sim.call(r["reference"]).call_cause, sim.call(r["reference"]).call_raw_cause)
    ]
    # Anything else (a 409 conflict: the same unique_id with other bytes; a 400) is a bug.
    expected_outcomes = {"ok", "replayed", *FAULT_OUTCOMES}

    service_start = Counter(
        {outcome: n for (ep, outcome), n in sim.requests.items() if ep == "service_start"}
    )
    requests = sum(service_start.values())
    injected = sum(service_start[o] for o in FAULT_OUTCOMES)
    fault_share = injected / requests if requests else 0.0
    polls_faulted = sum(poll_faults.values())
    # Slow polls reach the simulator's handler (and its count) late; the others never do.
    unseen = poll_faults["error"] + poll_faults["drop"]
    polls = sim.request_count("application_status") + unseen
    all_requests = sum(sim.requests.values()) + unseen
    all_injected = injected + polls_faulted
    by_kind = {o: service_start[o] for o in FAULT_OUTCOMES}
    overall_share = all_injected / all_requests if all_requests else 0.0
    events, garbage = _events([d.log for d in daemons])
    states = Counter(c["state"] for c in contacts)
    wall = time.monotonic() - began

    print(
        f"\nchaos summary: contacts={CONTACTS} daemons={DAEMONS} cps={CPS:g} seed={SEED} "
        f"kills={chaos.kills} (mid-flight {chaos.kills_mid_flight}) "
        f"daemon_starts={sum(d.starts for d in daemons)} "
        f"pg={chaos.disruptions or ['none']} (calls again after "
        f"{_secs(chaos.dispatch_back_after)}, outcomes after {_secs(chaos.outcomes_back_after)}) "
        f"unexpected_exits={len(chaos.unexpected_exits)} "
        f"fault_share={fault_share:.1%} of {requests} service_start "
        f"({injected} injected: {by_kind}), "
        f"{polls_faulted / polls if polls else 0:.1%} of {polls} application_status "
        f"({dict(poll_faults)}), {overall_share:.1%} of all {all_requests} requests "
        f"calls_started={sim.started_count()} replayed={service_start['replayed']} "
        f"duplicates={len(duplicated)} lost={len(lost)} phantom={len(phantom)} "
        f"unrecorded={len(unrecorded)} wrong_cause={len(wrong_cause)} "
        f"parked={batches.get('parked', 0)} "
        f"states={dict(states)} batches={batches} campaign={campaign_state} "
        f"run={run_seconds:.1f}s wall={wall:.1f}s"
    )
    interesting = (
        "batch_taken_over",
        "batch_resending",
        "batch_send_failed",
        "batch_send_crashed",
        "batch_already_acknowledged",
        "batch_parked",
        "database_unavailable",
        "heartbeat_failed",
        "listen_connection_lost",
        "progress_failed",
        "poll_round_failed",
        "daemon_crashed",
    )
    print("daemon log events: " + ", ".join(f"{e}={events[e]}" for e in interesting))
    for line in chaos.unexpected_exits:
        print("unexpected exit:", line)
    for line in garbage[:10]:
        print("non-JSON log line:", line[:300])

    assert not chaos.unexpected_exits, "daemons gave up on their own (see above)"
    assert lost == [], f"{len(lost)} contacts not terminal: {lost[:10]}"
    assert duplicated == [], f"{len(duplicated)} contacts called twice: {duplicated[:10]}"
    assert phantom == [], f"{len(phantom)} attempts without a started call: {phantom[:10]}"
    assert unrecorded == [], f"{len(unrecorded)} started calls not in `calls`: {unrecorded[:10]}"
    assert db_references == sim_references, (
        f"{len(sim_references - db_references)} started calls unknown to the engine, "
        f"{len(db_references - sim_references)} recorded calls unknown to the simulator"
    )
    assert set(service_start) <= expected_outcomes, f"service_start answers: {service_start}"
    assert over_budget == [], f"more than {MAX_ATTEMPTS} calls: {over_budget[:10]}"
    assert misnumbered == [], f"attempt numbers with gaps or repeats: {misnumbered[:10]}"
    assert no_reason == [], f"terminal without a reason: {no_reason[:10]}"
    assert unfinished_calls == 0, f"{unfinished_calls} calls never got an outcome"
    assert wrong_cause == [], f"{len(wrong_cause)} outcomes not Aculab's: {wrong_cause[:10]}"
    assert batches.get("pending", 0) == 0, f"batches left pending: {batches}"
    assert batches.get("parked", 0) == 0, f"batches parked (1-hour window): {batches}"
    assert campaign_state == "completed"
    assert codes == [0] * len(codes), f"exit codes on SIGTERM: {codes}"
    assert events["daemon_crashed"] == 0
    assert not garbage, f"{len(garbage)} log lines are not JSON (tracebacks?)"

    # The chaos really happened.
    assert fault_share >= 0.25, f"only {fault_share:.1%} of service_start requests faulted"
    assert overall_share >= 0.25, f"only {overall_share:.1%} of all requests faulted"
    assert chaos.kills >= 3, f"only {chaos.kills} kills: the run was too short"
    assert chaos.kills_mid_flight >= 1, (
        f"none of the {chaos.kills} kills left a batch in flight: nothing was interrupted"
    )
    assert len(chaos.disruptions) == 1, "PostgreSQL was never restarted"
    assert states["completed"] > 0 and sum(states.values()) == CONTACTS
    assert sim.started_count() > CONTACTS, "no contact was retried"
