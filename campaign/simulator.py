"""An Aculab Cloud simulator: the web services of docs/aculab.md over real HTTP.

It is as strict as Aculab is documented to be, and follows campaign.assumptions
wherever the documentation is silent, because every test of the engine runs
against it: a lenient simulator would let a broken client pass.

Its checks are written independently of the engine's own code (phonenumbers is
called directly here) so that one shared bug cannot hide on both sides.

The lifecycle of a call is computed from its start and finish times whenever it
is asked for, so an injectable clock drives it and no task is kept per call.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import binascii
import contextlib
import dataclasses
import heapq
import hmac
import html
import itertools
import json
import logging
import math
import random
import re
import signal
import sys
import time
from collections import Counter, deque
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final, Literal, Self, get_args
from urllib.parse import urlsplit

import aiohttp
import phonenumbers
from aiohttp import web
from multidict import MultiDict

from campaign import assumptions
from campaign.assumptions import InstancePhase

logger = logging.getLogger(__name__)

AccountType = Literal["trial", "production", "premium"]
# New kinds go at the end: a draw matches the kinds in this order, so the same
# seed and probabilities keep giving the same faults.
FaultKind = Literal[
    "throttle", "error_before", "error_after", "drop_after", "slow", "malformed", "trickle"
]
MalformedShape = Literal["repeat", "short", "extra", "not_strings", "not_a_list", "reused", "mixed"]
CallbackOutcome = Literal["sent", "lost", "failed"]

# [doc] §2 and §5.
TOKEN_MAX_CHARS: Final = 5000
CALL_CAUSES: Final = (
    "completed",
    "hung_up",
    "no_answer",
    "busy",
    "unobtainable",
    "dropped",
    "failed",
)
DESTINATION_PREFIXES: Final = frozenset({"tel", "sip", "loc", "webrtc", "wss", "con"})

# The order in which a random draw is matched against the fault probabilities.
FAULT_KINDS: Final[tuple[FaultKind, ...]] = get_args(FaultKind)
MALFORMED_SHAPES: Final[tuple[MalformedShape, ...]] = get_args(MalformedShape)
# "mixed" picks one of these for each malformed answer.
_CONCRETE_MALFORMED_SHAPES: Final = tuple(s for s in MALFORMED_SHAPES if s != "mixed")
_FAULT_SECONDS: Final = (
    "slow_seconds",
    "trickle_seconds",
    "delay_before_seconds",
    "retry_after_seconds",
    "queue_delay_seconds",
)
# What the admin endpoint reads and sets, besides forced faults.
_FAULT_SETTINGS: Final = (*FAULT_KINDS, *_FAULT_SECONDS, "malformed_shape")

# [doc] §4: only ASCII digits, optionally separated by single '-'.
_TELEPHONE = re.compile(r"[0-9]+(?:-[0-9]+)*", re.ASCII)
_DIGITS = re.compile(r"[0-9]+", re.ASCII)
_SIP_USER_AT_HOST = re.compile(r"[^@\s]+@[^@\s]+")
# RFC 3261 token characters, the only ones a SIP header name may use.
_SIP_HEADER_NAME = re.compile(r"[A-Za-z0-9\-.!%*_+`'~]+", re.ASCII)
_NOT_TELEPHONE_SPELLING = re.compile(r"[\s\-().]")
_ADMIN_PREFIX: Final = "/_simulator/"

# A fake clock does not wake sleepers, so the callback sender looks again at
# least this often.
_CLOCK_POLL_SECONDS: Final = 0.05
_CALLBACK_TIMEOUT_SECONDS: Final = 10.0
_CALLBACK_CONCURRENCY: Final = 16
_NUMBER_CACHE_SIZE: Final = 200_000
# A list of 100 calls with 5000-character tokens, percent-encoded, is several MB;
# aiohttp's 1 MiB default would refuse it with a non-JSON 413.
_MAX_BODY_BYTES: Final = 32 * 1024 * 1024
# Lists sent by GET travel in the query string; the 8 KiB default line limit would
# refuse them before any handler runs.
_MAX_LINE_BYTES: Final = 1024 * 1024
# Cost model: dollars per answered minute and per instance that ran.
_PSTN_DOLLARS_PER_MINUTE: Final = 0.01
_PLATFORM_DOLLARS_PER_INSTANCE: Final = 0.0005
# A trickled answer is written this many bytes at a time, so that even a one-call
# answer (about 32 bytes) takes several writes.
_TRICKLE_CHUNK_BYTES: Final = 4
# See Simulator.go_down.
_GO_DOWN_SETTLE_SECONDS: Final = 0.05
# service_start requests kept in Simulator.start_requests unless configured: about
# half an hour of the simulator's top rate, a few dozen MB at most, and far less
# than the calls those requests started, which are all kept anyway.
DEFAULT_REQUEST_RECORD_LIMIT: Final = 500_000


def _default_service_passwords() -> dict[str, str]:
    return {"MyOutboundService": "sim-password"}


def _default_cause_weights() -> dict[str, float]:
    return {
        "completed": 0.55,
        "hung_up": 0.2,
        "no_answer": 0.12,
        "busy": 0.08,
        "unobtainable": 0.02,
        "failed": 0.02,
        "dropped": 0.01,
    }


def _check_probability(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{name} must be a number between 0 and 1")
    if not 0.0 <= float(value) <= 1.0:
        raise ValueError(f"{name} must be between 0 and 1, not {value}")
    return float(value)


def _check_range(name: str, value: tuple[float, float]) -> None:
    low, high = value
    if not (0.0 <= low <= high and math.isfinite(high)):
        raise ValueError(f"{name} must be (low, high) with 0 <= low <= high")


@dataclass
class SimulatorConfig:
    cloud_id: str = "1-2-0"
    username: str = "bob@example.com"
    api_access_key: str = "sim-api-key"
    service_passwords: dict[str, str] = field(default_factory=_default_service_passwords)
    disabled_services: frozenset[str] = frozenset()
    """Services whose credentials are right but which answer 403."""
    account_type: AccountType = "production"
    calls_per_second: float = 50.0
    """Aculab's start rate: starts beyond it are queued, never refused."""
    max_list_length: int = assumptions.DEFAULT_MAX_LIST_LENGTH
    validated_caller_ids: frozenset[str] | None = None
    """None: any valid full international number counts as validated."""
    cause_weights: dict[str, float] = field(default_factory=_default_cause_weights)
    answered_seconds: tuple[float, float] = (0.05, 0.3)
    ring_seconds: tuple[float, float] = (0.02, 0.1)
    final_page_url: str | None = None
    """POST each finished call's instance_info here."""
    callback_loss: float = 0.0
    """Share of final-page requests silently not sent."""
    seed: int = 0
    request_record_limit: int = DEFAULT_REQUEST_RECORD_LIMIT
    """How many service_start requests Simulator.start_requests keeps (the latest)."""

    def __post_init__(self) -> None:
        if not self.service_passwords:
            raise ValueError("at least one outbound service is needed")
        if not self.disabled_services <= set(self.service_passwords):
            unknown_services = sorted(self.disabled_services - set(self.service_passwords))
            raise ValueError(f"disabled services are not configured: {unknown_services}")
        if self.validated_caller_ids is not None:
            unusable = sorted(
                n for n in self.validated_caller_ids if not _DIGITS.fullmatch(n) or n[0] == "0"
            )
            if unusable:
                raise ValueError(
                    f"validated caller IDs are digits without a leading 0 or '+': {unusable}"
                )
        if self.account_type not in get_args(AccountType):
            raise ValueError(f"account_type must be one of {get_args(AccountType)}")
        if not (math.isfinite(self.calls_per_second) and self.calls_per_second > 0):
            raise ValueError("calls_per_second must be a positive number")
        if self.max_list_length < 1:
            raise ValueError("max_list_length must be at least 1")
        if self.request_record_limit < 1:
            raise ValueError("request_record_limit must be at least 1")
        unknown = set(self.cause_weights) - set(CALL_CAUSES)
        if unknown:
            raise ValueError(f"unknown call causes: {sorted(unknown)}; known: {CALL_CAUSES}")
        weights = self.cause_weights.values()
        if any(w < 0 or not math.isfinite(w) for w in weights) or sum(weights) <= 0:
            raise ValueError("cause_weights must be non-negative with a positive sum")
        _check_range("answered_seconds", self.answered_seconds)
        _check_range("ring_seconds", self.ring_seconds)
        _check_probability("callback_loss", self.callback_loss)
        if self.final_page_url is not None and urlsplit(self.final_page_url).scheme not in {
            "http",
            "https",
        }:
            raise ValueError("final_page_url must be an http(s) URL")


