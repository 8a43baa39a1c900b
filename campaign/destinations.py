"""Call destinations: what a contact's `to` value means and what is sent to Aculab.

Aculab decides the kind of a `to` value by its own rule (docs/aculab.md, destinations): an
explicit prefix wins, a value of only digits (single '-' between groups) is a
telephone number, anything else is a SIP address. Values loaded from CRMs are
messier than that ("+44 (1908) 273-800"), so telephone numbers are normalised
here, once, to the bare international digits Aculab expects. Everything the
engine needs later (do-not-call keys, duplicate detection, calling windows)
comes from the same parse, so two spellings of one number can never be
treated as two contacts.

`parse_destination` never raises: a bad row becomes a `Rejected` with a reason
that is safe to log (it never contains the full number).
"""

from __future__ import annotations

import functools
import ipaddress
import re
import unicodedata
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Final, Literal

import phonenumbers
from phonenumbers import timezone as pn_timezone
from phonenumbers.phonemetadata import PhoneMetadata
from phonenumbers.tzdata import TIMEZONE_DATA

Kind = Literal["tel", "sip", "loc", "webrtc", "wss", "con"]

KINDS: Final[tuple[Kind, ...]] = ("tel", "sip", "loc", "webrtc", "wss", "con")

# Longer values are not addresses anyone dials; the cap also bounds the work
# phonenumbers does on hostile input.
MAX_LENGTH: Final = 256

NATIONAL_NEEDS_REGION: Final = "national format (leading 0) needs the campaign's default country"

_DIGITS: Final = frozenset("0123456789")
_NOT_DIGITS: Final = re.compile(r"[^0-9]")

# Aculab's rule, ASCII digits only: Python's \d would also accept other scripts.
_ACULAB_TELEPHONE: Final = re.compile(r"[0-9]+(?:-[0-9]+)*")

# What CRM exports put in a phone column: an optional leading '+', digits and
# spaces, dots, parentheses or '-' between them. Letters and '@' are never
# part of it, so SIP-looking values are not mistaken for numbers.
_PHONE_SHAPE: Final = re.compile(r"\+?[0-9\s.()\-]+")

# A DNS name with at least two labels and an alphabetic top-level label, so a
# vanity number such as "1-800-FLOWERS" is not taken for a SIP host.
_LABEL: Final = r"[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?"
_HOST_NAME: Final = re.compile(rf"(?:{_LABEL}\.)+[A-Za-z](?:[A-Za-z0-9-]*[A-Za-z0-9])?\.?")

# Unicode categories refused anywhere in a value: C0/C1 controls (log and CSV
# injection), invisible format characters such as bidi overrides (a value that
# displays differently from what is dialled) and lone surrogates (cannot be
# encoded to UTF-8 for the database or the HTTP request).
_UNSAFE_CATEGORIES: Final = frozenset({"Cc", "Cf", "Cs"})

_NOT_POSSIBLE_TEXT: Final[Mapping[int, str]] = MappingProxyType(
    {
        phonenumbers.ValidationResult.IS_POSSIBLE_LOCAL_ONLY: "local number only",
        phonenumbers.ValidationResult.INVALID_COUNTRY_CODE: "invalid country code",
        phonenumbers.ValidationResult.TOO_SHORT: "too short",
        phonenumbers.ValidationResult.TOO_LONG: "too long",
        phonenumbers.ValidationResult.INVALID_LENGTH: "invalid length",
    }
)

_PARSE_ERROR_TEXT: Final[Mapping[int, str]] = MappingProxyType(
    {
        phonenumbers.NumberParseException.INVALID_COUNTRY_CODE: "invalid country code",
        # The shape is checked before parsing, so phonenumbers only says "not
        # a number" for fewer digits than any number has.
        phonenumbers.NumberParseException.NOT_A_NUMBER: "too short",
        phonenumbers.NumberParseException.TOO_SHORT_AFTER_IDD: "too short",
        phonenumbers.NumberParseException.TOO_SHORT_NSN: "too short",
        phonenumbers.NumberParseException.TOO_LONG: "too long",
    }
)

