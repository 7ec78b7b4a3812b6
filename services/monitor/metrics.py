"""The monitor's Prometheus metrics: celery-exporter's names and labels, on a registry of its own.

Task counters and histograms live in :class:`MetricStore` (loaded from and committed to the database
with the history, so a restart neither loses nor double-counts them); worker and queue gauges are read
live from Redis at scrape time (the same source as the gateway's ``/workers`` and ``/queues``); the
monitor's own health comes from :class:`Health`, which the consumer loop updates.
"""

from __future__ import annotations

import logging
import threading
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from services.monitor.state import BUCKETS, COUNTERS, HISTOGRAMS, Deltas, labels_of, parse_key
from shared.catalog import CATALOG
from shared.contracts import EventType

log = logging.getLogger("mallops.monitor")

# live worker and queue state: (list_workers(), queue_lengths())
LiveReader = Callable[[], tuple[list[dict[str, Any]], dict[str, dict[str, int]]]]


class MetricStore:
    """Counter and histogram series by persisted key (see :func:`services.monitor.state.series_key`)."""

    def __init__(self, buckets: dict[str, tuple[float, ...]] | None = None) -> None:
        self.buckets = dict(buckets or {})  # each histogram's bounds (state.histogram_buckets); BUCKETS if absent
        self._values: dict[str, float] = {}
        self._hosts: dict[str, str | None] = {}
        self._lock = threading.Lock()

    def load(self, rows: Iterable[tuple[str, str | None, float]]) -> None:
        with self._lock:
            self._values.clear()
            self._hosts.clear()
            for key, hostname, value in rows:
                self._values[key] = float(value)
                self._hosts[key] = hostname

    def apply(self, deltas: Deltas) -> None:
        with self._lock:
            for key, amount in deltas.values.items():
                self._values[key] = self._values.get(key, 0.0) + amount
                self._hosts[key] = deltas.hostnames.get(key)

    def purge_host(self, hostname: str) -> int:
        with self._lock:
            keys = [key for key, host in self._hosts.items() if host == hostname]
            for key in keys:
                del self._values[key]
                del self._hosts[key]
            return len(keys)

    def snapshot(self) -> dict[str, float]:
        with self._lock:
            return dict(self._values)

    def __len__(self) -> int:
        return len(self._values)


@dataclass
class Health:
    """The consumer loop's view of itself, exposed as ``mallops_monitor_*`` metrics and on /health."""

    events_processed: int = 0
    batches: int = 0
    lag_seconds: float = 0.0
    pending_entries: int = 0
    stream_length: int = 0
    connected: bool = False
    last_error: str | None = None