@dataclass
class Faults:
    """Injected failures of service_start, changeable while the simulator runs.

    The fault kinds apply only to requests that passed authentication and
    validation. One random draw per request is matched against the probabilities
    in the order of FAULT_KINDS, so the kinds exclude each other (if they sum past
    1, the later kinds get what is left). Forced faults come first, one per request.

    delay_before_seconds is not a kind: it delays every service_start request,
    before authentication, whatever the draw.
    """

    throttle: float = 0.0
    """HTTP 429, nothing started."""
    retry_after_seconds: float = 0.0
    """Seconds sent as a Retry-After header with the 429 and the 500s of the fault
    kinds (0: no header)."""
    queue_delay_seconds: float = 0.0
    """The queue endpoints (GET .../outbound/<name>/queue, outbound_queues) answer
    this much later: a struggling Aculab's slowest answers."""
    error_before: float = 0.0
    """HTTP 500 before anything is started."""
    error_after: float = 0.0
    """HTTP 500 after the calls were started (and the unique_id remembered)."""
    drop_after: float = 0.0
    """The connection is closed without an answer after the calls were started."""
    slow: float = 0.0
    """The answer is delayed by slow_seconds after the calls were started."""
    slow_seconds: float = 30.0
    malformed: float = 0.0
    """HTTP 200 after the calls were started, but a body of malformed_shape that
    cannot be matched to them. A replay of the unique_id returns the true ones."""
    malformed_shape: MalformedShape = "repeat"
    """repeat ([r1, r1, r3]), short (one missing), extra (one made up), not_strings
    (a null and a number), not_a_list (a JSON object), reused (references of other
    requests' calls), or mixed (one of these at random each time)."""
    trickle: float = 0.0
    """HTTP 200 after the calls were started, its body written a few bytes at a
    time with trickle_seconds between writes: each read is quick, the whole slow."""
    trickle_seconds: float = 0.5
    delay_before_seconds: float = 0.0
    """Every service_start request waits this long before it is even authenticated,
    so a test can change things while a request is on the wire."""
    forced: deque[FaultKind] = field(default_factory=deque)

    def __setattr__(self, name: str, value: Any) -> None:
        # Tests set these directly; catch a misplaced value (faults.slow = 30)
        # where it is made instead of as a puzzling test result.
        if name in FAULT_KINDS:
            value = _check_probability(name, value)
        elif name in _FAULT_SECONDS and (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not 0 <= value < math.inf
        ):
            raise ValueError(f"{name} must be a non-negative number")
        elif name == "malformed_shape" and value not in MALFORMED_SHAPES:
            raise ValueError(
                f"unknown malformed_shape {value!r}; known: {', '.join(MALFORMED_SHAPES)}"
            )
        super().__setattr__(name, value)

    def force(self, kind: str, count: int = 1) -> None:
        """The next `count` service_start requests get this fault, whatever the odds."""
        if kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault {kind!r}; known: {', '.join(FAULT_KINDS)}")
        if count < 0:
            raise ValueError("count must not be negative")
        self.forced.extend([kind] * count)

    def reset(self) -> None:
        """Every fault off: probabilities, forced faults and the delay. The
        parameters of the kinds (seconds, shape) are kept for the next use."""
        for kind in FAULT_KINDS:
            setattr(self, kind, 0.0)
        self.delay_before_seconds = 0.0
        self.forced.clear()

    def draw(self, rng: random.Random) -> FaultKind | None:
        if self.forced:
            return self.forced.popleft()
        roll = rng.random()
        threshold = 0.0
        for kind in FAULT_KINDS:
            threshold += getattr(self, kind)
            if roll < threshold:
                return kind
        return None

    def as_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {key: getattr(self, key) for key in _FAULT_SETTINGS}
        body["forced"] = list(self.forced)
        return body

    def update(self, body: Mapping[str, Any]) -> None:
        """Apply a JSON update: probabilities, slow_seconds, trickle_seconds,
        delay_before_seconds, malformed_shape, "reset": true (applied first), and
        "force": [{"kind": ..., "count": n}, ...]. All-or-nothing: ValueError
        leaves the faults unchanged."""
        known = {*_FAULT_SETTINGS, "force", "reset"}
        unknown = set(body) - known
        if unknown:
            raise ValueError(f"unknown keys {sorted(unknown)}; known: {sorted(known)}")
        reset = body.get("reset", False)
        if not isinstance(reset, bool):
            raise ValueError("reset must be true or false")
        trial = Faults()
        for key in _FAULT_SETTINGS:
            setattr(trial, key, getattr(self, key))
        trial.forced.extend(self.forced)
        if reset:
            trial.reset()
        for key in _FAULT_SETTINGS:
            if key in body:
                setattr(trial, key, body[key])
        forces = body.get("force", [])
        if not isinstance(forces, list):
            raise ValueError('force must be a list of {"kind": ..., "count": n}')
        for item in forces:
            if not isinstance(item, dict) or set(item) - {"kind", "count"}:
                raise ValueError('force entries are {"kind": ..., "count": n}')
            count = item.get("count", 1)
            if isinstance(count, bool) or not isinstance(count, int):
                raise ValueError("force count must be an integer")
            trial.force(str(item.get("kind")), count)
        for key in _FAULT_SETTINGS:
            setattr(self, key, getattr(trial, key))
        self.forced = trial.forced


@dataclass(frozen=True)
class StartedCall:
    """One call object accepted by service_start (purged ones included)."""

    reference: str
    service: str
    to: str
    from_: str | None
    token: str | None
    outbound_parameters: str | None
    extra_sip_headers: tuple[tuple[str, str], ...]
    unique_id: str | None
    submitted_at: float
    start_at: float
    finish_at: float
    """When the instance ends; for a purged start, when it was purged."""
    call_cause: str
    call_raw_cause: str
    duration: float
    """seconds_call_duration: answered time, 0 when never answered."""
    call_id: str
    purged: bool = False

    def phase(self, now: float) -> InstancePhase:
        if self.purged or now >= self.finish_at:
            return "finished"
        return "queued" if now < self.start_at else "running"

    def status_body(self, now: float) -> dict[str, Any]:
        """The application_status body (§3) at time `now`."""
        phase = self.phase(now)
        started = not self.purged and phase != "queued"
        finished = phase == "finished"
        ran = finished and not self.purged
        adr: dict[str, Any] = {
            "application_instance_id": self.reference,
            "application_name": self.service,
            "start_time": self.start_at if started else None,
            "stop_time": self.finish_at if finished else None,
            "duration": round(min(now, self.finish_at) - self.start_at, 6) if started else 0.0,
            "pstn_cost": self._pstn_cost() if ran else 0.0,
            "platform_cost": _PLATFORM_DOLLARS_PER_INSTANCE if ran else 0.0,
        }
        cdrs: list[dict[str, Any]] = []
        errs: list[dict[str, Any]] = []
        if self.purged:
            errs.append(
                {"code": assumptions.PURGED_ERROR_CODE, "text": assumptions.PURGED_ERROR_TEXT}
            )
        elif ran:
            cdrs.append(
                {
                    "call_id": self.call_id,
                    "call_direction": "out",
                    "call_to": self.to,
                    "call_from": self.from_ or "",
                    "call_cause": self.call_cause,
                    "call_raw_cause": self.call_raw_cause,
                    "seconds_call_duration": self.duration,
                    "start_time": self.start_at,
                    "stop_time": self.finish_at,
                }
            )
        return {"adr": adr, "cdrs": cdrs, "errs": errs}

    def _pstn_cost(self) -> float:
        return round(self.duration / 60 * _PSTN_DOLLARS_PER_MINUTE, 6)

    def instance_info(self) -> dict[str, Any]:
        """What the final page receives (§5)."""
        return {
            "application_instance_id": self.reference,
            "token": self.token or "",
            "this_call": {
                "call_id": self.call_id,
                "call_direction": "out",
                "call_from": self.from_ or "",
                "call_to": self.to,
                "call_state": assumptions.FINAL_PAGE_CALL_STATE,
                "call_cause": self.call_cause,
                "call_raw_cause": self.call_raw_cause,
                "seconds_call_duration": self.duration,
                "outbound_parameters": self.outbound_parameters or "",
            },
        }

    def as_json(self, now: float) -> dict[str, Any]:
        body = dataclasses.asdict(self)
        body["from"] = body.pop("from_")
        body["extra_sip_headers"] = [{"name": n, "value": v} for n, v in self.extra_sip_headers]
        body["phase"] = self.phase(now)
        return body


