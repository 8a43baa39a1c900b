"""The engine's words, defined once: states, call causes and pacing budget keys.

Each vocabulary is a `Literal` type (what mypy checks) and a tuple of its values in
the same order (what code iterates and tests compare). The database holds the same
words in CHECK constraints (migrations/); tests/test_vocabulary.py reads those
constraints from a migrated database and fails when the two differ, so a state added
on one side and not the other cannot go unnoticed.

Code that branches on one of these words ends its `if`/`match` with `assert_never`, so
that a new word is a type error at every place that must learn about it.
"""

from __future__ import annotations

from typing import Final, Literal, TypeGuard, get_args

# --- states -------------------------------------------------------------------------------

CampaignState = Literal["active", "paused", "cancelled", "completed"]
CAMPAIGN_STATES: Final[tuple[CampaignState, ...]] = get_args(CampaignState)

# In the order a contact moves through them (the order `campaign status` shows).
ContactState = Literal[
    "pending",
    "dispatching",
    "dialing",
    "completed",
    "failed",
    "invalid",
    "suppressed",
    "duplicate",
    "cancelled",
]
CONTACT_STATES: Final[tuple[ContactState, ...]] = get_args(ContactState)

# Contacts the dispatcher will never dial: judged once, at claim (or load) time.
NeverState = Literal["invalid", "suppressed", "duplicate"]
NEVER_STATES: Final[tuple[NeverState, ...]] = get_args(NeverState)

# Contacts still on their way: waiting, claimed into a batch, or with a call running.
OpenState = Literal["pending", "dispatching", "dialing"]
OPEN_STATES: Final[tuple[OpenState, ...]] = get_args(OpenState)

BatchState = Literal["pending", "submitted", "split", "rejected", "parked", "released", "failed"]
BATCH_STATES: Final[tuple[BatchState, ...]] = get_args(BatchState)

# --- call causes --------------------------------------------------------------------------

# The call_cause values Aculab reports on the final page (see docs/aculab.md).
CallCause = Literal[
    "completed", "hung_up", "no_answer", "busy", "unobtainable", "dropped", "failed"
]
CALL_CAUSES: Final[tuple[CallCause, ...]] = get_args(CallCause)

# The engine's own cause for a call whose outcome never arrived (given up) or could
# not be read: it has its own retry delay in campaigns.retry_delays.
UnknownCause = Literal["unknown"]
UNKNOWN: Final[UnknownCause] = "unknown"

# Every cause a call can be recorded with.
RecordedCause = CallCause | UnknownCause
RECORDED_CAUSES: Final[tuple[RecordedCause, ...]] = (*CALL_CAUSES, UNKNOWN)

# Causes meaning the far end answered: never retried ([assumed] §5, see assumptions.py).
AnsweredCause = Literal["completed", "hung_up"]
ANSWERED_CAUSES: Final[tuple[AnsweredCause, ...]] = get_args(AnsweredCause)

# The causes campaigns.retry_delays may name: every cause but the answered ones.
RetryableCause = Literal["busy", "no_answer", "unobtainable", "dropped", "failed", "unknown"]
RETRYABLE_CAUSES: Final[tuple[RetryableCause, ...]] = get_args(RetryableCause)


def is_call_cause(value: object) -> TypeGuard[CallCause]:
    """Whether `value` (from a JSON body) is a cause Aculab reports."""
    return isinstance(value, str) and value in CALL_CAUSES


def is_answered(cause: str) -> TypeGuard[AnsweredCause]:
    return cause in ANSWERED_CAUSES


# --- where an outcome came from, and an operator's resolution of a parked batch ----------

OutcomeSource = Literal["push", "poll", "give_up"]
OUTCOME_SOURCES: Final[tuple[OutcomeSource, ...]] = get_args(OutcomeSource)

ResolveAction = Literal["resend", "not_started", "failed"]
RESOLVE_ACTIONS: Final[tuple[ResolveAction, ...]] = get_args(ResolveAction)

# --- pacing budget keys (rate_budgets.key, rate_grants.key) ------------------------------

# The account's budget (aculab.calls_per_second), shared by every campaign.
ACCOUNT_BUDGET: Final = "account"


def campaign_budget(campaign_id: int) -> str:
    """The key of one campaign's own budget (campaigns.calls_per_second)."""
    return f"campaign:{campaign_id}"
