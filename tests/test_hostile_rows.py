"""Hostile rows written straight into `campaigns` and `contacts` with SQL, as a careless
user would, then the real dispatcher against the real simulator.

What must hold (docs/tables.md, issue 6): the database refuses a campaign policy the engine
cannot follow, naming the constraint; whatever it accepts, the dispatcher handles: it
never crashes or stalls, every bad contact ends `invalid` with a reason and never
reaches Aculab, and the good contacts beside them are each started exactly once.
"""

from __future__ import annotations

import itertools
import json
import math
import zoneinfo
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, time, timedelta
from typing import Any

import asyncpg
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from campaign.simulator import Simulator, StartedCall
from tests.engine import (
    CALLER_ID,
    SERVICE,
    create_campaign,
    engine_settings,
    run_until_idle,
)

TERMINAL = {"completed", "failed", "invalid", "suppressed", "duplicate", "cancelled"}
RETRYABLE_CAUSES = ("busy", "no_answer", "unobtainable", "dropped", "failed", "unknown")
MAX_RETRY_DELAY = 365 * 86400
ZONES = frozenset(zoneinfo.available_timezones())
ALL_DAYS = [1, 2, 3, 4, 5, 6, 7]
RUN_TIMEOUT = 20.0

HYPOTHESIS = settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.large_base_example,
        HealthCheck.data_too_large,
    ],
)

# Distinct valid UK numbers (Milton Keynes) across all the examples of a test: the
# simulator counts calls per number, and a test's database and simulator live
# through all its examples.
_numbers = itertools.count(500_000)


def fresh_number() -> str:
    return f"+44 1908 {next(_numbers):06d}"


def digits(number: str) -> str:
    return "".join(ch for ch in number if ch.isdigit())


# Text PostgreSQL stores: valid UTF-8 (no lone surrogates) and no NUL.
TEXT_CHARS = st.characters(codec="utf-8", exclude_characters="\x00")
BLANKS = st.text(st.sampled_from(" \t\r\n\f\v"), max_size=5)
_names = itertools.count()


def repeated(min_size: int, max_size: int) -> st.SearchStrategy[str]:
    """Long text, cheaply: a short piece repeated (hypothesis draws no 10 kB examples)."""
    return st.builds(
        lambda piece, n: (piece * n)[:n],
        st.text(TEXT_CHARS, min_size=1, max_size=4),
        st.integers(min_size, max_size),
    )


# --- campaigns -----------------------------------------------------------------------------
#
# Each column has odd values the database must take, values it may refuse, and an
# oracle: the constraints that must refuse a value (none: it must be accepted).
# When several apply, PostgreSQL reports one of them (the first by name).


def _name_refusals(value: str) -> set[str]:
    out = set()
    if value == "" or len(value) > 200:
        out.add("campaigns_name_check")
    if value.strip(" \t\r\n\f\v") == "":
        out.add("campaigns_name_not_blank")
    return out


def _service_refusals(value: str) -> set[str]:
    out = set()
    if value == "" or len(value) > 200:
        out.add("campaigns_service_name_check")
    if value.strip(" \t\r\n\f\v") == "":
        out.add("campaigns_service_name_not_blank")
    return out


def _pg_gt(a: float, b: float) -> bool:
    """PostgreSQL's float order: NaN is greater than every other value."""
    if math.isnan(a):
        return not math.isnan(b)
    return False if math.isnan(b) else a > b


def _cps_refusals(value: float) -> set[str]:
    out = set()
    if not (_pg_gt(value, 0) and not _pg_gt(value, 100_000)):
        out.add("campaigns_calls_per_second_check")
    if _pg_gt(0.001, value):
        out.add("campaigns_calls_per_second_min")
    return out


def _between(low: int, high: int, constraint: str) -> Callable[[int], set[str]]:
    return lambda v: set() if low <= v <= high else {constraint}


def _is_delay(value: object) -> bool:
    return (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and 0 <= value <= MAX_RETRY_DELAY
    )


def _retry_delays_refusals(value: object) -> set[str]:
    if value is None:  # SQL NULL
        return {"not null: retry_delays"}
    if not isinstance(value, dict):
        return {"campaigns_retry_delays_check"}
    out = set()
    if set(value) - set(RETRYABLE_CAUSES):
        out.add("campaigns_retry_delays_known_causes")
    if not all(_is_delay(v) for v in value.values()):
        out.add("campaigns_retry_delays_valid")
    return out


