"""The account's calls and their lifecycle: each start is paced into the account's
queue (calls_per_second), given its outcome, and remembered under its unique_id
for replays; queued starts can be counted and purged.

Outcomes and references come from their own seeded random streams, so that, say,
adding faults does not change which calls are answered."""

from __future__ import annotations

import dataclasses
import itertools
import math
import random
from collections import Counter, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from campaign import assumptions
from campaign.simulator.calls import CallSpec, StartedCall
from campaign.simulator.config import SimulatorConfig
from campaign.simulator.destinations import destination_key
from campaign.simulator.refusals import Refused

Started = Callable[[Sequence[tuple[float, int]]], None]
"""Told (finish_at, index) of each call a request started, in order."""


@dataclass(frozen=True)
class _Remembered:
    service: str
    rest_calls: str
    references: tuple[str, ...]
    at: float


class CallBook:
    """Every call ever started, by reference, destination and unique_id.

    `calls` is shared with whoever reads it (the Simulator, the final pages): it
    only grows, and a purged call is replaced in place."""

    def __init__(
        self,
        config: SimulatorConfig,
        clock: Callable[[], float],
        calls: list[StartedCall],
        started: Started,
    ) -> None:
        self._config = config
        self._clock = clock
        self.calls = calls
        self._started = started
        seed = config.seed
        self._outcome_rng = random.Random(f"{seed}:outcomes")
        ids_rng = random.Random(f"{seed}:ids")
        self._reference_stem = f"{ids_rng.getrandbits(32):08x}_0.{int(clock())}"
        self._reference_numbers = itertools.count(ids_rng.randrange(10_000, 90_000))
        self._causes = list(config.cause_weights)
        self._cause_weights = list(config.cause_weights.values())

        self._index_by_reference: dict[str, int] = {}
        self._calls_by_destination: Counter[str] = Counter()
        self._unique_ids: dict[str, _Remembered] = {}
        # One time per unique_id ever used to start calls, like _unique_ids itself.
        self._first_starts: dict[str, float] = {}
        # Per service, the indices of calls that may still be queued, in start
        # order; the ones already started are dropped lazily when looked at.
        self._queued: dict[str, deque[int]] = {name: deque() for name in config.service_passwords}
        self._last_start_at = -math.inf

    # ------------------------------------------------------------ lookups

    def call(self, reference: str) -> StartedCall:
        return self.calls[self._index_by_reference[reference]]

    def find(self, reference: str) -> StartedCall | None:
        index = self._index_by_reference.get(reference)
        return self.calls[index] if index is not None else None

    def calls_to(self, destination: str) -> int:
        return self._calls_by_destination[destination_key(destination)]

    def first_start(self, unique_id: str) -> float | None:
        return self._first_starts.get(unique_id)

    # ------------------------------------------------------------ queue

    def queue_length(self, service: str) -> int:
        queued = self._queued[service]
        now = self._clock()
        while queued and self.calls[queued[0]].start_at <= now:
            queued.popleft()
        return len(queued)

    def purge(self, service: str) -> int:
        self.queue_length(service)  # drops the ones already started
        queued = self._queued[service]
        now = self._clock()
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

    # ------------------------------------------------------------ starting

    def replayed(self, unique_id: str, service: str, rest_calls: str) -> tuple[str, ...] | None:
        """The references a unique_id started, if it is still remembered; Refused
        if it comes back with another service or other calls."""
        remembered = self._unique_ids.get(unique_id)
        if remembered is None:
            return None
        if self._clock() - remembered.at > assumptions.UNIQUE_ID_RETENTION_SECONDS:
            del self._unique_ids[unique_id]
            return None
        if remembered.service != service or remembered.rest_calls != rest_calls:
            raise Refused(
                assumptions.UNIQUE_ID_CONFLICT_STATUS,
                assumptions.UNIQUE_ID_CONFLICT_CODE,
                assumptions.UNIQUE_ID_CONFLICT_TEXT,
                outcome="conflict",
            )
        return remembered.references

    def start(
        self,
        service: str,
        specs: Sequence[CallSpec],
        unique_id: str | None,
        rest_calls: str,
    ) -> tuple[str, ...]:
        now = self._clock()
        interval = 1.0 / self._config.calls_per_second
        references: list[str] = []
        finishes: list[tuple[float, int]] = []
        for spec in specs:
            # Aculab queues what exceeds the account's rate instead of refusing it.
            start_at = max(now, self._last_start_at + interval)
            self._last_start_at = start_at
            call = self._new_call(service, spec, unique_id, now, start_at)
            index = len(self.calls)
            self.calls.append(call)
            self._index_by_reference[call.reference] = index
            self._calls_by_destination[destination_key(spec.to)] += 1
            if start_at > now:
                self._queued[service].append(index)
            finishes.append((call.finish_at, index))
            references.append(call.reference)
        self._started(finishes)
        refs = tuple(references)
        if unique_id is not None:
            self._unique_ids[unique_id] = _Remembered(service, rest_calls, refs, now)
            self._first_starts.setdefault(unique_id, now)
        return refs

    def _new_call(
        self, service: str, spec: CallSpec, unique_id: str | None, now: float, start_at: float
    ) -> StartedCall:
        cause = self._outcome_rng.choices(self._causes, self._cause_weights)[0]
        if cause in assumptions.ANSWERED_CAUSES:
            duration = round(self._outcome_rng.uniform(*self._config.answered_seconds), 6)
            finish_at = start_at + duration
        else:
            duration = 0.0
            finish_at = start_at + self._outcome_rng.uniform(*self._config.ring_seconds)
        reference = f"{self._reference_stem}.{next(self._reference_numbers)}"
        return StartedCall(
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

    # ------------------------------------------------------------ references of no call

    def unstarted_reference(self) -> str:
        """A reference shaped like the others, of no call (application_status: 404)."""
        return f"{self._reference_stem}.{next(self._reference_numbers)}"

    def earlier_references(self, own: tuple[str, ...]) -> list[str]:
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
        found.extend(self.unstarted_reference() for _ in range(len(own) - len(found)))
        return found
