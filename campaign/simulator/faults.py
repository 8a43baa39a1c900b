"""Faults to inject into service_start (the settings, changeable while the
simulator runs): which share of requests gets which failure, forced faults, and
the parameters of each kind. faulty_answers.py is how each is given."""

from __future__ import annotations

import math
import random
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Literal, get_args

from campaign.simulator.config import check_probability

# New kinds go at the end: a draw matches the kinds in this order, so the same
# seed and probabilities keep giving the same faults.
FaultKind = Literal[
    "throttle", "error_before", "error_after", "drop_after", "slow", "malformed", "trickle"
]
MalformedShape = Literal["repeat", "short", "extra", "not_strings", "not_a_list", "reused", "mixed"]

# The order in which a random draw is matched against the fault probabilities.
FAULT_KINDS: Final[tuple[FaultKind, ...]] = get_args(FaultKind)
MALFORMED_SHAPES: Final[tuple[MalformedShape, ...]] = get_args(MalformedShape)
# "mixed" picks one of these for each malformed answer.
CONCRETE_MALFORMED_SHAPES: Final = tuple(s for s in MALFORMED_SHAPES if s != "mixed")
_FAULT_SECONDS: Final = (
    "slow_seconds",
    "trickle_seconds",
    "delay_before_seconds",
    "retry_after_seconds",
    "queue_delay_seconds",
)
# What the admin endpoint reads and sets, besides forced faults.
_FAULT_SETTINGS: Final = (*FAULT_KINDS, *_FAULT_SECONDS, "malformed_shape")


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
            value = check_probability(name, value)
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
