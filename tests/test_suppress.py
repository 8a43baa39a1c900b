"""`campaign suppress add|remove|load|list`: the do-not-call list as operators keep it.

Against a real PostgreSQL; numbers must come out exactly as the dispatcher normalises
them, which the last test proves by dispatching against the simulator.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from campaign.db.admin import Pool
from campaign.destinations import Rejected, parse_destination
from campaign.simulator import Simulator
from campaign.suppressions import load_suppressions, normalise_number
from tests.helpers import Cli, one_line

pytestmark = pytest.mark.usefixtures("restore_logging")


def entries(cli: Cli) -> list[tuple[str, str | None, str | None]]:
    rows = cli.query(
        "SELECT s.destination, c.name, s.reason FROM suppressions s "
        "LEFT JOIN campaigns c ON c.id = s.campaign_id ORDER BY s.id"
    )
    return [(r["destination"], r["name"], r["reason"]) for r in rows]


def text_file(tmp_path: Path, text: str, name: str = "dnc.txt") -> str:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return str(path)


# --- add -------------------------------------------------------------------------------------


@pytest.mark.parametrize("raw", ["+44 (1908) 273-800", "tel:+441908273800", "441908273800"])
def test_add_stores_the_digits_the_dispatcher_compares(cli: Cli, raw: str) -> None:
    status, out, err = cli("suppress", "add", raw, "--reason", "asked on the phone")

    assert (status, out, err) == (0, "suppressed 441908273800 for every campaign\n", "")
    dispatcher_key = parse_destination(raw)
    assert not isinstance(dispatcher_key, Rejected)
    assert entries(cli) == [(dispatcher_key.number, None, "asked on the phone")]


def test_a_national_number_needs_a_default_country_or_the_campaigns_own(cli: Cli) -> None:
    cli("create", "spring", "--service", "Svc", "--default-country", "GB")
    cli("create", "autumn", "--service", "Svc")

    status, out, err = cli("suppress", "add", "01908 273800")
    assert (status, out) == (2, "")
    assert one_line(err).startswith(
        "campaign suppress: cannot use '01908 273800': national format (leading 0) needs "
        "--default-country"
    )
    assert cli("suppress", "add", "01908 273800", "--campaign", "autumn")[0] == 2

    assert cli("suppress", "add", "01908 273800", "--campaign", "spring")[:2] == (
        0,
        "suppressed 441908273800 for campaign 'spring'\n",
    )
    assert cli("suppress", "add", "01908 273801", "--default-country", "gb")[:2] == (
        0,
        "suppressed 441908273801 for every campaign\n",
    )
    assert entries(cli) == [("441908273800", "spring", None), ("441908273801", None, None)]


def test_adding_a_number_already_suppressed_is_not_an_error_and_keeps_its_reason(
    cli: Cli,
) -> None:
    cli("create", "spring", "--service", "Svc")
    cli("suppress", "add", "+441908273800", "--reason", "complaint")

    status, out, err = cli("suppress", "add", "+44 1908 273800", "--reason", "again")

    assert (status, err) == (0, "")
    assert out == "441908273800 is already suppressed for every campaign (reason: complaint)\n"
    # Another scope is another entry.
    assert cli("suppress", "add", "+441908273800", "--campaign", "spring")[:2] == (
        0,
        "suppressed 441908273800 for campaign 'spring'\n",
    )
    assert entries(cli) == [
        ("441908273800", None, "complaint"),
        ("441908273800", "spring", None),
    ]


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        ("sip:bob@example.com", "not a telephone number (a sip address)"),
        ("bob@example.com", "not a telephone number (a sip address)"),
        ("hello", "neither a telephone number nor a SIP address"),
        ("+44 1", "not a possible telephone number (too short)"),
        ("+44 909 879 0000", "premium-rate numbers cannot be called"),
        ("", "destination is empty"),
    ],
)
def test_add_refuses_what_is_not_a_telephone_number_with_its_reason(
    cli: Cli, raw: str, reason: str
) -> None:
    status, out, err = cli("suppress", "add", raw)

    assert (status, out) == (2, "")
    assert one_line(err).startswith(f"campaign suppress: cannot use {raw!r}: {reason}")
    assert entries(cli) == []


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (("add", "+441908273800", "--campaign", "nope"), "no campaign named 'nope'"),
        (("remove", "+441908273800", "--campaign", "nope"), "no campaign named 'nope'"),
        (("load", "/dev/null", "--campaign", "nope"), "no campaign named 'nope'"),
        (("list", "--campaign", "nope"), "no campaign named 'nope'"),
        (("add", "01908273800", "--default-country", "XX"), "--default-country: 'XX' is not"),
        (("add", "+441908273800", "--reason", "a\x00b"), "--reason: contains a NUL character"),
    ],
)
def test_suppress_refuses_bad_options_with_one_line_and_status_2(
    cli: Cli, argv: tuple[str, ...], message: str
) -> None:
    status, out, err = cli("suppress", *argv)

    assert (status, out) == (2, "")
    assert one_line(err).startswith(f"campaign suppress: {message}")
    assert entries(cli) == []


@given(st.text(max_size=40))
def test_normalising_any_text_gives_international_digits_or_a_reason(raw: str) -> None:
    number = normalise_number(raw, "GB")
    if isinstance(number, Rejected):
        assert number.reason and "\n" not in number.reason
    else:
        assert number.isascii() and number.isdigit() and not number.startswith("0")


# --- remove ----------------------------------------------------------------------------------


def test_remove_deletes_the_entry_of_its_scope_only(cli: Cli) -> None:
    cli("create", "spring", "--service", "Svc")
    cli("suppress", "add", "+441908273800")
    cli("suppress", "add", "+441908273800", "--campaign", "spring")

    status, out, _ = cli("suppress", "remove", "+44 1908 273800", "--campaign", "spring")

    assert (status, out) == (
        0,
        "removed 441908273800 from the do-not-call list for campaign 'spring'\n",
    )
    assert entries(cli) == [("441908273800", None, None)]


def test_removing_a_number_not_suppressed_in_that_scope_is_refused_with_a_hint(cli: Cli) -> None:
    cli("create", "spring", "--service", "Svc")
    cli("suppress", "add", "+441908273800", "--campaign", "spring")

    status, out, err = cli("suppress", "remove", "+441908273800")
    assert (status, out) == (2, "")
    assert one_line(err) == (
        "campaign suppress: 441908273800 is not suppressed for every campaign "
        "(it is suppressed for campaign 'spring': use --campaign)"
    )

    status, _, err = cli("suppress", "remove", "+441908273899")
    assert status == 2
    assert one_line(err) == "campaign suppress: 441908273899 is not suppressed for every campaign"
    assert entries(cli) == [("441908273800", "spring", None)]


# --- load ------------------------------------------------------------------------------------


def test_load_takes_one_number_per_line_and_reports_bad_lines_by_number(
    cli: Cli, tmp_path: Path
) -> None:
    cli("suppress", "add", "+441908273803")
    path = text_file(
        tmp_path,
        "# do not call, exported 2026-11-27\n"
        "+44 1908 273800\n"
        "\n"
        "441908273801\r\n"
        "sip:bob@example.com\n"
        "01908 273802\n"
        "+441908273800\n"
        "+441908273803\n"
        "call me maybe\n",
    )

    status, out, err = cli("suppress", "load", path, "--reason", "dnc list")

    assert status == 0
    assert out == (
        "suppressed 2 numbers for every campaign (2 already suppressed), "
        "refused 3 lines (see above)\n"
    )
    assert err.splitlines() == [
        "line 5: not a telephone number (a sip address)",
        "line 6: national format (leading 0) needs --default-country: 0190*****02",
        "line 9: SIP address contains whitespace",
    ]
    assert entries(cli) == [
        ("441908273803", None, None),
        ("441908273800", None, "dnc list"),
        ("441908273801", None, "dnc list"),
    ]


def test_load_takes_a_csv_with_destination_and_reason_columns(cli: Cli, tmp_path: Path) -> None:
    cli("create", "spring", "--service", "Svc", "--default-country", "GB")
    path = text_file(
        tmp_path,
        'Reason,Destination\n"asked, twice",01908 273800\n,+441908273801\ntoo,many,fields\n',
        name="dnc.csv",
    )

    status, out, err = cli("suppress", "load", path, "--campaign", "spring", "--reason", "list")

    assert (status, err) == (0, "line 4: expected 2 fields, found 3\n")
    assert out == "suppressed 2 numbers for campaign 'spring', refused 1 lines (see above)\n"
    assert entries(cli) == [
        ("441908273800", "spring", "asked, twice"),
        ("441908273801", "spring", "list"),
    ]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (None, "campaign suppress: cannot read "),
        ("destination,phone\n+441908273800,1\n", "unknown column 'phone' in the header"),
        ("destination,destination\n", "a column appears twice in the header"),
    ],
)
def test_load_refuses_an_unusable_file_and_loads_nothing(
    cli: Cli, tmp_path: Path, text: str | None, message: str
) -> None:
    path = str(tmp_path / "missing.txt") if text is None else text_file(tmp_path, text)

    status, out, err = cli("suppress", "load", path)

    assert (status, out) == (2, "")
    assert message in one_line(err)
    assert entries(cli) == []


async def test_load_streams_the_file_in_chunks_in_one_transaction(
    db_pool: Pool, tmp_path: Path
) -> None:
    numbers = [f"+44 1908 {200000 + i}" for i in range(25)]
    path = tmp_path / "dnc.txt"
    path.write_text("\n".join([*numbers, "nonsense", numbers[0]]) + "\n", encoding="utf-8")

    result = await load_suppressions(db_pool, path, reason="bulk", chunk_rows=4, max_reported=5)

    assert (result.read, result.added, result.refused) == (26, 25, 1)
    assert result.refusals == [
        "line 26: neither a telephone number nor a SIP address (expected user@host or a host name)"
    ]
    stored = await db_pool.fetch("SELECT destination FROM suppressions ORDER BY destination")
    assert [r["destination"] for r in stored] == [f"441908{200000 + i}" for i in range(25)]


# --- list ------------------------------------------------------------------------------------


def test_list_prints_tab_separated_entries_that_apply_to_a_campaign(cli: Cli) -> None:
    cli("create", "spring", "--service", "Svc")
    cli("create", "autumn", "--service", "Svc")
    cli("suppress", "add", "+441908273801", "--reason", "asked\nnicely")
    cli("suppress", "add", "+441908273800", "--campaign", "spring")
    cli("suppress", "add", "+441908273802", "--campaign", "autumn")

    status, out, err = cli("suppress", "list", "--campaign", "spring")

    assert status == 0
    lines = [line.split("\t") for line in out.splitlines()]
    assert lines[0] == ["destination", "campaign", "reason", "added_at"]
    assert [row[:3] for row in lines[1:]] == [
        ["441908273800", "spring", ""],
        ["441908273801", "*", "asked nicely"],
    ]
    assert err == "2 suppressions applying to campaign 'spring' ('*' = every campaign)\n"
    assert len(cli("suppress", "list")[1].splitlines()) == 4


# --- what the dispatcher makes of it -----------------------------------------------------------


async def test_numbers_suppressed_by_the_command_are_never_dialed(
    cli: Cli, db_pool: Pool, simulator: Simulator
) -> None:
    from tests.engine import add_contacts, create_campaign, engine_settings, run_until_idle

    spring = await create_campaign(db_pool, "spring", default_country="GB")
    await db_pool.execute("UPDATE campaigns SET window_start = '00:00', window_end = '24:00'")
    await add_contacts(
        db_pool, spring, ["+44 1908 273800", "01908 273801", "+44 1908 273802", "+441908273803"]
    )
    assert (await cli.run("suppress", "add", "01908273800", "--default-country", "GB"))[0] == 0
    assert (await cli.run("suppress", "add", "+441908273801", "--campaign", "spring"))[0] == 0
    assert (await cli.run("suppress", "add", "+441908273802", "--campaign", "other"))[0] == 2

    await run_until_idle(db_pool, engine_settings(simulator))

    rows = await db_pool.fetch("SELECT state FROM contacts ORDER BY id")
    assert [r["state"] for r in rows] == ["suppressed", "suppressed", "dialing", "dialing"]
    assert simulator.calls_to("441908273800") == simulator.calls_to("441908273801") == 0
    assert simulator.calls_to("441908273802") == 1
