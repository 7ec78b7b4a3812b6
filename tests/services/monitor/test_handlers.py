"""The monitor's event handlers without a broker: synthetic events in, registry sample values out."""

from __future__ import annotations

import copy
import datetime as dt
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from services.monitor.metrics import Health, MetricStore, build_registry
from services.monitor.state import Deltas, apply_event, finish_row, new_row

T = 1_800_000_000.0
NAME = "mallops.maintenance.test_task"
LABELS = {"name": NAME, "hostname": "w1@h", "queue_name": "default"}


def ev(type_: str, at: float, retries: int = 0, task_id: str = "t1", **fields: Any) -> dict[str, Any]:
    host = fields.pop("host", "gw@h" if type_ == "task-sent" else "w1@h")
    return {
        "type": type_,
        "ts": T + at,
        "id": task_id,
        "name": NAME,
        "queue": "default",
        "retries": retries,
        "host": host,
        "pid": 1,
        **fields,
    }


class Harness:
    """Rows by task id, a metric store and a registry: what the monitor keeps, minus the I/O."""

    def __init__(self, live: Any = None) -> None:
        self.rows: dict[str, dict[str, Any]] = {}
        self.store = MetricStore()
        self.health = Health()
        self.registry: CollectorRegistry = build_registry(self.store, self.health, live)

    def feed(self, *events: dict[str, Any]) -> Deltas:
        deltas = Deltas()
        for seq, event in enumerate(events):
            row = self.rows.setdefault(event["id"], new_row(event["id"]))
            apply_event(row, event, deltas, seq)
        self.store.apply(deltas)
        return deltas

    def value(self, metric: str, /, **labels: str) -> float | None:
        return self.registry.get_sample_value(metric, labels)

    def row(self, task_id: str = "t1") -> dict[str, Any]:
        return finish_row(self.rows[task_id], dt.datetime.now(dt.UTC))


def success_events(task_id: str = "t1") -> list[dict[str, Any]]:
    return [
        ev("task-sent", 0.0, task_id=task_id, owner="alice", args="{'message': 'x'}"),
        ev("task-received", 0.010, task_id=task_id, owner="alice"),
        ev("task-started", 0.020, task_id=task_id, owner="alice"),
        ev("task-succeeded", 0.520, task_id=task_id, runtime=0.5, result="Task received: x"),
    ]


def test_a_successful_task_counts_once_in_every_counter_and_histogram() -> None:
    h = Harness()
    h.feed(*success_events())
    assert h.value("celery_task_sent_total", name=NAME, hostname="gw@h", queue_name="default") == 1
    for counter in ("received", "started", "succeeded"):
        assert h.value(f"celery_task_{counter}_total", **LABELS) == 1
    assert h.value("celery_task_failed_total", **LABELS, exception="") == 0  # beside, at zero (celery-exporter)
    assert h.value("celery_task_runtime_count", **LABELS) == 1
    assert h.value("celery_task_runtime_sum", **LABELS) == pytest.approx(0.5)
    assert h.value("celery_task_runtime_bucket", **LABELS, le="0.5") == 1
    assert h.value("celery_task_runtime_bucket", **LABELS, le="0.25") == 0
    assert h.value("celery_task_queue_wait_time_count", **LABELS) == 1
    assert h.value("celery_task_queue_wait_time_sum", **LABELS) == pytest.approx(0.02, abs=1e-6)
    row = h.row()
    assert row["state"] == "SUCCESS"
    assert row["owner"] == "alice"
    assert row["worker"] == "w1@h"
    assert row["runtime"] == pytest.approx(0.5)
    assert row["queue_wait"] == pytest.approx(0.02, abs=1e-6)
    assert row["args_summary"] == "{'message': 'x'}"
    assert row["result_summary"] == "Task received: x"


def test_redelivered_events_change_nothing() -> None:
    h = Harness()
    events = success_events()
    h.feed(*events)
    row_before = copy.deepcopy(h.rows["t1"])
    metrics_before = h.store.snapshot()
    deltas = h.feed(*copy.deepcopy(events))
    assert deltas.values == {}
    assert h.store.snapshot() == metrics_before
    assert {k: v for k, v in h.rows["t1"].items() if k != "last_event_seq"} == {
        k: v for k, v in row_before.items() if k != "last_event_seq"
    }


