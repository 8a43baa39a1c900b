"""One time-zone rule (windows.usable_zone) for `campaign create`, `campaign load` and the claim.

Names that ZoneInfo loads but that name no place (the server's `localtime`, tzdata's
`Factory` placeholder) and the `posix/` and `right/` copies of the tree used to pass
create and load, only for the dispatcher to mark every contact using them `invalid`.
"""

from __future__ import annotations

import zoneinfo
from pathlib import Path

import pytest

from campaign import windows
from tests.helpers import Cli, one_line, run_campaign

UNPLACED = ("Factory", "localtime", "posix/Europe/London", "right/Europe/London")
WHY = {
    "Factory": "'Factory' is a tzdata placeholder, not a place",
    "localtime": "'localtime' is the server's own zone, not a place",
    "posix/Europe/London": "'posix/Europe/London' is a copy from tzdata's posix/ tree: "
    "use 'Europe/London'",
    "right/Europe/London": "'right/Europe/London' is a copy from tzdata's right/ tree: "
    "use 'Europe/London'",
}


def contacts_file(tmp_path: Path, zone: str) -> str:
    path = tmp_path / "contacts.csv"
    path.write_text(f"destination,timezone\n+441908273800,{zone}\n+441908273802,Europe/London\n")
    return str(path)


@pytest.mark.parametrize("name", UNPLACED)
def test_zoneinfo_loads_each_unplaced_name_but_the_rule_refuses_it(name: str) -> None:
    zoneinfo.ZoneInfo(name)  # the trap: it loads

    with pytest.raises(windows.UnusableZone) as refused:
        windows.usable_zone(name)

    assert str(refused.value).startswith(WHY[name])


def test_the_claim_accepts_exactly_the_zones_the_rule_accepts() -> None:
    names = sorted(zoneinfo.available_timezones() | set(UNPLACED) | {"posixrules", "Mars/Base"})
    for name in names:
        try:
            windows.usable_zone(name)
            usable = True
        except windows.UnusableZone:
            usable = False
        assert isinstance(windows.contact_zones(name, (), None), tuple) == usable, name
        assert isinstance(windows.contact_zones(None, (), name), tuple) == usable, name


@pytest.mark.parametrize("name", UNPLACED)
def test_create_refuses_a_default_timezone_the_dispatcher_would_mark_invalid(
    cli: Cli, name: str
) -> None:
    status, out, err = cli("create", "spring", "--service", "Svc", "--default-timezone", name)

    assert (status, out) == (2, "")
    assert err.count("\n") == 1
    assert one_line(err).startswith(f"campaign create: --default-timezone: {WHY[name]}")
    assert cli.query("SELECT * FROM campaigns") == []


@pytest.mark.parametrize("name", UNPLACED)
def test_load_refuses_a_row_whose_timezone_the_dispatcher_would_mark_invalid(
    cli: Cli, tmp_path: Path, name: str
) -> None:
    cli("create", "spring", "--service", "Svc", "--caller-id", "441908273801")

    status, out, err = cli("load", "spring", contacts_file(tmp_path, name))

    assert status == 0, err
    assert err.startswith(f"line 2: timezone: {WHY[name]}")
    assert err.count("\n") == 1
    assert out == "loaded 1 rows, refused 1 rows (see above)\n"
    rows = cli.query("SELECT destination, timezone FROM contacts")
    assert [tuple(r) for r in rows] == [("+441908273802", "Europe/London")]


@pytest.mark.parametrize("name", UNPLACED)
def test_load_strict_refuses_the_whole_file_with_status_2(
    cli: Cli, tmp_path: Path, name: str
) -> None:
    cli("create", "spring", "--service", "Svc", "--caller-id", "441908273801")

    status, out, err = cli("load", "spring", contacts_file(tmp_path, name), "--strict")

    assert (status, out) == (2, "")
    assert err.splitlines()[0].startswith(f"line 2: timezone: {WHY[name]}")
    assert err.splitlines()[-1].startswith("campaign load: nothing loaded (--strict)")
    assert cli.query("SELECT * FROM contacts") == []


def test_the_real_commands_refuse_an_unplaced_zone(db_dsn: str, tmp_path: Path) -> None:
    created = run_campaign(
        db_dsn, "create", "spring", "--service", "Svc", "--default-timezone", "right/Europe/London"
    )
    assert created.returncode == 2
    assert created.stderr.count("\n") == 1
    assert created.stderr.startswith(
        f"campaign create: --default-timezone: {WHY['right/Europe/London']}"
    )

    made = run_campaign(
        db_dsn, "create", "spring", "--service", "Svc", "--caller-id", "441908273801"
    )
    assert made.returncode == 0, made.stderr
    loaded = run_campaign(db_dsn, "load", "spring", contacts_file(tmp_path, "Factory"), "--strict")
    assert loaded.returncode == 2
    assert loaded.stderr.startswith(f"line 2: timezone: {WHY['Factory']}")
