"""Calling windows, evaluated in the contact's local time.

A campaign has one window: `window_start`, `window_end` (local wall-clock times) and
`window_days` (ISO weekdays, 1 = Monday ... 7 = Sunday, on which a window *opens*). A
window opening on local day D runs from `start` on D to `end` on D, or to `end` on D+1
when `end <= start` (it runs past midnight; `end == start` is a full 24 hours). Every
interval is half-open: open at `start`, closed at `end`. `'00:00'-'24:00'` on all seven
days is "any time" (`Window.always_open`); then no time zone is consulted at all.

Time zones. `contact_zones` picks them (`contacts.timezone`, else every zone
phonenumbers gives for the number, else `campaigns.default_timezone`) or returns a
reason; a name that is not a tzdata zone is never guessed at (fail closed). A contact
with several zones is callable only while the window is open in all of them. Which names
are zones is decided by `usable_zone`, the one rule that `campaign create`, `campaign
load` and the claim all apply.

DST, decided once here. "Open" is a property of the local *wall clock*: `at` is converted
to each zone's wall time with zoneinfo and compared with the window's times. Offsets are
never assumed fixed. Consequences, all deterministic:
- A boundary inside a spring-forward gap (02:30 in New York on the March change) takes
  effect at the first instant after the gap: a window starting at 02:30 opens at 03:00
  local (the transition instant), one ending at 02:30 closes there.
- During a fall-back hour both occurrences of a wall time count as that time. A window
  ending at 01:30 closes at the first 01:30, opens again when the clock goes back to
  01:00 and closes at the second 01:30; a window starting at 01:30 opens at the first
  01:30, closes when the clock goes back and opens again at the second 01:30. So
  `is_open` is True exactly when the local wall time is inside the window, and no
  contact is ever called at a local time outside it.
- A local day skipped entirely (Samoa, 2011-12-30) opens no window.

Finding the next change of state. In each zone the wall time is a continuous, increasing
function of UTC time between offset transitions, so a zone's state can only change where
the wall clock reaches a window boundary, or at a transition whose jump crosses one;
such a boundary is then a wall time that does not exist or happens twice, and the
transition lies between its two readings (PEP 495 `fold`). `next_opening` and
`open_until` therefore test only those instants, in order, against every zone. An
intersection of several zones may begin at any zone's boundary, which is why all of them
are candidates.

The clock is always an argument (an aware datetime; results are in UTC). The dispatcher
checks at claim time that the window is open now and stays open until the call's
projected start at Aculab (`open_until(now, ...)` later than `now + queue delay`); a
contact that fails the check waits, without using an attempt, until
`next_opening(...)` counted from the moment the current opening closes (from `now` when
closed), or is marked invalid with `describe_opening(...)` when that is None.

PostgreSQL `time '24:00'`: asyncpg (0.32) cannot decode it, and raises
`ValueError: hour must be in 0..23` for the whole row. Select the window columns as
`window_start::text, window_end::text` (PostgreSQL prints '24:00:00'), or as
`window_end - time '00:00'` (an interval: `timedelta(days=1)`); `Window.from_row` takes
any of these. A '24:00' end is the next midnight, i.e. `end = time(0, 0)`.
"""

from __future__ import annotations

import datetime as dt
import functools
import re
import zoneinfo
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Final

UTC: Final = dt.UTC
ALL_DAYS: Final = frozenset(range(1, 8))
DEFAULT_HORIZON_DAYS: Final = 8

NO_ZONE: Final = "no time zone: set contacts.timezone or campaigns.default_timezone"

_DAY: Final = dt.timedelta(days=1)
_SECOND: Final = dt.timedelta(seconds=1)
_EPOCH: Final = dt.datetime(1970, 1, 1, tzinfo=UTC)
_MIDNIGHT: Final = dt.time(0, 0)

# phonenumbers' own marker for "no zone known for this number"; it means "fall back to
# the campaign's zone", not "an unknown zone".
_PHONENUMBERS_UNKNOWN: Final = "Etc/Unknown"

# Keys that load but name no place: the server's own zone (a symlink to /etc/localtime
# on many systems) and tzdata's "local time unknown" placeholder.
_NOT_PLACES: Final = frozenset({"localtime", "Factory", "posixrules"})

