"""Helpers for tests that run `campaign run` as real subprocesses.

A daemon writes JSON lines to its own log file; these helpers read them back to
learn when it is running (rather than assume how long a start takes) and what
each daemon did.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from campaign.simulator import Simulator, SimulatorConfig
from tests.engine import SERVICE

API_KEY = "sim-api-key-7f3a9c"
PASSWORD = "sim-password-2b8e41"
BAD_SERVICE = "BadService"
BAD_PASSWORD = "wrong-password-c0ffee"


def daemon_env(sim: Simulator, dsn: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CAMPAIGN_")}
    env.update(
        {
            "CAMPAIGN_DATABASE__DSN": dsn,
            "CAMPAIGN_ACULAB__BASE_URL": sim.base_url,
            "CAMPAIGN_ACULAB__CLOUD_ID": sim.config.cloud_id,
            "CAMPAIGN_ACULAB__USERNAME": sim.config.username,
            "CAMPAIGN_ACULAB__API_ACCESS_KEY": API_KEY,
            "CAMPAIGN_ACULAB__CALLS_PER_SECOND": "10000",
            "CAMPAIGN_ACULAB__SERVICE_PASSWORDS": json.dumps(
                {SERVICE: PASSWORD, BAD_SERVICE: BAD_PASSWORD}
            ),
            "CAMPAIGN_DISPATCHER__LEASE_SECONDS": "2",
            "CAMPAIGN_DISPATCHER__POLL_INTERVAL": "0.2",
            "CAMPAIGN_DISPATCHER__RETRY_INITIAL_DELAY": "0.05",
            "CAMPAIGN_DISPATCHER__RETRY_MAX_DELAY": "0.5",
            "CAMPAIGN_DISPATCHER__PROGRESS_INTERVAL": "1",
            "CAMPAIGN_HTTP__CONNECT_TIMEOUT": "1",
            "CAMPAIGN_HTTP__READ_TIMEOUT": "1",
            "CAMPAIGN_LISTENER__PORT": "0",
            **extra,
        }
    )
    return env


def sim_config(**kw: Any) -> SimulatorConfig:
    return SimulatorConfig(
        api_access_key=API_KEY,
        service_passwords={SERVICE: PASSWORD, BAD_SERVICE: "the-real-one"},
        calls_per_second=100_000,
        **kw,
    )


async def start_daemon(env: dict[str, str], log: Path) -> asyncio.subprocess.Process:
    """`campaign run` with its stdout and stderr appended to `log`."""
    out = log.open("ab")
    try:
        return await asyncio.create_subprocess_exec(
            sys.executable, "-m", "campaign", "run", env=env, stdout=out, stderr=out
        )
    finally:
        out.close()


async def wait_for(check: Callable[[], Awaitable[bool]], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await check():
            return
        await asyncio.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


async def stop(proc: asyncio.subprocess.Process, timeout: float = 15) -> tuple[int, float]:
    """SIGTERM, then (exit status, seconds it took to exit)."""
    began = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    code = await asyncio.wait_for(proc.wait(), timeout)
    return code, time.monotonic() - began


def log_size(log: Path) -> int:
    """Where the next daemon appending to `log` starts writing."""
    return log.stat().st_size if log.exists() else 0


def log_events(log: Path, offset: int = 0) -> list[dict[str, Any]]:
    """The JSON events a daemon wrote to `log` from byte `offset` on (other lines skipped)."""
    if not log.exists():
        return []
    with log.open("rb") as fh:
        fh.seek(offset)
        text = fh.read().decode(errors="replace")
    found = []
    for line in text.splitlines():
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if isinstance(event, dict) and "event" in event:
            found.append(event)
    return found


async def wait_for_event(
    proc: asyncio.subprocess.Process,
    log: Path,
    event: str,
    *,
    offset: int = 0,
    timeout: float = 60,
) -> dict[str, Any]:
    """The first `event` the daemon logs after `offset`; fails at once if it exits first.

    "daemon_starting": its signal handlers are installed. "listener_started": it is
    connected and migrated, and its dispatcher and poller are running.
    """
    deadline = time.monotonic() + timeout
    while True:
        for e in log_events(log, offset):
            if e["event"] == event:
                return e
        if proc.returncode is not None:
            raise AssertionError(f"the daemon exited {proc.returncode} before {event}")
        if time.monotonic() > deadline:
            raise AssertionError(f"no {event} from the daemon after {timeout}s")
        await asyncio.sleep(0.05)


def submitted_batches(log: Path) -> set[int]:
    """The batches this daemon's log says it had acknowledged by Aculab."""
    return {e["batch_id"] for e in log_events(log) if e["event"] == "batch_submitted"}
