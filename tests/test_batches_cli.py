"""`campaign batches` and `campaign resolve`: parked batches settled without SQL.

The commands run in-process against a real PostgreSQL; the batches are made with
SQL as the dispatcher leaves them (tests/parked_batches.py).
"""

from __future__ import annotations

import asyncio
import getpass
import json
import re

import pytest

from campaign.db import batches as batch_db
from campaign.db.admin import Pool
from tests.helpers import Cli, one_line, point_at
from tests.parked_batches import (
    PARK_REASON,
    add_batch,
    batch_row,
    contact_rows,
    log_events,
    new_campaign,
    resolutions,
    seconds_ago,
)

OPERATOR = getpass.getuser()


pytestmark = pytest.mark.usefixtures("restore_logging")


def table_ids(out: str) -> list[int]:
    """The batch ids of a `campaign batches` table, in order (the header skipped)."""
    lines = out.splitlines()
    assert lines[0].split() == [
        "id",
        "campaign",
        "unique_id",
        "age",
        "sends",
        "state",
        "in_doubt",
        "contacts",
        "last_error",
    ]
    return [int(line.split()[0]) for line in lines[1:] if not line.startswith("...")]


# --- campaign batches ---------------------------------------------------------------------


async def test_batches_lists_the_open_ones_oldest_first_with_their_details(
    cli: Cli, db_pool: Pool
) -> None:
    cid = await new_campaign(db_pool, "spring")
    await add_batch(db_pool, cid, state="submitted", age="5 hours", reason=None)
    pending = await add_batch(
        db_pool, cid, state="pending", age="5 minutes", reason="HTTP 503", in_doubt=False
    )
    parked = await add_batch(db_pool, cid, contacts=2, age="2 hours")
    await add_batch(db_pool, cid, state="released", age="3 hours")

    status, out, err = await cli.run("batches")

    assert (status, err) == (0, "")
    assert table_ids(out) == [parked.id, pending.id]
    first, second = out.splitlines()[1:]
    # Long reasons are cut to one short line; the age is the database's.
    assert first.split()[:8] == [
        str(parked.id),
        "spring",
        parked.unique_id,
        "2h00m",
        "4",
        "parked",
        "yes",
        "2",
    ]
    assert first.endswith("...") and "unacknowledged for 3700s" in first
    assert len(first.split("2  ", 1)[-1].strip()) <= 60 + len("2  ")
    assert second.split()[3:] == ["5m00s", "4", "pending", "no", "3", "HTTP", "503"]


async def test_parked_lists_only_parked_and_all_every_state_newest_first_up_to_the_limit(
    cli: Cli, db_pool: Pool
) -> None:
    cid = await new_campaign(db_pool, "spring")
    made = [
        await add_batch(db_pool, cid, state=state, age=age)
        for state, age in [
            ("parked", "4 hours"),
            ("submitted", "3 hours"),
            ("pending", "2 hours"),
            ("parked", "1 hour"),
            ("failed", "30 minutes"),
        ]
    ]
    ids = [b.id for b in made]

    assert table_ids((await cli.run("batches", "--parked"))[1]) == [ids[0], ids[3]]
    assert table_ids((await cli.run("batches", "--all"))[1]) == ids[::-1]
    status, out, _ = await cli.run("batches", "--all", "--limit", "2")
    assert status == 0
    assert table_ids(out) == [ids[4], ids[3]]
    assert out.splitlines()[-1] == "... showing the 2 newest; more with --limit N"
    status, out, _ = await cli.run("batches", "--limit", "1")
    assert table_ids(out) == [ids[0]]
    assert out.splitlines()[-1] == "... showing the 1 oldest; more with --limit N"


async def test_a_name_limits_the_list_to_one_campaign_and_an_unknown_name_is_refused(
    cli: Cli, db_pool: Pool
) -> None:
    a = await new_campaign(db_pool, "a")
    b = await new_campaign(db_pool, "b")
    await add_batch(db_pool, a)
    in_b = await add_batch(db_pool, b)

    status, out, _ = await cli.run("batches", "b")
    assert (status, table_ids(out)) == (0, [in_b.id])

    status, out, err = await cli.run("batches", "c")
    assert (status, out) == (2, "")
    assert one_line(err) == "campaign batches: no campaign named 'c'"


