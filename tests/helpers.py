"""Small helpers shared by test modules (never imported from another test module)."""

from __future__ import annotations

import asyncio
import inspect
import logging
import os
import pty
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping, MutableMapping
from contextlib import contextmanager
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import asyncpg
import pytest
import structlog

from campaign.cli import main
from campaign.simulator import StartRequest

REPO_ROOT = Path(__file__).resolve().parents[1]

Check = Callable[[], bool] | Callable[[], Awaitable[bool]]


def window_closed_now(zone: str, opens_within_hours: int = 2) -> tuple[str, str]:
    """A one-hour calling window ('HH:00', 'HH:00'), every day, that is closed now in
    `zone` and opens within `opens_within_hours` hours (at least an hour from now): picked
    from the clock, so that a test about "outside the window" means the same at any hour.
    """
    opens = datetime.now(ZoneInfo(zone)) + timedelta(hours=opens_within_hours)
    return f"{opens:%H}:00", f"{(opens + timedelta(hours=1)):%H}:00"


async def wait_until(check: Check, timeout: float, what: str = "the condition") -> None:
    """Poll `check` (sync or async) every 20 ms until it holds; fail after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.02)


def events(
    logs: Iterable[MutableMapping[str, Any]], name: str, **fields: Any
) -> list[MutableMapping[str, Any]]:
    """The captured log events called `name` whose fields include `fields`."""
    return [
        e for e in logs if e.get("event") == name and all(e.get(k) == v for k, v in fields.items())
    ]


def peak_overlap(intervals: Iterable[tuple[float, float]]) -> int:
    """The most half-open intervals [start, end) holding one moment, swept exactly."""
    edges: list[tuple[float, int]] = []
    for start, end in intervals:
        edges.append((start, 1))
        edges.append((end, -1))
    # At equal times an end comes first: back-to-back intervals do not overlap.
    edges.sort(key=lambda e: (e[0], e[1]))
    most = current = 0
    for _, step in edges:
        current += step
        most = max(most, current)
    return most


def max_overlap(requests: Iterable[StartRequest]) -> int:
    """The most requests the simulator was handling at one moment."""
    return peak_overlap((r.at, r.answered_at) for r in requests)


def worst_window(times: Iterable[float], seconds: float = 1.0) -> int:
    """The most of `times` inside any half-open window of `seconds`, slid exactly."""
    ordered = sorted(times)
    worst, lo = 0, 0
    for hi, t in enumerate(ordered):
        while ordered[lo] <= t - seconds:
            lo += 1
        worst = max(worst, hi - lo + 1)
    return worst


async def db_clock_offset(pool: asyncpg.Pool) -> float:
    """Seconds to add to a time read from PostgreSQL to put it on this host's clock
    (the simulator's): 0 give or take a millisecond with the embedded server, and
    measured, not assumed, for a server elsewhere (CAMPAIGN_TEST_DSN)."""
    best: tuple[float, float] | None = None
    for _ in range(5):
        before = time.time()
        db_now: float = await pool.fetchval("SELECT extract(epoch FROM clock_timestamp())::float8")
        after = time.time()
        if best is None or after - before < best[0]:
            best = (after - before, (before + after) / 2 - db_now)
    assert best is not None
    return best[1]


def counts(rows: Iterable[Mapping[str, Any]], key: str = "state", n: str = "n") -> dict[Any, int]:
    return {r[key]: r[n] for r in rows}


# --- the campaign command ---------------------------------------------------------------


class Cli:
    """Runs `campaign` in-process against one database; returns (status, stdout, stderr)."""

    def __init__(self, dsn: str, capsys: pytest.CaptureFixture[str]) -> None:
        self.dsn = dsn
        self.capsys = capsys

    def __call__(self, *argv: str) -> tuple[int, str, str]:
        self.capsys.readouterr()
        status = exit_status(list(argv))
        out, err = self.capsys.readouterr()
        return status, out, err

    async def run(self, *argv: str) -> tuple[int, str, str]:
        """The same from an async test: in a thread, so the test's loop (and a simulator
        served by it) keeps running while the command runs its own loop."""
        self.capsys.readouterr()
        status = await asyncio.to_thread(exit_status, list(argv))
        out, err = self.capsys.readouterr()
        return status, out, err

    def query(self, sql: str, *args: Any) -> list[asyncpg.Record]:
        async def run() -> list[asyncpg.Record]:
            conn = await asyncpg.connect(self.dsn)
            try:
                return await conn.fetch(sql, *args)
            finally:
                await conn.close()

        return asyncio.run(run())


def exit_status(argv: list[str]) -> int:
    """`campaign ARGV`'s exit status. argparse refuses a malformed command line by raising
    SystemExit, as the real command exits: its status is what an operator's shell sees."""
    try:
        return main(argv)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 1


@contextmanager
def logging_restored() -> Iterator[None]:
    # The commands configure logging for the process; put it back for the next test.
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        yield
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
        structlog.reset_defaults()


def point_at(monkeypatch: pytest.MonkeyPatch, dsn: str, **settings: str) -> None:
    """Settings for in-process commands: this database (and `settings` as environment
    variables, e.g. DISPATCHER__IDEMPOTENCY_WINDOW_SECONDS), nothing else."""
    monkeypatch.delenv("CAMPAIGN_CONFIG", raising=False)
    for name in list(os.environ):
        if name.startswith("CAMPAIGN_") and name != "CAMPAIGN_TEST_DSN":
            monkeypatch.delenv(name)
    monkeypatch.setenv("CAMPAIGN_DATABASE__DSN", dsn)
    for key, value in settings.items():
        monkeypatch.setenv(f"CAMPAIGN_{key}", value)


def one_line(text: str) -> str:
    lines = text.splitlines()
    assert len(lines) == 1, text
    assert "Traceback" not in text
    return lines[0]


def campaign_env(dsn: str) -> dict[str, str]:
    """The environment of a `campaign` subprocess on this database, and nothing else."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CAMPAIGN_")}
    env["CAMPAIGN_DATABASE__DSN"] = dsn
    return env


def run_campaign(dsn: str, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "campaign", *argv],
        env=campaign_env(dsn),
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def run_on_terminal(
    dsn: str, *argv: str, stdout_too: bool = False, timeout: float = 120
) -> tuple[int, str, str]:
    """`campaign ARGV` as a subprocess whose stderr is a terminal (a pseudo-terminal, as
    a person at a shell has), its stdout a pipe unless `stdout_too`. Returns (status,
    stdout, all the terminal received, with the terminal's CRLF line ends)."""
    controller, terminal = pty.openpty()
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "campaign", *argv],
            env=campaign_env(dsn),
            cwd=REPO_ROOT,
            stdin=subprocess.DEVNULL,
            stdout=terminal if stdout_too else subprocess.PIPE,
            stderr=terminal,
        )
    finally:
        os.close(terminal)  # the child holds its own copy: EOF comes when it exits
    received = bytearray()

    def drain() -> None:
        while True:
            try:
                data = os.read(controller, 65536)
            except OSError:  # EIO: the other side of the terminal is closed
                return
            if not data:
                return
            received.extend(data)

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    try:
        out, _ = proc.communicate(timeout=timeout)
    finally:
        proc.kill()
        reader.join(timeout)
        os.close(controller)
    return proc.returncode, (out or b"").decode(), received.decode()
