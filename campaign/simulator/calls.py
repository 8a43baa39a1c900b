"""The call model: one started call and what Aculab reports about it at any moment
(application_status, §3) and when it ends (the final page, §5).

A call's lifecycle is computed from its start and finish times whenever it is
asked for, so an injectable clock drives it and no task is kept per call."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Final

from campaign import assumptions
from campaign.assumptions import InstancePhase

# Cost model: dollars per answered minute and per instance that ran.
_PSTN_DOLLARS_PER_MINUTE: Final = 0.01
_PLATFORM_DOLLARS_PER_INSTANCE: Final = 0.0005


@dataclass(frozen=True)
class CallSpec:
    """One valid call object of rest_calls."""

    to: str
    from_: str | None
    token: str | None
    outbound_parameters: str | None
    extra_sip_headers: tuple[tuple[str, str], ...]


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
