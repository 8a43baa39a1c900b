"""Soak: two daemons at a realistic rate through outages, a PostgreSQL restart and kills.

One campaign is dialled at 50 calls/s (the campaign's and the account's budget;
the simulator starts calls at 50/s too) by two `campaign run` daemons, real
subprocesses, against a scratch database on an embedded PostgreSQL of this
benchmark's own (so that it can be restarted) and the Aculab simulator, run in
this process on a fixed loopback port (so that its own record is at hand and
`go_down` / `come_back` refuse connections and accept them again on that port).
For `--minutes N` (default 10) the run goes through:

- repeated Aculab outages (connections refused), each 1 to 3 idempotency
  windows long (window 10 s, HTTP timeouts 1 + 2 s: outages of 10-30 s), each
  striking mid-request: the two requests before it have started their calls and
  their answers are held, then dropped when it goes down (those batches are in
  doubt and, past their window, parked legitimately);
- one PostgreSQL restart (`pg_ctl stop -m fast`, a few seconds down, start);
- daemon kills (SIGKILL, restarted 0.5-2 s later, as a supervisor would);
- malformed answers: a small share of service_start requests answered 200 with
  references that cannot be matched (shape `mixed`); these park their batch
  legitimately (the calls did start).

Then the faults stop and the daemons drain the campaign. What is left parked is
resolved as an operator would, with `campaign resolve ID --resend` through the
CLI (safe while Aculab remembers the id: a batch whose calls started gets its
original references back), and the daemons finish the campaign. Retries are
off (`retry_delays` {}, `max_attempts` 1), so each contact is called exactly
once: the verdict is read from the simulator's own record (calls per
destination, the requests that carried each unique_id) against the database.

Printed: calls started, contacts, contacts dialled; contacts called twice and
contacts lost (must be 0); batches parked, by cause, and those parked although
no send of theirs ever reached the simulator (must be 0); batches released and
whether any of their unique_ids started calls (must be none); the outages, kills
and the PostgreSQL restart as they happened; per daemon RSS, open file
descriptors and PostgreSQL connections at start and end; the daemons'
`aculab_unreachable` / `aculab_reachable` / `database_unavailable` lines. The last
line is the same as JSON. Exit status 1 if a must-be-zero figure is not zero, or
one of the checks printed with them: contacts still open at the end, contacts
whose calls at the simulator differ from their attempts or `calls` rows, a call
recorded under another contact's reference, batches parked again after the
re-send, a failed `campaign resolve`, a daemon that exited by itself or not 0
on SIGTERM, a log line that is not JSON. Progress goes to stderr every 30 s.
The daemons' logs are kept in --out.

    .venv/bin/python bench/soak.py [--minutes 10] [--seed N] [--out DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter, deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import asyncpg
import psutil
from scratch import create_scratch

from campaign.db.migrate import migrate
from campaign.db.pool import DatabaseUnavailable, connect
from campaign.runtime import DB_ERRORS
from campaign.simulator import Simulator, SimulatorConfig, destination_key

ROOT = Path(__file__).resolve().parents[1]
SERVICE = "SoakService"
PASSWORD = "soak-password"
API_KEY = "soak-api-key"
CALLER_ID = "441908273801"
DB_NAME = "soak"
DAEMONS = 2

CPS = 50
WINDOW = 10.0  # dispatcher.idempotency_window_seconds
CONNECT_TIMEOUT = 1.0
READ_TIMEOUT = 2.0
LEASE_SECONDS = 3.0  # a dead daemon's batch is taken over well inside the window
MALFORMED_SHARE = 0.003
# Each outage begins with this many requests on the wire (calls started, answer held):
# they are dropped when the simulator goes down, so their batches are in doubt.
ONSET_REQUESTS = 2
ONSET_LEAD_SECONDS = 1.0
PG_DOWN_SECONDS = 3.0
RESTART_AFTER = (0.5, 2.0)
OUTAGE_GAP = (40.0, 80.0)
PROGRESS_EVERY = 30.0
SAMPLE_EVERY = 5.0
STALL_SECONDS = 120.0  # the drain gives up when nothing moves for this long

TERMINAL = frozenset({"completed", "failed", "invalid", "suppressed", "duplicate", "cancelled"})
# What the benchmark's own queries may meet while PostgreSQL restarts.
RETRYABLE_DB = (
    *DB_ERRORS,
    asyncpg.exceptions.OperatorInterventionError,
    asyncpg.exceptions.InternalClientError,
    DatabaseUnavailable,
    OSError,
)


def say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def free_port(rng: random.Random) -> int:
    """A free loopback port below the ephemeral range, so that no outgoing connection
    takes it while the simulator is down and it can listen there again."""
    for _ in range(200):
        port = rng.randrange(20_000, 30_000)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise SystemExit("no free loopback port between 20000 and 30000")


# --- PostgreSQL of our own ---------------------------------------------------------------


class Postgres:
    """pgserver's embedded PostgreSQL, restarted to also listen on loopback TCP: the
    daemons connect over TCP, so pg_stat_activity's client_port tells whose each
    connection is."""

    def __init__(self, root: Path, port: int) -> None:
        self.pgdata = root / "pg" / "data"
        self.port = port
        self.server: Any = None
        self.socket_dir: Any = None

    @property
    def admin_dsn(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def start(self) -> None:
        from pgserver.postgres_server import get_server

        self.pgdata.parent.mkdir(parents=True)
        self.server = get_server(self.pgdata, cleanup_mode="delete")
        self.socket_dir = self.server.get_postmaster_info().socket_dir
        self.stop()
        self.start_again()

    def _ctl(self, *args: str) -> None:
        from pgserver._commands import POSTGRES_BIN_PATH

        try:
            subprocess.run(
                [str(POSTGRES_BIN_PATH / "pg_ctl"), "-D", str(self.pgdata), *args],
                check=True,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                user=self.server.system_user,
                timeout=120,
            )
        except subprocess.CalledProcessError as exc:
            tail = Path(self.server.log).read_text(errors="replace").splitlines()[-10:]
            raise RuntimeError(f"pg_ctl {' '.join(args)} failed: " + " | ".join(tail)) from exc

    def stop(self) -> None:
        self._ctl("-w", "-m", "fast", "stop")

    def start_again(self) -> None:
        from pgserver.utils import PostmasterInfo

        options = f"-h 127.0.0.1 -p {self.port} -k {self.socket_dir}"
        self._ctl("-w", "-o", options, "-l", str(self.server.log), "start")
        # pgserver stops (at cleanup) the postmaster it knows about: tell it about this one.
        self.server._postmaster_info = PostmasterInfo.read_from_pgdata(self.server.pgdata)

    def cleanup(self) -> None:
        if self.server is not None:
            self.server.cleanup()


async def fetch(dsn: str, query: str, *args: Any, patience: float = 60.0) -> list[asyncpg.Record]:
    """One query on a fresh connection, retried while PostgreSQL is away."""
    deadline = time.monotonic() + patience
    while True:
        try:
            conn = await connect(dsn, connect_timeout=3)
            try:
                return list(await conn.fetch(query, *args))
            finally:
                await conn.close()
        except RETRYABLE_DB:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.5)


class Watch:
    """The benchmark's own connection for frequent looks; None while PostgreSQL is away."""

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        self.conn: asyncpg.Connection[asyncpg.Record] | None = None

    async def fetch(self, query: str, *args: Any) -> list[asyncpg.Record] | None:
        try:
            if self.conn is None or self.conn.is_closed():
                self.conn = await connect(self.dsn, connect_timeout=2)
            return list(await self.conn.fetch(query, *args, timeout=10))
        except (*RETRYABLE_DB, TimeoutError):
            await self.close()
            return None

    async def close(self) -> None:
        conn, self.conn = self.conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(conn.close(), 2)


