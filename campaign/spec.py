"""A campaign's settings as the operator types them, checked before they reach the database.

`campaign create` gives its options to `CreateCampaignArgs`; the same checks (clean
text, a region code, a time zone the dispatcher can use, calling-window times and
days, retry delays per retryable cause) serve `campaign suppress`'s options. Shapes
are judged here; the schema's CHECK constraints judge ranges.
"""

from __future__ import annotations

import json
from types import MappingProxyType
from typing import Annotated, Any, Final, Self

import phonenumbers
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    model_validator,
)

from campaign import windows
from campaign.db import admin
from campaign.vocabulary import RETRYABLE_CAUSES


def clean_text(value: str) -> str:
    if "\x00" in value:
        raise ValueError("contains a NUL character")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("is not valid UTF-8") from None
    return value


def _retry_delays(value: Any) -> Any:
    if not isinstance(value, str):
        return value
    try:
        return json.loads(value)
    except ValueError as exc:
        raise ValueError(f"not valid JSON: {exc}") from None


def _known_causes(value: dict[str, float]) -> dict[str, float]:
    # Answered calls (`completed`, `hung_up`) are never retried, so naming them is a
    # mistake worth reporting, like a typo.
    unknown = sorted(set(value) - set(RETRYABLE_CAUSES))
    if unknown:
        raise ValueError(
            f"unknown call cause {', '.join(map(repr, unknown))} "
            f"(retryable causes: {', '.join(sorted(RETRYABLE_CAUSES))})"
        )
    return value


def country_code(value: str) -> str:
    code = value.strip().upper()
    if phonenumbers.country_code_for_region(code) == 0:
        raise ValueError(f"{value!r} is not a region code phonenumbers knows (e.g. GB, US)")
    return code


def _zone(value: str) -> str:
    # The dispatcher's own rule: a zone it would mark `invalid` is refused here.
    windows.usable_zone(value)
    return value


_WEEKDAYS: Final = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
_DAY_SETS: Final = MappingProxyType(
    {"all": (1, 2, 3, 4, 5, 6, 7), "weekdays": (1, 2, 3, 4, 5), "weekend": (6, 7)}
)


def _clock_time(value: str, *, end: bool) -> str:
    hours, colon, minutes = value.strip().partition(":")
    valid = (
        colon
        and hours.isascii()
        and hours.isdigit()
        and len(hours) <= 2
        and minutes.isascii()
        and minutes.isdigit()
        and len(minutes) == 2
    )
    if valid and (
        (int(hours) < 24 and int(minutes) < 60) or (end and (hours, minutes) == ("24", "00"))
    ):
        return f"{int(hours):02d}:{minutes}"
    latest = "24:00" if end else "23:59"
    raise ValueError(f"{value!r} is not a time of day as HH:MM (00:00-{latest})")


def _window_start(value: str) -> str:
    return _clock_time(value, end=False)


def _window_end(value: str) -> str:
    return _clock_time(value, end=True)


def _weekday(word: str) -> int:
    name = word.strip().lower()
    if name.isascii() and name.isdigit() and 1 <= int(name) <= 7:
        return int(name)
    for number, day in enumerate(_WEEKDAYS, start=1):
        # "mon", "Monday", "wednes": three letters at least, a prefix of the day's name.
        if len(name) >= 3 and day.startswith(name):
            return number
    raise ValueError(f"{word.strip()!r} is not a weekday (1-7 with 1 = Monday, or mon..sun)")


def _window_days(value: Any) -> Any:
    """'1,2,3,4,5', 'mon-fri', 'Mon,Wed,Fri', 'fri-mon', 'weekdays', 'all' -> ISO weekdays."""
    if not isinstance(value, str):
        return value
    days: set[int] = set()
    for part in value.split(","):
        if not part.strip():
            raise ValueError(f"{value!r} has an empty item: list days as 1,2,3 or mon-fri")
        named = _DAY_SETS.get(part.strip().lower())
        if named is not None:
            days.update(named)
            continue
        first, dash, last = part.partition("-")
        start = _weekday(first)
        stop = _weekday(last) if dash else start
        # A range may wrap past Sunday: fri-mon is Fri, Sat, Sun, Mon.
        span = (stop - start) % 7
        days.update((start - 1 + i) % 7 + 1 for i in range(span + 1))
    return sorted(days)


CleanText = Annotated[str, AfterValidator(clean_text)]
Int4 = Annotated[int, Field(ge=-(2**31), le=2**31 - 1)]
Delay = Annotated[float, Field(ge=0, allow_inf_nan=False)]


class CreateCampaignArgs(BaseModel):
    """`campaign create` arguments, checked for shape; the schema's CHECKs judge ranges."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=False)

    name: CleanText
    service_name: CleanText
    caller_id: CleanText | None = None
    batch_size: Int4 | None = None
    calls_per_second: Annotated[float, Field(allow_inf_nan=False)] | None = None
    max_concurrent_calls: Int4 | None = None
    max_attempts: Int4 | None = None
    retry_delays: (
        Annotated[dict[str, Delay], BeforeValidator(_retry_delays), AfterValidator(_known_causes)]
        | None
    ) = None
    default_country: Annotated[CleanText, AfterValidator(country_code)] | None = None
    default_timezone: Annotated[CleanText, AfterValidator(_zone)] | None = None
    priority: Int4 | None = None
    window_start: Annotated[str, AfterValidator(_window_start)] | None = None
    window_end: Annotated[str, AfterValidator(_window_end)] | None = None
    window_days: (
        Annotated[
            list[Annotated[int, Field(ge=1, le=7)]],
            BeforeValidator(_window_days),
            Field(min_length=1),
        ]
        | None
    ) = None
    paused: bool = False

    @model_validator(mode="after")
    def _window_not_empty(self) -> Self:
        if self.window_start is not None and self.window_start == self.window_end:
            raise ValueError(
                "window_start and window_end are equal: the window would be empty "
                "(for any time of day use 00:00-24:00)"
            )
        return self

    def to_new_campaign(self) -> admin.NewCampaign:
        return admin.NewCampaign(**self.model_dump())


def validation_problem(exc: ValidationError) -> str:
    err = exc.errors(include_url=False, include_input=False)[0]
    field = str(err["loc"][0]) if err["loc"] else ""
    message = str(err["msg"]).removeprefix("Value error, ")
    if not field:
        return message
    where = {"name": "NAME", "service_name": "--service"}.get(field, "--" + field.replace("_", "-"))
    return f"{where}: {message}"
