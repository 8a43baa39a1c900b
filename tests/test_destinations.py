"""Destinations: Aculab's `to` rules, CRM-style numbers, and the safety of what is logged."""

from __future__ import annotations

import phonenumbers
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from campaign.destinations import (
    NATIONAL_NEEDS_REGION,
    Destination,
    Rejected,
    _parse_international,
    _possibility,
    classify,
    classify_number,
    mask,
    mask_in_text,
    parse_destination,
    zones_for_number,
)

UK = "441908273800"
PROPERTY_SETTINGS = settings(max_examples=300, deadline=None)


def accepted(raw: str, *, default_region: str | None = None) -> Destination:
    result = parse_destination(raw, default_region=default_region)
    assert isinstance(result, Destination), result
    return result


def rejected(raw: str, *, default_region: str | None = None) -> str:
    result = parse_destination(raw, default_region=default_region)
    assert isinstance(result, Rejected), result
    return result.reason


def ascii_digits(text: str) -> str:
    return "".join(c for c in text if c in "0123456789")


# --- classify: Aculab's own rule (docs/aculab.md) ---------------------------------------


@pytest.mark.parametrize(
    ("raw", "kind"),
    [
        ("tel:441908273800", "tel"),
        ("sip:contact@example.com", "sip"),
        ("loc:my_inbound_service", "loc"),
        ("webrtc:clientId", "webrtc"),
        ("wss://www.example.com/mywsapp", "wss"),
        ("con:MyConferenceRoom", "con"),
        ("TEL:441908273800", "tel"),
        ("Con:Room", "con"),
    ],
)
def test_classify_an_explicit_prefix_decides_the_kind(raw: str, kind: str) -> None:
    assert classify(raw) == kind


@pytest.mark.parametrize("raw", ["441908273800", "44-1908-273800", "4-4-1-9", "0"])
def test_classify_digits_with_single_dashes_are_telephone(raw: str) -> None:
    assert classify(raw) == "tel"


@pytest.mark.parametrize(
    "raw",
    [
        "44--1908273800",  # a double '-' is not a single separator
        "-441908273800",
        "441908273800-",
        "+441908273800",  # Aculab's bare rule has no '+'
        "44 1908 273800",
        "bob@example.com",
        "example.com",
        "٤٤١٩٠٨",  # digits of another script are not Aculab digits
        "",
    ],
)
def test_classify_everything_else_without_a_prefix_is_sip(raw: str) -> None:
    assert classify(raw) == "sip"


# --- each prefix through parse_destination ------------------------------------------------


def test_tel_prefix_is_normalised_and_kept_in_to() -> None:
    dest = accepted("tel:+44 1908 273800")
    assert (dest.kind, dest.to, dest.number, dest.region) == ("tel", "tel:" + UK, UK, "GB")
    assert dest.is_telephone


def test_prefixes_match_case_insensitively_and_are_sent_lowercase() -> None:
    assert accepted("TEL:441908273800").to == "tel:" + UK
    assert accepted("SIP:Bob@Example.com").to == "sip:Bob@Example.com"
    assert accepted("Loc:My_Service").to == "loc:My_Service"


def test_sip_prefix_needs_user_at_host() -> None:
    dest = accepted("sip:contact@example.com")
    assert (dest.kind, dest.to, dest.number, dest.timezones) == (
        "sip",
        "sip:contact@example.com",
        None,
        (),
    )
    assert not dest.is_telephone
    assert "user@host" in rejected("sip:contact")
    assert "empty user" in rejected("sip:@example.com")
    assert "empty host" in rejected("sip:contact@")
    assert "empty" in rejected("sip:")
    assert "whitespace" in rejected("sip:con tact@example.com")
    assert "more than one" in rejected("sip:a@b@example.com")


