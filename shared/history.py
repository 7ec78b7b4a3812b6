"""Reading the task history, worker liveness and queue lengths: what the gateway and the CLI show.

The monitor writes ``task_history`` (one row per task, see :class:`shared.models.TaskRecord`) from the
lifecycle event stream; workers write their liveness into Redis (``shared.cache.WORKERS_KEY``); queue
lengths come straight from the broker. Everything here only reads.

Timestamps in the returned dicts are ISO 8601 strings in UTC; durations are seconds (floats).
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import datetime as dt
import functools
import json
import math
import time
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import redis
from sqlalchemy import ColumnElement, and_, func, or_, select
from sqlalchemy.orm import Session

from shared.cache import WORKERS_KEY, redis_client
from shared.catalog import QUEUES
from shared.models import TaskRecord
from shared.settings import Settings, get_settings

# Celery's state names, plus PROGRESS (a running task that reported progress) and SENT (published,
# not yet received by a worker).
STATES: tuple[str, ...] = (
    "SENT",
    "RECEIVED",
    "STARTED",
    "PROGRESS",
    "RETRY",
    "SUCCESS",
    "FAILURE",
    "REVOKED",
    "REJECTED",
)
FINAL_STATES: frozenset[str] = frozenset({"SUCCESS", "FAILURE", "REVOKED", "REJECTED"})
MAX_PAGE = 500

# kombu's Redis transport keeps a message of priority p > 0 in the list ``<queue>\x06\x16<p>``;
# priorities are rounded to these steps (kombu.transport.redis.PRIORITY_STEPS, Channel.sep).
PRIORITY_STEPS: tuple[int, ...] = (0, 3, 6, 9)
PRIORITY_SEP = "\x06\x16"


@dataclass(frozen=True)
class HistoryPage:
    items: list[dict[str, Any]]
    next_cursor: str | None = None


@dataclass
class _Acc:
    counts: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    runtimes: list[float] = field(default_factory=list)
    waits: list[float] = field(default_factory=list)


# -- task history --------------------------------------------------------------------------------


def record_dict(row: TaskRecord) -> dict[str, Any]:
    """One history row as a JSON-friendly dict."""
    return {
        "task_id": row.task_id,
        "task_name": row.task_name,
        "queue": row.queue,
        "state": row.state,
        "args_summary": row.args_summary,
        "arguments": row.arguments,
        "retry_of": row.retry_of,
        "owner": row.owner,
        "request_id": row.request_id,
        "worker": row.worker,
        "retries": row.retries,
        "exception": row.exception,
        "error": row.error,
        "traceback": row.traceback,
        "result_summary": row.result_summary,
        "sent_at": _iso(row.sent_at),
        "received_at": _iso(row.received_at),
        "started_at": _iso(row.started_at),
        "finished_at": _iso(row.finished_at),
        "runtime": row.runtime,
        "queue_wait": row.queue_wait,
    }


def normalize_state(status: str) -> str:
    """``success`` -> ``SUCCESS``; ValueError for a state mallops does not know."""
    state = status.strip().upper()
    if state not in STATES:
        raise ValueError(f"unknown status {status!r}; choose one of {', '.join(s.lower() for s in STATES)}")
    return state


def encode_cursor(sent_at: dt.datetime | None, task_id: str) -> str:
    raw = json.dumps([sent_at.isoformat() if sent_at else None, task_id], separators=(",", ":"))
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[dt.datetime | None, str]:
    """The (sent_at, task_id) a cursor points after; ValueError for a cursor this module did not make."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        when, task_id = json.loads(raw)
        if not isinstance(task_id, str) or not (when is None or isinstance(when, str)):
            raise TypeError("bad cursor fields")
        return (_aware(dt.datetime.fromisoformat(when)) if when else None), task_id
    except (binascii.Error, UnicodeDecodeError, ValueError, TypeError) as exc:
        raise ValueError("invalid cursor") from exc


