"""Many campaigns cost what is due, not how many there are (issue 11).

The dispatcher claims only campaigns with a contact due now, sleeps until the
next one is due, is told by notifications which campaign changed, and serves due
campaigns in turn.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import asyncpg
import pytest

from campaign.aculab import AculabClient
from campaign.daemon import listen
from campaign.db.pool import connect
from campaign.poller import Poller
from campaign.simulator import Simulator
from tests.engine import (
    add_contacts,
    create_campaign,
    dispatcher,
    engine_settings,
    running_dispatcher,
    states,
    uk_numbers,
)
from tests.helpers import db_clock_offset, wait_until


async def _idle_campaigns(pool: asyncpg.Pool, n: int) -> None:
    """`n` active campaigns, open at any hour, whose contacts are none of them due now:
    a third wait for not_before, a third for a retry (next_attempt_at), a third are
    all dialing (their calls are under way)."""
    await pool.execute(
        """
        INSERT INTO campaigns (name, service_name, caller_id, calls_per_second,
                               max_concurrent_calls, window_start, window_end)
        SELECT 'idle' || g, 'MyOutboundService', '441908273801', 1000, 100000, '00:00', '24:00'
        FROM generate_series(1, $1) AS g
        """,
        n,
    )
    await pool.execute(
        """
        INSERT INTO contacts (campaign_id, destination, state, not_before, next_attempt_at)
        SELECT k.id, '+44 1908 ' || (200000 + k.id * 3 + g),
               CASE k.id % 3 WHEN 0 THEN 'dialing' ELSE 'pending' END,
               CASE k.id % 3 WHEN 1 THEN now() + interval '1 hour' END,
               CASE k.id % 3 WHEN 2 THEN now() + interval '1 hour' ELSE now() END
        FROM campaigns k, generate_series(1, 3) AS g
        WHERE k.name LIKE 'idle%'
        """
    )


async def test_campaigns_with_nothing_due_are_never_claimed(
    db_pool: asyncpg.Pool, simulator: Simulator
) -> None:
    await _idle_campaigns(db_pool, 1000)
    busy = await create_campaign(db_pool, "busy")
    await add_contacts(db_pool, busy, uk_numbers(3, start=5_000))
    settings = engine_settings(simulator, dispatcher={"poll_interval": 0.2})

    async with running_dispatcher(db_pool, settings) as d:
        await wait_until(
            lambda: simulator.started_count() == 3, 10, "the due campaign's contacts started"
        )
        # Several polls' worth: every campaign is read again each poll_interval.
        await asyncio.sleep(3)

    # The one campaign with due contacts took one claim (two at most, if a look
    # raced the end of its first one); the 1,000 others none, in 15 looks.
    assert 1 <= d.claims <= 2, d.claims
    assert await states(db_pool, busy) == {"dialing": 3}
    assert await db_pool.fetchval("SELECT count(*) FROM batches") == 1


@pytest.mark.parametrize("column", ["not_before", "next_attempt_at"])
async def test_a_contact_due_later_is_dispatched_at_its_time_without_a_notification(
    db_pool: asyncpg.Pool, simulator: Simulator, column: str
) -> None:
    cid = await create_campaign(db_pool)
    # A poll interval of a minute: only the dispatcher's own schedule can send this
    # contact within the test (and the test dispatcher listens to no notification).
    settings = engine_settings(simulator, dispatcher={"poll_interval": 60})
    async with running_dispatcher(db_pool, settings) as d:
        await asyncio.sleep(0.3)  # the dispatcher has looked, and found nothing
        due_at: float = await db_pool.fetchval(
            f"INSERT INTO contacts (campaign_id, destination, {column})"
            " VALUES ($1, '+44 1908 200001', now() + interval '1.5 seconds')"
            f" RETURNING extract(epoch FROM {column})::float8",
            cid,
        )
        d.wake(f"contacts:{cid}")  # what the LISTEN connection passes on
        due_at += await db_clock_offset(db_pool)
        await wait_until(lambda: simulator.started_count() == 1, 30, "the contact started")
    sent_at = simulator.start_requests[-1].at
    assert sent_at >= due_at - 0.05
    # Woken at the due time (within moments; loose for a loaded machine), not at the
    # next poll a minute later.
    assert sent_at - due_at < 10, sent_at - due_at


class Listener:
    """LISTEN campaign_wake on a real connection; collects the payloads."""

    def __init__(self, conn: asyncpg.Connection) -> None:
        self.conn = conn
        self.payloads: list[str] = []

    def _got(self, _conn: object, _pid: int, _channel: str, payload: object) -> None:
        self.payloads.append(str(payload))

    async def start(self) -> None:
        await self.conn.add_listener("campaign_wake", self._got)

    async def settle(self) -> list[str]:
        """What arrived so far, after a round trip (notifications precede its answer)."""
        await self.conn.execute("SELECT 1")
        await asyncio.sleep(0.1)
        got, self.payloads = self.payloads, []
        return got


@pytest.fixture
async def listener(db_dsn: str) -> AsyncIterator[Listener]:
    conn = await connect(db_dsn)
    try:
        heard = Listener(conn)
        await heard.start()
        yield heard
    finally:
        await conn.close()


async def test_updates_that_change_nothing_send_no_notification(
    db_pool: asyncpg.Pool, db_dsn: str, simulator: Simulator, listener: Listener
) -> None:
    cid = await create_campaign(db_pool)
    await add_contacts(db_pool, cid, uk_numbers(2))
    # Created, then its window set (tests.engine), then its contacts.
    assert await listener.settle() == [f"campaigns:{cid}", f"campaigns:{cid}", f"contacts:{cid}"]

    # Statements that match no row, or change nothing a daemon acts on.
    await db_pool.execute("UPDATE campaigns SET state = 'paused' WHERE false")
    await db_pool.execute("UPDATE campaigns SET state = state, updated_at = now()")
    await db_pool.execute("UPDATE contacts SET state = 'pending' WHERE state = 'pending'")
    await db_pool.execute(
        "INSERT INTO contacts (campaign_id, destination) SELECT $1, 'x' WHERE false", cid
    )
    await db_pool.execute("INSERT INTO suppressions (destination) SELECT 'x' WHERE false")
    # The poller's completion with nothing finished: its UPDATE changes no row.
    settings = engine_settings(simulator)
    async with AculabClient(settings.aculab, settings.http) as client:
        assert await Poller(db_pool, client, settings).complete_campaigns() == []
    assert await listener.settle() == []

    # A real change is heard, and says which campaign.
    await db_pool.execute("UPDATE campaigns SET state = 'paused' WHERE id = $1", cid)
    assert await listener.settle() == [f"campaigns:{cid}"]


async def test_new_contacts_notify_once_per_campaign_with_its_id(
    db_pool: asyncpg.Pool, listener: Listener
) -> None:
    a = await create_campaign(db_pool, "a")
    b = await create_campaign(db_pool, "b")
    await listener.settle()
    await db_pool.execute(
        "INSERT INTO contacts (campaign_id, destination)"
        " SELECT CASE WHEN g % 2 = 0 THEN $1::bigint ELSE $2::bigint END, '+44 1908 ' || g"
        " FROM generate_series(200000, 201999) AS g",
        a,
        b,
    )
    assert sorted(await listener.settle()) == sorted([f"contacts:{a}", f"contacts:{b}"])

    # A contact back in pending (a retry, a release) names its campaign too; one
    # that moves on (pending -> dispatching -> dialing) does not.
    await db_pool.execute(
        "UPDATE contacts SET state = 'dialing' WHERE campaign_id = $1 AND destination LIKE '%0'", a
    )
    assert await listener.settle() == []
    await db_pool.execute(
        "UPDATE contacts SET state = 'pending' WHERE campaign_id = $1 AND destination LIKE '%0'", a
    )
    assert await listener.settle() == [f"contacts:{a}"]


async def test_due_campaigns_take_turns_so_none_starves(
    db_pool: asyncpg.Pool, simulator: Simulator
) -> None:
    ids = [
        await create_campaign(db_pool, f"c{i}", batch_size=5, calls_per_second=1000)
        for i in range(30)
    ]
    for i, cid in enumerate(ids):
        await add_contacts(db_pool, cid, uk_numbers(40, start=i * 100))
    # One batch in flight at a time: each claim serves one campaign, so the order of
    # the claims is all that decides who dials.
    settings = engine_settings(simulator, dispatcher={"max_in_flight_batches": 1})
    async with running_dispatcher(db_pool, settings):
        await wait_until(
            lambda: simulator.started_count() >= 300, 60, "a quarter of the contacts started"
        )
    rows = await db_pool.fetch(
        "SELECT campaign_id, count(*) AS n FROM contacts"
        " WHERE state = 'dialing' GROUP BY campaign_id"
    )
    dialing = {r["campaign_id"]: r["n"] for r in rows}
    assert set(dialing) == set(ids), f"campaigns never served: {set(ids) - set(dialing)}"
    # Round-robin: no campaign is more than one batch ahead of another.
    assert max(dialing.values()) - min(dialing.values()) <= 5, dialing


async def test_a_claim_resuming_after_its_last_contact_still_takes_one_due_again_before_it(
    db_pool: asyncpg.Pool, simulator: Simulator
) -> None:
    cid = await create_campaign(db_pool, batch_size=5)
    ids = await add_contacts(db_pool, cid, uk_numbers(8))
    async with dispatcher(db_pool, engine_settings(simulator)) as d:
        [campaign] = await d._due_campaigns()
        [first], _ = await d.claim(campaign)
        assert first.contact_ids == ids[:5]
        # The first contact is back in the queue (as a released batch leaves it),
        # behind the point where the next claim resumes.
        await db_pool.execute(
            "UPDATE contacts SET state = 'pending', batch_id = NULL WHERE id = $1", ids[0]
        )
        claimed, _ = await d.claim(campaign, batches=2)
    assert [c for b in claimed for c in b.contact_ids] == [*ids[5:], ids[0]]


async def test_claim_order_is_priority_first_even_at_the_extreme_priorities(
    db_pool: asyncpg.Pool, simulator: Simulator
) -> None:
    cid = await create_campaign(db_pool, batch_size=5)
    ids = await db_pool.fetch(
        "INSERT INTO contacts (campaign_id, destination, priority)"
        " SELECT $1, '+44 1908 ' || (200000 + n), p"
        " FROM unnest($2::int[]) WITH ORDINALITY AS t(p, n) ORDER BY n RETURNING id",
        cid,
        [-(2**31), 0, 2**31 - 1, 0],
    )
    low, mid, high, mid2 = (r["id"] for r in ids)
    async with dispatcher(db_pool, engine_settings(simulator)) as d:
        [campaign] = await d._due_campaigns()
        [batch], _ = await d.claim(campaign)
    assert batch.contact_ids == [high, mid, mid2, low]


async def test_a_pending_contact_made_due_sooner_notifies_and_a_deferral_does_not(
    db_pool: asyncpg.Pool, listener: Listener
) -> None:
    cid = await create_campaign(db_pool)
    other = await create_campaign(db_pool, "other")
    [contact] = await add_contacts(db_pool, cid, uk_numbers(1))
    await db_pool.execute(
        "UPDATE contacts SET next_attempt_at = now() + interval '1 hour' WHERE id = $1", contact
    )
    await listener.settle()

    # Later still (a deferral, a retry pushed back): nothing a daemon must act on.
    await db_pool.execute(
        "UPDATE contacts SET next_attempt_at = next_attempt_at + interval '1 hour' WHERE id = $1",
        contact,
    )
    await db_pool.execute(
        "UPDATE contacts SET not_before = now() + interval '3 hours' WHERE id = $1", contact
    )
    assert await listener.settle() == []

    # Sooner: the operator's "call it now", by either column.
    await db_pool.execute("UPDATE contacts SET not_before = NULL WHERE id = $1", contact)
    assert await listener.settle() == [f"contacts:{cid}"]
    await db_pool.execute("UPDATE contacts SET next_attempt_at = now() WHERE id = $1", contact)
    assert await listener.settle() == [f"contacts:{cid}"]
    # Moved to another campaign: that one has work now.
    await db_pool.execute("UPDATE contacts SET campaign_id = $2 WHERE id = $1", contact, other)
    assert await listener.settle() == [f"contacts:{other}"]


async def test_while_notifications_are_heard_campaigns_are_read_again_only_now_and_then(
    db_pool: asyncpg.Pool, db_dsn: str, simulator: Simulator
) -> None:
    await _idle_campaigns(db_pool, 30)
    settings = engine_settings(
        simulator, dispatcher={"poll_interval": 0.1, "recheck_all_seconds": 60}
    )
    cid = await create_campaign(db_pool, "later")
    [contact] = await add_contacts(db_pool, cid, uk_numbers(1, start=9_000))
    await db_pool.execute(
        "UPDATE contacts SET next_attempt_at = now() + interval '1 hour' WHERE id = $1", contact
    )
    async with running_dispatcher(db_pool, settings) as d:
        stop = asyncio.Event()
        listening = asyncio.create_task(listen(db_dsn, d.wake, stop, d.listening))
        try:
            await wait_until(lambda: d._listening, 10, "the LISTEN connection is up")
            await asyncio.sleep(0.3)  # the look at everything a (re)connection asks for
            reads = d.full_reads
            await asyncio.sleep(1.5)
            # Fifteen poll intervals, and no second look at every campaign...
            assert d.full_reads == reads
            # ...yet a contact made due sooner is dialled at once: the notification
            # names its campaign, which alone is read again.
            await db_pool.execute(
                "UPDATE contacts SET next_attempt_at = now() WHERE id = $1", contact
            )
            await wait_until(lambda: simulator.started_count() == 1, 10, "the contact started")
            assert d.full_reads == reads
        finally:
            stop.set()
            await listening
        # With the LISTEN connection down, every campaign is read each poll_interval.
        assert not d._listening
        reads = d.full_reads
        await asyncio.sleep(1.0)
        assert d.full_reads >= reads + 4, d.full_reads - reads