def _window_days_refusals(value: list[Any]) -> set[str]:
    flat = [d for row in value for d in row] if value and isinstance(value[0], list) else value
    out = set()
    present = [d for d in flat if d is not None]
    if len(present) != len(set(present)):
        out.add("campaigns_window_days_distinct")
    one_dimension = not (value and isinstance(value[0], list))
    if not (one_dimension and 1 <= len(value) <= 7 and all(d in ALL_DAYS for d in value)):
        out.add("campaigns_window_days_valid")
    return out


def _country_refusals(value: str) -> set[str]:
    ascii_upper = len(value) == 2 and all("A" <= ch <= "Z" for ch in value)
    return set() if ascii_upper else {"campaigns_default_country_check"}


def _length_refusals(limit: int, constraint: str) -> Callable[[str], set[str]]:
    return lambda v: set() if len(v) <= limit else {constraint}


def _state_refusals(value: str) -> set[str]:
    return (
        set()
        if value in {"active", "paused", "cancelled", "completed"}
        else {"campaigns_state_check"}
    )


INT4 = st.integers(-(2**31), 2**31 - 1)
SMALLINT = st.integers(-(2**15), 2**15 - 1)


def around(*points: int) -> st.SearchStrategy[int]:
    return st.sampled_from(sorted({p + d for p in points for d in (-1, 0, 1)})) | INT4


# JSON as jsonb stores it: finite numbers, strings without NUL.
JSON_NUMBERS = st.integers(-(10**20), 10**20) | st.floats(allow_nan=False, allow_infinity=False)
JSON_NOT_STRING = st.booleans() | JSON_NUMBERS  # and not null
JSON_SCALARS = st.none() | JSON_NOT_STRING | st.text(TEXT_CHARS, max_size=20)
JSON = st.recursive(
    JSON_SCALARS,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.text(TEXT_CHARS, max_size=10), inner, max_size=4)
    ),
    max_leaves=12,
)
DELAYS = (
    st.integers(-10, MAX_RETRY_DELAY + 10)
    | st.sampled_from([0, MAX_RETRY_DELAY, MAX_RETRY_DELAY + 1, -1, 10**12, 1e300, -0.0, 1e-300])
    | st.floats(allow_nan=False, allow_infinity=False)
    | JSON_SCALARS
    | st.lists(st.integers(), max_size=2)
)
CAUSE_KEYS = st.sampled_from(RETRYABLE_CAUSES) | st.sampled_from(
    ["completed", "hung_up", "no-answer", "Busy", "", " busy"]
)


def clock(value: time | str) -> str:
    return value if isinstance(value, str) else value.isoformat()


WINDOW_TIMES = st.sampled_from(["00:00", "24:00", "09:00", "23:59:59.999999"]) | st.times().map(
    clock
)

NONBLANK = st.text(TEXT_CHARS, min_size=1, max_size=20).filter(lambda v: v.strip(" \t\n\r\f\v"))