# Long or hostile values are shortened in reasons; repr() escapes control characters.
_SHOWN_CHARACTERS: Final = 64

# PostgreSQL's text form of `time`: HH:MM[:SS[.ffffff]], hours up to 24.
_TIME_TEXT: Final = re.compile(r"([0-9]{2}):([0-9]{2})(?::([0-9]{2})(?:\.([0-9]{1,6}))?)?")


@dataclass(frozen=True)
class Window:
    """A campaign's calling window; see the module docstring for its meaning."""

    start: dt.time  # local wall time
    end: dt.time  # local wall time; not after `start` means on the next day
    days: frozenset[int]  # ISO weekdays on which a window opens

    def __post_init__(self) -> None:
        if self.start.tzinfo is not None or self.end.tzinfo is not None:
            raise ValueError("window times are local wall times and carry no tzinfo")
        # Accept any iterable of weekdays, but store the frozenset the type promises.
        days = _weekdays(self.days)
        object.__setattr__(self, "days", days)

    @property
    def duration(self) -> dt.timedelta:
        """How long each opening lasts in wall-clock time (more than 0, at most 24 h)."""
        length = _since_midnight(self.end) - _since_midnight(self.start)
        return length if length > dt.timedelta(0) else length + _DAY

    @property
    def always_open(self) -> bool:
        """True for '00:00'-'24:00' (or any 24-hour window) on all seven days."""
        return self.start == self.end and self.days == ALL_DAYS

    @classmethod
    def from_row(
        cls,
        start: dt.time | dt.timedelta | str,
        end: dt.time | dt.timedelta | str,
        days: Iterable[int],
    ) -> Window:
        """The window of a `campaigns` row: `time` values, their text ('24:00:00'), or
        intervals since midnight, and the `window_days` list. Raises ValueError for
        values the table's constraints do not allow."""
        opens = _time_of_day(start, "window_start")
        closes = _time_of_day(end, "window_end")
        weekdays = _weekdays(days)
        if opens == closes:
            raise ValueError("window_start and window_end must differ")
        if opens == _DAY:
            # '24:00' on day D is the midnight that starts D+1: the same window, opening
            # a day later. (A '24:00' end needs nothing: "end <= start" already means
            # the next day, and 00:00-24:00 is 00:00-00:00, a full day.)
            opens = dt.timedelta(0)
            weekdays = frozenset(day % 7 + 1 for day in weekdays)
        return cls(_clock_time(opens), _clock_time(closes % _DAY), weekdays)


class UnusableZone(ValueError):
    """A time zone name the engine will not dial by; str() says why in one line."""

    def __init__(self, name: str, reason: str) -> None:
        super().__init__(f"{_shown(name)} {reason}")
        self.name = name
        self.reason = reason


def usable_zone(name: str) -> zoneinfo.ZoneInfo:
    """The zone `name` stands for, if the dispatcher would dial by it; else UnusableZone.

    The one rule for every time zone the engine is given (`campaign create
    --default-timezone`, the `timezone` column of `campaign load`, and each contact's
    zones when the dispatcher claims it): a tzdata key that names a place. Refused too:
    names ZoneInfo loads that name no place (`localtime`, `Factory`, `posixrules`) and
    the `posix/` and `right/` copies of the tree (right/ clocks count leap seconds).
    """
    if name not in _known_keys():
        raise UnusableZone(name, _why_unusable(name))
    try:
        return zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError, OSError):
        # The file vanished or is damaged since the list was read: unknown, not a crash.
        raise UnusableZone(name, NOT_IANA) from None


NOT_IANA: Final = "is not an IANA time zone (e.g. Europe/London)"


def _why_unusable(name: str) -> str:
    if name == "localtime":
        return "is the server's own zone, not a place: name one (e.g. Europe/London)"
    if name in ("Factory", "posixrules"):
        return "is a tzdata placeholder, not a place: name one (e.g. Europe/London)"
    tree, slash, rest = name.partition("/")
    if slash and tree in ("posix", "right") and rest in _known_keys():
        return f"is a copy from tzdata's {tree}/ tree: use {rest!r}"
    return NOT_IANA


