"""The contact_results view and `campaign export`: results out for a CRM.

Against a real PostgreSQL; the end-to-end test dials through the simulator. The view's
shape is pinned here: it is the documented read interface, so a change to it must be
a deliberate change to this file and to docs/tables.md.
"""

from __future__ import annotations

import csv
import io
import json
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from campaign import export, outcomes
from campaign.db import results as rdb
from campaign.db.admin import Pool
from campaign.simulator import SimulatorConfig
from tests.engine import (
    add_contacts,
    campaign_state,
    create_campaign,
    engine_settings,
    run_engine,
    uk_numbers,
)
from tests.fixtures_sim import MakeSimulator
from tests.helpers import REPO_ROOT, Cli, campaign_env, one_line

# The view's shape, as documented in docs/tables.md ("`contact_results`: the results
# view"). Columns are only ever added at the end.
COLUMNS = [
    ("campaign", "text"),
    ("campaign_id", "bigint"),
    ("contact_id", "bigint"),
    ("token", "text"),
    ("destination", "text"),
    ("state", "text"),
    ("attempts", "integer"),
    ("last_result", "text"),
    ("last_error", "text"),
    ("last_cause", "text"),
    ("first_call_at", "timestamp with time zone"),
    ("last_call_at", "timestamp with time zone"),
    ("last_call_duration", "double precision"),
    ("references", "text[]"),
    ("next_attempt_at", "timestamp with time zone"),
    ("created_at", "timestamp with time zone"),
    ("updated_at", "timestamp with time zone"),
]
NAMES = [name for name, _ in COLUMNS]


pytestmark = pytest.mark.usefixtures("restore_logging")


T0 = datetime(2024, 5, 1, 10, 0, tzinfo=UTC)