@dataclass(frozen=True)
class CallbackRecord:
    """One final-page request: sent (2xx answer), lost on purpose, or failed."""

    reference: str
    outcome: CallbackOutcome
    at: float
    status: int | None = None
    error: str | None = None


@dataclass(frozen=True, slots=True)
class StartRequest:
    """One service_start request as the simulator saw it (for timing assertions)."""

    at: float
    """When it arrived, by the simulator's clock (before any delay_before_seconds)."""
    answered_at: float
    """When the simulator was done with it (for a trickle, after the last write)."""
    unique_id: str | None
    outcome: str
    """The label counted in Simulator.requests: ok, replayed, a fault kind,
    unauthorized, invalid, conflict, ...; "aborted" if the simulator stopped or went
    down during its delay, "cancelled" if the server's shutdown cut it short."""
    calls: int | None
    """Call objects in rest_calls; None if refused before they were counted."""
    started: bool
    """Whether this request started its calls (a replay or a refusal starts none)."""


@dataclass(frozen=True)
class Outage:
    """A time the simulator refused connections (go_down to come_back)."""

    began: float
    ended: float | None = None
    """None while it is still down (or if it was stopped while down)."""


@dataclass(slots=True)
class _Pending:
    """What a service_start request has revealed so far, for its StartRequest."""

    unique_id: str | None = None
    calls: int | None = None
    started: bool = False


@dataclass(frozen=True)
class _CallSpec:
    to: str
    from_: str | None
    token: str | None
    outbound_parameters: str | None
    extra_sip_headers: tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class _Remembered:
    service: str
    rest_calls: str
    references: tuple[str, ...]
    at: float