# phonenumbers answers this when it cannot place a number; a calling window
# cannot be checked against it, so it is dropped and the caller fails closed.
_UNKNOWN_ZONE: Final = "Etc/Unknown"


@dataclass(frozen=True, slots=True)
class Destination:
    """A destination the engine may call."""

    kind: Kind
    # Exactly what goes into the rest_calls `to` field.
    to: str
    # Telephone only: international digits without '+' (never a leading 0);
    # the key for do-not-call lookups and duplicate detection.
    number: str | None = None
    # Telephone only: IANA zones phonenumbers gives for the number; empty when
    # unknown (the calling-window check then fails closed).
    timezones: tuple[str, ...] = ()

    @property
    def key(self) -> str:
        """Identity for duplicate detection within a campaign.

        Telephones by number, so "+44 1908 273800" and "tel:441908273800" meet.
        Other kinds by "kind:value"; for SIP only the host is case-folded
        (DNS names are case-insensitive, SIP user parts are not), and the bare
        and `sip:` spellings of one address share a key.
        """
        if self.number is not None:
            return self.number
        if self.kind == "sip":
            address = self.to[4:] if self.to[:4].lower() == "sip:" else self.to
            user, at, host = address.rpartition("@")
            return f"sip:{user}{at}{host.casefold()}"
        return self.to

    @property
    def region(self) -> str | None:
        """Telephone only: ISO 3166 alpha-2 code of the number's country.

        None for non-geographic ranges such as +800 and for other kinds. Worked
        out on demand: the engine itself never needs it on the claim path.
        """
        if self.number is None:
            return None
        parsed = phonenumbers.parse("+" + self.number, None)
        return _iso_region(phonenumbers.region_code_for_number(parsed))

    @property
    def is_telephone(self) -> bool:
        return self.kind == "tel"


@dataclass(frozen=True, slots=True)
class Rejected:
    """Why a value cannot be called. Safe to log: never holds a full number."""

    reason: str


def classify(raw: str) -> Kind:
    """The kind Aculab itself will give `raw` when it is sent as `to` (§4).

    Applied to the value as sent (no trimming), because that is what Aculab
    sees. Prefixes are matched case-insensitively, like parse_destination.
    """
    prefixed = _prefix_kind(raw)
    if prefixed is not None:
        return prefixed[0]
    if _ACULAB_TELEPHONE.fullmatch(raw):
        return "tel"
    return "sip"


def parse_destination(raw: str, *, default_region: str | None = None) -> Destination | Rejected:
    """Validate and normalise one destination as loaded from a contact list.

    `default_region` is the campaign's country for national-format numbers
    (leading 0 or an international "00" prefix); without it such numbers are
    rejected, because guessing the country would call the wrong person.
    Never raises for any str.
    """
    region: str | None = None
    if default_region is not None:
        region = _known_region(default_region)
        if region is None:
            # Checked for every value, so a misconfigured campaign fails on
            # every row the same way instead of only on national numbers.
            shown = repr(default_region[:16])
            return Rejected(
                f"unknown default country {shown}: expected an ISO 3166 alpha-2 code such as 'GB'"
            )

    value = raw.strip()
    if not value:
        return Rejected("destination is empty")
    if len(value) > MAX_LENGTH:
        return Rejected(f"destination is longer than {MAX_LENGTH} characters")
    # Printable ASCII holds none of the unsafe categories: the common case skips
    # the per-character lookup.
    if not (value.isascii() and value.isprintable()) and any(
        unicodedata.category(c) in _UNSAFE_CATEGORIES for c in value
    ):
        return Rejected("destination contains control or invisible formatting characters")

    prefixed = _prefix_kind(value)
    if prefixed is not None:
        kind, rest = prefixed
        if kind == "tel":
            return _parse_telephone(rest.strip(), region, tel_prefix=True)
        if kind == "sip":
            return _parse_sip(rest, bare=False)
        if kind == "wss":
            return _parse_wss(rest)
        return _parse_name(kind, rest)

    if _PHONE_SHAPE.fullmatch(value) and not _is_ipv4(value):
        return _parse_telephone(value, region, tel_prefix=False, shaped=True)
    if value.startswith("+") and "@" not in value:
        # No SIP address starts with '+'; this is a number with something
        # extra in it (an extension, letters), so say that rather than
        # complaining about it as a SIP address.
        return Rejected(
            "telephone number may contain only digits, a leading '+', "
            "spaces, dots, parentheses and '-'"
        )
    return _parse_sip(value, bare=True)


