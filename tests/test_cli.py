"""The operator commands as an operator runs them: `campaign ...` against a real PostgreSQL.

Most tests call `campaign.cli.main` in-process (the same code path, without the ~1 s of
interpreter start-up); a few run the real command as a subprocess, end to end.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from campaign.aculab import AculabClient, encode_rest_calls
from campaign.cli import command_word, main
from campaign.db.admin import Pool
from campaign.settings import load_settings
from campaign.simulator import Simulator, SimulatorConfig
from tests.fixtures_sim import MakeSimulator, ManualClock
from tests.helpers import REPO_ROOT, Cli, one_line, point_at, run_campaign

MIGRATIONS = sorted(p.name for p in (REPO_ROOT / "migrations").glob("*.sql"))


pytestmark = pytest.mark.usefixtures("restore_logging")


@pytest.fixture
def empty_cli(
    empty_dsn: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> Cli:
    point_at(monkeypatch, empty_dsn)
    return Cli(empty_dsn, capsys)


def csv_file(tmp_path: Path, text: str) -> str:
    path = tmp_path / "contacts.csv"
    path.write_text(text, encoding="utf-8")
    return str(path)


# --- end to end, as a subprocess ---------------------------------------------------------------


def test_create_load_and_status_work_end_to_end(db_dsn: str, tmp_path: Path) -> None:
    created = run_campaign(
        db_dsn,
        "create",
        "spring",
        "--service",
        "Svc",
        "--caller-id",
        "441908273801",
        "--batch-size",
        "20",
    )
    assert (created.returncode, created.stderr) == (0, "")
    campaign_id = int(created.stdout)
    path = csv_file(tmp_path, "destination,priority\n+441908273800,1\n,2\n+441908273801,x\n+4420\n")

    loaded = run_campaign(db_dsn, "load", "spring", path)

    assert loaded.returncode == 0, loaded.stderr
    assert loaded.stdout == "loaded 1 rows, refused 3 rows (see above)\n"
    assert loaded.stderr.splitlines() == [
        "line 3: empty destination",
        "line 4: priority: not an integer: 'x'",
        "line 5: expected 2 fields, found 1",
    ]

    status = run_campaign(db_dsn, "status", "--json")

    assert status.returncode == 0, status.stderr
    (doc,) = json.loads(status.stdout)["campaigns"]
    assert (doc["id"], doc["name"], doc["state"]) == (campaign_id, "spring", "active")
    assert doc["contacts"]["pending"] == doc["contacts_total"] == 1
    assert (doc["calls_started"], doc["batches_in_flight"], doc["parked_batches"]) == (0, 0, [])


def test_a_bad_file_fails_the_real_command_with_one_line_and_status_2(
    db_dsn: str, tmp_path: Path
) -> None:
    assert run_campaign(db_dsn, "create", "spring", "--service", "Svc").returncode == 0

    proc = run_campaign(db_dsn, "load", "spring", csv_file(tmp_path, "destination,phone\n1,2\n"))

    assert proc.returncode == 2
    assert one_line(proc.stderr).startswith("campaign load: ")
    assert "unknown column 'phone'" in proc.stderr


# --- database access ---------------------------------------------------------------------------


def test_migrate_applies_pending_migrations_then_reports_up_to_date(empty_cli: Cli) -> None:
    status, out, _ = empty_cli("migrate")
    assert status == 0
    assert out.splitlines() == [f"applied {name}" for name in MIGRATIONS]

    assert empty_cli("migrate")[:2] == (0, "database is up to date\n")


@pytest.mark.parametrize(
    "argv",
    [
        ("status",),
        ("create", "spring", "--service", "Svc"),
        ("pause", "spring"),
        ("load", "spring", "/dev/null"),
        ("why", "spring"),
        ("suppress", "list"),
    ],
)
def test_commands_refuse_an_unmigrated_database(empty_cli: Cli, argv: tuple[str, ...]) -> None:
    status, out, err = empty_cli(*argv)

    assert (status, out) == (2, "")
    assert one_line(err) == (
        f"campaign {argv[0]}: database is not migrated: "
        f"run `campaign migrate` ({len(MIGRATIONS)} pending)"
    )


def test_a_command_on_the_demos_folder_says_which_settings_read_its_data(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # The demo keeps its data in a database of its own and leaves campaign.toml beside
    # it; the folder's default database is empty. (`campaign demo` itself is slow: its
    # test is in tests/test_demo.py.)
    point_at(monkeypatch, "")
    monkeypatch.delenv("CAMPAIGN_DATABASE__DSN")
    demo = tmp_path / "demo"
    demo.mkdir()
    (demo / "campaign.toml").write_text('[database]\nembedded_database = "campaign_demo"\n')
    monkeypatch.setenv("CAMPAIGN_DATABASE__DATA_DIR", str(demo))
    cli = Cli("", capsys)

    status, out, err = cli("status")

    assert (status, out) == (2, "")
    # Less the embedded server's start/stop chatter (JSON lines; another issue's).
    said = "\n".join(line for line in err.splitlines() if not line.startswith("{"))
    assert one_line(said) == (
        f"campaign status: the data in {demo} is read with "
        f"`campaign --config {demo}/campaign.toml status` (its default database is not migrated)"
    )


@pytest.mark.parametrize(
    "argv",
    [
        ("status",),
        ("why", "spring"),
        ("cancel", "spring"),
        ("suppress", "add", "+441908273800"),
        ("suppress", "list"),
    ],
)
def test_an_unreachable_database_is_one_line_and_status_1(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, argv: tuple[str, ...]
) -> None:
    point_at(monkeypatch, "postgresql://bob:s3cret@127.0.0.1:1/campaigns")

    status = main(list(argv))

    err = capsys.readouterr().err
    assert status == 1
    assert one_line(err).startswith(
        f"campaign {argv[0]}: cannot reach PostgreSQL at 127.0.0.1:1/campaigns"
    )
    assert "s3cret" not in err


def test_run_starts_the_daemon_which_fails_cleanly_without_a_database(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    point_at(monkeypatch, "postgresql://bob@127.0.0.1:1/campaigns")
    assert main(["run"]) == 1
    assert "Traceback" not in capsys.readouterr().err


def test_bad_settings_are_reported_with_status_2(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("CAMPAIGN_CONFIG", str(tmp_path / "missing.toml"))

    assert main(["status"]) == 2
    assert one_line(capsys.readouterr().err).startswith("config: file not found")


def test_usage_errors_are_one_line_with_status_2(capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (["create", "spring"], ["create", "spring", "--service", "S", "--batch-size", "x"]):
        with pytest.raises(SystemExit) as exited:
            main(argv)
        assert exited.value.code == 2
        assert one_line(capsys.readouterr().err).startswith("campaign create: ")


# --- create ------------------------------------------------------------------------------------


def test_create_prints_the_id_and_stores_the_policy(cli: Cli) -> None:
    status, out, err = cli(
        "create", "spring", "--service", "Svc", "--caller-id", "441908273801",
        "--batch-size", "25", "--calls-per-second", "2.5", "--max-concurrent-calls", "40",
        "--max-attempts", "5", "--retry-delays", '{"busy": 60, "no_answer": 120.5}',
        "--default-country", "gb", "--default-timezone", "Europe/London", "--priority", "9",
    )  # fmt: skip

    assert (status, err) == (0, "")
    (row,) = cli.query("SELECT * FROM campaigns WHERE id = $1", int(out))
    assert row["name"] == "spring"
    assert row["service_name"] == "Svc"
    assert row["caller_id"] == "441908273801"
    assert (row["batch_size"], row["calls_per_second"]) == (25, 2.5)
    assert (row["max_concurrent_calls"], row["max_attempts"], row["priority"]) == (40, 5, 9)
    assert json.loads(row["retry_delays"]) == {"busy": 60, "no_answer": 120.5}
    assert (row["default_country"], row["default_timezone"]) == ("GB", "Europe/London")
    assert (row["state"], row["state_reason"]) == ("active", None)


def test_create_leaves_the_schema_defaults_for_options_not_given(cli: Cli) -> None:
    assert cli("create", "spring", "--service", "Svc", "--paused")[0] == 0
    cli.query("INSERT INTO campaigns (name, service_name) VALUES ('plain', 'Svc')")
    policy = (
        "caller_id, batch_size, calls_per_second, max_concurrent_calls, max_attempts, "
        "retry_delays, default_country, default_timezone, priority"
    )

    created, plain = cli.query(f"SELECT {policy}, state FROM campaigns ORDER BY id")

    assert dict(created) == {**dict(plain), "state": "paused"}


def test_create_refuses_a_name_already_taken(cli: Cli) -> None:
    assert cli("create", "spring", "--service", "Svc")[0] == 0

    status, out, err = cli("create", "spring", "--service", "Other")

    assert (status, out) == (2, "")
    assert one_line(err) == "campaign create: a campaign named 'spring' already exists"


@pytest.mark.parametrize(
    ("option", "value", "column"),
    [
        ("--batch-size", "0", "batch_size"),
        ("--calls-per-second", "0.0", "calls_per_second"),
        ("--max-concurrent-calls", "-1", "max_concurrent_calls"),
        ("--max-attempts", "1000", "max_attempts"),
        ("--priority", "5000", "priority"),
    ],
)
def test_create_names_the_column_a_schema_check_refuses(
    cli: Cli, option: str, value: str, column: str
) -> None:
    status, _, err = cli("create", "spring", "--service", "Svc", option, value)

    assert status == 2
    assert one_line(err).startswith(f"campaign create: invalid {column} {value}: must satisfy (")
    assert cli.query("SELECT * FROM campaigns") == []


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("--retry-delays", "{busy: 1}", "--retry-delays: not valid JSON"),
        ("--retry-delays", "[1]", "--retry-delays: Input should be a valid dictionary"),
        ("--retry-delays", '{"busy": -1}', "--retry-delays: Input should be greater than"),
        ("--retry-delays", '{"no-answer": 1}', "--retry-delays: unknown call cause 'no-answer'"),
        ("--retry-delays", '{"completed": 1}', "--retry-delays: unknown call cause 'completed'"),
        ("--default-timezone", "Mars/Olympus", "--default-timezone: 'Mars/Olympus' is not an"),
        ("--default-country", "XX", "--default-country: 'XX' is not a region code"),
        ("--calls-per-second", "nan", "--calls-per-second: Input should be a finite number"),
        ("--priority", str(2**40), "--priority: Input should be less than or equal to"),
        ("--caller-id", "44\x00", "--caller-id: contains a NUL character"),
    ],
)
def test_create_refuses_malformed_options_with_one_line(
    cli: Cli, option: str, value: str, message: str
) -> None:
    status, out, err = cli("create", "spring", "--service", "Svc", option, value)

    assert (status, out) == (2, "")
    assert one_line(err).startswith(f"campaign create: {message}")
    assert cli.query("SELECT * FROM campaigns") == []


# --- load --------------------------------------------------------------------------------------


def test_load_lists_refused_rows_up_to_a_cap_and_loads_the_rest(cli: Cli, tmp_path: Path) -> None:
    cli("create", "spring", "--service", "Svc", "--caller-id", "441908273801")
    path = csv_file(tmp_path, "destination\n" + '""\n' * 60 + "+441908273800\n")

    status, out, err = cli("load", "spring", path)

    assert status == 0, err
    assert out == "loaded 1 rows, refused 60 rows (see above)\n"
    lines = err.splitlines()
    assert lines[:2] == ["line 2: empty destination", "line 3: empty destination"]
    assert len(lines) == 51
    assert lines[-1] == "... and 10 more"


def test_load_warns_by_line_of_rows_never_to_be_dialed_and_counts_each_kind(
    cli: Cli, tmp_path: Path
) -> None:
    cli("create", "spring", "--service", "Svc", "--caller-id", "441908273801")
    cli("suppress", "add", "+44 1908 273802")
    path = csv_file(
        tmp_path, "destination\n+44 1908 273800\n01908 273801\n+44 1908 273802\n441908273800\n"
    )

    status, out, err = cli("load", "spring", path)

    assert status == 0, err
    assert out == (
        "loaded 4 rows; 3 will never be dialed: 1 invalid, 1 suppressed, 1 duplicate (see above)\n"
    )
    assert err.splitlines() == [
        "line 3: will be invalid: national format (leading 0) needs the campaign's default "
        "country: 0190*****01",
        "line 4: will be suppressed: on the do-not-call list",
        "line 5: will be duplicate: same destination as line 2",
    ]


def test_load_without_the_check_loads_every_row_unjudged(cli: Cli, tmp_path: Path) -> None:
    cli("create", "spring", "--service", "Svc", "--caller-id", "441908273801")
    path = csv_file(tmp_path, "destination\n+44 1908 273800\n01908 273801\n")

    status, out, err = cli("load", "spring", path, "--no-check")

    assert (status, out, err) == (0, "loaded 2 rows\n", "")
    rows = cli.query("SELECT destination, state FROM contacts ORDER BY id")
    assert [(r["destination"], r["state"]) for r in rows] == [
        ("+44 1908 273800", "pending"),
        ("01908 273801", "pending"),
    ]


def test_load_strict_loads_nothing_when_a_row_would_never_be_dialed(
    cli: Cli, tmp_path: Path
) -> None:
    cli("create", "spring", "--service", "Svc", "--caller-id", "441908273801")
    cli("load", "spring", csv_file(tmp_path, "destination\n+44 1908 273800\n"))
    path = csv_file(tmp_path, 'destination\n+44 1908 273801\n441908273800\n""\n')

    status, out, err = cli("load", "spring", path, "--strict")

    assert (status, out) == (2, "")
    assert err.splitlines() == [
        "line 4: empty destination",
        "line 3: will be duplicate: same destination as contact 1, already in the campaign",
        "campaign load: nothing loaded (--strict): 1 rows refused; 1 rows would never be "
        "dialed: 1 duplicate (see above)",
    ]
    assert len(cli.query("SELECT * FROM contacts")) == 1


def test_load_into_a_paused_campaign_says_how_to_dial_them(cli: Cli, tmp_path: Path) -> None:
    cli("create", "spring", "--service", "Svc", "--caller-id", "441908273801", "--paused")

    status, out, err = cli("load", "spring", csv_file(tmp_path, "destination\n+441908273800\n"))

    assert (status, out) == (0, "loaded 1 rows\n")
    assert "run `campaign resume spring`" in one_line(err)


def test_load_reads_tab_separated_files(cli: Cli, tmp_path: Path) -> None:
    cli("create", "spring", "--service", "Svc", "--caller-id", "441908273801")

    status, out, _ = cli(
        "load",
        "spring",
        csv_file(tmp_path, "destination\ttoken\n+441908273800\ta,b\n"),
        "--delimiter",
        "\\t",
    )

    assert (status, out) == (0, "loaded 1 rows\n")
    assert [tuple(r) for r in cli.query("SELECT destination, token FROM contacts")] == [
        ("+441908273800", "a,b")
    ]


@pytest.mark.parametrize(
    ("campaign", "file_text", "message"),
    [
        ("nope", "destination\n+441\n", "campaign load: no campaign named 'nope'"),
        ("spring", None, "campaign load: cannot read"),
        ("spring", "Destination,Phone\n+441,1\n", "campaign load: "),
    ],
)
def test_load_refuses_an_unknown_campaign_or_an_unusable_file(
    cli: Cli, tmp_path: Path, campaign: str, file_text: str | None, message: str
) -> None:
    cli("create", "spring", "--service", "Svc")
    path = str(tmp_path / "missing.csv") if file_text is None else csv_file(tmp_path, file_text)

    status, out, err = cli("load", campaign, path)

    assert (status, out) == (2, "")
    assert one_line(err).startswith(message)
    assert cli.query("SELECT * FROM contacts") == []


def test_load_refuses_a_delimiter_that_cannot_work(cli: Cli, tmp_path: Path) -> None:
    cli("create", "spring", "--service", "Svc")

    status, _, err = cli("load", "spring", csv_file(tmp_path, "destination\n"), "--delimiter", ";;")

    assert status == 2
    assert "delimiter must be one character" in one_line(err)


# --- pause / resume / cancel -------------------------------------------------------------------


def test_pause_then_resume_records_the_reason_and_clears_it(cli: Cli) -> None:
    cli("create", "spring", "--service", "Svc")

    assert cli("pause", "spring", "--reason", "lunch")[:2] == (
        0,
        "campaign 'spring': active -> paused\n",
    )
    assert [tuple(r) for r in cli.query("SELECT state, state_reason FROM campaigns")] == [
        ("paused", "lunch")
    ]
    assert cli("pause", "spring")[:2] == (0, "campaign 'spring' is already paused\n")
    assert cli("resume", "spring")[:2] == (0, "campaign 'spring': paused -> active\n")
    assert [tuple(r) for r in cli.query("SELECT state, state_reason FROM campaigns")] == [
        ("active", None)
    ]


def test_resume_reopens_a_completed_campaign(cli: Cli) -> None:
    cli("create", "spring", "--service", "Svc")
    cli.query("UPDATE campaigns SET state = 'completed'")

    assert cli("resume", "spring")[:2] == (0, "campaign 'spring': completed -> active\n")


def test_cancel_cancels_pending_contacts_and_leaves_calls_in_progress_alone(
    cli: Cli, tmp_path: Path
) -> None:
    cli("create", "spring", "--service", "Svc")
    cli("load", "spring", csv_file(tmp_path, "destination\n+441\n+442\n+443\n"))
    cli.query("UPDATE contacts SET state = 'dialing' WHERE destination = '+443'")

    status, out, _ = cli("cancel", "spring", "--reason", "client request")

    assert (status, out) == (
        0,
        "campaign 'spring': active -> cancelled; 2 pending contacts cancelled\n",
    )
    rows = cli.query("SELECT destination, state, last_error FROM contacts ORDER BY id")
    assert [tuple(r) for r in rows] == [
        ("+441", "cancelled", "campaign cancelled"),
        ("+442", "cancelled", "campaign cancelled"),
        ("+443", "dialing", None),
    ]
    assert [tuple(r) for r in cli.query("SELECT state, state_reason FROM campaigns")] == [
        ("cancelled", "client request")
    ]


@pytest.mark.parametrize(
    ("setup", "argv", "message"),
    [
        (None, ("pause", "nope"), "campaign pause: no campaign named 'nope'"),
        ("cancelled", ("resume", "spring"), "campaign resume: cannot resume campaign 'spring': "
         "it is cancelled (a cancelled campaign cannot be resumed; create a new one)"),
        ("cancelled", ("pause", "spring"), "campaign pause: cannot pause campaign 'spring': "
         "it is cancelled"),
        ("completed", ("pause", "spring"), "campaign pause: cannot pause campaign 'spring': "
         "it is completed"),
    ],
)  # fmt: skip
def test_unknown_campaigns_and_illegal_transitions_are_refused(
    cli: Cli, setup: str | None, argv: tuple[str, ...], message: str
) -> None:
    cli("create", "spring", "--service", "Svc")
    if setup:
        cli.query("UPDATE campaigns SET state = $1", setup)

    status, out, err = cli(*argv)

    assert (status, out) == (2, "")
    assert one_line(err).startswith(message)
    assert [r["state"] for r in cli.query("SELECT state FROM campaigns")] == [setup or "active"]


# --- status ------------------------------------------------------------------------------------


def test_status_prints_a_table_or_json_and_refuses_an_unknown_name(cli: Cli) -> None:
    cli("create", "spring", "--service", "Svc")
    cli("create", "autumn", "--service", "Svc", "--paused")

    status, out, _ = cli("status")
    assert status == 0
    assert "campaign spring (id " in out
    assert "campaign autumn (id " in out

    status, out, _ = cli("status", "autumn", "--json")
    assert status == 0
    assert [c["state"] for c in json.loads(out)["campaigns"]] == ["paused"]

    status, out, err = cli("status", "winter")
    assert (status, out) == (2, "")
    assert one_line(err) == "campaign status: no campaign named 'winter'"


# --- calling window (create, status) -------------------------------------------------------------


def window_of(cli: Cli, name: str) -> tuple[str, str, list[int]]:
    (row,) = cli.query(
        "SELECT to_char(window_start, 'HH24:MI') AS s, to_char(window_end, 'HH24:MI') AS e, "
        "window_days FROM campaigns WHERE name = $1",
        name,
    )
    return row["s"], row["e"], list(row["window_days"])


def test_create_stores_the_calling_window_and_status_shows_it_on_its_own_line(cli: Cli) -> None:
    status, _, err = cli(
        "create", "spring", "--service", "Svc", "--window-start", "8:30",
        "--window-end", "24:00", "--window-days", "mon-fri",
    )  # fmt: skip

    assert (status, err) == (0, "")
    assert window_of(cli, "spring") == ("08:30", "24:00", [1, 2, 3, 4, 5])
    _, table, _ = cli("status", "spring")
    assert re.search(r"^  window +08:30-24:00 local time, Mon-Fri$", table, re.M)
    _, doc, _ = cli("status", "spring", "--json")
    (c,) = json.loads(doc)["campaigns"]
    assert c["window"] == {
        "start": "08:30",
        "end": "24:00",
        "days": [1, 2, 3, 4, 5],
        "default_timezone": None,
        "text": "08:30-24:00 local time, Mon-Fri",
    }


@pytest.mark.parametrize(
    ("days", "stored", "shown"),
    [
        ("1,2,3", [1, 2, 3], "Mon-Wed"),
        ("Mon,Wed,friday", [1, 3, 5], "Mon, Wed, Fri"),
        ("fri-mon", [1, 5, 6, 7], "Mon, Fri-Sun"),
        ("weekend", [6, 7], "Sat-Sun"),
        ("all", [1, 2, 3, 4, 5, 6, 7], "every day"),
    ],
)
def test_create_accepts_iso_weekdays_names_and_ranges(
    cli: Cli, days: str, stored: list[int], shown: str
) -> None:
    args = (
        "--window-start",
        "22:00",
        "--window-end",
        "06:00",
        "--default-timezone",
        "Europe/Paris",
    )
    assert cli("create", "spring", "--service", "Svc", "--window-days", days, *args)[0] == 0

    assert window_of(cli, "spring") == ("22:00", "06:00", stored)
    _, table, _ = cli("status", "spring")
    expected = f"22:00-06:00 (past midnight) local time, {shown} (default zone Europe/Paris)"
    assert re.search(rf"^  window +{re.escape(expected)}$", table, re.M)


def test_create_leaves_the_default_window_when_no_window_option_is_given(cli: Cli) -> None:
    cli("create", "spring", "--service", "Svc")

    assert window_of(cli, "spring") == ("09:00", "20:00", [1, 2, 3, 4, 5, 6, 7])
    assert re.search(r"^  window +09:00-20:00 local time, every day$", cli("status")[1], re.M)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (("--window-start", "25:00"), "--window-start: '25:00' is not a time of day as HH:MM"),
        (("--window-start", "24:00"), "--window-start: '24:00' is not a time of day as HH:MM"),
        (("--window-end", "9"), "--window-end: '9' is not a time of day as HH:MM (00:00-24:00)"),
        (("--window-end", "09:60"), "--window-end: '09:60' is not a time of day"),
        (("--window-days", "funday"), "--window-days: 'funday' is not a weekday"),
        (("--window-days", "0"), "--window-days: '0' is not a weekday"),
        (("--window-days", "1,,2"), "--window-days: '1,,2' has an empty item"),
        (
            ("--window-start", "10:00", "--window-end", "10:00"),
            "window_start and window_end are equal",
        ),
        # Only one end given: the other is the schema's default, and the schema says no.
        (("--window-start", "20:00"), "invalid window_start '20:00': must satisfy"),
    ],
)
def test_create_refuses_a_malformed_window_with_one_line(
    cli: Cli, argv: tuple[str, ...], message: str
) -> None:
    status, out, err = cli("create", "spring", "--service", "Svc", *argv)

    assert (status, out) == (2, "")
    assert one_line(err).startswith(f"campaign create: {message}")
    assert cli.query("SELECT * FROM campaigns") == []


# --- cancel: Aculab's queue ----------------------------------------------------------------------

SIM_SERVICE = "MyOutboundService"
SIM_CALLER_ID = "441908273801"


def aim_at_simulator(
    monkeypatch: pytest.MonkeyPatch, sim: Simulator, api_access_key: str | None = None
) -> None:
    monkeypatch.setenv("CAMPAIGN_ACULAB__BASE_URL", sim.base_url)
    monkeypatch.setenv("CAMPAIGN_ACULAB__CLOUD_ID", sim.config.cloud_id)
    monkeypatch.setenv("CAMPAIGN_ACULAB__USERNAME", sim.config.username)
    key = sim.config.api_access_key if api_access_key is None else api_access_key
    monkeypatch.setenv("CAMPAIGN_ACULAB__API_ACCESS_KEY", key)
    monkeypatch.setenv("CAMPAIGN_HTTP__CONNECT_TIMEOUT", "1")
    monkeypatch.setenv("CAMPAIGN_HTTP__READ_TIMEOUT", "2")


async def new_sim_campaign(pool: Pool, name: str, service: str = SIM_SERVICE) -> int:
    campaign_id: int = await pool.fetchval(
        "INSERT INTO campaigns (name, service_name, caller_id) VALUES ($1, $2, $3) RETURNING id",
        name,
        service,
        SIM_CALLER_ID,
    )
    return campaign_id


async def start_calls(pool: Pool, sim: Simulator, campaign_id: int, count: int) -> list[str]:
    """Start `count` calls at the simulator as the dispatcher would, and record them."""
    numbers = [f"4419082{i:05d}" for i in range(count)]
    contact_ids = [
        r["id"]
        for r in await pool.fetch(
            "INSERT INTO contacts (campaign_id, destination, state, attempts) "
            "SELECT $1, d, 'dialing', 1 FROM unnest($2::text[]) AS d RETURNING id",
            campaign_id,
            numbers,
        )
    ]
    rest_calls = encode_rest_calls(
        [{"to": n, "from": SIM_CALLER_ID} for n in numbers], "production"
    )
    batch_id = await pool.fetchval(
        "INSERT INTO batches (campaign_id, service_name, unique_id, rest_calls, contact_ids, state)"
        " VALUES ($1, $2, gen_random_uuid()::text, $3, $4, 'submitted') RETURNING id",
        campaign_id,
        SIM_SERVICE,
        rest_calls,
        contact_ids,
    )
    settings = load_settings(
        None,
        aculab={
            "base_url": sim.base_url,
            "service_passwords": dict(sim.config.service_passwords),
        },
    )
    async with AculabClient(settings.aculab, settings.http) as client:
        references = await client.service_start(SIM_SERVICE, rest_calls)
    await pool.execute(
        "INSERT INTO calls (contact_id, campaign_id, batch_id, attempt, reference, next_poll_at) "
        "SELECT c, $1, $2, 1, r, now() + interval '1 hour' "
        "FROM unnest($3::bigint[], $4::text[]) AS t(c, r)",
        campaign_id,
        batch_id,
        contact_ids,
        references,
    )
    return references


async def queued_simulator(make_simulator: MakeSimulator) -> Simulator:
    # 0.5 starts per second on a clock that stands still: the first call starts, the
    # others stay queued for as long as the test needs.
    return await make_simulator(SimulatorConfig(calls_per_second=0.5), clock=ManualClock())


async def test_cancel_purges_the_aculab_queue_of_a_service_no_other_campaign_uses(
    cli: Cli, db_pool: Pool, make_simulator: MakeSimulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    sim = await queued_simulator(make_simulator)
    aim_at_simulator(monkeypatch, sim)
    spring = await new_sim_campaign(db_pool, "spring")
    # Campaigns that are finished do not count as users of the service.
    await db_pool.execute(
        "UPDATE campaigns SET state = 'cancelled' WHERE id = $1",
        await new_sim_campaign(db_pool, "old"),
    )
    await start_calls(db_pool, sim, spring, 4)
    assert sim.queue_length(SIM_SERVICE) == 3

    status, out, err = await cli.run("cancel", "spring")

    assert (status, err) == (0, "")
    assert out.splitlines() == [
        "campaign 'spring': active -> cancelled; 0 pending contacts cancelled",
        f"purged 3 queued calls at Aculab for service {SIM_SERVICE}",
    ]
    assert sim.queue_length(SIM_SERVICE) == 0
    # Every unfinished call is due for a poll, so the purged ones are recorded at once.
    overdue = await db_pool.fetchval(
        "SELECT count(*) FROM calls WHERE finished_at IS NULL AND next_poll_at <= now()"
    )
    assert overdue == 4


async def test_cancel_leaves_the_aculab_queue_alone_when_another_campaign_shares_the_service(
    cli: Cli, db_pool: Pool, make_simulator: MakeSimulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    sim = await queued_simulator(make_simulator)
    aim_at_simulator(monkeypatch, sim)
    spring = await new_sim_campaign(db_pool, "spring")
    summer = await new_sim_campaign(db_pool, "summer", service=SIM_SERVICE.lower())
    await db_pool.execute("UPDATE campaigns SET state = 'paused' WHERE id = $1", summer)
    await start_calls(db_pool, sim, spring, 3)

    status, out, err = await cli.run("cancel", "spring")

    assert (status, err) == (0, "")
    assert out.splitlines()[1] == (
        f"not purging Aculab's queue for service {SIM_SERVICE}: "
        "also used by active or paused campaign 'summer'"
    )
    assert sim.queue_length(SIM_SERVICE) == 2
    assert sim.request_count("queue_purge") == 0
    polls = await db_pool.fetch("SELECT next_poll_at > now() AS later FROM calls")
    assert all(r["later"] for r in polls)


@pytest.mark.parametrize(
    ("key", "base_url", "why"),
    [
        ("", None, "no API access key configured (set aculab.api_access_key)"),
        ("wrong-key", None, "HTTP 401"),
        (None, "http://127.0.0.1:1", "cannot connect"),
    ],
    ids=["no-api-key", "refused", "unreachable"],
)
async def test_cancel_holds_with_a_warning_when_aculab_cannot_purge(
    cli: Cli,
    db_pool: Pool,
    make_simulator: MakeSimulator,
    monkeypatch: pytest.MonkeyPatch,
    key: str | None,
    base_url: str | None,
    why: str,
) -> None:
    sim = await queued_simulator(make_simulator)
    spring = await new_sim_campaign(db_pool, "spring")
    await start_calls(db_pool, sim, spring, 3)
    aim_at_simulator(monkeypatch, sim, api_access_key=key)
    if base_url is not None:
        monkeypatch.setenv("CAMPAIGN_ACULAB__BASE_URL", base_url)

    status, out, err = await cli.run("cancel", "spring")

    assert (status, out) == (
        0,
        "campaign 'spring': active -> cancelled; 0 pending contacts cancelled\n",
    )
    warning = one_line(err)
    assert warning.startswith(f"warning: Aculab's queue for service {SIM_SERVICE} was not purged (")
    assert why in warning
    assert "run `campaign cancel spring` again" in warning
    assert sim.queue_length(SIM_SERVICE) == 2
    assert await db_pool.fetchval("SELECT state FROM campaigns") == "cancelled"


async def test_cancel_purges_the_queue_when_run_as_the_real_command(
    db_dsn: str, db_pool: Pool, make_simulator: MakeSimulator
) -> None:
    sim = await queued_simulator(make_simulator)
    spring = await new_sim_campaign(db_pool, "spring")
    await start_calls(db_pool, sim, spring, 5)
    env = {k: v for k, v in os.environ.items() if not k.startswith("CAMPAIGN_")}
    env |= {
        "CAMPAIGN_DATABASE__DSN": db_dsn,
        "CAMPAIGN_ACULAB__BASE_URL": sim.base_url,
        "CAMPAIGN_ACULAB__API_ACCESS_KEY": sim.config.api_access_key,
    }

    # Asynchronously, so that this loop keeps serving the simulator meanwhile.
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "campaign", "cancel", "spring", "--reason", "client request",
        env=env, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    async with asyncio.timeout(60):
        out, err = await proc.communicate()

    assert (proc.returncode, err.decode()) == (0, "")
    assert out.decode().splitlines()[-1] == (
        f"purged 4 queued calls at Aculab for service {SIM_SERVICE}"
    )
    assert sim.queue_length(SIM_SERVICE) == 0


@pytest.mark.parametrize(
    ("argv", "word"),
    [
        (["load", "spring", "f.csv"], "load"),
        (["--config", "demo.toml", "status"], "status"),
        (["--config=x.toml", "simulator", "--port", "0"], "simulator"),
        (["--conf", "x.toml", "demo"], "demo"),
        (["-h"], None),
        ([], None),
    ],
)
def test_command_word_skips_the_global_options(argv: list[str], word: str | None) -> None:
    assert command_word(argv) == word


def test_commands_other_than_demo_and_simulator_start_without_the_simulator() -> None:
    # `campaign load` of a large file is timed by operators: the simulator and
    # aiohttp's server side cost 0.3 s to import and are not needed by it.
    probe = (
        "import sys\n"
        "from campaign.cli import main\n"
        "try:\n"
        "    main(['status', '--help'])\n"
        "except SystemExit:\n"
        "    pass\n"
        "print(sorted(m for m in ('campaign.simulator', 'campaign.demo', 'aiohttp.web')"
        " if m in sys.modules))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout.strip().splitlines()[-1] == "[]"
