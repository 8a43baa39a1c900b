"""Shared fixtures: a real PostgreSQL and a real simulator on loopback; nothing is mocked."""

from __future__ import annotations

from tests.fixtures_db import *  # noqa: F403
from tests.fixtures_sim import *  # noqa: F403
