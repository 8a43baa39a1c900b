"""`campaign why NAME`: what holds a campaign's contacts back, on a real PostgreSQL.

The database is set up as the dispatcher, the pacing log and the tracker leave it
(contacts deferred to their window, waiting for a retry, batches parked, calls open),
or as a newcomer leaves it before any daemon ran (contacts outside their window, numbers
that will never be dialed), then the report is read through `gather_why`, its
renderers and the command, and the daemon's start-up outlook from the same report.
"""

from __future__ import annotations

import asyncio
import io
import json
import re
from datetime import timedelta
from typing import Any

import pytest

from campaign.daemon import run_daemon
from campaign.db.admin import Pool
from campaign.dispatch import DUPLICATE_REASON
from campaign.logs import configure_logging
from campaign.simulator import Simulator
from campaign.why import (
    WhyReport,
    gather_why,
    outlook,
    render_json,
    render_text,
    to_json_document,
)
from tests.engine import engine_settings, run_until_idle, states
from tests.helpers import (
    Cli,
    one_line,
    run_campaign,
    wait_until,
    window_closed_now,
)

LONDON_OPENING = "outside the calling window; opens 2026-11-28T09:00:00+00:00 (09:00 Europe/London)"
NEW_YORK_OPENING = (
    "outside the calling window; opens 2026-11-28T14:00:00+00:00 (09:00 America/New_York)"
)


pytestmark = pytest.mark.usefixtures("restore_logging")


async def new_campaign(pool: Pool, name: str = "spring", **columns: Any) -> int:
    """A campaign whose due contacts a daemon would dial at any hour, unless a test says
    otherwise: `campaign why` judges them by the claim's rules, against the real clock."""
    cols = {
        "name": name,
        "service_name": "Svc",
        "caller_id": "441908273801",
        "window_start": "00:00",
        "window_end": "24:00",
        **columns,
    }
    names = ", ".join(cols)
    params = ", ".join(
        f"${i}::text::time" if name.startswith("window_") else f"${i}"
        for i, name in enumerate(cols, start=1)
    )
    campaign_id: int = await pool.fetchval(
        f"INSERT INTO campaigns ({names}) VALUES ({params}) RETURNING id", *cols.values()
    )
    return campaign_id


async def add_contacts(
    pool: Pool,
    campaign_id: int,
    count: int,
    *,
    state: str = "pending",
    due_in: str = "-1 second",
    not_before_in: str | None = None,
    last_result: str | None = None,
    last_error: str | None = None,
    waiting_for_window: bool = False,
) -> list[int]:
    # Numbered on from the contacts already there: every contact has a number of its own
    # (the same number twice would make one of them a duplicate).
    rows = await pool.fetch(
        "INSERT INTO contacts (campaign_id, destination, state, next_attempt_at, not_before, "
        "                      last_result, last_error, waiting_for_window) "
        "SELECT $1, '+4419082' || lpad((g + (SELECT count(*) FROM contacts))::text, 5, '0'), "
        "       $2, now() + $3::text::interval, now() + $4::text::interval, $5, $6, $8 "
        "FROM generate_series(1, $7) g RETURNING id",
        campaign_id,
        state,
        due_in,
        not_before_in,
        last_result,
        last_error,
        count,
        waiting_for_window,
    )
    return [r["id"] for r in rows]


async def add_batch(
    pool: Pool, campaign_id: int, contact_ids: list[int], state: str, error: str | None = None
) -> int:
    batch_id: int = await pool.fetchval(
        "INSERT INTO batches (campaign_id, service_name, unique_id, rest_calls, contact_ids, "
        "                     state, last_error) "
        "VALUES ($1, 'Svc', gen_random_uuid()::text, '[]', $2, $3, $4) RETURNING id",
        campaign_id,
        contact_ids,
        state,
        error,
    )
    return batch_id


