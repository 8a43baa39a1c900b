"""`campaign dashboard`: a read-only web page of every campaign, and its JSON document.

The page (HTML, JS and CSS shipped in the package, nothing from the internet) fetches
one JSON document every `dashboard.refresh_seconds` and draws it. The document is
`campaign status --json`, each campaign extended with what the page shows besides:
calls started per minute over the last hour, pacing against the campaign's and the
account's budgets, the concurrency cap, an ETA (`campaign plan`'s forecast), the calling window
now, and the reasons `campaign why` gives; plus the account's pacing and the daemons.
Scripts can read the same document at /api/status.

Reading only. Every query runs in one read-only, repeatable-read transaction per
document (`admin.read_snapshot`), so the figures of one document add up with each
other and nothing is ever changed. Destinations quoted in free text (Aculab's errors,
operators' reasons) are masked as in the logs.

Bounded cost. One document serves every viewer for at least MIN_CACHE_SECONDS, and for
COST_FACTOR times as long as it took to read: a page left open for weeks, or opened by
many people at once, keeps the database busy for at most 1/COST_FACTOR of the time.
Viewers arriving while a document is being read get the last one meanwhile (the
first viewers wait for the first).

Access. Anywhere but loopback needs `dashboard.password` (HTTP Basic, any user name);
`check_address` refuses to start otherwise.
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import json
import signal
import time
from base64 import b64decode
from binascii import Error as Base64Error
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from importlib import resources
from typing import Any, Final

import structlog
from aiohttp import web

from campaign import plan, status, why
from campaign.db import admin
from campaign.db import dashboard as dashboard_db
from campaign.db import queries as q
from campaign.destinations import mask_in_text
from campaign.server import DB_ERRORS, Server
from campaign.settings import Settings
from campaign.status import format_age
from campaign.vocabulary import CampaignState

log = structlog.get_logger("campaign.dashboard")

MIN_CACHE_SECONDS: Final = 1.0
"""A document is served to every viewer for at least this long."""
COST_FACTOR: Final = 10.0
"""...and for this many times as long as it took to read."""
EXAMINE: Final = 1_000
"""Contacts per campaign judged by the claim's rules for the reasons (why.EXAMINE_LIMIT
is for one look by an operator; the dashboard looks every few seconds)."""
REASONS_FROM: Final[frozenset[CampaignState]] = frozenset({"active", "paused"})
"""Campaigns whose reasons (`campaign why`) are read: the others dial nothing again."""
FORECAST_MIN_SECONDS: Final = 15.0
"""An ETA's forecast is made again after at least this long (see Forecasts)."""
FORECAST_SAMPLE: Final = 2_000
"""Open contacts per campaign whose zones the ETA's forecast judges one by one (the
rest are taken to be like them): enough for the zone mix, cheap every few seconds."""
POOL_SIZE: Final = 2
STATEMENT_TIMEOUT: Final = 30.0
REALM: Final = 'Basic realm="campaign dashboard", charset="UTF-8"'
ASSETS: Final = {
    "/": ("index.html", "text/html"),
    "/dashboard.js": ("dashboard.js", "text/javascript"),
    "/dashboard.css": ("dashboard.css", "text/css"),
}
# Everything the page uses comes from this server; no inline script, no framing.
SECURITY_HEADERS: Final = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class DashboardRefused(admin.CommandError):
    """The dashboard will not start as configured (the message is one line)."""


class CannotListen(Exception):
    """The address cannot be listened on (in use, not this machine's); one line."""


# --- where it listens ---------------------------------------------------------------------


def is_loopback(host: str) -> bool:
    """Whether `host` only ever accepts connections from this machine."""
    if host.casefold() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:  # a host name, or "" (every interface)
        return False


def check_address(host: str, password: str) -> None:
    """Refuse to listen beyond loopback without a password (DashboardRefused)."""
    if not password and not is_loopback(host):
        shown = host or "every interface"
        raise DashboardRefused(
            f"listening on {shown} needs dashboard.password (CAMPAIGN_DASHBOARD__PASSWORD): "
            "the page would show every campaign to anyone who can reach it; "
            "without a password use --host 127.0.0.1"
        )


@dataclass(frozen=True)
class Bind:
    host: str
    port: int


# --- the document -------------------------------------------------------------------------


