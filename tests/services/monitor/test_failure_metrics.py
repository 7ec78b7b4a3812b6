"""The monitor's failure metrics and configurable histogram buckets, without a broker: synthetic events
in, registry sample values out; and the bucket layout kept in the run's database."""

from __future__ import annotations

import datetime as dt
from typing import Any

from prometheus_client import CollectorRegistry
from sqlalchemy import delete, select

from services.monitor.failure_metrics import FailureCollector
from services.monitor.metrics import Health, MetricStore, build_registry
from services.monitor.state import QUEUE_WAIT, RUNTIME, Deltas, apply_event, histogram_buckets, new_row
from services.monitor.store import load_metrics, reset_changed_histograms, write_events
from shared.db import session_scope
from shared.models import MonitorMetric, TaskRecord
from shared.schedules import EntryTiming
from shared.settings import Settings

T = 1_800_000_000.0
BACKUP = "mallops.maintenance.backup_database"


def ev(type_: str, at: float, name: str, task_id: str, **fields: Any) -> dict[str, Any]:
    return {
        "type": type_,
        "ts": T + at,
        "id": task_id,
        "name": name,
        "queue": "default",
        "retries": 0,
        "host": "w1@h",
        **fields,
    }


def registry(store: MetricStore, workers: list[dict[str, Any]], timings: list[EntryTiming]) -> CollectorRegistry:
    built = build_registry(store, Health())
    built.register(FailureCollector(store, lambda: 7, lambda: timings, lambda: workers))
    return built


def test_failures_per_task_with_the_critical_flag_letters_schedules_and_lost_workers() -> None:
    store = MetricStore()
    deltas = Deltas()
    for task_id, name in (("a", BACKUP), ("b", "mallops.maintenance.test_task"), ("c", BACKUP)):
        row = new_row(task_id)
        apply_event(row, ev("task-started", 0, name, task_id), deltas)
        apply_event(row, ev("task-failed", 1, name, task_id, exception="OSError", runtime=1.0), deltas)
        apply_event(row, ev("task-failed", 1, name, task_id, exception="OSError", runtime=1.0), deltas)  # again
    store.apply(deltas)
    last = dt.datetime.fromtimestamp(T, dt.UTC)
    workers = [
        {"hostname": "lost@h", "status": "offline", "stopped": False},
        {"hostname": "stopped@h", "status": "offline", "stopped": True},
        {"hostname": "up@h", "status": "online", "stopped": False},
    ]
    reg = registry(store, workers, [EntryTiming("check_pending_bills", last, 60.0)])

    def value(metric: str, **labels: str) -> float | None:
        return reg.get_sample_value(metric, labels)

    assert value("mallops_task_failures_total", name=BACKUP, critical="true") == 2.0
    assert value("mallops_task_failures_total", name="mallops.maintenance.test_task", critical="false") == 1.0
    # every catalog task is there from the start, so a first failure is an increase
    assert value("mallops_task_failures_total", name="mallops.reports.generate_monthly_report", critical="true") == 0.0
    assert (
        value("mallops_task_failures_total", name="mallops.finance.calculate_monthly_revenue", critical="true") == 0.0
    )
    assert value("mallops_dead_letters") == 7.0
    assert value("mallops_schedule_last_run_timestamp_seconds", entry="check_pending_bills") == T
    assert value("mallops_schedule_period_seconds", entry="check_pending_bills") == 60.0
    assert value("mallops_worker_lost", hostname="lost@h") == 1.0
    assert value("mallops_worker_lost", hostname="stopped@h") == 0.0
    assert value("mallops_worker_lost", hostname="up@h") == 0.0


def test_buckets_come_from_the_settings_and_a_change_starts_the_histogram_afresh(migrated: Settings) -> None:
    with session_scope(migrated) as session:
        session.execute(delete(MonitorMetric))
        session.execute(delete(TaskRecord).where(TaskRecord.task_id.in_(["bk1", "bk2"])))
    first = histogram_buckets(Settings(runtime_buckets="1,60,1800", queue_wait_buckets="10"))
    assert first[RUNTIME][:-1] == (1.0, 60.0, 1800.0)

    def run(task_id: str, runtime: float, buckets: dict[str, tuple[float, ...]]) -> MetricStore:
        events = [
            (1, ev("task-sent", 0, "mallops.maintenance.test_task", task_id)),
            (2, ev("task-started", 1, "mallops.maintenance.test_task", task_id)),
            (3, ev("task-succeeded", 2, "mallops.maintenance.test_task", task_id, runtime=runtime)),
        ]
        with session_scope(migrated) as session:
            reset_changed_histograms(session, buckets)
        with session_scope(migrated) as session:
            write_events(session, events, buckets=buckets)
        store = MetricStore(buckets)
        with session_scope(migrated) as session:
            store.load(load_metrics(session))
        return store

    labels = {"name": "mallops.maintenance.test_task", "hostname": "w1@h", "queue_name": "default"}
    store = run("bk1", 300.0, first)
    reg = build_registry(store, Health())
    assert reg.get_sample_value("celery_task_runtime_bucket", {**labels, "le": "60.0"}) == 0.0
    assert reg.get_sample_value("celery_task_runtime_bucket", {**labels, "le": "1800.0"}) == 1.0
    assert reg.get_sample_value("celery_task_queue_wait_time_bucket", {**labels, "le": "10.0"}) == 1.0

    # the same buckets again: the counts go on
    store = run("bk2", 30.0, first)
    reg = build_registry(store, Health())
    assert reg.get_sample_value("celery_task_runtime_count", {**labels}) == 2.0

    # other runtime buckets: the runtime histogram starts afresh, the queue wait one goes on
    second = histogram_buckets(Settings(runtime_buckets="0.5,5", queue_wait_buckets="10"))
    with session_scope(migrated) as session:
        assert reset_changed_histograms(session, second) == [RUNTIME]
        assert reset_changed_histograms(session, second) == []
        keys = session.scalars(select(MonitorMetric.key)).all()
    store = MetricStore(second)
    with session_scope(migrated) as session:
        store.load(load_metrics(session))
    reg = build_registry(store, Health())
    assert reg.get_sample_value("celery_task_runtime_count", {**labels}) is None
    assert reg.get_sample_value("celery_task_queue_wait_time_count", {**labels}) == 2.0
    assert sum('"layout:' in key for key in keys) == 2  # one layout row per histogram, never a series
    assert QUEUE_WAIT in "".join(keys)
    with session_scope(migrated) as session:
        session.execute(delete(MonitorMetric))
        session.execute(delete(TaskRecord).where(TaskRecord.task_id.in_(["bk1", "bk2"])))
