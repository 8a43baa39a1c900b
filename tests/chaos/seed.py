"""The chaos suite's seed: CHAOS_SEED when set, else drawn once per session.

Every random choice of the chaos test (which daemon is killed and when, which
requests fail, how calls end) follows from it, so a failed run is repeated by
running again with the seed it printed.
"""

from __future__ import annotations

import os
import random

SEED = int(os.environ.get("CHAOS_SEED") or random.SystemRandom().randrange(1_000_000))
REPRODUCE = f"chaos seed: {SEED} (CHAOS_SEED={SEED} repeats this run's choices)"