async def test_json_is_one_list_with_whole_errors_times_owner_and_raw_answer_when_present(
    cli: Cli, db_pool: Pool
) -> None:
    cid = await new_campaign(db_pool, "spring")
    answer = '{"references": ["a", "b"]}\n'
    parked = await add_batch(db_pool, cid, contacts=3, age="90 minutes", raw_answer=answer)
    pending = await add_batch(
        db_pool, cid, state="pending", age="1 minute", owner="host-1:4242", in_doubt=False
    )

    status, out, _ = await cli.run("batches", "--json")

    assert status == 0
    first, second = json.loads(out)
    assert first["id"] == parked.id
    assert {k: first[k] for k in ("campaign_id", "campaign", "unique_id", "state")} == {
        "campaign_id": cid,
        "campaign": "spring",
        "unique_id": parked.unique_id,
        "state": "parked",
    }
    assert (first["in_doubt"], first["sends"], first["contacts"]) == (True, 4, 3)
    assert (first["last_error"], first["raw_answer"], first["owner"]) == (PARK_REASON, answer, None)
    assert 5400 <= first["age_seconds"] < 5500
    for key in ("created_at", "next_send_at"):
        assert re.match(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d", first[key]), key
    assert (second["id"], second["owner"], second["in_doubt"]) == (
        pending.id,
        "host-1:4242",
        False,
    )
    assert "raw_answer" not in second


@pytest.mark.parametrize(
    ("argv", "line"),
    [
        (("batches",), "no open batches"),
        (("batches", "--parked"), "no parked batches"),
        (("batches", "--all", "quiet"), "no batches in campaign 'quiet'"),
    ],
)
async def test_an_empty_list_is_a_clear_line_and_status_0(
    cli: Cli, db_pool: Pool, argv: tuple[str, ...], line: str
) -> None:
    cid = await new_campaign(db_pool, "spring")
    await new_campaign(db_pool, "quiet")
    await add_batch(db_pool, cid, state="submitted")

    status, out, err = await cli.run(*argv)

    assert (status, one_line(out), err) == (0, line, "")
    assert await cli.run(*argv, "--json") == (0, "[]\n", "")


# --- campaign resolve: usage --------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (("batches", "--parked", "--all"), "not allowed with argument"),
        (("batches", "--limit", "0"), "must be at least 1"),
        (("resolve", "7"), "one of the arguments --resend --not-started --failed is required"),
        (("resolve", "7", "--resend", "--failed"), "not allowed with argument"),
        (("resolve", "x", "--resend"), "not a whole number"),
        (("resolve", "7", "--failed"), "--failed needs --reason TEXT"),
        (("resolve", "7", "--failed", "--reason", "  "), "--failed needs --reason TEXT"),
        (("resolve", "7", "--not-started", "--force"), "--force only applies to --resend"),
    ],
)
async def test_malformed_commands_are_refused_with_one_line_and_status_2(
    cli: Cli, db_pool: Pool, argv: tuple[str, ...], message: str
) -> None:
    cid = await new_campaign(db_pool, "spring")
    await add_batch(db_pool, cid)

    status, out, err = await cli.run(*argv)

    assert (status, out) == (2, "")
    assert message in one_line(err)
    assert await resolutions(db_pool) == []


@pytest.mark.parametrize("argv", [("batches",), ("resolve", "7", "--not-started")])
async def test_an_unreachable_database_is_one_line_and_status_1(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, argv: tuple[str, ...]
) -> None:
    point_at(monkeypatch, "postgresql://bob:s3cret@127.0.0.1:1/campaigns")

    status, out, err = await Cli("", capsys).run(*argv)

    assert (status, out) == (1, "")
    assert one_line(err).startswith(
        f"campaign {argv[0]}: cannot reach PostgreSQL at 127.0.0.1:1/campaigns"
    )


# --- campaign resolve --resend --------------------------------------------------------------


