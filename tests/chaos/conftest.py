"""Say the chaos seed wherever a chaos run ends: in each failure's report and in the
session summary, so that a failure can be reproduced (tests/chaos/seed.py)."""

from __future__ import annotations

from collections.abc import Generator

import pytest

from tests.chaos.seed import REPRODUCE

_chaos_ran = False


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    global _chaos_ran
    report = yield
    if item.get_closest_marker("chaos") is not None:
        _chaos_ran = True
        if report.failed:
            report.sections.append(("chaos seed", REPRODUCE))
    return report


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if _chaos_ran:
        terminalreporter.write_line(REPRODUCE)
