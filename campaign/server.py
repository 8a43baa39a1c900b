"""The daemon's HTTP side: Aculab's final page, /healthz and /metrics.

`build_app` makes the aiohttp application; `Server` runs it on
listener.host:listener.port and tells the caller the bound port (useful with
port 0); `serve` runs it until the daemon's `stop` event is set.

The final page (docs/aculab.md, final page) is the push half of outcome tracking.
Aculab does not sign these requests, so the URL carries a secret
(/final/<secret>) and ids we did not start are ignored. Aculab does not
retry a final page either: every answer other than 200 is for people reading
logs, and the poller reconciles whatever a push failed to record.
"""

from __future__ import annotations

import asyncio
import hmac
import json
from collections.abc import Awaitable, Callable, Mapping
from types import TracebackType
from typing import Any, Protocol, Self
from urllib.parse import parse_qs

import asyncpg
import structlog
from aiohttp import web

from campaign import assumptions, outcomes
from campaign.db import queries as q
from campaign.db.outcomes import stash_unmatched
from campaign.metrics import Metrics
from campaign.runtime import Shielded
from campaign.settings import ListenerSettings

log = structlog.get_logger("campaign.server")

HEALTH_DATABASE_TIMEOUT = 2.0
"""Seconds /healthz waits for `SELECT 1` before calling the database unhealthy."""
SHUTDOWN_TIMEOUT = 5.0
"""Seconds `Server.stop` lets requests in flight finish; stays under the daemon's grace."""
LINGERING_SECONDS = 2.0
"""Seconds spent reading and discarding the rest of a refused body (413) before closing.

Closing at once could reset the connection before the client reads the 413;
aiohttp's default (10 s) would let every oversized request hold a connection,
and delay shutdown, for that long even after the client has gone.
"""
FORM_CONTENT_TYPE = "application/x-www-form-urlencoded"

# Failures that mean "the database is not there for us right now" (503), as
# opposed to a bug in this module (500, and a traceback in the log).
DB_ERRORS: tuple[type[BaseException], ...] = (
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    OSError,
    TimeoutError,
)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class _Unusable(Exception):
    """The request does not carry an instance_info we can read (answered 400)."""


class _TooLarge(Exception):
    """The body is larger than listener.max_body_bytes (answered 413)."""


def _error(status: int, text: str) -> web.Response:
    return web.json_response({"error": text}, status=status)


# The same answer for a wrong secret as for a path that does not exist, so a
# caller without the secret cannot tell that it guessed the route right.
def _not_found() -> web.Response:
    return _error(404, "not found")


@web.middleware
async def _json_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Router errors (404, 405) as JSON like every other answer here."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status == 404:
            return _not_found()
        if exc.status < 400:
            raise
        response = _error(exc.status, exc.reason.lower())
        if "Allow" in exc.headers:
            response.headers["Allow"] = exc.headers["Allow"]
        return response


def _storable(outcome: outcomes.Outcome) -> outcomes.Outcome:
    """Refuse text PostgreSQL cannot store, which would otherwise surface as a 5xx.

    JSON can carry "\\u0000" and lone surrogates; a `text` column holds neither.
    """
    for name, value in (
        ("application_instance_id", outcome.reference),
        ("call_raw_cause", outcome.raw_cause),
    ):
        if value is None:
            continue
        if "\x00" in value:
            raise outcomes.BadOutcome(f"{name} contains a NUL character")
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise outcomes.BadOutcome(f"{name} is not valid Unicode") from None
    return outcome


def _parse_json(text: str) -> Any:
    try:
        return json.loads(text)
    # ValueError covers bad JSON and over-long integers; a deeply nested
    # body exhausts the parser's recursion limit instead.
    except (ValueError, RecursionError) as exc:
        raise _Unusable(f"instance_info is not valid JSON: {str(exc)[:120]}") from None


def _single(values: list[str]) -> str:
    if not values:
        raise _Unusable("instance_info is missing")
    if len(values) > 1:
        raise _Unusable("instance_info is given more than once")
    return values[0]


def _form_field(body: bytes) -> str:
    try:
        fields = parse_qs(
            body.decode("utf-8"), keep_blank_values=True, errors="strict", max_num_fields=64
        )
    except ValueError as exc:  # UnicodeDecodeError included
        raise _Unusable(f"the form body cannot be read: {str(exc)[:120]}") from None
    return _single(fields.get("instance_info", []))