async def add_calls(
    pool: Pool, campaign_id: int, contact_ids: list[int], *, finished: bool
) -> None:
    batch = await add_batch(pool, campaign_id, contact_ids, "submitted")
    await pool.execute(
        "INSERT INTO calls (contact_id, campaign_id, batch_id, attempt, reference, finished_at) "
        "SELECT c, $1, $2, 1, gen_random_uuid()::text, CASE WHEN $4 THEN now() END "
        "FROM unnest($3::bigint[]) AS c",
        campaign_id,
        batch,
        contact_ids,
        finished,
    )


async def grant(pool: Pool, key: str, calls: int, ago: str = "1 second") -> None:
    await pool.execute(
        "INSERT INTO rate_grants (key, granted_at, calls) "
        "VALUES ($1, now() - $2::text::interval, $3)",
        key,
        ago,
        calls,
    )


async def busy_campaign(pool: Pool) -> int:
    """A campaign with something in every section."""
    cid = await new_campaign(
        pool, calls_per_second=2.0, max_concurrent_calls=10, default_timezone="Europe/London"
    )
    # Pending: 3 due, 4 + 2 waiting for their window, 1 + 2 for a retry, 1 for not_before.
    await add_contacts(pool, cid, 3)
    await add_contacts(
        pool,
        cid,
        4,
        due_in="3 hours",
        last_result="outside_window",
        last_error=LONDON_OPENING,
        waiting_for_window=True,
    )
    await add_contacts(
        pool,
        cid,
        2,
        due_in="8 hours",
        last_result="outside_window",
        last_error=NEW_YORK_OPENING,
        waiting_for_window=True,
    )
    await add_contacts(pool, cid, 1, due_in="10 minutes", last_result="busy")
    await add_contacts(pool, cid, 2, due_in="30 minutes", last_result="no_answer")
    # not_before later than the retry: not_before holds it.
    await add_contacts(pool, cid, 1, due_in="5 minutes", not_before_in="1 day", last_result="busy")
    await add_contacts(pool, cid, 2, state="suppressed")
    dispatching = await add_contacts(pool, cid, 3, state="dispatching")
    await add_batch(pool, cid, dispatching, "pending")
    parked = await add_contacts(pool, cid, 5, state="dispatching")
    await add_batch(pool, cid, parked[:2], "parked", "beyond the idempotency window:\nresend")
    await add_batch(pool, cid, parked[2:], "parked", "HTTP 503")
    dialing = await add_contacts(pool, cid, 2, state="dialing")
    await add_calls(pool, cid, dialing, finished=False)
    await add_calls(pool, cid, await add_contacts(pool, cid, 1, state="completed"), finished=True)
    # Pacing: 15 calls for this campaign and 40 for the account in the last 10 s.
    await grant(pool, f"campaign:{cid}", 10)
    await grant(pool, f"campaign:{cid}", 5, ago="9 seconds")
    await grant(pool, f"campaign:{cid}", 100, ago="30 seconds")
    await grant(pool, "account", 40)
    await grant(pool, f"campaign:{cid + 1}", 7)
    return cid


# --- the report ------------------------------------------------------------------------------


async def test_every_pending_contact_is_counted_once_under_what_holds_it(db_pool: Pool) -> None:
    await busy_campaign(db_pool)

    r = await gather_why(db_pool, "spring", account_calls_per_second=5.0)

    assert r.pending == 3 + 4 + 2 + 1 + 2 + 1
    assert r.due == 3
    assert r.calling_window is not None and r.calling_window.contacts == 6
    assert r.retry_wait is not None and r.retry_wait.contacts == 3
    assert r.not_before is not None and r.not_before.contacts == 1
    assert r.not_before.earliest - r.as_of > timedelta(hours=23)