@pytest.mark.parametrize(
    ("raw", "kind"),
    [
        ("loc:my_inbound_service", "loc"),
        ("webrtc:clientId", "webrtc"),
        ("con:MyConferenceRoom", "con"),
    ],
)
def test_named_prefixes_keep_the_name_as_given(raw: str, kind: str) -> None:
    dest = accepted(raw)
    assert (dest.kind, dest.to) == (kind, raw)


@pytest.mark.parametrize("prefix", ["loc:", "webrtc:", "con:"])
def test_named_prefixes_reject_empty_or_spaced_names(prefix: str) -> None:
    assert "needs a name" in rejected(prefix)
    assert "whitespace" in rejected(prefix + "my room")


def test_wss_prefix_needs_a_wss_url_with_a_host() -> None:
    dest = accepted("wss://www.example.com/mywsapp")
    assert (dest.kind, dest.to) == ("wss", "wss://www.example.com/mywsapp")
    assert "wss://" in rejected("wss:www.example.com")
    assert "no host" in rejected("wss:///path")
    assert "whitespace" in rejected("wss://www.example.com/my app")


# --- telephone numbers ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw",
    ["441908273800", "44-1908-273800", "+441908273800", "+44 1908 273800", "+44 (1908) 273-800"],
)
def test_telephone_forms_are_sent_as_bare_international_digits(raw: str) -> None:
    dest = accepted(raw)
    assert (dest.kind, dest.to, dest.number, dest.region) == ("tel", UK, UK, "GB")


def test_common_separators_including_a_uk_trunk_zero_in_parentheses_are_accepted() -> None:
    assert accepted("+44 (0)1908 273.800").number == UK
    assert accepted("  +44\u00a01908 273800\t").number == UK  # NBSP from spreadsheets, padding


def test_double_dash_is_sip_to_aculab_but_sent_as_a_clean_number() -> None:
    # Aculab would route "44--1908273800" as a SIP address; the engine sends
    # the digits instead, so what Aculab sees matches what was meant.
    assert classify("44--1908273800") == "sip"
    dest = accepted("44--1908273800")
    assert dest.to == UK
    assert classify(dest.to) == "tel"


def test_sip_looking_values_are_not_taken_for_numbers() -> None:
    assert accepted("441908273800@example.com").kind == "sip"
    assert accepted("bob@example.com").to == "bob@example.com"
    assert accepted("pbx.example.com").kind == "sip"
    assert accepted("192.0.2.10").kind == "sip"
    assert accepted("[2001:db8::1]:5061").kind == "sip"
    assert "neither a telephone number nor a SIP address" in rejected("1-800-FLOWERS")
    assert "neither" in rejected("bob")


def test_number_with_an_extension_is_rejected_as_a_telephone_number() -> None:
    assert "telephone number may contain only" in rejected("+44 1908 273800 ext 12")
    assert "tel: needs a telephone number" in rejected("tel:441908273800;ext=12")


@pytest.mark.parametrize("raw", ["01908 273800", "(01908) 273800", "0044 1908 273800"])
def test_national_format_without_a_default_country_is_rejected(raw: str) -> None:
    assert rejected(raw).startswith(NATIONAL_NEEDS_REGION)
    assert rejected("tel:" + raw).startswith(NATIONAL_NEEDS_REGION)


@pytest.mark.parametrize("raw", ["01908 273800", "(01908) 273-800", "0044 1908 273800"])
def test_national_format_with_a_default_country_is_normalised_to_international(raw: str) -> None:
    dest = accepted(raw, default_region="GB")
    assert (dest.to, dest.number, dest.region) == (UK, UK, "GB")


def test_international_prefix_of_the_default_country_is_understood() -> None:
    assert accepted("011 44 1908 273800", default_region="US").number == UK


def test_default_country_does_not_change_international_numbers() -> None:
    assert accepted("+1 212 555 0100", default_region="GB").number == "12125550100"


def test_default_country_is_case_insensitive() -> None:
    assert accepted("01908 273800", default_region="gb").number == UK