class _Handlers:
    """The routes, holding what they need instead of keeping it in app state."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        listener: ListenerSettings,
        metrics: Metrics,
        health: Callable[[], Mapping[str, bool]],
        aculab: Callable[[], tuple[float, str | None] | None],
    ) -> None:
        self.pool = pool
        self.metrics = metrics
        self.health = health
        self.aculab = aculab
        self.max_body_bytes = listener.max_body_bytes
        self.secret = listener.webhook_secret.get_secret_value().encode("utf-8")
        # Outcome writes under way: the app's clean-up waits for them.
        self.writes = Shielded()

    # ---------------------------------------------------------------- final page

    def _answer(self, result: str, response: web.Response) -> web.Response:
        self.metrics.webhook_requests.labels(result=result).inc()
        return response

    def _secret_matches(self, given: str) -> bool:
        if not self.secret:  # push disabled: no URL is right
            return False
        # surrogatepass: a percent-decoded path may hold anything; never raise here.
        return hmac.compare_digest(given.encode("utf-8", "surrogatepass"), self.secret)

    async def final_page(self, request: web.Request) -> web.Response:
        if not self._secret_matches(request.match_info["secret"]):
            # Neither the path nor the secret is logged: a near miss would leak it.
            log.warning("webhook_rejected", method=request.method, peer=request.remote)
            return self._answer("forbidden", _not_found())
        try:
            outcome = _storable(outcomes.from_instance_info(await self._instance_info(request)))
        except _TooLarge:
            log.warning("webhook_too_large", limit=self.max_body_bytes)
            return self._answer("too_large", _error(413, "request body is too large"))
        except (_Unusable, outcomes.BadOutcome) as exc:
            log.warning("webhook_bad_request", reason=str(exc))
            return self._answer("bad_request", _error(400, str(exc)))
        try:
            # Aculab requests a final page once: a client that hangs up, or a
            # shutdown, must not cancel (and so roll back) the write.
            result = await self.writes.run(self._store(outcome))
        except DB_ERRORS as exc:
            log.error(
                "webhook_database_error",
                reference=outcome.reference,
                error=str(exc) or type(exc).__name__,
            )
            return self._answer("unavailable", _error(503, "database unavailable"))
        if result == "unknown_reference":
            log.debug("webhook_unknown_id", reference=outcome.reference)
            return self._answer("unknown", _error(404, "unknown application_instance_id"))
        if result == "duplicate":
            log.debug("webhook_duplicate", reference=outcome.reference)
        return self._answer(result, web.json_response(assumptions.FINAL_PAGE_RESPONSE))

    async def _store(self, outcome: outcomes.Outcome) -> outcomes.Recorded:
        result = await outcomes.record(self.pool, outcome, "push", self.metrics)
        if result == "unknown_reference":
            # A fast busy can be pushed before the engine has stored the batch's
            # acknowledgement; the poller matches stashed outcomes to calls later.
            async with self.pool.acquire() as conn:
                await stash_unmatched(conn, outcome)
        return result

    async def _instance_info(self, request: web.Request) -> Any:
        if request.method == "GET":
            return _parse_json(_single(request.query.getall("instance_info", [])))
        # Refused from the header alone, before a byte of the body is read.
        if request.content_length is not None and request.content_length > self.max_body_bytes:
            raise _TooLarge
        try:
            # Bounded by the app's client_max_size (= max_body_bytes), which
            # also stops a chunked body that has no Content-Length.
            body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            raise _TooLarge from None
        except web.RequestPayloadError as exc:  # e.g. a Content-Encoding that does not decode
            raise _Unusable(f"the body cannot be read: {str(exc)[:120]}") from None
        if request.content_type == FORM_CONTENT_TYPE:
            return _parse_json(_form_field(body))
        # Aculab sends application/json (assumptions.FINAL_PAGE_CONTENT_TYPE);
        # any other type is read as JSON too rather than refused on a label.
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError:
            raise _Unusable("the body is not UTF-8") from None
        return _parse_json(text)

    # ---------------------------------------------------------------- health, metrics

    async def healthz(self, request: web.Request) -> web.Response:
        tasks = {name: bool(alive) for name, alive in self.health().items()}
        database = await self._database_answers()
        healthy = database and all(tasks.values())
        # Reported, but not a reason for 503: restarting the daemon would not bring
        # Aculab back, and the daemon rides the outage out by itself.
        unreachable = self.aculab()
        aculab: dict[str, Any] = {"reachable": unreachable is None}
        if unreachable is not None:
            aculab["unreachable_seconds"] = round(unreachable[0], 1)
            aculab["error"] = unreachable[1]
        body = {
            "status": "ok" if healthy else "unhealthy",
            "database": database,
            "tasks": tasks,
            "aculab": aculab,
        }
        return web.json_response(body, status=200 if healthy else 503)

    async def _database_answers(self) -> bool:
        try:
            async with asyncio.timeout(HEALTH_DATABASE_TIMEOUT), self.pool.acquire() as conn:
                await q.ping(conn)
        except DB_ERRORS as exc:
            log.warning("health_database_failed", error=str(exc) or type(exc).__name__)
            return False
        return True

    async def metrics_page(self, request: web.Request) -> web.Response:
        body, content_type = self.metrics.render()
        # Set as a header: aiohttp's content_type argument refuses a charset parameter.
        return web.Response(body=body, headers={"Content-Type": content_type})


def build_app(
    pool: asyncpg.Pool,
    listener: ListenerSettings,
    metrics: Metrics,
    health: Callable[[], Mapping[str, bool]],
    aculab: Callable[[], tuple[float, str | None] | None] = lambda: None,
) -> web.Application:
    """The final page (POST/GET /final/{secret}), GET /healthz and GET /metrics.

    `health()` maps each supervised task's name to whether it is still running;
    /healthz answers 503 when one is not or when the database does not answer.
    `aculab()` says whether Aculab is unreachable (seconds, last error) or None.
    """
    handlers = _Handlers(pool, listener, metrics, health, aculab)
    app = web.Application(client_max_size=listener.max_body_bytes, middlewares=[_json_errors])
    app.router.add_post("/final/{secret}", handlers.final_page)
    # No HEAD: it would run the handler and record the outcome it carries.
    app.router.add_get("/final/{secret}", handlers.final_page, allow_head=False)
    app.router.add_get("/healthz", handlers.healthz)
    app.router.add_get("/metrics", handlers.metrics_page)
    app.on_cleanup.append(_finish_writes(handlers.writes))
    return app


def _finish_writes(writes: Shielded) -> Callable[[web.Application], Awaitable[None]]:
    """At shutdown, let outcome writes whose request was cut short finish first."""

    async def finish(app: web.Application) -> None:
        await writes.wait(SHUTDOWN_TIMEOUT)

    return finish


class Address(Protocol):
    """Where a `Server` listens: the listener's settings, the dashboard's, ..."""

    @property
    def host(self) -> str: ...

    @property
    def port(self) -> int: ...


class Server:
    """`app` listening on listener.host:listener.port between `start()` and `stop()`.

    Also an async context manager. After `start()`, `port` is the bound port
    (the one the system chose when listener.port is 0) and `url` the base URL.
    """

    def __init__(
        self,
        app: web.Application,
        listener: Address,
        *,
        shutdown_timeout: float = SHUTDOWN_TIMEOUT,
    ) -> None:
        self.host = listener.host
        self._requested_port = listener.port
        self.port: int | None = None
        # The daemon owns the signals. No access log: its lines would carry
        # the final page's path, and with it the secret.
        self._runner = web.AppRunner(
            app,
            handle_signals=False,
            access_log=None,
            shutdown_timeout=shutdown_timeout,
            lingering_time=LINGERING_SECONDS,
        )

    @property
    def url(self) -> str:
        if self.port is None:
            raise RuntimeError("the server is not listening")
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    async def start(self) -> None:
        await self._runner.setup()
        try:
            site = web.TCPSite(self._runner, self.host, self._requested_port)
            await site.start()
        except BaseException:
            await self._runner.cleanup()
            raise
        # With port 0 and a host that resolves to several addresses, each gets
        # its own port; the first one is reported.
        self.port = int(self._runner.addresses[0][1])
        log.info("listener_started", host=self.host, port=self.port)

    async def stop(self) -> None:
        """Stop accepting, let requests in flight finish (up to shutdown_timeout)."""
        if self.port is None:
            return
        self.port = None
        await self._runner.cleanup()
        log.info("listener_stopped")

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    async def run(self, stop: asyncio.Event, ready: asyncio.Event | None = None) -> None:
        """Listen until `stop` is set; set `ready` once listening."""
        async with self:
            if ready is not None:
                ready.set()
            await stop.wait()


async def serve(
    app: web.Application,
    listener: ListenerSettings,
    stop: asyncio.Event,
    ready: asyncio.Event | None = None,
) -> None:
    """Run `app` on the configured address until `stop` is set (the daemon's task).

    Use `Server` directly to learn the port the system chose for port 0.
    """
    await Server(app, listener).run(stop, ready)