async def test_window_waits_are_grouped_by_opening_and_retries_by_result_earliest_first(
    db_pool: Pool,
) -> None:
    await busy_campaign(db_pool)

    r = await gather_why(db_pool, "spring", account_calls_per_second=5.0)

    assert r.calling_window is not None and r.retry_wait is not None
    assert [(g.label, g.contacts) for g in r.calling_window.groups] == [
        (LONDON_OPENING, 4),
        (NEW_YORK_OPENING, 2),
    ]
    assert r.calling_window.earliest == r.calling_window.groups[0].earliest
    assert timedelta(hours=2.9) < r.calling_window.earliest - r.as_of < timedelta(hours=3.1)
    assert [(g.label, g.contacts) for g in r.retry_wait.groups] == [("busy", 1), ("no_answer", 2)]
    assert timedelta(minutes=9) < r.retry_wait.earliest - r.as_of < timedelta(minutes=11)


async def test_pacing_compares_the_grants_of_the_last_ten_seconds_with_both_caps(
    db_pool: Pool,
) -> None:
    await busy_campaign(db_pool)

    r = await gather_why(db_pool, "spring", account_calls_per_second=5.0)

    assert (r.campaign_pacing.cap, r.campaign_pacing.granted) == (2.0, 15)
    assert r.campaign_pacing.rate == 1.5
    assert not r.campaign_pacing.at_cap
    assert (r.account_pacing.cap, r.account_pacing.granted, r.account_pacing.rate) == (5.0, 40, 4.0)
    assert not r.account_pacing.at_cap
    await db_pool.execute("UPDATE campaigns SET max_concurrent_calls = 100")
    at_cap = await gather_why(db_pool, "spring", account_calls_per_second=4.0)
    assert at_cap.account_pacing.at_cap
    assert "pacing" in at_cap.reasons
    assert "due_now" not in at_cap.reasons
    assert "  due: 3 contacts, going out at the pacing cap (about 1s at 2/s)" in (
        render_text(at_cap).splitlines()
    )


async def test_concurrency_counts_open_calls_and_dispatching_contacts_against_the_cap(
    db_pool: Pool,
) -> None:
    cid = await busy_campaign(db_pool)

    r = await gather_why(db_pool, "spring", account_calls_per_second=100.0)
    assert (r.concurrency.open_calls, r.concurrency.dispatching, r.concurrency.cap) == (2, 8, 10)
    assert r.concurrency.at_cap
    assert r.due_held_by == "concurrency"
    assert "  due: 3 contacts, waiting for calls in progress to finish (concurrency cap)" in (
        render_text(r).splitlines()
    )

    await db_pool.execute("UPDATE campaigns SET max_concurrent_calls = 11 WHERE id = $1", cid)
    r = await gather_why(db_pool, "spring", account_calls_per_second=100.0)
    assert not r.concurrency.at_cap
    assert r.due_held_by is None
    assert r.reasons[-1] == "due_now"


async def test_the_report_lists_suppressed_parked_and_in_flight_work(db_pool: Pool) -> None:
    await busy_campaign(db_pool)

    r = await gather_why(db_pool, "spring", account_calls_per_second=100.0)

    assert r.suppressed == 2
    assert (r.parked.count, r.parked.contacts) == (2, 5)
    assert [b.last_error for b in r.parked.first] == [
        "beyond the idempotency window:\nresend",
        "HTTP 503",
    ]
    assert (r.in_flight_batches, r.in_flight_contacts) == (1, 3)
    assert r.reasons == [
        "calling_window",
        "retry_wait",
        "not_before",
        "concurrency",
        "suppressed",
        "parked_batches",
        "batches_in_flight",
    ]


async def test_a_paused_campaign_says_so_and_holds_its_due_contacts(db_pool: Pool) -> None:
    cid = await new_campaign(db_pool, state="paused", state_reason="authentication failed")
    await add_contacts(db_pool, cid, 2)

    r = await gather_why(db_pool, "spring", account_calls_per_second=1.0)

    assert r.reasons == ["campaign_not_active"]
    lines = render_text(r).splitlines()
    assert "  campaign is paused (authentication failed): nothing is dialed" in lines
    assert "    `campaign resume spring` dials it again" in lines
    assert "  due: 2 contacts, held while the campaign is paused" in lines
    assert not any(line.startswith("  due now") for line in lines)