def _shown(name: str) -> str:
    # Long or hostile values are shortened; repr() escapes control characters.
    return repr(name[:_SHOWN_CHARACTERS]) + ("..." if len(name) > _SHOWN_CHARACTERS else "")


def contact_zones(
    contact_timezone: str | None,
    number_zones: Sequence[str],
    default_timezone: str | None,
) -> tuple[str, ...] | str:
    """The zones whose wall clocks decide when a contact may be called, or a reason.

    `contacts.timezone` wins, then every zone phonenumbers gives for the number (all of
    them: the window must be open in each), then `campaigns.default_timezone`. Blank
    values count as not set. A name that is set but unknown is a reason, never a reason
    to fall back: it would mean calling in a zone nobody chose. Not needed when the
    window is always open. Never raises for any str.
    """
    own = _given(contact_timezone)
    if own is not None:
        return (own,) if _zone(own) is not None else _unknown(own, "contacts.timezone")
    if isinstance(number_zones, str):
        number_zones = (number_zones,)
    named = tuple(dict.fromkeys(z.strip() for z in number_zones if z != _PHONENUMBERS_UNKNOWN))
    if named:
        for name in named:
            if _zone(name) is None:
                return _unknown(name, "time zones of the number")
        return named
    fallback = _given(default_timezone)
    if fallback is not None:
        if _zone(fallback) is None:
            return _unknown(fallback, "campaigns.default_timezone")
        return (fallback,)
    return NO_ZONE


def is_open(at: dt.datetime, zones: Sequence[str], window: Window) -> bool:
    """Whether the window is open at `at` in every zone. False (fail closed) when `zones`
    is empty or names an unknown zone, unless the window is always open."""
    at = _utc(at)
    if window.always_open:
        return True
    resolved = _resolve(zones)
    if resolved is None:
        return False
    try:
        return _open_everywhere(at, resolved, window)
    except OverflowError:
        return False


def next_opening(
    at: dt.datetime,
    zones: Sequence[str],
    window: Window,
    horizon_days: int = DEFAULT_HORIZON_DAYS,
) -> dt.datetime | None:
    """The earliest instant >= `at` at which the window is open in all zones: `at` itself
    when it already is. None when that does not happen within `horizon_days` (zones too
    far apart for the window, an unknown zone, no zone); the contact cannot be called."""
    at = _utc(at)
    if horizon_days < 0:
        raise ValueError("horizon_days must not be negative")
    if window.always_open:
        return at
    resolved = _resolve(zones)
    if resolved is None:
        return None
    # Overflow only within days of year 1 or 9999: no opening there, rather than a crash.
    try:
        if _open_everywhere(at, resolved, window):
            return at
        for instant in _changes(at, at + horizon_days * _DAY, resolved, window):
            if _open_everywhere(instant, resolved, window):
                return instant
    except OverflowError:
        pass
    return None


def open_until(
    at: dt.datetime,
    zones: Sequence[str],
    window: Window,
    horizon_days: int = DEFAULT_HORIZON_DAYS,
) -> dt.datetime | None:
    """When the opening that contains `at` closes in any of the zones; None when the
    window is not open at `at`. An opening that lasts past `horizon_days` (an always-open
    window, say) gives the end of the horizon: a lower bound, so still safe to compare
    with a projected start."""
    at = _utc(at)
    if horizon_days < 0:
        raise ValueError("horizon_days must not be negative")
    try:
        limit = at + horizon_days * _DAY
    except OverflowError:
        return None
    if window.always_open:
        return limit
    resolved = _resolve(zones)
    if resolved is None:
        return None
    try:
        if not _open_everywhere(at, resolved, window):
            return None
        for instant in _changes(at, limit, resolved, window):
            if not _open_everywhere(instant, resolved, window):
                return instant
    except OverflowError:
        return None
    return limit