@pytest.mark.parametrize("region", ["ZZ", "UK", "001", "", "Great Britain", "ß"])
def test_unknown_default_country_is_rejected_naming_it(region: str) -> None:
    reason = rejected("01908 273800", default_region=region)
    assert "unknown default country" in reason
    assert repr(region) in reason


def test_premium_rate_numbers_are_rejected() -> None:
    premium = phonenumbers.parse("+44 909 8790000")
    assert phonenumbers.number_type(premium) == phonenumbers.PhoneNumberType.PREMIUM_RATE
    reason = rejected("+44 909 8790000")
    assert reason.startswith("premium-rate numbers cannot be called")
    assert "449098790000" not in reason


@pytest.mark.parametrize(
    ("raw", "why"),
    [
        ("+44 123", "too short"),
        ("+4419082738001234567", "too long"),
        ("+999 1234567", "invalid country code"),
        ("+0 1234567", "invalid country code"),
        ("1", "too short"),
    ],
)
def test_impossible_numbers_are_rejected_with_the_cause(raw: str, why: str) -> None:
    assert rejected(raw) == rejected(raw)  # deterministic
    assert rejected(raw).startswith(f"not a possible telephone number ({why})")


@pytest.mark.parametrize(
    ("raw", "region"),
    [("+44 7700 900123", "GB"), ("+1 999 555 0100", "US")],
)
def test_possible_but_unassigned_numbers_are_rejected_as_invalid(raw: str, region: str) -> None:
    assert rejected(raw).startswith(f"not a valid telephone number for {region}")


def test_empty_long_and_control_character_values_are_rejected() -> None:
    assert rejected("") == "destination is empty"
    assert rejected(" \t\n") == "destination is empty"
    assert "longer than 256" in rejected("sip:a@" + "b" * 300)
    assert "control" in rejected("sip:bob@example.com\x00")
    assert "control" in rejected("44190\n8273800")
    assert "control" in rejected("bob@exa\u202emple.com")  # bidi override


def test_non_geographic_numbers_have_no_region() -> None:
    dest = accepted("+800 1234 5678")
    assert dest.region is None
    assert dest.timezones == ()


# --- keys -----------------------------------------------------------------------------------


def test_key_is_the_same_for_every_spelling_of_one_number() -> None:
    spellings = ["+44 1908 273800", UK, "tel:" + UK, "44-1908-273800", "tel:+44 (0)1908 273800"]
    assert {accepted(raw).key for raw in spellings} == {UK}
    assert accepted("01908 273800", default_region="GB").key == UK


def test_sip_key_case_folds_the_host_only() -> None:
    a = accepted("sip:Bob@Example.COM")
    b = accepted("Bob@example.com")
    c = accepted("sip:bob@example.com")
    assert a.key == b.key == "sip:Bob@example.com"
    assert a.key != c.key
    assert accepted("PBX.Example.com").key == "sip:pbx.example.com"


def test_other_kinds_key_on_kind_and_value() -> None:
    assert accepted("con:Room").key == "con:Room"
    assert accepted("con:Room").key != accepted("loc:Room").key
    assert accepted("con:Room").key != accepted("con:room").key


# --- time zones -----------------------------------------------------------------------------


def test_uk_number_is_in_london() -> None:
    assert accepted("+44 1908 273800").timezones == ("Europe/London",)
    assert zones_for_number(UK) == ("Europe/London",)


def test_us_numbers_get_their_own_zone() -> None:
    assert accepted("+1 212 555 0100").timezones == ("America/New_York",)
    assert zones_for_number("16502530000") == ("America/Los_Angeles",)


@pytest.mark.parametrize(
    ("number", "some_zones"),
    [
        ("18002345678", {"America/New_York", "America/Los_Angeles", "Pacific/Honolulu"}),
        ("78005553535", {"Europe/Moscow", "Asia/Vladivostok"}),
        ("611300123456", {"Australia/Sydney", "Australia/Perth"}),
    ],
)
def test_non_geographic_ranges_map_to_several_zones(number: str, some_zones: set[str]) -> None:
    zones = zones_for_number(number)
    assert some_zones <= set(zones)
    assert accepted(number).timezones == zones