class _Refused(Exception):
    """A request answered with an error status and the documented error body."""

    def __init__(
        self,
        status: int,
        code: str,
        text: str,
        *,
        outcome: str,
        details: Sequence[str] = (),
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(text)
        self.status = status
        self.code = code
        self.text = text
        self.outcome = outcome
        self.details = list(details)
        self.headers = dict(headers or {})


def _bad_request(code: str, text: str, details: Sequence[str] = ()) -> _Refused:
    return _Refused(400, code, text, outcome="invalid", details=details)


def destination_key(destination: str) -> str:
    """A destination compared as Aculab dials it: telephone numbers by their digits
    however spelt ("+44 1908 273800", "tel:441908273800", "44-1908-273800"),
    anything else by its exact string."""
    number = destination.strip()
    number = number.removeprefix("tel:")
    number = _NOT_TELEPHONE_SPELLING.sub("", number).removeprefix("+")
    if _DIGITS.fullmatch(number):
        return "tel:" + number
    return destination


def _telephone_problem(digits: str) -> str | None:
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


def _classify_destination(
    to: str, telephone_problem: Callable[[str], str | None] = _telephone_problem
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


def _decode_basic_auth(header: str) -> tuple[str, str] | None:
    """(login, password) from a Basic Authorization header, None if malformed.

    Written out because aiohttp 3.14 deprecates BasicAuth, decode included."""
    scheme, _, encoded = header.strip().partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        raw = base64.b64decode(encoded.strip(), validate=True)
    except binascii.Error:
        return None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        text = raw.decode("latin-1")
    login, colon, password = text.partition(":")
    return (login, password) if colon else None


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _iso(seconds: float) -> str:
    try:
        moment = datetime.fromtimestamp(seconds, UTC)
    except (OverflowError, OSError, ValueError):
        moment = datetime.now(UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _format_base_url(host: str, port: int) -> str:
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
Impl = Callable[[web.Request], Awaitable[tuple[str, web.StreamResponse]]]


class Simulator:
    """The simulated Aculab account. Run it with `async with Simulator(...) as sim`.

    State is kept in memory for the life of the object. The clock must not go
    backwards.
    """

    def __init__(
        self,
        config: SimulatorConfig | None = None,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config if config is not None else SimulatorConfig()
        self.faults = Faults()
        self.clock = clock
        self.calls: list[StartedCall] = []
        """Every call ever started, in order."""
        self.requests: Counter[tuple[str, str]] = Counter()
        """(endpoint, outcome) -> number of requests."""
        self.callbacks: list[CallbackRecord] = []
        """Every final-page request sent, lost or failed, in order."""
        self.start_requests: deque[StartRequest] = deque(maxlen=self.config.request_record_limit)
        """The latest service_start requests (config.request_record_limit of them),
        in the order they were answered."""
        self.outages: list[Outage] = []
        """Every go_down, in order."""

        seed = self.config.seed
        # Separate streams so that, say, adding faults does not change call outcomes.
        self._outcome_rng = random.Random(f"{seed}:outcomes")
        self._fault_rng = random.Random(f"{seed}:faults")
        self._shape_rng = random.Random(f"{seed}:malformed-shapes")
        self._loss_rng = random.Random(f"{seed}:callback-loss")
        ids_rng = random.Random(f"{seed}:ids")
        self._reference_stem = f"{ids_rng.getrandbits(32):08x}_0.{int(clock())}"
        self._reference_numbers = itertools.count(ids_rng.randrange(10_000, 90_000))
        self._causes = list(self.config.cause_weights)
        self._cause_weights = list(self.config.cause_weights.values())

        self._number_problems: dict[str, str | None] = {}
        self._index_by_reference: dict[str, int] = {}
        self._calls_by_destination: Counter[str] = Counter()
        self._unique_ids: dict[str, _Remembered] = {}
        # One time per unique_id ever used to start calls, like _unique_ids itself.
        self._first_starts: dict[str, float] = {}
        # The StartRequests of start_requests that carry each unique_id, oldest first.
        self._requests_by_unique_id: dict[str, deque[StartRequest]] = {}
        # Per service, the indices of calls that may still be queued, in start
        # order; the ones already started are dropped lazily when looked at.
        self._queued: dict[str, deque[int]] = {name: deque() for name in self.service_names}
        self._last_start_at = -math.inf

        self._callbacks_due: list[tuple[float, int, int]] = []
        self._callback_order = itertools.count()
        self._callbacks_changed = asyncio.Event()
        self._callback_slots = asyncio.Semaphore(_CALLBACK_CONCURRENCY)
        self._callback_tasks: set[asyncio.Task[None]] = set()
        self._sender: asyncio.Task[None] | None = None
        self._session: aiohttp.ClientSession | None = None
        # Set when the server starts closing (stop or go_down): answers that are
        # waiting (delay, slow, trickle) drop their connections instead. A new one
        # for each start, so a late waiter never sees the next start's.
        self._closing = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self._listen: tuple[str, int] | None = None
        """Host and port of the first start, where come_back listens again."""
        self._down = False
        """In an outage: gone down and neither back nor stopped since."""
        # An outage asked for by the admin endpoint, and the event that ends it
        # early (without coming back) when the simulator stops.
        self._outage_task: tuple[asyncio.Task[None], asyncio.Event] | None = None
        self._base_url: str | None = None
        self.app = self._build_app()

    # ------------------------------------------------------------ public API

    @property
    def service_names(self) -> list[str]:
        return list(self.config.service_passwords)

    @property
    def base_url(self) -> str:
        if self._base_url is None:
            raise RuntimeError("the simulator is not started")
        return self._base_url

    def calls_to(self, destination: str) -> int:
        """How many calls were started to this destination (see destination_key)."""
        return self._calls_by_destination[destination_key(destination)]

    def started_count(self) -> int:
        """How many call objects service_start accepted (purged ones included)."""
        return len(self.calls)

    def call(self, reference: str) -> StartedCall:
        return self.calls[self._index_by_reference[reference]]

    def request_count(self, endpoint: str, outcome: str | None = None) -> int:
        return sum(
            n for (ep, oc), n in self.requests.items() if ep == endpoint and outcome in (None, oc)
        )

    def first_start(self, unique_id: str) -> float | None:
        """When calls were first started with this unique_id (simulator clock)."""
        return self._first_starts.get(unique_id)

    def requests_with(self, unique_id: str) -> list[StartRequest]:
        """The service_start requests that carried this unique_id, among those kept
        in start_requests, in the order they were answered."""
        return list(self._requests_by_unique_id.get(unique_id, ()))

    @property
    def listening(self) -> bool:
        """False before start, after stop, and during an outage."""
        return self._runner is not None

    def callback_counts(self) -> Counter[str]:
        return Counter(record.outcome for record in self.callbacks)

    def queue_length(self, service: str) -> int:
        """Starts accepted for `service` that have not begun yet."""
        queued = self._queued[service]
        now = self.clock()
        while queued and self.calls[queued[0]].start_at <= now:
            queued.popleft()
        return len(queued)

    def purge(self, service: str) -> int:
        """Remove `service`'s queued starts (they never run); how many were removed."""
        self.queue_length(service)  # drops the ones already started
        queued = self._queued[service]
        now = self.clock()
        for index in queued:
            self.calls[index] = dataclasses.replace(self.calls[index], purged=True, finish_at=now)
        purged = len(queued)
        queued.clear()
        # The slots of purged starts are free again; the queue's tail is now the
        # last start that was not purged. (Other services' queued starts keep
        # their times rather than moving up: a small, conservative difference.)
        self._last_start_at = next(
            (call.start_at for call in reversed(self.calls) if not call.purged), -math.inf
        )
        return purged

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        if self._runner is not None:
            raise RuntimeError("the simulator is already started")
        # A stopped simulator may start again (an outage that ends) and keeps its
        # calls and unique_ids, as Aculab would.
        self._closing = asyncio.Event()
        runner = web.AppRunner(
            self.app,
            handle_signals=False,
            shutdown_timeout=1.0,
            access_log=None,
            max_line_size=_MAX_LINE_BYTES,
            max_field_size=_MAX_LINE_BYTES,
        )
        await runner.setup()
        try:
            site = web.TCPSite(runner, host, port)
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        bound_host, bound_port = runner.addresses[0][:2]
        self._base_url = _format_base_url(str(bound_host), int(bound_port))
        if self._listen is None:
            self._listen = (host, int(bound_port))
        # After go_down the final-page sender is still running.
        if self.config.final_page_url is not None and self._sender is None:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=_CALLBACK_TIMEOUT_SECONDS)
            )
            self._sender = asyncio.create_task(self._send_callbacks(), name="final-page sender")
        return self._base_url

    async def stop(self) -> None:
        if self._outage_task is not None:
            # Not cancelled: it might be half-way through closing or starting the
            # server. Told to stop, it finishes what it is doing and stays down.
            task, stopped = self._outage_task
            stopped.set()
            await asyncio.gather(task, return_exceptions=True)
            self._outage_task = None
        await self._close_server()
        self._down = False
        tasks = [t for t in (self._sender, *self._callback_tasks) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._sender = None
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def go_down(self) -> None:
        """An outage: close the listening socket, so that new connections are
        refused (ECONNREFUSED), and every open connection, answers still waiting
        included. Everything else is kept: calls, unique_ids, the queue, and the
        final pages of calls that finish meanwhile (only the web services are down).
        """
        if self._runner is None:
            raise RuntimeError("the simulator is not listening")
        self._begin_outage()
        await self._close_server()
        # The connections are closed, but a client in this process sees that only
        # when its loop next reads them; until then it would reuse a pooled one and
        # fail mid-request instead of being refused. A moment lets it notice.
        await asyncio.sleep(_GO_DOWN_SETTLE_SECONDS)

    async def come_back(self) -> str:
        """End an outage: listen again on the same host and port; the base URL.
        (A stopped simulator is started again with start, not this.)"""
        if not self._down or self._listen is None:
            raise RuntimeError("the simulator is not down")
        base_url = await self.start(*self._listen)
        self._down = False
        self.outages[-1] = dataclasses.replace(self.outages[-1], ended=self.clock())
        return base_url

    async def outage(self, seconds: float) -> None:
        """go_down, wait `seconds` of real time (whatever the clock), come_back;
        stays down if the simulator was stopped meanwhile."""
        await self.go_down()
        await asyncio.sleep(seconds)
        if self._down:
            await self.come_back()

    def _begin_outage(self) -> None:
        self._down = True
        self.outages.append(Outage(self.clock()))

    async def _close_server(self) -> None:
        runner, self._runner = self._runner, None
        if runner is None:
            return
        # Refuse new connections first, then let waiting answers drop theirs; the
        # runner then closes idle connections and waits (at most its shutdown
        # timeout) for requests being answered.
        await self._stop_listening(runner)
        self._closing.set()
        await runner.cleanup()

    @staticmethod
    async def _stop_listening(runner: web.AppRunner) -> None:
        for site in list(runner.sites):
            await site.stop()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    # ------------------------------------------------------------ app

    def _build_app(self) -> web.Application:
        app = web.Application(middlewares=[self._error_middleware], client_max_size=_MAX_BODY_BYTES)
        routes: list[tuple[Sequence[str], str, str, Impl]] = [
            (("GET", "POST"), "/service_start", "service_start", self._service_start),
            (
                ("GET", "POST"),
                "/application_status",
                "application_status",
                self._application_status,
            ),
            (("GET",), "/service/v1/outbound_queues", "outbound_queues", self._outbound_queues),
            (("GET",), "/service/v1/outbound/{name}/queue", "queue", self._queue),
            (("DELETE",), "/service/v1/outbound/{name}/queue", "queue_purge", self._purge),
            (("GET",), _ADMIN_PREFIX + "calls", "admin_calls", self._admin_calls),
            (("GET", "POST"), _ADMIN_PREFIX + "faults", "admin_faults", self._admin_faults),
            (("GET",), _ADMIN_PREFIX + "requests", "admin_requests", self._admin_requests),
            (("POST",), _ADMIN_PREFIX + "outage", "admin_outage", self._admin_outage),
        ]
        for methods, path, endpoint, impl in routes:
            handler = self._counted(endpoint, impl)
            for method in methods:
                # add_route, not add_get: a HEAD must not start calls.
                app.router.add_route(method, path, handler)
        return app

    def _counted(self, endpoint: str, impl: Impl) -> Handler:
        async def handle(request: web.Request) -> web.StreamResponse:
            try:
                outcome, response = await impl(request)
            except _Refused as refusal:
                self.requests[(endpoint, refusal.outcome)] += 1
                return self._error_response(request, refusal)
            self.requests[(endpoint, outcome)] += 1
            return response

        return handle

    @web.middleware
    async def _error_middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        # Every error takes the documented shape, aiohttp's own 404/405/413 included.
        try:
            return await handler(request)
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            headers = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else None
            refusal = _Refused(
                exc.status,
                assumptions.http_error_code(exc.status),
                exc.reason,
                outcome="http_error",
                headers=headers,
            )
            return self._error_response(request, refusal)
        except Exception:
            logger.exception("simulator bug answering %s %s", request.method, request.path)
            refusal = _Refused(
                500, assumptions.http_error_code(500), "internal error", outcome="bug"
            )
            return self._error_response(request, refusal)

    def _error_response(self, request: web.Request, refusal: _Refused) -> web.Response:
        if (
            assumptions.ERRORS_ARE_JSON_ONLY_WITH_ACCEPT_JSON
            and "application/json" not in request.headers.get("Accept", "")
            and not request.path.startswith(_ADMIN_PREFIX)
        ):
            # Like Aculab's older endpoints: a client that forgets the header
            # gets a page it cannot parse, and its tests fail here, not in production.
            page = (
                f"<html><body><h1>{refusal.status} {html.escape(refusal.code)}</h1>"
                f"<p>{html.escape(refusal.text)}</p></body></html>"
            )
            return web.Response(
                status=refusal.status, text=page, content_type="text/html", headers=refusal.headers
            )
        now = _iso(self.clock())
        error: dict[str, Any] = {"code": refusal.code, "text": refusal.text}
        if refusal.details:
            error["details"] = refusal.details
        error["datetime"] = now
        error["link"] = f"https://www.aculab.com/cloud/web-services/errors/#{refusal.code}"
        body = {"error": error, "request": {"url": str(request.url), "datetime": now}}
        return web.json_response(body, status=refusal.status, headers=refusal.headers)

    # ------------------------------------------------------------ auth and params

    def _service_auth(self, request: web.Request) -> str:
        """The outbound service named and authenticated by the request."""
        login, password = self._basic_auth(request)
        prefix = f"{self.config.cloud_id}/{self.config.username}/"
        service = login[len(prefix) :] if login.startswith(prefix) else ""
        expected = self.config.service_passwords.get(service)
        if expected is None or not hmac.compare_digest(password.encode(), expected.encode()):
            raise self._unauthorized("cloudID/username/service or service password wrong")
        if service in self.config.disabled_services:
            raise _Refused(
                403,
                assumptions.http_error_code(403),
                f"outbound service {service!r} is disabled",
                outcome="forbidden",
            )
        return service

    def _account_auth(self, request: web.Request) -> None:
        login, password = self._basic_auth(request)
        key = self.config.api_access_key
        expected_login = f"{self.config.cloud_id}/{self.config.username}"
        if login != expected_login or not hmac.compare_digest(password.encode(), key.encode()):
            raise self._unauthorized("cloudID/username or API access key wrong")

    def _basic_auth(self, request: web.Request) -> tuple[str, str]:
        header = request.headers.get("Authorization")
        if header is None:
            raise self._unauthorized("HTTP Basic authentication required")
        credentials = _decode_basic_auth(header)
        if credentials is None:
            raise self._unauthorized("malformed Authorization header")
        return credentials

    @staticmethod
    def _unauthorized(text: str) -> _Refused:
        return _Refused(
            401,
            assumptions.http_error_code(401),
            text,
            outcome="unauthorized",
            headers={"WWW-Authenticate": 'Basic realm="Aculab Cloud"'},
        )

    @staticmethod
    async def _params(request: web.Request) -> MultiDict[str]:
        """Query-string and form parameters together, repeats kept."""
        params: MultiDict[str] = MultiDict(request.query)
        if request.method == "POST" and request.body_exists:
            try:
                form = await request.post()
            except (ValueError, LookupError):  # LookupError: an unknown charset
                raise _bad_request("0002", "request body: not a valid form") from None
            for key, value in form.items():
                if not isinstance(value, str):
                    raise _bad_request("0002", f"{key}: must be a plain form field")
                params.add(key, value)
        return params

    @staticmethod
    def _single(params: MultiDict[str], name: str) -> str | None:
        values = params.getall(name, [])
        if len(values) > 1:
            raise _bad_request("0003", f"{name}: given more than once")
        return values[0] if values else None

    # ------------------------------------------------------------ service_start

    async def _service_start(self, request: web.Request) -> tuple[str, web.StreamResponse]:
        arrived = self.clock()
        pending = _Pending()
        outcome = "bug"
        try:
            outcome, response = await self._answer_service_start(request, pending)
        except _Refused as refusal:
            outcome = refusal.outcome
            raise
        except asyncio.CancelledError:
            outcome = "cancelled"
            raise
        finally:
            self._record_start_request(arrived, outcome, pending)
        return outcome, response

    async def _answer_service_start(
        self, request: web.Request, pending: _Pending
    ) -> tuple[str, web.StreamResponse]:
        closing = self._closing
        delay = self.faults.delay_before_seconds
        if delay > 0 and not await self._wait_unless_closing(closing, delay):
            # The simulator stopped or went down while the request was on the
            # wire: it neither answers nor starts anything.
            self._drop_connection(request)
            return "aborted", web.Response()
        service = self._service_auth(request)
        params = await self._params(request)
        given = params.getall("rest_calls", []) + params.getall("outbound_parameters", [])
        if len(given) > 1:
            raise _bad_request(
                "0003",
                "rest_calls: given more than once (outbound_parameters is its legacy alias)",
            )
        if not given:
            hint = " (parameters are form fields or query arguments, not a JSON body)"
            text = "rest_calls: mandatory parameter missing"
            raise _bad_request(
                "0001", text + hint if request.content_type == "application/json" else text
            )
        rest_calls = given[0]
        unique_id = self._single(params, "unique_id")
        pending.unique_id = unique_id
        if unique_id == "":
            raise _bad_request(assumptions.EMPTY_UNIQUE_ID_CODE, "unique_id: empty")
        specs = self._parse_rest_calls(rest_calls, pending)

        replayed: tuple[str, ...] | None = None
        if unique_id is not None:
            replayed = self._replayed(unique_id, service, rest_calls)

        fault = self.faults.draw(self._fault_rng)
        if fault == "throttle":
            raise _Refused(
                assumptions.THROTTLED_STATUS,
                assumptions.http_error_code(assumptions.THROTTLED_STATUS),
                "too many requests; nothing was started",
                outcome="throttled",
                headers=self._retry_after(),
            )
        if fault == "error_before":
            raise _Refused(
                500,
                assumptions.http_error_code(500),
                "internal error",
                outcome="error_before",
                headers=self._retry_after(),
            )

        if replayed is not None:
            references = replayed
        else:
            references = self._start(service, specs, unique_id, rest_calls)
            pending.started = True
        if fault == "malformed":
            return "malformed", web.json_response(self._malformed_body(references))
        if fault == "trickle":
            return "trickle", await self._trickle(request, closing, references)
        ok = web.json_response(list(references))
        outcome = "replayed" if replayed is not None else "ok"
        if fault == "error_after":
            raise _Refused(
                500,
                assumptions.http_error_code(500),
                "internal error",
                outcome="error_after",
                headers=self._retry_after(),
            )
        if fault == "drop_after":
            self._drop_connection(request)
            return "drop_after", ok
        if fault == "slow":
            if not await self._wait_unless_closing(closing, self.faults.slow_seconds):
                # Stopping or going down: the answer is lost with the connection.
                self._drop_connection(request)
            return "slow", ok
        return outcome, ok

    @staticmethod
    async def _wait_unless_closing(closing: asyncio.Event, seconds: float) -> bool:
        """Wait `seconds`, less if the server starts closing; False if it did."""
        if not closing.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(closing.wait(), seconds)
        return not closing.is_set()

    @staticmethod
    def _drop_connection(request: web.Request) -> None:
        # Nothing more reaches the client: aiohttp drops writes to a closed transport.
        if request.transport is not None:
            request.transport.close()

    def _malformed_body(self, references: tuple[str, ...]) -> Any:
        """A 200 body that cannot be matched to `references` (never empty)."""
        shape = self.faults.malformed_shape
        if shape == "mixed":
            shape = self._shape_rng.choice(_CONCRETE_MALFORMED_SHAPES)
        refs = list(references)
        if shape == "repeat":
            # The right length with one reference twice: [r1, r1, r3]. A single
            # reference cannot repeat within its length, so it gets [r1, r1].
            return [refs[0], *refs] if len(refs) == 1 else [refs[0], refs[0], *refs[2:]]
        if shape == "short":
            return refs[:-1]
        if shape == "extra":
            return [*refs, self._unstarted_reference()]
        if shape == "not_strings":
            # null where the first reference goes, its number where the second does.
            return [
                None if i == 0 else int(ref.rsplit(".", 1)[1]) if i == 1 else ref
                for i, ref in enumerate(refs)
            ]
        if shape == "not_a_list":
            return {"application_instance_ids": refs}
        return self._earlier_references(references)

    def _unstarted_reference(self) -> str:
        """A reference shaped like the others, of no call (application_status: 404)."""
        return f"{self._reference_stem}.{next(self._reference_numbers)}"

    def _earlier_references(self, own: tuple[str, ...]) -> list[str]:
        """As many references as `own`, of the latest calls started by other
        requests; where there are not that many, unstarted ones make up the rest."""
        mine = set(own)
        found: list[str] = []
        index = len(self.calls) - 1
        while len(found) < len(own) and index >= 0:
            reference = self.calls[index].reference
            if reference not in mine:
                found.append(reference)
            index -= 1
        found.reverse()
        found.extend(self._unstarted_reference() for _ in range(len(own) - len(found)))
        return found

    async def _trickle(
        self, request: web.Request, closing: asyncio.Event, references: tuple[str, ...]
    ) -> web.StreamResponse:
        """The true answer, its body written _TRICKLE_CHUNK_BYTES at a time with
        trickle_seconds between writes (the headers go at once)."""
        body = json.dumps(list(references)).encode()
        response = web.StreamResponse(status=200)
        response.content_type = "application/json"
        response.content_length = len(body)
        try:
            await response.prepare(request)
            for offset in range(0, len(body), _TRICKLE_CHUNK_BYTES):
                if offset and not await self._wait_unless_closing(
                    closing, self.faults.trickle_seconds
                ):
                    # Stopping or going down: the client sees its answer cut short.
                    self._drop_connection(request)
                    return response
                await response.write(body[offset : offset + _TRICKLE_CHUNK_BYTES])
            await response.write_eof()
        except ConnectionError:
            pass  # the client gave up (its total timeout, say): nobody to answer
        return response

    def _record_start_request(self, arrived: float, outcome: str, pending: _Pending) -> None:
        record = StartRequest(
            at=arrived,
            answered_at=self.clock(),
            unique_id=pending.unique_id,
            outcome=outcome,
            calls=pending.calls,
            started=pending.started,
        )
        kept = self.start_requests
        if len(kept) == kept.maxlen:
            # The deque drops its oldest on append; the index must drop it too.
            oldest = kept[0]
            if oldest.unique_id is not None:
                same = self._requests_by_unique_id[oldest.unique_id]
                same.popleft()
                if not same:
                    del self._requests_by_unique_id[oldest.unique_id]
        kept.append(record)
        if record.unique_id is not None:
            self._requests_by_unique_id.setdefault(record.unique_id, deque()).append(record)

    def _replayed(self, unique_id: str, service: str, rest_calls: str) -> tuple[str, ...] | None:
        remembered = self._unique_ids.get(unique_id)
        if remembered is None:
            return None
        if self.clock() - remembered.at > assumptions.UNIQUE_ID_RETENTION_SECONDS:
            del self._unique_ids[unique_id]
            return None
        if remembered.service != service or remembered.rest_calls != rest_calls:
            raise _Refused(
                assumptions.UNIQUE_ID_CONFLICT_STATUS,
                assumptions.UNIQUE_ID_CONFLICT_CODE,
                assumptions.UNIQUE_ID_CONFLICT_TEXT,
                outcome="conflict",
            )
        return remembered.references

    def _parse_rest_calls(self, rest_calls: str, pending: _Pending) -> list[_CallSpec]:
        try:
            value = json.loads(rest_calls, parse_constant=_reject_constant)
        except (ValueError, RecursionError):
            raise _bad_request("0002", "rest_calls: not valid JSON") from None
        if isinstance(value, dict | list):
            pending.calls = len(value) if isinstance(value, list) else 1
        if isinstance(value, dict):
            objects: list[Any] = [value]
        elif isinstance(value, list):
            if not value:
                raise _bad_request("0002", "rest_calls: empty list")
            if self.config.account_type == "trial":
                raise _Refused(
                    assumptions.TRIAL_LIST_STATUS,
                    assumptions.TRIAL_LIST_CODE,
                    assumptions.TRIAL_LIST_TEXT,
                    outcome="invalid",
                )
            if len(value) > self.config.max_list_length:
                raise _bad_request(
                    assumptions.LIST_TOO_LONG_CODE,
                    f"rest_calls: more than {self.config.max_list_length} calls in one request",
                )
            objects = value
        else:
            raise _bad_request("0002", "rest_calls: must be a JSON object or a list of objects")

        specs: list[_CallSpec] = []
        details: list[str] = []
        for index, item in enumerate(objects):
            problems = self._call_problems(item)
            if problems:
                details.extend(assumptions.object_detail(index, p) for p in problems)
            else:
                specs.append(
                    _CallSpec(
                        to=item["to"],
                        from_=item.get("from"),
                        token=item.get("token"),
                        outbound_parameters=item.get("outbound_parameters"),
                        extra_sip_headers=tuple(
                            (h["name"], h["value"]) for h in item.get("extra_sip_headers", [])
                        ),
                    )
                )
        if details:
            raise _bad_request(
                assumptions.INVALID_OBJECT_CODE,
                "rest_calls: invalid call object; nothing was started",
                details,
            )
        return specs

    def _call_problems(self, item: Any) -> list[str]:
        if not isinstance(item, dict):
            return ["not a JSON object"]
        problems: list[str] = []
        unknown = sorted(set(item) - assumptions.CALL_OBJECT_KEYS)
        if unknown:
            problems.append("unknown key " + ", ".join(json.dumps(k) for k in unknown))

        is_telephone = False
        if "to" not in item:
            problems.append("to: mandatory, missing")
        elif not isinstance(item["to"], str):
            problems.append("to: must be a string")
        elif not item["to"]:
            problems.append("to: empty")
        else:
            is_telephone, problem = _classify_destination(item["to"], self._telephone_problem)
            if problem:
                problems.append(f"to: {problem}")

        caller = item.get("from")
        if "from" in item and not isinstance(caller, str):
            problems.append("from: must be a string")
        elif is_telephone:
            if caller is None:
                problems.append("from: required when to is a telephone number")
            else:
                problem = self._caller_id_problem(caller)
                if problem:
                    problems.append(f"from: {problem}")

        token = item.get("token")
        if "token" in item and not isinstance(token, str):
            problems.append("token: must be a string")
        elif token is not None and len(token) > TOKEN_MAX_CHARS:
            problems.append(f"token: longer than {TOKEN_MAX_CHARS} characters")

        if "outbound_parameters" in item and not isinstance(item["outbound_parameters"], str):
            problems.append("outbound_parameters: must be a string")

        if "extra_sip_headers" in item:
            problems.extend(_sip_header_problems(item["extra_sip_headers"]))
        return problems

    def _telephone_problem(self, digits: str) -> str | None:
        # The same caller ID comes with every call, and campaigns redial the same
        # numbers; remembering answers keeps phonenumbers off the hot path.
        known = self._number_problems
        if digits not in known:
            if len(known) >= _NUMBER_CACHE_SIZE:
                known.clear()
            known[digits] = _telephone_problem(digits)
        return known[digits]

    def _caller_id_problem(self, caller: str) -> str | None:
        if not _DIGITS.fullmatch(caller) or caller.startswith("0"):
            return (
                "a validated caller ID is a full international number of digits only, "
                "without a leading '+' or 0"
            )
        allowed = self.config.validated_caller_ids
        if allowed is not None:
            return None if caller in allowed else "not one of the account's validated caller IDs"
        if self._telephone_problem(caller) is not None:
            return "not a valid international number, so not a validated caller ID"
        return None

    def _start(
        self,
        service: str,
        specs: Sequence[_CallSpec],
        unique_id: str | None,
        rest_calls: str,
    ) -> tuple[str, ...]:
        now = self.clock()
        interval = 1.0 / self.config.calls_per_second
        references: list[str] = []
        for spec in specs:
            # Aculab queues what exceeds the account's rate instead of refusing it.
            start_at = max(now, self._last_start_at + interval)
            self._last_start_at = start_at
            cause = self._outcome_rng.choices(self._causes, self._cause_weights)[0]
            if cause in assumptions.ANSWERED_CAUSES:
                duration = round(self._outcome_rng.uniform(*self.config.answered_seconds), 6)
                finish_at = start_at + duration
            else:
                duration = 0.0
                finish_at = start_at + self._outcome_rng.uniform(*self.config.ring_seconds)
            reference = f"{self._reference_stem}.{next(self._reference_numbers)}"
            call = StartedCall(
                reference=reference,
                service=service,
                to=spec.to,
                from_=spec.from_,
                token=spec.token,
                outbound_parameters=spec.outbound_parameters,
                extra_sip_headers=spec.extra_sip_headers,
                unique_id=unique_id,
                submitted_at=now,
                start_at=start_at,
                finish_at=finish_at,
                call_cause=cause,
                call_raw_cause=assumptions.SIMULATED_RAW_CAUSES[cause],
                duration=duration,
                call_id=f"{reference}-0",
            )
            index = len(self.calls)
            self.calls.append(call)
            self._index_by_reference[reference] = index
            self._calls_by_destination[destination_key(spec.to)] += 1
            if start_at > now:
                self._queued[service].append(index)
            if self.config.final_page_url is not None:
                heapq.heappush(self._callbacks_due, (finish_at, next(self._callback_order), index))
            references.append(reference)
        if self.config.final_page_url is not None:
            self._callbacks_changed.set()
        refs = tuple(references)
        if unique_id is not None:
            self._unique_ids[unique_id] = _Remembered(service, rest_calls, refs, now)
            self._first_starts.setdefault(unique_id, now)
        return refs

    # ------------------------------------------------------------ application_status

    async def _application_status(self, request: web.Request) -> tuple[str, web.StreamResponse]:
        self._account_auth(request)
        params = await self._params(request)
        reference = self._single(params, "application_instance_id")
        if not reference:
            raise _bad_request("0001", "application_instance_id: mandatory parameter missing")
        now = self.clock()
        index = self._index_by_reference.get(reference)
        call = self.calls[index] if index is not None else None
        if call is None or now - call.finish_at > assumptions.STATUS_RETENTION_SECONDS:
            raise _Refused(
                assumptions.UNKNOWN_INSTANCE_STATUS,
                assumptions.http_error_code(assumptions.UNKNOWN_INSTANCE_STATUS),
                "application_instance_id: no such application instance",
                outcome="not_found",
            )
        return "ok", web.json_response(call.status_body(now))

    # ------------------------------------------------------------ queues

    def _known_service(self, request: web.Request) -> str:
        name = request.match_info["name"]
        if name not in self.config.service_passwords:
            raise _Refused(
                404,
                assumptions.http_error_code(404),
                f"no outbound service named {name!r}",
                outcome="not_found",
            )
        return name

    async def _outbound_queues(self, request: web.Request) -> tuple[str, web.StreamResponse]:
        await self._queue_delay()
        self._account_auth(request)
        body = [
            {"service_name": name, "length": self.queue_length(name)} for name in self.service_names
        ]
        return "ok", web.json_response(body)

    def _retry_after(self) -> dict[str, str] | None:
        seconds = self.faults.retry_after_seconds
        return {"Retry-After": f"{seconds:g}"} if seconds else None

    async def _queue_delay(self) -> None:
        if self.faults.queue_delay_seconds > 0:
            await self._wait_unless_closing(self._closing, self.faults.queue_delay_seconds)

    async def _queue(self, request: web.Request) -> tuple[str, web.StreamResponse]:
        await self._queue_delay()
        self._account_auth(request)
        name = self._known_service(request)
        key_name, key_length = assumptions.QUEUE_BODY_KEYS
        return "ok", web.json_response({key_name: name, key_length: self.queue_length(name)})

    async def _purge(self, request: web.Request) -> tuple[str, web.StreamResponse]:
        self._account_auth(request)
        name = self._known_service(request)
        key_name, key_count = assumptions.PURGE_BODY_KEYS
        return "ok", web.json_response({key_name: name, key_count: self.purge(name)})

    # ------------------------------------------------------------ admin

    async def _admin_calls(self, request: web.Request) -> tuple[str, web.StreamResponse]:
        now = self.clock()
        body = {
            "started": self.started_count(),
            "calls": [call.as_json(now) for call in self.calls],
            "requests": [
                {"endpoint": endpoint, "outcome": outcome, "count": count}
                for (endpoint, outcome), count in sorted(self.requests.items())
            ],
            "callbacks": [dataclasses.asdict(record) for record in self.callbacks],
            "outages": [dataclasses.asdict(outage) for outage in self.outages],
        }
        return "ok", web.json_response(body)

    async def _admin_requests(self, request: web.Request) -> tuple[str, web.StreamResponse]:
        """The kept service_start requests; with ?unique_id=, only those carrying it,
        and when that unique_id first started calls."""
        unique_id = request.query.get("unique_id")
        body: dict[str, Any] = {}
        if unique_id is None:
            records: Sequence[StartRequest] = self.start_requests
        else:
            records = self.requests_with(unique_id)
            body["first_start"] = self.first_start(unique_id)
        body["requests"] = [dataclasses.asdict(record) for record in records]
        body["outages"] = [dataclasses.asdict(outage) for outage in self.outages]
        return "ok", web.json_response(body)

    async def _admin_outage(self, request: web.Request) -> tuple[str, web.StreamResponse]:
        """{"seconds": N}: answer 200, then go down for N seconds (real time) and
        come back on the same port; for a simulator run as its own process."""
        try:
            body = await request.json()
        except ValueError:
            raise _bad_request("0002", "body: not valid JSON") from None
        seconds = body.get("seconds") if isinstance(body, dict) else None
        if (
            not isinstance(body, dict)
            or set(body) != {"seconds"}
            or isinstance(seconds, bool)
            or not isinstance(seconds, int | float)
            or not 0 <= seconds < math.inf
        ):
            raise _bad_request("0002", 'body: must be {"seconds": N}, N >= 0')
        if self._outage_task is not None and not self._outage_task[0].done():
            raise _Refused(
                409, assumptions.http_error_code(409), "an outage is under way", outcome="conflict"
            )
        runner = self._runner
        assert runner is not None  # this very request came in through it
        self._begin_outage()
        # Refuse new connections before the answer leaves, so that a client holding
        # the 200 can count on the next connection being refused.
        await self._stop_listening(runner)
        response = web.json_response(
            {"seconds": seconds, "outages": len(self.outages)}, headers={"Connection": "close"}
        )
        await response.prepare(request)
        await response.write_eof()
        stopped = asyncio.Event()
        task = asyncio.create_task(self._outage_then_back(seconds, stopped), name="outage")
        task.add_done_callback(self._outage_done)
        self._outage_task = (task, stopped)
        return "ok", response

    async def _outage_then_back(self, seconds: float, stopped: asyncio.Event) -> None:
        await self._close_server()
        try:
            await asyncio.wait_for(stopped.wait(), seconds)
        except TimeoutError:
            await self.come_back()

    @staticmethod
    def _outage_done(task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            # Nobody awaits it: a port taken meanwhile, say, must not go unseen.
            logger.error("simulator outage failed", exc_info=task.exception())

    async def _admin_faults(self, request: web.Request) -> tuple[str, web.StreamResponse]:
        if request.method == "POST":
            try:
                body = await request.json()
            except ValueError:
                raise _bad_request("0002", "body: not valid JSON") from None
            if not isinstance(body, dict):
                raise _bad_request("0002", "body: must be a JSON object")
            try:
                self.faults.update(body)
            except ValueError as exc:
                raise _bad_request("0002", str(exc)) from None
        return "ok", web.json_response(self.faults.as_json())

    # ------------------------------------------------------------ final page

    async def _send_callbacks(self) -> None:
        """The one supervised task that requests final pages as calls finish."""
        while True:
            try:
                await self._next_callback()
            except asyncio.CancelledError:
                raise
            except Exception:
                # A bug here must not silence every later callback.
                logger.exception("final-page sender failed; carrying on")
                await asyncio.sleep(_CLOCK_POLL_SECONDS)

    async def _next_callback(self) -> None:
        due = self._callbacks_due
        if not due:
            self._callbacks_changed.clear()
            await self._callbacks_changed.wait()
            return
        delay = due[0][0] - self.clock()
        if delay > 0:
            self._callbacks_changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    self._callbacks_changed.wait(), min(delay, _CLOCK_POLL_SECONDS)
                )
            return
        _, _, index = heapq.heappop(due)
        call = self.calls[index]
        if call.purged and not assumptions.PURGED_START_REQUESTS_FINAL_PAGE:
            return
        if self._loss_rng.random() < self.config.callback_loss:
            self.callbacks.append(CallbackRecord(call.reference, "lost", self.clock()))
            return
        await self._callback_slots.acquire()
        task = asyncio.create_task(self._post_final_page(call))
        self._callback_tasks.add(task)
        task.add_done_callback(self._final_page_done)

    def _final_page_done(self, task: asyncio.Task[None]) -> None:
        self._callback_tasks.discard(task)
        if task.cancelled() or task.exception() is None:
            return
        # Expected failures are recorded by _post_final_page; this is a bug, kept
        # visible without stopping the other callbacks.
        logger.error("final-page request failed unexpectedly", exc_info=task.exception())

    async def _post_final_page(self, call: StartedCall) -> None:
        assert self._session is not None
        assert self.config.final_page_url is not None
        try:
            async with self._session.post(
                self.config.final_page_url,
                data=json.dumps(call.instance_info()),
                headers={"Content-Type": assumptions.FINAL_PAGE_CONTENT_TYPE},
            ) as response:
                await response.read()
                outcome: CallbackOutcome = "sent" if response.status < 300 else "failed"
                self.callbacks.append(
                    CallbackRecord(call.reference, outcome, self.clock(), status=response.status)
                )
        except Exception as exc:
            # Whatever goes wrong with one final page is that page's failure.
            self.callbacks.append(
                CallbackRecord(
                    call.reference, "failed", self.clock(), error=f"{type(exc).__name__}: {exc}"
                )
            )
            if not isinstance(exc, aiohttp.ClientError | TimeoutError | OSError):
                raise
        finally:
            self._callback_slots.release()


def _sip_header_problems(headers: Any) -> Iterator[str]:
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


# ---------------------------------------------------------------- command line


def _probability(text: str) -> float:
    try:
        return _check_probability("value", float(text))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a probability between 0 and 1: {text}") from None


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"not a positive number: {text}")
    return value


def _non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value >= 0):
        raise argparse.ArgumentTypeError(f"not a non-negative number: {text}")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"not a positive integer: {text}")
    return value


