"""Logging: structlog JSON lines (or a console renderer), one event per line.

Telephone numbers are personal data: fields that carry them are masked unless
`logging.show_phone_numbers` is set. Secrets never reach a log line: fields
with secret-looking names are replaced before rendering.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import MutableMapping
from typing import Any, TextIO

import structlog

from campaign.destinations import mask
from campaign.settings import LoggingSettings

PHONE_FIELDS = frozenset({"destination", "to", "from", "from_", "caller_id", "number"})
SECRET_FIELDS = frozenset(
    {"password", "api_access_key", "secret", "webhook_secret", "dsn", "authorization", "auth"}
)
REDACTED = "[redacted]"


class Redactor:
    """A structlog processor that masks phone numbers and removes secrets."""

    def __init__(self, *, show_phone_numbers: bool) -> None:
        self.show_phone_numbers = show_phone_numbers

    def __call__(
        self, logger: Any, method: str, event: MutableMapping[str, Any]
    ) -> MutableMapping[str, Any]:
        for key in list(event):
            folded = key.casefold()
            if folded in SECRET_FIELDS:
                event[key] = REDACTED
            elif folded in PHONE_FIELDS and not self.show_phone_numbers:
                value = event[key]
                if isinstance(value, str):
                    event[key] = mask(value)
                elif isinstance(value, list | tuple):
                    event[key] = [mask(str(v)) for v in value]
        return event


def configure_logging(settings: LoggingSettings, stream: TextIO | None = None) -> None:
    """Route structlog and the stdlib loggers (aiohttp, asyncpg) through one renderer."""
    out = stream if stream is not None else sys.stdout
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True, key="ts"),
        Redactor(show_phone_numbers=settings.show_phone_numbers),
    ]
    renderer: Any
    if settings.format == "console":
        renderer = structlog.dev.ConsoleRenderer(colors=out.isatty())
    else:
        renderer = structlog.processors.JSONRenderer(sort_keys=False)
    level = getattr(logging, settings.level.upper())

    structlog.configure(
        processors=[
            *shared,
            structlog.processors.StackInfoRenderer(),
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.stdlib.LoggerFactory(),
        cache_logger_on_first_use=False,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info,
            renderer,
        ],
    )
    handler = logging.StreamHandler(out)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # Library chatter at info level is noise for an operator.
    for name in ("aiohttp.access", "asyncio"):
        logging.getLogger(name).setLevel(max(level, logging.WARNING))


def get_logger(name: str = "campaign") -> Any:
    return structlog.get_logger(name)