@pytest.mark.parametrize("number", ["", "+", "abc", "4419O8273800", "999123", "80012345678"])
def test_unknown_or_unplaceable_numbers_have_no_zone(number: str) -> None:
    assert zones_for_number(number) == ()


def test_zones_tolerate_a_leading_plus() -> None:
    assert zones_for_number("+" + UK) == ("Europe/London",)


# --- every country's example numbers --------------------------------------------------------


@pytest.mark.parametrize("region", sorted(phonenumbers.SUPPORTED_REGIONS))
def test_every_country_example_number_round_trips(region: str) -> None:
    for kind in (phonenumbers.PhoneNumberType.FIXED_LINE, phonenumbers.PhoneNumberType.MOBILE):
        example = phonenumbers.example_number_for_type(region, kind)
        if example is None or not phonenumbers.is_valid_number(example):
            continue
        expected = phonenumbers.format_number(example, phonenumbers.PhoneNumberFormat.E164)[1:]
        international = phonenumbers.format_number(
            example, phonenumbers.PhoneNumberFormat.INTERNATIONAL
        )
        dest = accepted(international)
        assert dest.number == expected
        assert dest.region == phonenumbers.region_code_for_number(example)
        national = phonenumbers.format_number(example, phonenumbers.PhoneNumberFormat.NATIONAL)
        if national.lstrip("(").startswith("0"):
            assert accepted(national, default_region=region).number == expected


# --- mask -----------------------------------------------------------------------------------


def test_mask_keeps_a_short_prefix_and_the_last_two() -> None:
    assert mask("441908273800") == "4419******00"
    assert mask("12345678") == "12****78"
    assert mask("1234567") == "*******"
    assert mask("") == ""


def test_mask_hides_unprintable_kept_characters() -> None:
    assert mask("\n23456789\x1b") == "*234****9*"
    assert "\n" not in mask("ab\ncdefghij\n")


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("[400] to: 441908273800 is not allowed", "[400] to: 4419******00 is not allowed"),
        ("call to +44 1908 273800: busy", "call to +44 *********00: busy"),
        ("+44 (0)1908 273-800", "+44 *************00"),
        ("tel:+441908273800 refused", "tel:***********00 refused"),
        ("sip:alice@example.com refused", "sip:***************om refused"),
        ("from bob@example.com", "from bob@*********om"),
        ("212.736.5000 busy", "212.******00 busy"),
    ],
)
def test_mask_in_text_masks_every_spelling_of_a_destination(text: str, shown: str) -> None:
    assert mask_in_text(text) == shown


@pytest.mark.parametrize(
    "text",
    [
        "outside the calling window; opens 2026-11-30T09:00:00+00:00 (09:00 Europe/London)",
        "first due 2026-11-30 09:00:00 UTC (in 4h35m)",
        "2026-11-30T09:00:00.123456+00:00",
        "cannot connect to 192.168.100.200:443",
        "1,234,567 contacts, batch 123456, 250.5/s, age 3h12m",
        "unique_id campaign-3-a1b2c3d41234567",
        "national format (leading 0) needs the campaign's default country: 0190*****01",
    ],
)
def test_mask_in_text_leaves_dates_addresses_counts_and_masked_numbers_alone(text: str) -> None:
    assert mask_in_text(text) == text


@PROPERTY_SETTINGS
@given(st.text(max_size=40), st.text(alphabet="0123456789", min_size=8, max_size=15))
def test_mask_in_text_never_shows_a_quoted_number_whole(before: str, number: str) -> None:
    shown = mask_in_text(f"{before} {number} busy")
    assert number not in shown


# --- properties -----------------------------------------------------------------------------