def _service_password(text: str) -> tuple[str, str]:
    name, equals, password = text.partition("=")
    if not equals or not name or not password:
        raise argparse.ArgumentTypeError(f"expected NAME=PASSWORD, got {text!r}")
    return name, password


_FAULT_HELP: Final[Mapping[FaultKind, str]] = {
    "throttle": "answered 429, nothing started",
    "error_before": "answered 500, nothing started",
    "error_after": "answered 500 after the calls started",
    "drop_after": "connection closed without an answer after the calls started",
    "slow": "answered after --slow-seconds, the calls started at once",
    "malformed": "answered 200 after the calls started, with references of "
    "--malformed-shape that cannot be matched to them (a replay gets the true ones)",
    "trickle": "answered 200 after the calls started, a few bytes every --trickle-seconds",
}


def configure_parser(parser: argparse.ArgumentParser) -> None:
    defaults = SimulatorConfig()
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--port", type=int, default=8700, help="0 picks a free port")
    parser.add_argument(
        "--account-type", choices=get_args(AccountType), default=defaults.account_type
    )
    parser.add_argument(
        "--cps",
        type=_positive_float,
        default=defaults.calls_per_second,
        help="calls per second at which queued starts begin",
    )
    parser.add_argument("--max-list-length", type=_positive_int, default=defaults.max_list_length)
    parser.add_argument("--cloud-id", default=defaults.cloud_id)
    parser.add_argument("--username", default=defaults.username)
    parser.add_argument("--api-key", default=defaults.api_access_key, help="API access key")
    parser.add_argument(
        "--service",
        metavar="NAME=PASSWORD",
        type=_service_password,
        action="append",
        help="an outbound service and its password (repeatable; "
        f"default {next(iter(defaults.service_passwords))}=...)",
    )
    parser.add_argument(
        "--disabled-service", metavar="NAME", action="append", default=[], help="answers 403"
    )
    parser.add_argument(
        "--validated-caller-id",
        metavar="NUMBER",
        action="append",
        help="repeatable; without it any valid international number is accepted",
    )
    parser.add_argument("--final-page-url", default=None)
    parser.add_argument(
        "--callback-loss",
        type=_probability,
        default=0.0,
        help="share of final-page requests silently not sent",
    )
    faults = parser.add_argument_group(
        "faults",
        "Each SHARE (0 to 1) is the part of service_start requests, once authenticated "
        "and valid, that get that fault; the other options tune them.",
    )
    for kind in FAULT_KINDS:
        faults.add_argument(
            f"--{kind.replace('_', '-')}",
            type=_probability,
            default=0.0,
            metavar="SHARE",
            help=_FAULT_HELP[kind],
        )
    defaults_faults = Faults()
    faults.add_argument(
        "--slow-seconds",
        type=_non_negative_float,
        metavar="SECONDS",
        default=defaults_faults.slow_seconds,
        help="how long a slow answer is delayed (default %(default)s)",
    )
    faults.add_argument(
        "--malformed-shape",
        choices=MALFORMED_SHAPES,
        default=defaults_faults.malformed_shape,
        help="the shape of a malformed answer: one reference repeated, one missing, one "
        "too many, non-strings, an object, other requests' references, or a mix "
        "(default %(default)s)",
    )
    faults.add_argument(
        "--trickle-seconds",
        type=_non_negative_float,
        metavar="SECONDS",
        default=defaults_faults.trickle_seconds,
        help="the pause between the writes of a trickled answer (default %(default)s)",
    )
    faults.add_argument(
        "--delay-before-seconds",
        type=_non_negative_float,
        metavar="SECONDS",
        default=defaults_faults.delay_before_seconds,
        help="every service_start request waits this long before it is even "
        "authenticated (default %(default)s)",
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="seeds the call outcomes and the fault draws"
    )


