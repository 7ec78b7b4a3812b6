"""Folding lifecycle events into one history row per task, idempotently, plus the metric deltas.

Pure functions over dicts (no database, no Redis): :func:`apply_event` is what the unit tests feed.

Idempotency: every counted event of a task has a bit in the row's ``event_mask`` (sent, received,
started and retried per attempt; each final state once; the queue-wait observation once). An event
whose bit is already set changes no counter; the row fields it carries are merged with rules that are
themselves idempotent (earliest timestamps, state precedence), so a redelivered event changes nothing.

State precedence: final states (SUCCESS, FAILURE, REVOKED, REJECTED) beat everything; otherwise a later
attempt beats an earlier one, then a later delivery of the attempt (``requeues``: how often a requeuer put
the message back, see shared/celery_extensions/redelivery.py), and within a delivery REQUEUED < SENT <
RECEIVED < STARTED < PROGRESS < RETRY (``task-requeued`` carries the new delivery's count: the task reads
REQUEUED until that delivery is received). So events arriving late or out of order (buffers of different
processes are flushed at different times) never regress a task.
"""

from __future__ import annotations

import datetime as dt
import functools
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from prometheus_client.utils import INF

from shared.contracts import (
    EVENT_STATE,
    FINAL_STATES,
    HISTORY_SENT_BIT,
    TASK_EVENTS,
    EventType,
    TaskState,
    parse_event_type,
)
from shared.settings import RUNTIME_BUCKETS, Settings

# -- metric names and labels (celery-exporter's) ---------------------------------------------------

TASK_LABELS = ("name", "hostname", "queue_name")
FAILED_LABELS = ("name", "hostname", "exception", "queue_name")
COUNTERS: dict[str, tuple[str, str]] = {
    # event type -> (metric name without _total, help)
    EventType.TASK_SENT: ("celery_task_sent", "Sent when a task message is published."),
    EventType.TASK_RECEIVED: ("celery_task_received", "Sent when the worker receives a task."),
    EventType.TASK_STARTED: ("celery_task_started", "Sent just before the worker executes the task."),
    EventType.TASK_SUCCEEDED: ("celery_task_succeeded", "Sent if the task executed successfully."),
    EventType.TASK_FAILED: ("celery_task_failed", "Sent if the execution of the task failed."),
    EventType.TASK_RETRIED: ("celery_task_retried", "Sent if the task failed, but will be retried in the future."),
    EventType.TASK_REVOKED: ("celery_task_revoked", "Sent if the task has been revoked."),
    EventType.TASK_REJECTED: (
        "celery_task_rejected",
        "The task was rejected by the worker, possibly to be re-queued or moved to a dead letter queue.",
    ),
}
RUNTIME = "celery_task_runtime"
QUEUE_WAIT = "celery_task_queue_wait_time"
HISTOGRAMS: dict[str, str] = {
    RUNTIME: "Histogram of task runtime measurements.",
    QUEUE_WAIT: "Histogram of the time tasks waited between being sent and being started.",
}
BUCKETS: tuple[float, ...] = (*RUNTIME_BUCKETS, INF)  # the default; MALLOPS_RUNTIME_BUCKETS and
# MALLOPS_QUEUE_WAIT_BUCKETS choose them per histogram (:func:`histogram_buckets`)
# failures per task name only (no hostname or exception label): a stable series per catalog task, so that
# the first failure of a task is an increase Prometheus sees (the CriticalTaskFailed alert)
TASK_FAILURES = "mallops_task_failures"
NO_HOST = ""  # the hostname of series that no worker purge may drop


def histogram_buckets(settings: Settings) -> dict[str, tuple[float, ...]]:
    """Each histogram's bucket bounds from the settings, +Inf last."""
    return {RUNTIME: (*settings.runtime_buckets, INF), QUEUE_WAIT: (*settings.queue_wait_buckets, INF)}


def labels_of(metric: str) -> tuple[str, ...]:
    return FAILED_LABELS if metric == "celery_task_failed" else TASK_LABELS


@functools.lru_cache(maxsize=65_536)  # a few per event, from a bounded set of label values: keep them
def series_key(metric: str, values: tuple[str, ...], part: str = "") -> str:
    """The persisted key of one series (``part``: "" for a counter, ``b<i>`` or ``sum`` for a histogram)."""
    return json.dumps([metric, list(values), part], separators=(",", ":"), ensure_ascii=False)


def parse_key(key: str) -> tuple[str, tuple[str, ...], str]:
    metric, values, part = json.loads(key)
    return str(metric), tuple(str(v) for v in values), str(part)


# -- event bits --------------------------------------------------------------------------------

