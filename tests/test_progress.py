"""Progress of long commands: one updating line on a terminal, nothing when piped.

`campaign load`, `campaign suppress load` and `campaign export` run as real processes,
their stderr a pseudo-terminal (as a person at a shell has) or a pipe (as a script,
cron or a log collector has).
"""

from __future__ import annotations

import io
import re
from pathlib import Path

import pytest

from campaign.progress import Progress
from tests.helpers import Cli, run_campaign, run_on_terminal

LOAD_LINE = re.compile(r"\r([\d,]+) rows read, ([\d,]+) refused, ([\d,]+) rows/s *")
EXPORT_LINE = re.compile(r"\r([\d,]+) rows written, ([\d,]+) rows/s *")


pytestmark = pytest.mark.usefixtures("restore_logging")


@pytest.fixture
def cli(cli: Cli) -> Cli:
    """The shared command line (tests/conftest.py), with the campaign every test here
    loads into or exports from."""
    created = cli("create", "spring", "--service", "S", "--caller-id", "441908273801")
    assert created[0] == 0
    return cli


@pytest.fixture
def contacts_file(tmp_path: Path) -> Path:
    """30,000 good rows (three of the loader's chunks) and 2 refused ones (empty)."""
    path = tmp_path / "contacts.csv"
    rows = [f"4420{70_000_000 + i}" for i in range(30_002)]
    rows[100] = rows[20_000] = '""'
    path.write_text("destination\n" + "\n".join(rows) + "\n")
    return path


def progress_of(terminal: str, pattern: re.Pattern[str]) -> list[tuple[int, ...]]:
    """The figures of every rewrite of the progress line, checking that they all went
    to one line of the terminal (carriage returns, no line feed between them)."""
    first_line = terminal.split("\n", 1)[0]
    found = pattern.findall(terminal)
    assert found, terminal
    assert len(pattern.findall(first_line)) == len(found), terminal
    return [tuple(int(n.replace(",", "")) for n in figures) for figures in found]


def test_load_shows_rows_read_refused_and_rate_on_one_line_of_a_terminal(
    cli: Cli, db_dsn: str, contacts_file: Path
) -> None:
    status, out, terminal = run_on_terminal(db_dsn, "load", "spring", str(contacts_file))

    assert status == 0, terminal
    assert out == "loaded 30,000 rows, refused 2 rows (see above)\n"
    figures = progress_of(terminal, LOAD_LINE)
    read, refused, rate = figures[-1]
    assert (read, refused) == (30_002, 2)
    assert rate > 0
    # The line is ended before anything else is said: the refusals follow on their own.
    lines = terminal.split("\r\n")
    assert LOAD_LINE.fullmatch("\r" + lines[0].rsplit("\r", 1)[1])
    assert lines[1:3] == ["line 102: empty destination", "line 20002: empty destination"]


def test_load_says_nothing_of_its_progress_when_stderr_is_piped(
    cli: Cli, db_dsn: str, contacts_file: Path
) -> None:
    proc = run_campaign(db_dsn, "load", "spring", str(contacts_file))

    assert (proc.returncode, proc.stdout) == (0, "loaded 30,000 rows, refused 2 rows (see above)\n")
    assert proc.stderr == "line 102: empty destination\nline 20002: empty destination\n"


@pytest.fixture
def numbers_file(tmp_path: Path) -> Path:
    """12,000 numbers (three of the suppress loader's chunks) and one line that is not."""
    path = tmp_path / "dnc.txt"
    lines = [f"+4420{70_000_000 + i}" for i in range(12_000)]
    lines.insert(5, "not a number")
    path.write_text("\n".join(lines) + "\n")
    return path


def test_suppress_load_shows_its_progress_on_a_terminal(
    cli: Cli, db_dsn: str, numbers_file: Path
) -> None:
    status, out, terminal = run_on_terminal(db_dsn, "suppress", "load", str(numbers_file))

    assert status == 0, terminal
    assert out.startswith("suppressed 12,000 numbers for every campaign")
    read, refused, _ = progress_of(terminal, LOAD_LINE)[-1]
    assert (read, refused) == (12_001, 1)
    assert terminal.split("\r\n")[1].startswith("line 6: ")


def test_suppress_load_says_nothing_of_its_progress_when_stderr_is_piped(
    cli: Cli, db_dsn: str, numbers_file: Path
) -> None:
    proc = run_campaign(db_dsn, "suppress", "load", str(numbers_file))

    assert proc.returncode == 0
    assert "rows read" not in proc.stderr
    assert "\r" not in proc.stderr
    assert proc.stderr.startswith("line 6: ")
    assert len(proc.stderr.splitlines()) == 1


def loaded(cli: Cli, contacts_file: Path) -> None:
    status, _, _ = cli("load", "spring", str(contacts_file), "--no-check")
    assert status == 0


def test_export_shows_rows_written_and_rate_on_a_terminal(
    cli: Cli, db_dsn: str, contacts_file: Path, tmp_path: Path
) -> None:
    loaded(cli, contacts_file)

    status, out, terminal = run_on_terminal(
        db_dsn, "export", "spring", "--output", str(tmp_path / "out.csv")
    )

    assert (status, out) == (0, "")
    figures = progress_of(terminal, EXPORT_LINE)
    assert figures[0][0] == 0  # at once, before the first row
    assert figures[-1][0] == 30_000
    assert terminal.endswith("\r\n")


def test_export_says_nothing_on_stderr_when_piped(
    cli: Cli, db_dsn: str, contacts_file: Path
) -> None:
    loaded(cli, contacts_file)

    proc = run_campaign(db_dsn, "export", "spring")

    assert (proc.returncode, proc.stderr) == (0, "")
    assert len(proc.stdout.splitlines()) == 1 + 30_000


def test_export_to_the_terminal_itself_draws_no_progress_line_over_the_rows(
    cli: Cli, db_dsn: str, contacts_file: Path
) -> None:
    loaded(cli, contacts_file)

    status, _, terminal = run_on_terminal(db_dsn, "export", "spring", stdout_too=True)

    assert status == 0
    assert "rows written" not in terminal
    assert terminal.count("\r\n") == 1 + 30_000


class Clock:
    """A clock that moves only when told (as the simulator's tests have)."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def shown(written: str) -> str:
    """What a terminal shows on the line after `written`: each \r goes back to its start
    and the text after it overwrites what was there."""
    line = ""
    for piece in written.rstrip("\n").split("\r"):
        line = piece + line[len(piece) :]
    return line


def test_the_line_is_rewritten_at_most_every_interval_and_never_keeps_stale_characters() -> None:
    clock, stream = Clock(), io.StringIO()
    progress = Progress(stream, "rows read", "refused", interval=0.25, clock=clock)

    clock.now = 0.001
    progress.update(1_000_000, 5)  # the first at once (1e9 rows/s: a long line)
    clock.now = 0.1
    progress.update(1_100_000, 5)  # too soon after it: not drawn
    assert stream.getvalue().count("\r") == 1
    clock.now = 10.0
    progress.update(2_000_000, 7)
    progress.finish()

    assert stream.getvalue().count("\r") == 3
    assert stream.getvalue().endswith("\n")
    assert shown(stream.getvalue()).rstrip() == "2,000,000 rows read, 7 refused, 200,000 rows/s"


def test_a_command_that_fails_before_its_first_row_leaves_no_progress_line() -> None:
    stream = io.StringIO()

    Progress(stream, "rows written").finish()

    assert stream.getvalue() == ""