# column -> (odd values the database must accept, values that may be refused, oracle)
CAMPAIGN_COLUMNS: dict[
    str, tuple[st.SearchStrategy[Any], st.SearchStrategy[Any], Callable[[Any], set[str]]]
] = {
    "service_name": (
        st.just(SERVICE) | st.just(SERVICE.lower()) | NONBLANK,
        BLANKS | repeated(199, 260),
        _service_refusals,
    ),
    "caller_id": (
        st.none() | st.just("+44 1908 273801") | st.text(TEXT_CHARS, max_size=30),
        repeated(199, 260),
        lambda v: set() if v is None else _length_refusals(200, "campaigns_caller_id_check")(v),
    ),
    "batch_size": (
        st.integers(1, 1000),
        around(0, 1, 1000),
        _between(1, 1000, "campaigns_batch_size_check"),
    ),
    "calls_per_second": (
        st.floats(0.001, 100_000),
        st.sampled_from(
            [0.0, -0.0, -1.0, 1e12, 1e-300, 5e-324, 0.000999, 0.001, 100_000.0, 100_000.01]
        )
        | st.floats(),
        _cps_refusals,
    ),
    "max_concurrent_calls": (
        st.integers(1, 100_000),
        around(0, 1, 100_000),
        _between(1, 100_000, "campaigns_max_concurrent_calls_check"),
    ),
    "max_attempts": (
        st.integers(1, 100),
        around(0, 1, 100),
        _between(1, 100, "campaigns_max_attempts_check"),
    ),
    "priority": (
        st.integers(-1000, 1000),
        around(-1000, 1000),
        _between(-1000, 1000, "campaigns_priority_check"),
    ),
    "retry_delays": (
        st.dictionaries(
            st.sampled_from(RETRYABLE_CAUSES),
            st.integers(0, MAX_RETRY_DELAY) | st.floats(0, MAX_RETRY_DELAY),
            max_size=6,
        ),
        st.dictionaries(CAUSE_KEYS, DELAYS, max_size=4) | JSON,
        _retry_delays_refusals,
    ),
    "window_days": (
        st.lists(st.sampled_from(ALL_DAYS), min_size=1, max_size=7, unique=True),
        st.lists(st.integers(0, 8) | SMALLINT | st.none(), max_size=9)
        | st.lists(st.sampled_from(ALL_DAYS), min_size=1, max_size=8)
        | st.integers(1, 3).flatmap(
            lambda n: st.lists(
                st.lists(st.sampled_from(ALL_DAYS), min_size=n, max_size=n), min_size=1, max_size=3
            )
        ),
        _window_days_refusals,
    ),
    "default_country": (
        st.sampled_from(["GB", "US", "ZZ", "XK", "AA"]),
        st.sampled_from(["gb", "G", "GBR", "", "ÄÖ", "G1"]) | st.text(TEXT_CHARS, max_size=3),
        _country_refusals,
    ),
    "default_timezone": (
        st.sampled_from(["Europe/London", "Not/AZone", "", "  ", "Factory", "../etc/passwd"])
        | st.text(TEXT_CHARS, max_size=20),
        repeated(60, 70),
        _length_refusals(64, "campaigns_default_timezone_check"),
    ),
    "state": (
        st.sampled_from(["active", "paused", "cancelled", "completed"]),
        st.sampled_from(["Active", "", "running", "active "]),
        _state_refusals,
    ),
}


@dataclass
class CampaignRow:
    columns: dict[str, Any]
    expected: set[str] = field(default_factory=set)


@st.composite
def hostile_campaigns(draw: st.DrawFn) -> CampaignRow:
    """Odd values only (the database must take them) or anything (the oracle decides)."""
    odd_only = draw(st.booleans())
    suffix = f" #{next(_names)}"
    names = st.text(TEXT_CHARS, max_size=20).map(lambda n: n + suffix)
    if not odd_only and draw(st.integers(0, 3)) == 0:  # a bad name hides every other refusal
        names = st.just("") | BLANKS.filter(bool) | repeated(201, 300).map(lambda n: n + suffix)
    name = draw(names)
    columns: dict[str, Any] = {
        "name": name,
        "service_name": SERVICE,
        "caller_id": CALLER_ID,
        "calls_per_second": 10_000.0,
        "max_concurrent_calls": 100_000,
        "window_start": "00:00",
        "window_end": "24:00",
    }
    expected = _name_refusals(name)
    chosen = draw(st.sets(st.sampled_from(sorted(CAMPAIGN_COLUMNS)), min_size=1, max_size=4))
    for column in sorted(chosen):
        odd, refusable, oracle = CAMPAIGN_COLUMNS[column]
        value = draw(odd if odd_only else odd | refusable)
        columns[column] = value
        expected |= oracle(value)
    if draw(st.booleans()):
        start, end = draw(WINDOW_TIMES), draw(WINDOW_TIMES)
        columns["window_start"], columns["window_end"] = start, end
        if time_value(start) == time_value(end):
            expected.add("campaigns_window_not_empty")
    return CampaignRow(columns, expected)


def time_value(text: str) -> tuple[int, ...]:
    if text.startswith("24:"):
        return (24,)
    parsed = time.fromisoformat(text)
    return (parsed.hour, parsed.minute, parsed.second, parsed.microsecond)


async def insert_campaign(pool: asyncpg.Pool, columns: Mapping[str, Any]) -> int:
    names = ", ".join(columns)
    # Times travel as text: '24:00' (the end of the day) has no datetime.time.
    params = ", ".join(
        f"${i}::text::time" if c in ("window_start", "window_end") else f"${i}"
        for i, c in enumerate(columns, 1)
    )
    campaign_id: int = await pool.fetchval(
        f"INSERT INTO campaigns ({names}) VALUES ({params}) RETURNING id", *columns.values()
    )
    return campaign_id


