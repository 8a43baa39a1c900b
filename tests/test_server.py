"""The daemon's HTTP side over real HTTP on loopback, against a real PostgreSQL.

Calls in state `dialing` come from the real dispatcher sending to the simulator,
so the references pushed here are ones the engine really started.
"""

from __future__ import annotations

import asyncio
import gzip
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

import aiohttp
import asyncpg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from structlog.testing import capture_logs

from campaign import assumptions, outcomes, vocabulary
from campaign.db.pool import open_pool
from campaign.metrics import Metrics, new_metrics
from campaign.server import Server, build_app, serve
from campaign.settings import ListenerSettings
from campaign.simulator import Simulator, SimulatorConfig
from tests.engine import (
    add_contacts,
    create_campaign,
    engine_settings,
    run_until_idle,
    states,
    uk_numbers,
)
from tests.fixtures_sim import MakeSimulator, ManualClock
from tests.helpers import wait_until

SECRET = "final-page-secret-0123456789"
JSON = assumptions.FINAL_PAGE_CONTENT_TYPE
FORM = "application/x-www-form-urlencoded"


def listener(**values: Any) -> ListenerSettings:
    values = {"host": "127.0.0.1", "port": 0, "webhook_secret": SECRET, **values}
    return ListenerSettings(**values)


def instance_info(
    reference: str, cause: str = "completed", raw_cause: str = "200", duration: float = 12.5
) -> dict[str, Any]:
    """What Aculab's final page receives (docs/aculab.md: the final page)."""
    return {
        "application_instance_id": reference,
        "token": "",
        "this_call": {
            "call_id": f"{reference}-0",
            "call_direction": "out",
            "call_from": "441908273801",
            "call_to": "441908200000",
            "call_state": "idle",
            "call_cause": cause,
            "call_raw_cause": raw_cause,
            "seconds_call_duration": duration,
            "outbound_parameters": "",
        },
    }


@dataclass
class Harness:
    """The app on loopback and a client; `tasks` is what health() reports."""

    pool: asyncpg.Pool
    server: Server
    http: aiohttp.ClientSession
    metrics: Metrics
    tasks: dict[str, bool] = field(default_factory=dict)
    aculab: list[tuple[float, str | None]] = field(default_factory=list)
    """What the dispatcher reports while Aculab is unreachable (empty: reachable)."""

    def final_url(self, secret: str = SECRET) -> str:
        return f"{self.server.url}/final/{secret}"

    async def push(self, info: Any, *, secret: str = SECRET) -> tuple[int, Any]:
        return await self.post(json.dumps(info).encode(), JSON, secret=secret)

    async def post(
        self, body: bytes, content_type: str, *, secret: str = SECRET, **headers: str
    ) -> tuple[int, Any]:
        async with self.http.post(
            self.final_url(secret), data=body, headers={"Content-Type": content_type, **headers}
        ) as response:
            return response.status, await response.json()

    async def get(self, path: str, **params: str) -> tuple[int, Any]:
        async with self.http.get(f"{self.server.url}{path}", params=params) as response:
            return response.status, await response.json()


MakeHarness = Callable[..., Awaitable[Harness]]


@pytest.fixture
async def make_harness(db_pool: asyncpg.Pool) -> AsyncIterator[MakeHarness]:
    """Start the app (on db_pool unless told otherwise); everything stops at teardown."""
    async with AsyncExitStack() as stack:
        http = await stack.enter_async_context(aiohttp.ClientSession())

        async def make(
            settings: ListenerSettings | None = None, pool: asyncpg.Pool | None = None
        ) -> Harness:
            metrics = new_metrics()
            tasks: dict[str, bool] = {}
            aculab: list[tuple[float, str | None]] = []
            app = build_app(
                pool or db_pool,
                settings or listener(),
                metrics,
                lambda: tasks,
                lambda: aculab[-1] if aculab else None,
            )
            server = await stack.enter_async_context(Server(app, settings or listener()))
            return Harness(pool or db_pool, server, http, metrics, tasks, aculab)

        yield make


