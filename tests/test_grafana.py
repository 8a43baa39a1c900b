"""The Grafana dashboard (deploy/grafana/) queries only metrics a real daemon exports:
every metric name in its PromQL is checked against GET /metrics of the daemon's app,
built and served as `campaign run` does."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest
from prometheus_client.parser import text_string_to_metric_families

from campaign.metrics import new_metrics
from campaign.server import Server, build_app
from campaign.settings import ListenerSettings

DASHBOARD = (
    Path(__file__).resolve().parents[1] / "deploy" / "grafana" / "dashboards" / "campaign.json"
)

# PromQL words that are neither metrics nor followed by "(".
_KEYWORDS = frozenset({"and", "or", "unless", "bool", "offset", "inf", "nan"})
# Sample names each metric type exports besides the family's own name.
_SUFFIXES = {
    "counter": ("_total", "_created"),
    "gauge": ("",),
    "histogram": ("_bucket", "_count", "_sum", "_created"),
    "summary": ("", "_count", "_sum", "_created"),
    "info": ("_info",),
    "unknown": ("",),
}


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression (or Grafana's label_values()) reads."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # strings
    text = re.sub(r"\{[^}]*\}", "", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", "", text)  # ranges
    text = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", text)
    text = re.sub(r"\$\{?\w+\}?", "", text)  # Grafana's variables
    text = re.sub(r"label_values\(\s*([A-Za-z_:][\w:]*)\s*,\s*\w+\s*\)", r"\1", text)
    names = set()
    for found in re.finditer(r"(?<![\w.])[A-Za-z_:][\w:]*", text):
        if text[found.end() :].lstrip().startswith("(") or found[0].lower() in _KEYWORDS:
            continue  # a function or an aggregation
        names.add(found[0])
    return names


def queried(board: dict[str, Any]) -> dict[str, set[str]]:
    """Each query of the dashboard and the metrics it reads."""
    exprs = [t["expr"] for p in board["panels"] for t in p["targets"]]
    for variable in board["templating"]["list"]:
        if variable["type"] != "query":  # e.g. the data source picker
            continue
        query = variable["query"]
        exprs.append(query["query"] if isinstance(query, dict) else query)
    return {expr: metric_names(expr) for expr in exprs}


def test_metric_names_are_read_from_promql_as_prometheus_would() -> None:
    assert metric_names(
        'histogram_quantile(0.95, sum by (le, endpoint) (rate(x_seconds_bucket{a="b"}[5m])))'
    ) == {"x_seconds_bucket"}
    assert metric_names('sum(rate(a_total{campaign=~"$campaign"}[2m])) * 60 / b') == {
        "a_total",
        "b",
    }
    assert metric_names("max by (campaign, state) (campaign_contacts)") == {"campaign_contacts"}
    assert metric_names("label_values(campaign_contacts, campaign)") == {"campaign_contacts"}
    assert metric_names("up == 1 and on (instance) c") == {"up", "c"}


@pytest.fixture
async def exported(db_pool: asyncpg.Pool) -> set[str]:
    """Every sample name GET /metrics of a daemon's app can carry."""
    listener = ListenerSettings(host="127.0.0.1", port=0)
    app = build_app(db_pool, listener, new_metrics(), dict)
    async with (
        Server(app, listener) as server,
        aiohttp.ClientSession() as http,
        http.get(f"{server.url}/metrics") as response,
    ):
        assert response.status == 200
        text = await response.text()
    names = set()
    for family in text_string_to_metric_families(text):
        names |= {family.name + suffix for suffix in _SUFFIXES[family.type]}
        names |= {sample.name for sample in family.samples}
    return names


async def test_every_metric_the_grafana_dashboard_queries_is_exported_by_a_daemon(
    exported: set[str],
) -> None:
    board = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    queries = queried(board)

    assert queries and all(queries.values()), queries
    missing = {expr: names - exported for expr, names in queries.items() if names - exported}
    assert missing == {}
    # And the dashboard shows every metric the daemon exports.
    read = {name for names in queries.values() for name in names}
    families = {re.sub(r"_(total|bucket|count|sum|created)$", "", n) for n in read}
    ours = {re.sub(r"_(total|bucket|count|sum|created)$", "", n) for n in exported}
    assert {f for f in ours if f.startswith("campaign_")} <= families