async def try_insert_campaign(
    pool: asyncpg.Pool, columns: Mapping[str, Any]
) -> int | tuple[str, str]:
    """The new campaign's id, or (what refused it, PostgreSQL's message)."""
    try:
        return await insert_campaign(pool, columns)
    except asyncpg.NotNullViolationError as exc:
        return f"not null: {exc.column_name}", str(exc)
    except asyncpg.CheckViolationError as exc:
        return exc.constraint_name or "(unnamed)", str(exc)


def always_open(columns: Mapping[str, Any]) -> bool:
    return (
        time_value(columns["window_start"]) == (0, 0, 0, 0)
        and time_value(columns["window_end"]) == (24,)
        and sorted(columns.get("window_days", ALL_DAYS)) == ALL_DAYS
    )


def plainly_dialable(columns: Mapping[str, Any]) -> bool:
    """Accepted, and nothing in it stands between a good contact and a call now.

    (An unknown default_country makes every contact invalid, national or not: the
    engine fails closed on a campaign it cannot read.)
    """
    return (
        columns.get("state", "active") == "active"
        and columns["service_name"] == SERVICE
        and columns["caller_id"] == CALLER_ID
        and columns.get("default_country") in (None, "GB", "US")
        and always_open(columns)
    )


@HYPOTHESIS
@given(rows=st.lists(hostile_campaigns(), min_size=1, max_size=6))
async def test_hostile_campaign_rows_are_refused_by_a_named_constraint_or_dialed_safely(
    db_pool: asyncpg.Pool, simulator: Simulator, rows: list[CampaignRow]
) -> None:
    accepted: list[tuple[int, CampaignRow, str]] = []
    for row in rows:
        outcome = await try_insert_campaign(db_pool, row.columns)
        if isinstance(outcome, tuple):
            refused_by, message = outcome
            event(f"refused by {refused_by}")
            assert refused_by in row.expected, (outcome, row)
            # The message names what refused it.
            assert refused_by.removeprefix("not null: ") in message
            continue
        assert not row.expected, f"accepted, but should break {row.expected}: {row.columns}"
        campaign_id = outcome
        number = fresh_number()
        await db_pool.execute(
            "INSERT INTO contacts (campaign_id, destination) VALUES ($1, $2)", campaign_id, number
        )
        accepted.append((campaign_id, row, number))

    await run_until_idle(db_pool, engine_settings(simulator), timeout=RUN_TIMEOUT)

    now = datetime.now(UTC)
    for campaign_id, row, number in accepted:
        campaign = await db_pool.fetchrow(
            "SELECT state, state_reason FROM campaigns WHERE id = $1", campaign_id
        )
        contact = await db_pool.fetchrow(
            "SELECT state, last_result, last_error, next_attempt_at, attempts "
            "FROM contacts WHERE campaign_id = $1",
            campaign_id,
        )
        assert campaign is not None and contact is not None
        where = (dict(campaign), dict(contact), row.columns)
        event(f"accepted; campaign {campaign['state']}, its contact {contact['state']}")
        calls = simulator.calls_to(digits(number))
        if row.columns.get("state", "active") != "active":
            assert contact["state"] == "pending" and contact["attempts"] == 0, where
        elif campaign["state"] == "paused":
            # Aculab (or the settings) refused its service: every campaign of that
            # service is paused with the reason; its contacts wait, untouched.
            assert campaign["state_reason"], where
            assert contact["state"] == "pending" and contact["attempts"] == 0, where
            assert calls == 0, where
        elif contact["state"] == "dialing":
            assert calls == 1, where
        elif contact["state"] == "pending":  # waiting for its calling window
            assert contact["last_result"] == "outside_window" and contact["last_error"], where
            assert contact["next_attempt_at"] > now and calls == 0, where
        else:
            assert contact["state"] in TERMINAL and contact["last_error"], where
            assert calls == 0, where
        if plainly_dialable(row.columns):
            assert contact["state"] == "dialing", where


TEXT_COLUMNS = ["name", "service_name", "caller_id", "default_timezone", "state_reason"]


@pytest.mark.parametrize("column", TEXT_COLUMNS)
async def test_a_nul_byte_in_campaign_text_is_refused_by_postgresql(
    db_pool: asyncpg.Pool, column: str
) -> None:
    values = {"name": "nul", "service_name": SERVICE, column: "a\x00b"}
    with pytest.raises(asyncpg.CharacterNotInRepertoireError, match="0x00"):
        await insert_campaign(db_pool, values)
    assert await db_pool.fetchval("SELECT count(*) FROM campaigns") == 0