def _filters(
    *,
    task_name: str | None = None,
    status: str | None = None,
    owner: str | None = None,
    or_queue: str | None = None,
    since: dt.datetime | None = None,
    until: dt.datetime | None = None,
) -> list[ColumnElement[bool]]:
    clauses: list[ColumnElement[bool]] = []
    if task_name:
        clauses.append(TaskRecord.task_name.in_(_name_variants(task_name)))
    if status:
        clauses.append(TaskRecord.state.in_([normalize_state(part) for part in status.split(",") if part.strip()]))
    if owner and or_queue:  # the owner's tasks and every task of that queue
        clauses.append(or_(TaskRecord.owner == owner, TaskRecord.queue == or_queue))
    elif owner:
        clauses.append(TaskRecord.owner == owner)
    if since is not None:
        clauses.append(TaskRecord.sent_at >= _aware(since))
    if until is not None:
        clauses.append(TaskRecord.sent_at < _aware(until))
    return clauses


def query_history(
    session: Session,
    *,
    task_name: str | None = None,
    status: str | None = None,
    owner: str | None = None,
    or_queue: str | None = None,
    since: dt.datetime | None = None,
    until: dt.datetime | None = None,
    cursor: str | None = None,
    limit: int = 50,
    where: Sequence[ColumnElement[bool]] = (),
) -> HistoryPage:
    """Tasks newest first (by ``sent_at``, then ``task_id``), filtered; ``next_cursor`` continues.

    ``since`` is inclusive and ``until`` exclusive, on the time the task was sent. ``task_name`` is a
    catalog short name or the Celery name; ``status`` one state or several (``FAILURE,REVOKED``); ``where``
    more clauses (the gateway's argument filters). Raises ValueError for a bad status, cursor or limit.
    """
    if not 1 <= limit <= MAX_PAGE:
        raise ValueError(f"limit must be between 1 and {MAX_PAGE}")
    clauses = [
        *_filters(task_name=task_name, status=status, owner=owner, or_queue=or_queue, since=since, until=until),
        *where,
    ]
    if cursor:
        after_sent, after_id = decode_cursor(cursor)
        if after_sent is None:
            # rows without sent_at sort last (NULLS LAST); continue among them
            clauses.append(and_(TaskRecord.sent_at.is_(None), TaskRecord.task_id < after_id))
        else:
            clauses.append(
                or_(
                    TaskRecord.sent_at < after_sent,
                    and_(TaskRecord.sent_at == after_sent, TaskRecord.task_id < after_id),
                    TaskRecord.sent_at.is_(None),
                )
            )
    stmt = (
        select(TaskRecord)
        .where(*clauses)
        .order_by(TaskRecord.sent_at.desc().nulls_last(), TaskRecord.task_id.desc())
        .limit(limit + 1)
    )
    rows = list(session.scalars(stmt))
    more = len(rows) > limit
    rows = rows[:limit]
    next_cursor = encode_cursor(rows[-1].sent_at, rows[-1].task_id) if more and rows else None
    return HistoryPage([record_dict(row) for row in rows], next_cursor)


def get_task_record(session: Session, task_id: str) -> dict[str, Any] | None:
    row = session.get(TaskRecord, task_id)
    return record_dict(row) if row is not None else None


# -- statistics ----------------------------------------------------------------------------------


def percentile(sorted_values: Sequence[float], q: float) -> float | None:
    """The q-quantile (0..1) with linear interpolation between closest ranks, as PostgreSQL's
    ``percentile_cont``; None for no values."""
    if not sorted_values:
        return None
    pos = (len(sorted_values) - 1) * q
    lower = math.floor(pos)
    upper = min(lower + 1, len(sorted_values) - 1)
    fraction = pos - lower
    return float(sorted_values[lower] + (sorted_values[upper] - sorted_values[lower]) * fraction)