def run_from_args(args: argparse.Namespace) -> int:
    try:
        config = SimulatorConfig(
            cloud_id=args.cloud_id,
            username=args.username,
            api_access_key=args.api_key,
            service_passwords=dict(args.service) if args.service else _default_service_passwords(),
            disabled_services=frozenset(args.disabled_service),
            account_type=args.account_type,
            calls_per_second=args.cps,
            max_list_length=args.max_list_length,
            validated_caller_ids=(
                frozenset(args.validated_caller_id) if args.validated_caller_id else None
            ),
            final_page_url=args.final_page_url,
            callback_loss=args.callback_loss,
            seed=args.seed,
        )
        faults = faults_from_args(args)
    except ValueError as exc:
        print(f"simulator: {exc}", file=sys.stderr)
        return 2
    return asyncio.run(_serve(config, faults, args.host, args.port))


def faults_from_args(args: argparse.Namespace) -> Faults:
    """The faults that configure_parser's options ask for."""
    faults = Faults(
        slow_seconds=args.slow_seconds,
        malformed_shape=args.malformed_shape,
        trickle_seconds=args.trickle_seconds,
        delay_before_seconds=args.delay_before_seconds,
    )
    for kind in FAULT_KINDS:
        setattr(faults, kind, getattr(args, kind))
    return faults


async def _serve(config: SimulatorConfig, faults: Faults, host: str, port: int) -> int:
    simulator = Simulator(config)
    simulator.faults = faults
    try:
        base_url = await simulator.start(host, port)
    except OSError as exc:
        print(f"simulator: cannot listen on {host}:{port}: {exc.strerror}", file=sys.stderr)
        await simulator.stop()
        return 1
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):  # no signal handlers on Windows
            loop.add_signal_handler(signum, stop.set)
    print(base_url, flush=True)
    try:
        await stop.wait()
    finally:
        await simulator.stop()
    return 0