async def test_a_nul_escape_in_retry_delays_is_refused_by_postgresql(
    db_pool: asyncpg.Pool,
) -> None:
    with pytest.raises(asyncpg.UntranslatableCharacterError, match=r"\\u0000"):
        await db_pool.execute(
            "INSERT INTO campaigns (name, service_name, retry_delays) VALUES ('nul', $1, $2)",
            SERVICE,
            {"busy\x00": 60},
        )


@pytest.mark.parametrize(
    ("column", "value", "constraint"),
    [
        ("name", " ", "campaigns_name_not_blank"),
        ("name", "\t\r\n\f\v", "campaigns_name_not_blank"),
        ("service_name", "  ", "campaigns_service_name_not_blank"),
        ("calls_per_second", 0.000999, "campaigns_calls_per_second_min"),
        ("calls_per_second", 1e-300, "campaigns_calls_per_second_min"),
        ("retry_delays", {"busy": "60"}, "campaigns_retry_delays_valid"),
        ("retry_delays", {"busy": -5}, "campaigns_retry_delays_valid"),
        ("retry_delays", {"busy": MAX_RETRY_DELAY + 1}, "campaigns_retry_delays_valid"),
        ("retry_delays", {"busy": 1e300}, "campaigns_retry_delays_valid"),
        ("retry_delays", {"busy": [60]}, "campaigns_retry_delays_valid"),
        ("retry_delays", {"busy": None}, "campaigns_retry_delays_valid"),
        ("retry_delays", {"busy": True}, "campaigns_retry_delays_valid"),
        ("retry_delays", {"no-answer": 60}, "campaigns_retry_delays_known_causes"),
        ("retry_delays", {"completed": 0}, "campaigns_retry_delays_known_causes"),
        ("retry_delays", {"busy\n": 0}, "campaigns_retry_delays_known_causes"),
        ("window_days", [1, 1, 2], "campaigns_window_days_distinct"),
        ("window_days", [[1, 2], [3, 4]], "campaigns_window_days_valid"),
        ("window_days", [], "campaigns_window_days_valid"),
        ("window_days", [1, None], "campaigns_window_days_valid"),
        ("window_days", [0, 1], "campaigns_window_days_valid"),
    ],
)
async def test_a_campaign_policy_the_engine_cannot_follow_is_refused_by_a_named_constraint(
    db_pool: asyncpg.Pool, column: str, value: object, constraint: str
) -> None:
    columns = {"name": "careless", "service_name": SERVICE, column: value}

    refused = await try_insert_campaign(db_pool, columns)

    assert isinstance(refused, tuple) and refused[0] == constraint, refused


@pytest.mark.parametrize(
    ("column", "value"),
    [
        ("name", "v"),  # not white space (E'\v' is a plain "v" in PostgreSQL)
        ("name", "\u00a0"),  # a no-break space: not ASCII white space
        ("calls_per_second", 0.001),
        ("retry_delays", {}),
        ("retry_delays", {"busy": 0, "unknown": MAX_RETRY_DELAY, "unobtainable": 0.5}),
        ("window_days", [7, 1]),
    ],
)
async def test_odd_but_meaningful_campaign_policies_are_accepted(
    db_pool: asyncpg.Pool, column: str, value: object
) -> None:
    columns = {"name": "careful", "service_name": SERVICE, column: value}

    assert isinstance(await try_insert_campaign(db_pool, columns), int)


# --- contacts ----------------------------------------------------------------------------
#
# Every hostile contact carries its own fresh, valid number wherever its destination
# is not itself the hostile part, so that the simulator's record shows whether it was
# ever sent. "invalid": it must end invalid with a reason and never reach Aculab;
# "any": garbage that may happen to be a dialable address (say "a@b"): it ends in a
# terminal state with a reason, or dialing and started once.


@dataclass
class ContactRow:
    kind: str
    expect: str  # "invalid" | "any" | "dialing"
    destination: str
    caller_id: str | None = None
    token: str | None = None
    outbound_parameters: str | None = None
    extra_sip_headers: str | None = None  # JSON text, exactly as written
    timezone: str | None = None
    priority: int = 0
    not_before: datetime | None = None
    number: str | None = None  # the fresh number it was given, if any


