"""Shared fixtures: a real PostgreSQL and a real simulator on loopback; nothing is mocked."""

from __future__ import annotations

import pytest

from tests.fixtures_db import *  # noqa: F403
from tests.fixtures_sim import *  # noqa: F403
from tests.helpers import Cli, point_at


@pytest.fixture
def cli(db_dsn: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> Cli:
    """The command line in-process against the test database (a module may define its
    own, e.g. one that creates a campaign first)."""
    point_at(monkeypatch, db_dsn)
    return Cli(db_dsn, capsys)
