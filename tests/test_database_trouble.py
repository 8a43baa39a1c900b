"""The database's bad days: the engine waits them out, logs each once, and loses nothing.

The engine runs as an ordinary (non-superuser) role, as it would in production, so
that PostgreSQL's own limits apply to it: a connection limit gives "too many
connections" (53300), `default_transaction_read_only` a read-only server as after a
failover (25006, and new connections refused by target_session_attrs=read-write),
`statement_timeout` with a table locked by another client a cancelled statement
(57014), and `pg_terminate_backend` connections dropped under it.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from urllib.parse import quote, urlsplit, urlunsplit

import asyncpg
import pytest
from structlog.testing import capture_logs

from campaign.db.pool import connect, open_pool
from campaign.simulator import Simulator, SimulatorConfig
from tests.engine import add_contacts, create_campaign, engine_settings, run_engine, uk_numbers
from tests.fixtures_db import quote_ident
from tests.helpers import events

pytestmark = pytest.mark.timeout(120)


@dataclass(frozen=True)
class AppRole:
    name: str
    dsn: str


def dsn_as(dsn: str, user: str, password: str) -> str:
    parts = urlsplit(dsn)
    host = parts.netloc.rpartition("@")[2]
    netloc = f"{quote(user, safe='')}:{quote(password, safe='')}@{host}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


@pytest.fixture
async def app_role(db_dsn: str) -> AsyncIterator[AppRole]:
    """A login role with the rights the engine needs on this test's database only."""
    name = f"campaign_app_{uuid.uuid4().hex[:10]}"
    password = uuid.uuid4().hex
    admin = await connect(db_dsn)
    try:
        role = quote_ident(name)
        await admin.execute(f"CREATE ROLE {role} LOGIN PASSWORD '{password}'")
        await admin.execute(f"GRANT ALL ON ALL TABLES IN SCHEMA public TO {role}")
        await admin.execute(f"GRANT ALL ON ALL SEQUENCES IN SCHEMA public TO {role}")
        yield AppRole(name, dsn_as(db_dsn, name, password))
        await terminate(admin, name)
        await admin.execute(f"DROP OWNED BY {role}")
        await admin.execute(f"DROP ROLE {role}")
    finally:
        await admin.close()


async def terminate(admin: asyncpg.Connection, role: str) -> int:
    n: int = await admin.fetchval(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE usename = $1", role
    )
    return n


async def until_the_engine_waits_for(admin: asyncpg.Connection, role: str) -> None:
    """Return once a statement of `role` is waiting for a lock (one `admin` holds)."""
    for _ in range(500):
        # Inside admin's transaction the statistics are a snapshot: take a fresh one.
        await admin.execute("SELECT pg_stat_clear_snapshot()")
        waiting = await admin.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE usename = $1 AND wait_event_type = 'Lock'",
            role,
        )
        if waiting:
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"no statement of {role} waited for the lock in 10 s")


@asynccontextmanager
async def every_connection_of(
    pool: asyncpg.Pool, admin: asyncpg.Connection, role: str
) -> AsyncIterator[None]:
    """Hold every connection of the engine's pool, then drop them all at the server.

    While the block runs no statement of the engine is in flight (its tasks wait for
    a connection), so the drops interrupt nothing: the first thing each task meets
    afterwards is a new connection, under whatever the block changed. Left to
    chance, a drop could land mid-statement and begin the task's episode of
    failures with "connection lost" instead of the trouble under test.
    """
    held = [await pool.acquire() for _ in range(pool.get_max_size())]
    try:
        yield
        assert await terminate(admin, role) == len(held)
        for _ in range(500):
            if all(map(dropped, held)):
                break
            await asyncio.sleep(0.01)
        else:
            raise AssertionError("the engine's connections did not see the server drop them")
    finally:
        for c in held:
            await pool.release(c)  # a no-op for a dropped one: the pool took it back


def dropped(connection: asyncpg.Connection) -> bool:
    try:
        return connection.is_closed()
    except asyncpg.InterfaceError:  # seeing it closed, the pool took it back
        return True


@dataclass(frozen=True)
class Scene:
    """The test's database (as the superuser, to make trouble) and the engine's role."""

    admin_dsn: str
    pool: asyncpg.Pool
    role: AppRole
    sim: Simulator


@pytest.fixture
async def scene(
    db_dsn: str,
    db_pool: asyncpg.Pool,
    app_role: AppRole,
    make_simulator: Callable[..., Awaitable[Simulator]],
) -> Scene:
    sim = await make_simulator(SimulatorConfig(calls_per_second=100_000))
    return Scene(db_dsn, db_pool, app_role, sim)


async def run_through(
    trouble: Callable[[asyncpg.Connection, asyncpg.Pool], Awaitable[None]],
    scene: Scene,
    *,
    writable: bool = True,
) -> list[dict[str, object]]:
    """Run the engine (as the app role) over a campaign while `trouble` happens;
    returns the log events. Every contact must have been called exactly once."""
    db_pool, sim, app_role = scene.pool, scene.sim, scene.role
    settings = engine_settings(sim)
    cid = await create_campaign(db_pool, batch_size=5, calls_per_second=100)
    numbers = uk_numbers(200)
    await add_contacts(db_pool, cid, numbers)

    async def everyone_called() -> bool:
        left = await db_pool.fetchval(
            "SELECT count(*) FROM contacts WHERE campaign_id = $1 AND attempts = 0", cid
        )
        return bool(left == 0)

    admin = await connect(scene.admin_dsn)
    try:
        async with open_pool(app_role.dsn, min_size=1, max_size=5, writable=writable) as pool:
            with capture_logs() as logs:
                engine = asyncio.create_task(
                    run_engine(pool, settings, until=everyone_called, timeout=60)
                )
                await asyncio.sleep(0.5)  # dialing under way
                await trouble(admin, pool)
                await engine
    finally:
        await admin.close()
    assert {n: sim.calls_to(n) for n in numbers if sim.calls_to(n) != 1} == {}
    return list(logs)


