"""Acceptance of the monitor on real Redis, real workers and a real monitor process."""

from __future__ import annotations

import signal
import time
from collections import Counter
from typing import Any

import pytest
from celery.result import AsyncResult
from sqlalchemy import func, select

from shared.catalog import CATALOG
from shared.celery_app import create_celery_app
from shared.db import session_scope
from shared.models import TaskRecord
from shared.workers import list_workers
from tests.harness import wait_until
from tests.services.monitor.conftest import OFFLINE_AFTER, MonitorStack

pytestmark = pytest.mark.integration

SPEC = CATALOG["test_task"]
FINAL = ("SUCCESS", "FAILURE")


def outcome(i: int) -> str:
    if i % 20 == 0:
        return "retry"
    if i % 5 == 1:
        return "fail"
    return "ok"


def kwargs_for(kind: str, i: int) -> dict[str, Any]:
    # "transient:" makes test_task fail transiently on its first attempt (retried at once: backoff 0)
    return {"message": f"transient:m{i}" if kind == "retry" else f"m{i}", "fail": kind == "fail"}


def send(app: Any, start: int, count: int) -> dict[str, str]:
    """Publish ``count`` tasks of mixed outcome; task id -> expected kind."""
    sent = {}
    for i in range(start, start + count):
        kind = outcome(i)
        result = app.send_task(
            SPEC.celery_name,
            kwargs=kwargs_for(kind, i),
            queue=SPEC.queue,
            headers={"mallops_owner": "monitor-test"},
            ignore_result=False,
        )
        sent[result.id] = kind
    return sent


def history_states(settings: Any) -> dict[str, tuple[str, int]]:
    with session_scope(settings) as session:
        owners = set(session.scalars(select(TaskRecord.owner).distinct()))
        assert owners == {"monitor-test"}  # from the mallops_owner header
        return {
            task_id: (state, retries)
            for task_id, state, retries in session.execute(
                select(TaskRecord.task_id, TaskRecord.state, TaskRecord.retries)
            )
        }


def finished_rows(settings: Any) -> int:
    with session_scope(settings) as session:
        return int(session.scalar(select(func.count()).select_from(TaskRecord).where(TaskRecord.state.in_(FINAL))) or 0)


def check_history(settings: Any, expected: dict[str, str]) -> None:
    rows = history_states(settings)
    assert set(rows) == set(expected)
    for task_id, kind in expected.items():
        state, retries = rows[task_id]
        want = ("FAILURE", 0) if kind == "fail" else ("SUCCESS", 1 if kind == "retry" else 0)
        assert (state, retries) == want, (task_id, kind)


def check_metrics(stack: MonitorStack, expected: dict[str, str]) -> None:
    kinds = Counter(expected.values())
    executions = len(expected) + kinds["retry"]  # a retried task runs twice
    name = SPEC.celery_name

    def agree() -> bool:
        return stack.total("celery_task_succeeded_total", name=name) == kinds["ok"] + kinds["retry"]

    wait_until(agree, timeout=60, interval=0.5, message="succeeded counter to catch up")
    assert stack.total("celery_task_sent_total", name=name) == executions  # retries are re-published
    assert stack.total("celery_task_received_total", name=name) == executions
    assert stack.total("celery_task_started_total", name=name) == executions
    assert stack.total("celery_task_retried_total", name=name) == kinds["retry"]
    assert stack.total("celery_task_failed_total", name=name, exception="RequestedFailure") == kinds["fail"]
    assert stack.total("celery_task_failed_total", name=name) == kinds["fail"]
    assert stack.total("celery_task_runtime_count", name=name) == kinds["ok"] + kinds["retry"]
    assert stack.total("celery_task_queue_wait_time_count", name=name) == len(expected)
    assert stack.total("mallops_monitor_pending_entries") >= 0