def files_in(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def read_file(path: Path) -> tuple[str, int]:
    """The file's text, exactly (CRLF kept), and its permission bits."""
    return path.read_bytes().decode(), stat.S_IMODE(path.stat().st_mode)


def write_file(path: Path, text: str) -> None:
    path.write_text(text)


def many_contacts(cli: Cli, count: int) -> None:
    """Campaign 'spring' with `count` contacts, in one statement."""
    assert cli("create", "spring", "--service", "S")[0] == 0
    cli.query(
        "INSERT INTO contacts (campaign_id, destination) "
        "SELECT (SELECT id FROM campaigns), '4420' || (70000000 + g) "
        "FROM generate_series(1, $1) AS g",
        count,
    )


async def three_contacts(pool: Pool) -> tuple[int, list[int]]:
    """Campaign 'spring': a contact answered at its second call (the calls stored out of
    attempt order), one waiting for a retry with no call, one invalid, each with a
    known updated_at (T0 + 1, 2, 3 hours)."""
    cid = await create_campaign(pool, "spring")
    ids = await add_contacts(pool, cid, ["+44 1908 273800", "441908273801", "not a number"])
    batch = await pool.fetchval(
        "INSERT INTO batches (campaign_id, service_name, unique_id, rest_calls, contact_ids) "
        "VALUES ($1, 'S', 'u-1', '', $2) RETURNING id",
        cid,
        ids[:1],
    )
    for attempt, reference, cause, duration in (
        (2, "ref-b", "completed", 42.5),
        (1, "ref-a", "busy", None),
    ):
        await pool.execute(
            "INSERT INTO calls (contact_id, campaign_id, batch_id, attempt, reference, "
            "started_at, call_cause, duration, finished_at) "
            "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $6::timestamptz + interval '1 minute')",
            ids[0],
            cid,
            batch,
            attempt,
            reference,
            T0 + timedelta(minutes=10 * (attempt - 1)),
            cause,
            duration,
        )
    await pool.execute(
        "UPDATE contacts SET state = 'completed', attempts = 2, last_result = 'completed', "
        "token = 'crm-1', updated_at = $2 WHERE id = $1",
        ids[0],
        T0 + timedelta(hours=1),
    )
    await pool.execute(
        "UPDATE contacts SET last_result = 'no_answer', next_attempt_at = $2, "
        "token = '', updated_at = $3 WHERE id = $1",
        ids[1],
        T0 + timedelta(days=1),
        T0 + timedelta(hours=2),
    )
    await pool.execute(
        "UPDATE contacts SET state = 'invalid', last_result = 'invalid', "
        "last_error = $2, updated_at = $3 WHERE id = $1",
        ids[2],
        'not a telephone number: "not a number", line 3\nsee the file',
        T0 + timedelta(hours=3),
    )
    return cid, ids


# --- the view ---------------------------------------------------------------------------


async def test_the_view_keeps_its_documented_columns_names_order_and_types(
    db_pool: Pool,
) -> None:
    rows = await db_pool.fetch(
        "SELECT a.attname, format_type(a.atttypid, a.atttypmod) AS type "
        "FROM pg_attribute a WHERE a.attrelid = 'contact_results'::regclass "
        "AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum"
    )

    assert [(r["attname"], r["type"]) for r in rows] == COLUMNS
    # The export's CSV header is the view's names.
    assert list(rdb.RESULT_COLUMNS) == NAMES


async def test_a_contact_row_has_its_calls_in_attempt_order_and_the_last_calls_outcome(
    db_pool: Pool,
) -> None:
    cid, ids = await three_contacts(db_pool)

    rows = {
        r["contact_id"]: r
        for r in await db_pool.fetch("SELECT * FROM contact_results WHERE campaign = 'spring'")
    }

    answered = rows[ids[0]]
    assert (answered["campaign"], answered["campaign_id"], answered["token"]) == (
        "spring",
        cid,
        "crm-1",
    )
    # The number as loaded: the export is the operator's own data, not a log line.
    assert answered["destination"] == "+44 1908 273800"
    assert (answered["state"], answered["attempts"], answered["last_result"]) == (
        "completed",
        2,
        "completed",
    )
    assert answered["references"] == ["ref-a", "ref-b"]
    assert (answered["first_call_at"], answered["last_call_at"]) == (
        T0,
        T0 + timedelta(minutes=10),
    )
    assert (answered["last_cause"], answered["last_call_duration"]) == ("completed", 42.5)
    assert answered["next_attempt_at"] is None

    waiting = rows[ids[1]]
    assert waiting["references"] == []
    assert (waiting["first_call_at"], waiting["last_cause"], waiting["last_call_duration"]) == (
        None,
        None,
        None,
    )
    # Only a pending contact has a next attempt.
    assert waiting["next_attempt_at"] == T0 + timedelta(days=1)
    assert rows[ids[2]]["next_attempt_at"] is None


async def test_an_outcome_for_a_contact_that_moved_on_marks_it_changed(db_pool: Pool) -> None:
    cid, ids = await three_contacts(db_pool)
    batch = await db_pool.fetchval("SELECT id FROM batches")
    await db_pool.execute(
        "INSERT INTO calls (contact_id, campaign_id, batch_id, attempt, reference) "
        "VALUES ($1, $2, $3, 1, 'ref-late')",
        ids[1],
        cid,
        batch,
    )
    # Cancelled while its call was out: the outcome moves the contact nowhere...
    await db_pool.execute("UPDATE contacts SET state = 'cancelled' WHERE id = $1", ids[1])
    before = await db_pool.fetchval("SELECT updated_at FROM contacts WHERE id = $1", ids[1])

    assert await outcomes.record(db_pool, outcomes.Outcome("ref-late", "busy"), "push") == (
        "recorded"
    )

    row = await db_pool.fetchrow(
        "SELECT state, last_cause, updated_at FROM contact_results WHERE contact_id = $1", ids[1]
    )
    # ...but its results changed, so an export --since must carry it.
    assert (row["state"], row["last_cause"]) == ("cancelled", "busy")
    assert row["updated_at"] > before


async def test_a_dialed_campaign_exports_every_call_the_engine_recorded(
    db_pool: Pool, make_simulator: MakeSimulator, cli: Cli
) -> None:
    sim = await make_simulator(SimulatorConfig(cause_weights={"busy": 1.0}))
    cid = await create_campaign(db_pool, batch_size=5, max_attempts=3, retry_delays={"busy": 0.1})
    await add_contacts(db_pool, cid, uk_numbers(4))
    await run_engine(db_pool, engine_settings(sim), campaign_state(db_pool, cid))

    status, out, err = await cli.run("export", "spring", "--format", "jsonl")

    assert (status, err) == (0, "")
    lines = [json.loads(line) for line in out.splitlines()]
    assert len(lines) == 4
    calls = await db_pool.fetch(
        "SELECT contact_id, reference, call_cause FROM calls ORDER BY contact_id, attempt"
    )
    for line in lines:
        mine = [c for c in calls if c["contact_id"] == line["contact_id"]]
        assert line["references"] == [c["reference"] for c in mine]
        assert (line["state"], line["attempts"], line["last_cause"]) == ("failed", 3, "busy")
        first, last = (datetime.fromisoformat(line[k]) for k in ("first_call_at", "last_call_at"))
        assert first < last


# --- formats ----------------------------------------------------------------------------


async def test_csv_has_the_view_columns_as_header_and_keeps_null_apart_from_empty(
    db_pool: Pool, cli: Cli
) -> None:
    _, ids = await three_contacts(db_pool)

    status, out, err = await cli.run("export", "spring")

    assert (status, err) == (0, "")
    assert out.startswith(",".join(NAMES) + "\r\n")
    # csv reads NULL and "" alike; the raw fields tell them apart.
    table = list(csv.reader(io.StringIO(out, newline="")))
    header, rows = table[0], table[1:]
    assert header == NAMES
    by_id = {int(r[2]): dict(zip(NAMES, r, strict=True)) for r in rows}
    answered = by_id[ids[0]]
    assert answered["destination"] == "+44 1908 273800"
    assert answered["references"] == '["ref-a","ref-b"]'
    assert answered["first_call_at"] == "2024-05-01T10:00:00+00:00"
    assert (answered["attempts"], answered["last_call_duration"]) == ("2", "42.5")
    # A value with a comma, quotes and a line break comes back whole.
    assert by_id[ids[2]]["last_error"] == (
        'not a telephone number: "not a number", line 3\nsee the file'
    )
    assert ',"",' in out.splitlines()[2]  # contact 1's token: empty text, quoted
    assert ',"crm-1",' in out.splitlines()[1]
    assert by_id[ids[1]]["last_error"] == ""  # NULL: an empty, unquoted field
    assert by_id[ids[1]]["references"] == "[]"
    # Oldest change first.
    assert [int(r[2]) for r in rows] == ids


async def test_jsonl_is_one_object_per_line_keyed_by_the_view_columns(
    db_pool: Pool, cli: Cli
) -> None:
    await three_contacts(db_pool)

    status, out, err = await cli.run("export", "spring", "--format", "jsonl")

    assert (status, err) == (0, "")
    lines = out.split("\n")
    assert lines[-1] == ""
    objects = [json.loads(line) for line in lines[:-1]]
    assert [list(o) for o in objects] == [NAMES] * 3
    answered, waiting, invalid = objects
    assert answered["references"] == ["ref-a", "ref-b"]
    assert (answered["attempts"], answered["last_call_duration"]) == (2, 42.5)
    assert answered["updated_at"] == "2024-05-01T11:00:00+00:00"
    assert (waiting["token"], waiting["last_error"], waiting["references"]) == ("", None, [])
    assert invalid["last_error"].endswith("line 3\nsee the file")


async def test_spreadsheet_csv_prefixes_cells_a_spreadsheet_would_run_as_formulas(
    db_pool: Pool, cli: Cli
) -> None:
    cid = await create_campaign(db_pool, "spring")
    await db_pool.execute(
        "INSERT INTO contacts (campaign_id, destination, token) VALUES "
        "($1, '+441908273800', '=HYPERLINK(\"http://x\")'), ($1, '441908273801', '@SUM(1)'), "
        "($1, '441908273802', 'plain'), ($1, '441908273803', '-2+3')",
        cid,
    )

    _, raw, _ = await cli.run("export", "spring")
    status, out, err = await cli.run("export", "spring", "--spreadsheet")

    assert (status, err) == (0, "")
    rows = list(csv.DictReader(io.StringIO(out, newline="")))
    assert [(r["destination"], r["token"]) for r in rows] == [
        ("'+441908273800", '\'=HYPERLINK("http://x")'),
        ("441908273801", "'@SUM(1)"),
        ("441908273802", "plain"),
        ("441908273803", "'-2+3"),
    ]
    # Without the flag the values are the CRM's own, as stored.
    plain = list(csv.DictReader(io.StringIO(raw, newline="")))
    assert plain[0]["destination"] == "+441908273800"
    assert plain[0]["token"] == '=HYPERLINK("http://x")'


async def test_rows_are_read_in_chunks_by_a_cursor(db_pool: Pool) -> None:
    cid = await create_campaign(db_pool, "spring")
    await add_contacts(db_pool, cid, uk_numbers(25))
    seen: list[int] = []
    out = io.BytesIO()

    result = await export.export_results(
        db_pool, "spring", out, fmt="jsonl", chunk_rows=10, on_progress=seen.append
    )

    assert result.rows == 25
    assert seen == [0, 10, 20, 25]
    assert len(out.getvalue().splitlines()) == 25


# --- --since ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("since", "expected"),
    [
        ("2024-05-01T12:00:00+00:00", [1, 2]),
        ("2024-05-01T12:00:00Z", [1, 2]),
        # Without an offset a time is UTC.
        ("2024-05-01T12:00", [1, 2]),
        ("2024-05-01T12:00:00.000001", [2]),
        ("2024-05-01T14:00:00+02:00", [1, 2]),
        ("2024-05-01T13:00:00+02:00", [0, 1, 2]),
        ("2024-05-02", []),
        ("2024-05-01", [0, 1, 2]),
    ],
)
async def test_since_keeps_the_contacts_changed_at_or_after_it(
    db_pool: Pool, cli: Cli, since: str, expected: list[int]
) -> None:
    _, ids = await three_contacts(db_pool)  # changed at 11:00, 12:00 and 13:00 UTC

    status, out, err = await cli.run("export", "spring", "--format", "jsonl", "--since", since)

    assert (status, err) == (0, "")
    assert [json.loads(line)["contact_id"] for line in out.splitlines()] == [
        ids[i] for i in expected
    ]


