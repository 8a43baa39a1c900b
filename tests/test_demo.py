"""`campaign demo` runs the whole engine to completion with no configuration, and
leaves the commands that show what it did."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest


@pytest.mark.slow
def test_demo_runs_to_completion_and_checks_itself_against_the_simulator(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CAMPAIGN_")}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "campaign",
            "demo",
            "--contacts",
            "150",
            "--data-dir",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=240,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    assert "demo finished: campaign completed" in out
    assert "differ from their attempts: 0" in out
    assert "premium-rate" in out and "do-not-call" in out
    assert "Traceback" not in proc.stderr
    # The commands it prints work as printed, on the data it left.
    shown = out.split("look around", 1)[1].splitlines()[1:]
    assert [line.split()[-2:] for line in shown] == [
        ["status", "demo"],
        ["why", "demo"],
        ["demo", "--all"],
    ]
    for line in shown:
        looked = subprocess.run(
            ["bash", "-c", line],
            capture_output=True,
            text=True,
            env=env,
            cwd=tmp_path,
            timeout=60,
            check=False,
        )
        assert looked.returncode == 0, line + "\n" + looked.stderr
        assert "demo" in looked.stdout