def _masked(value: Any) -> Any:
    """`value` with every string in it passed through mask_in_text."""
    if isinstance(value, str):
        return mask_in_text(value)
    if isinstance(value, dict):
        return {k: _masked(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_masked(v) for v in value]
    return value


def _iso(moment: datetime | None) -> str | None:
    return None if moment is None else moment.isoformat()


def window_now(report: why.WhyReport) -> dict[str, Any]:
    """The calling window as it stands for the campaign's pending contacts."""
    w = report.campaign.window
    any_time = w.start == "00:00" and w.end == "24:00" and len(set(w.days)) == 7
    waiting = report.calling_window
    next_opening = waiting.earliest if waiting is not None else None
    at_next = (
        sum(g.contacts for g in waiting.groups if g.earliest == next_opening) if waiting else 0
    )
    is_open: bool | None
    if any_time:
        is_open, text = True, "any time"
    elif report.due:
        is_open, text = True, f"open: {report.due:,} due now"
    elif waiting is not None:
        is_open, text = False, "closed"
    else:
        is_open, text = None, "no contact waits for it"
    if waiting is not None:
        text += (
            f"; {waiting.contacts:,} waiting, next opening "
            f"{next_opening:%Y-%m-%d %H:%M} UTC for {at_next:,}"
            if next_opening is not None
            else ""
        )
    return {
        "any_time": any_time,
        "open": is_open,
        "due_now": report.due,
        "waiting": waiting.contacts if waiting is not None else 0,
        "next_opening": _iso(next_opening),
        "next_opening_contacts": at_next,
        "text": text,
    }


def _budget(cap: float, granted: int, seconds: float) -> dict[str, Any]:
    return {"cap": cap, "granted": granted, "rate": round(granted / seconds, 3)}


class Forecasts:
    """The ETAs' forecasts, each kept for FORECAST_MIN_SECONDS and for COST_FACTOR times
    as long as it took: a forecast of a large campaign costs seconds, and an ETA need
    not move every second while the figures around it do. A campaign whose state
    changed is forecast again at once."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.spent = 0.0
        """Seconds spent forecasting since the caller last reset it."""
        self._kept: dict[int, tuple[plan.Forecast, float]] = {}

    async def get(
        self, conn: q.Conn, s: status.CampaignStatus, settings: Settings
    ) -> plan.Forecast:
        kept = self._kept.get(s.id)
        if kept is not None and self.clock() < kept[1] and kept[0].campaign.state == s.state:
            return kept[0]
        started = self.clock()
        f = await plan.forecast_on(conn, s.name, settings, sample=FORECAST_SAMPLE)
        took = self.clock() - started
        self.spent += took
        self._kept[s.id] = (f, self.clock() + max(FORECAST_MIN_SECONDS, COST_FACTOR * took))
        return f

    def keep_only(self, campaign_ids: set[int]) -> None:
        """Forget the forecasts of campaigns no longer read (deleted, or finished)."""
        for cid in set(self._kept) - campaign_ids:
            del self._kept[cid]


def eta_json(f: plan.Forecast | None) -> dict[str, Any]:
    """The ETA block: `campaign plan`'s forecast (retries, windows, pacing and the cap),
    or why there is no finish time."""
    if f is None:
        return {
            "as_of": None,
            "finish_at": None,
            "eta_seconds": None,
            "basis": "completed_or_cancelled",
            "reason": None,
            "remaining": 0,
            "text": "nothing left to dial",
        }
    word, reason = plan.outlook(f)
    seconds = f.eta_seconds
    if word == "finishes" and seconds is not None:
        text = f"in about {format_age(seconds)} (campaign plan's forecast)"
    elif word == "completed":
        text = "finished"
    else:
        text = f"{word}: {reason}" if reason else word
    return {
        "as_of": _iso(f.as_of),
        "finish_at": _iso(f.finish_at),
        "eta_seconds": None if seconds is None else round(seconds, 1),
        "basis": word,
        "reason": reason,
        "remaining": f.workload.open,
        "text": text,
    }


def _campaign_extras(
    s: status.CampaignStatus,
    series: dashboard_db.Series,
    report: why.WhyReport | None,
    forecast: plan.Forecast | None,
) -> dict[str, Any]:
    minutes = series.calls.get(s.id, [])
    extras: dict[str, Any] = {
        "calls_per_minute": [
            {"minute": _iso(series.start + timedelta(minutes=i)), "calls": n}
            for i, n in enumerate(minutes)
        ],
        "calls_last_hour": sum(minutes),
        "eta": eta_json(forecast),
        "pacing": None,
        "concurrency": None,
        "calling_window_now": None,
        "why": None,
        "why_text": [],
    }
    if report is not None:
        cp, ap = report.campaign_pacing, report.account_pacing
        cc = report.concurrency
        extras |= {
            "pacing": {
                "window_seconds": cp.seconds,
                "campaign": _budget(cp.cap, cp.granted, cp.seconds),
                "account": _budget(ap.cap, ap.granted, ap.seconds),
            },
            "concurrency": {
                "open_calls": cc.open_calls,
                "dispatching": cc.dispatching,
                "cap": cc.cap,
                "at_cap": cc.at_cap,
            },
            "calling_window_now": window_now(report),
            "why": why.to_json_document(report),
            # The lines `campaign why` prints under its two-line heading.
            "why_text": why.render_text(report).splitlines()[2:],
        }
    return extras


async def read_document(
    conn: q.Conn, settings: Settings, forecasts: Forecasts | None = None
) -> dict[str, Any]:
    """The dashboard's document, read on a connection inside `admin.read_snapshot`;
    the ETAs' forecasts are reused from `forecasts` while they are fresh."""
    kept = forecasts if forecasts is not None else Forecasts()
    alive_within = settings.dispatcher.lease_seconds  # the heartbeat's period is a third
    statuses = await status.read_status(conn)
    series = await dashboard_db.calls_per_minute(conn, [s.id for s in statuses])
    account = await dashboard_db.account(
        conn, window_seconds=why.PACING_WINDOW_SECONDS, alive_within=alive_within
    )
    reports: dict[int, why.WhyReport] = {}
    made: dict[int, plan.Forecast] = {}
    for s in statuses:
        if s.state in REASONS_FROM:
            reports[s.id] = await why.read_why_report(
                conn,
                s.name,
                settings.aculab.calls_per_second,
                alive_within=alive_within,
                examine=EXAMINE,
            )
            made[s.id] = await kept.get(conn, s, settings)
    kept.keep_only(set(made))
    doc = status.to_json_document(statuses)
    for s, entry in zip(statuses, doc["campaigns"], strict=True):
        entry |= _campaign_extras(s, series, reports.get(s.id), made.get(s.id))
    unreachable = [d for d in account.daemons if d.aculab_unreachable_since is not None]
    doc["as_of"] = _iso(account.taken_at)
    doc["refresh_seconds"] = settings.dashboard.refresh_seconds
    doc["account"] = {
        "pacing": _budget(settings.aculab.calls_per_second, account.granted, account.window_seconds)
        | {"window_seconds": account.window_seconds},
        "daemons_alive": len(account.daemons),
        # None: no daemon is running to find out.
        "aculab_reachable": None if not account.daemons else not unreachable,
        "daemons": [
            {
                "owner": d.owner,
                "seen_seconds_ago": round(d.seen_seconds_ago, 1),
                "aculab_reachable": d.aculab_unreachable_since is None,
                "aculab_unreachable_since": _iso(d.aculab_unreachable_since),
                "aculab_error": d.aculab_error,
            }
            for d in account.daemons
        ],
    }
    masked: dict[str, Any] = _masked(doc)
    return masked


# --- one document for every viewer -------------------------------------------------------


@dataclass(frozen=True)
class _Read:
    body: bytes
    status: int
    until: float
    """monotonic time until which it is served again."""


class DocumentCache:
    """The document, read at most once per its time to live, whatever the viewers."""

    def __init__(
        self, pool: admin.Pool, settings: Settings, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.pool = pool
        self.settings = settings
        self.clock = clock
        self.reads = 0
        """Documents read from the database so far."""
        self._last: _Read | None = None
        self._reading: asyncio.Task[_Read] | None = None
        self._forecasts = Forecasts(clock)

    async def get(self) -> tuple[bytes, int]:
        """The JSON body and its HTTP status (200, or 503 while the database fails)."""
        last = self._last
        if last is not None and self.clock() < last.until:
            return last.body, last.status
        if self._reading is None:
            self._reading = asyncio.create_task(self._read())
            self._reading.add_done_callback(self._done)
        if last is not None:
            # A read can take a minute (a large campaign's forecast, a table locked for
            # maintenance): meanwhile the last document, not a request left hanging.
            return last.body, last.status
        # shield: a viewer who leaves must not cancel the read the others wait for.
        read = await asyncio.shield(self._reading)
        return read.body, read.status

    def _done(self, task: asyncio.Task[_Read]) -> None:
        self._reading = None
        if task.cancelled():
            return
        exc = task.exception()
        if exc is None:
            self._last = task.result()
        else:
            # Viewers may not be waiting for it (they got the last document): said here.
            error = mask_in_text(" ".join(str(exc).split()) or type(exc).__name__)
            log.error("dashboard_read_failed", error=error, error_type=type(exc).__name__)

    async def _read(self) -> _Read:
        started = self.clock()
        self.reads += 1
        try:
            self._forecasts.spent = 0.0
            async with admin.read_snapshot(self.pool) as conn:
                doc = await read_document(conn, self.settings, self._forecasts)
            body, code = json.dumps(doc, ensure_ascii=False).encode("utf-8"), 200
        except DB_ERRORS as exc:
            # A database error may quote a row's values: masked in the log line too.
            error = mask_in_text(" ".join(str(exc).split()) or type(exc).__name__)
            log.warning("dashboard_database_error", error=error)
            body = json.dumps({"error": f"database unavailable: {error}"}).encode()
            code = 503
        # The forecasts' cost is bounded by their own keeping; counted here as well, one
        # forecast of a large campaign would hold every other figure still for a minute.
        took = self.clock() - started - self._forecasts.spent
        return _Read(body, code, self.clock() + max(MIN_CACHE_SECONDS, COST_FACTOR * took))


# --- the web side -------------------------------------------------------------------------


def _asset(name: str) -> bytes:
    return resources.files("campaign").joinpath("dashboard_assets", name).read_bytes()


def _authorised(header: str | None, password: bytes) -> bool:
    scheme, _, token = (header or "").partition(" ")
    if scheme.casefold() != "basic":
        return False
    try:
        decoded = b64decode(token.strip(), validate=True)
    except (Base64Error, ValueError):
        return False
    _user, colon, given = decoded.partition(b":")
    # Any user name: the password alone guards the page.
    return bool(colon) and hmac.compare_digest(given, password)


def build_app(cache: DocumentCache, password: str) -> web.Application:
    """GET / (the page), its script and style, and GET /api/status (the document)."""
    secret = password.encode("utf-8")
    assets = {path: (_asset(name), kind) for path, (name, kind) in ASSETS.items()}

    @web.middleware
    async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
        if secret and not _authorised(request.headers.get("Authorization"), secret):
            response: web.StreamResponse = web.json_response(
                {"error": "password required"},
                status=401,
                headers={"WWW-Authenticate": REALM},
            )
        else:
            try:
                response = await handler(request)
            except web.HTTPException as exc:
                response = web.json_response(
                    {"error": exc.reason.lower()}, status=exc.status, headers=exc.headers
                )
        response.headers.update(SECURITY_HEADERS)
        return response

    async def page(request: web.Request) -> web.Response:
        body, kind = assets[request.path]
        return web.Response(
            body=body,
            headers={"Content-Type": f"{kind}; charset=utf-8", "Cache-Control": "no-cache"},
        )

    async def document(request: web.Request) -> web.Response:
        body, code = await cache.get()
        return web.Response(
            body=body,
            status=code,
            headers={
                "Content-Type": "application/json; charset=utf-8",
                "Cache-Control": "no-store",
            },
        )

    app = web.Application(middlewares=[guard])
    for path in assets:
        app.router.add_get(path, page)
    app.router.add_get("/api/status", document)
    return app


# --- the command --------------------------------------------------------------------------


@asynccontextmanager
async def serving(
    pool: admin.Pool, settings: Settings, host: str, port: int
) -> AsyncIterator[Server]:
    """The dashboard listening on host:port while the block runs."""
    password = settings.dashboard.password.get_secret_value()
    check_address(host, password)
    app = build_app(DocumentCache(pool, settings), password)
    server = Server(app, Bind(host, port))
    try:
        await server.start()
    except OSError as exc:
        reason = " ".join((exc.strerror or str(exc)).split())
        raise CannotListen(f"cannot listen on {host or '*'}:{port}: {reason}") from None
    try:
        yield server
    finally:
        await server.stop()


async def run(
    pool: admin.Pool, settings: Settings, host: str, port: int, announce: Callable[[str], None]
) -> None:
    """Serve until SIGINT or SIGTERM; `announce` is told the page's URL once listening."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    try:
        async with serving(pool, settings, host, port) as server:
            announce(f"{server.url}/")
            await stop.wait()
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)