async def test_resend_gives_the_batch_back_to_the_daemons_with_the_same_bytes_and_id(
    cli: Cli, db_pool: Pool
) -> None:
    cid = await new_campaign(db_pool, "spring")
    batch = await add_batch(db_pool, cid, contacts=3, age="2 hours", sends=4)
    before = await batch_row(db_pool, batch.id)

    status, out, err = await cli.run(
        "resolve", str(batch.id), "--resend", "--reason", "Aculab has no record"
    )

    assert status == 0, err
    assert one_line(out) == (
        f"batch {batch.id} of campaign 'spring' (unique_id {batch.unique_id}) goes back to "
        "the daemons to be re-sent with the same bytes and id; 3 contacts stay dispatching"
    )
    after = await batch_row(db_pool, batch.id)
    assert after["state"] == "pending"
    assert (after["owner"], after["lease_until"], after["sending"]) == (None, None, False)
    assert (after["unique_id"], after["rest_calls"], after["contact_ids"]) == (
        before["unique_id"],
        before["rest_calls"],
        before["contact_ids"],
    )
    assert (after["in_doubt"], after["sends"], after["finished_at"]) == (True, 4, None)
    assert 0 <= await seconds_ago(db_pool, after["next_send_at"]) < 60
    assert 0 <= await seconds_ago(db_pool, after["window_from"]) < 60
    asked = f"re-send asked by operator {OPERATOR} (Aculab has no record)"
    assert after["last_error"] == f"{asked}; was parked: {PARK_REASON}"
    contacts = await contact_rows(db_pool, batch.contact_ids)
    assert {(c["state"], c["batch_id"], c["last_error"], c["attempts"]) for c in contacts} == {
        ("dispatching", batch.id, asked, 0)
    }
    (recorded,) = await resolutions(db_pool)
    assert (recorded["batch_id"], recorded["campaign_id"], recorded["action"]) == (
        batch.id,
        cid,
        "resend",
    )
    assert (recorded["reason"], recorded["contacts"], recorded["resolved_by"]) == (
        "Aculab has no record",
        3,
        OPERATOR,
    )
    (event,) = log_events(err, "batch_resolved")
    assert event["level"] == "info"
    assert {k: event[k] for k in ("batch_id", "campaign_id", "unique_id", "action")} == {
        "batch_id": batch.id,
        "campaign_id": cid,
        "unique_id": batch.unique_id,
        "action": "resend",
    }
    assert (event["contacts"], event["reason"], event["forced"]) == (
        3,
        "Aculab has no record",
        False,
    )


async def test_resend_in_a_paused_campaign_says_it_is_sent_after_resume(
    cli: Cli, db_pool: Pool
) -> None:
    cid = await new_campaign(db_pool, "spring", state="paused")
    batch = await add_batch(db_pool, cid)

    status, out, _ = await cli.run("resolve", str(batch.id), "--resend")

    assert status == 0
    assert one_line(out).endswith(
        "; campaign 'spring' is paused: it is sent after `campaign resume spring`"
    )
    assert (await batch_row(db_pool, batch.id))["state"] == "pending"


async def test_resend_in_a_cancelled_campaign_is_refused(cli: Cli, db_pool: Pool) -> None:
    cid = await new_campaign(db_pool, "spring", state="cancelled")
    batch = await add_batch(db_pool, cid)

    status, out, err = await cli.run("resolve", str(batch.id), "--resend")

    assert (status, out) == (2, "")
    assert "is cancelled" in one_line(err) and "--not-started or --failed" in err
    assert (await batch_row(db_pool, batch.id))["state"] == "parked"


@pytest.mark.parametrize(
    ("window", "age", "refused"),
    [
        # Aculab is assumed to remember an id for 24 h; a re-send may go out one
        # idempotency window after the resolution.
        ("3600", "22 hours 59 minutes", False),
        ("3600", "23 hours", True),
        ("7200", "21 hours 50 minutes", False),
        ("7200", "22 hours 10 minutes", True),
    ],
)
async def test_resend_is_refused_once_a_resend_may_outlive_aculabs_memory_of_the_id(
    db_dsn: str,
    db_pool: Pool,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    window: str,
    age: str,
    refused: bool,
) -> None:
    point_at(monkeypatch, db_dsn, DISPATCHER__IDEMPOTENCY_WINDOW_SECONDS=window)
    cli = Cli(db_dsn, capsys)
    cid = await new_campaign(db_pool, "spring")
    batch = await add_batch(db_pool, cid, age=age)

    status, out, err = await cli.run("resolve", str(batch.id), "--resend")

    if not refused:
        assert status == 0, err
        assert (await batch_row(db_pool, batch.id))["state"] == "pending"
        return
    assert (status, out) == (2, "")
    line = one_line(err)
    assert line.startswith(f"campaign resolve: batch {batch.id} was created ")
    assert (
        "idempotency window later, and Aculab is only assumed to remember a unique_id for 24 h"
        in line
    )
    assert "--force" in line
    assert (await batch_row(db_pool, batch.id))["state"] == "parked"
    assert await resolutions(db_pool) == []