@pytest.fixture
async def harness(make_harness: MakeHarness) -> Harness:
    return await make_harness()


@dataclass(frozen=True)
class Dialed:
    contact_id: int
    reference: str


@pytest.fixture
async def dialed(db_pool: asyncpg.Pool, simulator: Simulator) -> list[Dialed]:
    """Three contacts sent by the real dispatcher, now `dialing` (no final page configured)."""
    campaign_id = await create_campaign(db_pool)
    await add_contacts(db_pool, campaign_id, uk_numbers(3))
    await run_until_idle(db_pool, engine_settings(simulator))
    assert await states(db_pool, campaign_id) == {"dialing": 3}
    rows = await db_pool.fetch("SELECT id, reference FROM contacts ORDER BY id")
    return [Dialed(r["id"], r["reference"]) for r in rows]


async def snapshot(pool: asyncpg.Pool) -> list[dict[str, Any]]:
    """Every engine-visible row a final page could change."""
    contacts = await pool.fetch("SELECT * FROM contacts ORDER BY id")
    calls = await pool.fetch("SELECT * FROM calls ORDER BY id")
    return [dict(r) for r in contacts] + [dict(r) for r in calls]


async def call_row(pool: asyncpg.Pool, reference: str) -> asyncpg.Record:
    row = await pool.fetchrow("SELECT * FROM calls WHERE reference = $1", reference)
    assert row is not None
    return row


async def contact_row(pool: asyncpg.Pool, contact_id: int) -> asyncpg.Record:
    row = await pool.fetchrow(
        "SELECT *, next_attempt_at - now() AS wait FROM contacts WHERE id = $1", contact_id
    )
    assert row is not None
    return row


def metric_value(harness: Harness, name: str, **labels: str) -> float | None:
    return harness.metrics.registry.get_sample_value(name, labels)


# --- the final page: recording -----------------------------------------------------------


async def test_posted_instance_info_records_the_call_and_completes_an_answered_contact(
    harness: Harness, dialed: list[Dialed]
) -> None:
    target = dialed[0]

    status, body = await harness.push(instance_info(target.reference, "hung_up", "200", 42.25))

    assert (status, body) == (200, assumptions.FINAL_PAGE_RESPONSE)
    call = await call_row(harness.pool, target.reference)
    assert (call["call_cause"], call["call_raw_cause"], call["duration"]) == (
        "hung_up",
        "200",
        42.25,
    )
    assert call["outcome_source"] == "push" and call["finished_at"] is not None
    contact = await contact_row(harness.pool, target.contact_id)
    assert (contact["state"], contact["last_result"]) == ("completed", "hung_up")
    # The other contacts are untouched.
    others = await harness.pool.fetch(
        "SELECT state FROM contacts WHERE id <> $1", target.contact_id
    )
    assert {r["state"] for r in others} == {"dialing"}


async def test_pushed_busy_puts_the_contact_back_to_pending_after_its_retry_delay(
    harness: Harness, dialed: list[Dialed]
) -> None:
    target = dialed[1]

    status, _ = await harness.push(instance_info(target.reference, "busy", "486", 0))

    assert status == 200
    contact = await contact_row(harness.pool, target.contact_id)
    assert (contact["state"], contact["last_result"], contact["attempts"]) == ("pending", "busy", 1)
    # Default retry_delays: busy → 600 s.
    assert 590 < contact["wait"].total_seconds() <= 600


async def test_get_with_the_instance_info_query_argument_records_the_outcome(
    harness: Harness, dialed: list[Dialed]
) -> None:
    target = dialed[0]
    info = json.dumps(instance_info(target.reference, "no_answer", "480", 0))

    async with harness.http.get(harness.final_url(), params={"instance_info": info}) as response:
        assert response.status == 200
        assert await response.json() == assumptions.FINAL_PAGE_RESPONSE

    call = await call_row(harness.pool, target.reference)
    assert (call["call_cause"], call["call_raw_cause"]) == ("no_answer", "480")
    contact = await contact_row(harness.pool, target.contact_id)
    assert (contact["state"], contact["last_result"]) == ("pending", "no_answer")


