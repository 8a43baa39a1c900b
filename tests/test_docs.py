"""README.md and docs/ hold to the repository: links, cited tests, settings, events, metrics.

The README is the front page and docs/ the reference. A link that leads nowhere, a
test the docs cite that was renamed, a setting, log event, metric, command or column
the code has and the docs do not (or the other way round) fails here, naming the
doc file to change.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from campaign.db.results import RESULT_COLUMNS
from campaign.metrics import new_metrics
from campaign.settings import Settings
from tests.helpers import REPO_ROOT

DOCS = REPO_ROOT / "docs"
PAGES = [REPO_ROOT / "README.md", *sorted(DOCS.glob("*.md"))]

# [text](target) outside code; images too. Targets with a scheme are not ours to check.
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
# tests/x.py or tests/x/y.py, optionally ::test_name, wherever the docs cite one.
CITED_TEST = re.compile(r"\b(tests/[\w/]+\.py)(?:::(\w+))?")


def _prose(path: Path) -> str:
    """The page without its fenced code blocks (a link inside code is not a link)."""
    return re.sub(r"^```.*?^```", "", path.read_text(encoding="utf-8"), flags=re.S | re.M)


def _anchor(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    return {
        _anchor(line.lstrip("#"))
        for line in _prose(path).splitlines()
        if re.match(r"^#{1,6} ", line)
    }


def _section(path: Path, heading: str) -> str:
    """The text of the `## heading` section of a doc file, up to the next `## `."""
    text = path.read_text(encoding="utf-8")
    marker = f"\n## {heading}\n"
    assert marker in text, f"{path.relative_to(REPO_ROOT)} has no section '## {heading}'"
    return text.split(marker, 1)[1].split("\n## ", 1)[0]


def _first_cells(section: str) -> list[str]:
    """The first cell of each row of the section's tables (header rows left out)."""
    rows = [line for line in section.splitlines() if line.startswith("| ")]
    cells = [row.split(" | ")[0].removeprefix("| ") for row in rows]
    return [cell for cell in cells if "`" in cell]


def _code_spans(text: str) -> list[str]:
    return text.split("`")[1::2]


def test_the_docs_pages_the_readme_promises_exist() -> None:
    names = {p.name for p in DOCS.glob("*.md")}

    assert names >= {
        "operations.md",
        "protocol.md",
        "tables.md",
        "settings.md",
        "logs-and-metrics.md",
        "aculab.md",
        "performance.md",
    }


def test_the_readme_stays_a_front_page() -> None:
    lines = (REPO_ROOT / "README.md").read_text(encoding="utf-8").splitlines()

    assert len(lines) <= 200, "README.md is the front page: move reference text into docs/"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO_ROOT)))
def test_every_relative_link_leads_to_a_file_and_heading_that_exist(page: Path) -> None:
    broken = []
    for target in LINK.findall(_prose(page)):
        if re.match(r"^[a-z][a-z+.-]*:", target):
            continue
        file_part, _, fragment = target.partition("#")
        dest = (page.parent / file_part).resolve() if file_part else page
        if not dest.exists():
            broken.append(f"{target}: no file {dest}")
        elif fragment and dest.suffix == ".md" and fragment not in _anchors(dest):
            broken.append(f"{target}: no heading with anchor #{fragment} in {dest.name}")

    assert not broken, f"{page.relative_to(REPO_ROOT)}: " + "; ".join(broken)


