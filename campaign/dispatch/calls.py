"""The pure part of the protocol: a contact becomes a call object, a batch its id.

No I/O here. `contact_verdict` is what step 1 (claim.py) does with one contact:
send it (`Ready`, with the call object Aculab is sent), mark it invalid or a
duplicate (`Skipped`), or leave it waiting for its calling window (`Deferred`).
`campaign why`, `campaign load` and `campaign plan` ask the same function, so
these rules live in one place. `unique_id_for` and `child_unique_id` make the
idempotency keys a batch is sent (and re-sent) under.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Container, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from campaign import windows
from campaign.aculab import call_problem
from campaign.db import queries as q
from campaign.destinations import Destination, Rejected, parse_destination
from campaign.vocabulary import ContactState

DUPLICATE_REASON = "same destination as another contact of this campaign"


def unique_id_for(namespace: str, campaign_id: int, contacts: Sequence[tuple[int, int]]) -> str:
    """The batch's idempotency key from (namespace, campaign, contact ids, attempt numbers).

    The attempt number is the contact's dispatch count: it rises every time the
    contact is put in a new batch, so a new attempt never reuses an old id.
    """
    digest = hashlib.sha256(f"{namespace}\x1f{campaign_id}".encode())
    for contact_id, attempt in contacts:
        digest.update(f"\x1e{contact_id}:{attempt}".encode())
    return f"{namespace}-{campaign_id}-{digest.hexdigest()[:32]}"


def child_unique_id(
    namespace: str, campaign_id: int, parent: str, contact_ids: Sequence[int]
) -> str:
    """A split batch's id: derived from its parent's id and its own contacts."""
    digest = hashlib.sha256(f"{parent}\x1f".encode())
    digest.update(",".join(map(str, contact_ids)).encode())
    return f"{namespace}-{campaign_id}-{digest.hexdigest()[:32]}"


def reference_problem(references: Sequence[str], calls: int) -> str | None:
    """Why `references` cannot be matched one to one with `calls` call objects, or None."""
    if len(references) != calls:
        return f"{len(references)} references for {calls} calls"
    repeated = [(r, n) for r, n in Counter(references).items() if n > 1]
    if repeated:
        reference, times = repeated[0]
        return f"reference {reference[:80]!r} appears {times} times"
    return None


def normalise_caller_id(raw: str | None) -> str | None:
    """A caller ID as Aculab wants it for telephone calls: international digits, no + or 0."""
    if raw is None:
        return None
    digits = "".join(ch for ch in raw.strip() if ch not in " -.()")
    digits = digits.removeprefix("+")
    if not digits.isdigit() or not digits.isascii() or digits.startswith("0"):
        return None
    return digits


@dataclass(frozen=True)
class Skipped:
    contact_id: int
    state: ContactState
    reason: str


@dataclass(frozen=True)
class Ready:
    contact: q.ContactRow
    destination: Destination
    call: dict[str, Any]


@dataclass(frozen=True)
class Deferred:
    contact_id: int
    until: datetime
    reason: str
    # What it will be checked against (do-not-call list, duplicates) once its window opens.
    destination: Destination | None = None


@dataclass
class Prepared:
    ready: list[Ready] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)
    deferred: list[Deferred] = field(default_factory=list)


_UNREADABLE = object()


def _decode_json(value: Any) -> Any:
    """A jsonb column read as text; _UNREADABLE when Python cannot decode it."""
    if not isinstance(value, str):
        return value
    try:
        return json.loads(value)
    except (ValueError, RecursionError):
        return _UNREADABLE


def window_verdict(
    zones: Sequence[str], window: windows.Window, now: datetime, start_by: datetime
) -> Deferred | Skipped | None:
    """None when a call placed now starts inside the window in every zone.

    `start_by` is when Aculab is expected to start it (now plus its queue): the
    window must still be open then, or the contact waits for the next opening.
    """
    until = windows.open_until(now, zones, window)
    if until is not None and until > start_by:
        return None
    after = until if until is not None else now
    opening = windows.next_opening(after, zones, window)
    if opening is None:
        return Skipped(
            0, "invalid", "the calling window is never open in all of the number's time zones"
        )
    return Deferred(0, opening, windows.describe_opening(after, zones, window))


RULES_MEMORY = 10_000
"""Distinct caller IDs and zones a Rules object remembers the verdict on."""


@dataclass
class Rules:
    """One campaign's per-contact rules at one moment: built once per claim (and per
    `campaign why`, `campaign load`), so that what is the same for every contact is
    worked out once."""

    campaign: q.CampaignRow
    window: windows.Window
    now: datetime
    start_by: datetime
    always_open: bool
    # Raw caller ID -> normalised (usually the campaign's one caller ID).
    _callers: dict[str | None, str | None] = field(default_factory=dict)
    # (contacts.timezone, the number's zones) -> the zones that decide, or why none do.
    _zones: dict[tuple[str | None, tuple[str, ...]], tuple[str, ...] | str] = field(
        default_factory=dict
    )
    # Zones -> their window verdict: the same for every contact with those zones.
    _windows: dict[tuple[str, ...], Deferred | Skipped | None] = field(default_factory=dict)

    @classmethod
    def of(cls, campaign: q.CampaignRow, now: datetime, start_by: datetime | None = None) -> Rules:
        window = windows.Window.from_row(
            campaign.window_start or "00:00", campaign.window_end or "24:00", campaign.window_days
        )
        return cls(campaign, window, now, start_by or now, window.always_open)

    def caller(self, raw: str | None) -> str | None:
        if raw in self._callers:
            return self._callers[raw]
        if len(self._callers) >= RULES_MEMORY:
            self._callers.clear()  # a load of all-different caller IDs: memory stays flat
        caller = self._callers[raw] = normalise_caller_id(raw)
        return caller

    def zones(self, own: str | None, number_zones: tuple[str, ...]) -> tuple[str, ...] | str:
        key = (own, number_zones)
        found = self._zones.get(key)
        if found is None:
            if len(self._zones) >= RULES_MEMORY:
                self._zones.clear()
            found = self._zones[key] = windows.contact_zones(
                own, number_zones, self.campaign.default_timezone
            )
        return found

    def window_verdict(self, zones: tuple[str, ...]) -> Deferred | Skipped | None:
        if zones not in self._windows:
            self._windows[zones] = window_verdict(zones, self.window, self.now, self.start_by)
        return self._windows[zones]


def contact_verdict(
    contact: q.ContactRow, rules: Rules, taken: Container[str] = frozenset()
) -> Ready | Skipped | Deferred:
    """What the claim does with one contact (no I/O): send it (Ready), mark it
    invalid or duplicate (Skipped), or wait for its calling window (Deferred).

    `taken`: destination keys already going out in this claim; a contact with one of
    them is a duplicate. The do-not-call list and the keys owned by earlier claims are
    checked afterwards, in the database, for the Ready ones. The one place these rules
    live: the claim, `campaign why` and `campaign load` all ask this function.
    """
    campaign = rules.campaign
    parsed = parse_destination(contact.destination, default_region=campaign.default_country)
    if isinstance(parsed, Rejected):
        return Skipped(contact.id, "invalid", parsed.reason)
    if parsed.key in taken:
        return Skipped(contact.id, "duplicate", DUPLICATE_REASON)
    call: dict[str, Any] = {"to": parsed.to}
    if parsed.is_telephone:
        raw_from = contact.caller_id or campaign.caller_id
        caller = rules.caller(raw_from)
        if caller is None:
            reason = (
                "no caller ID: set campaigns.caller_id or contacts.caller_id"
                if not raw_from
                else "caller ID must be a full international number (digits, no leading 0)"
            )
            return Skipped(contact.id, "invalid", reason)
        call["from"] = caller
    elif contact.caller_id:
        call["from"] = contact.caller_id
    if contact.token is not None:
        call["token"] = contact.token
    if contact.outbound_parameters is not None:
        call["outbound_parameters"] = contact.outbound_parameters
    if contact.extra_sip_headers is not None:
        headers = _decode_json(contact.extra_sip_headers)
        if headers is _UNREADABLE:
            return Skipped(contact.id, "invalid", "extra_sip_headers is not readable JSON")
        call["extra_sip_headers"] = headers
    problem = call_problem(call)
    if problem is not None:
        return Skipped(contact.id, "invalid", problem)
    if not rules.always_open:
        zones = rules.zones(contact.timezone, parsed.timezones)
        if isinstance(zones, str):
            return Skipped(contact.id, "invalid", zones)
        verdict = rules.window_verdict(zones)
        if isinstance(verdict, Skipped):
            return Skipped(contact.id, verdict.state, verdict.reason)
        if isinstance(verdict, Deferred):
            return Deferred(contact.id, verdict.until, verdict.reason, parsed)
    return Ready(contact, parsed, call)


def prepare(
    contacts: Sequence[q.ContactRow],
    campaign: q.CampaignRow,
    now: datetime,
    start_by: datetime | None = None,
) -> Prepared:
    """Each contact's verdict, in claim order; the same destination twice goes out once."""
    out = Prepared()
    rules = Rules.of(campaign, now, start_by)
    seen: set[str] = set()
    for contact in contacts:
        verdict = contact_verdict(contact, rules, seen)
        if isinstance(verdict, Ready):
            seen.add(verdict.destination.key)
            out.ready.append(verdict)
        elif isinstance(verdict, Skipped):
            out.skipped.append(verdict)
        else:
            out.deferred.append(verdict)
    return out