async def test_form_encoded_post_with_an_instance_info_field_records_the_outcome(
    harness: Harness, dialed: list[Dialed]
) -> None:
    target = dialed[2]
    form = urlencode({"instance_info": json.dumps(instance_info(target.reference, "completed"))})

    status, body = await harness.post(form.encode(), FORM)

    assert (status, body) == (200, assumptions.FINAL_PAGE_RESPONSE)
    call = await call_row(harness.pool, target.reference)
    assert (call["call_cause"], call["duration"], call["outcome_source"]) == (
        "completed",
        12.5,
        "push",
    )
    assert (await contact_row(harness.pool, target.contact_id))["state"] == "completed"


async def test_duplicate_push_answers_200_and_changes_nothing(
    harness: Harness, dialed: list[Dialed]
) -> None:
    target = dialed[0]
    assert (await harness.push(instance_info(target.reference, "busy", "486", 0)))[0] == 200
    before = await snapshot(harness.pool)

    # Aculab does not retry, but a proxy might; a different cause must not win either.
    status, body = await harness.push(instance_info(target.reference, "completed", "200", 9))

    assert (status, body) == (200, assumptions.FINAL_PAGE_RESPONSE)
    assert await snapshot(harness.pool) == before
    assert metric_value(harness, "campaign_webhook_requests_total", result="duplicate") == 1


async def test_push_arriving_after_the_poller_recorded_the_call_is_a_no_op(
    harness: Harness, dialed: list[Dialed]
) -> None:
    target = dialed[1]
    polled = outcomes.Outcome(target.reference, "no_answer", "480", 0.0)
    assert await outcomes.record(harness.pool, polled, "poll") == "recorded"
    before = await snapshot(harness.pool)

    status, _ = await harness.push(instance_info(target.reference, "completed", "200", 30))

    assert status == 200
    assert await snapshot(harness.pool) == before
    call = await call_row(harness.pool, target.reference)
    assert (call["call_cause"], call["outcome_source"]) == ("no_answer", "poll")


async def test_head_on_the_final_page_is_refused_so_it_cannot_record(
    harness: Harness, dialed: list[Dialed]
) -> None:
    before = await snapshot(harness.pool)
    info = json.dumps(instance_info(dialed[0].reference))

    async with harness.http.head(harness.final_url(), params={"instance_info": info}) as response:
        assert response.status == 405

    assert await snapshot(harness.pool) == before


# --- the final page: refusals ------------------------------------------------------------


async def test_wrong_secret_is_404_changes_nothing_and_is_logged_without_the_secret(
    harness: Harness, dialed: list[Dialed]
) -> None:
    before = await snapshot(harness.pool)
    near_miss = SECRET[:-1] + "X"

    with capture_logs() as logs:
        for wrong in (near_miss, SECRET + "0", "short"):
            status, body = await harness.push(instance_info(dialed[0].reference), secret=wrong)
            assert (status, body) == (404, {"error": "not found"})

    assert await snapshot(harness.pool) == before
    rejected = [e for e in logs if e["event"] == "webhook_rejected"]
    assert len(rejected) == 3 and all(e["log_level"] == "warning" for e in rejected)
    assert "short" not in repr(logs) and near_miss not in repr(logs)
    assert metric_value(harness, "campaign_webhook_requests_total", result="forbidden") == 3
    # Indistinguishable from a route that does not exist.
    assert await harness.get("/final") == (404, {"error": "not found"})


async def test_empty_configured_secret_disables_the_final_page(
    make_harness: MakeHarness, dialed: list[Dialed]
) -> None:
    harness = await make_harness(listener(webhook_secret=""))
    before = await snapshot(harness.pool)

    for secret in ("", "anything-at-all-long-enough", SECRET):
        status, _ = await harness.push(instance_info(dialed[0].reference), secret=secret)
        assert status == 404

    assert await snapshot(harness.pool) == before


