"""Entry point of the `campaign` command (and `python -m campaign`)."""

from __future__ import annotations

import signal
import sys
from types import FrameType


def _stop_before_start(signum: int, frame: FrameType | None) -> None:
    # SIGTERM while the daemon is still importing and connecting: nothing is
    # claimed yet, so stopping is clean (exit 0). The daemon installs its own
    # handlers as soon as its event loop runs.
    raise SystemExit(0)


def main() -> int:
    # Only for `run`: other commands (a load in its transaction, say) keep the
    # default, so an interrupted command never reports success.
    if "run" in sys.argv[1:]:
        signal.signal(signal.SIGTERM, _stop_before_start)
    from campaign.cli import main as cli_main

    return cli_main()


if __name__ == "__main__":
    raise SystemExit(main())
