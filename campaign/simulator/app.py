"""The aiohttp application: its routes, each request counted by endpoint and
outcome, and every error in the documented shape, aiohttp's own 404/405/413 too."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from typing import Final

from aiohttp import web

from campaign import assumptions
from campaign.simulator.refusals import ADMIN_PREFIX, Refused, error_response

logger = logging.getLogger("campaign.simulator")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
Impl = Callable[[web.Request], Awaitable[tuple[str, web.StreamResponse]]]
"""A handler that also says the outcome to count."""
Route = tuple[Sequence[str], str, str, Impl]
"""(methods, path, endpoint name, handler)."""

# A list of 100 calls with 5000-character tokens, percent-encoded, is several MB;
# aiohttp's 1 MiB default would refuse it with a non-JSON 413.
_MAX_BODY_BYTES: Final = 32 * 1024 * 1024


def admin_path(name: str) -> str:
    return ADMIN_PREFIX + name


def build_app(
    routes: Sequence[Route], requests: Counter[tuple[str, str]], clock: Callable[[], float]
) -> web.Application:
    """`requests` counts (endpoint, outcome); `clock` dates the error bodies."""

    @web.middleware
    async def errors(request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            return await handler(request)
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            headers = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else None
            refusal = Refused(
                exc.status,
                assumptions.http_error_code(exc.status),
                exc.reason,
                outcome="http_error",
                headers=headers,
            )
            return error_response(request, refusal, clock())
        except Exception:
            logger.exception("simulator bug answering %s %s", request.method, request.path)
            refusal = Refused(
                500, assumptions.http_error_code(500), "internal error", outcome="bug"
            )
            return error_response(request, refusal, clock())

    def counted(endpoint: str, impl: Impl) -> Handler:
        async def handle(request: web.Request) -> web.StreamResponse:
            try:
                outcome, response = await impl(request)
            except Refused as refusal:
                requests[(endpoint, refusal.outcome)] += 1
                return error_response(request, refusal, clock())
            requests[(endpoint, outcome)] += 1
            return response

        return handle

    app = web.Application(middlewares=[errors], client_max_size=_MAX_BODY_BYTES)
    for methods, path, endpoint, impl in routes:
        handler = counted(endpoint, impl)
        for method in methods:
            # add_route, not add_get: a HEAD must not start calls.
            app.router.add_route(method, path, handler)
    return app