def test_late_events_never_regress_a_final_state() -> None:
    h = Harness()
    sent, received, started, succeeded = success_events()
    # the worker's pool process flushes at once, its main process and the publisher a little later
    h.feed(started, succeeded)
    assert h.row()["state"] == "SUCCESS"
    assert h.value("celery_task_queue_wait_time_count", **LABELS) is None  # not known without the send time
    h.feed(received, sent)
    row = h.row()
    assert row["state"] == "SUCCESS"
    assert row["sent_at"] == dt.datetime.fromtimestamp(T, dt.UTC)
    assert row["queue_wait"] == pytest.approx(0.02, abs=1e-6)
    assert h.value("celery_task_queue_wait_time_count", **LABELS) == 1
    assert h.value("celery_task_received_total", **LABELS) == 1


def test_failure_carries_the_exception_label_and_message() -> None:
    h = Harness()
    h.feed(
        ev("task-sent", 0),
        ev("task-received", 0.01),
        ev("task-started", 0.02),
        ev("task-failed", 0.03, runtime=0.01, exception="RequestedFailure", error="failed on request: x"),
    )
    assert h.value("celery_task_failed_total", **LABELS, exception="RequestedFailure") == 1
    assert h.value("celery_task_succeeded_total", **LABELS) == 0  # beside, at zero (celery-exporter)
    assert h.value("celery_task_runtime_count", **LABELS) is None  # as celery-exporter: successes only
    row = h.row()
    assert (row["state"], row["exception"], row["error"]) == ("FAILURE", "RequestedFailure", "failed on request: x")
    # a late retry notice of an earlier attempt does not overwrite the final error
    h.feed(ev("task-retried", 0.015, exception="TransientError", error="flaky"))
    assert h.row()["exception"] == "RequestedFailure"
    assert h.row()["state"] == "FAILURE"


def test_retry_then_success_counts_each_attempt() -> None:
    h = Harness()
    h.feed(
        ev("task-sent", 0.0),
        ev("task-received", 0.01),
        ev("task-started", 0.02),
        ev("task-sent", 0.03, retries=1, host="w1@h"),  # the retry message, published by the worker
        ev("task-retried", 0.031, exception="TransientError", error="flaky"),
    )
    row = h.row()
    assert (row["state"], row["retries"], row["exception"]) == ("RETRY", 1, "TransientError")
    h.feed(ev("task-received", 0.04, retries=1), ev("task-started", 0.05, retries=1))
    assert h.row()["state"] == "STARTED"
    h.feed(ev("task-succeeded", 0.06, retries=1, runtime=0.01))
    row = h.row()
    assert (row["state"], row["retries"], row["exception"], row["error"]) == ("SUCCESS", 1, None, None)
    assert row["started_at"] == dt.datetime.fromtimestamp(T + 0.02, dt.UTC)  # the first start
    assert h.value("celery_task_sent_total", name=NAME, hostname="gw@h", queue_name="default") == 1
    assert h.value("celery_task_sent_total", **LABELS) == 1
    assert h.value("celery_task_received_total", **LABELS) == 2
    assert h.value("celery_task_started_total", **LABELS) == 2
    assert h.value("celery_task_retried_total", **LABELS) == 1
    assert h.value("celery_task_succeeded_total", **LABELS) == 1
    assert h.value("celery_task_queue_wait_time_count", **LABELS) == 1


def test_progress_revoked_and_rejected() -> None:
    h = Harness()
    h.feed(
        ev("task-started", 0.0, task_id="p"),
        ev("task-progress", 0.1, task_id="p", current=3, total=10),
        ev("task-progress", 0.05, task_id="p", current=2, total=10),
    )
    row = h.row("p")
    assert (row["state"], row["progress_current"], row["progress_total"]) == ("PROGRESS", 3, 10)
    assert row["sent_at"] == dt.datetime.fromtimestamp(T, dt.UTC)  # first seen, without a sent event
    h.feed(
        ev("task-revoked", 0.2, task_id="p", terminated=True, exception="Terminated", error="terminated by SIGTERM"),
        ev("task-progress", 0.3, task_id="p", current=4, total=10),
    )
    row = h.row("p")
    assert (row["state"], row["exception"], row["error"]) == ("REVOKED", "Terminated", "terminated by SIGTERM")
    assert row["finished_at"] == dt.datetime.fromtimestamp(T + 0.2, dt.UTC)
    assert h.value("celery_task_revoked_total", **LABELS) == 1
    h.feed(ev("task-rejected", 0.0, task_id="r", exception="NotRegistered", error="unknown task"))
    assert h.row("r")["state"] == "REJECTED"
    assert h.row("r")["exception"] == "NotRegistered"
    assert h.value("celery_task_rejected_total", **LABELS) == 1


