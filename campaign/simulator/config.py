"""The simulated account's settings (SimulatorConfig) and the checks of their values."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Final, Literal, get_args
from urllib.parse import urlsplit

from campaign import assumptions
from campaign.simulator.destinations import DIGITS

AccountType = Literal["trial", "production", "premium"]

# [doc] §5.
CALL_CAUSES: Final = (
    "completed",
    "hung_up",
    "no_answer",
    "busy",
    "unobtainable",
    "dropped",
    "failed",
)
# service_start requests kept in Simulator.start_requests unless configured: about
# half an hour of the simulator's top rate, a few dozen MB at most, and far less
# than the calls those requests started, which are all kept anyway.
DEFAULT_REQUEST_RECORD_LIMIT: Final = 500_000


def default_service_passwords() -> dict[str, str]:
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


def check_probability(name: str, value: object) -> float:
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
    service_passwords: dict[str, str] = field(default_factory=default_service_passwords)
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
                n for n in self.validated_caller_ids if not DIGITS.fullmatch(n) or n[0] == "0"
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
        check_probability("callback_loss", self.callback_loss)
        if self.final_page_url is not None and urlsplit(self.final_page_url).scheme not in {
            "http",
            "https",
        }:
            raise ValueError("final_page_url must be an http(s) URL")
