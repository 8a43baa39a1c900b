"""Logging: structlog JSON lines (or a console renderer), one event per line.

Telephone numbers are personal data: fields that carry them are masked unless
`logging.show_phone_numbers` is set. Secrets never reach a log line: fields
with secret-looking names are replaced before rendering, and the secrets
themselves (see `campaign.redact`) are scrubbed from every value, from formatted
tracebacks, and again from the rendered line, for structlog and stdlib loggers
(asyncpg, aiohttp) alike.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import MutableMapping
from typing import Any, TextIO

import structlog

from campaign.destinations import mask
from campaign.redact import Scrubber
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


class ScrubSecrets:
    """A structlog processor that scrubs secrets from every key and value of an event.

    Runs after exceptions are formatted, so a traceback is scrubbed too. Strings are
    scrubbed before rendering escapes them (JSON turns a backslash into two); other
    values are scrubbed as their repr, and kept as they are when it holds no secret.
    """

    def __init__(self, scrub: Scrubber) -> None:
        self.scrub = scrub

    def __call__(
        self, logger: Any, method: str, event: MutableMapping[str, Any]
    ) -> MutableMapping[str, Any]:
        if not self.scrub:
            return event
        return {self.scrub(str(key)): self._value(value) for key, value in event.items()}

    def _value(self, value: Any) -> Any:
        if isinstance(value, str):
            return self.scrub(value)
        if value is None or isinstance(value, bool | int | float):
            return value
        # Containers are rebuilt only when something in them changed, so that a value
        # without secrets renders exactly as before.
        if isinstance(value, dict):
            pairs = [(k, v, self._value(k), self._value(v)) for k, v in value.items()]
            if all(k is k2 and v is v2 for k, v, k2, v2 in pairs):
                return value
            return {k2: v2 for _, _, k2, v2 in pairs}
        if isinstance(value, list | tuple):
            items = [self._value(v) for v in value]
            if all(a is b for a, b in zip(items, value, strict=True)):
                return value
            return items
        shown = repr(value)
        scrubbed = self.scrub(shown)
        return value if scrubbed == shown else scrubbed


class ScrubbingFormatter(structlog.stdlib.ProcessorFormatter):
    """structlog's stdlib formatter, with secrets scrubbed from the rendered line.

    The last guard: whatever a renderer adds (an exception it formats itself, a
    value's repr) passes through here before it reaches the stream.
    """

    def __init__(self, scrub: Scrubber, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.scrub = scrub

    def format(self, record: logging.LogRecord) -> str:
        return self.scrub(super().format(record))


def configure_logging(
    settings: LoggingSettings, stream: TextIO | None = None, *, secrets: Scrubber | None = None
) -> None:
    """Route structlog and the stdlib loggers (aiohttp, asyncpg) through one renderer.

    `secrets` (usually `Scrubber.from_settings(settings)`) are scrubbed from every line.
    """
    out = stream if stream is not None else sys.stdout
    scrub = secrets if secrets is not None else Scrubber()
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
    formatter = ScrubbingFormatter(
        scrub,
        foreign_pre_chain=shared,
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info,
            ScrubSecrets(scrub),
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
