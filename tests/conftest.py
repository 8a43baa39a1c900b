"""Shared fixtures: a real PostgreSQL and a real simulator on loopback; nothing is mocked."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.fixtures_db import *  # noqa: F403
from tests.fixtures_sim import *  # noqa: F403
from tests.helpers import Cli, logging_restored, point_at


@pytest.fixture
def restore_logging() -> Iterator[None]:
    """Logging as it was before the test: commands run in-process configure it for the
    whole process. A module whose tests run commands uses it for all of them with
    `pytestmark = pytest.mark.usefixtures("restore_logging")`."""
    with logging_restored():
        yield


@pytest.fixture
def cli(db_dsn: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> Cli:
    """The command line in-process against the test database (a module may extend it,
    e.g. to create a campaign first: tests/test_progress.py)."""
    point_at(monkeypatch, db_dsn)
    return Cli(db_dsn, capsys)