# --- refusals and failures --------------------------------------------------------------


@pytest.mark.parametrize("since", ["yesterday", "2024-13-01", "2024-05-01T25:00", ""])
async def test_a_bad_since_is_refused_in_one_line(db_pool: Pool, cli: Cli, since: str) -> None:
    await create_campaign(db_pool, "spring")

    status, out, err = await cli.run("export", "spring", "--since", since)

    assert (status, out) == (2, "")
    assert one_line(err).startswith("campaign export: --since: not an ISO 8601 timestamp")


async def test_an_unknown_campaign_is_refused_in_one_line_and_writes_no_file(
    db_pool: Pool, cli: Cli, tmp_path: Path
) -> None:
    await create_campaign(db_pool, "spring")

    status, out, err = await cli.run("export", "autumn", "--output", str(tmp_path / "x.csv"))

    assert (status, out) == (2, "")
    assert one_line(err) == "campaign export: no campaign named 'autumn'"
    assert files_in(tmp_path) == []


@pytest.mark.parametrize(
    ("target", "says"),
    [
        ("missing/x.csv", "cannot write in"),
        (".", "is a directory"),
    ],
)
async def test_an_unwritable_output_is_refused_in_one_line(
    db_pool: Pool, cli: Cli, tmp_path: Path, target: str, says: str
) -> None:
    await create_campaign(db_pool, "spring")

    status, out, err = await cli.run("export", "spring", "--output", str(tmp_path / target))

    assert (status, out) == (2, "")
    assert says in one_line(err)
    assert one_line(err).startswith("campaign export: --output ")


