"""How each injected fault answers: a Retry-After header, a dropped connection, a
delayed answer, a malformed body, a trickled body. Waits end early, and connections
drop, when the server starts closing (stop or go_down)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
from collections.abc import Callable
from typing import Any, Final

from aiohttp import web

from campaign.simulator.book import CallBook
from campaign.simulator.faults import CONCRETE_MALFORMED_SHAPES, Faults

# A trickled answer is written this many bytes at a time, so that even a one-call
# answer (about 32 bytes) takes several writes.
_TRICKLE_CHUNK_BYTES: Final = 4


def retry_after(faults: Faults) -> dict[str, str] | None:
    seconds = faults.retry_after_seconds
    return {"Retry-After": f"{seconds:g}"} if seconds else None


async def wait_unless_closing(closing: asyncio.Event, seconds: float) -> bool:
    """Wait `seconds`, less if the server starts closing; False if it did."""
    if not closing.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(closing.wait(), seconds)
    return not closing.is_set()


def drop_connection(request: web.Request) -> None:
    # Nothing more reaches the client: aiohttp drops writes to a closed transport.
    if request.transport is not None:
        request.transport.close()


def malformed_body(
    faults: Faults, rng: random.Random, book: CallBook, references: tuple[str, ...]
) -> Any:
    """A 200 body that cannot be matched to `references` (never empty)."""
    shape = faults.malformed_shape
    if shape == "mixed":
        shape = rng.choice(CONCRETE_MALFORMED_SHAPES)
    refs = list(references)
    if shape == "repeat":
        # The right length with one reference twice: [r1, r1, r3]. A single
        # reference cannot repeat within its length, so it gets [r1, r1].
        return [refs[0], *refs] if len(refs) == 1 else [refs[0], refs[0], *refs[2:]]
    if shape == "short":
        return refs[:-1]
    if shape == "extra":
        return [*refs, book.unstarted_reference()]
    if shape == "not_strings":
        # null where the first reference goes, its number where the second does.
        return [
            None if i == 0 else int(ref.rsplit(".", 1)[1]) if i == 1 else ref
            for i, ref in enumerate(refs)
        ]
    if shape == "not_a_list":
        return {"application_instance_ids": refs}
    return book.earlier_references(references)


async def trickle(
    request: web.Request,
    closing: asyncio.Event,
    seconds: Callable[[], float],
    references: tuple[str, ...],
) -> web.StreamResponse:
    """The true answer, its body written _TRICKLE_CHUNK_BYTES at a time with
    seconds() (read before each pause) between writes (the headers go at once)."""
    body = json.dumps(list(references)).encode()
    response = web.StreamResponse(status=200)
    response.content_type = "application/json"
    response.content_length = len(body)
    try:
        await response.prepare(request)
        for offset in range(0, len(body), _TRICKLE_CHUNK_BYTES):
            if offset and not await wait_unless_closing(closing, seconds()):
                # Stopping or going down: the client sees its answer cut short.
                drop_connection(request)
                return response
            await response.write(body[offset : offset + _TRICKLE_CHUNK_BYTES])
        await response.write_eof()
    except ConnectionError:
        pass  # the client gave up (its total timeout, say): nobody to answer
    return response