HEADER_NAMES = st.from_regex(r"X-[A-Za-z0-9-]{1,12}", fullmatch=True)
HEADER_VALUES = st.text(TEXT_CHARS.filter(lambda c: c not in "\r\n"), max_size=20)
GOOD_HEADER = st.builds(lambda n, v: {"name": n, "value": v}, HEADER_NAMES, HEADER_VALUES)
BAD_HEADER = st.one_of(
    JSON_SCALARS,
    st.lists(JSON_SCALARS, max_size=2),
    st.builds(lambda n: {"name": n}, HEADER_NAMES),
    st.builds(lambda v: {"value": v}, HEADER_VALUES),
    st.builds(
        lambda n, v, k, x: {"name": n, "value": v, k: x},
        HEADER_NAMES,
        HEADER_VALUES,
        st.text(TEXT_CHARS, max_size=5).filter(lambda k: k not in ("name", "value")),
        JSON_SCALARS,
    ),
    st.builds(lambda n, v: {"name": n, "value": v}, HEADER_NAMES, JSON_NOT_STRING | st.none()),
    st.builds(lambda n, v: {"name": n, "value": v}, JSON_NOT_STRING | st.none(), HEADER_VALUES),
    st.builds(
        lambda n, v: {"name": n, "value": v},
        st.sampled_from(["", " ", "X Y", "X:Y", "X-\tA", ":"]),
        HEADER_VALUES,
    ),
    st.builds(
        lambda n, a, b: {"name": n, "value": a + b},
        HEADER_NAMES,
        HEADER_VALUES,
        st.sampled_from(["\r\n", "\n", "\r", "\r\nX-Injected: 1"]),
    ),
)


def _nested(depth: int, leaf: Any) -> Any:
    for _ in range(depth):
        leaf = [leaf]
    return leaf


MALFORMED_HEADERS = st.one_of(
    # Not a list at all.
    JSON_NOT_STRING | st.text(TEXT_CHARS, max_size=20),
    st.dictionaries(st.text(TEXT_CHARS, max_size=5), JSON_SCALARS, max_size=3),
    st.builds(lambda h: h, GOOD_HEADER),
    # A list with at least one bad entry among good ones.
    st.builds(
        lambda good, bad, at: [*good[:at], bad, *good[at:]],
        st.lists(GOOD_HEADER, max_size=3, unique_by=lambda h: h["name"].casefold()),
        BAD_HEADER,
        st.integers(0, 3),
    ),
    # The same header twice (names compare case-insensitively).
    st.builds(
        lambda h, v: [h, {"name": h["name"].upper(), "value": v}], GOOD_HEADER, HEADER_VALUES
    ),
    # Deeply nested lists (within what Python's json module decodes; deeper: test below).
    st.builds(_nested, st.integers(2, 200), GOOD_HEADER | JSON_SCALARS),
)

GARBAGE_DESTINATIONS = st.one_of(
    st.text(TEXT_CHARS, max_size=40),
    st.text(st.sampled_from("+-()0123456789 .#*tel:sip@"), max_size=30),
    st.sampled_from(["tel:", "sip:", "sip:@", "@", "a@b", "+", "00", "0", "tel:+", "wss://"]),
)
UNKNOWN_ZONES = (
    st.sampled_from(
        ["Not/AZone", "europe/london", "Europe", "../etc/passwd", "/etc/localtime", "Factory"]
    )
    | st.text(TEXT_CHARS, min_size=1, max_size=40)
    | repeated(65, 300)
).filter(lambda z: bool(z.strip()) and z.strip() not in ZONES)


def _with_number(kind: str, **columns: Any) -> ContactRow:
    number = fresh_number()
    return ContactRow(kind, "invalid", number, number=number, **columns)


HOSTILE_CONTACTS = st.one_of(
    GARBAGE_DESTINATIONS.map(lambda d: ContactRow("garbage destination", "any", d)),
    repeated(1001, 20_000).map(lambda d: ContactRow("very long destination", "invalid", d)),
    st.integers(300, 5_000).map(
        lambda n: ContactRow("very long number", "invalid", "+44 1908 " + "2" * n)
    ),
    (BLANKS | st.sampled_from(["\u00a0", "\u2003", "\u3000"])).map(
        lambda d: ContactRow("blank destination", "invalid", d)
    ),
    repeated(5001, 10_240).map(lambda t: _with_number("token over 5000 characters", token=t)),
    MALFORMED_HEADERS.map(
        lambda h: _with_number("malformed extra_sip_headers", extra_sip_headers=json.dumps(h))
    ),
    UNKNOWN_ZONES.map(lambda z: _with_number("unknown time zone", timezone=z)),
    st.text(TEXT_CHARS, max_size=20)
    .map(lambda s: s + "x")
    .map(lambda c: _with_number("caller ID that is not a number", caller_id=c)),
)