async def test_due_contacts_with_nothing_in_the_way_are_due_now(db_pool: Pool) -> None:
    cid = await new_campaign(db_pool)
    await add_contacts(db_pool, cid, 7)

    r = await gather_why(db_pool, "spring", account_calls_per_second=1.0)

    assert r.reasons == ["due_now"]
    assert render_text(r).splitlines()[-1] == (
        "  due now: 7 contacts, but no daemon is running: start `campaign run` to dial them"
    )
    await db_pool.execute("INSERT INTO daemons (owner) VALUES ('host:1:abc')")

    r = await gather_why(db_pool, "spring", account_calls_per_second=1.0)

    assert r.reasons == ["due_now"]
    assert render_text(r).splitlines()[-2:] == [
        "  pacing over the last 10 s: campaign cap 1/s, achieved 0.00/s (0 granted); "
        "account cap 1/s, achieved 0.00/s (0 granted)",
        "  due now: 7 contacts (a running daemon will pick them up)",
    ]


async def test_aculab_unreachable_from_every_daemon_holds_due_contacts_and_says_since_when(
    db_pool: Pool,
) -> None:
    cid = await new_campaign(db_pool)
    await add_contacts(db_pool, cid, 2)
    await db_pool.execute(
        "INSERT INTO daemons (owner, aculab_unreachable_since, aculab_error) VALUES "
        "('host:1:abc', now() - interval '5 minutes', 'service_start: cannot connect'), "
        "('host:2:def', now() - interval '4 minutes', 'service_start: no answer in time'), "
        # Not seen for an hour: dead, so neither alive nor reporting.
        "('host:3:old', now() - interval '2 hours', 'stale')"
    )
    await db_pool.execute(
        "UPDATE daemons SET seen_at = now() - interval '1 hour' WHERE owner = 'host:3:old'"
    )

    r = await gather_why(db_pool, "spring", account_calls_per_second=1.0, alive_within=30)

    assert r.reasons == ["aculab_unreachable"]
    assert r.due_held_by == "aculab_unreachable"
    text = render_text(r).splitlines()
    unreachable = [line for line in text if "unreachable" in line]
    assert len(unreachable) == 2
    assert re.fullmatch(
        r"  Aculab unreachable from daemon host:1:abc for 5m0\ds \(since .* UTC\): "
        r"service_start: cannot connect",
        unreachable[0],
    )
    assert re.fullmatch(
        r"  Aculab unreachable from daemon host:2:def for 4m0\ds \(since .* UTC\): "
        r"service_start: no answer in time",
        unreachable[1],
    )
    assert text[-1] == "  due: 2 contacts, held until Aculab can be reached again"
    doc = to_json_document(r)
    assert doc["daemons"]["alive"] == 2
    assert [d["owner"] for d in doc["daemons"]["aculab_unreachable"]] == [
        "host:1:abc",
        "host:2:def",
    ]
    # One daemon that can reach Aculab is enough for the contacts to go out.
    await db_pool.execute(
        "UPDATE daemons SET aculab_unreachable_since = NULL WHERE owner = 'host:2:def'"
    )
    r = await gather_why(db_pool, "spring", account_calls_per_second=1.0, alive_within=30)
    assert r.due_held_by is None


async def test_a_campaign_with_nothing_pending_says_so(db_pool: Pool) -> None:
    cid = await new_campaign(db_pool, window_start="09:00", window_end="20:00")
    await add_contacts(db_pool, cid, 3, state="completed")

    r = await gather_why(db_pool, "spring", account_calls_per_second=1.0)

    assert r.reasons == []
    assert render_text(r).splitlines()[1:] == [
        "  calling window: 09:00-20:00 local time, every day",
        "  no pending contacts (3 contacts in all; `campaign status spring` shows where they are)",
    ]


