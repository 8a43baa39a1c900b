"""The README's quick start, run as it stands in a fresh folder on the embedded PostgreSQL.

Every command of its `sh` block must succeed and print the lines the README shows under
it (the `#` lines), so that the front page cannot drift from the product: change the
product's output and this test says which line of the README to change.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.helpers import REPO_ROOT


def quick_start() -> list[tuple[str, list[str]]]:
    """(command, the output lines the README shows under it), in order."""
    text = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("\n## Quick start\n", 1)[1].split("\n## ", 1)[0]
    block = section.split("```sh\n", 1)[1].split("\n```", 1)[0]
    steps: list[tuple[str, list[str]]] = []
    for line in block.splitlines():
        if line.startswith("# "):
            steps[-1][1].append(line[2:])
        elif line.strip():
            steps.append((line, []))
    return steps


def test_the_quick_start_covers_a_newcomers_first_hour() -> None:
    commands = [
        command.split()[1] for command, _ in quick_start() if command.startswith("campaign")
    ]

    assert commands == ["migrate", "create", "load", "why", "status", "demo", "--config"]


def test_the_readme_quick_start_runs_as_written_in_a_fresh_folder(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CAMPAIGN_")}
    # `campaign` as the README's set-up installs it, in the active virtual environment.
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"

    for command, expected in quick_start():
        proc = subprocess.run(
            ["bash", "-c", command],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=240,
            check=False,
        )
        said = f"$ {command}\n{proc.stdout}{proc.stderr}"
        assert proc.returncode == 0, said
        assert "Traceback" not in proc.stderr, said
        lines = (proc.stdout + proc.stderr).splitlines()
        for line in expected:
            assert line in lines, f"the README shows {line!r} under this command:\n{said}"
