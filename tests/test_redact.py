"""Reading DSNs without guessing, and scrubbing secrets from text and log lines."""

from __future__ import annotations

import io
import json
import logging
import re
from collections.abc import Iterator

import pytest
import structlog

from campaign.cli import main
from campaign.db.dsn import UNKNOWN, describe_dsn, dsn_passwords
from campaign.logs import configure_logging
from campaign.redact import REDACTED, Scrubber, basic_token
from campaign.settings import LoggingSettings, load_settings
from tests.helpers import logging_restored

NO_ENV: dict[str, str] = {}


# --- describing a DSN ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("dsn", "described"),
    [
        ("postgresql://u:pw@db.example:6543/calls", "db.example:6543/calls"),
        ("postgres://u:p%2Fw%40x@db.example/calls?sslmode=require", "db.example:5432/calls"),
        ("postgresql://u@/calls?host=/run/pg&port=5433", "/run/pg:5433/calls"),
        ("postgresql://u:pw@[::1]:5433/x", "[::1]:5433/x"),
        ("postgresql://h1:5432,h2:5433/db", "h1:5432,h2:5433/db"),
        ("postgresql://u:pw@h/?dbname=z", "h:5432/z"),
        ("postgresql://bob@h", "h:5432/bob"),
        ("host=db.example port=6543 user=bob password=pw dbname=calls", "db.example:6543/calls"),
        ("host = /run/pg  password = 'a b\\'c'  dbname = 'my db'", "/run/pg:5432/my db"),
        ("password=a\\ b host=h", "h:5432/?"),
        ("hostaddr=10.0.0.1 user=bob password=pw", "10.0.0.1:5432/bob"),
    ],
)
def test_describe_dsn_names_host_port_and_database_of_both_forms(dsn: str, described: str) -> None:
    assert describe_dsn(dsn, NO_ENV) == described


@pytest.mark.parametrize(
    "dsn",
    [
        # libpq and asyncpg cut these passwords at different places.
        "postgresql://bob:pa/ss@host/db",
        "postgresql://bob:pa#ss@host/db",
        "postgresql://bob:pa?ss@host/db",
        "postgresql://bob:p@ss@host/db",
        "postgresql://bob:1234/ss@host/db",
        "postgresql://bob:pw@host/db?password=a&b",
        # Not a string libpq accepts.
        "host=h password='unterminated",
        "host=h password=a b",
        "just some words",
        "",
    ],
)
def test_describe_dsn_says_dsn_rather_than_guess(dsn: str) -> None:
    assert describe_dsn(dsn, NO_ENV) == UNKNOWN


def test_describe_dsn_falls_back_on_the_pg_environment_as_the_drivers_do() -> None:
    env = {"PGHOST": "/var/run/postgresql", "PGPORT": "5433", "PGDATABASE": "calls"}
    assert describe_dsn("postgresql://", env) == "/var/run/postgresql:5433/calls"
    assert describe_dsn("user=bob", {"PGUSER": "alice"}) == "localhost:5432/bob"


# --- finding the password -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("dsn", "password"),
    [
        ("host=h password='it\\'s a \\\\ secret' dbname=d", "it's a \\ secret"),
        ("host=h password=it\\'s\\ a dbname=d", "it's a"),
        ("host=h dbname=d password='unterminated and more", "unterminated and more"),
        ("postgresql://u:p%2Fw%40x@h/d", "p/w@x"),
        ("postgresql://u:pa/ss@host/db", "pa/ss"),
        ("postgresql://u:p@ss@host/db", "p@ss"),
        ("postgresql://u:p#s?s@host/db", "p#s?s"),
        ("postgresql://u@h/d?password=p%26w", "p&w"),
        ("postgresql://u@h/d?password=p&w#x&sslmode=require", "p&w#x"),
    ],
)
def test_the_password_is_found_under_every_reading_of_the_dsn(dsn: str, password: str) -> None:
    assert password in dsn_passwords(dsn)


# --- scrubbing text ---------------------------------------------------------------------------


def test_a_secret_its_pieces_and_its_escaped_forms_are_scrubbed() -> None:
    scrub = Scrubber(["Zqxj/Wvkq\\Ђjjj"])

    assert scrub("at bob:Zqxj/Wvkq\\Ђjjj@h") == f"at bob:{REDACTED}@h"
    # A driver that cut the password at a delimiter echoes a piece of it.
    assert scrub("invalid port: 'Zqxj'") == f"invalid port: '{REDACTED}'"
    assert scrub("bad host 'Wvkq\\Ђjjj'") == f"bad host '{REDACTED}'"
    # As JSON and repr() escape it.
    assert REDACTED in scrub(json.dumps("Zqxj/Wvkq\\Ђjjj"))
    assert "Wvkq" not in scrub(repr("Zqxj/Wvkq\\Ђjjj"))
    assert "Zqxj" not in scrub("Zqxj%2FWvkq")


def test_an_http_basic_token_is_scrubbed_whatever_login_precedes_the_secret() -> None:
    scrub = Scrubber(["s3cret-Pa55word!"])
    for login in ("1-2-0/bob@example.com", "1-2-0/bob@example.com/Svc", "x", "xy"):
        token = basic_token(login, "s3cret-Pa55word!")
        assert token not in scrub(f"Authorization: Basic {token}")