async def test_spreadsheet_with_jsonl_is_refused(cli: Cli) -> None:
    status, _, err = await cli.run("export", "spring", "--format", "jsonl", "--spreadsheet")

    assert status == 2
    assert one_line(err) == "campaign export: --spreadsheet applies to --format csv only"


async def test_the_output_file_is_replaced_whole_and_only_its_owner_reads_it(
    db_pool: Pool, cli: Cli, tmp_path: Path
) -> None:
    await three_contacts(db_pool)
    target = tmp_path / "results.csv"
    write_file(target, "the previous export\n")

    status, out, err = await cli.run("export", "spring", "--output", str(target))

    assert (status, out, err) == (0, "", "")
    written, mode = read_file(target)
    assert written.startswith(",".join(NAMES) + "\r\n")
    assert len(written.splitlines()) == 1 + 3 + 1  # a last_error spans two lines
    assert files_in(tmp_path) == ["results.csv"]
    assert mode == 0o600


def test_a_failure_part_way_leaves_the_previous_output_file_as_it_was(
    cli: Cli, db_dsn: str, tmp_path: Path
) -> None:
    many_contacts(cli, 200_000)
    target = tmp_path / "results.csv"
    target.write_text("the previous export\n")
    with export_process(db_dsn, "--output", str(target)) as proc:
        partial = _wait_for_partial_file(tmp_path, proc)
        # Halfway: stopped with rows written, then its database connection is cut.
        proc.send_signal(signal.SIGSTOP)
        assert target.read_text() == "the previous export\n"
        assert partial.stat().st_size > 0
        killed = cli.query(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = current_database() AND application_name = 'campaign'"
        )
        assert killed, "the export's connection was not found"
        proc.send_signal(signal.SIGCONT)
        out, err = proc.communicate(timeout=60)

    assert (proc.returncode, out) == (1, b"")
    assert one_line(err.decode()).startswith("campaign export: database error:")
    assert target.read_text() == "the previous export\n"
    assert files_in(tmp_path) == ["results.csv"]