@pytest.mark.parametrize(
    ("body", "content_type", "reason"),
    [
        (b'{"application_instance_id": ', JSON, "not valid JSON"),
        (b"", JSON, "not valid JSON"),
        (b"[1, 2, 3]", JSON, "must be a JSON object"),
        (b'"just a string"', JSON, "must be a JSON object"),
        (b'{"this_call": {"call_cause": "busy"}}', JSON, "application_instance_id is missing"),
        (b'{"application_instance_id": "REF"}', JSON, "this_call is missing"),
        (
            b'{"application_instance_id": "REF", "this_call": {"call_cause": "exploded"}}',
            JSON,
            "not a known cause",
        ),
        (
            b'{"application_instance_id": "REF\\u0000", "this_call": {"call_cause": "busy"}}',
            JSON,
            "NUL",
        ),
        (
            b'{"application_instance_id": "REF\\ud800", "this_call": {"call_cause": "busy"}}',
            JSON,
            "not valid Unicode",
        ),
        (b"\xff\xfe{}", JSON, "not UTF-8"),
        (b"[" * 60000, JSON, "not valid JSON"),
        (b"other=1", FORM, "instance_info is missing"),
        (b"instance_info=%7B%7D&instance_info=%7B%7D", FORM, "more than once"),
        (b"instance_info=%FF", FORM, "cannot be read"),
        (b"instance_info=%7Bnope", FORM, "not valid JSON"),
    ],
)
async def test_unusable_body_is_400_with_the_reason_and_changes_nothing(
    harness: Harness, dialed: list[Dialed], body: bytes, content_type: str, reason: str
) -> None:
    # A real reference, so that only the refusal stands between the body and a change.
    body = body.replace(b"REF", dialed[0].reference.encode())
    before = await snapshot(harness.pool)

    with capture_logs() as logs:
        status, answer = await harness.post(body, content_type)

    assert status == 400
    assert reason in answer["error"]
    assert await snapshot(harness.pool) == before
    assert await harness.pool.fetchval("SELECT count(*) FROM unmatched_outcomes") == 0
    bad = [e for e in logs if e["event"] == "webhook_bad_request"]
    assert len(bad) == 1 and bad[0]["log_level"] == "warning" and reason in bad[0]["reason"]
    assert metric_value(harness, "campaign_webhook_requests_total", result="bad_request") == 1


async def test_get_without_an_instance_info_argument_is_400(harness: Harness) -> None:
    assert (await harness.get(f"/final/{SECRET}"))[0] == 400
    status, body = await harness.get(f"/final/{SECRET}", instance_info="{not json")
    assert status == 400 and "not valid JSON" in body["error"]


async def test_body_whose_content_encoding_does_not_decode_is_400(harness: Harness) -> None:
    good = gzip.compress(json.dumps(instance_info("nobody")).encode())

    status, _ = await harness.post(good[:-8] + b"garbage!", JSON, **{"Content-Encoding": "gzip"})

    assert status == 400


async def test_unknown_reference_is_404_and_stashed_for_the_poller(
    harness: Harness, dialed: list[Dialed]
) -> None:
    before = await snapshot(harness.pool)

    with capture_logs() as logs:
        status, body = await harness.push(instance_info("not-yet-acknowledged.7", "busy", "486", 0))

    assert (status, body) == (404, {"error": "unknown application_instance_id"})
    assert await snapshot(harness.pool) == before
    stashed = await harness.pool.fetch(
        "SELECT reference, call_cause, call_raw_cause, duration FROM unmatched_outcomes"
    )
    assert [tuple(r) for r in stashed] == [("not-yet-acknowledged.7", "busy", "486", 0.0)]
    unknown = [e for e in logs if e["event"] == "webhook_unknown_id"]
    assert len(unknown) == 1 and unknown[0]["log_level"] == "debug"
    assert metric_value(harness, "campaign_webhook_requests_total", result="unknown") == 1


