"""Calling windows: local wall-clock time per contact, all zones at once, DST, failing closed."""

from __future__ import annotations

import datetime as dt
import functools
import zoneinfo
from collections.abc import Sequence
from zoneinfo import ZoneInfo

import pytest
from hypothesis import assume, example, given, settings
from hypothesis import strategies as st

from campaign.db.pool import connect
from campaign.destinations import zones_for_number
from campaign.windows import (
    ALL_DAYS,
    NO_ZONE,
    Window,
    contact_zones,
    describe_opening,
    is_open,
    next_opening,
    open_until,
)

UTC = dt.UTC
WEEKDAYS = frozenset(range(1, 6))
SUNDAY = frozenset({7})
LONDON = ("Europe/London",)
OFFICE_HOURS = Window(dt.time(9), dt.time(20), WEEKDAYS)
HORIZON = dt.timedelta(days=8)
MICROSECOND = dt.timedelta(microseconds=1)

PROPERTIES = settings(max_examples=300, deadline=None)

# Every zone tzdata has, less the two keys that load but name no place (the server's own
# zone and tzdata's "unknown" placeholder), which the module refuses on purpose.
ZONES = sorted(zoneinfo.available_timezones() - {"localtime", "Factory"})
KNOWN = frozenset(ZONES)


def utc(
    year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0, micro: int = 0
) -> dt.datetime:
    return dt.datetime(year, month, day, hour, minute, second, micro, tzinfo=UTC)


# --- a reference written from first principles, for the properties ----------------------


def _micros(value: dt.time) -> int:
    return ((value.hour * 60 + value.minute) * 60 + value.second) * 10**6 + value.microsecond


def reference_is_open(at: dt.datetime, zones: Sequence[str], window: Window) -> bool:
    """Open iff, in every zone, the local wall time lies in a window opened today or
    yesterday (local), counting in microseconds since local midnight."""
    day = 86_400 * 10**6
    start, end = _micros(window.start), _micros(window.end)
    length = end - start if end > start else end - start + day
    for name in zones:
        local = at.astimezone(ZoneInfo(name))
        now = _micros(local.time())
        today = local.isoweekday()
        yesterday = 7 if today == 1 else today - 1
        opened_today = today in window.days and start <= now < start + length
        opened_yesterday = yesterday in window.days and now + day < start + length
        if not (opened_today or opened_yesterday):
            return False
    return bool(zones)


def samples(start: dt.datetime, stop: dt.datetime) -> list[dt.datetime]:
    """`start` and seven more instants spread over [start, stop), all strictly before
    `stop` (timedelta division rounds, so a tiny span could otherwise reach it)."""
    spread = (start + (stop - start) * k / 8 for k in range(8))
    return [t for t in spread if t < stop]


@functools.lru_cache(maxsize=4096)
def transitions(zone: str, year: int) -> tuple[dt.datetime, ...]:
    """The instants in `year` at which `zone`'s UTC offset changes, found by scanning in
    six-hour steps and bisecting to the second."""
    tz = ZoneInfo(zone)
    step = dt.timedelta(hours=6)
    found = []
    t = utc(year, 1, 1)
    while t.year == year:
        following = t + step
        if t.astimezone(tz).utcoffset() != following.astimezone(tz).utcoffset():
            low, high = t, following
            while high - low > dt.timedelta(seconds=1):
                middle = low + (high - low) / 2
                middle = middle.replace(microsecond=0)
                if middle.astimezone(tz).utcoffset() == low.astimezone(tz).utcoffset():
                    low = middle
                else:
                    high = middle
            found.append(high)
        t = following
    return tuple(found)


def _changes_offset_in(zone: str, year: int) -> bool:
    tz = ZoneInfo(zone)
    months = [utc(year, month, 1) for month in range(1, 13)] + [utc(year + 1, 1, 1)]
    return len({m.astimezone(tz).utcoffset() for m in months}) > 1


