"""service_start (§2): authenticate, validate rest_calls, replay a remembered
unique_id or start the calls, and answer with their references, unless a fault
drawn for the request answers otherwise. Every request is recorded."""

from __future__ import annotations

import asyncio
import random
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from aiohttp import web

from campaign import assumptions
from campaign.simulator import faulty_answers
from campaign.simulator.auth import Authenticator
from campaign.simulator.book import CallBook
from campaign.simulator.calls import CallSpec
from campaign.simulator.faults import FaultKind, Faults
from campaign.simulator.refusals import Refused, bad_request, refused_with_status
from campaign.simulator.validation import RestCalls, request_params, single

_INTERNAL_ERROR: Final = "internal error"


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


@dataclass(slots=True)
class _Pending:
    """What a service_start request has revealed so far, for its StartRequest."""

    unique_id: str | None = None
    calls: int | None = None
    started: bool = False

    def counted(self, calls: int) -> None:
        self.calls = calls


class StartRequests:
    """The latest service_start requests (at most `limit`), in the order they were
    answered, and an index of them by unique_id."""

    def __init__(self, limit: int) -> None:
        self.kept: deque[StartRequest] = deque(maxlen=limit)
        # The StartRequests of `kept` that carry each unique_id, oldest first.
        self._by_unique_id: dict[str, deque[StartRequest]] = {}

    def with_unique_id(self, unique_id: str) -> list[StartRequest]:
        return list(self._by_unique_id.get(unique_id, ()))

    def add(self, record: StartRequest) -> None:
        kept = self.kept
        if len(kept) == kept.maxlen:
            # The deque drops its oldest on append; the index must drop it too.
            oldest = kept[0]
            if oldest.unique_id is not None:
                same = self._by_unique_id[oldest.unique_id]
                same.popleft()
                if not same:
                    del self._by_unique_id[oldest.unique_id]
        kept.append(record)
        if record.unique_id is not None:
            self._by_unique_id.setdefault(record.unique_id, deque()).append(record)


class ServiceStart:
    """The service_start endpoint."""

    def __init__(
        self,
        *,
        clock: Callable[[], float],
        auth: Authenticator,
        rest_calls: RestCalls,
        book: CallBook,
        faults: Callable[[], Faults],
        closing: Callable[[], asyncio.Event],
        records: StartRequests,
        seed: int,
    ) -> None:
        self._clock = clock
        self._auth = auth
        self._rest_calls = rest_calls
        self._book = book
        # Callables: the Simulator's faults may be replaced, and each start of
        # its server has its own closing event.
        self._faults = faults
        self._closing = closing
        self._fault_rng = random.Random(f"{seed}:faults")
        self._shape_rng = random.Random(f"{seed}:malformed-shapes")
        self.records = records

    async def handle(self, request: web.Request) -> tuple[str, web.StreamResponse]:
        arrived = self._clock()
        pending = _Pending()
        outcome = "bug"
        try:
            outcome, response = await self._answer(request, pending)
        except Refused as refusal:
            outcome = refusal.outcome
            raise
        except asyncio.CancelledError:
            outcome = "cancelled"
            raise
        finally:
            self.records.add(
                StartRequest(
                    at=arrived,
                    answered_at=self._clock(),
                    unique_id=pending.unique_id,
                    outcome=outcome,
                    calls=pending.calls,
                    started=pending.started,
                )
            )
        return outcome, response

    async def _answer(
        self, request: web.Request, pending: _Pending
    ) -> tuple[str, web.StreamResponse]:
        closing = self._closing()
        delay = self._faults().delay_before_seconds
        if delay > 0 and not await faulty_answers.wait_unless_closing(closing, delay):
            # The simulator stopped or went down while the request was on the
            # wire: it neither answers nor starts anything.
            faulty_answers.drop_connection(request)
            return "aborted", web.Response()
        service, rest_calls, unique_id, specs = await self._read(request, pending)
        replayed: tuple[str, ...] | None = None
        if unique_id is not None:
            replayed = self._book.replayed(unique_id, service, rest_calls)

        faults = self._faults()
        fault = faults.draw(self._fault_rng)
        if fault == "throttle":
            raise Refused(
                assumptions.THROTTLED_STATUS,
                assumptions.http_error_code(assumptions.THROTTLED_STATUS),
                "too many requests; nothing was started",
                outcome="throttled",
                headers=faulty_answers.retry_after(faults),
            )
        if fault == "error_before":
            raise self._internal_error("error_before")

        if replayed is not None:
            references = replayed
        else:
            references = self._book.start(service, specs, unique_id, rest_calls)
            pending.started = True
        outcome = "replayed" if replayed is not None else "ok"
        return await self._answer_started(request, closing, fault, outcome, references)

    async def _answer_started(
        self,
        request: web.Request,
        closing: asyncio.Event,
        fault: FaultKind | None,
        outcome: str,
        references: tuple[str, ...],
    ) -> tuple[str, web.StreamResponse]:
        """The answer once the calls are started (or replayed): `outcome` with
        their references, unless a fault that strikes after the start answers."""
        if fault == "malformed":
            body = faulty_answers.malformed_body(
                self._faults(), self._shape_rng, self._book, references
            )
            return "malformed", web.json_response(body)
        if fault == "trickle":
            response = await faulty_answers.trickle(
                request, closing, self._trickle_seconds, references
            )
            return "trickle", response
        ok = web.json_response(list(references))
        if fault == "error_after":
            raise self._internal_error("error_after")
        if fault == "drop_after":
            faulty_answers.drop_connection(request)
            return "drop_after", ok
        if fault == "slow":
            slow = self._faults().slow_seconds
            if not await faulty_answers.wait_unless_closing(closing, slow):
                # Stopping or going down: the answer is lost with the connection.
                faulty_answers.drop_connection(request)
            return "slow", ok
        return outcome, ok

    def _trickle_seconds(self) -> float:
        return self._faults().trickle_seconds

    def _internal_error(self, outcome: str) -> Refused:
        refusal = refused_with_status(500, _INTERNAL_ERROR, outcome=outcome)
        refusal.headers.update(faulty_answers.retry_after(self._faults()) or {})
        return refusal

    async def _read(
        self, request: web.Request, pending: _Pending
    ) -> tuple[str, str, str | None, list[CallSpec]]:
        """(service, rest_calls, unique_id, call specs) of an authenticated, valid
        request; Refused otherwise."""
        service = self._auth.service(request)
        params = await request_params(request)
        given = params.getall("rest_calls", []) + params.getall("outbound_parameters", [])
        if len(given) > 1:
            raise bad_request(
                "0003",
                "rest_calls: given more than once (outbound_parameters is its legacy alias)",
            )
        if not given:
            hint = " (parameters are form fields or query arguments, not a JSON body)"
            text = "rest_calls: mandatory parameter missing"
            raise bad_request(
                "0001", text + hint if request.content_type == "application/json" else text
            )
        rest_calls = given[0]
        unique_id = single(params, "unique_id")
        pending.unique_id = unique_id
        if unique_id == "":
            raise bad_request(assumptions.EMPTY_UNIQUE_ID_CODE, "unique_id: empty")
        specs = self._rest_calls.parse(rest_calls, pending.counted)
        return service, rest_calls, unique_id, specs