async def answer_with_the_body_held_back(
    harness: Harness, framing: str, offered: bytes
) -> tuple[int, Any]:
    """POST to the final page over a raw connection: the head (with `framing`, a
    Content-Length or chunked header), then only the `offered` bytes, never the rest.

    A server that answers has read at most what was offered; one that waits for
    more never answers, and the test fails after a while.
    """
    assert harness.server.port is not None
    reader, writer = await asyncio.open_connection(harness.server.host, harness.server.port)
    try:
        head = (
            f"POST /final/{SECRET} HTTP/1.1\r\nHost: {harness.server.host}\r\n"
            f"Content-Type: {JSON}\r\n{framing}\r\n\r\n"
        )
        writer.write(head.encode() + offered)
        await writer.drain()
        try:
            async with asyncio.timeout(10):
                status = int((await reader.readline()).split()[1])
                length = 0
                while (line := await reader.readline()) not in (b"\r\n", b""):
                    name, _, value = line.decode().partition(":")
                    if name.strip().lower() == "content-length":
                        length = int(value)
                body = json.loads(await reader.readexactly(length))
        except TimeoutError:
            raise AssertionError(
                f"no answer after {len(offered)} bytes past the head: the server waits for more"
            ) from None
        return status, body
    finally:
        writer.close()


async def test_huge_body_is_refused_with_413_before_it_is_read(harness: Harness) -> None:
    # 5 MB announced, not a byte of it sent: the answer can only come from the header.
    status, body = await answer_with_the_body_held_back(
        harness, f"Content-Length: {5 * 1024 * 1024}", b""
    )

    assert (status, body) == (413, {"error": "request body is too large"})
    assert metric_value(harness, "campaign_webhook_requests_total", result="too_large") == 1


async def test_huge_chunked_body_without_a_length_is_refused_with_413(harness: Harness) -> None:
    # One byte past the limit, in chunks, and the body never ends: the server must
    # stop reading there rather than wait for the whole of it.
    limit = listener().max_body_bytes
    data = b"x" * (limit + 1)
    chunks = b"".join(
        b"%x\r\n%s\r\n" % (len(part), part)
        for part in (data[i : i + 4096] for i in range(0, len(data), 4096))
    )

    status, body = await answer_with_the_body_held_back(
        harness, "Transfer-Encoding: chunked", chunks
    )

    assert (status, body) == (413, {"error": "request body is too large"})
    assert metric_value(harness, "campaign_webhook_requests_total", result="too_large") == 1


async def test_body_at_the_limit_is_read(harness: Harness, dialed: list[Dialed]) -> None:
    info = instance_info(dialed[0].reference)
    info["token"] = ""
    padded = json.dumps(info).encode()
    limit = listener().max_body_bytes
    padded = padded[:-1] + b" " * (limit - len(padded)) + b"}"
    assert len(padded) == limit

    status, _ = await harness.post(padded, JSON)

    assert status == 200


async def test_database_failure_during_a_push_answers_503(
    make_harness: MakeHarness, db_dsn: str, dialed: list[Dialed]
) -> None:
    async with open_pool(db_dsn, min_size=1, max_size=1) as closed:
        pass
    harness = await make_harness(pool=closed)

    status, body = await harness.push(instance_info(dialed[0].reference))

    assert (status, body) == (503, {"error": "database unavailable"})
    assert metric_value(harness, "campaign_webhook_requests_total", result="unavailable") == 1


# --- health, metrics, routing ------------------------------------------------------------


async def test_healthz_is_200_when_the_database_answers_and_every_task_runs(
    harness: Harness,
) -> None:
    harness.tasks.update(dispatcher=True, poller=True)

    status, body = await harness.get("/healthz")

    assert (status, body) == (
        200,
        {
            "status": "ok",
            "database": True,
            "tasks": {"dispatcher": True, "poller": True},
            "aculab": {"reachable": True},
        },
    )


