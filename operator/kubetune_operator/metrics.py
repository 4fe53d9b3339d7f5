"""Prometheus metrics (prometheus-client), served on settings.metrics_port at /metrics."""

from __future__ import annotations

from collections import Counter as Tally
from collections.abc import Callable, Iterable

from prometheus_client import REGISTRY, Counter, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

PHASES = ("Pending", "Running", "Unknown", "Suspended", "Succeeded", "Failed")

RECONCILE_ERRORS = Counter(
    "kubetune_reconcile_errors_total", "Reconciles of a FineTuneJob that raised an error (retried with backoff).",
    ["kind"],
)
CREATION_TO_POD = Histogram(
    "kubetune_job_creation_to_pod_seconds",
    "Seconds from the start of a FineTuneJob's run (its creation, or the spec change) to the run's first pod.",
    buckets=(0.25, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600, 1800),
)
PROGRESS_REPORTS = Counter(
    "kubetune_progress_reports_total", "Progress reports received from trainer pods, by HTTP status.", ["code"]
)


class PhaseCollector(Collector):
    """kubetune_jobs{phase}: FineTuneJobs by phase, counted at scrape time from the operator's memory."""

    def __init__(self, phases: Callable[[], Iterable[str | None]]):
        self._phases = phases

    def collect(self) -> Iterable[GaugeMetricFamily]:
        counts = Tally(phase or "Pending" for phase in self._phases())
        family = GaugeMetricFamily("kubetune_jobs", "FineTuneJobs by status.phase.", labels=["phase"])
        for phase in PHASES:
            family.add_metric([phase], counts.get(phase, 0))
        yield family


def serve(port: int, phases: Callable[[], Iterable[str | None]]) -> PhaseCollector:
    """Start /metrics in a background thread (prometheus-client's own server)."""
    collector = PhaseCollector(phases)
    REGISTRY.register(collector)
    if port:
        start_http_server(port)
    return collector