MAX_ATTEMPT = 13  # attempts 0..13 have their own bits; later attempts share the last ones
_PER_ATTEMPT: dict[str, int] = {
    EventType.TASK_SENT: 0,
    EventType.TASK_RECEIVED: 1,
    EventType.TASK_STARTED: 2,
    EventType.TASK_RETRIED: 3,
}
_FINAL_BITS: dict[str, int] = {
    EventType.TASK_SUCCEEDED: 56,
    EventType.TASK_FAILED: 57,
    EventType.TASK_REVOKED: 58,
    EventType.TASK_REJECTED: 59,
}
QUEUE_WAIT_BIT = 60
SENT_BIT = HISTORY_SENT_BIT  # the original publish (attempt 0)


def event_bit(type_: str, attempt: int) -> int | None:
    if type_ in _PER_ATTEMPT:
        return 4 * min(max(attempt, 0), MAX_ATTEMPT) + _PER_ATTEMPT[type_]
    return _FINAL_BITS.get(type_)


# -- states ------------------------------------------------------------------------------------

RANK: dict[str, int] = {
    TaskState.REQUEUED: 0,
    TaskState.SENT: 1,
    TaskState.RECEIVED: 2,
    TaskState.STARTED: 3,
    TaskState.PROGRESS: 4,
    TaskState.RETRY: 5,
    TaskState.REVOKED: 10,
    TaskState.REJECTED: 10,
    TaskState.SUCCESS: 11,
    TaskState.FAILURE: 11,
}


def precedence(state: str, attempt: int, requeues: int = 0) -> tuple[int, int, int, int]:
    return (1 if state in FINAL_STATES else 0, attempt, requeues, RANK.get(state, 0))


def _requeues(value: Any) -> int:
    return value if type(value) is int and value >= 0 else 0


def _state_attempt(row: dict[str, Any]) -> int:
    retries = int(row.get("retries") or 0)
    return retries - 1 if row.get("state") == TaskState.RETRY else retries


# -- metric deltas -------------------------------------------------------------------------------


@dataclass
class Deltas:
    """Counter and histogram increments of one batch, applied to memory only after the commit."""

    values: dict[str, float] = field(default_factory=dict)
    hostnames: dict[str, str] = field(default_factory=dict)
    buckets: dict[str, tuple[float, ...]] = field(default_factory=dict)  # by histogram; BUCKETS when absent
    # tasks of the batch whose history row holds a final state once it is committed: the monitor then
    # drops (or shortens) their gateway metadata in Redis (consumer.StreamConsumer.forget_finished)
    finished: list[str] = field(default_factory=list)

    def add(self, key: str, hostname: str, amount: float = 1.0) -> None:
        self.values[key] = self.values.get(key, 0.0) + amount
        self.hostnames[key] = hostname

    def count(self, metric: str, values: tuple[str, ...], hostname: str) -> None:
        self.add(series_key(metric, values), hostname)

    def observe(self, metric: str, values: tuple[str, ...], hostname: str, amount: float) -> None:
        for index, bound in enumerate(self.buckets.get(metric, BUCKETS)):
            if amount <= bound:
                self.add(series_key(metric, values, f"b{index}"), hostname)
                break
        self.add(series_key(metric, values, "sum"), hostname, amount)


# -- applying one event ----------------------------------------------------------------------------


def _ts(event: dict[str, Any]) -> dt.datetime:
    return dt.datetime.fromtimestamp(float(event["ts"]), dt.UTC)


def _earliest(current: dt.datetime | None, new: dt.datetime) -> dt.datetime:
    return new if current is None or new < current else current


def _text(value: Any, limit: int) -> str | None:
    if value is None:
        return None
    text = str(value)
    return text[:limit]


def new_row(task_id: str) -> dict[str, Any]:
    return {
        "task_id": task_id,
        "task_name": None,
        "queue": None,
        "state": None,
        "args_summary": None,
        "arguments": None,
        "retry_of": None,
        "workflow_id": None,
        "workflow_step": None,
        "owner": None,
        "request_id": None,
        "worker": None,
        "retries": 0,
        "exception": None,
        "error": None,
        "traceback": None,
        "result_summary": None,
        "sent_at": None,
        "received_at": None,
        "started_at": None,
        "finished_at": None,
        "runtime": None,
        "queue_wait": None,
        "last_event_seq": 0,
        "event_mask": 0,
        "progress_current": None,
        "progress_total": None,
        "requeues": 0,
        "updated_at": None,
        "_first_seen": None,
    }


@dataclass
class Fold:
    """One event being folded into its task's row."""

    row: dict[str, Any]
    event: dict[str, Any]
    type_: EventType
    when: dt.datetime
    attempt: int
    host: str
    deltas: Deltas
    # the row's state precedence before this event (its handler may change the retries it depends on)
    before: tuple[int, int, int, int] | None = None

    @property
    def name(self) -> str:
        return str(self.row.get("task_name") or self.event.get("name") or "unknown")

    @property
    def queue(self) -> str:
        return str(self.event.get("queue") or self.row.get("queue") or "")