def task_stats(
    session: Session,
    *,
    since: dt.datetime,
    until: dt.datetime,
    task_name: str | None = None,
    owner: str | None = None,
    or_queue: str | None = None,
) -> dict[str, Any]:
    """Statistics of the tasks sent in ``[since, until)``, overall and per task name.

    Each block holds ``total``, ``counts`` (by state, every state present with 0 when none),
    ``succeeded``, ``failed``, ``success_rate`` (succeeded / (succeeded + failed), None when neither),
    ``throughput_per_second`` and ``throughput_per_minute`` (tasks that finished, over the window),
    ``runtime`` {p50, p95, p99} and ``queue_wait`` {p50, p95} in seconds (None without data).
    """
    since, until = _aware(since), _aware(until)
    if until <= since:
        raise ValueError("until must be after since")
    clauses = _filters(task_name=task_name, owner=owner, or_queue=or_queue, since=since, until=until)
    window = (until - since).total_seconds()

    per_name: dict[str, _Acc] = defaultdict(_Acc)
    overall = _Acc()
    counts_stmt = (
        select(TaskRecord.task_name, TaskRecord.state, func.count())
        .where(*clauses)
        .group_by(TaskRecord.task_name, TaskRecord.state)
    )
    for name, state, count in session.execute(counts_stmt):
        per_name[name].counts[state] += count
        overall.counts[state] += count

    # Percentiles in Python over the window's values, streamed (portable between SQLite and
    # PostgreSQL and identical in result to percentile_cont).
    values_stmt = (
        select(TaskRecord.task_name, TaskRecord.runtime, TaskRecord.queue_wait)
        .where(*clauses, or_(TaskRecord.runtime.is_not(None), TaskRecord.queue_wait.is_not(None)))
        .execution_options(yield_per=5000)
    )
    for name, runtime, wait in session.execute(values_stmt):
        acc = per_name[name]
        if runtime is not None:
            acc.runtimes.append(runtime)
            overall.runtimes.append(runtime)
        if wait is not None:
            acc.waits.append(wait)
            overall.waits.append(wait)

    return {
        "since": _iso(since),
        "until": _iso(until),
        "window_seconds": window,
        "overall": _summary(overall, window),
        "tasks": {name: _summary(acc, window) for name, acc in sorted(per_name.items())},
    }


def _summary(acc: _Acc, window: float) -> dict[str, Any]:
    counts = {state: acc.counts.get(state, 0) for state in STATES}
    succeeded, failed = counts["SUCCESS"], counts["FAILURE"]
    finished = sum(counts[state] for state in FINAL_STATES)
    runtimes, waits = sorted(acc.runtimes), sorted(acc.waits)
    return {
        "total": sum(counts.values()),
        "counts": counts,
        "succeeded": succeeded,
        "failed": failed,
        "success_rate": succeeded / (succeeded + failed) if succeeded + failed else None,
        "throughput_per_second": finished / window,
        "throughput_per_minute": finished * 60.0 / window,
        "runtime": {
            "p50": percentile(runtimes, 0.5),
            "p95": percentile(runtimes, 0.95),
            "p99": percentile(runtimes, 0.99),
        },
        "queue_wait": {"p50": percentile(waits, 0.5), "p95": percentile(waits, 0.95)},
    }


# -- workers and queues ----------------------------------------------------------------------------


def list_workers(settings: Settings | None = None, *, now: float | None = None) -> list[dict[str, Any]]:
    """Every worker seen recently, from the heartbeats workers write into Redis.

    A worker is ``offline`` when it said so on shutdown or when it has been silent for more than
    ``MALLOPS_WORKER_OFFLINE_AFTER`` seconds; workers silent for longer than
    ``MALLOPS_WORKER_PURGE_AFTER`` are left out. Sorted by hostname.
    """
    settings = settings or get_settings()
    now = time.time() if now is None else now
    raw = redis_client(settings).hgetall(WORKERS_KEY)
    workers = []
    for hostname, value in raw.items():
        try:
            info = json.loads(value)
            last = float(info["last_heartbeat"])
        except (ValueError, KeyError, TypeError):
            continue
        silence = now - last
        if silence > settings.worker_purge_after:
            continue
        online = info.get("status") != "offline" and silence <= settings.worker_offline_after
        workers.append(
            {
                "hostname": hostname,
                "status": "online" if online else "offline",
                "stopped": info.get("status") == "offline",  # it said so on shutdown (else it was lost)
                "service": info.get("service"),
                "pid": info.get("pid"),
                "queues": list(info.get("queues") or []),
                "concurrency": info.get("concurrency"),
                "active": int(info.get("active") or 0) if online else 0,
                "processed": int(info.get("processed") or 0),
                "last_heartbeat": _iso(dt.datetime.fromtimestamp(last, dt.UTC)),
                "seconds_since_heartbeat": round(max(silence, 0.0), 3),
            }
        )
    return sorted(workers, key=lambda w: w["hostname"])