def _test_names(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return {
        node.name
        for node in ast.walk(tree)
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name.startswith("test")
    }


def test_every_test_the_docs_cite_exists() -> None:
    cited = [
        (page, file, name)
        for page in PAGES
        for file, name in CITED_TEST.findall(page.read_text(encoding="utf-8"))
    ]
    missing = []
    for page, file, name in cited:
        path = REPO_ROOT / file
        where = f"{page.relative_to(REPO_ROOT)} cites {file}"
        if not path.exists():
            missing.append(f"{where}: no such file")
        elif name and name not in _test_names(path):
            missing.append(f"{where}::{name}: no such test")

    assert any(name for _, _, name in cited), "the docs cite no test by name"
    assert not missing, "\n".join(missing)


def _setting_defaults(model: Any, prefix: str = "") -> dict[str, object]:
    out: dict[str, object] = {}
    for name, value in model.items():
        if isinstance(value, dict) and name != "service_passwords":
            out |= _setting_defaults(value, f"{prefix}{name}.")
        else:
            out[f"{prefix}{name}"] = value
    return out


def test_docs_settings_md_lists_every_setting_once_with_its_default() -> None:
    defaults = _setting_defaults(Settings().model_dump(mode="json"))
    text = (DOCS / "settings.md").read_text(encoding="utf-8")
    rows = re.findall(r"^\| `([a-z_.]+)` \| `([^`]*)` \|", text, flags=re.M)
    documented = [key for key, _ in rows]

    assert sorted(documented) == sorted(defaults), "docs/settings.md: keys differ from Settings"
    for key, shown in rows:
        # Read as the settings file would read it (a URL gains its trailing slash).
        section, name = (
            key.rsplit(".", 1)
            if key != "aculab.service_passwords"
            else ("aculab", "service_passwords")
        )
        value = tomllib.loads(f"v = {shown}")["v"]
        read = Settings.model_validate({section: {name: value}}).model_dump(mode="json")
        assert read[section][name] == defaults[key], f"docs/settings.md: {key} shows {shown}"


def test_config_example_and_docs_settings_md_say_the_same_defaults() -> None:
    example = _setting_defaults(tomllib.loads((REPO_ROOT / "config.example.toml").read_text()))
    text = (DOCS / "settings.md").read_text(encoding="utf-8")
    rows = dict(re.findall(r"^\| `([a-z_.]+)` \| `([^`]*)` \|", text, flags=re.M))

    for key, value in example.items():
        assert tomllib.loads(f"v = {rows[key]}")["v"] == value, key


def _string_literals() -> tuple[set[str], set[str]]:
    """Every string constant in campaign/, and the constant prefixes of its f-strings."""
    found: set[str] = set()
    prefixes: set[str] = set()
    for path in (REPO_ROOT / "campaign").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                found.add(node.value)
            elif isinstance(node, ast.JoinedStr) and node.values:
                first = node.values[0]
                if isinstance(first, ast.Constant) and isinstance(first.value, str):
                    prefixes.add(first.value)
    return found, prefixes


def _written(event: str, literals: set[str], prefixes: set[str]) -> bool:
    """Written as it stands, or as f"contact_{state}" with `state` a word the code knows."""
    if event in literals:
        return True
    return any(
        prefix and event.startswith(prefix) and event[len(prefix) :] in literals
        for prefix in prefixes
    )


def test_every_log_event_in_docs_logs_and_metrics_md_is_one_the_code_writes() -> None:
    section = _section(DOCS / "logs-and-metrics.md", "Logs")
    events = [name for cell in _first_cells(section) for name in _code_spans(cell)]
    literals, prefixes = _string_literals()

    assert len(events) > 40
    unknown = [event for event in events if not _written(event, literals, prefixes)]
    assert not unknown, f"docs/logs-and-metrics.md documents events no code writes: {unknown}"


def test_docs_logs_and_metrics_md_names_every_metric_a_daemon_exports() -> None:
    section = _section(DOCS / "logs-and-metrics.md", "Metrics")
    spans = _code_spans(section)
    documented = {span.split("{")[0] for span in spans if span.startswith("campaign_")}
    exported = {
        family.name + ("_total" if family.type == "counter" else "")
        for family in new_metrics().registry.collect()
    }

    assert documented == exported


def test_docs_tables_md_describes_every_column_of_the_results_view() -> None:
    section = _section(DOCS / "tables.md", "`contact_results`: the results view")
    described = {name for cell in _first_cells(section) for name in _code_spans(cell)}

    assert set(RESULT_COLUMNS) <= described, sorted(set(RESULT_COLUMNS) - described)


def test_docs_operations_md_lists_every_command() -> None:
    help_text = subprocess.run(
        [sys.executable, "-m", "campaign", "--help"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    listed = help_text.split("positional arguments:", 1)[1].split("\noptions:", 1)[0]
    commands = set(re.findall(r"^    ([a-z][\w-]*)", listed, flags=re.M))
    assert len(commands) > 10, help_text
    section = _section(DOCS / "operations.md", "Commands")
    documented = {
        span.removeprefix("campaign ").split()[0]
        for cell in _first_cells(section)
        for span in _code_spans(cell)
    }

    assert commands <= documented, sorted(commands - documented)


def _ci_commands(marker: str) -> list[str]:
    """The commands .ci/run runs under its `# README "<marker>":` comment."""
    lines = (REPO_ROOT / ".ci" / "run").read_text(encoding="utf-8").splitlines()
    start = lines.index(f'# README "{marker}":') + 1
    commands = []
    for line in lines[start:]:
        if not line.strip() or line.startswith("#"):
            break
        commands.append(line.strip())
    return commands


@pytest.mark.parametrize("marker", ["Set up", "Tests"])
def test_the_readme_sets_up_and_tests_with_the_commands_ci_runs(marker: str) -> None:
    block = _section(REPO_ROOT / "README.md", "Set up and see it work").split("```sh\n", 1)[1]
    block = block.split("\n```", 1)[0]

    commands = _ci_commands(marker)
    assert commands, f'.ci/run has no commands under # README "{marker}":'
    for command in commands:
        assert command in block, f"README.md's set-up block lacks .ci/run's {command!r}"


async def _allowed_states(pool: asyncpg.Pool, table: str) -> set[str]:
    """The values the database's CHECK on `table.state` allows."""
    definition = await pool.fetchval(
        "SELECT pg_get_constraintdef(oid) FROM pg_constraint "
        "WHERE conrelid = $1::regclass AND contype = 'c' "
        "AND pg_get_constraintdef(oid) LIKE '%(state = ANY (ARRAY[%'",
        table,
    )
    assert definition, f"no CHECK on {table}.state"
    return set(re.findall(r"'(\w+)'", definition))


async def test_docs_tables_md_names_every_contact_and_campaign_state_the_database_allows(
    db_pool: asyncpg.Pool,
) -> None:
    contact_states = {
        name
        for cell in _first_cells(_section(DOCS / "tables.md", "Contact states"))
        for name in _code_spans(cell)
    }
    campaign_section = set(_code_spans(_section(DOCS / "tables.md", "Campaign states")))

    assert contact_states == await _allowed_states(db_pool, "contacts")
    assert await _allowed_states(db_pool, "campaigns") <= campaign_section


async def test_every_column_docs_tables_md_shows_for_campaigns_is_one_the_table_has(
    db_pool: asyncpg.Pool,
) -> None:
    shown = {
        name
        for cell in _first_cells(_section(DOCS / "tables.md", "`campaigns`"))
        for name in _code_spans(cell)
    }
    columns = {
        r["attname"]
        for r in await db_pool.fetch(
            "SELECT attname FROM pg_attribute WHERE attrelid = 'campaigns'::regclass "
            "AND attnum > 0 AND NOT attisdropped"
        )
    }

    assert len(shown) > 10
    assert shown <= columns, sorted(shown - columns)


CODE_PATH = re.compile(r"`((?:campaign|bench|deploy|migrations|tests)/[\w./-]*\w)`")


def test_every_file_the_docs_name_exists() -> None:
    # The dispatcher becomes a package (issue 12, item 1) in separate work: until it
    # has, the docs' campaign/dispatch/... paths are the only ones not checked.
    package_landed = (REPO_ROOT / "campaign" / "dispatch" / "__init__.py").exists()
    missing = [
        f"{page.relative_to(REPO_ROOT)}: {path}"
        for page in PAGES
        for path in CODE_PATH.findall(page.read_text(encoding="utf-8"))
        if not (REPO_ROOT / path).exists()
        and (package_landed or not path.startswith("campaign/dispatch/"))
    ]

    assert not missing, missing