# --- daemons ---------------------------------------------------------------------------


@dataclass
class Sample:
    rss_mb: float | None
    fds: int | None
    pg_connections: int | None
    why: str = ""


@dataclass
class Proc:
    """One `campaign run` process of a daemon slot."""

    pid: int
    log: Path
    started: float  # monotonic
    ended: float | None = None
    end: str = ""  # killed / exit N / stopped N
    first: Sample | None = None
    last: Sample | None = None
    peak_rss_mb: float = 0.0


@dataclass
class Daemon:
    slot: int
    logdir: Path
    proc: asyncio.subprocess.Process | None = None
    history: list[Proc] = field(default_factory=list)
    killed: bool = False
    restart_at: float = 0.0

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.returncode is None

    @property
    def current(self) -> Proc:
        return self.history[-1]

    async def start(self, env: dict[str, str]) -> None:
        log = self.logdir / f"daemon{self.slot}-{len(self.history) + 1}.log"
        with log.open("wb") as out:
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "campaign", "run", env=env, cwd=ROOT, stdout=out, stderr=out
            )
        self.history.append(Proc(self.proc.pid, log, time.monotonic()))
        self.killed = False

    def running(self) -> bool:
        """Alive and past its start (listening: connected, migrated, tasks running)."""
        if not self.alive:
            return False
        with self.current.log.open("rb") as fh:
            return b'"listener_started"' in fh.read()


def process_sample(pid: int, pg_port: int, client_ports: set[int] | None) -> Sample:
    """RSS and open descriptors of `pid` (psutil), and how many of the scratch database's
    connections in pg_stat_activity (`client_ports`) come from its sockets."""
    try:
        proc = psutil.Process(pid)
        rss = proc.memory_info().rss / 2**20  # MB as bench/memory.py counts them (MiB)
        fds = proc.num_fds()
        mine = {
            c.laddr.port
            for c in proc.net_connections(kind="tcp")
            if c.raddr and c.raddr.port == pg_port and c.status == psutil.CONN_ESTABLISHED
        }
    except (psutil.Error, OSError) as exc:
        return Sample(None, None, None, why=f"psutil: {type(exc).__name__}")
    if client_ports is None:
        return Sample(rss, fds, None, why="pg_stat_activity unreadable (PostgreSQL away?)")
    return Sample(rss, fds, len(mine & client_ports))


async def client_ports(watch: Watch) -> set[int] | None:
    rows = await watch.fetch(
        "SELECT client_port FROM pg_stat_activity WHERE datname = $1 AND client_port > 0",
        DB_NAME,
    )
    return None if rows is None else {r["client_port"] for r in rows}


# --- the plan --------------------------------------------------------------------------


@dataclass
class Plan:
    seconds: float
    outages: list[tuple[float, float]]  # (start, duration) from the start of the run
    pg_restart_at: float
    kills: list[float]
    force_malformed_at: float


def make_plan(seconds: float, rng: random.Random) -> Plan:
    """Where the faults go: outages of 1-3 windows with quiet gaps between them, one
    PostgreSQL restart with no outage near it (so that its recovery is its own), and a
    kill every few tens of seconds except around the restart."""
    warmup = min(15.0, seconds * 0.2)
    pg_at = seconds * 0.55
    blocked = (pg_at - 8.0, pg_at + 25.0)
    outages: list[tuple[float, float]] = []
    for begin, end in ((warmup, blocked[0]), (blocked[1], seconds - 5.0)):
        # Jitter the first one only as far as still lets it fit (a 1-minute run has
        # room for one outage before the restart, and no more).
        t = begin + rng.uniform(0.0, max(0.0, min(5.0, end - begin - WINDOW)))
        while t + WINDOW <= end:
            duration = min(rng.uniform(1.0, 3.0) * WINDOW, end - t)
            outages.append((t, duration))
            t += duration + rng.uniform(*OUTAGE_GAP)
    kill_gap = max(20.0, seconds / 8)
    kills: list[float] = []
    t = warmup + 5.0 + rng.uniform(0.0, kill_gap / 2)
    while t < seconds - 5.0:
        if not pg_at - 15.0 <= t <= pg_at + 20.0:
            kills.append(t)
        t += kill_gap * rng.uniform(0.5, 1.5)
    if not kills:  # a short run: one kill after the restart has settled
        kills.append(min(seconds - 5.0, pg_at + 21.0))
    return Plan(seconds, outages, pg_at, kills, force_malformed_at=seconds * 0.4)


# --- the run ---------------------------------------------------------------------------


@dataclass
class PgRestart:
    began: float | None = None  # wall clock (time.time)
    back: float | None = None
    downtime: float | None = None
    calls_started_after: float | None = None
    calls_acknowledged_after: float | None = None
    note: str = ""


@dataclass
class Kill:
    at: float  # seconds into the run
    slot: int
    pid: int
    mid_flight: bool | None  # it left a pending batch of its own behind (None: unknown)
    during: str  # the fault under way, if any