# --- before the first claim: the claim's own rules --------------------------------------------

NATIONAL = "national format (leading 0) needs the campaign's default country"
PREMIUM = "premium-rate numbers cannot be called"


async def add_destinations(pool: Pool, campaign_id: int, *destinations: str) -> list[int]:
    rows = await pool.fetch(
        "INSERT INTO contacts (campaign_id, destination) "
        "SELECT $1, d FROM unnest($2::text[]) WITH ORDINALITY AS t(d, n) ORDER BY n RETURNING id",
        campaign_id,
        list(destinations),
    )
    return [r["id"] for r in rows]


async def newcomer_campaign(pool: Pool, **columns: Any) -> int:
    """Good numbers, and one of each kind the claim will never dial."""
    cid = await new_campaign(pool, **columns)
    other = await new_campaign(pool, "autumn")
    # Claimed before (a completed call): its number belongs to it (contact_keys).
    (owner,) = await add_destinations(pool, cid, "+44 1908 273803")
    await pool.execute("UPDATE contacts SET state = 'completed' WHERE id = $1", owner)
    await pool.execute(
        "INSERT INTO contact_keys (campaign_id, key, contact_id) VALUES ($1, '441908273803', $2)",
        cid,
        owner,
    )
    await pool.execute(
        "INSERT INTO suppressions (destination, campaign_id) "
        "VALUES ('441908273802', NULL), ('441908273805', $1)",
        other,
    )
    await add_destinations(
        pool,
        cid,
        "+44 1908 273800",
        "01908 273801",  # national format, no default country
        "+44 909 8790000",  # premium rate
        "+44 1908 273802",  # on the do-not-call list
        "441908273800",  # the first number again, spelled otherwise
        "+44 1908 273803",  # the number of the completed contact
        "+44 1908 273804",
        "+44 1908 273805",  # suppressed for another campaign only
    )
    # Held by not_before, and national format all the same.
    await pool.execute(
        "INSERT INTO contacts (campaign_id, destination, not_before) "
        "VALUES ($1, '01908 273806', now() + interval '1 day')",
        cid,
    )
    return cid


async def test_contacts_outside_their_window_are_not_due_and_wait_for_each_zones_opening(
    db_pool: Pool,
) -> None:
    start, end = window_closed_now("Europe/London")
    cid = await new_campaign(db_pool, window_start=start, window_end=end)
    await add_destinations(db_pool, cid, "+44 1908 273800", "+1 212 736 5000")

    r = await gather_why(db_pool, "spring", account_calls_per_second=1.0)

    assert (r.pending, r.due) == (2, 0)
    assert r.reasons == ["calling_window"]
    assert r.calling_window is not None and r.calling_window.contacts == 2
    london, new_york = r.calling_window.groups
    assert timedelta(hours=1) <= london.earliest - r.as_of <= timedelta(hours=2)
    assert new_york.earliest > london.earliest
    lines = render_text(r).splitlines()
    assert re.fullmatch(rf"    1  wait for {start} Europe/London, in [12]h\d\dm", lines[3])
    assert re.fullmatch(rf"    1  wait for {start} America/New_York, in \d+h\d\dm", lines[4])
    assert re.fullmatch(
        r"  due now: none; the next contact is due .* UTC \(in [12]h\d\dm\); "
        r"no daemon is running: start `campaign run` before then",
        lines[-1],
    )