def describe_opening(
    at: dt.datetime,
    zones: Sequence[str],
    window: Window,
    horizon_days: int = DEFAULT_HORIZON_DAYS,
) -> str:
    """A reason for an operator: why a contact is (not) callable at `at` and when it
    will be, e.g. "outside the calling window; opens 2026-11-30T09:00:00+00:00
    (09:00 Europe/London)". Never raises for any zone strings."""
    at = _utc(at)
    if window.always_open:
        return "inside the calling window (always open)"
    if isinstance(zones, str):
        zones = (zones,)
    if not zones:
        return NO_ZONE
    for name in zones:
        if _zone(name) is None:
            return _unknown(name, "zones of the contact")
    opening = next_opening(at, zones, window, horizon_days)
    if opening is None:
        return (
            f"outside the calling window; it is not open in all of {', '.join(zones)}"
            f" at once within {horizon_days} days"
        )
    local = _local_clocks(opening, zones)
    if opening == at:
        return f"inside the calling window ({local})"
    return f"outside the calling window; opens {opening.isoformat()} ({local})"


# --- internals ------------------------------------------------------------------------


def _utc(at: dt.datetime) -> dt.datetime:
    if at.tzinfo is None or at.utcoffset() is None:
        raise ValueError("`at` must be an aware datetime (the caller's clock, in UTC)")
    return at.astimezone(UTC)


@functools.lru_cache(maxsize=1)
def _known_keys() -> frozenset[str]:
    # A whitelist rather than "whatever ZoneInfo loads": it leaves out the right/ and
    # posix/ trees, whose right/ zones count leap seconds and so drift from civil time.
    # Read once per process, so a tzdata upgrade is seen after a restart.
    return frozenset(zoneinfo.available_timezones()) - _NOT_PLACES


@functools.lru_cache(maxsize=1024)
def _zone(name: str) -> zoneinfo.ZoneInfo | None:
    try:
        return usable_zone(name)
    except UnusableZone:
        return None


def _resolve(zones: Sequence[str]) -> tuple[zoneinfo.ZoneInfo, ...] | None:
    # A bare string is one name, never a sequence of one-letter zones (and a reason
    # returned by contact_zones, passed on by mistake, is then simply an unknown zone).
    names = (zones,) if isinstance(zones, str) else tuple(zones)
    resolved = tuple(_zone(name) for name in names)
    if not resolved:
        return None
    known = tuple(zone for zone in resolved if zone is not None)
    return known if len(known) == len(resolved) else None


def _weekdays(days: Iterable[int]) -> frozenset[int]:
    weekdays = frozenset(days)
    if not weekdays or not weekdays <= ALL_DAYS:
        shown = ", ".join(sorted(map(repr, weekdays)))
        raise ValueError(f"window days must be ISO weekdays 1-7, got {{{shown}}}")
    return weekdays


def _given(value: str | None) -> str | None:
    if value is None or not value.strip():
        return None
    return value.strip()


def _unknown(name: str, source: str) -> str:
    return f"unknown time zone {_shown(name)} ({source})"


def _since_midnight(value: dt.time) -> dt.timedelta:
    return dt.timedelta(
        hours=value.hour, minutes=value.minute, seconds=value.second, microseconds=value.microsecond
    )


def _clock_time(offset: dt.timedelta) -> dt.time:
    return (dt.datetime.combine(dt.date(2000, 1, 1), _MIDNIGHT) + offset).time()


def _time_of_day(value: dt.time | dt.timedelta | str, column: str) -> dt.timedelta:
    """Offset from local midnight, 0 to 24 h inclusive ('24:00' is the next midnight)."""
    if isinstance(value, dt.time):
        if value.tzinfo is not None:
            raise ValueError(f"{column} must be a time without time zone")
        return _since_midnight(value)
    if isinstance(value, dt.timedelta):
        offset = value
    else:
        match = _TIME_TEXT.fullmatch(value.strip())
        if match is None:
            raise ValueError(f"{column} is not a time of day: {value[:32]!r}")
        hours, minutes, seconds, fraction = match.groups()
        if int(minutes) > 59 or int(seconds or 0) > 59:
            raise ValueError(f"{column} is not a time of day: {value[:32]!r}")
        offset = dt.timedelta(
            hours=int(hours),
            minutes=int(minutes),
            seconds=int(seconds or 0),
            microseconds=int((fraction or "0").ljust(6, "0")),
        )
    if not dt.timedelta(0) <= offset <= _DAY:
        raise ValueError(f"{column} must be between 00:00 and 24:00, got {value!r}")
    return offset


