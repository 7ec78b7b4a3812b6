"""What dashboards need from a monitor that has just started: every catalog task's counters at zero
(as celery-exporter starts them), and the per-queue consumer and process gauges."""

from __future__ import annotations

from typing import Any

from services.monitor.metrics import Health, MetricStore, build_registry
from services.monitor.state import COUNTERS, Deltas, apply_event, new_row
from shared.catalog import CATALOG


def test_every_catalog_tasks_counters_exist_at_zero_from_the_start() -> None:
    registry = build_registry(MetricStore(), Health())
    for spec in CATALOG.values():
        zero = {"name": spec.celery_name, "hostname": "", "queue_name": spec.queue}
        for metric, _ in COUNTERS.values():
            labels = {**zero, "exception": ""} if metric == "celery_task_failed" else zero
            assert registry.get_sample_value(f"{metric}_total", labels) == 0.0, (metric, spec.name)


def test_a_task_that_ran_has_its_real_series_instead_of_the_zero_one() -> None:
    store = MetricStore()
    registry = build_registry(store, Health())
    spec = CATALOG["test_task"]
    deltas = Deltas()
    row = new_row("t1")
    for seq, (type_, host) in enumerate((("task-sent", "gw@h"), ("task-received", "w1@h"), ("task-succeeded", "w1@h"))):
        event = {"type": type_, "ts": 1.8e9 + seq, "id": "t1", "name": spec.celery_name, "queue": "default"}
        apply_event(row, {**event, "host": host, "runtime": 0.1}, deltas, seq + 1)
    store.apply(deltas)
    labels = {"name": spec.celery_name, "queue_name": "default"}
    assert registry.get_sample_value("celery_task_sent_total", {**labels, "hostname": "gw@h"}) == 1.0
    assert registry.get_sample_value("celery_task_succeeded_total", {**labels, "hostname": "w1@h"}) == 1.0
    # the worker's other counters exist at zero beside them (a sum over succeeded + failed has both)
    assert registry.get_sample_value("celery_task_failed_total", {**labels, "hostname": "w1@h", "exception": ""}) == 0
    assert registry.get_sample_value("celery_task_revoked_total", {**labels, "hostname": "w1@h"}) == 0.0
    assert registry.get_sample_value("celery_task_revoked_total", {**labels, "hostname": ""}) is None
    assert registry.get_sample_value("celery_task_succeeded_total", {**labels, "hostname": "gw@h"}) is None


def test_consumer_and_process_counts_per_queue() -> None:
    workers: list[dict[str, Any]] = [
        {"hostname": "finance@a", "status": "online", "active": 1, "queues": ["finance"], "concurrency": 4},
        {"hostname": "finance@b", "status": "online", "active": 0, "queues": ["finance"], "concurrency": 2},
        {"hostname": "finance@c", "status": "offline", "active": 0, "queues": ["finance"], "concurrency": 8},
    ]
    queues = {"finance": {"pending": 3, "consumers": 2}, "email": {"pending": 0, "consumers": 0}}
    registry = build_registry(MetricStore(), Health(), lambda: (workers, queues))
    assert registry.get_sample_value("celery_active_consumer_count", {"queue_name": "finance"}) == 2.0
    assert registry.get_sample_value("celery_active_process_count", {"queue_name": "finance"}) == 6.0
    assert registry.get_sample_value("celery_active_process_count", {"queue_name": "email"}) == 0.0
    assert registry.get_sample_value("celery_active_worker_count", {"queue_name": "finance"}) == 2.0