class MonitorCollector(Collector):
    def __init__(self, store: MetricStore, health: Health, live: LiveReader | None = None) -> None:
        self.store = store
        self.health = health
        self.live = live

    def collect(self) -> Iterator[Metric]:
        yield from self._task_metrics()
        yield from self._live_metrics()
        yield from self._health_metrics()

    def _task_metrics(self) -> Iterator[Metric]:
        counters: dict[str, dict[tuple[str, ...], float]] = defaultdict(dict)
        histograms: dict[str, dict[tuple[str, ...], dict[str, float]]] = defaultdict(lambda: defaultdict(dict))
        for key, value in self.store.snapshot().items():
            metric, values, part = parse_key(key)
            if part:
                histograms[metric][values][part] = value
            else:
                counters[metric][values] = value
        combos = _task_combos(counters)
        for metric, help_text in COUNTERS.values():
            family = CounterMetricFamily(metric, help_text, labels=labels_of(metric))
            series = counters.get(metric, {})
            for values, value in sorted(series.items()):
                family.add_metric(list(values), value)
            present = {_combo(metric, values) for values in series}
            for name, hostname, queue in sorted(combos - present):
                family.add_metric(_zero_labels(metric, name, hostname, queue), 0.0)
            yield family
        for metric, help_text in HISTOGRAMS.items():
            hist = HistogramMetricFamily(metric, help_text, labels=labels_of(metric))
            for values, parts in sorted(histograms.get(metric, {}).items()):
                cumulative = 0.0
                buckets = []
                for index, bound in enumerate(self.store.buckets.get(metric, BUCKETS)):
                    cumulative += parts.get(f"b{index}", 0.0)
                    buckets.append((floatToGoString(bound), cumulative))  # type: ignore[no-untyped-call]
                hist.add_metric(list(values), buckets, parts.get("sum", 0.0))
            yield hist

    def _live_metrics(self) -> Iterator[Metric]:
        up = GaugeMetricFamily(
            "celery_worker_up", "Indicates if a worker has recently sent a heartbeat.", labels=["hostname"]
        )
        active = GaugeMetricFamily(
            "celery_worker_tasks_active", "The number of tasks the worker is currently processing", labels=["hostname"]
        )
        length = GaugeMetricFamily(
            "celery_queue_length", "The number of message in broker queue.", labels=["queue_name"]
        )
        workers_per_queue = GaugeMetricFamily(
            "celery_active_worker_count", "The number of active workers in broker queue.", labels=["queue_name"]
        )
        consumers = GaugeMetricFamily(
            "celery_active_consumer_count", "The number of active consumer in broker queue.", labels=["queue_name"]
        )
        processes = GaugeMetricFamily(
            "celery_active_process_count",
            "The number of active process in broker queue. Each worker may have more than one process.",
            labels=["queue_name"],
        )
        if self.live is not None:
            try:
                workers, queues = self.live()
            except Exception as exc:  # a scrape still answers with what it has
                log.warning("could not read worker and queue state: %s", exc)
            else:
                for worker in workers:
                    online = worker["status"] == "online"
                    up.add_metric([worker["hostname"]], 1.0 if online else 0.0)
                    active.add_metric([worker["hostname"]], float(worker["active"] if online else 0))
                for queue, info in queues.items():
                    online = [w for w in workers if w["status"] == "online" and queue in (w.get("queues") or [])]
                    length.add_metric([queue], float(info["pending"]))
                    workers_per_queue.add_metric([queue], float(info["consumers"]))
                    # consumers: each online worker consumes with one connection (Redis has no consumer list)
                    consumers.add_metric([queue], float(info["consumers"]))
                    processes.add_metric([queue], float(sum(int(w.get("concurrency") or 1) for w in online)))
        yield from (up, active, length, workers_per_queue, consumers, processes)

    def _health_metrics(self) -> Iterator[Metric]:
        h = self.health
        processed = CounterMetricFamily(
            "mallops_monitor_events_processed", "Stream entries this monitor process has stored and acknowledged."
        )
        processed.add_metric([], float(h.events_processed))
        yield processed
        for name, help_text, value in (
            (
                "mallops_monitor_event_lag_seconds",
                "Age of the oldest entry in the batch being processed (0 when caught up).",
                h.lag_seconds,
            ),
            (
                "mallops_monitor_pending_entries",
                "Stream entries not yet acknowledged by the monitor's group (delivered or not).",
                h.pending_entries,
            ),
            ("mallops_monitor_stream_length", "Entries in the lifecycle event stream.", h.stream_length),
            ("mallops_monitor_connected", "1 when the monitor reaches Redis and the database.", float(h.connected)),
        ):
            gauge = GaugeMetricFamily(name, help_text)
            gauge.add_metric([], float(value))
            yield gauge


SENT = COUNTERS[EventType.TASK_SENT][0]
#: (Celery name, queue) of every catalog task: their counters are exported from the start, at zero
CATALOG_TASKS: tuple[tuple[str, str], ...] = tuple(sorted((spec.celery_name, spec.queue) for spec in CATALOG.values()))


def _combo(metric: str, values: tuple[str, ...]) -> tuple[str, str, str]:
    """(name, hostname, queue_name) of a counter series (a failure's exception left out)."""
    labels = dict(zip(labels_of(metric), values, strict=True))
    return labels["name"], labels["hostname"], labels["queue_name"]


def _task_combos(counters: dict[str, dict[tuple[str, ...], float]]) -> set[tuple[str, str, str]]:
    """Every (task, worker, queue) that some counter has a series for, and (task, "", queue) for every
    catalog task that has none yet: each task counter is exported for all of them, at zero where nothing
    happened, as celery-exporter does (a task's counters move together; none is missing from a sum)."""
    # not from task-sent: its hostname is the sender's (a gateway, beat), which runs nothing (celery-exporter
    # leaves it out for the same reason)
    task_counters = {metric for metric, _ in COUNTERS.values()} - {SENT}  # celery_task_*, not mallops_task_failures
    combos = {
        _combo(metric, values) for metric, series in counters.items() if metric in task_counters for values in series
    }
    seen = {name for name, _, _ in combos}
    combos |= {(name, "", queue) for name, queue in CATALOG_TASKS if name not in seen}
    return combos


def _zero_labels(metric: str, name: str, hostname: str, queue: str) -> list[str]:
    """The labels of a zero series; a failure's exception is empty (as celery-exporter's)."""
    values = {"name": name, "hostname": hostname, "queue_name": queue, "exception": ""}
    return [values[label] for label in labels_of(metric)]


def build_registry(store: MetricStore, health: Health, live: LiveReader | None = None) -> CollectorRegistry:
    """A registry of the monitor's own (never the process-global default one)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(MonitorCollector(store, health, live))
    return registry