def test_short_strings_are_left_alone_so_ordinary_text_stays_readable() -> None:
    scrub = Scrubber(["ab/c", "x"])
    assert scrub("a b c x abc") == "a b c x abc"
    assert scrub("ab/c") == REDACTED


def test_the_settings_secrets_are_all_scrubbed() -> None:
    settings = load_settings(
        None,
        database={"dsn": "postgresql://u:Db-Passw0rd@h/d"},
        aculab={"api_access_key": "Api-Key-0123", "service_passwords": {"Svc": "Svc-Pw-4567"}},
        listener={"webhook_secret": "Webhook-Secret-890123"},
        dashboard={"password": "Dashboard-Pw-4242"},
    )
    scrub = Scrubber.from_settings(settings, environ={"PGPASSWORD": "Env-Pw-7777"})
    text = (
        "Db-Passw0rd Api-Key-0123 Svc-Pw-4567 Webhook-Secret-890123 Env-Pw-7777 Dashboard-Pw-4242"
    )
    assert scrub(text) == " ".join([REDACTED] * 6)
    # A browser's Basic token for the dashboard, whatever user name it was given.
    token = basic_token("anyone", "Dashboard-Pw-4242")
    assert token not in scrub(f"Authorization: Basic {token}")


# --- log lines --------------------------------------------------------------------------------


@pytest.fixture
def restored_logging() -> Iterator[None]:
    with logging_restored():
        yield


SECRET = "Zqxj/Wvkq\\Ђjjj"


def _log_everything() -> None:
    log = structlog.get_logger("campaign.test")
    log.info("dsn_echoed", reason=f"bad port 'Zqxj' in bob:{SECRET}@h", nested={"k": [SECRET]})
    try:
        raise ValueError(f"could not parse {SECRET!r}")
    except ValueError:
        log.exception("crashed")
    logging.getLogger("asyncpg").warning("driver says %s", SECRET)
    try:
        raise OSError(f"stdlib {SECRET}")
    except OSError:
        logging.getLogger("aiohttp.client").exception("failed")


@pytest.mark.usefixtures("restored_logging")
@pytest.mark.parametrize("fmt", ["json", "console"])
def test_log_lines_tracebacks_and_library_loggers_are_scrubbed(fmt: str) -> None:
    out = io.StringIO()
    settings = LoggingSettings.model_validate({"format": fmt, "level": "debug"})
    configure_logging(settings, stream=out, secrets=Scrubber([SECRET]))

    _log_everything()

    text = out.getvalue()
    assert text.count("Traceback") == 2
    for piece in ("Zqxj", "Wvkq", "Ђjjj", "\\u0402jjj"):
        assert piece not in text
    if fmt == "json":
        events = [json.loads(line) for line in text.splitlines()]
        assert [e["event"] for e in events] == [
            "dsn_echoed",
            "crashed",
            "driver says ***",
            "failed",
        ]
        assert events[0]["nested"] == {"k": [REDACTED]}


@pytest.mark.usefixtures("restored_logging")
def test_log_lines_without_secrets_render_as_before() -> None:
    plain, scrubbed = io.StringIO(), io.StringIO()
    settings = LoggingSettings(format="console", level="info")
    line = {"count": 3, "ids": (1, 2), "ratio": 0.5, "when": None}
    configure_logging(settings, stream=plain)
    structlog.get_logger("t").info("same", **line)
    configure_logging(settings, stream=scrubbed, secrets=Scrubber(["Zqxj/Wvkq"]))
    structlog.get_logger("t").info("same", **line)

    def without_time(text: str) -> str:
        return re.sub(r"\d{4}-\d\d-\d\dT[\d:.]+Z", "", text)

    assert without_time(plain.getvalue()) == without_time(scrubbed.getvalue())


# --- the CLI's last resort ----------------------------------------------------------------------


def test_an_unexpected_error_is_one_scrubbed_line_with_the_traceback_only_at_debug(
    capfd: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, restored_logging: None
) -> None:
    # asyncpg 0.32 fails on an empty host in the list with an IndexError of its own.
    dsn = "postgresql://bob:,&'Zqxj:,/@127.0.0.1:1/calls"
    monkeypatch.setenv("CAMPAIGN_DATABASE__DSN", dsn)

    assert main(["status"]) == 1
    err = capfd.readouterr().err
    assert err.startswith("campaign status: unexpected error: IndexError")
    assert "logging.level = debug" in err and len(err.splitlines()) == 1

    monkeypatch.setenv("CAMPAIGN_LOGGING__LEVEL", "debug")
    assert main(["status"]) == 1
    err = capfd.readouterr().err
    assert "Traceback" in err
    assert err.splitlines()[-1].startswith("campaign status: unexpected error: IndexError")
    assert "Zqxj" not in err


def test_a_base_url_with_credentials_is_refused_naming_the_key(
    capfd: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    for url in ("https://bob:Zqxj-secret@ws.aculabcloud.net", "https://bob:pa/ss@ws.example"):
        monkeypatch.setenv("CAMPAIGN_ACULAB__BASE_URL", url)

        assert main(["check-config"]) == 2
        err = capfd.readouterr().err
        assert err.startswith("config: aculab.base_url: ") and "credentials" in err
        assert len(err.splitlines()) == 1
        assert "Zqxj" not in err and "pa/ss" not in err