async def test_force_resends_a_batch_too_old_for_the_assumption_and_logs_it_as_a_warning(
    cli: Cli, db_pool: Pool
) -> None:
    cid = await new_campaign(db_pool, "spring")
    batch = await add_batch(db_pool, cid, age="30 hours")

    status, out, err = await cli.run("resolve", str(batch.id), "--resend", "--force")

    assert status == 0, err
    assert "(forced: created 1d06h ago)" in one_line(out)
    assert (await batch_row(db_pool, batch.id))["state"] == "pending"
    (event,) = log_events(err, "batch_resolved")
    assert (event["level"], event["action"], event["forced"]) == ("warning", "resend", True)


# --- campaign resolve --not-started ---------------------------------------------------------


async def test_not_started_releases_the_batch_and_gives_its_contacts_back_without_an_attempt(
    cli: Cli, db_pool: Pool
) -> None:
    cid = await new_campaign(db_pool, "spring")
    batch = await add_batch(db_pool, cid, contacts=3, attempts=1)
    # A contact of the batch that already moved on is left alone.
    moved = batch.contact_ids[0]
    await db_pool.execute("UPDATE contacts SET state = 'failed' WHERE id = $1", moved)
    before = {c["id"]: c for c in await contact_rows(db_pool, batch.contact_ids)}

    status, out, err = await cli.run(
        "resolve", str(batch.id), "--not-started", "--reason", "ticket 4711"
    )

    assert status == 0, err
    assert one_line(out) == (
        f"batch {batch.id} of campaign 'spring' (unique_id {batch.unique_id}) released: "
        "2 contacts pending, no attempt used"
    )
    after = await batch_row(db_pool, batch.id)
    assert (after["state"], after["owner"], after["sending"]) == ("released", None, False)
    assert after["finished_at"] is not None
    said = (
        f"batch {batch.id} started nothing at Aculab (checked by operator {OPERATOR} (ticket 4711))"
    )
    assert after["last_error"] == f"released: {said}; was parked: {PARK_REASON}"
    for c in await contact_rows(db_pool, batch.contact_ids):
        if c["id"] == moved:
            assert (c["state"], c["batch_id"]) == ("failed", batch.id)
            continue
        assert (c["state"], c["batch_id"], c["last_error"]) == ("pending", None, said)
        assert 0 <= await seconds_ago(db_pool, c["next_attempt_at"]) < 60
        # The next batch has a new unique_id because dispatch_count already rose.
        assert (c["attempts"], c["dispatch_count"]) == (1, 2)
        assert c["dispatch_count"] == before[c["id"]]["dispatch_count"]
    (recorded,) = await resolutions(db_pool)
    assert (recorded["action"], recorded["contacts"], recorded["reason"]) == (
        "not_started",
        2,
        "ticket 4711",
    )
    (event,) = log_events(err, "batch_resolved")
    assert (event["action"], event["contacts"], event["batch_id"]) == ("not_started", 2, batch.id)


async def test_not_started_in_a_cancelled_campaign_cancels_the_contacts(
    cli: Cli, db_pool: Pool
) -> None:
    cid = await new_campaign(db_pool, "spring", state="cancelled")
    batch = await add_batch(db_pool, cid, contacts=2)

    status, out, _ = await cli.run("resolve", str(batch.id), "--not-started")

    assert status == 0
    assert one_line(out).endswith(
        "released: 2 contacts cancelled, no attempt used (campaign 'spring' is cancelled)"
    )
    said = f"batch {batch.id} started nothing at Aculab (checked by operator {OPERATOR})"
    assert {
        (c["state"], c["batch_id"], c["last_error"])
        for c in await contact_rows(db_pool, batch.contact_ids)
    } == {("cancelled", None, f"campaign cancelled; {said}")}
    assert (await batch_row(db_pool, batch.id))["state"] == "released"