async def test_healthz_says_when_aculab_is_unreachable_and_stays_200(harness: Harness) -> None:
    # A restart would not bring Aculab back: the daemon rides the outage out itself.
    harness.tasks.update(dispatcher=True)
    harness.aculab.append((42.04, "service_start: cannot connect"))

    status, body = await harness.get("/healthz")

    assert status == 200
    assert body["aculab"] == {
        "reachable": False,
        "unreachable_seconds": 42.0,
        "error": "service_start: cannot connect",
    }


async def test_healthz_is_503_when_a_task_has_died(harness: Harness) -> None:
    harness.tasks.update(dispatcher=True, poller=False)

    status, body = await harness.get("/healthz")

    assert status == 503
    assert body == {
        "status": "unhealthy",
        "database": True,
        "tasks": {"dispatcher": True, "poller": False},
        "aculab": {"reachable": True},
    }


async def test_healthz_is_503_when_the_database_does_not_answer(
    make_harness: MakeHarness, db_dsn: str
) -> None:
    async with open_pool(db_dsn, min_size=1, max_size=1) as closed:
        pass
    harness = await make_harness(pool=closed)
    harness.tasks.update(dispatcher=True)

    status, body = await harness.get("/healthz")

    assert status == 503
    assert body == {
        "status": "unhealthy",
        "database": False,
        "tasks": {"dispatcher": True},
        "aculab": {"reachable": True},
    }


async def test_metrics_page_shows_the_counters_after_some_requests(
    harness: Harness, dialed: list[Dialed]
) -> None:
    await harness.push(instance_info(dialed[0].reference, "busy", "486", 0))
    await harness.push(instance_info(dialed[0].reference, "busy", "486", 0))
    await harness.push(instance_info(dialed[1].reference), secret="wrong-secret")
    await harness.post(b"{", JSON)

    async with harness.http.get(f"{harness.server.url}/metrics") as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain")
        text = await response.text()

    for line in (
        'campaign_webhook_requests_total{result="recorded"} 1.0',
        'campaign_webhook_requests_total{result="duplicate"} 1.0',
        'campaign_webhook_requests_total{result="forbidden"} 1.0',
        'campaign_webhook_requests_total{result="bad_request"} 1.0',
        'campaign_webhook_requests_total{result="too_large"} 0.0',
        'campaign_call_outcomes_total{cause="busy",source="push"} 1.0',
        'campaign_retries_total{cause="busy"} 1.0',
    ):
        assert line in text.splitlines(), line
    assert "# TYPE campaign_aculab_request_seconds histogram" in text


def test_each_metrics_instance_has_its_own_registry() -> None:
    first, second = new_metrics(), new_metrics()

    first.webhook_requests.labels(result="recorded").inc()

    assert (
        first.registry.get_sample_value("campaign_webhook_requests_total", {"result": "recorded"})
        == 1
    )
    assert (
        second.registry.get_sample_value("campaign_webhook_requests_total", {"result": "recorded"})
        == 0
    )


async def test_any_other_route_is_404(harness: Harness) -> None:
    for path in ("/", "/final", "/final/", "/metrics/x", "/healthz/x"):
        assert await harness.get(path) == (404, {"error": "not found"}), path


# --- serving -----------------------------------------------------------------------------


async def test_serve_listens_until_stop_is_set_then_closes(db_pool: asyncpg.Pool) -> None:
    app = build_app(db_pool, listener(), new_metrics(), dict)
    server = Server(app, listener())
    stop, ready = asyncio.Event(), asyncio.Event()
    running = asyncio.create_task(server.run(stop, ready))
    await asyncio.wait_for(ready.wait(), 5)
    url = server.url
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{url}/healthz") as response:
            assert response.status == 200

        stop.set()
        await asyncio.wait_for(running, 10)

        with pytest.raises(aiohttp.ClientConnectionError):
            async with http.get(f"{url}/healthz"):
                pass


async def test_serve_on_a_busy_port_raises_instead_of_hanging(harness: Harness) -> None:
    taken = listener(port=harness.server.port)
    app = build_app(harness.pool, taken, new_metrics(), dict)
    stop, ready = asyncio.Event(), asyncio.Event()

    with pytest.raises(OSError, match="address already in use"):
        await asyncio.wait_for(serve(app, taken, stop, ready), 5)
    assert not ready.is_set()


