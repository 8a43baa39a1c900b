"""What the benchmarks share: throw-away databases on the server behind `admin_dsn`,
and the simulator as its own process."""

from __future__ import annotations

import asyncio
import signal
import sys
from pathlib import Path

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