def test_worker_events_and_junk_are_not_task_rows() -> None:
    h = Harness()
    deltas = Deltas()
    assert not apply_event(new_row("x"), {"type": "worker-heartbeat", "ts": T, "host": "w1@h"}, deltas)
    assert not apply_event(new_row("x"), {"type": "task-started", "ts": T}, deltas)  # no id
    assert not apply_event(new_row("x"), {"type": "task-exploded", "ts": T, "id": "x"}, deltas)
    assert deltas.values == {}
    assert h.value("celery_task_started_total", **LABELS) is None


def test_live_gauges_and_purging_a_hostname() -> None:
    workers = [
        {"hostname": "w1@h", "status": "online", "active": 2, "queues": ["default"]},
        {"hostname": "w2@h", "status": "offline", "active": 0, "queues": ["default"]},
    ]
    queues = {"default": {"pending": 7, "consumers": 1}, "email": {"pending": 0, "consumers": 0}}
    h = Harness(live=lambda: (workers, queues))
    h.feed(*success_events())
    assert h.value("celery_worker_up", hostname="w1@h") == 1
    assert h.value("celery_worker_up", hostname="w2@h") == 0
    assert h.value("celery_worker_tasks_active", hostname="w1@h") == 2
    assert h.value("celery_queue_length", queue_name="default") == 7
    assert h.value("celery_active_worker_count", queue_name="default") == 1
    assert h.value("celery_active_worker_count", queue_name="email") == 0
    h.health.events_processed, h.health.pending_entries, h.health.stream_length = 4, 3, 10
    assert h.value("mallops_monitor_events_processed_total") == 4
    assert h.value("mallops_monitor_pending_entries") == 3
    assert h.value("mallops_monitor_stream_length") == 10
    assert h.value("mallops_monitor_event_lag_seconds") == 0
    assert h.store.purge_host("w1@h") > 0
    assert h.value("celery_task_started_total", **LABELS) is None
    assert h.value("celery_task_sent_total", name=NAME, hostname="gw@h", queue_name="default") == 1


def test_a_failing_live_reader_does_not_break_the_scrape() -> None:
    def broken() -> Any:
        raise ConnectionError("redis is down")

    h = Harness(live=broken)
    h.feed(*success_events())
    assert h.value("celery_task_started_total", **LABELS) == 1
    assert h.value("celery_worker_up", hostname="w1@h") is None


def test_untrusted_event_fields_are_cleaned_before_they_reach_the_history() -> None:
    from services.monitor.consumer import clean_event

    base = {"type": "task-rejected", "id": "t1", "ts": 1.0, "retries": 0}
    assert clean_event(base) == base
    assert clean_event({**base, "ts": "abc"}) is None
    assert clean_event({**base, "ts": float("nan")}) is None
    assert clean_event({**base, "ts": True}) is None
    assert clean_event({**base, "retries": "many"})["retries"] == 0  # type: ignore[index]
    assert clean_event({**base, "retries": -3})["retries"] == 0  # type: ignore[index]
    assert clean_event({**base, "id": 12})["id"] == "12"  # type: ignore[index]
    assert clean_event({**base, "id": ["x"]})["id"] is None  # type: ignore[index]
    assert clean_event({**base, "error": "a\x00b"})["error"] == "a\ufffdb"  # type: ignore[index]
    row = new_row("t1")  # and what is left folds without error
    assert apply_event(row, clean_event({**base, "retries": "many", "error": "bad\x00"}) or {}, Deltas())
    assert row["state"] == "REJECTED"


def test_queue_wait_starts_at_the_eta_or_countdown() -> None:
    eta = dt.datetime.fromtimestamp(T + 10.0, dt.UTC).isoformat()
    for order in ("in order", "started first"):
        h = Harness()
        sent = ev("task-sent", 0.0, eta=eta)
        started = ev("task-started", 12.5, eta=eta)
        h.feed(*((sent, started) if order == "in order" else (started, sent)))
        assert h.row()["queue_wait"] == 2.5, order
        assert h.value("celery_task_queue_wait_time_sum", **LABELS) == 2.5, order
    h = Harness()
    h.feed(ev("task-sent", 0.0), ev("task-started", 3.0))  # no ETA: from the publish
    assert h.row()["queue_wait"] == 3.0
