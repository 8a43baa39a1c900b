"""What the benchmarks share: throw-away databases on the server behind `admin_dsn`,
the simulator and the daemon as their own processes, and their CPU time."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from pathlib import Path

import psutil

from campaign.db.demo_queries import drop_database, recreate_database
from campaign.db.pool import connect, dsn_with_database

ROOT = Path(__file__).resolve().parents[1]


async def create_scratch(admin_dsn: str, name: str) -> str:
    """A fresh, empty database `name` (dropped first if it exists); returns its DSN."""
    conn = await connect(admin_dsn)
    try:
        await recreate_database(conn, name)
    finally:
        await conn.close()
    return dsn_with_database(admin_dsn, name)


async def drop_scratch(admin_dsn: str, name: str) -> None:
    conn = await connect(admin_dsn)
    try:
        await drop_database(conn, name)
    finally:
        await conn.close()


async def start_simulator(
    service: str,
    password: str,
    *,
    api_key: str | None = None,
    cps: int = 1_000_000,
    max_list_length: int = 1000,
) -> tuple[asyncio.subprocess.Process, str]:
    """`campaign simulator` on a free loopback port; returns it and its base URL."""
    extra = ["--api-key", api_key] if api_key is not None else []
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "campaign",
        "simulator",
        "--host",
        "127.0.0.1",
        "--port",
        "0",
        "--cps",
        str(cps),
        "--max-list-length",
        str(max_list_length),
        *extra,
        "--service",
        f"{service}={password}",
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
    )
    assert proc.stdout is not None
    try:
        line = await asyncio.wait_for(proc.stdout.readline(), timeout=30)
    except TimeoutError:
        await stop(proc)
        raise SystemExit("the simulator did not start within 30 s") from None
    base_url = line.decode().strip()
    if not base_url.startswith("http://127.0.0.1:"):
        await stop(proc)
        raise SystemExit(f"unexpected first line from the simulator: {base_url!r}")
    return proc, base_url


async def stop(proc: asyncio.subprocess.Process, sig: int = signal.SIGTERM) -> int:
    """Signal `proc` and wait for it (killed after 30 s); its exit code."""
    if proc.returncode is None:
        proc.send_signal(sig)
        try:
            await asyncio.wait_for(proc.wait(), 30)
        except TimeoutError:
            proc.kill()
            await proc.wait()
    return proc.returncode if proc.returncode is not None else -1


def daemon_env(
    dsn: str, base_url: str, service: str, password: str, **extra: str
) -> dict[str, str]:
    """The environment of a `campaign run` for a benchmark: this database, the simulator
    at `base_url` with an unlimited account budget, no HTTP listener, warnings only.

    `extra`: more settings, e.g. CAMPAIGN_POLLER__ENABLED="false" to keep calls open
    (no outcome is learnt, so contacts stay `dialing`).
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("CAMPAIGN_")}
    env.update(
        {
            "CAMPAIGN_DATABASE__DSN": dsn,
            "CAMPAIGN_ACULAB__BASE_URL": base_url,
            "CAMPAIGN_ACULAB__SERVICE_PASSWORDS": json.dumps({service: password}),
            "CAMPAIGN_ACULAB__CALLS_PER_SECOND": "100000",
            "CAMPAIGN_LISTENER__PORT": "0",
            "CAMPAIGN_LOGGING__LEVEL": "warning",
        }
    )
    env.update(extra)
    return env


async def start_daemon(env: dict[str, str], log: Path) -> asyncio.subprocess.Process:
    """`campaign run` with `env`, its output appended to `log`."""
    with log.open("ab") as out:
        return await asyncio.create_subprocess_exec(
            sys.executable, "-m", "campaign", "run", env=env, cwd=ROOT, stdout=out, stderr=out
        )


class PostgresCpu:
    """CPU seconds used so far by the PostgreSQL server behind a DSN: the postmaster's
    own time, its live backends' and that of every backend it has reaped, so that
    connections opened and closed between two readings are counted."""

    def __init__(self, postmaster: psutil.Process) -> None:
        self.postmaster = postmaster

    @classmethod
    async def attach(cls, dsn: str) -> PostgresCpu:
        conn = await connect(dsn)
        try:
            # Asked while the backend lives: once it has ended it has no parent.
            postmaster = psutil.Process(await conn.fetchval("SELECT pg_backend_pid()")).parent()
        finally:
            await conn.close()
        if postmaster is None:
            raise SystemExit("cannot find the PostgreSQL postmaster (is the server local?)")
        return cls(postmaster)

    def read(self) -> float:
        pm = self.postmaster.cpu_times()
        total = pm.user + pm.system + pm.children_user + pm.children_system
        for backend in self.postmaster.children():
            try:
                t = backend.cpu_times()
            except psutil.NoSuchProcess:
                continue  # ended between the listing and the reading: counted as reaped later
            total += t.user + t.system
        return total


def process_cpu(proc: asyncio.subprocess.Process | int) -> float:
    """User + system CPU seconds of a live process (0 once it is gone)."""
    pid = proc if isinstance(proc, int) else proc.pid
    try:
        t = psutil.Process(pid).cpu_times()
    except psutil.NoSuchProcess:
        return 0.0
    return t.user + t.system
