"""`campaign dashboard`: its JSON document, its page and who may read them, on a real
PostgreSQL, with calls started by the real dispatcher through the simulator over HTTP.
The page in a real browser: tests/test_dashboard_browser.py."""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import os
import re
import signal
import subprocess
import sys
import zipfile
from collections.abc import AsyncIterator
from datetime import time
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest

from campaign import dashboard, status
from campaign.db import admin
from campaign.db.pool import open_pool
from campaign.settings import ConfigError, Settings, load_settings
from campaign.simulator import Simulator
from tests.engine import add_contacts, create_campaign, engine_settings, run_until_idle, uk_numbers
from tests.helpers import REPO_ROOT, Cli, logging_restored, one_line, point_at, window_closed_now
from tests.parked_batches import add_batch

PASSWORD = "dashboard-password-42"


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def document(pool: admin.Pool, settings: Settings | None = None) -> dict[str, Any]:
    """The dashboard's document, read as the endpoint reads it."""
    async with admin.read_snapshot(pool) as conn:
        return await dashboard.read_document(conn, settings or load_settings(None))


async def get_json(
    http: aiohttp.ClientSession, url: str, **kwargs: Any
) -> tuple[int, dict[str, Any]]:
    async with http.get(url, **kwargs) as response:
        return response.status, await response.json()


def basic(user: str, password: str) -> dict[str, str]:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


# --- the document ---------------------------------------------------------------------------


async def test_the_document_is_status_json_with_every_campaign_and_its_calls_per_minute(
    db_pool: asyncpg.Pool, simulator: Simulator
) -> None:
    spring = await create_campaign(db_pool, "spring")
    await create_campaign(db_pool, "quiet")
    await add_contacts(db_pool, spring, uk_numbers(30))
    await run_until_idle(db_pool, engine_settings(simulator))

    doc = await document(db_pool)
    statuses = status.to_json_document(await status.gather_status(db_pool))

    assert [c["name"] for c in doc["campaigns"]] == ["spring", "quiet"]
    for plain, extended in zip(statuses["campaigns"], doc["campaigns"], strict=True):
        assert {k: extended[k] for k in plain if k != "as_of"} == {
            k: v for k, v in plain.items() if k != "as_of"
        }
    by_name = {c["name"]: c for c in doc["campaigns"]}
    minutes = by_name["spring"]["calls_per_minute"]
    assert len(minutes) == 60
    # Whole minutes, oldest first, one minute apart, the current one last.
    stamps = [m["minute"] for m in minutes]
    assert stamps == sorted(stamps) and stamps[-1].endswith(":00+00:00")
    assert sum(m["calls"] for m in minutes) == by_name["spring"]["calls_last_hour"] == 30
    assert by_name["spring"]["calls_started"] == 30
    assert all(m["calls"] == 0 for m in by_name["quiet"]["calls_per_minute"])
    # now() is the transaction's start: equal everywhere, every figure came from one snapshot.
    assert {c["as_of"] for c in doc["campaigns"]} | {
        c["why"]["as_of"] for c in doc["campaigns"]
    } == {doc["as_of"]}


async def test_each_campaign_shows_pacing_concurrency_the_window_an_eta_and_why(
    db_pool: asyncpg.Pool,
) -> None:
    opens, closes = window_closed_now("Europe/London")
    cid = await create_campaign(
        db_pool,
        "spring",
        calls_per_second=25,
        max_concurrent_calls=40,
        window_start=time.fromisoformat(opens),
        window_end=time.fromisoformat(closes),
    )
    await add_contacts(db_pool, cid, uk_numbers(4))
    settings = load_settings(None, aculab={"calls_per_second": 80})

    (c,) = (await document(db_pool, settings))["campaigns"]

    assert c["pacing"]["campaign"]["cap"] == 25
    assert c["pacing"]["account"]["cap"] == 80
    assert c["concurrency"] == {"open_calls": 0, "dispatching": 0, "cap": 40, "at_cap": False}
    window = c["calling_window_now"]
    assert (window["open"], window["any_time"], window["waiting"]) == (False, False, 4)
    assert window["next_opening_contacts"] == 4 and window["next_opening"] is not None
    assert window["text"].startswith("closed; 4 waiting, next opening ")
    # The reasons are `campaign why`'s, as it prints them.
    assert c["why"]["reasons"] == ["calling_window"]
    assert any(
        line.startswith("  waiting for the calling window: 4 contacts") for line in c["why_text"]
    )
    # The ETA is campaign plan's forecast: the four calls wait for the window to open.
    eta = c["eta"]
    assert eta["basis"] == "finishes" and eta["remaining"] == 4
    assert eta["finish_at"] > window["next_opening"] and eta["eta_seconds"] > 0


