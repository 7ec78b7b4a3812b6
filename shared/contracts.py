"""The contracts between mallops processes, in one place: every producer and consumer imports them from here.

- :class:`TaskState`: the states a task can be in, as the API, the history and the CLI show them, with
  :data:`FINAL_STATES`;
- :class:`EventType` and the payloads of the lifecycle events in the Redis stream :data:`EVENT_STREAM`
  (:class:`TaskEvent`, :class:`WorkerEvent`, versioned by :data:`EVENT_SCHEMA_VERSION`);
- :class:`WorkerRecord`: a worker's liveness entry in :data:`WORKERS_KEY`, with its JSON round trip;
- workflow states (:data:`WORKFLOW_STATES`, :data:`STEP_STATES`: task states);
- message header names (:data:`OWNER_HEADER`, :data:`REQUEST_ID_HEADER`, :data:`RETRY_OF_HEADER`,
  :data:`WORKFLOW_ID_HEADER`, :data:`WORKFLOW_STEP_HEADER`);
- Redis key names and layouts, including kombu's priority lists and Celery's result keys, and the
  monitor's consumer group.

This module imports nothing from mallops and nothing outside the standard library, so that any process (and
the ``mallops`` client) can use it cheaply. A test (``tests/test_contracts.py``) fails when a state or an
event type is written out as a string anywhere else in production code.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import Any, Literal, TypedDict

# -- task states ---------------------------------------------------------------------------------


class TaskState(StrEnum):
    """Celery's state names, plus mallops' own: SENT (published, not yet received by a worker),
    PROGRESS (running, reported progress), SCHEDULED and REQUEUED (for the schedule and failure work)."""

    PENDING = "PENDING"  # known to the gateway; nothing heard of it yet (Celery's "unknown")
    SCHEDULED = "SCHEDULED"  # a one-off run further ahead than the broker holds: waits in the database
    SENT = "SENT"
    RECEIVED = "RECEIVED"
    STARTED = "STARTED"
    PROGRESS = "PROGRESS"
    RETRY = "RETRY"
    REQUEUED = "REQUEUED"
    SUCCESS = "SUCCESS"
    FAILURE = "FAILURE"
    REVOKED = "REVOKED"
    REJECTED = "REJECTED"


FINAL_STATES: frozenset[TaskState] = frozenset(
    {TaskState.SUCCESS, TaskState.FAILURE, TaskState.REVOKED, TaskState.REJECTED}
)
# the final states in which the task's work was not done
FAILED_STATES: frozenset[TaskState] = FINAL_STATES - {TaskState.SUCCESS}
# what a task_history row can hold (the monitor writes a row from the first event it sees)
HISTORY_STATES: tuple[TaskState, ...] = (
    TaskState.SENT,
    TaskState.RECEIVED,
    TaskState.STARTED,
    TaskState.PROGRESS,
    TaskState.RETRY,
    TaskState.REQUEUED,
    TaskState.SUCCESS,
    TaskState.FAILURE,
    TaskState.REVOKED,
    TaskState.REJECTED,
)


class DeferredState(StrEnum):
    """A one-off run further ahead than the broker holds (``shared/deferred.py``): SCHEDULED while it waits
    in the database, PUBLISHED once beat has sent it (from then on it is an ordinary task), or REVOKED."""

    SCHEDULED = TaskState.SCHEDULED.value
    PUBLISHED = "PUBLISHED"
    REVOKED = TaskState.REVOKED.value


# -- workflows ---------------------------------------------------------------------------------------

# A workflow's status and each of its steps' states are task states (shared/workflows.py):
# PENDING (nothing of it has started; a step: not yet published), SENT (a step: published), STARTED,
# SUCCESS, FAILURE (a step failed: what depends on it never runs), REVOKED (steps not yet run never run)
WORKFLOW_STATES: tuple[TaskState, ...] = (
    TaskState.PENDING,
    TaskState.STARTED,
    TaskState.SUCCESS,
    TaskState.FAILURE,
    TaskState.REVOKED,
)
STEP_STATES: tuple[TaskState, ...] = (
    TaskState.PENDING,
    TaskState.SENT,
    TaskState.STARTED,
    TaskState.SUCCESS,
    TaskState.FAILURE,
    TaskState.REVOKED,
)
WORKFLOW_FINAL_STATES: frozenset[TaskState] = frozenset({TaskState.SUCCESS, TaskState.FAILURE, TaskState.REVOKED})


def parse_state(value: object) -> TaskState | None:
    """``value`` as a :class:`TaskState` (case-insensitive), or None for anything else."""
    if not isinstance(value, str):
        return None
    try:
        return TaskState(value.strip().upper())
    except ValueError:
        return None


def state_list(states: tuple[TaskState, ...] | None = None) -> str:
    """``PENDING, SENT, ...``: the states for a description or an error message."""
    return ", ".join(states or tuple(TaskState))


# -- lifecycle events ------------------------------------------------------------------------------

EVENT_SCHEMA_VERSION = 1  # the ``v`` of every event; raise it when a field changes meaning
EVENT_FIELD = "e"  # the stream entry's field that holds the event's JSON


class EventType(StrEnum):
    TASK_SENT = "task-sent"  # publisher: a task message went to the broker
    TASK_RECEIVED = "task-received"  # worker main process
    TASK_STARTED = "task-started"
    TASK_PROGRESS = "task-progress"
    TASK_RETRIED = "task-retried"
    TASK_SUCCEEDED = "task-succeeded"
    TASK_FAILED = "task-failed"
    TASK_REVOKED = "task-revoked"
    TASK_REJECTED = "task-rejected"
    TASK_REQUEUED = "task-requeued"  # a worker's requeuer put back the message of a gone worker
    WORKER_ONLINE = "worker-online"
    WORKER_HEARTBEAT = "worker-heartbeat"
    WORKER_OFFLINE = "worker-offline"


# the state a task event puts its task in
EVENT_STATE: dict[EventType, TaskState] = {
    EventType.TASK_SENT: TaskState.SENT,
    EventType.TASK_RECEIVED: TaskState.RECEIVED,
    EventType.TASK_STARTED: TaskState.STARTED,
    EventType.TASK_PROGRESS: TaskState.PROGRESS,
    EventType.TASK_RETRIED: TaskState.RETRY,
    EventType.TASK_SUCCEEDED: TaskState.SUCCESS,
    EventType.TASK_FAILED: TaskState.FAILURE,
    EventType.TASK_REVOKED: TaskState.REVOKED,
    EventType.TASK_REJECTED: TaskState.REJECTED,
    EventType.TASK_REQUEUED: TaskState.REQUEUED,
}
TASK_EVENTS: frozenset[EventType] = frozenset(EVENT_STATE)
WORKER_EVENTS: frozenset[EventType] = frozenset(
    {EventType.WORKER_ONLINE, EventType.WORKER_HEARTBEAT, EventType.WORKER_OFFLINE}
)


def parse_event_type(value: object) -> EventType | None:
    if not isinstance(value, str):
        return None
    try:
        return EventType(value)
    except ValueError:
        return None


class EventEnvelope(TypedDict):
    """Every event: its type, when (epoch seconds), the emitting node and process, the schema version."""

    type: str
    ts: float
    host: str
    pid: int
    v: int


class TaskEventFields(TypedDict):
    """What every task event says about its task."""

    id: str
    name: str | None
    queue: str | None
    retries: int
    owner: str | None


class TaskEvent(EventEnvelope, TaskEventFields, total=False):
    """A task event as written; the optional fields by type:

    - ``task-sent``: args, arguments, eta, retry_of; ``task-received``: args, arguments; ``task-started``:
      eta (ISO 8601, when the task had an ETA or a countdown), and args, arguments from a prefork pool's
      child (its parent's task-received may reach the stream after the child's outcome)
    - ``task-progress``: current, total
    - ``task-succeeded``: runtime, result
    - ``task-failed``: runtime, exception, error, traceback (its end, capped); ``task-retried``,
      ``task-rejected``: exception, error
    - ``task-revoked``: terminated, expired, exception (``Terminated``, ``Expired`` or ``Revoked``), error
    - ``task-requeued``: worker (the gone worker that held it), requeues
    - any: workflow_id and workflow_step, when the task is a step of a workflow;
    - any: request_id, when the task was submitted through the gateway's HTTP API; events of a worker:
      requeues (how often a requeuer put the message back; 0 if never); ``task-received``: delivery_tag
    """

    args: str | None
    arguments: dict[str, Any] | None  # {"args": [...], "kwargs": {...}} as JSON values, capped ("truncated")
    eta: str
    retry_of: str  # the task a retry repeats (RETRY_OF_HEADER)
    current: Any
    total: Any
    runtime: float | None
    result: str
    exception: str | None
    error: str | None
    traceback: str | None
    terminated: bool
    expired: bool
    request_id: str
    requeues: int
    delivery_tag: str | None
    worker: str
    workflow_id: str
    workflow_step: str


class WorkerEventFields(TypedDict):
    host: str
    service: str | None
    queues: list[str]
    concurrency: int | None
    active: int
    processed: int


class WorkerEvent(EventEnvelope, WorkerEventFields):
    """``worker-online``, ``worker-heartbeat`` and ``worker-offline``."""


# -- workers ---------------------------------------------------------------------------------------

WorkerStatus = Literal["online", "offline"]


@dataclass(frozen=True)
class WorkerRecord:
    """A worker's liveness entry (``WORKERS_KEY``: hostname -> this JSON), refreshed by each heartbeat."""

    hostname: str
    last_heartbeat: float  # epoch seconds
    service: str | None = None
    pid: int | None = None
    queues: list[str] = field(default_factory=list)
    concurrency: int | None = None
    active: int = 0
    processed: int = 0
    status: WorkerStatus = "online"

    @classmethod
    def of(cls, fields: WorkerEventFields, pid: int, status: WorkerStatus, now: float | None = None) -> WorkerRecord:
        return cls(
            hostname=fields["host"],
            last_heartbeat=time.time() if now is None else now,
            service=fields["service"],
            pid=pid,
            queues=list(fields["queues"]),
            concurrency=fields["concurrency"],
            active=fields["active"],
            processed=fields["processed"],
            status=status,
        )

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))

    @classmethod
    def from_json(cls, hostname: str, raw: str | bytes | None) -> WorkerRecord | None:
        """The record stored under ``hostname``, or None when it is not one (never raises)."""
        try:
            data = json.loads(raw or "")
            last = float(data["last_heartbeat"])
            return cls(
                hostname=hostname,
                last_heartbeat=last,
                service=data.get("service"),
                pid=data.get("pid"),
                queues=[str(q) for q in data.get("queues") or []],
                concurrency=data.get("concurrency"),
                active=int(data.get("active") or 0),
                processed=int(data.get("processed") or 0),
                status="offline" if data.get("status") == "offline" else "online",
            )
        except (ValueError, KeyError, TypeError, AttributeError):
            return None


