"""Folding lifecycle events into one history row per task, idempotently, plus the metric deltas.

Pure functions over dicts (no database, no Redis): :func:`apply_event` is what the unit tests feed.

Idempotency: every counted event of a task has a bit in the row's ``event_mask`` (sent, received,
started and retried per attempt; each final state once; the queue-wait observation once). An event
whose bit is already set changes no counter; the row fields it carries are merged with rules that are
themselves idempotent (earliest timestamps, state precedence), so a redelivered event changes nothing.

State precedence: final states (SUCCESS, FAILURE, REVOKED, REJECTED) beat everything; otherwise a later
attempt beats an earlier one, and within an attempt SENT < RECEIVED < STARTED < PROGRESS < RETRY. So
events arriving late or out of order (buffers of different processes are flushed at different times)
never regress a task.
"""

from __future__ import annotations

import datetime as dt
import functools
import json
from dataclasses import dataclass, field
from typing import Any

from prometheus_client.utils import INF

from shared.settings import RUNTIME_BUCKETS, Settings

# -- metric names and labels (celery-exporter's) ---------------------------------------------------

TASK_LABELS = ("name", "hostname", "queue_name")
FAILED_LABELS = ("name", "hostname", "exception", "queue_name")
COUNTERS: dict[str, tuple[str, str]] = {
    # event type -> (metric name without _total, help)
    "task-sent": ("celery_task_sent", "Sent when a task message is published."),
    "task-received": ("celery_task_received", "Sent when the worker receives a task."),
    "task-started": ("celery_task_started", "Sent just before the worker executes the task."),
    "task-succeeded": ("celery_task_succeeded", "Sent if the task executed successfully."),
    "task-failed": ("celery_task_failed", "Sent if the execution of the task failed."),
    "task-retried": ("celery_task_retried", "Sent if the task failed, but will be retried in the future."),
    "task-revoked": ("celery_task_revoked", "Sent if the task has been revoked."),
    "task-rejected": (
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
_PER_ATTEMPT = {"task-sent": 0, "task-received": 1, "task-started": 2, "task-retried": 3}
_FINAL_BITS = {"task-succeeded": 56, "task-failed": 57, "task-revoked": 58, "task-rejected": 59}
QUEUE_WAIT_BIT = 60
SENT_BIT = 0  # the original publish (attempt 0)


def event_bit(type_: str, attempt: int) -> int | None:
    if type_ in _PER_ATTEMPT:
        return 4 * min(max(attempt, 0), MAX_ATTEMPT) + _PER_ATTEMPT[type_]
    return _FINAL_BITS.get(type_)


# -- states ------------------------------------------------------------------------------------

EVENT_STATE = {
    "task-sent": "SENT",
    "task-received": "RECEIVED",
    "task-started": "STARTED",
    "task-progress": "PROGRESS",
    "task-retried": "RETRY",
    "task-succeeded": "SUCCESS",
    "task-failed": "FAILURE",
    "task-revoked": "REVOKED",
    "task-rejected": "REJECTED",
}
RANK = {
    "SENT": 1,
    "RECEIVED": 2,
    "STARTED": 3,
    "PROGRESS": 4,
    "RETRY": 5,
    "REVOKED": 10,
    "REJECTED": 10,
    "SUCCESS": 11,
    "FAILURE": 11,
}
FINAL = frozenset({"SUCCESS", "FAILURE", "REVOKED", "REJECTED"})
TASK_EVENTS = frozenset(EVENT_STATE)


def precedence(state: str, attempt: int) -> tuple[int, int, int]:
    return (1 if state in FINAL else 0, attempt, RANK.get(state, 0))


def _state_attempt(row: dict[str, Any]) -> int:
    retries = int(row.get("retries") or 0)
    return retries - 1 if row.get("state") == "RETRY" else retries


# -- metric deltas -------------------------------------------------------------------------------


@dataclass
class Deltas:
    """Counter and histogram increments of one batch, applied to memory only after the commit."""

    values: dict[str, float] = field(default_factory=dict)
    hostnames: dict[str, str] = field(default_factory=dict)
    buckets: dict[str, tuple[float, ...]] = field(default_factory=dict)  # by histogram; BUCKETS when absent

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
        "updated_at": None,
        "_first_seen": None,
    }


def apply_event(row: dict[str, Any], event: dict[str, Any], deltas: Deltas, seq: int = 0) -> bool:
    """Fold ``event`` into ``row`` (in place), adding new counts to ``deltas``; False if the event is
    not a task event or is malformed. ``seq`` is the stream entry's sequence (kept as the highest seen)."""
    type_ = event.get("type")
    if type_ not in TASK_EVENTS or not event.get("id") or "ts" not in event:
        return False
    when = _ts(event)
    attempt = int(event.get("retries") or 0)
    state = EVENT_STATE[str(type_)]
    host = str(event.get("host") or "unknown")
    current_state = row.get("state")
    current_key = precedence(current_state, _state_attempt(row)) if current_state else None

    # identity fields: the first value wins
    for column, key, limit in (
        ("task_name", "name", 100),
        ("queue", "queue", 50),
        ("owner", "owner", 100),
        ("request_id", "request_id", 64),
        ("args_summary", "args", 500),
        ("retry_of", "retry_of", 64),
    ):
        if row.get(column) is None and event.get(key) is not None:
            row[column] = _text(event[key], limit)
    if row.get("arguments") is None and isinstance(event.get("arguments"), dict):
        row["arguments"] = event["arguments"]
    row["_first_seen"] = _earliest(row.get("_first_seen"), when)

    # counters, once per (event kind, attempt)
    mask = int(row.get("event_mask") or 0)
    bit = event_bit(str(type_), attempt)
    counted = bit is not None and not mask & (1 << bit)
    if bit is not None:
        mask |= 1 << bit
    name = str(row.get("task_name") or event.get("name") or "unknown")
    queue = str(event.get("queue") or row.get("queue") or "")

    if type_ == "task-sent":
        if attempt == 0:
            row["sent_at"] = _earliest(row.get("sent_at"), when)
    elif type_ == "task-received":
        row["received_at"] = _earliest(row.get("received_at"), when)
        row["worker"] = row.get("worker") or _text(host, 200)
    elif type_ == "task-started":
        row["started_at"] = _earliest(row.get("started_at"), when)
        row["worker"] = _text(host, 200)
    elif type_ == "task-progress":
        current, total = event.get("current"), event.get("total")
        if isinstance(current, int) and current >= int(row.get("progress_current") or 0):
            row["progress_current"] = current
            row["progress_total"] = total if isinstance(total, int) else row.get("progress_total")
    elif type_ == "task-retried":
        row["retries"] = max(int(row.get("retries") or 0), attempt + 1)
    elif type_ in ("task-succeeded", "task-failed", "task-revoked", "task-rejected"):
        row["finished_at"] = row.get("finished_at") or when

    # the state, by precedence (a retry message's publish is not a state of its own)
    is_republish = type_ == "task-sent" and attempt > 0
    if not is_republish and (current_key is None or precedence(state, attempt) > current_key):
        row["state"] = state
        if state == "RETRY":
            row["retries"] = max(int(row.get("retries") or 0), attempt + 1)
        else:
            row["retries"] = max(int(row.get("retries") or 0), attempt)
        if state in ("SUCCESS", "FAILURE"):
            runtime = event.get("runtime")
            row["runtime"] = float(runtime) if isinstance(runtime, int | float) else row.get("runtime")
            row["finished_at"] = when
            row["worker"] = _text(host, 200)
        if state == "SUCCESS":
            row["result_summary"] = _text(event.get("result"), 500)
            row["exception"] = None
            row["error"] = None
            row["traceback"] = None

    # the error shown is the final failure's, or the last retry's while the task is not finished
    error_counts = (
        (type_ == "task-failed" and row.get("state") == "FAILURE")
        or (type_ == "task-rejected" and row.get("state") == "REJECTED")
        or (type_ == "task-retried" and row.get("state") not in FINAL)
    )
    if error_counts and (event.get("exception") or event.get("error")):
        row["exception"] = _text(event.get("exception"), 200) or row.get("exception")
        row["error"] = _text(event.get("error"), 5000) or row.get("error")
        if type_ == "task-failed":
            row["traceback"] = _text(event.get("traceback"), 20_000)

    if counted:
        metric = COUNTERS[str(type_)][0]
        if type_ == "task-failed":
            deltas.count(metric, (name, host, str(event.get("exception") or ""), queue), host)
            deltas.add(series_key(TASK_FAILURES, (name,)), NO_HOST)
        else:
            deltas.count(metric, (name, host, queue), host)
        if type_ == "task-succeeded" and isinstance(event.get("runtime"), int | float):
            deltas.observe(RUNTIME, (name, host, queue), host, float(event["runtime"]))

    # queue wait: from the original publish to the first start, observed once both are known
    sent, started = row.get("sent_at"), row.get("started_at")
    if sent is not None and started is not None:
        row["queue_wait"] = max((started - sent).total_seconds(), 0.0)
        if mask & (1 << SENT_BIT) and not mask & (1 << QUEUE_WAIT_BIT):
            mask |= 1 << QUEUE_WAIT_BIT
            worker = str(row.get("worker") or host)
            deltas.observe(QUEUE_WAIT, (name, worker, str(row.get("queue") or queue)), worker, row["queue_wait"])

    row["event_mask"] = mask
    row["last_event_seq"] = max(int(row.get("last_event_seq") or 0), seq)
    return True


def finish_row(row: dict[str, Any], now: dt.datetime) -> dict[str, Any]:
    """The row's column values ready to store: defaults for a task first seen without its sent event."""
    values = {k: v for k, v in row.items() if not k.startswith("_")}
    values["task_name"] = values.get("task_name") or "unknown"
    values["state"] = values.get("state") or "SENT"
    if values.get("sent_at") is None:
        values["sent_at"] = values.get("received_at") or values.get("started_at") or row.get("_first_seen") or now
    values["updated_at"] = now
    return values