def _good(kind: str, **columns: Any) -> ContactRow:
    number = fresh_number()
    return ContactRow(kind, "dialing", number, number=number, **columns)


# Odd but legitimate: these must be dialed like any other contact.
ODD_GOOD_CONTACTS = st.one_of(
    st.just(None).map(lambda _: _good("plain")),
    INT4.map(lambda p: _good("extreme priority", priority=p)),
    # datetime(1, 1, 1) travels as '-infinity' (asyncpg's reading of datetime.min).
    st.sampled_from([datetime(1, 1, 1, tzinfo=UTC), datetime(1970, 1, 1, tzinfo=UTC)]).map(
        lambda t: _good("not_before long past", not_before=t)
    ),
    st.text(TEXT_CHARS, max_size=300).map(
        lambda p: _good("unicode outbound_parameters", outbound_parameters=p)
    ),
    repeated(1, 5000).map(lambda t: _good("token of at most 5000 characters", token=t)),
    st.lists(GOOD_HEADER, max_size=3, unique_by=lambda h: h["name"].casefold()).map(
        lambda h: _good("valid extra_sip_headers", extra_sip_headers=json.dumps(h))
    ),
    st.sampled_from(["Europe/London", " Europe/London "]).map(
        lambda z: _good("its own zone", timezone=z)
    ),
)


def window_open_in_london_now() -> tuple[str, str]:
    """A calling window that is open in London for the next hours (and shut for others)."""
    local = datetime.now(zoneinfo.ZoneInfo("Europe/London"))
    start = (local - timedelta(hours=2)).time().replace(second=0, microsecond=0)
    end = (local + timedelta(hours=3)).time().replace(second=0, microsecond=0)
    return start.isoformat(), end.isoformat()


async def insert_contacts(
    pool: asyncpg.Pool, campaign_id: int, rows: list[ContactRow]
) -> list[int]:
    """One `INSERT ... SELECT` for the whole list, as a user loading a CRM export would."""
    records = await pool.fetch(
        """
        INSERT INTO contacts (campaign_id, destination, caller_id, token, outbound_parameters,
                              extra_sip_headers, timezone, priority, not_before)
        SELECT $1, d, c, t, o, h::jsonb, z, p, n
        FROM unnest($2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[],
                    $8::int[], $9::timestamptz[]) WITH ORDINALITY AS r(d, c, t, o, h, z, p, n, i)
        ORDER BY i
        RETURNING id
        """,
        campaign_id,
        [r.destination for r in rows],
        [r.caller_id for r in rows],
        [r.token for r in rows],
        [r.outbound_parameters for r in rows],
        [r.extra_sip_headers for r in rows],
        [r.timezone for r in rows],
        [r.priority for r in rows],
        [r.not_before for r in rows],
    )
    return [r["id"] for r in records]