async def test_contacts_the_claim_would_never_dial_are_not_due_and_say_what_they_will_be(
    db_pool: Pool,
) -> None:
    await newcomer_campaign(db_pool)

    r = await gather_why(db_pool, "spring", account_calls_per_second=1.0)

    assert (r.pending, r.due) == (9, 3)
    assert [(g.state, g.reason, g.contacts) for g in r.never_dialed] == [
        ("duplicate", DUPLICATE_REASON, 2),
        ("invalid", NATIONAL, 2),
        ("invalid", PREMIUM, 1),
        ("suppressed", "on the do-not-call list", 1),
    ]
    assert r.not_before is None  # its only contact will be invalid
    assert r.reasons == ["never_dialed", "due_now"]
    assert render_text(r).splitlines()[2:] == [
        "  will never be dialed: 6 contacts",
        f"    2  will be duplicate: {DUPLICATE_REASON}",
        f"    2  will be invalid: {NATIONAL}",
        f"    1  will be invalid: {PREMIUM}",
        "    1  will be suppressed: on the do-not-call list",
        "  pacing over the last 10 s: campaign cap 1/s, achieved 0.00/s (0 granted); "
        "account cap 1/s, achieved 0.00/s (0 granted)",
        "  due now: 3 contacts, but no daemon is running: start `campaign run` to dial them",
    ]
    doc = to_json_document(r)
    assert doc["contacts"]["due"] == 3 and doc["contacts"]["never_dialed"] == 6
    assert doc["never_dialed"]["groups"][0] == {
        "state": "duplicate",
        "reason": DUPLICATE_REASON,
        "contacts": 2,
    }


async def test_what_why_foretells_is_what_the_claim_then_does(
    db_pool: Pool, simulator: Simulator
) -> None:
    cid = await newcomer_campaign(db_pool, service_name="MyOutboundService")
    await db_pool.execute("UPDATE contacts SET not_before = NULL WHERE campaign_id = $1", cid)
    foretold = await gather_why(db_pool, "spring", account_calls_per_second=1.0)

    await run_until_idle(db_pool, engine_settings(simulator))

    after = await states(db_pool, cid)
    assert after.pop("completed") == 1  # the contact claimed before
    expected: dict[str, int] = {"dialing": foretold.due}
    for g in foretold.never_dialed:
        expected[g.state] = expected.get(g.state, 0) + g.contacts
    assert after == expected == {"dialing": 3, "duplicate": 2, "invalid": 3, "suppressed": 1}


async def test_a_large_campaign_is_judged_by_a_sample_that_says_so(db_pool: Pool) -> None:
    cid = await new_campaign(db_pool)
    await add_contacts(db_pool, cid, 5)
    # Last in the order a daemon takes them: beyond the sample.
    await add_destinations(db_pool, cid, "01908 273800")

    r = await gather_why(db_pool, "spring", account_calls_per_second=1.0, examine=3)

    assert (r.examined.contacts, r.examined.of, r.examined.sample) == (3, 6, True)
    assert (r.due, r.due_not_examined, r.never_dialed) == (3, 3, [])
    lines = render_text(r).splitlines()
    assert (
        "  (a sample: the claim's rules were applied to the first 3 of the 6 contacts no daemon "
        "has judged yet, in the order a daemon takes them)"
    ) in lines
    assert lines[-1] == (
        "  due now: 3 contacts (and 3 more due, not examined), but no daemon is running: "
        "start `campaign run` to dial them"
    )
    assert to_json_document(r)["due"] == {"contacts": 3, "not_examined": 3, "held_by": None}


# --- the daemon's outlook --------------------------------------------------------------------


async def test_the_outlook_says_dialing_waiting_for_the_window_until_when_or_paused(
    db_pool: Pool,
) -> None:
    start, end = window_closed_now("Europe/London")
    night = await new_campaign(db_pool, "night", window_start=start, window_end=end)
    await add_destinations(db_pool, night, "+44 1908 273800", "01908 273801")
    await add_destinations(db_pool, await new_campaign(db_pool, "day"), "+44 1908 273802")
    paused = await new_campaign(db_pool, "held", state="paused", state_reason="by Ann")
    await add_destinations(db_pool, paused, "+44 1908 273803")

    night_r = await gather_why(db_pool, "night", 1.0)
    waiting = outlook(night_r)
    day = outlook(await gather_why(db_pool, "day", 1.0))
    held = outlook(await gather_why(db_pool, "held", 1.0))

    assert (waiting.doing, waiting.due, waiting.never_dialed) == ("waiting_for_window", 0, 1)
    assert night_r.calling_window is not None
    assert waiting.until == night_r.calling_window.earliest
    assert waiting.reason is not None and waiting.reason.endswith(f"({start} Europe/London)")
    assert (day.doing, day.due, day.until) == ("dialing", 1, None)
    assert (held.doing, held.due, held.reason) == ("paused", 1, "by Ann")


