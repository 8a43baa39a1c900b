"""The dashboard in a real browser: headless Chromium (Debian's `chromium`, driven over
the DevTools protocol with aiohttp's websocket client) loads the page while the real
dispatcher starts calls through the simulator, and the figures must appear, move, and
leave the browser's console free of errors.

Chromium missing is a failure, not a skip: .ci/run installs it. With
DASHBOARD_SCREENSHOT=PATH the test also saves what the browser shows (docs/dashboard.png
is made this way, with DASHBOARD_SCREENSHOT_SECONDS of dialing before it is taken).
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import os
import re
import shutil
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import time
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest

from campaign import dashboard
from campaign.simulator import Simulator
from tests.engine import (
    add_contacts,
    create_campaign,
    engine_settings,
    running_daemon,
    uk_numbers,
)
from tests.helpers import wait_until, window_closed_now
from tests.parked_batches import add_batch

CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--hide-scrollbars",
    "--remote-debugging-address=127.0.0.1",
    "--remote-debugging-port=0",
)
VIEWPORT = (1440, 1000)


# --- a small DevTools protocol client --------------------------------------------------------


@dataclass
class Page:
    """One page target over its DevTools websocket: commands, and the errors it reported."""

    ws: aiohttp.ClientWebSocketResponse
    errors: list[str] = field(default_factory=list)
    _ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))
    _waiting: dict[int, asyncio.Future[Any]] = field(default_factory=dict)
    _reader: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        async for message in self.ws:
            if message.type != aiohttp.WSMsgType.TEXT:
                break
            data = json.loads(message.data)
            if "id" in data:
                future = self._waiting.pop(data["id"], None)
                if future is not None and not future.done():
                    if "error" in data:
                        future.set_exception(RuntimeError(f"DevTools: {data['error']}"))
                    else:
                        future.set_result(data.get("result", {}))
            else:
                self._event(data["method"], data.get("params", {}))
        for future in self._waiting.values():
            if not future.done():
                future.set_exception(RuntimeError("the browser closed the page"))

    def _event(self, method: str, params: dict[str, Any]) -> None:
        # What a person would see in the console as an error.
        if method == "Runtime.exceptionThrown":
            details = params["exceptionDetails"]
            shown = details.get("exception", {}).get("description") or details.get("text")
            self.errors.append(f"exception: {shown}")
        elif method == "Runtime.consoleAPICalled" and params["type"] in {"error", "assert"}:
            args = [a.get("value", a.get("description", "")) for a in params["args"]]
            self.errors.append(f"console.{params['type']}: {args}")
        elif method == "Log.entryAdded" and params["entry"]["level"] == "error":
            entry = params["entry"]
            self.errors.append(f"{entry['source']}: {entry['text']} {entry.get('url', '')}")

    async def send(self, method: str, **params: Any) -> Any:
        number = next(self._ids)
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._waiting[number] = future
        await self.ws.send_json({"id": number, "method": method, "params": params})
        return await asyncio.wait_for(future, 30)

    async def evaluate(self, expression: str) -> Any:
        result = await self.send(
            "Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True
        )
        if "exceptionDetails" in result:
            raise AssertionError(f"{expression!r} failed: {result['exceptionDetails']}")
        return result["result"].get("value")

    async def screenshot(self, path: Path) -> None:
        width, height = await self.evaluate(
            "[document.documentElement.scrollWidth, document.documentElement.scrollHeight]"
        )
        shot = await self.send(
            "Page.captureScreenshot",
            format="png",
            captureBeyondViewport=True,
            clip={"x": 0, "y": 0, "width": width, "height": height, "scale": 1},
        )
        await asyncio.to_thread(path.write_bytes, base64.b64decode(shot["data"]))


@asynccontextmanager
async def chromium(profile: Path) -> AsyncIterator[Page]:
    """Headless Chromium with a fresh profile, and its first page, ready for commands."""
    if shutil.which(CHROMIUM) is None:
        pytest.fail(
            f"Chromium is not installed at {CHROMIUM}: the dashboard's browser test needs "
            "Debian's chromium package (apt-get install chromium; .ci/run installs it), "
            "or CHROMIUM=/path/to/chromium"
        )
    proc = await asyncio.create_subprocess_exec(
        CHROMIUM,
        *FLAGS,
        f"--user-data-dir={profile}",
        f"--window-size={VIEWPORT[0]},{VIEWPORT[1]}",
        "about:blank",
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        assert proc.stderr is not None
        endpoint = await asyncio.wait_for(_devtools_endpoint(proc.stderr), 60)
        async with aiohttp.ClientSession() as http:
            async with http.get(f"http://{endpoint}/json/list") as response:
                targets = await response.json()
            page_ws = next(t["webSocketDebuggerUrl"] for t in targets if t["type"] == "page")
            async with http.ws_connect(page_ws, max_msg_size=64 * 1024 * 1024) as ws:
                page = Page(ws)
                page.start()
                for domain in ("Runtime", "Log", "Page"):
                    await page.send(f"{domain}.enable")
                await page.send(
                    "Emulation.setDeviceMetricsOverride",
                    width=VIEWPORT[0],
                    height=VIEWPORT[1],
                    deviceScaleFactor=1,
                    mobile=False,
                )
                yield page
    finally:
        if proc.returncode is None:
            proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), 10)
            except TimeoutError:
                proc.kill()
                await proc.wait()


async def _devtools_endpoint(stderr: asyncio.StreamReader) -> str:
    seen = []
    while line := (await stderr.readline()).decode(errors="replace"):
        seen.append(line)
        found = re.search(r"DevTools listening on ws://([^/\s]+)/", line)
        if found:
            # Keep reading what it says, so that a full pipe never stalls the browser.
            asyncio.get_running_loop().create_task(_drain(stderr))
            return found[1]
    raise AssertionError("Chromium exited without a DevTools endpoint:\n" + "".join(seen))


async def _drain(stream: asyncio.StreamReader) -> None:
    while await stream.readline():
        pass


# --- the test ---------------------------------------------------------------------------------

FIGURES_JS = """
(() => {
  const card = document.querySelector('article[data-campaign="spring"]');
  if (!card) return null;
  const text = (sel) => (card.querySelector(sel) || {}).textContent || null;
  return {
    name: text('[data-field="name"]'),
    state: text('[data-field="state"]'),
    calls_started: text('[data-figure="calls_started"]'),
    calls_last_hour: text('[data-figure="calls_last_hour"]'),
    bars: card.querySelectorAll('svg.chart rect').length,
    legend: Array.from(card.querySelectorAll('.legend li')).map((li) => li.dataset.state),
    outcomes: Array.from(card.querySelectorAll('table.outcomes tr')).map((tr) => tr.dataset.cause),
    freshness: document.getElementById('freshness').textContent,
    account: document.getElementById('account').textContent,
  };
})()
"""


def number(text: str | None) -> int:
    assert text is not None
    return int(text.replace(",", ""))


async def test_the_page_shows_a_running_campaign_and_its_figures_move_without_console_errors(
    db_pool: asyncpg.Pool, db_dsn: str, simulator: Simulator, tmp_path: Path
) -> None:
    spring = await create_campaign(db_pool, "spring", calls_per_second=15)
    await add_contacts(db_pool, spring, uk_numbers(5000))
    # Other campaigns, so that the page shows what it says about them too.
    autumn = await create_campaign(db_pool, "autumn")
    await db_pool.execute(
        "UPDATE campaigns SET state = 'paused', state_reason = 'paused by operator' WHERE id = $1",
        autumn,
    )
    await add_batch(db_pool, autumn)
    opens, closes = window_closed_now("Europe/London")
    night = await create_campaign(
        db_pool, "night", window_start=_time(opens), window_end=_time(closes)
    )
    await add_contacts(db_pool, night, uk_numbers(40, start=9000))
    settings = engine_settings(
        simulator,
        database={"dsn": db_dsn},
        listener={"port": 0},
        dashboard={"refresh_seconds": 1},
        aculab={"calls_per_second": 40},
    )
    async with (
        running_daemon(settings),
        dashboard.serving(db_pool, settings, "127.0.0.1", 0) as server,
        chromium(tmp_path / "profile") as page,
    ):
        await page.send("Page.navigate", url=f"{server.url}/")

        async def dialing() -> bool:
            seen = await page.evaluate(FIGURES_JS)
            return bool(seen and seen["calls_started"] and number(seen["calls_started"]) > 0)

        await wait_until(dialing, 30, "the page to show calls started for spring")
        first = await page.evaluate(FIGURES_JS)

        async def moved() -> bool:
            seen = await page.evaluate(FIGURES_JS)
            return number(seen["calls_started"]) > number(first["calls_started"])

        await wait_until(moved, 20, "the figures to move on the next refreshes")
        later = await page.evaluate(FIGURES_JS)
        seconds = float(os.environ.get("DASHBOARD_SCREENSHOT_SECONDS", "0"))
        shot = os.environ.get("DASHBOARD_SCREENSHOT")
        if shot:
            await asyncio.sleep(seconds)
            await page.screenshot(Path(shot))
        errors = list(page.errors)

    assert (first["name"], first["state"]) == ("spring", "active")
    assert first["bars"] == 60
    assert number(later["calls_last_hour"]) >= number(later["calls_started"]) > 0
    assert "pending" in first["legend"]
    assert "Aculab reachable" in later["account"] and "daemons alive 1" in later["account"]
    assert later["freshness"].startswith("as of ")
    assert errors == []


def _time(hhmm: str) -> time:
    return time.fromisoformat(hhmm)