def test_history_and_metrics_are_complete_and_survive_a_monitor_kill(monitor_stack: MonitorStack) -> None:
    stack = monitor_stack
    stack.worker()
    monitor = stack.monitor()
    app = create_celery_app("monitor-test", stack.settings)
    try:
        expected = send(app, 0, 1000)
        wait_until(
            lambda: finished_rows(stack.settings) == 1000,
            timeout=240,
            interval=0.5,
            message="1,000 finished tasks in the history",
        )
        check_history(stack.settings, expected)
        check_metrics(stack, expected)

        # the monitor dies; work goes on; nothing may be lost or counted twice when it is back
        monitor.signal(signal.SIGKILL)
        monitor.popen.wait(10)
        more = send(app, 1000, 500)

        states: Counter[str] = Counter()

        def all_done() -> bool:
            states.clear()
            states.update(AsyncResult(task_id, app=app).state for task_id in more)
            return sum(states[s] for s in FINAL) == len(more)

        try:
            wait_until(all_done, timeout=300, interval=1.0, message="500 tasks finished while the monitor is down")
        except pytest.fail.Exception:  # say which states they are stuck in (and leave the worker's log)
            pytest.fail(
                f"500 tasks sent while the monitor is down, by state after 300 s: {dict(states)}\n"
                f"worker log tail:\n{stack.processes[0].log()[-3000:]}"
            )
        assert finished_rows(stack.settings) == 1000
        stack.monitor()
        wait_until(
            lambda: finished_rows(stack.settings) == 1500,
            timeout=240,
            interval=0.5,
            message="1,500 finished tasks after the monitor caught up",
        )
        everything = expected | more
        check_history(stack.settings, everything)
        check_metrics(stack, everything)
        assert stack.value("mallops_monitor_pending_entries") is not None
    finally:
        app.close()


def test_a_killed_worker_goes_offline_within_the_heartbeat_timeout(monitor_stack: MonitorStack) -> None:
    stack = monitor_stack
    hostname = f"doomed-{time.monotonic_ns()}@127.0.0.1"
    worker = stack.worker(hostname=hostname)
    stack.monitor()
    wait_until(
        lambda: stack.value("celery_worker_up", hostname=hostname) == 1, timeout=30, message="worker up in /metrics"
    )
    assert stack.value("celery_active_worker_count", queue_name="default") == 1

    # progress reported by a running task reaches the history
    app = create_celery_app("monitor-test", stack.settings)
    spec = CATALOG["long_running_task"]
    try:
        result = app.send_task(spec.celery_name, kwargs={"steps": 3, "step_seconds": 0.05}, queue=spec.queue)
        assert result.get(timeout=30) == {"current": 3, "total": 3}
    finally:
        app.close()

    def progressed() -> tuple[str, int | None, int | None] | None:
        with session_scope(stack.settings) as session:
            row = session.get(TaskRecord, result.id)
            return (row.state, row.progress_current, row.progress_total) if row else None

    wait_until(lambda: progressed() == ("SUCCESS", 3, 3), timeout=30, message="progress in the history")

    worker.signal(signal.SIGKILL)
    worker.popen.wait(10)
    killed = time.monotonic()
    wait_until(
        lambda: stack.value("celery_worker_up", hostname=hostname) == 0,
        timeout=30,
        interval=0.1,
        message="worker down in /metrics",
    )
    took = time.monotonic() - killed
    # offline after OFFLINE_AFTER s of silence; the last heartbeat came at most one interval before the kill
    assert took <= OFFLINE_AFTER + 2.0, took
    workers = {w["hostname"]: w for w in list_workers(stack.settings)}
    assert workers[hostname]["status"] == "offline"
    assert stack.value("celery_worker_tasks_active", hostname=hostname) == 0
    assert stack.value("celery_active_worker_count", queue_name="default") == 0


def test_a_terminated_task_is_revoked_in_the_history_and_counted(monitor_stack: MonitorStack) -> None:
    """``revoke --terminate`` of a running task: the worker's task-revoked event reaches the monitor."""
    stack = monitor_stack
    worker = stack.worker()
    stack.monitor()
    app = create_celery_app("monitor-test", stack.settings)
    spec = CATALOG["long_running_task"]
    try:
        result = app.send_task(
            spec.celery_name,
            kwargs={"steps": 600, "step_seconds": 0.1},
            queue=spec.queue,
            headers={"mallops_owner": "monitor-test"},
        )

        def state() -> str | None:
            with session_scope(stack.settings) as session:
                row = session.get(TaskRecord, result.id)
                return row.state if row else None

        wait_until(lambda: state() == "PROGRESS", timeout=30, message="the task running")
        app.control.revoke(result.id, terminate=True, signal="SIGTERM")
        wait_until(lambda: state() == "REVOKED", timeout=30, message="the history row REVOKED")
    finally:
        app.close()
    with session_scope(stack.settings) as session:
        row = session.get(TaskRecord, result.id)
        assert row is not None
        assert (row.exception, row.error) == ("Terminated", "terminated by SIGTERM")
        assert row.finished_at is not None
    wait_until(
        lambda: stack.total("celery_task_revoked_total", name=spec.celery_name) == 1,
        timeout=30,
        message="celery_task_revoked_total",
    )
    assert "request_dict" not in worker.log()