def apply_event(row: dict[str, Any], event: dict[str, Any], deltas: Deltas, seq: int = 0) -> bool:
    """Fold ``event`` into ``row`` (in place), adding new counts to ``deltas``; False if the event is
    not a task event or is malformed. ``seq`` is the stream entry's sequence (kept as the highest seen)."""
    type_ = parse_event_type(event.get("type"))
    if type_ is None or type_ not in TASK_EVENTS or not event.get("id") or "ts" not in event:
        return False
    host = str(event.get("host") or "unknown")
    current = row.get("state")
    before = precedence(current, _state_attempt(row), _requeues(row.get("requeues"))) if current else None
    fold = Fold(row, event, type_, _ts(event), int(event.get("retries") or 0), host, deltas, before)
    _identity(fold)
    mask = int(row.get("event_mask") or 0)
    bit = event_bit(type_, fold.attempt)
    counted = bit is not None and not mask & (1 << bit)
    row["event_mask"] = mask | (1 << bit) if bit is not None else mask

    _HANDLERS[type_](fold)  # the fields this kind of event carries
    _advance_state(fold)
    _keep_error(fold)
    if counted:
        _count(fold)
    if type_ in (EventType.TASK_SENT, EventType.TASK_STARTED) and fold.attempt == 0:
        _queue_wait(fold)
    row["last_event_seq"] = max(int(row.get("last_event_seq") or 0), seq)
    return True


def _identity(fold: Fold) -> None:
    """Identity fields: the first value wins."""
    row, event = fold.row, fold.event
    for column, key, limit in (
        ("task_name", "name", 100),
        ("queue", "queue", 50),
        ("owner", "owner", 100),
        ("request_id", "request_id", 64),
        ("args_summary", "args", 500),
        ("retry_of", "retry_of", 64),
        ("workflow_id", "workflow_id", 64),
        ("workflow_step", "workflow_step", 100),
    ):
        if row.get(column) is None and event.get(key) is not None:
            row[column] = _text(event[key], limit)
    if row.get("arguments") is None and isinstance(event.get("arguments"), dict):
        row["arguments"] = event["arguments"]
    row["_first_seen"] = _earliest(row.get("_first_seen"), fold.when)


# -- one handler per family of events: the fields each carries -------------------------------------


def _on_sent(fold: Fold) -> None:
    if fold.attempt == 0:  # a retry's publish is not the task's
        fold.row["sent_at"] = _earliest(fold.row.get("sent_at"), fold.when)
        _keep_eta(fold)


def _on_received(fold: Fold) -> None:
    fold.row["received_at"] = _earliest(fold.row.get("received_at"), fold.when)
    fold.row["worker"] = fold.row.get("worker") or _text(fold.host, 200)


def _on_started(fold: Fold) -> None:
    fold.row["started_at"] = _earliest(fold.row.get("started_at"), fold.when)
    fold.row["worker"] = _text(fold.host, 200)
    if fold.attempt == 0:
        _keep_eta(fold)


def _on_progress(fold: Fold) -> None:
    row, current, total = fold.row, fold.event.get("current"), fold.event.get("total")
    if isinstance(current, int) and current >= int(row.get("progress_current") or 0):
        row["progress_current"] = current
        row["progress_total"] = total if isinstance(total, int) else row.get("progress_total")


def _on_retried(fold: Fold) -> None:
    fold.row["retries"] = max(int(fold.row.get("retries") or 0), fold.attempt + 1)


def _on_final(fold: Fold) -> None:
    fold.row["finished_at"] = fold.row.get("finished_at") or fold.when


_HANDLERS: dict[EventType, Callable[[Fold], None]] = {
    EventType.TASK_SENT: _on_sent,
    EventType.TASK_RECEIVED: _on_received,
    EventType.TASK_STARTED: _on_started,
    EventType.TASK_PROGRESS: _on_progress,
    EventType.TASK_RETRIED: _on_retried,
    EventType.TASK_SUCCEEDED: _on_final,
    EventType.TASK_FAILED: _on_final,
    EventType.TASK_REVOKED: _on_final,
    EventType.TASK_REJECTED: _on_final,
    EventType.TASK_REQUEUED: lambda fold: None,  # only the state: REQUEUED until the next delivery
}


# -- what every event may change ----------------------------------------------------------------------