@contextmanager
def export_process(dsn: str, *options: str) -> Iterator[subprocess.Popen[bytes]]:
    """`campaign export spring OPTIONS` running, its stdout and stderr piped; killed (if
    still running) and reaped at the end."""
    with subprocess.Popen(
        [sys.executable, "-m", "campaign", "export", "spring", *options],
        env=campaign_env(dsn),
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    ) as proc:
        try:
            yield proc
        finally:
            proc.kill()


def _wait_for_partial_file(folder: Path, proc: subprocess.Popen[bytes]) -> Path:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()
        for path in folder.glob(".results.csv.*.part"):
            if path.stat().st_size > 0:
                return path
        time.sleep(0.01)
    raise AssertionError("the export wrote nothing within 60 s")


def test_a_reader_that_goes_away_stops_the_export_quietly(cli: Cli, db_dsn: str) -> None:
    many_contacts(cli, 50_000)
    with export_process(db_dsn) as proc:
        assert proc.stdout is not None and proc.stderr is not None
        header = proc.stdout.readline()  # as `| head -1` does, then closes the pipe
        proc.stdout.close()
        err = proc.stderr.read()
        proc.wait(timeout=60)

    assert header.startswith(b"campaign,campaign_id,")
    # 128 + SIGPIPE, as a shell reports for a writer whose reader left; no message.
    assert (proc.returncode, err) == (141, b"")
