"""A built wheel, installed in a fresh virtual environment (not editable), runs
`campaign migrate` and `campaign demo` from a folder that has nothing of the source.

The wheel is built offline from a copy of what the Dockerfile copies (no build
isolation: setuptools comes from this environment, a dev dependency). The new
environment gets the package from the wheel only; its dependencies are this
environment's, reached through a path entry (not a site directory, so the editable
install's finder here is not loaded there).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

from tests.helpers import REPO_ROOT

# What the Dockerfile's build stage copies: the package needs nothing else to build.
SOURCES = ("pyproject.toml", "README.md", "campaign", "migrations")


def offline_env(**extra: str) -> dict[str, str]:
    """This process's environment with no campaign settings, no PYTHONPATH (which
    could lead to the checkout) and no package index."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("CAMPAIGN_") and k not in {"PYTHONPATH", "VIRTUAL_ENV"}
    }
    env["PIP_NO_INDEX"] = "1"
    env.update(extra)
    return env


def run(argv: list[str | Path], cwd: Path, env: dict[str, str], timeout: float = 240) -> str:
    proc = subprocess.run(
        [str(a) for a in argv],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert proc.returncode == 0, f"{argv}\n{proc.stdout}\n{proc.stderr}"
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc.stdout


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    source = tmp_path_factory.mktemp("source")
    for name in SOURCES:
        origin = REPO_ROOT / name
        if origin.is_dir():
            # symlinks=True: campaign/migrations stays the link to ../migrations it is in git.
            shutil.copytree(
                origin,
                source / name,
                symlinks=True,
                ignore=shutil.ignore_patterns("__pycache__", "*.pyc"),
            )
        else:
            shutil.copy2(origin, source / name)
    dist = tmp_path_factory.mktemp("dist")
    run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            dist,
            ".",
        ],
        cwd=source,
        env=offline_env(),
    )
    (built,) = dist.glob("aculab_campaign-*.whl")
    return built


@pytest.fixture(scope="module")
def venv(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh virtual environment with the wheel installed (without its dependencies,
    which it reaches in this environment)."""
    root = tmp_path_factory.mktemp("venv")
    run([sys.executable, "-m", "venv", "--without-pip", root], cwd=root, env=offline_env())
    python = root / "bin" / "python"
    run(
        [sys.executable, "-m", "pip", "--python", python, "install", "-q", "--no-deps", wheel],
        cwd=root,
        env=offline_env(),
    )
    purelib = run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        cwd=root,
        env=offline_env(),
    ).strip()
    here = dict.fromkeys(sysconfig.get_paths()[key] for key in ("purelib", "platlib"))
    (Path(purelib) / "dependencies.pth").write_text("\n".join(here) + "\n", encoding="utf-8")
    return root


def test_the_wheel_carries_every_migration_of_the_source(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as archive:
        packaged = sorted(
            Path(n).name for n in archive.namelist() if n.startswith("campaign/migrations/")
        )
    assert packaged == sorted(p.name for p in (REPO_ROOT / "migrations").glob("*.sql"))
    assert packaged


@pytest.mark.slow
def test_an_installed_wheel_migrates_and_runs_the_demo_from_any_folder(
    venv: Path, empty_dsn: str, tmp_path: Path
) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = offline_env(PATH=f"{venv / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}")
    campaign = venv / "bin" / "campaign"

    # The package imported there is the wheel's, not this checkout's.
    imported = run(
        [venv / "bin" / "python", "-c", "import campaign; print(campaign.__file__)"],
        cwd=elsewhere,
        env=env,
    ).strip()
    assert Path(imported).is_relative_to(venv), imported

    migrated = run(
        [campaign, "migrate"], cwd=elsewhere, env={**env, "CAMPAIGN_DATABASE__DSN": empty_dsn}
    )
    applied = sorted(p.name for p in (REPO_ROOT / "migrations").glob("*.sql"))
    assert migrated.splitlines() == [f"applied {name}" for name in applied]

    demo = run(
        [campaign, "demo", "--contacts", "20", "--data-dir", tmp_path / "demo"],
        cwd=elsewhere,
        env=env,
    )
    assert "demo finished: campaign completed" in demo
    assert "differ from their attempts: 0" in demo
