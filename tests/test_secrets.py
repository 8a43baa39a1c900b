"""Secrets never printed: no command, log line or traceback shows any part of a secret.

Passwords are generated from segments of letters the program never prints (Cyrillic,
Greek, and the ASCII letters J V W X), joined by the characters that make DSNs
ambiguous. Every four-character window of such a password holds at least two of those
letters, so finding one in the output can only be a leak, never a coincidence
(`test_the_password_letters_never_appear_in_ordinary_output` holds that premise).
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import asyncpg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from campaign.cli import main
from campaign.daemon import run_daemon
from campaign.logs import configure_logging
from campaign.redact import Scrubber, basic_token
from campaign.settings import load_settings
from tests.engine import SERVICE, add_contacts, create_campaign, uk_numbers
from tests.helpers import logging_restored

REPO_ROOT = Path(__file__).resolve().parents[1]

LETTERS = "ЖЯЮΨΩξJVWX"
ASCII_LETTERS = "JVWX"
# What makes a DSN hard to read: URI and keyword/value delimiters, quotes, spaces.
SPECIALS = "/#?@:'\\=& %,"
WINDOW = 4


# --- generated secrets and where they go --------------------------------------------------


@st.composite
def passwords(draw: st.DrawFn) -> str:
    """Segments of 2-6 letters, 2-4 of them, joined (and maybe led) by 1-2 specials."""
    segments = draw(st.lists(st.text(LETTERS, min_size=2, max_size=6), min_size=2, max_size=4))
    joins = draw(
        st.lists(
            st.text(SPECIALS, min_size=1, max_size=2),
            min_size=len(segments) + 1,
            max_size=len(segments) + 1,
        )
    )
    lead = joins[0] if draw(st.booleans()) else ""
    tail = joins[-1] if draw(st.booleans()) else ""
    return lead + "".join(s + j for s, j in zip(segments, [*joins[1:-1], ""], strict=True)) + tail


def _keyword_quoted(password: str) -> str:
    return "'" + password.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _keyword_escaped(password: str) -> str:
    # Unquoted: a backslash takes the next character literally (spaces included).
    return "".join("\\" + c if c in " \\'" else c for c in password)


@dataclass(frozen=True)
class Target:
    """Where the generated DSN points: a closed port on loopback, or a missing directory."""

    port: int
    socket_dir: str = "/nonexistent/dir"


DsnMaker = Callable[[str, Target], tuple[str, dict[str, str]]]

# Each form returns (DSN, extra environment).
DSN_FORMS: dict[str, DsnMaker] = {
    "keyword quoted, tcp": lambda pw, t: (
        f"host=127.0.0.1 port={t.port} user=bob password={_keyword_quoted(pw)} dbname=calls",
        {},
    ),
    "keyword escaped, socket dir": lambda pw, t: (
        f"host={t.socket_dir} user=bob password={_keyword_escaped(pw)} dbname=calls",
        {},
    ),
    "keyword last, unterminated": lambda pw, t: (f"host=127.0.0.1 dbname=calls password='{pw}", {}),
    "uri unencoded": lambda pw, t: (f"postgresql://bob:{pw}@127.0.0.1:{t.port}/calls", {}),
    "uri percent-encoded": lambda pw, t: (
        f"postgres://bob:{quote(pw, safe='')}@127.0.0.1:{t.port}/calls",
        {},
    ),
    "uri query encoded": lambda pw, t: (
        f"postgresql://bob@127.0.0.1:{t.port}/calls?password={quote(pw, safe='')}",
        {},
    ),
    "uri query unencoded": lambda pw, t: (
        f"postgresql://bob@127.0.0.1:{t.port}/calls?sslmode=disable&password={pw}",
        {},
    ),
    "PGPASSWORD": lambda pw, t: (
        f"postgresql://bob@127.0.0.1:{t.port}/calls",
        {"PGPASSWORD": pw},
    ),
}


# --- what counts as a leak -----------------------------------------------------------------


def _forms(secret: str) -> set[str]:
    """The secret as printed raw, escaped by repr/JSON, or percent-encoded."""
    python = secret.encode("unicode_escape").decode("ascii")
    return {
        secret,
        python,
        python.replace("'", "\\'"),
        json.dumps(secret)[1:-1],
        quote(secret, safe=""),
        quote(secret),
    }


def exposed(output: str, secret: str) -> list[str]:
    """Pieces of `secret` in `output`: the whole, or any window of 4 or more characters
    (of its raw or escaped forms) holding two of the letters only a secret contains."""
    found = [secret] if secret in output else []
    for form in _forms(secret):
        for i in range(len(form) - WINDOW + 1):
            window = form[i : i + WINDOW]
            if sum(c in LETTERS for c in window) >= 2 and window in output:
                found.append(window)
    return found


def readable(text: str) -> str:
    """`text`, plus the strings inside any JSON line (JSON escapes non-ASCII letters)."""
    decoded = [text]
    for line in text.splitlines():
        with contextlib.suppress(ValueError):
            decoded.extend(_strings(json.loads(line)))
    return "\n".join(decoded)


def _strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for k, v in value.items():
            yield k
            yield from _strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from _strings(v)
    else:
        yield str(value)


def assert_no_leak(output: str, *secrets: str) -> None:
    text = readable(output)
    for secret in secrets:
        assert exposed(text, secret) == [], f"{secret!r} leaked in:\n{output}"


# --- the CLI in-process --------------------------------------------------------------------


@pytest.fixture(scope="module")
def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def clean_environment(mp: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith(("CAMPAIGN_", "PG")) and name != "CAMPAIGN_TEST_DSN":
            mp.delenv(name)


COMMANDS: list[list[str]] = [
    ["status"],
    ["status", "spring", "--json"],
    ["migrate"],
    ["pause", "spring"],
    ["cancel", "spring"],
    ["create", "spring", "--service", "Svc"],
    ["why", "spring"],
    ["load", "spring", "/dev/null"],
    ["suppress", "list"],
    ["run"],
]


def run_commands(
    capfd: pytest.CaptureFixture[str], env: dict[str, str], level: str = "info"
) -> str:
    """Every command once with `env`; their stdout and stderr, with their exit statuses."""
    outputs = []
    with pytest.MonkeyPatch.context() as mp:
        clean_environment(mp)
        for name, value in env.items():
            mp.setenv(name, value)
        mp.setenv("CAMPAIGN_LOGGING__LEVEL", level)
        mp.setenv("CAMPAIGN_LISTENER__PORT", "0")
        for argv in COMMANDS:
            capfd.readouterr()
            with logging_restored():
                status = main(argv)
            out, err = capfd.readouterr()
            assert status == 1, (argv, out, err)
            outputs.append(f"$ campaign {' '.join(argv)}\n{out}{err}")
    return "\n".join(outputs)


def test_the_password_letters_never_appear_in_ordinary_output(
    capfd: pytest.CaptureFixture[str], closed_port: int
) -> None:
    env = {"CAMPAIGN_DATABASE__DSN": f"postgresql://bob@127.0.0.1:{closed_port}/calls"}
    output = readable(run_commands(capfd, env, level="debug"))
    assert "cannot reach PostgreSQL at 127.0.0.1" in output
    assert not set(LETTERS) & set(output)


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    password=passwords(),
    form=st.sampled_from(sorted(DSN_FORMS)),
    level=st.sampled_from(["info", "debug"]),
)
def test_no_command_prints_any_part_of_the_database_password(
    capfd: pytest.CaptureFixture[str], closed_port: int, password: str, form: str, level: str
) -> None:
    dsn, extra = DSN_FORMS[form](password, Target(closed_port))
    output = run_commands(capfd, {"CAMPAIGN_DATABASE__DSN": dsn, **extra}, level=level)
    assert_no_leak(output, password)


# --- the real command, as a subprocess -------------------------------------------------------


def campaign_env(**values: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CAMPAIGN_", "PG"))}
    env.update(values)
    return env


def run_campaign(env: dict[str, str], *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "campaign", *argv],
        env=env,
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


NASTY = "ЖЯJV/WX#ΨΩ? JJ@VV:'ξξ\\WW=XX&ЮЮ"
"""Every special character a DSN reader trips on, between segments of letters."""


@pytest.mark.parametrize(
    ("form", "argv"),
    [
        ("keyword quoted, tcp", ("status",)),
        ("uri unencoded", ("run",)),
        ("uri query unencoded", ("migrate",)),
    ],
)
def test_the_real_command_prints_no_part_of_the_password(
    closed_port: int, form: str, argv: tuple[str, ...]
) -> None:
    dsn, extra = DSN_FORMS[form](NASTY, Target(closed_port))
    proc = run_campaign(
        campaign_env(CAMPAIGN_DATABASE__DSN=dsn, CAMPAIGN_LISTENER__PORT="0", **extra), *argv
    )

    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr
    assert "cannot reach PostgreSQL" in proc.stdout + proc.stderr
    assert_no_leak(proc.stdout + proc.stderr, NASTY)


# --- the daemon, with Aculab out of reach ---------------------------------------------------


def webhook_secrets() -> st.SearchStrategy[str]:
    # At least 16 URL-safe characters without '/', as the settings require.
    return st.text(ASCII_LETTERS + "-_.~", min_size=16, max_size=24)


def aculab_settings(
    dsn: str, port: int, *, api_key: str, password: str, webhook: str, log_format: str
) -> dict[str, dict[str, Any]]:
    return {
        "database": {"dsn": dsn},
        "aculab": {
            "base_url": f"http://127.0.0.1:{port}",
            "api_access_key": api_key,
            "calls_per_second": 1000,
            # The engine asks for the service name as the campaign spells it: both
            # spellings, so that the case-insensitive fallback is exercised too.
            "service_passwords": {SERVICE: password, SERVICE.lower(): password},
        },
        "http": {"connect_timeout": 1.0, "read_timeout": 1.0},
        "dispatcher": {
            "poll_interval": 0.1,
            "retry_initial_delay": 0.05,
            "retry_max_delay": 0.2,
            "queue_check_interval": 0.05,
        },
        "listener": {"port": 0, "webhook_secret": webhook},
        "logging": {"level": "debug", "format": log_format},
    }


async def wait_for_text(buffer: io.StringIO, needle: str, timeout: float) -> None:
    async with asyncio.timeout(timeout):
        while needle not in buffer.getvalue():
            await asyncio.sleep(0.05)


@settings(
    max_examples=15,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    password=passwords(),
    api_key=passwords(),
    webhook=webhook_secrets(),
    log_format=st.sampled_from(["json", "console"]),
)
async def test_the_daemon_logs_no_part_of_an_aculab_secret_when_aculab_is_unreachable(
    db_pool: asyncpg.Pool,
    db_dsn: str,
    closed_port: int,
    capfd: pytest.CaptureFixture[str],
    password: str,
    api_key: str,
    webhook: str,
    log_format: str,
) -> None:
    values = aculab_settings(
        db_dsn,
        closed_port,
        api_key=api_key,
        password=password,
        webhook=webhook,
        log_format=log_format,
    )
    name = f"c{await db_pool.fetchval('SELECT count(*) FROM campaigns')}"
    campaign = await create_campaign(db_pool, name)
    await add_contacts(db_pool, campaign, uk_numbers(3))
    logs = io.StringIO()
    with pytest.MonkeyPatch.context() as mp, logging_restored():
        clean_environment(mp)
        config = load_settings(None, **values)
        configure_logging(config.logging, stream=logs, secrets=Scrubber.from_settings(config))
        stop = asyncio.Event()
        daemon = asyncio.create_task(run_daemon(config, stop))
        try:
            await wait_for_text(logs, "batch_send_failed", timeout=20)
        finally:
            stop.set()
            assert await daemon == 0, logs.getvalue()
        # The operator's purge after a cancel names Aculab's failure too.
        for section, keys in values.items():
            for key, value in keys.items():
                text = json.dumps(value) if isinstance(value, dict) else str(value)
                mp.setenv(f"CAMPAIGN_{section.upper()}__{key.upper()}", text)
        capfd.readouterr()
        assert await asyncio.to_thread(main, ["cancel", name]) == 0
    assert "queue_length_unavailable" in logs.getvalue()
    out, err = capfd.readouterr()
    assert "was not purged" in err
    output = logs.getvalue() + out + err
    assert_no_leak(output, password, api_key, webhook)
    login = f"{config.aculab.cloud_id}/{config.aculab.username}"
    for token in (basic_token(login, api_key), basic_token(f"{login}/{SERVICE}", password)):
        assert token not in output