PREFIXES = st.sampled_from(
    ["", "tel:", "TEL:", "sip:", "Sip:", "loc:", "webrtc:", "wss:", "wss://", "con:", "+", "0"]
)
PHONEISH = st.text(alphabet="0123456789+-.() ", max_size=24)
REGIONS = st.one_of(st.none(), st.sampled_from(["GB", "US", "DE", "FR", "AU", "RU", "IT", "gb"]))
ANY_INPUT = st.one_of(
    st.text(max_size=300),
    st.builds(lambda p, t: p + t, PREFIXES, st.text(max_size=40)),
    st.builds(lambda p, t: p + t, PREFIXES, PHONEISH),
    st.from_regex(r"\+?[1-9][0-9]{6,14}", fullmatch=True),
)


def check_telephone(dest: Destination) -> None:
    number = dest.number
    assert number is not None
    assert number
    assert set(number) <= set("0123456789")
    assert not number.startswith("0")
    assert dest.to in (number, "tel:" + number)
    assert dest.key == number
    assert "Etc/Unknown" not in dest.timezones
    again = parse_destination(number)
    assert isinstance(again, Destination)
    assert again.number == number
    assert again.to == number


@PROPERTY_SETTINGS
@given(raw=ANY_INPUT, region=REGIONS)
def test_parse_never_raises_and_returns_a_destination_or_a_rejection(
    raw: str, region: str | None
) -> None:
    result = parse_destination(raw, default_region=region)
    assert isinstance(result, Destination | Rejected)
    if isinstance(result, Rejected):
        assert result.reason
        return
    # What is sent is read by Aculab as the kind the engine decided.
    assert classify(result.to) == result.kind
    assert result.is_telephone == (result.number is not None)
    if result.is_telephone:
        check_telephone(result)
    else:
        assert (result.number, result.timezones, result.region) == (None, (), None)


@PROPERTY_SETTINGS
@given(raw=st.builds(lambda p, t: p + t, PREFIXES, PHONEISH), region=REGIONS)
def test_rejection_reasons_never_hold_the_whole_number(raw: str, region: str | None) -> None:
    result = parse_destination(raw, default_region=region)
    digits = ascii_digits(raw)
    if isinstance(result, Rejected) and len(digits) >= 8:
        assert digits not in ascii_digits(result.reason)


@PROPERTY_SETTINGS
@given(value=st.text(max_size=300))
def test_mask_reveals_at_most_a_prefix_and_the_last_two(value: str) -> None:
    masked = mask(value)
    assert len(masked) == len(value)
    revealed = [i for i, c in enumerate(masked) if c != "*"]
    assert len(revealed) <= 6
    for i in revealed:
        assert masked[i] == value[i]
        assert i < 4 or i >= len(value) - 2


@PROPERTY_SETTINGS
@given(number=st.from_regex(r"[0-9]{12}", fullmatch=True))
def test_mask_never_shows_the_middle_of_a_twelve_digit_number(number: str) -> None:
    masked = mask(number)
    assert masked[4:10] == "******"
    assert number[4:10] not in masked
    assert sum(c.isdigit() for c in masked) <= 6


# --- one classification per number, same answers as phonenumbers' own calls --------------

# Numbers built from every country code with plausible lengths, so that valid,
# invalid, geographic, mobile and non-geographic ranges all turn up.
COUNTRY_CODES = sorted(phonenumbers.COUNTRY_CODE_TO_REGION_CODE)
INTERNATIONAL = st.builds(
    lambda code, rest: f"+{code}{rest}",
    st.sampled_from(COUNTRY_CODES),
    st.from_regex(r"[0-9]{4,12}", fullmatch=True),
)