async def test_campaign_run_logs_each_campaigns_outlook_before_dialing(
    db_pool: Pool, db_dsn: str, simulator: Simulator
) -> None:
    start, end = window_closed_now("Europe/London")
    night = await new_campaign(
        db_pool, "night", service_name="MyOutboundService", window_start=start, window_end=end
    )
    await add_destinations(db_pool, night, "+44 1908 273800")
    settings = engine_settings(
        simulator,
        database={"dsn": db_dsn},
        listener={"port": 0},
        logging={"format": "json"},
    )
    logs = io.StringIO()
    configure_logging(settings.logging, stream=logs)
    stop = asyncio.Event()
    daemon = asyncio.create_task(run_daemon(settings, stop))
    try:
        await wait_until(lambda: "campaign_outlook" in logs.getvalue(), 20, "the outlook")
    finally:
        stop.set()
        assert await daemon == 0, logs.getvalue()

    lines = [json.loads(line) for line in logs.getvalue().splitlines()]
    (seen,) = [e for e in lines if e["event"] == "campaign_outlook"]
    assert seen["campaign"] == "night"
    assert (seen["state"], seen["outlook"], seen["due"], seen["pending"]) == (
        "active",
        "waiting_for_window",
        0,
        1,
    )
    assert seen["until"] > seen["ts"]
    assert [e["event"] for e in lines].index("campaign_outlook") < [
        e["event"] for e in lines
    ].index("daemon_stopped")


# --- rendering -------------------------------------------------------------------------------


async def busy_report(pool: Pool) -> WhyReport:
    await busy_campaign(pool)
    return await gather_why(pool, "spring", account_calls_per_second=5.0)


async def test_the_text_has_one_readable_section_per_reason(db_pool: Pool) -> None:
    text = render_text(await busy_report(db_pool))

    lines = text.splitlines()
    assert re.fullmatch(r"campaign spring \(id \d+\), active, as of \d{4}-.* UTC", lines[0])
    assert lines[1] == ("  calling window: any time (default zone Europe/London)")
    assert re.match(
        r"  waiting for the calling window: 6 contacts, first due .* UTC \(in 2h5\dm\)$", lines[2]
    )
    # Each opening in the zones' own clocks, and how long until it.
    assert re.fullmatch(r"    4  wait for 09:00 Europe/London, in 2h5\dm", lines[3])
    assert re.fullmatch(r"    2  wait for 09:00 America/New_York, in 7h5\dm", lines[4])
    assert re.match(r"  waiting for a retry: 3 contacts, first due .*\(in \d+m\d\ds\)$", lines[5])
    assert lines[6].startswith("    1  busy, first due ")
    assert lines[7].startswith("    2  no_answer, first due ")
    assert lines[8].startswith("  not before a set time (not_before): 1 contact, first due ")
    assert lines[9:] == [
        "  pacing over the last 10 s: campaign cap 2/s, achieved 1.50/s (15 granted); "
        "account cap 5/s, achieved 4.00/s (40 granted)",
        "  concurrency: 2 calls in progress, 8 dispatching (5 in parked batches), cap 10 "
        "- at the cap",
        "  suppressed (do-not-call list): 2 contacts, not dialed",
        "  parked batches: 2 holding 5 contacts - an operator must decide: "
        "`campaign resolve BATCH_ID` (docs/operations.md: Resolving a parked batch)",
        lines[13],
        lines[14],
        "  batches in flight: 1 (3 contacts) awaiting Aculab's answer",
        "  due: 3 contacts, waiting for calls in progress to finish (concurrency cap)",
    ]
    assert re.fullmatch(
        r"    batch \d+: age \d+s: beyond the idempotency window: resend", lines[13]
    )
    assert re.fullmatch(r"    batch \d+: age \d+s: HTTP 503", lines[14])


