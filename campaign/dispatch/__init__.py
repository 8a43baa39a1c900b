"""The dispatch protocol: pending contacts become started calls, exactly once.

One file per part, each read top to bottom:

- calls.py: the pure part: a contact becomes a call object (or is skipped or
  deferred), a batch gets its deterministic `unique_id`;
- pacing.py: budgets, the open-call count, Aculab's queue;
- claim.py: step 1, claim and persist, one transaction before any request;
- send.py: steps 2 to 5: send, acknowledge, retry with the same id, expire,
  park or release, pause, split;
- loop.py: the `Dispatcher`, whose loop ties them together, and step 6 (a batch
  whose owner stopped heartbeating is taken over and re-sent by its stored id).
"""

from __future__ import annotations

from campaign.aculab import AculabError
from campaign.dispatch.calls import (
    DUPLICATE_REASON,
    Deferred,
    Prepared,
    Ready,
    Rules,
    Skipped,
    contact_verdict,
    prepare,
    reference_problem,
    unique_id_for,
)
from campaign.dispatch.claim import Wanted
from campaign.dispatch.loop import Dispatcher
from campaign.dispatch.pacing import Budget, pacing_room
from campaign.dispatch.send import Counters

__all__ = [
    "DUPLICATE_REASON",
    "AculabError",
    "Budget",
    "Counters",
    "Deferred",
    "Dispatcher",
    "Prepared",
    "Ready",
    "Rules",
    "Skipped",
    "Wanted",
    "contact_verdict",
    "pacing_room",
    "prepare",
    "reference_problem",
    "unique_id_for",
]
