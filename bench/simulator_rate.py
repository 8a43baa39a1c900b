"""How fast the simulator accepts service_start lists, measured over loopback.

    .venv/bin/python bench/simulator_rate.py [--seconds 10] [--list-size 50] [--concurrency 8]

Starts `python -m campaign simulator` as a subprocess (its own process, as the
engine's tests see it), then drives it with a bare aiohttp client: each request
is a list of telephone calls with its own unique_id. Prints requests/s and
calls/s overall and the median of the per-second figures.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import statistics
import time
from collections import Counter
from dataclasses import dataclass, field
from urllib.parse import quote

import aiohttp
from scratch import start_simulator, stop

SERVICE = "MyOutboundService"
PASSWORD = "sim-password"
CALLER_ID = "441908273801"
# 44 1908 200000..699999: half a million valid, non-premium UK numbers.
FIRST_NUMBER = 441908200000
NUMBER_POOL = 500_000


@dataclass
class Tally:
    started: float
    statuses: Counter[int] = field(default_factory=Counter)
    calls: int = 0
    errors: int = 0
    requests_per_second: Counter[int] = field(default_factory=Counter)
    calls_per_second: Counter[int] = field(default_factory=Counter)

    def record(self, status: int, calls: int) -> None:
        second = int(time.monotonic() - self.started)
        self.statuses[status] += 1
        if status == 200:
            self.calls += calls
            self.requests_per_second[second] += 1
            self.calls_per_second[second] += calls


def number(i: int) -> str:
    return str(FIRST_NUMBER + i % NUMBER_POOL)


def encoded_lists(list_size: int, count: int) -> list[bytes]:
    """Request bodies built before the clock starts: building JSON per request
    would make the client, not the simulator, the thing measured. Numbers do not
    repeat until the pool is used up, so the simulator's cache of checked
    numbers does not flatter it (campaigns mostly dial numbers once)."""
    bodies = []
    for k in range(count):
        calls = [
            {"to": number(k * list_size + i), "from": CALLER_ID, "token": f"bench-{k}-{i}"}
            for i in range(list_size)
        ]
        bodies.append(("rest_calls=" + quote(json.dumps(calls), safe="")).encode())
    return bodies


async def worker(
    session: aiohttp.ClientSession,
    url: str,
    bodies: list[bytes],
    concurrency: int,
    worker_id: int,
    deadline: float,
    tally: Tally,
) -> None:
    headers = {
        "Authorization": aiohttp.encode_basic_auth(f"1-2-0/bob@example.com/{SERVICE}", PASSWORD),
        "Accept": "application/json",
        "Content-Type": "application/x-www-form-urlencoded",
    }
    n = 0
    while time.monotonic() < deadline:
        body = bodies[(n * concurrency + worker_id) % len(bodies)]
        body += f"&unique_id=b{worker_id}-{n}".encode()
        n += 1
        try:
            async with session.post(url, data=body, headers=headers) as response:
                references = await response.json()
                tally.record(response.status, len(references) if response.status == 200 else 0)
        except (aiohttp.ClientError, TimeoutError):
            tally.errors += 1


async def run(seconds: float, list_size: int, concurrency: int, distinct_lists: int) -> int:
    process, base_url = await start_simulator(
        SERVICE, PASSWORD, cps=100_000, max_list_length=max(list_size, 1)
    )
    try:
        bodies = encoded_lists(list_size, distinct_lists)
        connector = aiohttp.TCPConnector(limit=concurrency)
        timeout = aiohttp.ClientTimeout(total=30)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
            tally = Tally(started=time.monotonic())
            deadline = tally.started + seconds
            await asyncio.gather(
                *(
                    worker(
                        session,
                        base_url + "/service_start",
                        bodies,
                        concurrency,
                        i,
                        deadline,
                        tally,
                    )
                    for i in range(concurrency)
                )
            )
            elapsed = time.monotonic() - tally.started
    finally:
        await stop(process)

    ok = tally.statuses[200]
    # Only whole seconds count towards the median; the last one is cut short.
    whole = [s for s in range(int(seconds)) if s in tally.requests_per_second]
    median_requests = statistics.median(tally.requests_per_second[s] for s in whole) if whole else 0
    median_calls = statistics.median(tally.calls_per_second[s] for s in whole) if whole else 0
    fresh = min(ok, distinct_lists) * list_size
    print(
        f"simulator_rate: {seconds:g} s, lists of {list_size}, {concurrency} concurrent, "
        f"{elapsed:.1f} s measured; {fresh:,} of {tally.calls:,} calls to unseen numbers"
    )
    print(f"  requests: {ok} ok, other statuses {dict(tally.statuses - Counter({200: ok}))}")
    print(f"  transport errors: {tally.errors}")
    print(f"  requests/s: {ok / elapsed:,.1f} (median per second {median_requests:,.0f})")
    print(f"  calls/s:    {tally.calls / elapsed:,.1f} (median per second {median_calls:,.0f})")
    return 0 if ok and ok == sum(tally.statuses.values()) and not tally.errors else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--list-size", type=int, default=50)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument(
        "--distinct-lists",
        type=int,
        default=3000,
        help="request bodies to cycle through (numbers repeat only after these)",
    )
    args = parser.parse_args()
    if not (
        0 < args.seconds <= 600
        and args.list_size >= 1
        and args.concurrency >= 1
        and args.distinct_lists >= 1
    ):
        parser.error("need 0 < --seconds <= 600 and positive sizes")
    with contextlib.suppress(KeyboardInterrupt):
        return asyncio.run(run(args.seconds, args.list_size, args.concurrency, args.distinct_lists))
    return 130


if __name__ == "__main__":
    raise SystemExit(main())