# --- end to end --------------------------------------------------------------------------


async def test_final_pages_from_the_simulator_move_every_dialed_contact_on(
    db_pool: asyncpg.Pool, make_simulator: MakeSimulator
) -> None:
    metrics = new_metrics()
    settings = listener()
    async with Server(build_app(db_pool, settings, metrics, dict), settings) as server:
        # The simulator's clock stands still while the engine dispatches, so no
        # call ends (and no final page is requested) before its batch is
        # acknowledged; a push that beats the acknowledgement is the poller's
        # job (stashed, matched later), not what this test is about.
        clock = ManualClock()
        sim = await make_simulator(
            SimulatorConfig(
                final_page_url=f"{server.url}/final/{SECRET}",
                cause_weights={"busy": 1.0},
                calls_per_second=10_000,
            ),
            clock=clock,
        )
        campaign_id = await create_campaign(db_pool)
        await add_contacts(db_pool, campaign_id, uk_numbers(6))
        await run_until_idle(db_pool, engine_settings(sim))
        assert await states(db_pool, campaign_id) == {"dialing": 6}

        clock.advance(60)
        # The simulator signals nothing when a final page has been answered: poll.
        await wait_until(lambda: len(sim.callbacks) == 6, 10, "the six final pages")

    assert {(c.outcome, c.status) for c in sim.callbacks} == {("sent", 200)}
    rows = await db_pool.fetch(
        "SELECT c.state, c.last_result, c.attempts, c.next_attempt_at > now() + interval '500 s'"
        " AS later, k.call_cause, k.call_raw_cause, k.outcome_source"
        " FROM contacts c JOIN calls k ON k.reference = c.reference"
    )
    assert len(rows) == 6
    assert {tuple(r) for r in rows} == {("pending", "busy", 1, True, "busy", "486", "push")}
    assert (
        metrics.registry.get_sample_value("campaign_webhook_requests_total", {"result": "recorded"})
        == 6
    )


# --- hostile bodies ----------------------------------------------------------------------

_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
)
_json_values = st.recursive(
    _scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
# Close to a real instance_info, so the parsing gets past the first checks.
_near_misses = st.fixed_dictionaries(
    {
        "application_instance_id": st.one_of(st.text(max_size=30), _json_values),
        "this_call": st.one_of(
            _json_values,
            st.fixed_dictionaries(
                {
                    "call_cause": st.one_of(
                        st.sampled_from(sorted(vocabulary.CALL_CAUSES)), _json_values
                    ),
                    "call_raw_cause": _json_values,
                    "seconds_call_duration": _json_values,
                }
            ),
        ),
    }
)
_documents = st.one_of(_json_values, _near_misses).map(json.dumps)
_requests = st.one_of(
    st.tuples(st.just("json"), st.binary(max_size=400)),
    st.tuples(st.just("json"), _documents.map(str.encode)),
    st.tuples(st.just("form"), st.binary(max_size=200)),
    st.tuples(st.just("form"), _documents.map(lambda d: urlencode({"instance_info": d}).encode())),
    st.tuples(st.just("get"), _documents.map(str.encode)),
)


@settings(
    max_examples=100,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(request=_requests)
async def test_hostile_final_page_requests_get_a_4xx_and_never_touch_contacts(
    harness: Harness, dialed: list[Dialed], request: tuple[str, bytes]
) -> None:
    before = await harness.pool.fetch("SELECT * FROM contacts ORDER BY id")
    mode, payload = request

    if mode == "get":
        async with harness.http.get(
            harness.final_url(), params={"instance_info": payload.decode()}
        ) as response:
            status = response.status
    else:
        status, _ = await harness.post(payload, JSON if mode == "json" else FORM)

    assert 400 <= status < 500
    assert await harness.pool.fetch("SELECT * FROM contacts ORDER BY id") == before
