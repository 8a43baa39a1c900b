"""`campaign simulator`: the command-line options, and the server runner that
serves a Simulator until SIGINT or SIGTERM."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import signal
import sys
from collections.abc import Mapping
from typing import Final, get_args

from campaign.simulator.account import Simulator
from campaign.simulator.config import (
    AccountType,
    SimulatorConfig,
    check_probability,
    default_service_passwords,
)
from campaign.simulator.faults import FAULT_KINDS, MALFORMED_SHAPES, FaultKind, Faults


def _probability(text: str) -> float:
    try:
        return check_probability("value", float(text))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a probability between 0 and 1: {text}") from None


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"not a positive number: {text}")
    return value


def _non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value >= 0):
        raise argparse.ArgumentTypeError(f"not a non-negative number: {text}")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"not a positive integer: {text}")
    return value


def _service_password(text: str) -> tuple[str, str]:
    name, equals, password = text.partition("=")
    if not equals or not name or not password:
        raise argparse.ArgumentTypeError(f"expected NAME=PASSWORD, got {text!r}")
    return name, password


_FAULT_HELP: Final[Mapping[FaultKind, str]] = {
    "throttle": "answered 429, nothing started",
    "error_before": "answered 500, nothing started",
    "error_after": "answered 500 after the calls started",
    "drop_after": "connection closed without an answer after the calls started",
    "slow": "answered after --slow-seconds, the calls started at once",
    "malformed": "answered 200 after the calls started, with references of "
    "--malformed-shape that cannot be matched to them (a replay gets the true ones)",
    "trickle": "answered 200 after the calls started, a few bytes every --trickle-seconds",
}


def configure_parser(parser: argparse.ArgumentParser) -> None:
    defaults = SimulatorConfig()
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--port", type=int, default=8700, help="0 picks a free port")
    parser.add_argument(
        "--account-type", choices=get_args(AccountType), default=defaults.account_type
    )
    parser.add_argument(
        "--cps",
        type=_positive_float,
        default=defaults.calls_per_second,
        help="calls per second at which queued starts begin",
    )
    parser.add_argument("--max-list-length", type=_positive_int, default=defaults.max_list_length)
    parser.add_argument("--cloud-id", default=defaults.cloud_id)
    parser.add_argument("--username", default=defaults.username)
    parser.add_argument("--api-key", default=defaults.api_access_key, help="API access key")
    parser.add_argument(
        "--service",
        metavar="NAME=PASSWORD",
        type=_service_password,
        action="append",
        help="an outbound service and its password (repeatable; "
        f"default {next(iter(defaults.service_passwords))}=...)",
    )
    parser.add_argument(
        "--disabled-service", metavar="NAME", action="append", default=[], help="answers 403"
    )
    parser.add_argument(
        "--validated-caller-id",
        metavar="NUMBER",
        action="append",
        help="repeatable; without it any valid international number is accepted",
    )
    parser.add_argument("--final-page-url", default=None)
    parser.add_argument(
        "--callback-loss",
        type=_probability,
        default=0.0,
        help="share of final-page requests silently not sent",
    )
    _add_fault_options(parser)
    parser.add_argument(
        "--seed", type=int, default=0, help="seeds the call outcomes and the fault draws"
    )


def _add_fault_options(parser: argparse.ArgumentParser) -> None:
    faults = parser.add_argument_group(
        "faults",
        "Each SHARE (0 to 1) is the part of service_start requests, once authenticated "
        "and valid, that get that fault; the other options tune them.",
    )
    for kind in FAULT_KINDS:
        faults.add_argument(
            f"--{kind.replace('_', '-')}",
            type=_probability,
            default=0.0,
            metavar="SHARE",
            help=_FAULT_HELP[kind],
        )
    defaults_faults = Faults()
    faults.add_argument(
        "--slow-seconds",
        type=_non_negative_float,
        metavar="SECONDS",
        default=defaults_faults.slow_seconds,
        help="how long a slow answer is delayed (default %(default)s)",
    )
    faults.add_argument(
        "--malformed-shape",
        choices=MALFORMED_SHAPES,
        default=defaults_faults.malformed_shape,
        help="the shape of a malformed answer: one reference repeated, one missing, one "
        "too many, non-strings, an object, other requests' references, or a mix "
        "(default %(default)s)",
    )
    faults.add_argument(
        "--trickle-seconds",
        type=_non_negative_float,
        metavar="SECONDS",
        default=defaults_faults.trickle_seconds,
        help="the pause between the writes of a trickled answer (default %(default)s)",
    )
    faults.add_argument(
        "--delay-before-seconds",
        type=_non_negative_float,
        metavar="SECONDS",
        default=defaults_faults.delay_before_seconds,
        help="every service_start request waits this long before it is even "
        "authenticated (default %(default)s)",
    )


def run_from_args(args: argparse.Namespace) -> int:
    try:
        config = SimulatorConfig(
            cloud_id=args.cloud_id,
            username=args.username,
            api_access_key=args.api_key,
            service_passwords=dict(args.service) if args.service else default_service_passwords(),
            disabled_services=frozenset(args.disabled_service),
            account_type=args.account_type,
            calls_per_second=args.cps,
            max_list_length=args.max_list_length,
            validated_caller_ids=(
                frozenset(args.validated_caller_id) if args.validated_caller_id else None
            ),
            final_page_url=args.final_page_url,
            callback_loss=args.callback_loss,
            seed=args.seed,
        )
        faults = faults_from_args(args)
    except ValueError as exc:
        print(f"simulator: {exc}", file=sys.stderr)
        return 2
    return asyncio.run(_serve(config, faults, args.host, args.port))


def faults_from_args(args: argparse.Namespace) -> Faults:
    """The faults that configure_parser's options ask for."""
    faults = Faults(
        slow_seconds=args.slow_seconds,
        malformed_shape=args.malformed_shape,
        trickle_seconds=args.trickle_seconds,
        delay_before_seconds=args.delay_before_seconds,
    )
    for kind in FAULT_KINDS:
        setattr(faults, kind, getattr(args, kind))
    return faults


async def _serve(config: SimulatorConfig, faults: Faults, host: str, port: int) -> int:
    simulator = Simulator(config)
    simulator.faults = faults
    try:
        base_url = await simulator.start(host, port)
    except OSError as exc:
        print(f"simulator: cannot listen on {host}:{port}: {exc.strerror}", file=sys.stderr)
        await simulator.stop()
        return 1
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):  # no signal handlers on Windows
            loop.add_signal_handler(signum, stop.set)
    print(base_url, flush=True)
    try:
        await stop.wait()
    finally:
        await simulator.stop()
    return 0