def mask(value: str) -> str:
    """`value` for logs: a short prefix and the last 2 characters, the rest '*'.

    "441908273800" -> "4419******00". Values under 8 characters are fully
    masked, 8-9 keep only 2 leading characters, so at least 4 are always
    hidden. Kept characters that are not printable are masked too, so a log
    line cannot be broken by them. Same length as `value`; never raises.
    """
    n = len(value)
    if n < 8:
        head, tail = 0, 0
    elif n < 10:
        head, tail = 2, 2
    else:
        head, tail = 4, 2
    return "".join(
        c if (i < head or i >= n - tail) and c.isprintable() else "*" for i, c in enumerate(value)
    )


# Free text (an answer from Aculab, an operator's reason) can quote a destination in any
# spelling. Searched for, in this order at each position: an ISO date or date-time or an
# IPv4 address, left as it is (its digits would otherwise read as a number); an address
# with a dialling prefix or an '@'; a telephone number as people and CRMs write it, 7
# digits or more with at most two of ' .-()' between any two, not inside a longer word.
_KEPT_IN_TEXT: Final = (
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}"
    r"(?:[T ][0-9]{2}:[0-9]{2}(?::[0-9]{2}(?:\.[0-9]+)?)?(?:Z|[+-][0-9]{2}:?[0-9]{2})?)?"
    r"|(?<![\w.])[0-9]{1,3}(?:\.[0-9]{1,3}){3}(?![\w.])"
)
_ADDRESS_IN_TEXT: Final = (
    r"(?:\b(?:sips?|tel|loc|webrtc|con):|\bwss://)[^\s,;<>\"'()\[\]]+"
    r"|[^\s,;:<>\"'@()\[\]]+@[^\s,;<>\"'@()\[\]]+"
)
_NUMBER_IN_TEXT: Final = r"(?<![\w+])\+?[0-9](?:[ .()\-]{0,2}[0-9]){6,}(?!\w)"
_IN_TEXT: Final = re.compile(
    rf"(?P<kept>{_KEPT_IN_TEXT})|(?P<address>{_ADDRESS_IN_TEXT})|(?P<number>{_NUMBER_IN_TEXT})"
)


def mask_in_text(text: str) -> str:
    """`text` with every destination it may quote masked as `mask` does, for showing
    free text (an error from Aculab, a reason) where the logs' rules apply. Dates and
    times, IPv4 addresses, counts and ids under 7 digits are left as they are. Never
    raises."""
    return _IN_TEXT.sub(lambda m: m[0] if m["kept"] else mask(m[0]), text)


def zones_for_number(number: str) -> tuple[str, ...]:
    """IANA zones for international digits (a leading '+' is tolerated).

    Empty when the number is not parseable or phonenumbers cannot place it.
    """
    digits = number.removeprefix("+")
    if not digits or len(digits) > MAX_LENGTH or not _DIGITS.issuperset(digits):
        return ()
    try:
        parsed = phonenumbers.parse("+" + digits, None)
    except phonenumbers.NumberParseException:
        return ()
    return _zones(parsed)


def _prefix_kind(value: str) -> tuple[Kind, str] | None:
    """The explicit prefix kind and the rest after ':', if `value` has one."""
    head, colon, rest = value.partition(":")
    # isascii first: str.lower() maps some non-ASCII letters onto ASCII ones.
    if not colon or not head.isascii():
        return None
    lowered = head.lower()
    for kind in KINDS:
        if lowered == kind:
            return kind, rest
    return None


def _known_region(region: str) -> str | None:
    candidate = region.strip()
    if not candidate.isascii():
        return None
    candidate = candidate.upper()
    return candidate if candidate in phonenumbers.SUPPORTED_REGIONS else None


def _is_ipv4(value: str) -> bool:
    if value.count(".") != 3:  # cheap: most values are not dotted quads
        return False
    try:
        ipaddress.IPv4Address(value)
    except ValueError:
        return False
    return True


