"""The gateway's own Prometheus metrics, in a registry of its own (never the global default).

With several worker processes (``MALLOPS_GATEWAY_WORKERS``) the gateway's entry point sets
``PROMETHEUS_MULTIPROC_DIR`` to a fresh directory of its own before the processes start: each writes its
samples there (prometheus_client's multiprocess mode) and ``/metrics``, whichever process answers, renders
the sum of every process's counters and histograms.

Labels are bounded: the HTTP method (known methods, else OTHER), the route *template*
(``/api/v1/tasks/{task_id}``, ``<unmatched>`` for unknown paths) and the status code.
"""

from __future__ import annotations

import os

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest, multiprocess
from prometheus_client.exposition import CONTENT_TYPE_LATEST

KNOWN_METHODS = frozenset({"GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"})
UNMATCHED = "<unmatched>"
MULTIPROC_DIR = "PROMETHEUS_MULTIPROC_DIR"
BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class GatewayMetrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "mallops_gateway_requests_total",
            "HTTP requests answered by the gateway.",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "mallops_gateway_request_duration_seconds",
            "Time to answer an HTTP request (streams: until closed).",
            ["method", "route"],
            buckets=BUCKETS,
            registry=self.registry,
        )
        self.tasks_submitted = Counter(
            "mallops_gateway_tasks_submitted_total",
            "Tasks the gateway put into the broker.",
            ["task_name"],
            registry=self.registry,
        )
        self.fast_submissions = Counter(
            "mallops_gateway_fast_submissions_total",
            "POST /api/v1/tasks requests answered below FastAPI (MALLOPS_GATEWAY_FAST_SUBMIT).",
            registry=self.registry,
        )
        self.publish_failures = Counter(
            "mallops_gateway_publish_failures_total",
            "Submissions refused with 503 because the broker failed.",
            registry=self.registry,
        )

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        method = method if method in KNOWN_METHODS else "OTHER"
        self.requests.labels(method, route, str(status)).inc()
        self.latency.labels(method, route).observe(seconds)

    def render(self) -> bytes:
        if not os.environ.get(MULTIPROC_DIR):
            return generate_latest(self.registry)
        every_process = CollectorRegistry()
        multiprocess.MultiProcessCollector(every_process)  # type: ignore[no-untyped-call]
        return generate_latest(every_process)