async def test_not_started_in_a_paused_campaign_says_they_are_dialed_after_resume(
    cli: Cli, db_pool: Pool
) -> None:
    cid = await new_campaign(db_pool, "spring", state="paused")
    batch = await add_batch(db_pool, cid, contacts=1)

    status, out, _ = await cli.run("resolve", str(batch.id), "--not-started")

    assert status == 0
    assert one_line(out).endswith(
        "released: 1 contact pending, no attempt used; campaign 'spring' is paused: "
        "they are dialed after `campaign resume spring`"
    )


# --- campaign resolve --failed ------------------------------------------------------------


async def test_failed_marks_the_contacts_failed_with_the_reason(cli: Cli, db_pool: Pool) -> None:
    cid = await new_campaign(db_pool, "spring")
    batch = await add_batch(db_pool, cid, contacts=2)

    status, out, err = await cli.run(
        "resolve", str(batch.id), "--failed", "--reason", "Aculab: calls started, outcome lost"
    )

    assert status == 0, err
    assert one_line(out) == (
        f"batch {batch.id} of campaign 'spring' (unique_id {batch.unique_id}) failed: "
        "2 contacts failed (Aculab: calls started, outcome lost)"
    )
    after = await batch_row(db_pool, batch.id)
    assert after["state"] == "failed" and after["finished_at"] is not None
    assert after["last_error"].startswith(
        f"failed by operator {OPERATOR} (Aculab: calls started, outcome lost); was parked: "
    )
    assert {
        (c["state"], c["last_result"], c["last_error"], c["batch_id"], c["attempts"])
        for c in await contact_rows(db_pool, batch.contact_ids)
    } == {("failed", "failed", "Aculab: calls started, outcome lost", batch.id, 0)}
    (recorded,) = await resolutions(db_pool)
    assert (recorded["action"], recorded["contacts"], recorded["resolved_by"]) == (
        "failed",
        2,
        OPERATOR,
    )
    (event,) = log_events(err, "batch_resolved")
    assert (event["action"], event["reason"]) == ("failed", "Aculab: calls started, outcome lost")


# --- refusals -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("state", "why"),
    [
        ("pending", "the daemons are still sending it"),
        ("submitted", "Aculab acknowledged it"),
        ("split", "split into new batches"),
        ("rejected", "Aculab refused it, so it started nothing"),
        ("released", "it started nothing and its contacts went back to the queue"),
        ("failed", "its contacts were marked failed"),
    ],
)
async def test_only_a_parked_batch_can_be_resolved(
    cli: Cli, db_pool: Pool, state: str, why: str
) -> None:
    cid = await new_campaign(db_pool, "spring")
    batch = await add_batch(db_pool, cid, state=state)
    before = await batch_row(db_pool, batch.id)

    status, out, err = await cli.run("resolve", str(batch.id), "--not-started")

    assert (status, out) == (2, "")
    line = one_line(err)
    assert line.startswith(f"campaign resolve: batch {batch.id} is {state}: nothing to resolve (")
    assert why in line
    assert await batch_row(db_pool, batch.id) == before
    assert await resolutions(db_pool) == []


async def test_an_unknown_batch_is_refused(cli: Cli, db_pool: Pool) -> None:
    status, out, err = await cli.run("resolve", "4242", "--resend")

    assert (status, out) == (2, "")
    assert one_line(err) == "campaign resolve: no batch with id 4242"


async def test_resolving_the_same_batch_twice_refuses_the_second(cli: Cli, db_pool: Pool) -> None:
    cid = await new_campaign(db_pool, "spring")
    batch = await add_batch(db_pool, cid)

    assert (await cli.run("resolve", str(batch.id), "--not-started"))[0] == 0
    status, out, err = await cli.run("resolve", str(batch.id), "--failed", "--reason", "too late")

    assert (status, out) == (2, "")
    assert re.fullmatch(
        rf"campaign resolve: batch {batch.id} is released: nothing to resolve \(.*\); "
        rf"resolved as not_started by {re.escape(OPERATOR)} at \d{{4}}-\d\d-\d\dT\S+",
        one_line(err),
    )
    assert [r["action"] for r in await resolutions(db_pool)] == ["not_started"]
    assert {c["state"] for c in await contact_rows(db_pool, batch.contact_ids)} == {"pending"}