def _zones(parsed: phonenumbers.PhoneNumber) -> tuple[str, ...]:
    return _zones_of(pn_timezone.time_zones_for_number(parsed))


def _zones_of(found: Iterable[str]) -> tuple[str, ...]:
    return tuple(z for z in found if z != _UNKNOWN_ZONE)


def _parse_telephone(
    value: str, region: str | None, *, tel_prefix: bool, shaped: bool = False
) -> Destination | Rejected:
    """`shaped`: the caller has checked `value` against _PHONE_SHAPE already."""
    if not shaped and not _PHONE_SHAPE.fullmatch(value):
        return Rejected(
            "tel: needs a telephone number: only digits, a leading '+', "
            "spaces, dots, parentheses and '-'"
        )
    # Only ASCII digits and separators are left: most values are digits alone.
    digits = value if value.isdigit() else _NOT_DIGITS.sub("", value)
    if not digits:
        return Rejected("telephone number has no digits")

    # Separators carry no meaning once the shape is checked, so only the digits
    # are handed to phonenumbers; with '+' it also drops a "(0)" trunk prefix.
    international = value.startswith("+") or not digits.startswith("0")
    if international:
        text, parse_region = "+" + digits, None
    elif region is None:
        # Covers "00" as well: which international prefix applies depends on
        # the country the list was written in.
        return Rejected(f"{NATIONAL_NEEDS_REGION}: {_hint(digits, international)}")
    else:
        text, parse_region = digits, region

    try:
        parsed = (
            _parse_international(digits) if parse_region is None else None
        ) or phonenumbers.parse(text, parse_region)
    except phonenumbers.NumberParseException as exc:
        why = _PARSE_ERROR_TEXT.get(exc.error_type, "not a number")
        return Rejected(f"not a possible telephone number ({why}): {_hint(digits, international)}")

    possible = _possibility(parsed)
    if possible != phonenumbers.ValidationResult.IS_POSSIBLE:
        why = _NOT_POSSIBLE_TEXT.get(possible, "invalid")
        return Rejected(f"not a possible telephone number ({why}): {_hint(digits, international)}")

    number = phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164)[1:]
    # This is the hot path of every claim and of every row `campaign load` reads, so
    # the number is classified once: a valid number is exactly one whose type is known
    # (is_valid_number, number_type and time_zones_for_number would each classify it
    # again; tests/test_destinations.py holds the equivalence over generated numbers).
    number_type = classify_number(parsed)
    if number_type == phonenumbers.PhoneNumberType.UNKNOWN:
        code = parsed.country_code
        country = (
            None if code is None else _iso_region(phonenumbers.region_code_for_country_code(code))
        )
        return Rejected(
            f"not a valid telephone number for {country or 'any region'}: +{mask(number)}"
        )
    # Aculab's outbound provider refuses these (§4); rejecting at load time
    # keeps them out of the dial queue and out of the CPS budget.
    if number_type == phonenumbers.PhoneNumberType.PREMIUM_RATE:
        return Rejected(f"premium-rate numbers cannot be called: +{mask(number)}")

    return Destination(
        kind="tel",
        to=("tel:" + number) if tel_prefix else number,
        number=number,
        timezones=_zones_of_valid(parsed, number_type, number),
    )


def _hint(digits: str, international: bool) -> str:
    return ("+" if international else "") + mask(digits)


def _zones_of_valid(
    parsed: phonenumbers.PhoneNumber, number_type: int, number: str
) -> tuple[str, ...]:
    """time_zones_for_number for a number already known valid, of type `number_type`,
    whose international digits are `number`."""
    code = parsed.country_code
    if code is None:  # parse() always sets it; this keeps the types honest
        return _zones(parsed)
    if phonenumbers.is_number_type_geographical(number_type, code):
        return _geographic_zones(number)
    # phonenumbers gives mobile and other non-geographic numbers their country's
    # zones, which depend on the country code alone: looked up once per code.
    zones = _COUNTRY_ZONES.get(code)
    if zones is None:
        zones = _COUNTRY_ZONES.setdefault(code, _zones(parsed))
    return zones


