"""bench/scale.py still runs end to end against the engine as it is (a tiny run: the
figures mean nothing at this size, only that every part measures something)."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "bench" / "scale.py"


async def test_scale_bench_runs_every_part_and_prints_a_verdict_per_target(
    pg_admin_dsn: str,
) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        str(BENCH),
        "--admin-dsn",
        pg_admin_dsn,
        "--contacts",
        "60",
        "--campaigns",
        "1,20",
        "--row-timeout",
        "20",
        "--idle-campaigns",
        "3",
        "--idle-contacts",
        "2",
        "--idle-seconds",
        "1",
        "--inserts",
        "2",
        "--churn-contacts",
        "1000",
        "--churn-keep",
        "100",
        "--claim-samples",
        "3",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode == 0, err.decode()[-3000:]
    text = out.decode()
    result = json.loads(text.splitlines()[-1])
    assert [r["campaigns"] for r in result["table"]] == [1, 20]
    assert all(r["dialled"] > 0 and r["transactions"] > 0 for r in result["table"])
    assert result["idle"]["commits_per_s"] >= 0
    assert len(result["latency"]["all_s"]) == 2
    assert result["churn"]["moved"] == 900
    assert set(result["checks"]) == {"idle_cpu", "idle_commits", "latency", "churn"}
    for line in ("not measured (needs both counts)", "idle CPU", "INSERT -> first", "after churn"):
        assert line in text