# -- message headers ---------------------------------------------------------------------------------

# who a task runs for: set by the gateway (the token's name), by beat ("beat") and by tasks that enqueue
# others (their own owner); carried into every lifecycle event of the task
OWNER_HEADER = "mallops_owner"
# the id of the HTTP request that submitted a task (``X-Request-ID``, taken or made by the gateway): carried
# into the task's log lines, its lifecycle events (field ``request_id``) and its history row
REQUEST_ID_HEADER = "mallops_request_id"
# how many times a requeuer put the message back (shared/celery_extensions/redelivery.py)
REQUEUES_HEADER = "mallops_requeues"
# a retry's message names the task it repeats (``POST /api/v1/tasks/retry``): the event field and history
# column ``retry_of``
RETRY_OF_HEADER = "mallops_retry_of"
# a step of a workflow (``POST /api/v1/workflows``): the workflow's id and the step's name. The worker that
# runs the step records its outcome on the workflow and publishes the steps that waited for it; the events
# and the history row of the task carry both (``workflow_id``, ``workflow_step``)
WORKFLOW_ID_HEADER = "mallops_workflow_id"
WORKFLOW_STEP_HEADER = "mallops_workflow_step"


# -- Redis keys ----------------------------------------------------------------------------------------

KEY_PREFIX = "mallops:"
CACHE_PREFIX = f"{KEY_PREFIX}cache:"
# lifecycle events: written by every process (shared.celery_extensions.events), read by the monitor's consumer group
EVENT_STREAM = f"{KEY_PREFIX}events"
MONITOR_GROUP = "mallops-monitor"
# worker liveness: hostname -> WorkerRecord JSON
WORKERS_KEY = f"{KEY_PREFIX}workers"
# the holder of a delivered message, per task id and attempt (``<prefix><task id>:<retries>``): JSON
# {host, pid, ts} written by the worker at receipt, removed after the task ran (redelivery)
HOLDER_PREFIX = f"{KEY_PREFIX}holder:"
# task_history.event_mask: the bit the monitor sets once it has folded the publish's task-sent event (the
# arguments and retry_of a task's view reads from the history once the gateway's metadata is dropped)
HISTORY_SENT_BIT = 0
# worker process liveness: hash "<hostname>#<main pid>" -> JSON {last, status}, written by each heartbeat
PROCESSES_KEY = f"{KEY_PREFIX}worker_processes"
# a consumer's last pop on the Redis broker (shared.celery_extensions.reliable_pop): ``<prefix><uuid>`` ->
# "<pop number> <delivery tag>", written with the pop; read when the pop's reply was lost, expires after the
# visibility timeout
POP_MARKER_PREFIX = f"{KEY_PREFIX}pop:"
# the holder of an unacknowledged message on the Redis broker, per delivery tag (``<prefix><delivery tag>``):
# the JSON of a holder receipt ({host, pid, ts}, ts the delivery's ``unacked_index`` score), written by the
# reliable pop in the same command as kombu's ``unacked`` entry and removed with it (redelivery)
DELIVERY_HOLDER_PREFIX = f"{KEY_PREFIX}held:"
# the gateway RPUSHes one JSON object per request; process_access_logs drains it. Fields:
# request_id, ts (ISO 8601 UTC), method, path, status, duration_ms, principal, client_ip
ACCESS_LOG_BUFFER = f"{KEY_PREFIX}access_log"
# poison messages: runs of a redelivered message, ``<prefix><task_id>:<retries>`` (an integer with a TTL)
DELIVERIES_PREFIX = f"{KEY_PREFIX}deliveries:"
# dropped messages kept whole (shared.dead_letter_store), changed together: a sorted set id -> epoch
# seconds recorded, a hash id -> summary JSON, a hash id -> the message JSON (headers, body, properties)
DEAD_LETTER_INDEX_KEY = f"{KEY_PREFIX}dead_letters:index"
DEAD_LETTER_ENTRIES_KEY = f"{KEY_PREFIX}dead_letters:entries"
DEAD_LETTER_MESSAGES_KEY = f"{KEY_PREFIX}dead_letters:messages"
# durable revocations: sorted set task id -> epoch seconds after which it is forgotten, and its version
REVOKED_KEY = f"{KEY_PREFIX}revoked"
REVOKED_VERSION_KEY = f"{KEY_PREFIX}revoked:version"
# RedBeat's schedule entries and lock
REDBEAT_KEY_PREFIX = f"{KEY_PREFIX}redbeat:"
# everything the gateway keeps (task metadata, recent lists, quotas, idempotency, rate limits)
GATEWAY_KEY_PREFIX = f"{KEY_PREFIX}gw:"
# a counter raised by every token revocation: each gateway process reads it with its rate-limit round trip
# and forgets the tokens it had verified when it changed (services/gateway/auth.py)
TOKENS_EPOCH_KEY = f"{GATEWAY_KEY_PREFIX}tokens:epoch"