def _geographic_zones(number: str) -> tuple[str, ...]:
    """time_zones_for_geographical_number for the number whose E.164 digits are `number`:
    the zones of its longest prefix in phonenumbers' table (without formatting it again)."""
    for length in _prefix_lengths(number[:2]):
        found = TIMEZONE_DATA.get(number[:length])
        if found is not None:
            return _zones_of(found)
    return ()


@functools.lru_cache(maxsize=128)
def _prefix_lengths(start: str) -> tuple[int, ...]:
    """The lengths of the table's prefixes a number starting with `start` can have,
    longest first: only those are worth looking up."""
    lengths = {len(p) for p in TIMEZONE_DATA if p.startswith(start) or p == start[:1]}
    return tuple(sorted(lengths, reverse=True))


# A memo of phonenumbers' static data (country code -> zones), not state: every
# entry is what time_zones_for_number answers for any non-geographic number of
# that country.
_COUNTRY_ZONES: dict[int, tuple[str, ...]] = {}


# --- "+" and international digits, as phonenumbers.parse reads them, faster ---------------
#
# phonenumbers.parse is written for any text a person may type (letters, extensions,
# RFC 3966, full-width digits); the engine hands it only "+" and ASCII digits, and for
# those, on most numbers, it does three things: take the country code (the first one,
# two or three digits that are one), check the national number's length, and strip a
# national prefix if the number starts with one. _parse_international does the first
# two and leaves every number that could start with a national prefix (or a leading 0,
# or an unusual length) to phonenumbers.parse. tests/test_destinations.py compares the
# two over generated numbers of every country code.

_MIN_NATIONAL: Final = 2  # phonenumberutil._MIN_LENGTH_FOR_NSN
_MAX_NATIONAL: Final = 17  # phonenumberutil._MAX_LENGTH_FOR_NSN
_MAX_COUNTRY_CODE: Final = 3  # phonenumberutil._MAX_LENGTH_COUNTRY_CODE


@functools.lru_cache(maxsize=512)
def _national_prefix(code: int) -> re.Pattern[str] | Literal[False] | None:
    """The pattern of the national prefix phonenumbers strips for `code`'s numbers;
    None when there is none; False when it has no metadata (left to phonenumbers)."""
    region = phonenumbers.region_code_for_country_code(code)
    metadata = PhoneMetadata.metadata_for_region_or_calling_code(code, region)
    if metadata is None:
        return False
    prefix = metadata.national_prefix_for_parsing
    return re.compile(prefix) if prefix else None


def _parse_international(digits: str) -> phonenumbers.PhoneNumber | None:
    """phonenumbers.parse("+" + digits, None) for ASCII `digits`, or None to say "ask it"."""
    if not _MIN_NATIONAL < len(digits) <= _MAX_COUNTRY_CODE + _MAX_NATIONAL:
        return None
    if digits[0] == "0":
        return None  # phonenumbers reads no country code there
    for length in range(1, _MAX_COUNTRY_CODE + 1):
        code = int(digits[:length])
        if code in phonenumbers.COUNTRY_CODE_TO_REGION_CODE:
            break
    else:
        return None
    national = digits[length:]
    if not _MIN_NATIONAL <= len(national) <= _MAX_NATIONAL or national[0] == "0":
        return None  # too short or long, or Italian leading zeros: phonenumbers decides
    prefix = _national_prefix(code)
    if prefix is False or (prefix is not None and prefix.match(national) is not None):
        return None  # it may be stripped (or transformed): phonenumbers decides
    return phonenumbers.PhoneNumber(country_code=code, national_number=int(national))


def _possibility(parsed: phonenumbers.PhoneNumber) -> int:
    """phonenumbers.is_possible_number_with_reason(parsed), which depends on the country
    code and the national number's length alone (_test_number_length): worked out once
    per pair."""
    code = parsed.country_code
    if code is None:
        return int(phonenumbers.is_possible_number_with_reason(parsed))
    return _possibility_of(code, len(phonenumbers.national_significant_number(parsed)))


@functools.lru_cache(maxsize=4096)
def _possibility_of(code: int, length: int) -> int:
    alike = phonenumbers.PhoneNumber(country_code=code, national_number=int("1" * length or "0"))
    return int(phonenumbers.is_possible_number_with_reason(alike))


