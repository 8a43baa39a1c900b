"""How a call ended, and what happens to its contact next.

Push (the final page) and poll (application_status) both end here, in
`record`: the first outcome recorded for a call wins, a second is a no-op, and
an outcome for a contact that has moved on (cancelled campaign, a newer
attempt) is stored on the call and changes nothing else but the contact's
`updated_at` (its results changed: see the contact_results view).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import asyncpg
import structlog

from campaign import assumptions, vocabulary
from campaign.db import outcomes as oq
from campaign.vocabulary import OutcomeSource, is_answered, is_call_cause

if TYPE_CHECKING:
    from campaign.metrics import Metrics

log = structlog.get_logger("campaign.outcomes")

MAX_RETRY_DELAY_SECONDS = 365 * 86400.0

# Kept under their old names for the callers that read them from here.

Recorded = Literal["recorded", "duplicate", "unknown_reference"]


@dataclass(frozen=True)
class Outcome:
    reference: str
    cause: str
    raw_cause: str | None = None
    duration: float | None = None
    reason: str | None = None
    retryable: bool = True
    """False for a call given up while Aculab still showed it queued or running: it
    may yet ring the contact, so another attempt could call them twice."""


@dataclass(frozen=True)
class Decision:
    state: Literal["completed", "failed", "pending", "cancelled"]
    delay: float | None
    reason: str


def decide(
    cause: str, attempts: int, max_attempts: int, retry_delays: Mapping[str, Any]
) -> Decision:
    """The retry policy: answered → completed; else retry after the cause's delay
    while the attempt budget lasts; a cause without a delay is not retried."""
    if is_answered(cause):
        return Decision("completed", None, f"answered ({cause})")
    delay = retry_delays.get(cause)
    if not isinstance(delay, int | float) or isinstance(delay, bool) or not math.isfinite(delay):
        return Decision("failed", None, f"{cause}: not retried for this cause")
    if attempts >= max_attempts:
        return Decision(
            "failed", None, f"{cause} on attempt {attempts} of {max_attempts}: no attempts left"
        )
    # The database refuses delays beyond a year; the cap also guards older rows.
    delay = min(max(0.0, float(delay)), MAX_RETRY_DELAY_SECONDS)
    return Decision(
        "pending", delay, f"{cause} on attempt {attempts} of {max_attempts}: retry in {delay:g}s"
    )


class BadOutcome(ValueError):
    """The body does not describe a call outcome we can record."""


def _duration(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        return None
    return seconds if math.isfinite(seconds) and seconds >= 0 else None


def _text(value: Any, limit: int = 64) -> str | None:
    return str(value)[:limit] if value is not None else None


def from_instance_info(body: Any) -> Outcome:
    """The outcome a final page reports (docs/aculab.md: The final page and call outcomes)."""
    if not isinstance(body, dict):
        raise BadOutcome("instance_info must be a JSON object")
    reference = body.get("application_instance_id")
    if not isinstance(reference, str) or not reference or len(reference) > 200:
        raise BadOutcome("instance_info.application_instance_id is missing")
    call = body.get("this_call")
    if not isinstance(call, dict):
        raise BadOutcome("instance_info.this_call is missing")
    cause = call.get("call_cause")
    if not is_call_cause(cause):
        raise BadOutcome(f"this_call.call_cause {str(cause)[:40]!r} is not a known cause")
    return Outcome(
        reference=reference,
        cause=cause,
        raw_cause=_text(call.get("call_raw_cause")),
        duration=_duration(call.get("seconds_call_duration")),
    )


def from_status(reference: str, body: dict[str, Any]) -> Outcome | None:
    """The outcome application_status shows (§3), or None while queued or running."""
    if assumptions.instance_phase(body) != "finished":
        return None
    cdrs = [c for c in body.get("cdrs") or [] if isinstance(c, dict)]
    errs = [e for e in body.get("errs") or [] if isinstance(e, dict)]
    if cdrs:
        cdr = cdrs[0]
        cause = cdr.get("call_cause")
        if is_call_cause(cause):
            return Outcome(
                reference,
                cause,
                _text(cdr.get("call_raw_cause")),
                _duration(cdr.get("seconds_call_duration")),
            )
    if errs:
        text = "; ".join(f"{e.get('code')}: {e.get('text')}" for e in errs)[:300]
        return Outcome(reference, "failed", None, None, f"the instance could not run: {text}")
    return Outcome(reference, vocabulary.UNKNOWN, None, None, "finished without a call record")


async def record(
    pool: asyncpg.Pool, outcome: Outcome, source: OutcomeSource, metrics: Metrics | None = None
) -> Recorded:
    """Store the outcome once and move the contact on; callers shield it from cancellation."""
    async with pool.acquire() as conn, conn.transaction():
        call = await oq.finish_call(conn, outcome, source)
        if call is None:
            finished = await oq.call_finished(conn, outcome.reference)
            if finished is None:
                return "unknown_reference"
            if finished:
                return "duplicate"
            # The acknowledgement committed after our UPDATE took its snapshot:
            # the call is visible now, so record it.
            call = await oq.finish_call(conn, outcome, source)
            if call is None:
                return "duplicate"
        contact = await oq.lock_contact(conn, call.contact_id)
        moved_on = contact is None or (
            contact.state != "dialing" or contact.reference != outcome.reference
        )
        decision = None
        if not moved_on and contact is not None:
            decision = decide(
                outcome.cause, contact.attempts, contact.max_attempts, contact.retry_delays
            )
            if decision.state == "pending" and contact.campaign_state == "cancelled":
                decision = Decision("cancelled", None, f"{outcome.cause}; campaign cancelled")
            elif decision.state == "pending" and not outcome.retryable:
                decision = Decision(
                    "failed", None, f"{outcome.cause}: not retried, the call may still be live"
                )
            reason = decision.reason
            if outcome.reason is not None:
                reason = f"{reason} ({outcome.reason})"
            await oq.apply_decision(
                conn, call.contact_id, decision.state, decision.delay, outcome.cause, reason
            )
        elif contact is not None:
            await oq.touch_contact(conn, call.contact_id)
    if metrics is not None:
        metrics.outcomes.labels(cause=outcome.cause, source=source).inc()
        if decision is not None and decision.state == "pending":
            metrics.retries.labels(cause=outcome.cause).inc()
    log.info(
        "call_finished",
        campaign_id=call.campaign_id,
        contact_id=call.contact_id,
        reference=outcome.reference,
        cause=outcome.cause,
        raw_cause=outcome.raw_cause,
        duration=outcome.duration,
        source=source,
        next_state=decision.state if decision else None,
        retry_in=decision.delay if decision else None,
    )
    return "recorded"