async def test_the_eta_says_why_a_paused_or_parked_campaign_has_no_finish_time(
    db_pool: asyncpg.Pool,
) -> None:
    paused = await create_campaign(db_pool, "paused")
    await add_contacts(db_pool, paused, uk_numbers(3))
    await db_pool.execute("UPDATE campaigns SET state = 'paused' WHERE id = $1", paused)
    stuck = await create_campaign(db_pool, "stuck")
    await add_batch(db_pool, stuck)

    etas = {c["name"]: c["eta"] for c in (await document(db_pool))["campaigns"]}

    assert (etas["paused"]["basis"], etas["paused"]["finish_at"]) == ("paused", None)
    assert etas["paused"]["remaining"] == 3
    assert (etas["stuck"]["basis"], etas["stuck"]["finish_at"]) == ("never", None)
    assert "campaign resolve" in etas["stuck"]["reason"], etas["stuck"]


async def test_the_account_shows_its_pacing_the_daemons_alive_and_whether_aculab_answers_them(
    db_pool: asyncpg.Pool,
) -> None:
    settings = load_settings(None, aculab={"calls_per_second": 50})
    quiet = await document(db_pool, settings)
    assert quiet["account"]["daemons_alive"] == 0
    assert quiet["account"]["aculab_reachable"] is None  # no daemon to ask
    assert quiet["account"]["pacing"]["cap"] == 50

    await db_pool.execute(
        "INSERT INTO daemons (owner, aculab_unreachable_since, aculab_error) VALUES "
        "('host:1:abc', NULL, NULL), "
        "('host:2:def', now() - interval '4 minutes', 'service_start: cannot connect'), "
        "('host:3:old', now() - interval '2 hours', 'stale')"
    )
    await db_pool.execute(
        "UPDATE daemons SET seen_at = now() - interval '2 hours' WHERE owner = 'host:3:old'"
    )
    await db_pool.execute(
        "INSERT INTO rate_grants (key, granted_at, calls) VALUES ('account', now(), 120)"
    )

    account = (await document(db_pool, settings))["account"]

    assert account["daemons_alive"] == 2
    assert account["aculab_reachable"] is False
    down = [d for d in account["daemons"] if not d["aculab_reachable"]]
    assert [(d["owner"], d["aculab_error"]) for d in down] == [
        ("host:2:def", "service_start: cannot connect")
    ]
    assert account["pacing"]["granted"] == 120 and account["pacing"]["rate"] == 12.0


async def test_destinations_quoted_in_reasons_and_errors_are_masked_as_in_the_logs(
    db_pool: asyncpg.Pool,
) -> None:
    cid = await create_campaign(db_pool, "spring")
    await db_pool.execute(
        "UPDATE campaigns SET state = 'paused', state_reason = $2 WHERE id = $1",
        cid,
        "paused: customer +44 1908 273800 complained",
    )
    await add_batch(db_pool, cid, reason="HTTP 400 [invalid] to: 441908273801 is not allowed")
    await db_pool.execute(
        "INSERT INTO daemons (owner, aculab_unreachable_since, aculab_error) "
        "VALUES ('host:1:abc', now(), 'sip:alice@example.com refused')"
    )

    text = json.dumps(await document(db_pool))

    for whole in ("1908 273800", "441908273801", "alice@example.com"):
        assert whole not in text
    for masked in ("+44 *********00", "4419******01", "sip:***************om"):
        assert masked in text


async def test_the_document_needs_no_write_so_a_database_refusing_writes_serves_it(
    db_dsn: str, simulator: Simulator
) -> None:
    async with open_pool(db_dsn, min_size=1, max_size=2) as pool:
        cid = await create_campaign(pool, "spring")
        await add_contacts(pool, cid, uk_numbers(5))
        await run_until_idle(pool, engine_settings(simulator))
        await add_batch(pool, cid)
        # From here on the database refuses every write: the dashboard needs none.
        database = await pool.fetchval("SELECT current_database()")
        await pool.execute(f'ALTER DATABASE "{database}" SET default_transaction_read_only = on')
    async with open_pool(db_dsn, min_size=1, max_size=2) as pool:
        with pytest.raises(asyncpg.ReadOnlySQLTransactionError):
            await pool.execute("UPDATE campaigns SET priority = 1")
        (c,) = (await document(pool))["campaigns"]
    assert c["calls_started"] == 5 and len(c["parked_batches"]) == 1


# --- one read for every viewer ---------------------------------------------------------------