# --- the number's type, as phonenumbers.number_type gives it, faster ------------------------
#
# phonenumbers.number_type matches the national number against up to eleven patterns
# per region, compiling (or looking up) each one every time, and for a country code
# shared by several regions (44: GB, GG, IM, JE; 1: the NANP) it does it twice, once to
# find the region and once for the type. At a million rows a load that costs more than
# the COPY. classify_number follows phonenumbers' own steps in its own order (see
# number_type, _region_code_for_number_from_list, _number_type_helper and
# _is_number_matching_desc in phonenumberutil.py), with each region's patterns compiled
# once per number length and the lengths a description rules out dropped up front.
# tests/test_destinations.py compares the two over every region's example numbers and
# generated ones.

_Type = phonenumbers.PhoneNumberType
# _number_type_helper's order: the first description that matches names the type.
_ORDERED_TYPES: Final = (
    ("premium_rate", _Type.PREMIUM_RATE),
    ("toll_free", _Type.TOLL_FREE),
    ("shared_cost", _Type.SHARED_COST),
    ("voip", _Type.VOIP),
    ("personal_number", _Type.PERSONAL_NUMBER),
    ("pager", _Type.PAGER),
    ("uan", _Type.UAN),
    ("voicemail", _Type.VOICEMAIL),
)


@dataclass(frozen=True, slots=True)
class _Descriptions:
    """One region's patterns that a national number of one length can match."""

    general: re.Pattern[str] | None
    ordered: tuple[tuple[int, re.Pattern[str]], ...]
    fixed_line: re.Pattern[str] | None
    mobile: re.Pattern[str] | None
    same_mobile_and_fixed_line: bool

    def type_of(self, national: str) -> int:
        """_number_type_helper(national, metadata)."""
        if self.general is None or self.general.fullmatch(national) is None:
            return _Type.UNKNOWN
        for kind, pattern in self.ordered:
            if pattern.fullmatch(national) is not None:
                return kind
        if self.fixed_line is not None and self.fixed_line.fullmatch(national) is not None:
            if self.same_mobile_and_fixed_line or (
                self.mobile is not None and self.mobile.fullmatch(national) is not None
            ):
                return _Type.FIXED_LINE_OR_MOBILE
            return _Type.FIXED_LINE
        if (
            not self.same_mobile_and_fixed_line
            and self.mobile is not None
            and self.mobile.fullmatch(national) is not None
        ):
            return _Type.MOBILE
        return _Type.UNKNOWN


def _pattern(desc: object, length: int) -> re.Pattern[str] | None:
    """The description's pattern, or None when it cannot match `length` digits
    (_is_number_matching_desc and _match_national_number: no description, a length it
    does not list, or no pattern all mean "does not match")."""
    if desc is None:
        return None
    lengths = getattr(desc, "possible_length", ())
    if lengths and length not in lengths:
        return None
    pattern = getattr(desc, "national_number_pattern", None)
    # _match: pattern.match and then a full match, i.e. a full match.
    return re.compile(pattern) if pattern else None


@functools.lru_cache(maxsize=4096)
def _descriptions(region: str, code: int, length: int) -> _Descriptions | None:
    metadata = PhoneMetadata.metadata_for_region_or_calling_code(code, region)
    if metadata is None:
        return None
    ordered = []
    for name, kind in _ORDERED_TYPES:
        pattern = _pattern(getattr(metadata, name), length)
        if pattern is not None:
            ordered.append((kind, pattern))
    return _Descriptions(
        general=_pattern(metadata.general_desc, length),
        ordered=tuple(ordered),
        fixed_line=_pattern(metadata.fixed_line, length),
        mobile=_pattern(metadata.mobile, length),
        same_mobile_and_fixed_line=bool(metadata.same_mobile_and_fixed_line_pattern),
    )


@functools.lru_cache(maxsize=512)
def _leading_digits(region: str) -> re.Pattern[str] | None:
    metadata = PhoneMetadata.metadata_for_region(region.upper(), None)
    leading = None if metadata is None else metadata.leading_digits
    return None if leading is None else re.compile(leading)