def _advance_state(fold: Fold) -> None:
    """The state, by precedence (a retry message's publish is not a state of its own)."""
    row, attempt = fold.row, fold.attempt
    state = EVENT_STATE[fold.type_]
    if fold.type_ == EventType.TASK_SENT and attempt > 0:
        return
    requeues = _requeues(fold.event.get("requeues"))
    if fold.before is not None and precedence(state, attempt, requeues) <= fold.before:
        return
    row["state"] = state
    row["requeues"] = requeues
    row["retries"] = max(int(row.get("retries") or 0), attempt + 1 if state == TaskState.RETRY else attempt)
    if state in (TaskState.SUCCESS, TaskState.FAILURE):
        runtime = fold.event.get("runtime")
        row["runtime"] = float(runtime) if isinstance(runtime, int | float) else row.get("runtime")
        row["finished_at"] = fold.when
        row["worker"] = _text(fold.host, 200)
    if state == TaskState.SUCCESS:
        row["result_summary"] = _text(fold.event.get("result"), 500)
        row["exception"] = None
        row["error"] = None
        row["traceback"] = None


# the events whose error is shown while the row is in this state (None: while it is not finished)
_ERROR_SHOWN_IN: dict[EventType, TaskState | None] = {
    EventType.TASK_FAILED: TaskState.FAILURE,
    EventType.TASK_REJECTED: TaskState.REJECTED,
    EventType.TASK_REVOKED: TaskState.REVOKED,
    EventType.TASK_RETRIED: None,
}


def _keep_error(fold: Fold) -> None:
    """The error shown is the final failure's (or rejection's, or revocation's reason), or the last
    retry's while the task is not finished."""
    if fold.type_ not in _ERROR_SHOWN_IN or not (fold.event.get("exception") or fold.event.get("error")):
        return
    shown_in, state = _ERROR_SHOWN_IN[fold.type_], fold.row.get("state")
    if state == shown_in or (shown_in is None and state not in FINAL_STATES):
        fold.row["exception"] = _text(fold.event.get("exception"), 200) or fold.row.get("exception")
        fold.row["error"] = _text(fold.event.get("error"), 5000) or fold.row.get("error")
        if fold.type_ == EventType.TASK_FAILED:
            fold.row["traceback"] = _text(fold.event.get("traceback"), 20_000)


def _count(fold: Fold) -> None:
    metric, name, host, queue = COUNTERS[fold.type_][0], fold.name, fold.host, fold.queue
    if fold.type_ == EventType.TASK_FAILED:
        fold.deltas.count(metric, (name, host, str(fold.event.get("exception") or ""), queue), host)
        fold.deltas.add(series_key(TASK_FAILURES, (name,)), NO_HOST)
    else:
        fold.deltas.count(metric, (name, host, queue), host)
    if fold.type_ == EventType.TASK_SUCCEEDED and isinstance(fold.event.get("runtime"), int | float):
        fold.deltas.observe(RUNTIME, (name, host, queue), host, float(fold.event["runtime"]))


def _keep_eta(fold: Fold) -> None:
    eta = _parse_eta(fold.event.get("eta"))
    if eta is not None:
        fold.row["_eta"] = eta


def _queue_wait(fold: Fold) -> None:
    """From when the task could run (its publish, or its ETA or countdown if later) to its first start,
    observed once both are known. Both events of the pair carry the ETA, so whichever comes second has it."""
    row = fold.row
    sent, started = row.get("sent_at"), row.get("started_at")
    if sent is None or started is None:
        return
    due = max(sent, row.get("_eta") or sent)
    row["queue_wait"] = max((started - due).total_seconds(), 0.0)
    mask = int(row.get("event_mask") or 0)
    if mask & (1 << SENT_BIT) and not mask & (1 << QUEUE_WAIT_BIT):
        row["event_mask"] = mask | (1 << QUEUE_WAIT_BIT)
        worker = str(row.get("worker") or fold.host)
        queue = str(row.get("queue") or fold.queue)
        fold.deltas.observe(QUEUE_WAIT, (fold.name, worker, queue), worker, row["queue_wait"])


def _parse_eta(value: Any) -> dt.datetime | None:
    if not isinstance(value, str):
        return None
    try:
        eta = dt.datetime.fromisoformat(value)
    except ValueError:
        return None
    return eta.replace(tzinfo=dt.UTC) if eta.tzinfo is None else eta.astimezone(dt.UTC)


def finish_row(row: dict[str, Any], now: dt.datetime) -> dict[str, Any]:
    """The row's column values ready to store: defaults for a task first seen without its sent event."""
    values = {k: v for k, v in row.items() if not k.startswith("_")}
    values["task_name"] = values.get("task_name") or "unknown"
    values["state"] = values.get("state") or TaskState.SENT
    if values.get("sent_at") is None:
        values["sent_at"] = values.get("received_at") or values.get("started_at") or row.get("_first_seen") or now
    values["updated_at"] = now
    return values
