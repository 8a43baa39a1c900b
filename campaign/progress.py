"""Progress of a long command on a terminal: one line, rewritten in place.

Only a person watching a terminal wants it: when stderr is a pipe or a file (a
script, a cron job, a log collector), a line rewritten a hundred times is noise, so
`Progress.on_terminal` hands out one that prints nothing there.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import TextIO

INTERVAL = 0.25
"""Seconds between two rewrites of the line: often enough to look alive, rarely
enough to cost nothing."""


class Progress:
    """'1,234,567 rows read, 12 refused, 45,678 rows/s', rewritten with a carriage return.

    `update` is cheap to call as often as one likes (it prints at most every
    `interval` seconds); `finish` prints the final figures and ends the line.
    """

    def __init__(
        self,
        stream: TextIO | None,
        done: str,
        bad: str | None = None,
        *,
        interval: float = INTERVAL,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """`stream` None prints nothing; `done` and `bad` name the two counts ('rows
        read', 'refused'); without `bad` only the first count is shown."""
        self._stream = stream
        self._done_label = done
        self._bad_label = bad
        self._interval = interval
        self._clock = clock
        self._started = clock()
        self._printed_at: float | None = None
        self._width = 0
        self._done = 0
        self._bad = 0

    @classmethod
    def on_terminal(
        cls, done: str, bad: str | None = None, *, stream: TextIO | None = None
    ) -> Progress:
        """A progress line on `stream` (stderr) when it is a terminal, else a silent one."""
        out = sys.stderr if stream is None else stream
        return cls(out if _is_terminal(out) else None, done, bad)

    @property
    def shown(self) -> bool:
        return self._stream is not None

    def update(self, done: int, bad: int = 0) -> None:
        self._done, self._bad = done, bad
        if self._stream is None:
            return
        now = self._clock()
        if self._printed_at is None or now - self._printed_at >= self._interval:
            self._printed_at = now
            self._write(now)

    def finish(self) -> None:
        """The final figures, and the end of the line; nothing if nothing was shown (a
        command that failed before its first row has only its error to say)."""
        if self._stream is None or self._printed_at is None:
            return
        self._write(self._clock())
        self._stream.write("\n")
        self._stream.flush()

    def _write(self, now: float) -> None:
        assert self._stream is not None
        elapsed = now - self._started
        text = f"{self._done:,} {self._done_label}"
        if self._bad_label is not None:
            text += f", {self._bad:,} {self._bad_label}"
        if elapsed > 0:
            text += f", {self._done / elapsed:,.0f} rows/s"
        # Spaces over what is left of a longer earlier line (the rate can get shorter).
        padding = " " * max(0, self._width - len(text))
        self._width = len(text)
        self._stream.write(f"\r{text}{padding}")
        self._stream.flush()


def _is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # a replaced or closed stream
        return False