def classify_number(parsed: phonenumbers.PhoneNumber) -> int:
    """phonenumbers.number_type(parsed): PhoneNumberType.UNKNOWN for an invalid number."""
    code = parsed.country_code
    regions = None if code is None else phonenumbers.COUNTRY_CODE_TO_REGION_CODE.get(code)
    if code is None or regions is None:
        return _Type.UNKNOWN
    national = phonenumbers.national_significant_number(parsed)
    length = len(national)
    if len(regions) == 1:
        region = regions[0]
    else:
        for candidate in regions:
            if PhoneMetadata.metadata_for_region(candidate.upper(), None) is None:
                continue
            leading = _leading_digits(candidate)
            if leading is not None:
                if leading.match(national) is not None:
                    region = candidate
                    break
                continue
            found = _descriptions(candidate.upper(), code, length)
            kind = _Type.UNKNOWN if found is None else found.type_of(national)
            if kind != _Type.UNKNOWN:
                # number_type would classify it again against the same metadata.
                return kind
        else:
            return _Type.UNKNOWN
    descriptions = _descriptions(region, code, length)
    return _Type.UNKNOWN if descriptions is None else descriptions.type_of(national)


def _iso_region(region: str | None) -> str | None:
    # phonenumbers says "ZZ" for unknown and "001" for non-geographic ranges;
    # neither is an ISO country.
    if region is None or region in ("ZZ", "001"):
        return None
    return region


def _parse_sip(address: str, *, bare: bool) -> Destination | Rejected:
    what = "SIP address" if bare else "sip: address"
    if not address:
        return Rejected(f"{what} is empty")
    if any(c.isspace() for c in address):
        return Rejected(f"{what} contains whitespace")
    if "@" in address:
        user, _, host = address.partition("@")
        if "@" in host:
            return Rejected(f"{what} has more than one '@'")
        if not user:
            return Rejected(f"{what} has an empty user part before '@'")
        if not host:
            return Rejected(f"{what} has an empty host part after '@'")
    elif not bare:
        return Rejected("sip: address must be user@host")
    elif not _looks_like_host(address):
        # A bare value is SIP by Aculab's rule only by elimination; without an
        # '@' it must at least be a host Aculab could route to.
        return Rejected(
            "neither a telephone number nor a SIP address (expected user@host or a host name)"
        )
    # A bare address is sent as given: Aculab documents `sip:` for
    # user@address only, while a bare value is SIP by its default rule.
    return Destination(kind="sip", to=address if bare else "sip:" + address)


def _looks_like_host(value: str) -> bool:
    """A DNS name or IP literal, with optional ":port" and ";params"."""
    hostport = value.partition(";")[0]
    if hostport.startswith("["):
        literal, bracket, port = hostport[1:].partition("]")
        if not bracket or not _is_port_suffix(port):
            return False
        try:
            ipaddress.IPv6Address(literal)
        except ValueError:
            return False
        return True
    host, colon, port = hostport.rpartition(":")
    if not colon:
        host, port = hostport, ""
    elif not _is_port_suffix(":" + port):
        return False
    return _is_ipv4(host) or _HOST_NAME.fullmatch(host) is not None


def _is_port_suffix(text: str) -> bool:
    if not text:
        return True
    port = text[1:]
    return text[0] == ":" and 0 < len(port) <= 5 and _DIGITS.issuperset(port)


def _parse_wss(rest: str) -> Destination | Rejected:
    if not rest.startswith("//"):
        return Rejected("wss: must be a URL of the form wss://host/path")
    if any(c.isspace() for c in rest):
        return Rejected("wss: URL contains whitespace")
    authority = re.split(r"[/?#]", rest[2:], maxsplit=1)[0]
    if not authority:
        return Rejected("wss: URL has no host")
    return Destination(kind="wss", to="wss:" + rest)


def _parse_name(kind: Kind, name: str) -> Destination | Rejected:
    if not name:
        return Rejected(f"{kind}: needs a name")
    if any(c.isspace() for c in name):
        return Rejected(f"{kind}: name contains whitespace")
    return Destination(kind=kind, to=f"{kind}:{name}")
