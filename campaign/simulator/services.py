"""The web services besides service_start: application_status (§3) and the
outbound queues (list, one queue's length, purge), all with account credentials."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from aiohttp import web

from campaign import assumptions
from campaign.simulator.auth import Authenticator
from campaign.simulator.book import CallBook
from campaign.simulator.config import SimulatorConfig
from campaign.simulator.faults import Faults
from campaign.simulator.faulty_answers import wait_unless_closing
from campaign.simulator.refusals import bad_request, refused_with_status
from campaign.simulator.validation import request_params, single


class WebServices:
    """Handlers of the documented endpoints other than service_start."""

    def __init__(
        self,
        *,
        config: SimulatorConfig,
        clock: Callable[[], float],
        auth: Authenticator,
        book: CallBook,
        faults: Callable[[], Faults],
        closing: Callable[[], asyncio.Event],
    ) -> None:
        self._config = config
        self._clock = clock
        self._auth = auth
        self._book = book
        self._faults = faults
        self._closing = closing

    def service_names(self) -> list[str]:
        return list(self._config.service_passwords)

    async def application_status(self, request: web.Request) -> tuple[str, web.StreamResponse]:
        self._auth.account(request)
        params = await request_params(request)
        reference = single(params, "application_instance_id")
        if not reference:
            raise bad_request("0001", "application_instance_id: mandatory parameter missing")
        now = self._clock()
        call = self._book.find(reference)
        if call is None or now - call.finish_at > assumptions.STATUS_RETENTION_SECONDS:
            raise refused_with_status(
                assumptions.UNKNOWN_INSTANCE_STATUS,
                "application_instance_id: no such application instance",
                outcome="not_found",
            )
        return "ok", web.json_response(call.status_body(now))

    async def outbound_queues(self, request: web.Request) -> tuple[str, web.StreamResponse]:
        await self._queue_delay()
        self._auth.account(request)
        body = [
            {"service_name": name, "length": self._book.queue_length(name)}
            for name in self.service_names()
        ]
        return "ok", web.json_response(body)

    async def queue(self, request: web.Request) -> tuple[str, web.StreamResponse]:
        await self._queue_delay()
        self._auth.account(request)
        name = self._known_service(request)
        key_name, key_length = assumptions.QUEUE_BODY_KEYS
        return "ok", web.json_response({key_name: name, key_length: self._book.queue_length(name)})

    async def purge(self, request: web.Request) -> tuple[str, web.StreamResponse]:
        self._auth.account(request)
        name = self._known_service(request)
        key_name, key_count = assumptions.PURGE_BODY_KEYS
        return "ok", web.json_response({key_name: name, key_count: self._book.purge(name)})

    def _known_service(self, request: web.Request) -> str:
        name = request.match_info["name"]
        if name not in self._config.service_passwords:
            raise refused_with_status(
                404, f"no outbound service named {name!r}", outcome="not_found"
            )
        return name

    async def _queue_delay(self) -> None:
        seconds = self._faults().queue_delay_seconds
        if seconds > 0:
            await wait_unless_closing(self._closing(), seconds)