def _open_in(at: dt.datetime, zone: zoneinfo.ZoneInfo, window: Window) -> bool:
    # Wall-clock comparison: in a repeated hour both readings are that local time.
    wall = at.astimezone(zone).replace(tzinfo=None)
    start = _since_midnight(window.start)
    duration = window.duration
    # An opening lasts at most 24 h, so only the windows opened today or yesterday
    # (local) can contain this wall time.
    for back in (0, 1):
        day = wall.date() - back * _DAY
        if day.isoweekday() in window.days:
            opens = dt.datetime.combine(day, _MIDNIGHT) + start
            if opens <= wall < opens + duration:
                return True
    return False


def _open_everywhere(at: dt.datetime, zones: tuple[zoneinfo.ZoneInfo, ...], window: Window) -> bool:
    return all(_open_in(at, zone, window) for zone in zones)


def _changes(
    after: dt.datetime,
    until: dt.datetime,
    zones: tuple[zoneinfo.ZoneInfo, ...],
    window: Window,
) -> list[dt.datetime]:
    """Every instant in (after, until] at which any zone's state may change, sorted.

    The joint state is constant between consecutive instants, so testing them in order
    finds the first opening or closing exactly.
    """
    start = _since_midnight(window.start)
    duration = window.duration
    instants: set[dt.datetime] = set()
    for zone in zones:
        # Windows opened up to two local days before `after` can still close after it,
        # and a window's boundaries lie within two days of the day it opens.
        day = after.astimezone(zone).date() - 2 * _DAY
        last = until.astimezone(zone).date() + _DAY
        while day <= last:
            if day.isoweekday() in window.days:
                opens = dt.datetime.combine(day, _MIDNIGHT) + start
                for boundary in (opens, opens + duration):
                    instants.update(_readings(boundary, zone))
            day += _DAY
    return sorted(t for t in instants if after < t <= until)


def _readings(wall: dt.datetime, zone: zoneinfo.ZoneInfo) -> Iterator[dt.datetime]:
    """The UTC instants at which the zone's clock reaches wall time `wall`.

    One for an ordinary time. For a time that happens twice (fall-back), both, and the
    transition between them, where the clock jumps back across `wall`. For a time that
    never happens (spring-forward gap), the transition at which the clock jumps over
    it; the two fold readings are yielded too, harmlessly, as they are merely instants.
    """
    early = wall.replace(tzinfo=zone, fold=0).astimezone(UTC)
    late = wall.replace(tzinfo=zone, fold=1).astimezone(UTC)
    yield early
    if late != early:
        yield late
        yield _transition(zone, min(early, late), max(early, late))


def _transition(zone: zoneinfo.ZoneInfo, low: dt.datetime, high: dt.datetime) -> dt.datetime:
    """The instant in (low, high] at which the zone's UTC offset changes.

    PEP 495 puts the transition between the two readings of a skipped or repeated wall
    time. tzdata transitions fall on whole seconds, so a bisection over seconds is exact.
    """
    before = low.astimezone(zone).utcoffset()
    low_s = (low - _EPOCH) // _SECOND  # floor: still before the transition
    high_s = -((_EPOCH - high) // _SECOND)  # ceiling: at or after it
    while high_s - low_s > 1:
        middle = (low_s + high_s) // 2
        if (_EPOCH + middle * _SECOND).astimezone(zone).utcoffset() == before:
            low_s = middle
        else:
            high_s = middle
    return _EPOCH + high_s * _SECOND


def _local_clocks(at: dt.datetime, zones: Sequence[str]) -> str:
    clocks = []
    for name in dict.fromkeys(zones):
        zone = _zone(name)
        if zone is None:  # the callers have checked; stay total regardless
            continue
        wall = at.astimezone(zone)
        shown = f"{wall:%H:%M:%S}" if wall.second or wall.microsecond else f"{wall:%H:%M}"
        clocks.append(f"{shown} {name}")
    return ", ".join(clocks)
