"""The simulator's own endpoints under /_simulator/, for a simulator run as its own
process: what it has seen (calls, requests), its faults, and outages on demand."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from aiohttp import web

from campaign.simulator.refusals import bad_request, refused_with_status
from campaign.simulator.service_start import StartRequest

if TYPE_CHECKING:
    from campaign.simulator.account import Simulator


class Admin:
    """Handlers that read and change a Simulator through its public face."""

    def __init__(self, simulator: Simulator) -> None:
        self._sim = simulator

    async def calls(self, request: web.Request) -> tuple[str, web.StreamResponse]:
        sim = self._sim
        now = sim.clock()
        body = {
            "started": sim.started_count(),
            "calls": [call.as_json(now) for call in sim.calls],
            "requests": [
                {"endpoint": endpoint, "outcome": outcome, "count": count}
                for (endpoint, outcome), count in sorted(sim.requests.items())
            ],
            "callbacks": [dataclasses.asdict(record) for record in sim.callbacks],
            "outages": [dataclasses.asdict(outage) for outage in sim.outages],
        }
        return "ok", web.json_response(body)

    async def requests(self, request: web.Request) -> tuple[str, web.StreamResponse]:
        """The kept service_start requests; with ?unique_id=, only those carrying it,
        and when that unique_id first started calls."""
        sim = self._sim
        unique_id = request.query.get("unique_id")
        body: dict[str, Any] = {}
        if unique_id is None:
            records: Sequence[StartRequest] = sim.start_requests
        else:
            records = sim.requests_with(unique_id)
            body["first_start"] = sim.first_start(unique_id)
        body["requests"] = [dataclasses.asdict(record) for record in records]
        body["outages"] = [dataclasses.asdict(outage) for outage in sim.outages]
        return "ok", web.json_response(body)

    async def outage(self, request: web.Request) -> tuple[str, web.StreamResponse]:
        """{"seconds": N}: answer 200, then go down for N seconds (real time) and
        come back on the same port."""
        try:
            body = await request.json()
        except ValueError:
            raise bad_request("0002", "body: not valid JSON") from None
        seconds = body.get("seconds") if isinstance(body, dict) else None
        if (
            not isinstance(body, dict)
            or set(body) != {"seconds"}
            or isinstance(seconds, bool)
            or not isinstance(seconds, int | float)
            or not 0 <= seconds < math.inf
        ):
            raise bad_request("0002", 'body: must be {"seconds": N}, N >= 0')
        listener = self._sim.listener
        if listener.outage_under_way():
            raise refused_with_status(409, "an outage is under way", outcome="conflict")

        def answer(outages: int) -> web.StreamResponse:
            return web.json_response(
                {"seconds": seconds, "outages": outages}, headers={"Connection": "close"}
            )

        return "ok", await listener.go_down_after_answer(request, answer, seconds)

    async def faults(self, request: web.Request) -> tuple[str, web.StreamResponse]:
        if request.method == "POST":
            try:
                body = await request.json()
            except ValueError:
                raise bad_request("0002", "body: not valid JSON") from None
            if not isinstance(body, dict):
                raise bad_request("0002", "body: must be a JSON object")
            try:
                self._sim.faults.update(body)
            except ValueError as exc:
                raise bad_request("0002", str(exc)) from None
        return "ok", web.json_response(self._sim.faults.as_json())