def revenue_cache_key(period: str) -> str:
    """Where calculate_monthly_revenue caches a month (``YYYY-MM``): JSON with totals, by_category,
    by_store; expires after an hour."""
    return f"{CACHE_PREFIX}revenue:{period}"


# Celery's result backend keeps a task's state as JSON under this key (and publishes it on the same channel)
RESULT_KEY_PREFIX = "celery-task-meta-"

# kombu's Redis transport keeps a message of priority p > 0 in the list ``<queue>\x06\x16<p>``;
# priorities are rounded down to these steps (kombu.transport.redis.PRIORITY_STEPS, Channel.sep).
PRIORITY_STEPS: tuple[int, ...] = (0, 3, 6, 9)
PRIORITY_SEP = "\x06\x16"


def priority_step(priority: int) -> int:
    """The step kombu files a message of ``priority`` (0-9) under."""
    return max(step for step in PRIORITY_STEPS if step <= max(priority, 0))


def priority_queue_key(queue: str, priority: int | None) -> str:
    """The Redis list that holds ``queue``'s messages of ``priority``."""
    step = priority_step(priority or 0)
    return f"{queue}{PRIORITY_SEP}{step}" if step else queue


def priority_keys(queue: str) -> list[str]:
    """Every Redis list that holds ``queue``'s messages: the queue itself and its priority sub-queues."""
    return [priority_queue_key(queue, step) for step in PRIORITY_STEPS]