@functools.lru_cache(maxsize=4)
def _broker_client(url: str) -> redis.Redis[str]:
    return redis.Redis.from_url(url, decode_responses=True, health_check_interval=30)


def priority_keys(queue: str) -> list[str]:
    """The Redis lists that hold ``queue``'s messages: the queue itself and its priority sub-queues."""
    return [queue if pri == 0 else f"{queue}{PRIORITY_SEP}{pri}" for pri in PRIORITY_STEPS]


def queue_lengths(
    settings: Settings | None = None, workers: Iterable[dict[str, Any]] | None = None
) -> dict[str, dict[str, int]]:
    """``{queue: {"pending": messages waiting in the broker, "consumers": online workers}}`` for every
    mallops queue and any other queue an online worker consumes. ``pending`` counts the Redis priority
    sub-queues too; ``workers`` (from :func:`list_workers`) saves reading them again."""
    settings = settings or get_settings()
    worker_list = list(workers) if workers is not None else list_workers(settings)
    consumers: dict[str, int] = defaultdict(int)
    for worker in worker_list:
        if worker["status"] == "online":
            for queue in worker["queues"]:
                consumers[queue] += 1
    names = list(QUEUES) + sorted(set(consumers) - set(QUEUES))
    url = settings.celery_broker_url
    pending = _redis_pending(url, names) if url.startswith(("redis://", "rediss://")) else _amqp_pending(url, names)
    return {name: {"pending": pending[name], "consumers": consumers.get(name, 0)} for name in names}


def _redis_pending(url: str, names: list[str]) -> dict[str, int]:
    """Messages waiting in each queue's Redis lists (the queue and its priority sub-queues), one round trip."""
    pipe = _broker_client(url).pipeline(transaction=False)
    for name in names:
        for key in priority_keys(name):
            pipe.llen(key)
    sizes = pipe.execute()
    per = len(PRIORITY_STEPS)
    return {name: int(sum(sizes[i * per : (i + 1) * per])) for i, name in enumerate(names)}


def _amqp_pending(url: str, names: list[str]) -> dict[str, int]:
    """Messages ready in each queue of an AMQP broker (RabbitMQ), by a passive declare; a queue that does
    not exist yet has none."""
    from kombu import Connection  # type: ignore[attr-defined]

    pending: dict[str, int] = {}
    with Connection(url, connect_timeout=5) as connection:  # type: ignore[no-untyped-call]
        for name in names:
            channel = connection.channel()  # a channel per queue: a 404 closes the channel it happened on
            try:
                declared = channel.queue_declare(queue=name, passive=True)
                pending[name] = int(declared.message_count)
            except connection.channel_errors:
                pending[name] = 0
            finally:
                with contextlib.suppress(*connection.channel_errors, *connection.connection_errors):
                    channel.close()
    return pending


# -- helpers ---------------------------------------------------------------------------------------


def _aware(value: dt.datetime) -> dt.datetime:
    return value.replace(tzinfo=dt.UTC) if value.tzinfo is None else value.astimezone(dt.UTC)


def _iso(value: dt.datetime | None) -> str | None:
    return _aware(value).isoformat() if value is not None else None


def _name_variants(task_name: str) -> list[str]:
    """A short catalog name also matches its Celery name, and the other way round."""
    from shared.catalog import get_spec

    spec = get_spec(task_name)
    return sorted({task_name, spec.name, spec.celery_name}) if spec else [task_name]
