"""The monitor's metrics for what a mall would miss: dead letters piling up, a schedule entry that did not
fire, a failure of a critical task, a worker lost (silent without saying it stopped).

- ``mallops_dead_letters``: dead letters kept (``shared.dead_letter_store``), read at scrape time;
- ``mallops_schedule_last_run_timestamp_seconds{entry}`` and ``mallops_schedule_period_seconds{entry}``:
  each enabled beat entry's last run and period (``shared.schedules.entry_timings``), read at scrape time;
- ``mallops_task_failures_total{name, critical}``: failures per task, from the persisted counters, every
  catalog task present from the start (0), so the first failure is an increase; ``critical`` from the catalog;
- ``mallops_worker_lost{hostname}``: 1 for a worker offline that did not say it was stopping.

The alerts on them are in ``deploy/prometheus/alerts.yml``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from services.monitor.metrics import MetricStore
from services.monitor.state import TASK_FAILURES, parse_key
from shared.catalog import CATALOG, get_spec
from shared.schedules import EntryTiming

log = logging.getLogger("mallops.monitor")


T = TypeVar("T")


def _read(read: Callable[[], T], what: str, default: T) -> T:
    """What ``read`` returns, or ``default`` when it fails: a scrape still answers with what it has."""
    try:
        return read()
    except Exception as exc:
        log.warning("could not %s: %s", what, exc)
        return default


class FailureCollector(Collector):
    def __init__(
        self,
        store: MetricStore,
        dead_letters: Callable[[], int],
        schedules: Callable[[], list[EntryTiming]],
        workers: Callable[[], list[dict[str, Any]]],
    ) -> None:
        self.store = store
        self.dead_letters = dead_letters
        self.schedules = schedules
        self.workers = workers

    def collect(self) -> Iterator[Metric]:
        yield self._task_failures()
        letters = GaugeMetricFamily("mallops_dead_letters", "Dead letters kept: messages the workers could not run.")
        count = _read(self.dead_letters, "count the dead letters", None)
        if count is not None:
            letters.add_metric([], float(count))
        yield letters
        yield from self._schedules()
        yield self._lost_workers()

    def _task_failures(self) -> Metric:
        counts = {spec.celery_name: 0.0 for spec in CATALOG.values()}
        for key, value in self.store.snapshot().items():
            if key.startswith(f'["{TASK_FAILURES}"'):
                counts[parse_key(key)[1][0]] = value
        family = CounterMetricFamily(
            TASK_FAILURES, "Failed runs per task (every catalog task, 0 when none).", labels=["name", "critical"]
        )
        for name, value in sorted(counts.items()):
            spec = get_spec(name)
            family.add_metric([name, "true" if spec is not None and spec.critical else "false"], value)
        return family

    def _schedules(self) -> Iterator[Metric]:
        last = GaugeMetricFamily(
            "mallops_schedule_last_run_timestamp_seconds",
            "When beat last sent each enabled schedule entry (epoch seconds).",
            labels=["entry"],
        )
        period = GaugeMetricFamily(
            "mallops_schedule_period_seconds",
            "Seconds between an enabled entry's last run and its next one due.",
            labels=["entry"],
        )
        timings: list[EntryTiming] = _read(self.schedules, "read the beat schedule", [])
        for timing in timings:
            last.add_metric([timing.name], timing.last_run_at.timestamp())
            period.add_metric([timing.name], timing.period)
        yield from (last, period)

    def _lost_workers(self) -> Metric:
        lost = GaugeMetricFamily(
            "mallops_worker_lost",
            "1 for a worker offline without having said it was stopping (killed, crashed, cut off).",
            labels=["hostname"],
        )
        workers: list[dict[str, Any]] = _read(self.workers, "read the workers", [])
        for worker in workers:
            lost.add_metric(
                [worker["hostname"]], 1.0 if worker["status"] == "offline" and not worker.get("stopped") else 0.0
            )
        return lost