async def test_a_resolution_waiting_for_the_batch_lock_sees_the_new_state_and_refuses(
    db_pool: Pool,
) -> None:
    cid = await new_campaign(db_pool, "spring")
    batch = await add_batch(db_pool, cid)

    async with db_pool.acquire() as other, other.transaction():
        # Another operator's resolution holds the row, and re-sends the batch.
        await other.execute("SELECT 1 FROM batches WHERE id = $1 FOR UPDATE", batch.id)
        waiting = asyncio.ensure_future(
            batch_db.resolve_batch(
                db_pool,
                batch.id,
                "failed",
                reason="gave up",
                resolved_by="bob",
                idempotency_window_seconds=3600,
            )
        )
        for _ in range(200):
            # Asked outside `other`'s transaction, which would see a cached snapshot.
            blocked = await db_pool.fetchval(
                "SELECT count(*) FROM pg_stat_activity "
                "WHERE wait_event_type = 'Lock' AND datname = current_database()"
            )
            if blocked:
                break
            await asyncio.sleep(0.02)
        assert blocked and not waiting.done()
        await other.execute("UPDATE batches SET state = 'pending' WHERE id = $1", batch.id)

    with pytest.raises(batch_db.NotParked, match=f"batch {batch.id} is pending"):
        await waiting
    assert {c["state"] for c in await contact_rows(db_pool, batch.contact_ids)} == {"dispatching"}
    assert await resolutions(db_pool) == []


# --- campaign status ------------------------------------------------------------------------


async def test_status_shows_doubt_released_batches_and_the_latest_resolutions(
    cli: Cli, db_pool: Pool
) -> None:
    cid = await new_campaign(db_pool, "spring")
    doubtful = await add_batch(db_pool, cid, contacts=2, age="3 hours")
    sure = await add_batch(db_pool, cid, contacts=1, age="2 hours", in_doubt=False)
    released = await add_batch(db_pool, cid, contacts=2)
    failed = await add_batch(db_pool, cid, contacts=1)
    assert (await cli.run("resolve", str(released.id), "--not-started"))[0] == 0
    assert (await cli.run("resolve", str(failed.id), "--failed", "--reason", "line\nbroken"))[
        0
    ] == 0

    status, out, _ = await cli.run("status", "spring")

    assert status == 0
    lines = out.splitlines()
    assert re.search(r"^  parked batches +2$", out, re.M)
    assert re.search(r"^  released batches +1$", out, re.M)
    assert f"    batch {doubtful.id}: age 3h00m, 2 contacts, in doubt: {PARK_REASON}" in lines
    assert f"    batch {sure.id}: age 2h00m, 1 contact, not in doubt: {PARK_REASON}" in lines
    at = lines.index("  last resolutions")
    stamp = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\dZ"
    user = re.escape(OPERATOR)
    assert re.fullmatch(
        rf"    {stamp} {user}: failed batch {failed.id}, 1 contact: line broken", lines[at + 1]
    )
    assert re.fullmatch(
        rf"    {stamp} {user}: not_started batch {released.id}, 2 contacts", lines[at + 2]
    )

    status, out, _ = await cli.run("status", "spring", "--json")

    (doc,) = json.loads(out)["campaigns"]
    assert [(b["id"], b["in_doubt"]) for b in doc["parked_batches"]] == [
        (doubtful.id, True),
        (sure.id, False),
    ]
    assert doc["released_batches"] == 1
    newest, oldest = doc["resolutions"]
    assert {k: newest[k] for k in ("resolved_by", "action", "batch_id", "contacts", "reason")} == {
        "resolved_by": OPERATOR,
        "action": "failed",
        "batch_id": failed.id,
        "contacts": 1,
        "reason": "line\nbroken",
    }
    assert (oldest["action"], oldest["batch_id"], oldest["reason"]) == (
        "not_started",
        released.id,
        None,
    )
    assert re.match(r"\d{4}-\d\d-\d\dT", newest["resolved_at"])
