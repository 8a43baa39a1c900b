"""What service_start can dial (§4): destinations, telephone numbers, caller IDs
and extra SIP headers, checked with phonenumbers directly so that the engine's
own checks are not reused here (one shared bug would hide on both sides)."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from typing import Any, Final
from urllib.parse import urlsplit

import phonenumbers

from campaign import assumptions

DESTINATION_PREFIXES: Final = frozenset({"tel", "sip", "loc", "webrtc", "wss", "con"})

# [doc] §4: only ASCII digits, optionally separated by single '-'.
_TELEPHONE = re.compile(r"[0-9]+(?:-[0-9]+)*", re.ASCII)
DIGITS: Final = re.compile(r"[0-9]+", re.ASCII)
_SIP_USER_AT_HOST = re.compile(r"[^@\s]+@[^@\s]+")
# RFC 3261 token characters, the only ones a SIP header name may use.
_SIP_HEADER_NAME = re.compile(r"[A-Za-z0-9\-.!%*_+`'~]+", re.ASCII)
_NOT_TELEPHONE_SPELLING = re.compile(r"[\s\-().]")
_NUMBER_CACHE_SIZE: Final = 200_000


def destination_key(destination: str) -> str:
    """A destination compared as Aculab dials it: telephone numbers by their digits
    however spelt ("+44 1908 273800", "tel:441908273800", "44-1908-273800"),
    anything else by its exact string."""
    number = destination.strip()
    number = number.removeprefix("tel:")
    number = _NOT_TELEPHONE_SPELLING.sub("", number).removeprefix("+")
    if DIGITS.fullmatch(number):
        return "tel:" + number
    return destination


def telephone_problem(digits: str) -> str | None:
    """Why `digits` (international form, no '+') cannot be called, if it cannot."""
    if digits.startswith("0"):
        return "a telephone number must be in full international form, without a leading 0"
    try:
        parsed = phonenumbers.parse("+" + digits, None)
    except phonenumbers.NumberParseException:
        return "not a valid international telephone number"
    # number_type is UNKNOWN exactly when is_valid_number is false; asking once
    # halves the cost of the simulator's hottest path.
    kind = phonenumbers.number_type(parsed)
    if kind == phonenumbers.PhoneNumberType.UNKNOWN:
        return "not a valid international telephone number"
    if kind == phonenumbers.PhoneNumberType.PREMIUM_RATE:
        return "premium-rate numbers cannot be called"
    return None


def classify_destination(
    to: str, telephone_problem: Callable[[str], str | None] = telephone_problem
) -> tuple[bool, str | None]:
    """(is a telephone number, problem) for a `to` value, following §4."""
    prefix, colon, rest = to.partition(":")
    if colon and prefix in DESTINATION_PREFIXES:
        if prefix == "tel":
            body = rest.removeprefix("+")
            if not _TELEPHONE.fullmatch(body):
                return True, (
                    "tel: needs a telephone number (digits, optionally separated by "
                    "single '-', with an optional leading '+')"
                )
            return True, telephone_problem(body.replace("-", ""))
        if prefix == "sip":
            if not _SIP_USER_AT_HOST.fullmatch(rest):
                return False, "sip: needs user@host"
            return False, None
        if prefix == "wss":
            parts = urlsplit(to)
            if parts.scheme != "wss" or not parts.netloc:
                return False, "wss: needs a secure websocket URL (wss://host/...)"
            return False, None
        if not rest.strip():
            return False, f"{prefix}: needs a name after the prefix"
        return False, None
    if _TELEPHONE.fullmatch(to):
        return True, telephone_problem(to.replace("-", ""))
    if to.startswith("+") and _TELEPHONE.fullmatch(to[1:]):
        return False, "a leading '+' is only allowed after the tel: prefix"
    if not _SIP_USER_AT_HOST.fullmatch(to):
        return False, "not a telephone number, so a SIP address, which needs user@host"
    return False, None


class NumberChecks:
    """telephone_problem with a memory, and the caller-ID rule built on it."""

    def __init__(self, validated_caller_ids: Callable[[], frozenset[str] | None]) -> None:
        # A callable: the account's configuration may change while it runs.
        self._validated_caller_ids = validated_caller_ids
        self._number_problems: dict[str, str | None] = {}

    def telephone_problem(self, digits: str) -> str | None:
        # The same caller ID comes with every call, and campaigns redial the same
        # numbers; remembering answers keeps phonenumbers off the hot path.
        known = self._number_problems
        if digits not in known:
            if len(known) >= _NUMBER_CACHE_SIZE:
                known.clear()
            known[digits] = telephone_problem(digits)
        return known[digits]

    def caller_id_problem(self, caller: str) -> str | None:
        if not DIGITS.fullmatch(caller) or caller.startswith("0"):
            return (
                "a validated caller ID is a full international number of digits only, "
                "without a leading '+' or 0"
            )
        allowed = self._validated_caller_ids()
        if allowed is not None:
            return None if caller in allowed else "not one of the account's validated caller IDs"
        if self.telephone_problem(caller) is not None:
            return "not a valid international number, so not a validated caller ID"
        return None


def sip_header_problems(headers: Any) -> Iterator[str]:
    if not isinstance(headers, list):
        yield "extra_sip_headers: must be a list of {name, value} objects"
        return
    for position, header in enumerate(headers):
        where = f"extra_sip_headers[{position}]"
        if not isinstance(header, dict) or set(header) != assumptions.EXTRA_SIP_HEADER_KEYS:
            yield f"{where}: must be an object with exactly name and value"
            continue
        name, value = header["name"], header["value"]
        if not isinstance(name, str) or not _SIP_HEADER_NAME.fullmatch(name):
            yield f"{where}: name must be a SIP header name (a token)"
        if not isinstance(value, str) or "\r" in value or "\n" in value:
            yield f"{where}: value must be a string on one line"
