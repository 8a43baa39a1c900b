"""Simulator: the simulated Aculab account, the public face that tests, benchmarks
and `campaign simulator` use. It composes the parts (the call book, service_start,
the other web services, final pages, the listener, the admin endpoints) and says
which part answers what; it holds no logic of its own."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable
from typing import Self

from campaign.simulator.admin import Admin
from campaign.simulator.app import Route, admin_path, build_app
from campaign.simulator.auth import Authenticator
from campaign.simulator.book import CallBook
from campaign.simulator.calls import StartedCall
from campaign.simulator.config import SimulatorConfig
from campaign.simulator.destinations import NumberChecks
from campaign.simulator.faults import Faults
from campaign.simulator.final_pages import CallbackRecord, FinalPages
from campaign.simulator.listener import Listener, Outage
from campaign.simulator.service_start import ServiceStart, StartRequest, StartRequests
from campaign.simulator.services import WebServices
from campaign.simulator.validation import RestCalls


class Simulator:
    """The simulated Aculab account. Run it with `async with Simulator(...) as sim`.

    State is kept in memory for the life of the object. The clock must not go
    backwards.
    """

    def __init__(
        self,
        config: SimulatorConfig | None = None,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config if config is not None else SimulatorConfig()
        self.faults = Faults()
        """Replaceable: every part reads the current one."""
        self.clock = clock
        self.calls: list[StartedCall] = []
        """Every call ever started, in order."""
        self.requests: Counter[tuple[str, str]] = Counter()
        """(endpoint, outcome) -> number of requests."""

        self._final_pages = FinalPages(self.config, clock, self.calls)
        self._book = CallBook(self.config, clock, self.calls, self._final_pages.schedule)
        auth = Authenticator(self.config)
        numbers = NumberChecks(lambda: self.config.validated_caller_ids)
        self._start_records = StartRequests(self.config.request_record_limit)
        self._service_start = ServiceStart(
            clock=clock,
            auth=auth,
            rest_calls=RestCalls(self.config, numbers),
            book=self._book,
            faults=self._current_faults,
            closing=self._closing,
            records=self._start_records,
            seed=self.config.seed,
        )
        self._services = WebServices(
            config=self.config,
            clock=clock,
            auth=auth,
            book=self._book,
            faults=self._current_faults,
            closing=self._closing,
        )
        self.app = build_app(self._routes(), self.requests, clock)
        self.listener = Listener(self.app, clock)

        self.callbacks: list[CallbackRecord] = self._final_pages.records
        """Every final-page request sent, lost or failed, in order."""
        self.start_requests = self._start_records.kept
        """The latest service_start requests (config.request_record_limit of them),
        in the order they were answered."""
        self.outages: list[Outage] = self.listener.outages
        """Every go_down, in order."""

    def _routes(self) -> list[Route]:
        services, admin = self._services, Admin(self)
        return [
            (("GET", "POST"), "/service_start", "service_start", self._service_start.handle),
            (
                ("GET", "POST"),
                "/application_status",
                "application_status",
                services.application_status,
            ),
            (("GET",), "/service/v1/outbound_queues", "outbound_queues", services.outbound_queues),
            (("GET",), "/service/v1/outbound/{name}/queue", "queue", services.queue),
            (("DELETE",), "/service/v1/outbound/{name}/queue", "queue_purge", services.purge),
            (("GET",), admin_path("calls"), "admin_calls", admin.calls),
            (("GET", "POST"), admin_path("faults"), "admin_faults", admin.faults),
            (("GET",), admin_path("requests"), "admin_requests", admin.requests),
            (("POST",), admin_path("outage"), "admin_outage", admin.outage),
        ]

    def _current_faults(self) -> Faults:
        return self.faults

    def _closing(self) -> asyncio.Event:
        return self.listener.closing

    # ------------------------------------------------------------ what it has seen

    @property
    def service_names(self) -> list[str]:
        return self._services.service_names()

    @property
    def base_url(self) -> str:
        if self.listener.base_url is None:
            raise RuntimeError("the simulator is not started")
        return self.listener.base_url

    def calls_to(self, destination: str) -> int:
        """How many calls were started to this destination (see destination_key)."""
        return self._book.calls_to(destination)

    def started_count(self) -> int:
        """How many call objects service_start accepted (purged ones included)."""
        return len(self.calls)

    def call(self, reference: str) -> StartedCall:
        return self._book.call(reference)

    def request_count(self, endpoint: str, outcome: str | None = None) -> int:
        return sum(
            n for (ep, oc), n in self.requests.items() if ep == endpoint and outcome in (None, oc)
        )

    def first_start(self, unique_id: str) -> float | None:
        """When calls were first started with this unique_id (simulator clock)."""
        return self._book.first_start(unique_id)

    def requests_with(self, unique_id: str) -> list[StartRequest]:
        """The service_start requests that carried this unique_id, among those kept
        in start_requests, in the order they were answered."""
        return self._start_records.with_unique_id(unique_id)

    @property
    def listening(self) -> bool:
        """False before start, after stop, and during an outage."""
        return self.listener.listening

    def callback_counts(self) -> Counter[str]:
        return self._final_pages.counts()

    # ------------------------------------------------------------ the queue

    def queue_length(self, service: str) -> int:
        """Starts accepted for `service` that have not begun yet."""
        return self._book.queue_length(service)

    def purge(self, service: str) -> int:
        """Remove `service`'s queued starts (they never run); how many were removed."""
        return self._book.purge(service)

    # ------------------------------------------------------------ running

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        base_url = await self.listener.start(host, port)
        # After go_down the final-page sender is still running.
        self._final_pages.start()
        return base_url

    async def stop(self) -> None:
        await self.listener.stop()
        await self._final_pages.stop()

    async def go_down(self) -> None:
        """An outage: close the listening socket, so that new connections are
        refused (ECONNREFUSED), and every open connection, answers still waiting
        included. Everything else is kept: calls, unique_ids, the queue, and the
        final pages of calls that finish meanwhile (only the web services are down).
        """
        await self.listener.go_down()

    async def come_back(self) -> str:
        """End an outage: listen again on the same host and port; the base URL.
        (A stopped simulator is started again with start, not this.)"""
        return await self.listener.come_back()

    async def outage(self, seconds: float) -> None:
        """go_down, wait `seconds` of real time (whatever the clock), come_back;
        stays down if the simulator was stopped meanwhile."""
        await self.go_down()
        await asyncio.sleep(seconds)
        if self.listener.down:
            await self.come_back()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()