async def test_the_json_document_always_carries_every_key(db_pool: Pool) -> None:
    doc = json.loads(render_json(await busy_report(db_pool)))

    assert doc["reasons"] == [
        "calling_window",
        "retry_wait",
        "not_before",
        "concurrency",
        "suppressed",
        "parked_batches",
        "batches_in_flight",
    ]
    assert doc["window"]["days"] == [1, 2, 3, 4, 5, 6, 7]
    assert doc["contacts"] == {
        "total": 26,
        "pending": 13,
        "due": 3,
        "never_dialed": 0,
        "dispatching": 8,
        "dialing": 2,
        "suppressed": 2,
    }
    assert doc["campaign_not_active"] is None
    assert [(g["reason"], g["contacts"]) for g in doc["calling_window"]["groups"]] == [
        (LONDON_OPENING, 4),
        (NEW_YORK_OPENING, 2),
    ]
    assert [g["last_result"] for g in doc["retry_wait"]["groups"]] == ["busy", "no_answer"]
    assert doc["not_before"]["contacts"] == 1
    assert doc["pacing"] == {
        "window_seconds": 10.0,
        "campaign": {"cap": 2.0, "granted": 15, "rate": 1.5, "at_cap": False},
        "account": {"cap": 5.0, "granted": 40, "rate": 4.0, "at_cap": False},
    }
    assert doc["concurrency"] == {"open_calls": 2, "dispatching": 8, "cap": 10, "at_cap": True}
    assert doc["suppressed"] == {"contacts": 2}
    assert (doc["parked_batches"]["count"], len(doc["parked_batches"]["first"])) == (2, 2)
    assert doc["batches_in_flight"] == {"count": 1, "contacts": 3}
    assert doc["due"] == {"contacts": 3, "not_examined": 0, "held_by": "concurrency"}
    assert doc["never_dialed"] is None
    assert doc["examined"] == {"contacts": 13, "of": 13, "limit": 10_000, "sample": False}
    await new_campaign(db_pool, "quiet")
    quiet = to_json_document(await gather_why(db_pool, "quiet", 1.0))
    assert set(quiet) == set(doc)
    assert quiet["reasons"] == []
    assert quiet["calling_window"] is quiet["due"] is quiet["parked_batches"] is None


# --- the command -----------------------------------------------------------------------------


def test_why_prints_text_or_json_with_the_accounts_cps_from_the_settings(
    cli: Cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    cli("create", "spring", "--service", "Svc", "--paused")
    monkeypatch.setenv("CAMPAIGN_ACULAB__CALLS_PER_SECOND", "7.5")

    status, out, err = cli("why", "spring")
    assert (status, err) == (0, "")
    assert "  campaign is paused (created paused): nothing is dialed" in out.splitlines()

    status, out, _ = cli("why", "spring", "--json")
    assert status == 0
    doc = json.loads(out)
    assert doc["reasons"] == ["campaign_not_active"]
    assert doc["pacing"]["account"]["cap"] == 7.5


def test_why_refuses_an_unknown_campaign_with_status_2(cli: Cli) -> None:
    status, out, err = cli("why", "nope")

    assert (status, out) == (2, "")
    assert one_line(err) == "campaign why: no campaign named 'nope'"


def test_why_runs_as_the_real_command(db_dsn: str) -> None:
    assert run_campaign(db_dsn, "create", "spring", "--service", "Svc").returncode == 0

    proc = run_campaign(db_dsn, "why", "spring", "--json")

    assert (proc.returncode, proc.stderr) == (0, "")
    assert json.loads(proc.stdout)["campaign"]["name"] == "spring"
