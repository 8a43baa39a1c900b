"""Prometheus metrics for one daemon, served at /metrics.

Each `Metrics` owns its own CollectorRegistry instead of prometheus_client's
process-wide default: two daemons (or two tests) in one process then never
share counters, and creating a second `Metrics` does not fail on duplicate names.
"""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

BATCH_OUTCOMES = ("submitted", "parked", "released", "split", "rejected", "resent")
WEBHOOK_RESULTS = (
    "recorded",
    "duplicate",
    "unknown",
    "bad_request",
    "forbidden",
    "too_large",
    "unavailable",
)
"""How the final page answered; "unavailable" is a database error (503)."""

# Aculab answers within tens of milliseconds when healthy; the upper buckets
# reach the client's read timeout (http.read_timeout, 15 s by default).
REQUEST_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 15.0, 30.0)


@dataclass
class Metrics:
    registry: CollectorRegistry
    contacts: Gauge
    """campaign_contacts{campaign, state}: set by the progress reporter."""
    calls_started: Counter
    """campaign_calls_started_total{campaign}."""
    batches: Counter
    """campaign_batches_total{outcome}: submitted|parked|split|rejected|resent."""
    outcomes: Counter
    """campaign_call_outcomes_total{cause, source}: source push|poll|give_up."""
    retries: Counter
    """campaign_retries_total{cause}: contacts scheduled for another attempt."""
    request_seconds: Histogram
    """campaign_aculab_request_seconds{endpoint, result}: result ok|transient|permanent."""
    webhook_requests: Counter
    """campaign_webhook_requests_total{result}: see WEBHOOK_RESULTS."""
    aculab_reachable: Gauge
    """campaign_aculab_reachable: 0 while this daemon's circuit breaker is open."""
    aculab_outages: Counter
    """campaign_aculab_outages_total: times the circuit breaker opened."""

    def render(self) -> tuple[bytes, str]:
        """The registry in Prometheus text format, and its content type."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


def new_metrics() -> Metrics:
    registry = CollectorRegistry()
    metrics = Metrics(
        registry=registry,
        contacts=Gauge(
            "campaign_contacts",
            "Contacts per campaign and state, as last seen by the progress reporter.",
            ["campaign", "state"],
            registry=registry,
        ),
        calls_started=Counter(
            "campaign_calls_started",
            "Calls Aculab accepted (one per reference returned by service_start).",
            ["campaign"],
            registry=registry,
        ),
        batches=Counter(
            "campaign_batches",
            "service_start batches by what became of each send.",
            ["outcome"],
            registry=registry,
        ),
        outcomes=Counter(
            "campaign_call_outcomes",
            "Call outcomes recorded, by call_cause and by how they were learnt.",
            ["cause", "source"],
            registry=registry,
        ),
        retries=Counter(
            "campaign_retries",
            "Contacts scheduled for another attempt, by the cause of the last one.",
            ["cause"],
            registry=registry,
        ),
        request_seconds=Histogram(
            "campaign_aculab_request_seconds",
            "Duration of requests to Aculab Cloud.",
            ["endpoint", "result"],
            buckets=REQUEST_BUCKETS,
            registry=registry,
        ),
        webhook_requests=Counter(
            "campaign_webhook_requests",
            "Final-page requests received, by how they were answered.",
            ["result"],
            registry=registry,
        ),
        aculab_reachable=Gauge(
            "campaign_aculab_reachable",
            "1 while Aculab answers this daemon's requests, 0 while its circuit breaker is open.",
            registry=registry,
        ),
        aculab_outages=Counter(
            "campaign_aculab_outages",
            "Times Aculab became unreachable from this daemon (the circuit breaker opened).",
            registry=registry,
        ),
    )
    metrics.aculab_reachable.set(1)
    # Series that exist from the start read as 0 instead of being absent, so
    # rate() and alerts work before the first event of each kind.
    for outcome in BATCH_OUTCOMES:
        metrics.batches.labels(outcome=outcome)
    for result in WEBHOOK_RESULTS:
        metrics.webhook_requests.labels(result=result)
    return metrics
