"""The circuit breaker between a daemon and Aculab.

After `threshold` service_start requests in a row failed because Aculab could
not be reached or did not answer usefully (no connection, a timeout, a reset,
a 5xx), the breaker opens: the dispatcher claims nothing new and sends one
request at a time (the probe), at a backoff that doubles up to a cap. The first
request that gets any answer from Aculab closes it, and dispatching resumes at
full speed. A 429 is Aculab answering, so it neither opens nor holds the breaker.

It is a plain object driven by the dispatcher: `failure()` and `success()` say
when an episode starts or ends, so the caller logs each exactly once.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from campaign.runtime import doubling


@dataclass
class Breaker:
    threshold: int
    initial_delay: float
    max_delay: float
    clock: Callable[[], float] = time.monotonic
    failures: int = 0
    """service_start requests in a row that failed as an outage."""
    opened_at: float | None = None
    probes: int = 0
    """Requests sent while open (each one is the probe)."""
    next_probe_at: float = 0.0
    last_error: str | None = None

    @property
    def is_open(self) -> bool:
        return self.opened_at is not None

    def failure(self, reason: str) -> bool:
        """A request failed as an outage; True when this opens the breaker."""
        self.failures += 1
        self.last_error = reason
        if self.opened_at is not None:
            self._schedule_probe()
            return False
        if self.failures < self.threshold:
            return False
        self.opened_at = self.clock()
        self.probes = 0
        self._schedule_probe()
        return True

    def success(self) -> float | None:
        """Aculab answered; returns how long it was unreachable when this closes the breaker."""
        self.failures = 0
        if self.opened_at is None:
            return None
        lasted = self.clock() - self.opened_at
        self.opened_at = None
        self.last_error = None
        return lasted

    def probe_in(self) -> float:
        """Seconds until the next probe may be sent (0 when due or when closed)."""
        if self.opened_at is None:
            return 0.0
        return max(0.0, self.next_probe_at - self.clock())

    def probe_sent(self) -> None:
        """A probe goes out: the next one waits a full backoff, whatever becomes of
        this one (it may end in neither a failure nor a success: a batch too old to
        send, a database error)."""
        self.probes += 1
        self._schedule_probe()

    def _schedule_probe(self) -> None:
        delay = doubling(self.initial_delay, self.probes, self.max_delay)
        self.next_probe_at = self.clock() + delay