@dataclass
class Run:
    args: argparse.Namespace
    sim: Simulator
    pg: Postgres
    dsn: str
    env: dict[str, str]
    daemons: list[Daemon]
    watch: Watch
    campaign_id: int
    contacts: int
    began: float = 0.0  # monotonic start of the faulty period
    began_wall: float = 0.0  # the same, wall clock
    kills: list[Kill] = field(default_factory=list)
    pg_restart: PgRestart = field(default_factory=PgRestart)
    unexpected_exits: list[str] = field(default_factory=list)
    outage_task: asyncio.Task[None] | None = None
    outage_no: int = 0
    pg_task: asyncio.Task[None] | None = None
    forced_malformed: int = 0
    last_progress: float = 0.0
    last_calls: int = 0

    def clock(self) -> float:
        return time.monotonic() - self.began

    @property
    def pg_busy(self) -> bool:
        return self.pg_task is not None and not self.pg_task.done()

    @property
    def outage_on(self) -> bool:
        return self.outage_task is not None and not self.outage_task.done()

    def fault(self) -> str:
        parts = []
        if self.outage_on:
            began = self.sim.outages[-1].began if self.sim.outages else time.time()
            parts.append(f"Aculab outage #{self.outage_no} ({time.time() - began:.0f}s in)")
        if self.pg_busy:
            parts.append("PostgreSQL restarting")
        dead = [str(d.slot) for d in self.daemons if not d.alive]
        if dead:
            parts.append("daemon " + ",".join(dead) + " killed")
        return "; ".join(parts) or "none"

    async def keep_daemons(self, restart_allowed: bool) -> None:
        """Restart killed daemons when due; note (and restart) any that exited by itself."""
        for d in self.daemons:
            if d.proc is not None and d.proc.returncode is not None and not d.killed:
                proc = d.current
                proc.ended, proc.end = time.monotonic(), f"exit {d.proc.returncode}"
                tail = " | ".join(proc.log.read_text(errors="replace").splitlines()[-3:])
                self.unexpected_exits.append(
                    f"daemon {d.slot} (pid {proc.pid}) exited {d.proc.returncode} at "
                    f"{self.clock():.0f}s: {tail[:400]}"
                )
                say(f"[soak] UNEXPECTED: {self.unexpected_exits[-1]}")
                d.killed, d.restart_at = True, time.monotonic() + 1.0
            if d.killed and restart_allowed and time.monotonic() >= d.restart_at:
                await d.start(self.env)

    async def kill(self, rng: random.Random) -> None:
        alive = [d for d in self.daemons if d.alive]
        if not alive:
            return
        victim = rng.choice(alive)
        assert victim.proc is not None
        proc = victim.current
        during = self.fault()
        # Its last look before it dies (the longest-lived process may be a killed one).
        proc.last = process_sample(proc.pid, self.pg.port, await client_ports(self.watch))
        proc.peak_rss_mb = max(proc.peak_rss_mb, proc.last.rss_mb or 0.0)
        victim.proc.kill()
        await victim.proc.wait()
        proc.ended, proc.end = time.monotonic(), "killed"
        victim.killed = True
        victim.restart_at = time.monotonic() + rng.uniform(*RESTART_AFTER)
        rows = await self.watch.fetch(
            "SELECT count(*) AS n FROM batches WHERE state = 'pending' AND owner LIKE $1",
            f"%:{proc.pid}:%",
        )
        mid_flight = None if rows is None else rows[0]["n"] > 0
        self.kills.append(Kill(round(self.clock(), 1), victim.slot, proc.pid, mid_flight, during))
        say(
            f"[soak] {self.clock():5.0f}s killed daemon {victim.slot} (pid {proc.pid}, "
            f"mid-flight: {mid_flight})"
        )

    async def outage(self, seconds: float) -> None:
        # It strikes mid-request: the next requests start their calls and their answers
        # are held (slow) until the simulator goes down and drops their connections.
        faults = self.sim.faults
        faults.slow_seconds = 30.0
        faults.force("slow", ONSET_REQUESTS)
        await asyncio.sleep(ONSET_LEAD_SECONDS)
        # Unused ones must not slow the first requests after it comes back.
        faults.forced = deque(kind for kind in faults.forced if kind != "slow")
        say(f"[soak] {self.clock():5.0f}s Aculab outage #{self.outage_no} for {seconds:.1f}s")
        await self.sim.outage(seconds)

    async def restart_postgres(self) -> None:
        r = self.pg_restart
        before = await fetch(self.dsn, "SELECT coalesce(max(id), 0) AS n FROM calls")
        last_call = before[0]["n"]
        say(f"[soak] {self.clock():5.0f}s PostgreSQL going down for {PG_DOWN_SECONDS:g}s")
        r.began = time.time()
        await asyncio.to_thread(self.pg.stop)
        await asyncio.sleep(PG_DOWN_SECONDS)
        await asyncio.to_thread(self.pg.start_again)
        r.back = time.time()
        r.downtime = r.back - r.began
        started_then = self.sim.started_count()
        say(f"[soak] {self.clock():5.0f}s PostgreSQL back after {r.downtime:.1f}s")
        # Recovery, with nobody touching the daemons: seconds until calls are started
        # at the simulator again, and until the daemons record a new call.
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and (
            r.calls_started_after is None or r.calls_acknowledged_after is None
        ):
            if r.calls_started_after is None and self.sim.started_count() > started_then:
                r.calls_started_after = time.time() - r.back
            if r.calls_acknowledged_after is None:
                rows = await self.watch.fetch(
                    "SELECT count(*) AS n FROM calls WHERE id > $1", last_call
                )
                if rows is not None and rows[0]["n"] > 0:
                    r.calls_acknowledged_after = time.time() - r.back
            await asyncio.sleep(0.1)
        if r.calls_started_after is None or r.calls_acknowledged_after is None:
            r.note = "no new call within 60 s of the restart"

    async def states(self) -> dict[str, int] | None:
        rows = await self.watch.fetch(
            "SELECT state, count(*) AS n FROM contacts WHERE campaign_id = $1 GROUP BY state",
            self.campaign_id,
        )
        return None if rows is None else {r["state"]: r["n"] for r in rows}

    async def progress(self, phase: str, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self.last_progress < PROGRESS_EVERY:
            return
        calls = self.sim.started_count()
        rate = (calls - self.last_calls) / max(1e-9, now - self.last_progress)
        self.last_progress, self.last_calls = now, calls
        states = await self.states()
        shown = "n/a (database away)" if states is None else json.dumps(states, sort_keys=True)
        say(
            f"[soak] {self.clock():5.0f}s {phase}: calls started {calls:,} ({rate:.1f}/s), "
            f"contacts {shown}, fault now: {self.fault()}, kills {len(self.kills)}, "
            f"outages {len(self.sim.outages)}"
        )

    async def sample_daemons(self, which: str | None = None) -> None:
        """Peak RSS of every live process, its first sample once it runs, and with
        `which="last"` its last."""
        ports = await client_ports(self.watch)
        for d in self.daemons:
            if not d.alive:
                continue
            proc = d.current
            s = process_sample(proc.pid, self.pg.port, ports)
            if s.rss_mb is not None:
                proc.peak_rss_mb = max(proc.peak_rss_mb, s.rss_mb)
            if proc.first is None and d.running():
                proc.first = s
            if which == "last":
                proc.last = s


async def faulty_period(run: Run, plan: Plan, rng: random.Random) -> None:
    outages = list(plan.outages)
    kills = list(plan.kills)
    pg_due = True
    last_sample = 0.0
    run.last_progress, run.last_calls = time.monotonic(), run.sim.started_count()
    while run.clock() < plan.seconds:
        now = run.clock()
        await run.keep_daemons(restart_allowed=not run.pg_busy)
        if outages and now >= outages[0][0] and not run.outage_on and not run.pg_busy:
            _, seconds = outages.pop(0)
            run.outage_no += 1
            run.outage_task = asyncio.create_task(run.outage(seconds))
        if (
            pg_due
            and now >= plan.pg_restart_at
            and not run.outage_on
            and all(d.running() for d in run.daemons)
        ):
            pg_due = False
            run.pg_task = asyncio.create_task(run.restart_postgres())
        if kills and now >= kills[0] and not run.pg_busy and not pg_due_soon(run, plan, pg_due):
            kills.pop(0)
            await run.kill(rng)
        if (
            not run.forced_malformed
            and now >= plan.force_malformed_at
            and run.sim.request_count("service_start", "malformed") == 0
            and not run.outage_on
        ):
            # The share is small: make sure a short run sees one unusable answer too.
            run.sim.faults.force("malformed")
            run.forced_malformed = 1
        if time.monotonic() - last_sample >= SAMPLE_EVERY:
            last_sample = time.monotonic()
            await run.sample_daemons()
        await run.progress("faults")
        await asyncio.sleep(0.2)


def pg_due_soon(run: Run, plan: Plan, pg_due: bool) -> bool:
    """No kill just before the restart: a daemon (re)starting into a stopped server
    exits 1 by design (docs/operations.md), which is its supervisor's business, not the engine's."""
    return pg_due and run.clock() >= plan.pg_restart_at - 10.0


async def wait_until(
    run: Run, phase: str, done: Callable[[dict[str, Any]], Awaitable[bool]]
) -> tuple[bool, float]:
    """Wait until `done(snapshot)` holds, restarting daemons that exit; gives up after
    STALL_SECONDS without any contact changing state. (reached, seconds)"""
    began = time.monotonic()
    last_change, last_seen = time.monotonic(), None
    while True:
        await run.keep_daemons(restart_allowed=True)
        snap = await snapshot(run)
        if snap is not None:
            if await done(snap):
                return True, time.monotonic() - began
            seen = (snap["states"], snap["batches"], run.sim.started_count())
            if seen != last_seen:
                last_seen, last_change = seen, time.monotonic()
        if time.monotonic() - last_change > STALL_SECONDS:
            return False, time.monotonic() - began
        await run.progress(phase)
        await asyncio.sleep(0.5)


async def snapshot(run: Run) -> dict[str, Any] | None:
    states = await run.states()
    rows = await run.watch.fetch("SELECT state, count(*) AS n FROM batches GROUP BY state")
    parked_contacts = await run.watch.fetch(
        "SELECT count(*) AS n FROM contacts c JOIN batches b ON b.id = c.batch_id "
        "WHERE c.state = 'dispatching' AND b.state = 'parked'"
    )
    campaign = await run.watch.fetch("SELECT state FROM campaigns WHERE id = $1", run.campaign_id)
    if states is None or rows is None or parked_contacts is None or campaign is None:
        return None
    return {
        "states": states,
        "batches": {r["state"]: r["n"] for r in rows},
        "parked_contacts": parked_contacts[0]["n"],
        "campaign": campaign[0]["state"],
    }


async def drained(snap: dict[str, Any]) -> bool:
    """Nothing left to do but the parked batches."""
    s = snap["states"]
    open_ = s.get("pending", 0) + s.get("dialing", 0) + s.get("dispatching", 0)
    return snap["batches"].get("pending", 0) == 0 and open_ == snap["parked_contacts"]


async def finished(snap: dict[str, Any]) -> bool:
    s = snap["states"]
    return not any(s.get(k) for k in ("pending", "dialing", "dispatching")) and (
        snap["campaign"] == "completed"
    )


async def resolve_parked(run: Run) -> list[dict[str, Any]]:
    """`campaign resolve ID --resend` for every parked batch, as an operator would."""
    rows = await fetch(run.dsn, "SELECT id FROM batches WHERE state = 'parked' ORDER BY id")
    done = []
    for row in rows:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "campaign",
            "resolve",
            str(row["id"]),
            "--resend",
            "--reason",
            "soak benchmark: re-sent under its unique_id",
            env=run.env,
            cwd=ROOT,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await proc.communicate()
        done.append(
            {
                "batch_id": row["id"],
                "exit": proc.returncode,
                "output": (out + err).decode(errors="replace").strip()[-300:],
            }
        )
    return done


# --- the verdict -----------------------------------------------------------------------


def ts(value: str) -> float:
    return datetime.fromisoformat(value).timestamp()


def read_events(
    daemons: list[Daemon],
) -> tuple[list[tuple[int, int, str, float, dict[str, Any]]], int]:
    """(slot, process number, event, time, line) for every JSON log line; non-JSON lines."""
    events = []
    garbage = 0
    for d in daemons:
        for n, proc in enumerate(d.history, 1):
            text = proc.log.read_text(errors="replace")
            lines = text.splitlines()
            if proc.end == "killed" and text and not text.endswith("\n"):
                lines.pop()  # a line SIGKILL cut short is the kill's, not the logger's
            for line in lines:
                if not line.strip():
                    continue
                try:
                    body = json.loads(line)
                    events.append((d.slot, n, body["event"], ts(body["ts"]), body))
                except (ValueError, KeyError, TypeError):
                    garbage += 1
    return events, garbage


def classify_parked(
    run: Run, parked: list[asyncpg.Record], outages: list[tuple[float, float]]
) -> list[dict[str, Any]]:
    """Why each parked batch was parked, from the simulator's record of its unique_id."""
    out = []
    for b in parked:
        uid = b["unique_id"]
        requests = run.sim.requests_with(uid)
        outcomes = [r.outcome for r in requests]
        created = b["created_at"].timestamp()
        near_outage = any(
            begin <= created + WINDOW + 5 and created <= end for begin, end in outages
        )
        if "malformed" in outcomes:
            cause = "unusable answer"
        elif not requests:
            cause = "never reached Aculab"
        elif near_outage:
            cause = "in doubt after an outage"
        else:
            cause = "in doubt, no outage"
        out.append(
            {
                "batch_id": b["id"],
                "unique_id": uid,
                "cause": cause,
                "contacts": len(b["contact_ids"]),
                "in_doubt": b["in_doubt"],
                "requests_seen": outcomes,
                "calls_started": run.sim.first_start(uid) is not None,
                "engine_reason": (b["last_error"] or "")[:300],
                "raw_answer": b["raw_answer"] is not None,
            }
        )
    return out


def fmt(value: float | None, unit: str = "", digits: int = 1, why: str = "") -> str:
    if value is None:
        return f"n/a ({why})" if why else "n/a"
    return f"{value:.{digits}f}{unit}"


def sample_json(s: Sample | None) -> dict[str, Any] | None:
    if s is None:
        return None
    return {
        "rss_mb": None if s.rss_mb is None else round(s.rss_mb, 1),
        "fds": s.fds,
        "pg_connections": s.pg_connections,
        "why_missing": s.why or None,
    }


def sample_text(s: Sample | None) -> tuple[str, str, str]:
    if s is None:
        return "n/a (not sampled)", "n/a (not sampled)", "n/a (not sampled)"
    why = s.why or "not measured"
    return (
        fmt(s.rss_mb, " MB", why=why),
        str(s.fds) if s.fds is not None else f"n/a ({why})",
        str(s.pg_connections) if s.pg_connections is not None else f"n/a ({why})",
    )


async def verdict(
    run: Run,
    plan: Plan,
    parked: list[dict[str, Any]],
    resolutions: list[dict[str, Any]],
    drain: tuple[bool, float],
    finish: tuple[bool, float],
    exit_codes: list[int | None],
    wall: float,
) -> int:
    sim = run.sim
    contacts = await fetch(
        run.dsn,
        "SELECT c.id, c.destination, c.state, c.attempts, c.last_error, "
        "       coalesce(array_agg(k.reference) FILTER (WHERE k.id IS NOT NULL), '{}') AS refs "
        "FROM contacts c LEFT JOIN calls k ON k.contact_id = c.id "
        "WHERE c.campaign_id = $1 GROUP BY c.id",
        run.campaign_id,
    )
    released = await fetch(
        run.dsn, "SELECT unique_id FROM batches WHERE state = 'released' ORDER BY id"
    )
    batch_states = {
        r["state"]: r["n"]
        for r in await fetch(run.dsn, "SELECT state, count(*) AS n FROM batches GROUP BY state")
    }
    unfinished_calls = (
        await fetch(run.dsn, "SELECT count(*) AS n FROM calls WHERE finished_at IS NULL")
    )[0]["n"]

    twice = lost = open_ = mismatched = wrong_refs = dialled = attempts_recorded = 0
    examples: dict[str, list[str]] = {}

    def note(kind: str, text: str) -> None:
        examples.setdefault(kind, [])
        if len(examples[kind]) < 5:
            examples[kind].append(text)

    states: Counter[str] = Counter()
    for c in contacts:
        states[c["state"]] += 1
        started = sim.calls_to(c["destination"])
        who = f"contact {c['id']} {c['state']} started={started} attempts={c['attempts']}"
        dialled += started > 0
        attempts_recorded += c["attempts"] > 0
        if started > 1:
            twice += 1
            note("called twice", who)
        terminal = c["state"] in TERMINAL and (
            c["state"] == "completed" or bool((c["last_error"] or "").strip())
        )
        if started == 0 and not terminal:
            lost += 1
            note("lost", f"{who} last_error={c['last_error']!r}")
        if c["state"] not in TERMINAL:
            open_ += 1
            note("open at the end", f"{who} last_error={(c['last_error'] or '')[:200]!r}")
        if started != c["attempts"] or started != len(c["refs"]):
            mismatched += 1
            note("records disagree", f"{who} calls_rows={len(c['refs'])}")
        key = destination_key(c["destination"])
        for ref in c["refs"]:
            try:
                to = destination_key(sim.call(ref).to)
            except KeyError:
                to = "(unknown to the simulator)"
            if to != key:
                wrong_refs += 1
                note("wrong reference", f"{who} reference {ref} is a call to {to}")

    released_started = [r["unique_id"] for r in released if sim.first_start(r["unique_id"])]
    released_seen = [r["unique_id"] for r in released if sim.requests_with(r["unique_id"])]
    causes = Counter(p["cause"] for p in parked)
    never_reached = causes["never reached Aculab"]
    reparked = batch_states.get("parked", 0)
    resolve_failures = [r for r in resolutions if r["exit"] != 0]

    # --- events --------------------------------------------------------------------
    events, garbage = read_events(run.daemons)
    by_event: Counter[str] = Counter(e[2] for e in events)
    per_slot: dict[str, dict[int, int]] = {}
    for name in ("aculab_unreachable", "aculab_reachable", "database_unavailable"):
        per_slot[name] = {d.slot: 0 for d in run.daemons}
        for slot, _, event, _, _ in events:
            if event == name:
                per_slot[name][slot] += 1
    outage_list = [(o.began, o.ended if o.ended is not None else time.time()) for o in sim.outages]
    per_outage = []
    for i, (begin, end) in enumerate(outage_list, 1):
        row: dict[str, Any] = {"outage": i, "seconds": round(end - begin, 1)}
        for slot in range(len(run.daemons)):
            row[f"d{slot}_unreachable"] = sum(
                1
                for s, _, ev, t, _ in events
                if s == slot and ev == "aculab_unreachable" and begin - 1 <= t <= end + 1
            )
            row[f"d{slot}_reachable"] = sum(
                1
                for s, _, ev, t, _ in events
                if s == slot and ev == "aculab_reachable" and begin <= t <= end + 15
            )
            # A process killed during the outage, or before its next probe found Aculab
            # back, logs no aculab_reachable; its successor logs a pair of its own if
            # it meets the outage too.
            row[f"d{slot}_killed"] = sum(
                1
                for k in run.kills
                if k.slot == slot and begin <= run.began_wall + k.at <= end + 15
            )
        per_outage.append(row)
    db_by_task = Counter(
        str(body.get("task")) for _, _, ev, _, body in events if ev == "database_unavailable"
    )
    unreachable_outside = sum(
        1
        for _, _, ev, t, _ in events
        if ev == "aculab_unreachable"
        and not any(begin - 1 <= t <= end + 1 for begin, end in outage_list)
    )
    refused_sends = sum(
        1
        for _, _, ev, _, body in events
        if ev == "batch_send_failed" and "cannot connect" in str(body.get("error", ""))
    )

    # What the engine said about each parked batch's sends, and what its re-send found.
    for b in parked:
        failures = []
        for _, _, ev, t, body in events:
            if ev == "batch_send_failed" and body.get("batch_id") == b["batch_id"]:
                nearest = min(outage_list, key=lambda o: abs(t - o[0]), default=None)
                failures.append(
                    (
                        t,
                        {
                            "error": body.get("error"),
                            "s_after_nearest_outage_began": (
                                None if nearest is None else round(t - nearest[0], 2)
                            ),
                        },
                    )
                )
        b["engine_send_failures"] = [f for _, f in sorted(failures, key=lambda x: x[0])]
        b["requests_after_resolving"] = [
            r.outcome for r in sim.requests_with(b["unique_id"])[len(b["requests_seen"]) :]
        ]

    # --- daemons -------------------------------------------------------------------
    daemons_out = []
    for d in run.daemons:
        first, last = d.history[0], d.history[-1]
        longest = max(d.history, key=lambda p: (p.ended or time.monotonic()) - p.started)
        daemons_out.append(
            {
                "slot": d.slot,
                "processes": len(d.history),
                "start": sample_json(first.first),
                "end": sample_json(last.last),
                "end_process_uptime_s": round((last.ended or time.monotonic()) - last.started),
                "longest_lived": {
                    "pid": longest.pid,
                    "uptime_s": round((longest.ended or time.monotonic()) - longest.started),
                    "first": sample_json(longest.first),
                    "last": sample_json(longest.last),
                    "peak_rss_mb": round(longest.peak_rss_mb, 1),
                    "ended": longest.end or "running",
                },
                "peak_rss_mb": round(max(p.peak_rss_mb for p in d.history), 1),
            }
        )

    checks = {
        "contacts_called_twice": twice,
        "contacts_lost": lost,
        "parked_never_reached_aculab": never_reached,
        "released_batches_that_started_calls": len(released_started),
        # Also fail the run (the campaign must finish and the records must agree):
        "contacts_open_at_the_end": open_,
        "contacts_whose_calls_differ_from_their_records": mismatched,
        "calls_recorded_under_another_contacts_reference": wrong_refs,
        "batches_still_parked_after_resolving": reparked,
        "resolve_commands_failed": len(resolve_failures),
        "daemons_exited_on_their_own": len(run.unexpected_exits),
        "daemon_exit_codes_not_0_on_sigterm": sum(1 for c in exit_codes if c != 0),
        "non_json_log_lines": garbage,
    }
    outages = [round(end - begin, 1) for begin, end in outage_list]
    pg = run.pg_restart
    malformed = sim.request_count("service_start", "malformed")
    result: dict[str, Any] = {
        "minutes": run.args.minutes,
        "seed": run.args.seed,
        "daemons": DAEMONS,
        "cps": CPS,
        "batch_size": run.args.batch_size,
        "idempotency_window_s": WINDOW,
        "calls_started": sim.started_count(),
        "contacts": len(contacts),
        "contacts_dialled": dialled,
        "contacts_with_an_attempt_recorded": attempts_recorded,
        "contact_states": dict(states),
        "service_start_requests": dict(
            Counter({o: n for (ep, o), n in sim.requests.items() if ep == "service_start"})
        ),
        "batches": batch_states,
        "parked": {
            "total": len(parked),
            "in_doubt_after_an_outage": causes["in doubt after an outage"],
            "unusable_answer": causes["unusable answer"],
            "in_doubt_without_an_outage": causes["in doubt, no outage"],
            "never_reached_aculab": never_reached,
            "calls_had_started": sum(1 for p in parked if p["calls_started"]),
            "detail": parked,
        },
        "released": {
            "total": len(released),
            "unique_ids_that_started_calls": released_started,
            "unique_ids_seen_by_the_simulator": len(released_seen),
        },
        "resolutions": resolutions,
        "outages": {"count": len(outages), "seconds": outages, "total_s": round(sum(outages), 1)},
        "malformed_answers": {"count": malformed, "forced": run.forced_malformed},
        "requests_dropped_by_an_outage": sim.request_count("service_start", "slow"),
        "plan": {
            "outages": [[round(t, 1), round(d, 1)] for t, d in plan.outages],
            "pg_restart_at": round(plan.pg_restart_at, 1),
            "kills_at": [round(t, 1) for t in plan.kills],
        },
        "kills": [k.__dict__ for k in run.kills],
        "postgres_restart": {
            "downtime_s": None if pg.downtime is None else round(pg.downtime, 2),
            "calls_started_again_after_s": (
                None if pg.calls_started_after is None else round(pg.calls_started_after, 2)
            ),
            "calls_recorded_again_after_s": (
                None
                if pg.calls_acknowledged_after is None
                else round(pg.calls_acknowledged_after, 2)
            ),
            "note": pg.note or None,
        },
        "daemon_processes": daemons_out,
        "events": {
            "aculab_unreachable": per_slot["aculab_unreachable"],
            "aculab_reachable": per_slot["aculab_reachable"],
            "database_unavailable": per_slot["database_unavailable"],
            "database_unavailable_by_task": dict(db_by_task),
            "per_outage": per_outage,
            "aculab_unreachable_outside_outages": unreachable_outside,
            "service_start_refused_sends_logged": refused_sends,
            "batch_parked": by_event["batch_parked"],
            "batch_released": by_event["batch_released"],
            "batch_taken_over": by_event["batch_taken_over"],
            "daemon_crashed": by_event["daemon_crashed"],
            "dispatcher_failed": by_event["dispatcher_failed"],
        },
        "unexpected_exits": run.unexpected_exits,
        "unfinished_calls": unfinished_calls,
        "drain": {"reached": drain[0], "seconds": round(drain[1], 1)},
        "finish": {"reached": finish[0], "seconds": round(finish[1], 1)},
        "exit_codes_on_sigterm": exit_codes,
        "wall_s": round(wall, 1),
        "examples": examples,
        "checks": checks,
        "logs": str(run.args.out),
    }

    # --- plain lines ---------------------------------------------------------------
    p = print
    p(
        f"soak: {run.args.minutes:g} min of faults, {DAEMONS} daemons, {CPS} calls/s "
        f"(campaign, account and simulator), batches of {run.args.batch_size}, idempotency "
        f"window {WINDOW:g}s, HTTP timeouts {CONNECT_TIMEOUT:g}+{READ_TIMEOUT:g}s, "
        f"seed {run.args.seed}; wall {wall:.0f}s (drain {drain[1]:.0f}s, "
        f"finish after resolving {finish[1]:.0f}s)"
    )
    p(f"calls started (simulator): {sim.started_count():,}")
    p(f"contacts: {len(contacts):,}; dialled (simulator, distinct destinations): {dialled:,}")
    p(f"contact states at the end: {dict(sorted(states.items()))}")
    p(f"contacts called twice: {twice} (must be 0)")
    p(f"contacts lost (never called, not terminal with a reason): {lost} (must be 0)")
    p(
        f"batches parked: {len(parked)} = in doubt after an outage "
        f"{causes['in doubt after an outage']} + unusable answer {causes['unusable answer']}"
        f" + in doubt without an outage {causes['in doubt, no outage']} + never reached "
        f"Aculab {never_reached} (must be 0); calls had started for "
        f"{result['parked']['calls_had_started']} of them"
    )
    p(
        f"resolved with `campaign resolve ID --resend`: {len(resolutions)} "
        f"({len(resolve_failures)} failed); still parked after that: {reparked}"
    )
    p(
        f"batches released (never reached Aculab): {len(released)}; their unique_ids that "
        f"started calls at the simulator: {len(released_started) or 'none'} (must be none); "
        f"seen at all by the simulator: {len(released_seen)}"
    )
    p(f"outages injected: {len(outages)}, durations {outages} s (total {sum(outages):.0f}s)")
    p(
        f"malformed answers injected (shape mixed, share {MALFORMED_SHARE:g}): {malformed}"
        + (
            " (one of them forced: none had come by chance in the first 40 % of the run)"
            if run.forced_malformed
            else ""
        )
    )
    p(
        f"requests on the wire when an outage struck (calls started, answer dropped): "
        f"{sim.request_count('service_start', 'slow')}"
    )
    mid = sum(1 for k in run.kills if k.mid_flight)
    p(f"daemon kills (SIGKILL): {len(run.kills)} ({mid} with a batch of their own in flight)")
    p(
        f"PostgreSQL restart: down {fmt(pg.downtime, 's', why=pg.note)}; calls started again "
        f"{fmt(pg.calls_started_after, 's', 2, why=pg.note or 'not seen')} and recorded again "
        f"{fmt(pg.calls_acknowledged_after, 's', 2, why=pg.note or 'not seen')} after it was back"
    )
    for d, out in zip(run.daemons, daemons_out, strict=True):
        first, last = d.history[0].first, d.history[-1].last
        (r0, f0, c0), (r1, f1, c1) = sample_text(first), sample_text(last)
        lp = out["longest_lived"]
        p(
            f"daemon {d.slot}: {out['processes']} processes; start (first process) RSS {r0}, "
            f"fds {f0}, PostgreSQL connections {c0}; end (last process, up "
            f"{out['end_process_uptime_s']}s) RSS {r1}, fds {f1}, PostgreSQL connections {c1}; "
            f"longest-lived process {lp['pid']} ({lp['uptime_s']}s): RSS "
            f"{(lp['first'] or {}).get('rss_mb')} -> {(lp['last'] or {}).get('rss_mb')} MB, "
            f"fds {(lp['first'] or {}).get('fds')} -> {(lp['last'] or {}).get('fds')}, "
            f"peak {lp['peak_rss_mb']} MB"
        )
    p(
        "log events: aculab_unreachable "
        + " ".join(f"d{s}={n}" for s, n in per_slot["aculab_unreachable"].items())
        + ", aculab_reachable "
        + " ".join(f"d{s}={n}" for s, n in per_slot["aculab_reachable"].items())
        + f" ({len(outages)} outages x {DAEMONS} daemons = {len(outages) * DAEMONS} pairs "
        f"expected; {refused_sends} refused sends logged; {unreachable_outside} "
        "aculab_unreachable outside any outage), database_unavailable "
        + " ".join(f"d{s}={n}" for s, n in per_slot["database_unavailable"].items())
        + f" (by task: {dict(sorted(db_by_task.items()))})"
    )
    for row in per_outage:
        p("  " + " ".join(f"{k}={v}" for k, v in row.items()))
    for b in parked:
        if b["cause"] == "never reached Aculab":
            p(
                f"  parked, never reached Aculab: batch {b['batch_id']} ({b['unique_id']}): "
                f"no request of the simulator's carries its unique_id; the engine's sends "
                f"failed with {[f['error'] for f in b['engine_send_failures']]} at "
                f"{[f['s_after_nearest_outage_began'] for f in b['engine_send_failures']]} s "
                f"from the start of the nearest outage; after `resolve --resend` the "
                f"simulator answered {b['requests_after_resolving']}"
            )
    for kind, lines in examples.items():
        for line in lines:
            p(f"  e.g. {kind}: {line}")
    for line in run.unexpected_exits:
        p(f"  unexpected exit: {line}")
    failed = {k: v for k, v in checks.items() if v}
    p(
        "RESULT: "
        + ("every must-be-zero figure is 0" if not failed else f"NOT ZERO: {failed}")
        + f"; logs in {run.args.out}"
    )
    print(json.dumps(result, default=str), flush=True)
    return 1 if failed else 0


# --- set-up and the whole run ------------------------------------------------------------


async def prepare(dsn: str, contacts: int, batch_size: int) -> int:
    conn = await connect(dsn, command_timeout=None)
    try:
        await migrate(conn)
        # One attempt per contact (no retry delays, max_attempts 1), any hour, and a
        # concurrency cap that never holds 50 calls/s back with poll-only outcomes.
        campaign_id: int = await conn.fetchval(
            "INSERT INTO campaigns (name, service_name, caller_id, batch_size, "
            " calls_per_second, max_concurrent_calls, max_attempts, retry_delays, "
            " window_start, window_end) "
            "VALUES ('soak', $1, $2, $3, $4, 1000, 1, '{}', '00:00', '24:00') RETURNING id",
            SERVICE,
            CALLER_ID,
            batch_size,
            float(CPS),
        )
        await conn.copy_records_to_table(
            "contacts",
            records=[(campaign_id, str(441908200000 + i)) for i in range(contacts)],
            columns=["campaign_id", "destination"],
        )
        await conn.execute("ANALYZE contacts")
    finally:
        await conn.close()
    return campaign_id


def daemon_env(sim: Simulator, dsn: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CAMPAIGN_")}
    env.update(
        {
            "CAMPAIGN_DATABASE__DSN": dsn,
            "CAMPAIGN_ACULAB__BASE_URL": sim.base_url,
            "CAMPAIGN_ACULAB__CLOUD_ID": sim.config.cloud_id,
            "CAMPAIGN_ACULAB__USERNAME": sim.config.username,
            "CAMPAIGN_ACULAB__API_ACCESS_KEY": API_KEY,
            "CAMPAIGN_ACULAB__CALLS_PER_SECOND": str(CPS),
            "CAMPAIGN_ACULAB__SERVICE_PASSWORDS": json.dumps({SERVICE: PASSWORD}),
            "CAMPAIGN_DISPATCHER__IDEMPOTENCY_WINDOW_SECONDS": f"{WINDOW:g}",
            "CAMPAIGN_DISPATCHER__LEASE_SECONDS": f"{LEASE_SECONDS:g}",
            "CAMPAIGN_DISPATCHER__POLL_INTERVAL": "0.5",
            "CAMPAIGN_DISPATCHER__RETRY_INITIAL_DELAY": "0.5",
            "CAMPAIGN_DISPATCHER__RETRY_MAX_DELAY": "2",
            "CAMPAIGN_DISPATCHER__PROGRESS_INTERVAL": "10",
            "CAMPAIGN_HTTP__CONNECT_TIMEOUT": f"{CONNECT_TIMEOUT:g}",
            "CAMPAIGN_HTTP__READ_TIMEOUT": f"{READ_TIMEOUT:g}",
            "CAMPAIGN_LISTENER__PORT": "0",
            # Outcomes by polling only (no final page): calls are short.
            "CAMPAIGN_POLLER__FIRST_POLL_DELAY": "2",
            "CAMPAIGN_POLLER__INTERVAL": "1",
            "CAMPAIGN_POLLER__MAX_INTERVAL": "4",
        }
    )
    return env


async def stop_daemon(d: Daemon) -> int | None:
    if not d.alive:
        return None if d.proc is None else d.proc.returncode
    assert d.proc is not None
    d.proc.terminate()
    try:
        code = await asyncio.wait_for(d.proc.wait(), 20)
    except TimeoutError:
        d.proc.kill()
        await d.proc.wait()
        code = None
    d.current.ended, d.current.end = time.monotonic(), f"stopped {code}"
    return code


async def soak(args: argparse.Namespace) -> int:
    wall_began = time.monotonic()
    rng = random.Random(args.seed)
    plan = make_plan(args.minutes * 60.0, rng)
    contacts = math.ceil(CPS * args.minutes * 60 * 1.1)
    args.out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="soak-pg-"))
    pg = Postgres(work, free_port(rng))
    sim = Simulator(
        SimulatorConfig(
            api_access_key=API_KEY,
            service_passwords={SERVICE: PASSWORD},
            calls_per_second=CPS,
            seed=args.seed,
        )
    )
    sim.faults.malformed = MALFORMED_SHARE
    sim.faults.malformed_shape = "mixed"
    say(
        f"[soak] plan: {len(plan.outages)} outages "
        f"{[(round(t), round(d, 1)) for t, d in plan.outages]}, PostgreSQL restart at "
        f"{plan.pg_restart_at:.0f}s, kills at {[round(t) for t in plan.kills]}; "
        f"{contacts:,} contacts; logs in {args.out}"
    )
    daemons: list[Daemon] = []
    watch: Watch | None = None
    run: Run | None = None
    try:
        await asyncio.to_thread(pg.start)
        dsn = await create_scratch(pg.admin_dsn, DB_NAME)
        campaign_id = await prepare(dsn, contacts, args.batch_size)
        await sim.start("127.0.0.1", free_port(rng))
        env = daemon_env(sim, dsn)
        daemons = [Daemon(i, args.out) for i in range(DAEMONS)]
        watch = Watch(dsn)
        run = Run(args, sim, pg, dsn, env, daemons, watch, campaign_id, contacts)
        for d in daemons:
            await d.start(env)
        deadline = time.monotonic() + 60
        while not all(d.running() for d in daemons):
            if time.monotonic() > deadline or not all(d.alive for d in daemons):
                tails = [d.current.log.read_text(errors="replace")[-500:] for d in daemons]
                raise SystemExit(f"the daemons did not start: {tails}")
            await asyncio.sleep(0.2)
        run.began, run.began_wall = time.monotonic(), time.time()
        await run.sample_daemons()

        await faulty_period(run, plan, rng)
        # No more faults: malformed answers off, the last outage and restart end.
        sim.faults.reset()
        for task in (run.outage_task, run.pg_task):
            if task is not None:
                await task
        say(f"[soak] {run.clock():5.0f}s faults over; draining")
        await run.progress("drain", force=True)

        async def drained_and_sampled(snap: dict[str, Any]) -> bool:
            await run.sample_daemons()
            return await drained(snap)

        drain = await wait_until(run, "drain", drained_and_sampled)
        parked_rows = await fetch(
            dsn,
            "SELECT id, unique_id, in_doubt, last_error, raw_answer, created_at, contact_ids "
            "FROM batches WHERE state = 'parked' ORDER BY id",
        )
        outage_spans = [
            (o.began, o.ended if o.ended is not None else time.time()) for o in sim.outages
        ]
        parked = classify_parked(run, parked_rows, outage_spans)
        say(f"[soak] {run.clock():5.0f}s drained ({drain}); resolving {len(parked)} parked")
        resolutions = await resolve_parked(run)

        async def all_done(snap: dict[str, Any]) -> bool:
            await run.sample_daemons()
            if await finished(snap):
                return True
            return snap["batches"].get("parked", 0) > 0 and await drained(snap)

        finish = await wait_until(run, "finish", all_done)
        await run.progress("finished", force=True)
        await run.sample_daemons("last")
        exit_codes = [await stop_daemon(d) for d in daemons]
        return await verdict(
            run,
            plan,
            parked,
            resolutions,
            drain,
            finish,
            exit_codes,
            time.monotonic() - wall_began,
        )
    finally:
        if run is not None and run.pg_task is not None and not run.pg_task.done():
            # Never delete the cluster under a restart that is still going on.
            with contextlib.suppress(Exception):
                await run.pg_task
        for d in daemons:
            if d.alive:
                assert d.proc is not None
                d.proc.kill()
                await d.proc.wait()
        if watch is not None:
            await watch.close()
        await sim.stop()
        await asyncio.to_thread(pg.cleanup)
        shutil.rmtree(work, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0, help="minutes of faults")
    parser.add_argument("--seed", type=int, default=None, help="random by default (printed)")
    parser.add_argument("--batch-size", type=int, default=10, help="calls per request")
    parser.add_argument("--out", type=Path, default=None, help="where the daemons' logs go")
    args = parser.parse_args()
    if not 1 <= args.minutes <= 120 or not 1 <= args.batch_size <= 100:
        parser.error("need 1 <= --minutes <= 120 and 1 <= --batch-size <= 100")
    if args.seed is None:
        args.seed = random.SystemRandom().randrange(1_000_000)
    if args.out is None:
        args.out = Path(tempfile.gettempdir()) / f"soak-{time.strftime('%Y%m%d-%H%M%S')}"
    return asyncio.run(soak(args))


if __name__ == "__main__":
    raise SystemExit(main())
