"""Refusals: an error status with the documented error body (§6), or, for a client
that does not ask for JSON, the HTML page Aculab's older endpoints send."""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, Final

from aiohttp import web

from campaign import assumptions

ADMIN_PREFIX: Final = "/_simulator/"


class Refused(Exception):
    """A request answered with an error status and the documented error body."""

    def __init__(
        self,
        status: int,
        code: str,
        text: str,
        *,
        outcome: str,
        details: Sequence[str] = (),
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(text)
        self.status = status
        self.code = code
        self.text = text
        self.outcome = outcome
        self.details = list(details)
        self.headers = dict(headers or {})


def bad_request(code: str, text: str, details: Sequence[str] = ()) -> Refused:
    return Refused(400, code, text, outcome="invalid", details=details)


def refused_with_status(status: int, text: str, *, outcome: str) -> Refused:
    """A refusal with the code Aculab gives that status."""
    return Refused(status, assumptions.http_error_code(status), text, outcome=outcome)


def unauthorized(text: str) -> Refused:
    return Refused(
        401,
        assumptions.http_error_code(401),
        text,
        outcome="unauthorized",
        headers={"WWW-Authenticate": 'Basic realm="Aculab Cloud"'},
    )


def _iso(seconds: float) -> str:
    try:
        moment = datetime.fromtimestamp(seconds, UTC)
    except (OverflowError, OSError, ValueError):
        moment = datetime.now(UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def error_response(request: web.Request, refusal: Refused, now: float) -> web.Response:
    if (
        assumptions.ERRORS_ARE_JSON_ONLY_WITH_ACCEPT_JSON
        and "application/json" not in request.headers.get("Accept", "")
        and not request.path.startswith(ADMIN_PREFIX)
    ):
        # Like Aculab's older endpoints: a client that forgets the header
        # gets a page it cannot parse, and its tests fail here, not in production.
        page = (
            f"<html><body><h1>{refusal.status} {html.escape(refusal.code)}</h1>"
            f"<p>{html.escape(refusal.text)}</p></body></html>"
        )
        return web.Response(
            status=refusal.status, text=page, content_type="text/html", headers=refusal.headers
        )
    when = _iso(now)
    error: dict[str, Any] = {"code": refusal.code, "text": refusal.text}
    if refusal.details:
        error["details"] = refusal.details
    error["datetime"] = when
    error["link"] = f"https://www.aculab.com/cloud/web-services/errors/#{refusal.code}"
    body = {"error": error, "request": {"url": str(request.url), "datetime": when}}
    return web.json_response(body, status=refusal.status, headers=refusal.headers)