@HYPOTHESIS
@given(
    hostile=st.lists(HOSTILE_CONTACTS, min_size=1, max_size=12),
    good=st.lists(ODD_GOOD_CONTACTS, min_size=1, max_size=8),
    order=st.randoms(use_true_random=False),
)
async def test_hostile_contacts_end_invalid_with_a_reason_and_good_ones_beside_them_are_dialed_once(
    db_pool: asyncpg.Pool,
    simulator: Simulator,
    hostile: list[ContactRow],
    good: list[ContactRow],
    order: Any,
) -> None:
    rows = hostile + good
    order.shuffle(rows)
    start, end = window_open_in_london_now()
    campaign_id = await create_campaign(
        db_pool,
        f"hostile #{next(_names)}",
        window_start=time.fromisoformat(start),
        window_end=time.fromisoformat(end),
    )
    ids = await insert_contacts(db_pool, campaign_id, rows)

    started_before = simulator.started_count()

    await run_until_idle(db_pool, engine_settings(simulator), timeout=RUN_TIMEOUT)

    found = {
        r["id"]: r
        for r in await db_pool.fetch(
            "SELECT c.id, c.state, c.last_result, c.last_error, c.reference, c.attempts, "
            "       (SELECT count(*) FROM calls k WHERE k.contact_id = c.id) AS calls "
            "FROM contacts c WHERE c.campaign_id = $1",
            campaign_id,
        )
    }
    for contact_id, row in zip(ids, rows, strict=True):
        got = found[contact_id]
        where = (row.kind, row, dict(got))
        event(f"{row.kind}: {got['state']}")
        if got["state"] == "dialing":
            assert row.expect in {"dialing", "any"}, where
            assert got["calls"] == 1, where
            call = simulator.call(got["reference"])
            if row.expect == "dialing":
                assert_sent_as_written(call, row)
        elif got["state"] == "pending":
            # Garbage that parsed as a number elsewhere in the world, now outside the window.
            assert row.expect == "any", where
            assert got["last_result"] == "outside_window" and got["last_error"], where
        else:
            assert row.expect in {"invalid", "any"}, where
            assert got["state"] in TERMINAL and got["last_error"], where
            assert got["reference"] is None and got["calls"] == 0, where
        if row.expect == "invalid":
            assert got["state"] == "invalid", where
        if row.number is not None:
            assert simulator.calls_to(digits(row.number)) == (1 if row.expect == "dialing" else 0)
    # Nothing reached the simulator but the contacts now dialing, each once.
    dialing = sum(1 for r in found.values() if r["state"] == "dialing")
    assert simulator.started_count() - started_before == dialing >= len(good)


def assert_sent_as_written(call: StartedCall, row: ContactRow) -> None:
    """Odd but legitimate content reaches Aculab exactly as the user wrote it."""
    assert call.to == digits(row.destination)
    assert call.from_ == CALLER_ID
    assert call.token == row.token
    assert call.outbound_parameters == row.outbound_parameters
    headers = json.loads(row.extra_sip_headers) if row.extra_sip_headers else []
    assert call.extra_sip_headers == tuple((h["name"], h["value"]) for h in headers)


async def test_extra_sip_headers_nested_too_deep_to_decode_make_the_contact_invalid(
    db_pool: asyncpg.Pool, simulator: Simulator
) -> None:
    campaign_id = await create_campaign(db_pool)
    good = fresh_number()
    ids = await insert_contacts(
        db_pool,
        campaign_id,
        [
            ContactRow(
                "deep", "invalid", fresh_number(), extra_sip_headers="[" * 5000 + "]" * 5000
            ),
            ContactRow("plain", "dialing", good),
        ],
    )

    await run_until_idle(db_pool, engine_settings(simulator), timeout=RUN_TIMEOUT)

    states = {r["id"]: r["state"] for r in await db_pool.fetch("SELECT id, state FROM contacts")}
    assert states == {ids[0]: "invalid", ids[1]: "dialing"}
    assert simulator.calls_to(digits(good)) == 1


@pytest.mark.parametrize(
    "not_before", ["10000-01-01 00:00:00+00", "294276-01-01 00:00:00+00", "0001-01-01 00:00:00+01"]
)
async def test_a_not_before_the_engine_cannot_represent_is_refused_by_name(
    db_pool: asyncpg.Pool, not_before: str
) -> None:
    campaign_id = await create_campaign(db_pool)
    with pytest.raises(asyncpg.CheckViolationError) as refused:
        await db_pool.execute(
            "INSERT INTO contacts (campaign_id, destination, not_before) "
            "VALUES ($1, '441908200000', $2::text::timestamptz)",
            campaign_id,
            not_before,
        )
    assert refused.value.constraint_name == "contacts_not_before_in_range"


@pytest.mark.parametrize(
    "column", ["destination", "caller_id", "token", "outbound_parameters", "timezone"]
)
async def test_a_nul_byte_in_contact_text_is_refused_by_postgresql(
    db_pool: asyncpg.Pool, column: str
) -> None:
    campaign_id = await create_campaign(db_pool)
    values = {"destination": "441908200000", column: "44\x001908"}
    params = ", ".join(f"${i}" for i in range(2, len(values) + 2))
    with pytest.raises(asyncpg.CharacterNotInRepertoireError, match="0x00"):
        await db_pool.execute(
            f"INSERT INTO contacts (campaign_id, {', '.join(values)}) VALUES ($1, {params})",
            campaign_id,
            *values.values(),
        )
    assert await db_pool.fetchval("SELECT count(*) FROM contacts") == 0
