"""`campaign status` through `gather_status` and its renderers, on a real PostgreSQL."""

from __future__ import annotations

import json
import re

import pytest

from campaign.db import admin
from campaign.status import format_age, gather_status, render_json, render_table
from campaign.vocabulary import CONTACT_STATES

Pool = admin.Pool


async def new_campaign(pool: Pool, name: str, *, state: str = "active") -> int:
    campaign_id: int = await pool.fetchval(
        "INSERT INTO campaigns (name, service_name, state, state_reason) "
        "VALUES ($1, 'Svc', $2, $3) RETURNING id",
        name,
        state,
        None if state == "active" else f"{state} for the test",
    )
    return campaign_id


async def add_contacts(pool: Pool, campaign_id: int, state: str, count: int) -> list[int]:
    rows = await pool.fetch(
        "INSERT INTO contacts (campaign_id, destination, state) "
        "SELECT $1, '+44' || g, $2 FROM generate_series(1, $3) g RETURNING id",
        campaign_id,
        state,
        count,
    )
    return [r["id"] for r in rows]


async def add_batch(
    pool: Pool,
    campaign_id: int,
    contact_ids: list[int],
    *,
    state: str,
    error: str | None = None,
    age: str = "0 seconds",
) -> int:
    batch_id: int = await pool.fetchval(
        "INSERT INTO batches (campaign_id, service_name, unique_id, rest_calls, contact_ids, "
        "                     state, last_error, created_at) "
        "VALUES ($1, 'Svc', gen_random_uuid()::text, '[]', $2, $3, $4, now() - $5::text::interval) "
        "RETURNING id",
        campaign_id,
        contact_ids,
        state,
        error,
        age,
    )
    return batch_id


async def test_a_campaign_without_contacts_shows_every_state_at_zero(db_pool: Pool) -> None:
    await new_campaign(db_pool, "empty")

    (status,) = await gather_status(db_pool)

    assert list(status.contacts) == list(CONTACT_STATES)
    assert set(status.contacts.values()) == {0}
    assert (status.calls_started, status.batches_in_flight, status.parked) == (0, 0, [])


async def test_counts_calls_in_flight_and_parked_batches_are_per_campaign(db_pool: Pool) -> None:
    a = await new_campaign(db_pool, "a")
    b = await new_campaign(db_pool, "b", state="paused")
    await add_contacts(db_pool, a, "pending", 5)
    dialing = await add_contacts(db_pool, a, "dialing", 2)
    await add_contacts(db_pool, a, "invalid", 1)
    parked_contacts = await add_contacts(db_pool, b, "dispatching", 3)
    submitted = await add_batch(db_pool, a, dialing, state="submitted")
    await add_batch(db_pool, a, [], state="pending")
    parked = await add_batch(
        db_pool,
        b,
        parked_contacts,
        state="parked",
        error="idempotency\nwindow passed",
        age="2 hours",
    )
    for attempt, contact_id in enumerate(dialing, start=1):
        await db_pool.execute(
            "INSERT INTO calls (contact_id, campaign_id, batch_id, attempt, reference) "
            "VALUES ($1, $2, $3, $4, $5)",
            contact_id,
            a,
            submitted,
            attempt,
            f"ref-{contact_id}",
        )

    sa, sb = await gather_status(db_pool)

    assert (sa.name, sa.state, sa.state_reason) == ("a", "active", None)
    assert sa.contacts["pending"] == 5
    assert sa.contacts["dialing"] == 2
    assert sa.contacts["invalid"] == 1
    assert sa.contacts_total == 8
    assert (sa.calls_started, sa.batches_in_flight, sa.parked) == (2, 1, [])
    assert (sb.state, sb.state_reason) == ("paused", "paused for the test")
    assert sb.contacts["dispatching"] == 3
    assert (sb.calls_started, sb.batches_in_flight) == (0, 0)
    (p,) = sb.parked
    assert (p.id, p.contacts, p.reason) == (parked, 3, "idempotency\nwindow passed")
    assert 7200 <= p.age_seconds < 7300


async def test_a_name_selects_one_campaign_and_an_unknown_name_is_refused(db_pool: Pool) -> None:
    await new_campaign(db_pool, "a")
    await new_campaign(db_pool, "b")

    assert [s.name for s in await gather_status(db_pool, "b")] == ["b"]
    with pytest.raises(admin.CampaignNotFound, match="no campaign named 'c'"):
        await gather_status(db_pool, "c")


async def test_no_campaigns_is_an_empty_report(db_pool: Pool) -> None:
    statuses = await gather_status(db_pool)
    assert statuses == []
    assert render_table(statuses) == "no campaigns"
    assert json.loads(render_json(statuses)) == {"campaigns": []}


async def test_the_json_document_carries_every_figure(db_pool: Pool) -> None:
    cid = await new_campaign(db_pool, "spring", state="paused")
    ids = await add_contacts(db_pool, cid, "pending", 2)
    parked = await add_batch(db_pool, cid, ids, state="parked", error="HTTP 503", age="90 s")

    doc = json.loads(render_json(await gather_status(db_pool)))

    (c,) = doc["campaigns"]
    assert c["name"] == "spring"
    assert (c["state"], c["state_reason"]) == ("paused", "paused for the test")
    assert c["contacts"] == {state: (2 if state == "pending" else 0) for state in CONTACT_STATES}
    assert (c["contacts_total"], c["calls_started"], c["batches_in_flight"]) == (2, 0, 0)
    (p,) = c["parked_batches"]
    assert (p["id"], p["contacts"], p["reason"]) == (parked, 2, "HTTP 503")
    assert 90 <= p["age_seconds"] < 200


async def test_the_table_lists_states_counts_and_parked_batches_one_per_line(
    db_pool: Pool,
) -> None:
    cid = await new_campaign(db_pool, "spring", state="paused")
    ids = await add_contacts(db_pool, cid, "pending", 1234)
    parked = await add_batch(
        db_pool, cid, ids[:2], state="parked", error="too old:\n  resend refused", age="3h 12m"
    )

    table = render_table(await gather_status(db_pool))

    lines = table.splitlines()
    assert lines[0] == f"campaign spring (id {cid})"
    assert re.search(r"^  state +paused \(paused for the test\)$", table, re.M)
    assert re.search(r"^    pending +1,234$", table, re.M)
    for state in CONTACT_STATES:
        assert re.search(rf"^    {state} +[\d,]+$", table, re.M), state
    assert re.search(r"^  parked batches +1$", table, re.M)
    assert (
        f"    batch {parked}: age 3h12m, 2 contacts, not in doubt: too old: resend refused" in lines
    )


def test_ages_are_short_and_readable() -> None:
    assert [format_age(s) for s in (-1, 0, 59, 60, 425, 3600, 11_520, 86_400, 187_200)] == [
        "0s",
        "0s",
        "59s",
        "1m00s",
        "7m05s",
        "1h00m",
        "3h12m",
        "1d00h",
        "2d04h",
    ]


async def test_contact_states_match_the_schema(db_pool: Pool) -> None:
    definition = await db_pool.fetchval(
        "SELECT pg_get_constraintdef(oid) FROM pg_constraint "
        "WHERE conrelid = 'contacts'::regclass AND contype = 'c' "
        "AND pg_get_constraintdef(oid) LIKE '%state%'"
    )
    assert set(re.findall(r"'(\w+)'", definition)) == set(CONTACT_STATES)