class Clock:
    """monotonic time that moves only when told."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_viewers_share_one_read_of_the_database_until_it_is_a_second_old(
    db_pool: asyncpg.Pool, http: aiohttp.ClientSession
) -> None:
    await create_campaign(db_pool, "spring")
    clock = Clock()
    cache = dashboard.DocumentCache(db_pool, load_settings(None), clock=clock)
    async with dashboard_server(cache) as url:
        answers = await asyncio.gather(*(get_json(http, f"{url}/api/status") for _ in range(20)))
        assert {code for code, _ in answers} == {200}
        assert cache.reads == 1
        clock.now += 0.9
        await get_json(http, f"{url}/api/status")
        assert cache.reads == 1
        clock.now += dashboard.MIN_CACHE_SECONDS
        await get_json(http, f"{url}/api/status")
        assert cache.reads == 2


async def test_while_a_new_document_is_read_viewers_get_the_last_one_at_once(
    db_pool: asyncpg.Pool,
) -> None:
    # A read can take a minute (a large campaign's forecast, a table locked for
    # maintenance): the figures shown meanwhile stay the last ones, not a hung request.
    await create_campaign(db_pool, "spring")
    clock = Clock()
    cache = dashboard.DocumentCache(db_pool, load_settings(None), clock=clock)
    first = await cache.get()
    clock.now += 60
    async with db_pool.acquire() as locker, locker.transaction():
        await locker.execute("LOCK TABLE campaigns IN ACCESS EXCLUSIVE MODE")
        viewers = [asyncio.create_task(cache.get()) for _ in range(3)]
        done, _ = await asyncio.wait(viewers, timeout=10)
        reading = cache._reading
        assert reading is not None and not reading.done()  # waits for the lock
    assert done == set(viewers) and all(v.result() == first for v in viewers)
    await reading
    assert cache.reads == 2 and cache._last is not None and cache._last.status == 200


async def test_a_document_slow_to_read_is_kept_ten_times_as_long(db_pool: asyncpg.Pool) -> None:
    await create_campaign(db_pool, "spring")
    reads = itertools.count()  # the read starts, and every later look is 3 s later
    cache = dashboard.DocumentCache(
        db_pool, load_settings(None), clock=lambda: 1000.0 if next(reads) == 0 else 1003.0
    )
    await cache.get()
    assert cache._last is not None
    assert cache._last.until == 1003.0 + dashboard.COST_FACTOR * 3.0


async def test_an_etas_forecast_is_kept_a_while_but_made_again_when_the_state_changes(
    db_pool: asyncpg.Pool,
) -> None:
    cid = await create_campaign(db_pool, "spring", calls_per_second=10)
    await add_contacts(db_pool, cid, uk_numbers(100))
    clock = Clock()
    forecasts = dashboard.Forecasts(clock)
    settings = load_settings(None)

    async def eta() -> dict[str, Any]:
        async with admin.read_snapshot(db_pool) as conn:
            doc = await dashboard.read_document(conn, settings, forecasts)
        eta: dict[str, Any] = doc["campaigns"][0]["eta"]
        return eta

    first = await eta()
    await add_contacts(db_pool, cid, uk_numbers(900, start=5000))
    clock.now += dashboard.FORECAST_MIN_SECONDS - 1
    kept = await eta()
    clock.now += 2
    again = await eta()
    await db_pool.execute("UPDATE campaigns SET state = 'paused' WHERE id = $1", cid)
    paused = await eta()

    assert kept == first and first["remaining"] == 100
    assert again["remaining"] == 1000 and again["eta_seconds"] > first["eta_seconds"]
    assert paused["basis"] == "paused"


async def test_while_the_database_fails_the_document_is_a_503_saying_so(
    db_dsn: str, http: aiohttp.ClientSession
) -> None:
    async with open_pool(db_dsn, min_size=1, max_size=1) as pool:
        cache = dashboard.DocumentCache(pool, load_settings(None))
    # The pool is closed now: every query fails as with a database that went away.
    async with dashboard_server(cache) as url:
        code, body = await get_json(http, f"{url}/api/status")
    assert code == 503
    assert body["error"].startswith("database unavailable")


# --- the page --------------------------------------------------------------------------------


class dashboard_server:
    """The dashboard app on a free loopback port; yields its base URL."""

    def __init__(self, cache: dashboard.DocumentCache, password: str = "") -> None:
        self.cache = cache
        self.password = password

    async def __aenter__(self) -> str:
        from campaign.server import Server

        app = dashboard.build_app(self.cache, self.password)
        self.server = Server(app, dashboard.Bind("127.0.0.1", 0))
        await self.server.start()
        return self.server.url

    async def __aexit__(self, *exc: object) -> None:
        await self.server.stop()


async def test_the_page_and_its_assets_come_from_the_command_itself(
    db_pool: asyncpg.Pool, http: aiohttp.ClientSession
) -> None:
    async with dashboard_server(dashboard.DocumentCache(db_pool, load_settings(None))) as url:
        pages = {}
        for path in ("/", "/dashboard.js", "/dashboard.css"):
            async with http.get(f"{url}{path}") as response:
                assert response.status == 200, path
                assert "script-src 'self'" in response.headers["Content-Security-Policy"]
                pages[path] = (response.content_type, await response.text())
    assert pages["/"][0] == "text/html"
    assert '<script src="/dashboard.js"' in pages["/"][1]
    assert pages["/dashboard.js"][0] == "text/javascript"
    assert pages["/dashboard.css"][0] == "text/css"
    for _, text in pages.values():
        # Nothing from elsewhere: every URL in the page is this server's own.
        assert not re.search(
            r"(https?:)?//[a-z0-9.-]+\.[a-z]{2,}/", text.replace("http://www.w3.org/2000/svg", "")
        )


async def test_with_a_password_every_request_needs_it_under_any_user_name(
    db_pool: asyncpg.Pool, http: aiohttp.ClientSession
) -> None:
    cache = dashboard.DocumentCache(db_pool, load_settings(None))
    async with dashboard_server(cache, PASSWORD) as url:
        for path in ("/", "/api/status", "/dashboard.js"):
            async with http.get(f"{url}{path}") as response:
                assert response.status == 401
                assert response.headers["WWW-Authenticate"].startswith("Basic ")
        async with http.get(f"{url}/api/status", headers=basic("x", "wrong-password-123")) as r:
            assert r.status == 401
        for user in ("ops", ""):
            code, body = await get_json(http, f"{url}/api/status", headers=basic(user, PASSWORD))
            assert code == 200 and body["campaigns"] == []
        async with http.get(f"{url}/", headers={"Authorization": "Basic !!!"}) as r:
            assert r.status == 401


def test_a_dashboard_password_shorter_than_12_characters_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"dashboard.password: must be at least 12"):
        load_settings(None, dashboard={"password": "short"})


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.1.2.3", True),
        ("::1", True),
        ("[::1]", True),
        ("localhost", True),
        ("0.0.0.0", False),
        ("", False),
        ("::", False),
        ("192.168.1.10", False),
        ("dashboard.example.com", False),
    ],
)
def test_only_loopback_addresses_count_as_loopback(host: str, loopback: bool) -> None:
    assert dashboard.is_loopback(host) is loopback


# --- the command -----------------------------------------------------------------------------


def test_listening_beyond_loopback_without_a_password_exits_2_with_one_line(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # A DSN nothing listens on: the refusal comes before any connection is tried.
    point_at(monkeypatch, "postgresql://nobody@127.0.0.1:9/none")
    with logging_restored():
        code, out, err = Cli("", capsys)("dashboard", "--host", "0.0.0.0", "--port", "0")
    assert code == 2 and out == ""
    assert one_line(err) == (
        "campaign dashboard: listening on 0.0.0.0 needs dashboard.password "
        "(CAMPAIGN_DASHBOARD__PASSWORD): the page would show every campaign to anyone who "
        "can reach it; without a password use --host 127.0.0.1"
    )


@pytest.mark.slow
async def test_the_command_serves_the_page_until_sigterm_then_exits_0(
    db_dsn: str, http: aiohttp.ClientSession
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CAMPAIGN_")}
    env |= {"CAMPAIGN_DATABASE__DSN": db_dsn, "CAMPAIGN_DASHBOARD__PASSWORD": PASSWORD}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "campaign",
        "dashboard",
        "--host",
        "127.0.0.1",
        "--port",
        "0",
        env=env,
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        line = (await asyncio.wait_for(proc.stdout.readline(), 60)).decode()
        found = re.match(r"dashboard on (http://127\.0\.0\.1:\d+/) \(password required\)", line)
        assert found, line
        code, body = await get_json(http, f"{found[1]}api/status", headers=basic("me", PASSWORD))
        assert code == 200 and body["campaigns"] == []
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 30) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert PASSWORD not in (await proc.stderr.read()).decode() if proc.stderr else True


@pytest.mark.slow
def test_the_page_its_script_and_style_ship_inside_the_wheel(tmp_path: Path) -> None:
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", str(tmp_path), "."],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert built.returncode == 0, built.stderr
    (wheel,) = tmp_path.glob("aculab_campaign-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        shipped = {name for name in archive.namelist() if name.startswith("campaign/")}
    for path, (name, _) in dashboard.ASSETS.items():
        assert f"campaign/dashboard_assets/{name}" in shipped, path