@settings(max_examples=1500, deadline=None)
@given(raw=INTERNATIONAL)
def test_single_classification_agrees_with_phonenumbers_validity_type_and_zones(raw: str) -> None:
    result = parse_destination(raw)
    parsed = phonenumbers.parse(raw, None)
    valid = phonenumbers.is_valid_number(parsed) and phonenumbers.is_possible_number(parsed)
    premium = phonenumbers.number_type(parsed) == phonenumbers.PhoneNumberType.PREMIUM_RATE
    assert isinstance(result, Destination) == (valid and not premium)
    if isinstance(result, Destination):
        expected = tuple(
            z for z in phonenumbers.timezone.time_zones_for_number(parsed) if z != "Etc/Unknown"
        )
        assert result.timezones == expected
        region = phonenumbers.region_code_for_number(parsed)
        assert result.region == (None if region in ("ZZ", "001") else region)


@pytest.mark.parametrize("region", sorted(phonenumbers.SUPPORTED_REGIONS))
def test_every_country_example_number_keeps_phonenumbers_zones(region: str) -> None:
    for kind in phonenumbers.PhoneNumberType.values():
        example = phonenumbers.example_number_for_type(region, kind)
        if example is None:
            continue
        text = phonenumbers.format_number(example, phonenumbers.PhoneNumberFormat.E164)
        result = parse_destination(text)
        if isinstance(result, Destination):
            found = phonenumbers.timezone.time_zones_for_number(example)
            assert result.timezones == tuple(z for z in found if z != "Etc/Unknown")


# --- the faster readings agree with phonenumbers' own --------------------------------------


def _near(example: phonenumbers.PhoneNumber, seed: int) -> list[str]:
    """International digits around an example number: digits changed, one dropped or added."""
    digits = phonenumbers.format_number(example, phonenumbers.PhoneNumberFormat.E164)[1:]
    code = str(example.country_code)
    national = digits[len(code) :]
    out = [digits]
    for i in range(len(national)):
        changed = national[:i] + str((int(national[i]) + seed + i) % 10) + national[i + 1 :]
        out.append(code + changed)
    out += [code + national[:-1], code + national + str(seed % 10), code + "0" + national]
    return out


def _examples() -> list[phonenumbers.PhoneNumber]:
    found = []
    for region in sorted(phonenumbers.SUPPORTED_REGIONS):
        for kind in phonenumbers.PhoneNumberType.values():
            example = phonenumbers.example_number_for_type(region, kind)
            if example is not None:
                found.append(example)
    for code in sorted(phonenumbers.COUNTRY_CODES_FOR_NON_GEO_REGIONS):
        example = phonenumbers.example_number_for_non_geo_entity(code)
        if example is not None:
            found.append(example)
    return found


def _same_reading(digits: str) -> None:
    fast = _parse_international(digits)
    try:
        slow = phonenumbers.parse("+" + digits, None)
    except phonenumbers.NumberParseException:
        assert fast is None, digits
        return
    if fast is not None:
        assert (fast.country_code, fast.national_number) == (
            slow.country_code,
            slow.national_number,
        ), digits
        assert (fast.italian_leading_zero, fast.number_of_leading_zeros, fast.extension) == (
            slow.italian_leading_zero,
            slow.number_of_leading_zeros,
            slow.extension,
        ), digits
    assert classify_number(slow) == phonenumbers.number_type(slow), digits
    assert _possibility(slow) == phonenumbers.is_possible_number_with_reason(slow), digits


def test_every_example_number_and_its_neighbours_read_and_classify_as_phonenumbers_does() -> None:
    for seed, example in enumerate(_examples()):
        for digits in _near(example, seed):
            _same_reading(digits)


@settings(max_examples=3000, deadline=None)
@given(
    digits=st.builds(
        lambda code, zero, rest: f"{code}{zero}{rest}",
        st.sampled_from(COUNTRY_CODES),
        st.sampled_from(["", "", "", "0", "1"]),
        st.from_regex(r"[0-9]{0,15}", fullmatch=True),
    )
    | st.from_regex(r"[0-9]{1,21}", fullmatch=True)
)
def test_generated_numbers_read_and_classify_as_phonenumbers_does(digits: str) -> None:
    _same_reading(digits)