# (zone, year) pairs with at least one offset change, 2000-2039: ~0.5 s, once.
DST_YEARS = [(z, y) for z in ZONES for y in range(2000, 2040) if _changes_offset_in(z, y)]


# --- strategies ---------------------------------------------------------------------------

quarter_hours = st.integers(0, 95).map(lambda q: dt.time(q // 4, q % 4 * 15))
day_sets = st.frozensets(st.integers(1, 7), min_size=1)
windows = st.builds(Window, quarter_hours, quarter_hours, day_sets)
instants = st.datetimes(
    min_value=dt.datetime(2000, 1, 1), max_value=dt.datetime(2040, 1, 1), timezones=st.just(UTC)
)
zone_lists = st.lists(st.sampled_from(ZONES), min_size=1, max_size=3)


@st.composite
def dst_edges(draw: st.DrawFn) -> tuple[dt.datetime, list[str], Window]:
    """An instant within two hours of a real offset change of a zone, and a window whose
    boundaries are often near the wall times on either side of that change (so inside
    gaps and repeated hours)."""
    zone, year = draw(st.sampled_from(DST_YEARS))
    changes = transitions(zone, year)
    assume(changes)
    change = draw(st.sampled_from(changes))
    shift = draw(
        st.one_of(
            st.timedeltas(-dt.timedelta(hours=2), dt.timedelta(hours=2)),
            st.sampled_from([dt.timedelta(0), MICROSECOND, -MICROSECOND]),
            st.integers(-8, 8).map(lambda k: k * dt.timedelta(minutes=15)),
        )
    )
    tz = ZoneInfo(zone)
    walls = [
        (change - dt.timedelta(seconds=1)).astimezone(tz).replace(tzinfo=None, second=0),
        change.astimezone(tz).replace(tzinfo=None),
    ]
    near = st.builds(
        lambda wall, k: (wall + k * dt.timedelta(minutes=15)).time(),
        st.sampled_from(walls),
        st.integers(-8, 8),
    )
    start = draw(st.one_of(quarter_hours, near))
    end = draw(st.one_of(quarter_hours, near))
    days = draw(st.one_of(st.just(ALL_DAYS), day_sets))
    others = draw(st.lists(st.sampled_from(ZONES), max_size=2))
    return change + shift, [zone, *others], Window(start, end, days)


# --- Window and from_row ----------------------------------------------------------------


def test_midnight_to_midnight_on_every_day_is_always_open() -> None:
    window = Window.from_row(dt.time(0, 0), "24:00:00", [1, 2, 3, 4, 5, 6, 7])
    assert window.always_open
    assert window.duration == dt.timedelta(days=1)
    # No zone is consulted: the migration says such a window needs none.
    assert is_open(utc(2026, 3, 29, 1, 30), (), window)
    assert next_opening(utc(2026, 3, 29, 1, 30), (), window) == utc(2026, 3, 29, 1, 30)
    assert describe_opening(utc(2026, 3, 29), (), window) == (
        "inside the calling window (always open)"
    )


def test_a_24_hour_window_on_some_days_only_is_not_always_open() -> None:
    window = Window.from_row("00:00:00", "24:00:00", [1, 2, 3, 4, 5])
    assert not window.always_open
    assert is_open(utc(2026, 11, 27, 23, 59), LONDON, window)  # Friday
    assert not is_open(utc(2026, 11, 28, 0, 0), LONDON, window)  # Saturday


@pytest.mark.parametrize(
    "end",
    ["24:00:00", "24:00", dt.timedelta(days=1)],
    ids=["postgres-text", "short-text", "interval"],
)
def test_an_end_of_24_00_is_the_next_midnight(end: str | dt.timedelta) -> None:
    window = Window.from_row(dt.time(9), end, [1])
    assert window == Window(dt.time(9), dt.time(0), frozenset({1}))
    assert window.duration == dt.timedelta(hours=15)
    assert is_open(utc(2026, 11, 30, 23, 59, 59), LONDON, window)  # Monday
    assert not is_open(utc(2026, 12, 1, 0, 0), LONDON, window)


def test_a_start_of_24_00_opens_at_the_midnight_that_starts_the_next_day() -> None:
    # '24:00'-'09:00' on Sundays is 00:00-09:00 on Mondays; Sunday 7 wraps to Monday 1.
    assert Window.from_row("24:00:00", "09:00:00", [7]) == Window(
        dt.time(0), dt.time(9), frozenset({1})
    )


def test_from_row_takes_the_values_asyncpg_returns() -> None:
    window = Window.from_row(dt.time(9, 30), dt.time(17, 45, 30), [5, 1, 1])
    assert window == Window(dt.time(9, 30), dt.time(17, 45, 30), frozenset({1, 5}))
    assert Window.from_row("09:30:00", "23:59:59.5", [1]).end == dt.time(23, 59, 59, 500_000)


@pytest.mark.parametrize(
    ("start", "end", "days"),
    [
        ("09:00:00", "09:00:00", [1]),
        ("00:00", "00:00", [1]),
        ("24:00", "24:00", [1]),
        ("09:00", "20:00", []),
        ("09:00", "20:00", [0]),
        ("09:00", "20:00", [8]),
        ("25:00", "20:00", [1]),
        ("24:30", "20:00", [1]),
        ("09:60", "20:00", [1]),
        ("9am", "20:00", [1]),
        (dt.timedelta(days=1, seconds=1), "20:00", [1]),
        (dt.timedelta(seconds=-1), "20:00", [1]),
        (dt.time(9, tzinfo=UTC), "20:00", [1]),
    ],
)
def test_from_row_refuses_what_the_table_constraints_forbid(
    start: str | dt.time | dt.timedelta, end: str, days: list[int]
) -> None:
    with pytest.raises(ValueError):  # noqa: PT011 - each case has its own message
        Window.from_row(start, end, days)


def test_a_window_refuses_days_outside_iso_weekdays_and_zoned_times() -> None:
    with pytest.raises(ValueError, match="ISO weekdays"):
        Window(dt.time(9), dt.time(20), frozenset({0, 1}))
    with pytest.raises(ValueError, match="tzinfo"):
        Window(dt.time(9, tzinfo=UTC), dt.time(20), WEEKDAYS)


async def test_asyncpg_cannot_decode_time_24_00_so_rows_are_read_as_text(
    pg_admin_dsn: str,
) -> None:
    conn = await connect(pg_admin_dsn)
    try:
        # Pinned: if asyncpg ever decodes '24:00', the ::text advice can be revisited.
        with pytest.raises(ValueError, match=r"hour must be in 0\.\.23"):
            await conn.fetchval("SELECT time '24:00'")
        await conn.execute(
            "CREATE TEMP TABLE w (window_start time, window_end time, window_days smallint[])"
        )
        await conn.execute("INSERT INTO w VALUES ('00:00', '24:00', '{1,2,3,4,5,6,7}')")
        row = await conn.fetchrow(
            "SELECT window_start::text, window_end::text, window_days,"
            " window_end - time '00:00' AS end_interval FROM w"
        )
    finally:
        await conn.close()
    assert row is not None
    assert row["window_end"] == "24:00:00"
    assert row["end_interval"] == dt.timedelta(days=1)
    assert Window.from_row(row["window_start"], row["window_end"], row["window_days"]).always_open
    assert Window.from_row(row["window_start"], row["end_interval"], row["window_days"]).always_open


# --- which zones ------------------------------------------------------------------------


def test_the_contact_timezone_overrides_the_number_zones() -> None:
    assert contact_zones("Asia/Tokyo", ("Europe/London",), "UTC") == ("Asia/Tokyo",)


def test_every_zone_of_the_number_is_used_when_the_contact_has_none() -> None:
    zones = ("America/New_York", "America/Los_Angeles", "America/New_York")
    assert contact_zones(None, zones, "UTC") == ("America/New_York", "America/Los_Angeles")
    toll_free = zones_for_number("18002752273")
    assert contact_zones(None, toll_free, None) == toll_free


def test_the_campaign_default_is_used_when_nothing_else_is_known() -> None:
    assert contact_zones(None, (), "Europe/Paris") == ("Europe/Paris",)
    assert contact_zones("  ", (), " Europe/Paris ") == ("Europe/Paris",)
    # phonenumbers says "Etc/Unknown" when it knows no zone: that is "nothing known".
    assert contact_zones("", ("Etc/Unknown",), "Europe/Paris") == ("Europe/Paris",)


def test_no_zone_at_all_is_a_reason() -> None:
    assert contact_zones(None, (), None) == NO_ZONE
    assert NO_ZONE == "no time zone: set contacts.timezone or campaigns.default_timezone"


def test_an_unknown_zone_is_a_reason_and_never_falls_back() -> None:
    reason = contact_zones("Mars/Base", ("Europe/London",), "UTC")
    assert reason == "unknown time zone 'Mars/Base' (contacts.timezone)"
    assert contact_zones(None, ("Europe/London", "Mars/Base"), "UTC") == (
        "unknown time zone 'Mars/Base' (time zones of the number)"
    )
    assert contact_zones(None, (), "Mars/Base") == (
        "unknown time zone 'Mars/Base' (campaigns.default_timezone)"
    )


@pytest.mark.parametrize(
    "name",
    ["localtime", "Factory", "posixrules", "right/Europe/London", "posix/Europe/London"],
)
def test_zone_files_that_are_not_civil_time_zones_are_refused(name: str) -> None:
    # The server's zone, tzdata's placeholder, and the leap-second ("right/") trees.
    assert contact_zones(name, (), None) == f"unknown time zone {name!r} (contacts.timezone)"
    assert not is_open(utc(2026, 11, 30, 12), (name,), OFFICE_HOURS)


def test_a_hostile_zone_name_is_shortened_and_escaped_in_the_reason() -> None:
    reason = contact_zones("Europe/\x1b[31mLondon" + "x" * 100, (), None)
    assert isinstance(reason, str)
    assert "\x1b" not in reason and "\\x1b" in reason
    assert len(reason) < 120


# --- examples: London office hours --------------------------------------------------------


@pytest.mark.parametrize(
    ("at", "expected"),
    [
        (utc(2026, 11, 30, 8, 59, 59), False),  # Monday, before 09:00 GMT
        (utc(2026, 11, 30, 9, 0), True),  # opens exactly at the start
        (utc(2026, 11, 30, 19, 59, 59, 999_999), True),
        (utc(2026, 11, 30, 20, 0), False),  # closed exactly at the end
        (utc(2026, 11, 28, 12, 0), False),  # Saturday
        (utc(2026, 11, 29, 12, 0), False),  # Sunday
        (utc(2026, 7, 6, 8, 0), True),  # Monday 09:00 BST
        (utc(2026, 7, 6, 19, 0), False),  # Monday 20:00 BST
    ],
)
def test_london_office_hours_follow_london_wall_time(at: dt.datetime, expected: bool) -> None:
    assert is_open(at, LONDON, OFFICE_HOURS) is expected


def test_a_weekend_contact_waits_for_monday_morning() -> None:
    saturday = utc(2026, 11, 28, 12, 0)
    assert next_opening(saturday, LONDON, OFFICE_HOURS) == utc(2026, 11, 30, 9, 0)
    assert describe_opening(saturday, LONDON, OFFICE_HOURS) == (
        "outside the calling window; opens 2026-11-30T09:00:00+00:00 (09:00 Europe/London)"
    )


def test_an_open_window_reports_now_and_when_it_closes() -> None:
    at = utc(2026, 11, 30, 10, 15)
    assert next_opening(at, LONDON, OFFICE_HOURS) == at
    assert open_until(at, LONDON, OFFICE_HOURS) == utc(2026, 11, 30, 20, 0)
    assert open_until(utc(2026, 11, 30, 20, 0), LONDON, OFFICE_HOURS) is None
    assert describe_opening(at, LONDON, OFFICE_HOURS) == (
        "inside the calling window (10:15 Europe/London)"
    )


def test_a_naive_clock_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match="aware"):
        is_open(dt.datetime(2026, 11, 30, 10), LONDON, OFFICE_HOURS)


def test_an_overnight_window_runs_past_midnight_from_the_day_it_opens() -> None:
    friday_nights = Window(dt.time(22), dt.time(2), frozenset({5}))
    assert not is_open(utc(2026, 11, 27, 21, 59), LONDON, friday_nights)
    assert is_open(utc(2026, 11, 27, 23, 0), LONDON, friday_nights)
    assert is_open(utc(2026, 11, 28, 1, 59), LONDON, friday_nights)  # Saturday 01:59
    assert not is_open(utc(2026, 11, 28, 2, 0), LONDON, friday_nights)
    assert not is_open(utc(2026, 11, 28, 23, 0), LONDON, friday_nights)  # Saturday night
    assert next_opening(utc(2026, 11, 28, 2, 0), LONDON, friday_nights) == utc(2026, 12, 4, 22)


# --- several zones --------------------------------------------------------------------------


def test_several_zones_open_only_where_all_are_open() -> None:
    coasts = ("America/New_York", "America/Los_Angeles")
    monday_9am_new_york = utc(2026, 3, 30, 13, 0)  # 06:00 in Los Angeles
    assert is_open(monday_9am_new_york, coasts[:1], OFFICE_HOURS)
    assert not is_open(monday_9am_new_york, coasts, OFFICE_HOURS)
    # The intersection begins at the other zone's start and ends at the first zone's end.
    assert next_opening(monday_9am_new_york, coasts, OFFICE_HOURS) == utc(2026, 3, 30, 16, 0)
    assert open_until(utc(2026, 3, 30, 16, 0), coasts, OFFICE_HOURS) == utc(2026, 3, 31, 0, 0)
    assert describe_opening(monday_9am_new_york, coasts, OFFICE_HOURS) == (
        "outside the calling window; opens 2026-03-30T16:00:00+00:00"
        " (12:00 America/New_York, 09:00 America/Los_Angeles)"
    )


def test_zones_too_far_apart_for_the_window_are_never_open() -> None:
    two_hours = Window(dt.time(9), dt.time(11), ALL_DAYS)
    apart = ("Asia/Tokyo", "America/New_York")
    assert next_opening(utc(2026, 6, 1), apart, two_hours) is None
    assert describe_opening(utc(2026, 6, 1), apart, two_hours) == (
        "outside the calling window; it is not open in all of Asia/Tokyo, America/New_York"
        " at once within 8 days"
    )


def test_a_north_american_toll_free_number_spans_too_many_zones_for_office_hours() -> None:
    # Its zones run from Guam (UTC+10) to Pago Pago (UTC-11).
    zones = contact_zones(None, zones_for_number("18002752273"), None)
    assert isinstance(zones, tuple) and "Pacific/Guam" in zones
    assert next_opening(utc(2026, 6, 1), zones, OFFICE_HOURS) is None


def test_an_unknown_zone_among_several_fails_closed() -> None:
    always_business = Window(dt.time(0), dt.time(0), WEEKDAYS)
    monday = utc(2026, 11, 30, 12)
    assert is_open(monday, LONDON, always_business)
    assert not is_open(monday, ("Europe/London", "Mars/Base"), always_business)
    assert next_opening(monday, ("Europe/London", "Mars/Base"), always_business) is None
    assert open_until(monday, ("Europe/London", "Mars/Base"), always_business) is None
    assert not is_open(monday, (), always_business)
    assert describe_opening(monday, ("Europe/London", "Mars/Base"), always_business) == (
        "unknown time zone 'Mars/Base' (zones of the contact)"
    )


def test_a_bare_zone_string_is_one_zone_not_a_list_of_letters() -> None:
    assert is_open(utc(2026, 11, 30, 12), "Europe/London", OFFICE_HOURS)


# --- DST ------------------------------------------------------------------------------------


def test_london_office_hours_move_with_the_clocks() -> None:
    # Friday 20:00 GMT, the weekend the clocks go forward: Monday opens at 08:00 UTC.
    assert next_opening(utc(2026, 3, 27, 20, 0), LONDON, OFFICE_HOURS) == utc(2026, 3, 30, 8)
    # The weekend they go back: Monday opens at 09:00 UTC again.
    assert next_opening(utc(2026, 10, 23, 19, 0), LONDON, OFFICE_HOURS) == utc(2026, 10, 26, 9)


def test_a_window_starting_inside_the_spring_forward_gap_opens_when_the_gap_ends() -> None:
    # London 2026-03-29: 01:00 GMT is followed by 02:00 BST; 01:30 never happens.
    window = Window(dt.time(1, 30), dt.time(3, 0), SUNDAY)
    assert not is_open(utc(2026, 3, 29, 0, 59, 59), LONDON, window)
    assert next_opening(utc(2026, 3, 29, 0, 0), LONDON, window) == utc(2026, 3, 29, 1, 0)
    assert open_until(utc(2026, 3, 29, 1, 0), LONDON, window) == utc(2026, 3, 29, 2, 0)
    assert describe_opening(utc(2026, 3, 29), LONDON, window) == (
        "outside the calling window; opens 2026-03-29T01:00:00+00:00 (02:00 Europe/London)"
    )


def test_a_window_ending_inside_the_spring_forward_gap_closes_at_the_jump() -> None:
    window = Window(dt.time(0, 0), dt.time(1, 30), SUNDAY)
    assert open_until(utc(2026, 3, 29, 0, 0), LONDON, window) == utc(2026, 3, 29, 1, 0)


def test_a_window_ending_in_the_repeated_hour_reopens_for_its_second_occurrence() -> None:
    # London 2026-10-25: 01:00-02:00 happens in BST, then again in GMT.
    window = Window(dt.time(0, 0), dt.time(1, 30), SUNDAY)
    assert open_until(utc(2026, 10, 24, 23, 0), LONDON, window) == utc(2026, 10, 25, 0, 30)
    assert not is_open(utc(2026, 10, 25, 0, 45), LONDON, window)  # 01:45 BST
    assert next_opening(utc(2026, 10, 25, 0, 30), LONDON, window) == utc(2026, 10, 25, 1, 0)
    assert open_until(utc(2026, 10, 25, 1, 0), LONDON, window) == utc(2026, 10, 25, 1, 30)


def test_a_window_starting_in_the_repeated_hour_pauses_while_the_clock_goes_back() -> None:
    window = Window(dt.time(1, 30), dt.time(3, 0), SUNDAY)
    assert next_opening(utc(2026, 10, 25, 0, 0), LONDON, window) == utc(2026, 10, 25, 0, 30)
    assert open_until(utc(2026, 10, 25, 0, 30), LONDON, window) == utc(2026, 10, 25, 1, 0)
    assert not is_open(utc(2026, 10, 25, 1, 15), LONDON, window)  # 01:15 GMT
    assert next_opening(utc(2026, 10, 25, 1, 0), LONDON, window) == utc(2026, 10, 25, 1, 30)
    assert open_until(utc(2026, 10, 25, 1, 30), LONDON, window) == utc(2026, 10, 25, 3, 0)


def test_new_york_gap_and_fall_back() -> None:
    new_york = ("America/New_York",)
    gap_window = Window(dt.time(2, 30), dt.time(4, 0), SUNDAY)
    assert next_opening(utc(2026, 3, 8), new_york, gap_window) == utc(2026, 3, 8, 7, 0)
    assert open_until(utc(2026, 3, 8, 7, 0), new_york, gap_window) == utc(2026, 3, 8, 8, 0)
    daily = Window(dt.time(9), dt.time(17), ALL_DAYS)
    assert next_opening(utc(2026, 10, 31, 3), new_york, daily) == utc(2026, 10, 31, 13)  # EDT
    assert next_opening(utc(2026, 11, 1, 3), new_york, daily) == utc(2026, 11, 1, 14)  # EST


def test_lord_howe_half_hour_dst() -> None:
    lord_howe = ("Australia/Lord_Howe",)
    daily = Window(dt.time(9), dt.time(17), ALL_DAYS)
    # Saturday 4 April 2026 is still +11:00; Sunday is +10:30.
    assert next_opening(utc(2026, 4, 3, 12), lord_howe, daily) == utc(2026, 4, 3, 22, 0)
    assert next_opening(utc(2026, 4, 4, 12), lord_howe, daily) == utc(2026, 4, 4, 22, 30)
    # 4 October 2026: 02:00 jumps to 02:30, so a 02:15 start opens at 02:30 (15:30 UTC).
    in_gap = Window(dt.time(2, 15), dt.time(4), SUNDAY)
    assert next_opening(utc(2026, 10, 3, 12), lord_howe, in_gap) == utc(2026, 10, 3, 15, 30)
    # 5 April 2026: 01:30-02:00 happens twice; a window ending at 01:45 reopens at 01:30.
    ends_in_fold = Window(dt.time(1), dt.time(1, 45), SUNDAY)
    assert open_until(utc(2026, 4, 4, 14, 0), lord_howe, ends_in_fold) == utc(2026, 4, 4, 14, 45)
    assert next_opening(utc(2026, 4, 4, 14, 45), lord_howe, ends_in_fold) == utc(2026, 4, 4, 15)
    assert open_until(utc(2026, 4, 4, 15, 0), lord_howe, ends_in_fold) == utc(2026, 4, 4, 15, 15)


def test_chatham_quarter_hour_offsets_and_dst() -> None:
    chatham = ("Pacific/Chatham",)
    daily = Window(dt.time(9), dt.time(17), ALL_DAYS)
    assert next_opening(utc(2026, 4, 3, 12), chatham, daily) == utc(2026, 4, 3, 19, 15)  # +13:45
    assert next_opening(utc(2026, 4, 4, 15), chatham, daily) == utc(2026, 4, 4, 20, 15)  # +12:45
    # 27 September 2026: 02:45 jumps to 03:45, so a 03:00 start opens at 14:00 UTC.
    in_gap = Window(dt.time(3), dt.time(5), SUNDAY)
    assert next_opening(utc(2026, 9, 26, 12), chatham, in_gap) == utc(2026, 9, 26, 14, 0)
    assert open_until(utc(2026, 9, 26, 14, 0), chatham, in_gap) == utc(2026, 9, 26, 15, 15)


def test_a_skipped_local_day_opens_no_window() -> None:
    # Samoa moved across the date line: Thursday 2011-12-29 was followed by Saturday.
    fridays = Window(dt.time(9), dt.time(17), frozenset({5}))
    assert next_opening(utc(2011, 12, 29), ("Pacific/Apia",), fridays) == utc(2012, 1, 5, 19)


def test_a_zone_without_dst_keeps_its_opening_time_all_year() -> None:
    tokyo = ("Asia/Tokyo",)
    for monday in (utc(2026, 3, 30), utc(2026, 11, 2), utc(2027, 1, 4)):
        assert next_opening(monday - dt.timedelta(hours=12), tokyo, OFFICE_HOURS) == monday


# --- properties -------------------------------------------------------------------------


@PROPERTIES
@given(at=instants, zones=zone_lists, window=windows)
def test_next_opening_is_the_earliest_open_instant(
    at: dt.datetime, zones: list[str], window: Window
) -> None:
    opening = next_opening(at, zones, window)
    if opening is None:
        for k in range(9):
            assert not is_open(at + HORIZON * k / 8, zones, window)
        return
    assert at <= opening <= at + HORIZON
    assert is_open(opening, zones, window)
    for before in samples(at, opening):
        assert not is_open(before, zones, window)
    if opening > at:
        assert not is_open(opening - MICROSECOND, zones, window)


@PROPERTIES
@given(at=instants, zones=zone_lists, window=windows)
def test_an_open_window_opens_now(at: dt.datetime, zones: list[str], window: Window) -> None:
    if is_open(at, zones, window):
        assert next_opening(at, zones, window) == at
    else:
        assert open_until(at, zones, window) is None


@PROPERTIES
@given(at=instants, zones=zone_lists, window=windows)
def test_is_open_agrees_with_local_wall_time_membership(
    at: dt.datetime, zones: list[str], window: Window
) -> None:
    assert is_open(at, zones, window) == reference_is_open(at, zones, window)


@PROPERTIES
@given(at=instants, zones=zone_lists, window=windows)
def test_an_opening_stays_open_until_open_until_and_closes_there(
    at: dt.datetime, zones: list[str], window: Window
) -> None:
    # From `at` when open, else from its next opening (the exact left edge of one): a
    # filter on "open at a random instant" would reject most multi-zone cases.
    start = next_opening(at, zones, window)
    if start is None:
        return  # never open: the next_opening property covers this
    closes = open_until(start, zones, window)
    assert closes is not None
    assert start < closes <= start + HORIZON
    for during in samples(start, closes):
        assert is_open(during, zones, window)
    assert is_open(closes - MICROSECOND, zones, window)
    if closes < start + HORIZON:
        assert not is_open(closes, zones, window)


@PROPERTIES
@given(case=dst_edges())
def test_no_instant_near_a_dst_change_is_open_outside_the_local_window(
    case: tuple[dt.datetime, list[str], Window],
) -> None:
    at, zones, window = case
    assert is_open(at, zones, window) == reference_is_open(at, zones, window)


@PROPERTIES
@given(case=dst_edges())
def test_openings_and_closings_near_a_dst_change_are_exact(
    case: tuple[dt.datetime, list[str], Window],
) -> None:
    at, zones, window = case
    opening = next_opening(at, zones, window)
    if opening is not None:
        assert opening >= at
        assert reference_is_open(opening, zones, window)
        if opening > at:
            assert not reference_is_open(opening - MICROSECOND, zones, window)
            for before in samples(at, opening):
                assert not reference_is_open(before, zones, window)
    closes = open_until(at, zones, window)
    if closes is not None:
        assert reference_is_open(closes - MICROSECOND, zones, window)
        for during in samples(at, closes):
            assert reference_is_open(during, zones, window)
        if closes < at + HORIZON:
            assert not reference_is_open(closes, zones, window)


@PROPERTIES
@given(
    name=st.one_of(
        st.text(),
        st.sampled_from(
            ["", " ", "/etc/localtime", "../../etc/passwd", "Europe/", ".", "Europe/London\x00"]
        ),
        st.text(st.characters(codec=None, categories=["Cs", "Cc", "Cf", "Zs"])),
    ),
    at=instants,
    window=windows,
)
@example(name="\ud800", at=utc(2026, 1, 1), window=OFFICE_HOURS)
@example(name="x" * 5000, at=utc(2026, 1, 1), window=OFFICE_HOURS)
def test_arbitrary_zone_strings_never_raise_and_fail_closed(
    name: str, at: dt.datetime, window: Window
) -> None:
    chosen = contact_zones(name, [name], name)
    assert isinstance(chosen, str) or all(z in KNOWN for z in chosen)
    known = name in KNOWN
    for zones in ([name], ["Europe/London", name], name):
        opened = is_open(at, zones, window)
        opening = next_opening(at, zones, window)
        closes = open_until(at, zones, window)
        reason = describe_opening(at, zones, window)
        assert isinstance(reason, str)
        if not known and not window.always_open:
            assert not opened and opening is None and closes is None
            assert reason.startswith("unknown time zone")
    assert isinstance(contact_zones(None, [name, name], None), tuple | str)