def assert_one_episode_per_task(logs: list[dict[str, object]], sqlstate: str | None) -> None:
    """The dispatcher logged the trouble when it began and when it ended, once each."""
    began = events(logs, "database_unavailable", task="dispatcher")
    ended = events(logs, "database_available", task="dispatcher")
    assert len(began) == 1, began
    assert len(ended) == 1 and ended[0]["failures"] >= 1
    if sqlstate is not None:
        # The episode's end counts every kind of failure met on the way (it may begin
        # with the connection being killed, then meet the trouble itself).
        assert sqlstate in ended[0]["errors"], ended[0]


async def test_connections_killed_under_the_engine_are_replaced(scene: Scene) -> None:
    async def kill_three_times(admin: asyncpg.Connection, _: asyncpg.Pool) -> None:
        for _ in range(3):
            # Each kill cuts a claim in the middle of a statement (an idle pooled
            # connection would be replaced without anyone noticing): the claim
            # waits for the pacing budget's lock while its connection is killed.
            async with admin.transaction():
                await admin.execute("LOCK TABLE rate_budgets IN ACCESS EXCLUSIVE MODE")
                await until_the_engine_waits_for(admin, scene.role.name)
                assert await terminate(admin, scene.role.name) >= 1

    logs = await run_through(kill_three_times, scene)

    began = events(logs, "database_unavailable", task="dispatcher")
    assert 1 <= len(began) <= 3
    assert len(events(logs, "database_available", task="dispatcher")) == len(began)


async def test_too_many_connections_is_waited_out(scene: Scene) -> None:
    role = quote_ident(scene.role.name)

    async def exhaust(admin: asyncpg.Connection, pool: asyncpg.Pool) -> None:
        async with every_connection_of(pool, admin, scene.role.name):
            await admin.execute(f"ALTER ROLE {role} CONNECTION LIMIT 0")
        await asyncio.sleep(2.0)
        await admin.execute(f"ALTER ROLE {role} CONNECTION LIMIT -1")

    logs = await run_through(exhaust, scene)

    assert_one_episode_per_task(logs, "53300")


@pytest.mark.parametrize("writable", [True, False], ids=["read-write-only", "any-server"])
async def test_a_read_only_server_after_a_failover_is_waited_out_and_left(
    scene: Scene, writable: bool
) -> None:
    # As after a failover: the connections drop, and the server they reach again
    # refuses writes for a while. Asking for a writable server refuses such
    # connections; without that, writes fail with 25006 and the pool must be made
    # to reconnect, since a session keeps its read-only default for its lifetime.
    role = quote_ident(scene.role.name)

    async def demote(admin: asyncpg.Connection, pool: asyncpg.Pool) -> None:
        async with every_connection_of(pool, admin, scene.role.name):
            await admin.execute(f"ALTER ROLE {role} SET default_transaction_read_only = on")
        await asyncio.sleep(2.0)
        await admin.execute(f"ALTER ROLE {role} RESET default_transaction_read_only")

    logs = await run_through(demote, scene, writable=writable)

    assert_one_episode_per_task(logs, None if writable else "25006")


async def test_statements_cancelled_by_a_statement_timeout_are_retried(scene: Scene) -> None:
    role = quote_ident(scene.role.name)

    async def lock_out(admin: asyncpg.Connection, _: asyncpg.Pool) -> None:
        await admin.execute(f"ALTER ROLE {role} SET statement_timeout = '100ms'")
        claimed = await admin.fetchval("SELECT count(*) FROM batches")
        await terminate(admin, scene.role.name)  # new sessions take the timeout
        # Once the engine claims again it is over whatever the kill interrupted, so
        # the cancellations below begin an episode of their own (logged once each).
        for _ in range(500):
            if await admin.fetchval("SELECT count(*) FROM batches") > claimed:
                break
            await asyncio.sleep(0.02)
        else:
            raise AssertionError("the engine did not claim again after its sessions were killed")
        async with admin.transaction():
            await admin.execute("LOCK TABLE contacts, batches IN ACCESS EXCLUSIVE MODE")
            # Held until a statement of the engine waits for it, and then past its
            # timeout (100 ms): at least one statement is cancelled, whatever the load.
            await until_the_engine_waits_for(admin, scene.role.name)
            await asyncio.sleep(0.5)
        await admin.execute(f"ALTER ROLE {role} RESET statement_timeout")

    logs = await run_through(lock_out, scene)

    # The first failure of the episode, the episode's count of every kind met, or a
    # batch's own recording failure: the timeout was met and waited out.
    seen = {k for e in events(logs, "database_available") for k in e.get("errors", {})}
    seen |= {
        e.get("sqlstate")
        for e in logs
        if e.get("event") in ("database_unavailable", "batch_record_failed")
    }
    assert "57014" in seen, seen
