"""Task and worker lifecycle events, from Celery signals into the Redis Stream ``mallops:events``.

Every app built by :func:`shared.celery_app.create_celery_app` (workers, beat, the gateway) gets its
:class:`LifecycleEvents` (:func:`build`); the signal handlers, connected once per process, reach it through
the sender's app. An event is a small JSON object in the stream
entry's field ``e``; the monitor (``services/monitor``) reads the stream with a consumer group.

Event types and their payloads are contracts: :class:`shared.contracts.EventType`,
:class:`shared.contracts.TaskEvent` and :class:`shared.contracts.WorkerEvent` (every event carries ``type``,
``v``, ``ts``, ``host`` and ``pid``). Heartbeats also refresh the worker's
:class:`shared.contracts.WorkerRecord` in ``WORKERS_KEY``.

Cost: emitting never does network I/O on the caller's thread except where durability needs it. An
event is serialised and appended to a per-process buffer; a background thread writes the buffer with
one pipelined round trip (``XADD ... MAXLEN ~ N`` per event) every ``MALLOPS_EVENTS_FLUSH_INTERVAL``
seconds, or at once when ``MALLOPS_EVENTS_FLUSH_SIZE`` events are waiting.

Durability trade-off: a task's final events (started, succeeded/failed/retried) are flushed in the
pool process in ``task_postrun``, i.e. before the worker acknowledges the message (acks_late), in the
same single round trip. When the result backend is on the stream's Redis server, the buffer goes with
Celery's own state writes instead (:mod:`shared.celery_extensions.result_store`): ``task-started`` with
the task's outcome, or with its STARTED (which waits for the flusher's next tick, :meth:`EventEmitter.defer`)
when it runs longer, ``task-succeeded`` and the holder's deletion with SUCCESS, and ``task_postrun`` has
nothing left to write. So a task whose message is gone from the broker always has its outcome in the
stream. What a SIGKILL can lose is at most one flush interval of *buffered* events of the killed
process: ``task-received`` and heartbeats of a worker main process (its unacknowledged tasks are
redelivered and emit again), ``task-sent`` of a publisher (the history row is then built from the
worker's events, which carry name, queue, owner and arguments too; only ``sent_at`` falls back to the
receive time) and progress events. Buffered events are flushed on normal shutdown (worker_shutdown,
worker_process_shutdown, atexit). If Redis is unreachable, events are kept (up to
``MAX_BUFFERED``, oldest dropped first with a warning) and written when it is back.

Fork safety: after ``fork()`` the child starts with an empty buffer, a new Redis connection and no
flusher thread (``os.register_at_fork``); prefork pool children emit on their own.
"""

from __future__ import annotations

import atexit
import datetime as dt
import hashlib
import json
import logging
import os
import signal
import socket
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import redis
from celery import Celery, signals
from celery.exceptions import SoftTimeLimitExceeded

from shared.celery_extensions.redelivery import HELD_BY_POP, Holder, holder_key, holder_ttl, process_field
from shared.contracts import (
    EVENT_FIELD,
    EVENT_SCHEMA_VERSION,
    EVENT_STREAM,
    OWNER_HEADER,
    PROCESSES_KEY,
    REQUEST_ID_HEADER,
    REQUEUES_HEADER,
    RETRY_OF_HEADER,
    WORKERS_KEY,
    WORKFLOW_ID_HEADER,
    WORKFLOW_STEP_HEADER,
    EventType,
    WorkerEventFields,
    WorkerRecord,
    WorkerStatus,
)
from shared.settings import Settings

log = logging.getLogger("mallops.events")

MAX_BUFFERED = 100_000
# The Lua that writes the events and key writes of :meth:`EventEmitter.script_args` from ``ARGV[n + 1]`` on
# (``n`` set by the script around it): the stream, its approximate MAXLEN, its entries' field, the number of
# events, the events, then (key, value, ttl) triples, the value '' for a deletion. The result store's script
# ends with it too.
WRITE_EVENTS_LUA = """
local events = tonumber(ARGV[n + 4])
for i = n + 5, n + 4 + events do
  redis.call('XADD', ARGV[n + 1], 'MAXLEN', '~', ARGV[n + 2], '*', ARGV[n + 3], ARGV[i])
end
for i = n + 5 + events, #ARGV, 3 do
  if ARGV[i + 1] == '' then
    redis.call('DEL', ARGV[i])
  else
    redis.call('SET', ARGV[i], ARGV[i + 1], 'EX', ARGV[i + 2])
  end
end
"""
# one command for a batch of events and key writes (a flush); returns the number of events
WRITE_EVENTS = "local n = 0" + WRITE_EVENTS_LUA + "return events\n"
WRITE_EVENTS_SHA = hashlib.sha1(WRITE_EVENTS.encode(), usedforsecurity=False).hexdigest()
EVENTS_PER_COMMAND = 1000  # one command blocks Redis while it runs (a few µs an event)
#: a deferred write (:meth:`EventEmitter.defer`): given the buffered events and key writes, it writes them too
DeferredWrite = Callable[[list[str], dict[str, "tuple[str, int] | None"]], None]
DeferredWrites = Literal["none", "due", "all"]
SUMMARY_CHARS = 500
ERROR_CHARS = 2000
TRACEBACK_CHARS = 16_000  # the end of a traceback is kept: the innermost frames and the exception
ARGUMENTS_CHARS = 16_000  # the JSON of a task's {"args", "kwargs"} in events and the history
ARGUMENT_VALUE_CHARS = 1000  # when the arguments are too long, each value longer than this is cut


class EventEmitter:
    """A per-process buffer of events written to the stream by a background thread in batches."""

    def __init__(self, settings: Settings, node: str) -> None:
        self.settings = settings
        self.node = node
        self.pid = os.getpid()
        self._url = settings.cache_redis_url
        self._maxlen = settings.events_stream_maxlen
        self._flush_size = settings.events_flush_size
        self._interval = settings.events_flush_interval
        self._buffer: deque[str] = deque()
        # keys to set (value, ttl) or delete (None) in the next flush, latest wins
        self._keys: dict[str, tuple[str, int] | None] = {}
        # writes put off to the flusher's next tick (a running task's STARTED: result_store.py), by key:
        # when each is due and the write, which takes the buffer's events and key writes with it
        self._deferred: dict[Any, tuple[float, DeferredWrite]] = {}
        self._lock = threading.Lock()  # guards _buffer
        self._flush_lock = threading.Lock()  # one flush at a time, in order
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._client: redis.Redis[bytes] | None = None
        self._warned_at = 0.0
        self.dropped = 0
        self.written = 0

    # -- producing ---------------------------------------------------------------------------------

    def emit(self, type_: EventType, **fields: Any) -> None:
        """Buffer one event; never blocks on the network."""
        data = self.encode(type_, fields)
        with self._lock:
            if len(self._buffer) >= MAX_BUFFERED:
                self._buffer.popleft()
                self.dropped += 1
            self._buffer.append(data)
            waiting = len(self._buffer)
        if self._thread is None:
            self._start_thread()
        if waiting >= self._flush_size:
            self._wake.set()

    def put(self, key: str, value: str, ttl: int) -> None:
        """Set ``key`` (with a TTL) in a flush started at once by the flusher thread (the caller does
        not wait): a message's holder must be known before its worker can die unnoticed."""
        with self._lock:
            self._keys[key] = (value, ttl)
        self.wake()

    def wake(self) -> None:
        """Flush at once, in the flusher thread (the caller does not wait)."""
        if self._thread is None:
            self._start_thread()
        self._wake.set()

    def defer(self, key: Any, write: DeferredWrite) -> None:
        """Have the flusher thread make ``write`` once it is a flush interval old, with whatever is buffered
        then, unless :meth:`supersede` drops it first (a task's STARTED, overtaken by its outcome, is never
        written: result_store.py)."""
        with self._lock:
            self._deferred[key] = (time.monotonic() + self._interval, write)
        if self._thread is None:
            self._start_thread()

    def supersede(self, key: Any) -> None:
        """Drop the deferred write under ``key`` (call with ``flush_lock`` held: a flush is not writing it)."""
        if self._deferred:
            with self._lock:
                self._deferred.pop(key, None)

    def forget(self, key: str) -> None:
        """Delete ``key`` in the next flush."""
        with self._lock:
            self._keys[key] = None

    @property
    def pending(self) -> int:
        """Events buffered and not yet written."""
        with self._lock:
            return len(self._buffer)

    # -- writing -----------------------------------------------------------------------------------

    def redis(self) -> redis.Redis[bytes]:
        if self._client is None:
            self._client = redis.Redis.from_url(self._url, socket_timeout=5, socket_connect_timeout=5)
        return self._client

    def flush(self, extra: Callable[[Any], None] | None = None, deferred: DeferredWrites = "none") -> int:
        """Write every buffered event in one pipelined round trip; returns how many were written.

        ``extra(pipeline)`` may queue more commands into the same round trip. On a Redis error the
        events go back to the front of the buffer and the error is logged (at most every 30 s). ``deferred``:
        which deferred writes (:meth:`defer`) are made first, carrying the buffer: ``"due"`` (the flusher's
        tick) those a flush interval old, ``"all"`` (closing), or ``"none"``.
        """
        with self._flush_lock:
            batch, keys = self.take()
            if self._deferred and deferred != "none":
                due = time.monotonic() if deferred == "due" else float("inf")
                batch, keys = self._write_deferred(batch, keys, due)
            if not batch and not keys and extra is None:
                return 0
            try:
                self._execute(batch, keys, extra)
            except redis.RedisError as exc:
                self.put_back(batch, keys)
                now = time.monotonic()
                if now - self._warned_at > 30:
                    self._warned_at = now
                    log.warning("could not write %d lifecycle events to Redis (%s); keeping them", len(batch), exc)
                return 0
            self.written += len(batch)
            return len(batch)

    def _write_deferred(
        self, batch: list[str], keys: dict[str, tuple[str, int] | None], due: float
    ) -> tuple[list[str], dict[str, tuple[str, int] | None]]:
        """Make the deferred writes due by ``due``, the first carrying ``batch`` and ``keys``; returns what
        is left to write (all of it when none was due, or when the first write failed: it is deferred again)."""
        with self._lock:
            ready = [(key, entry) for key, entry in self._deferred.items() if entry[0] <= due]
            for key, _ in ready:
                del self._deferred[key]
        for index, (_key, (_, write)) in enumerate(ready):
            try:
                write(batch, keys)
            except redis.RedisError as exc:
                with self._lock:  # tried again at the next tick, unless overtaken meanwhile
                    for again, entry in ready[index:]:
                        self._deferred.setdefault(again, entry)
                log.warning("could not write a deferred state to Redis (%s); trying again", exc)
                return batch, keys
            self.written += len(batch)
            batch, keys = [], {}
        return batch, keys

    def take(self) -> tuple[list[str], dict[str, tuple[str, int] | None]]:
        """The buffered events and key writes, taken out of the buffer (call with ``flush_lock`` held)."""
        with self._lock:
            batch = list(self._buffer)
            self._buffer.clear()
            keys, self._keys = self._keys, {}
        return batch, keys

    def _execute(
        self, batch: list[str], keys: dict[str, tuple[str, int] | None], extra: Callable[[Any], None] | None
    ) -> None:
        """One pipelined round trip: :meth:`queue`, then ``extra``; the script loaded again if Redis lost it."""
        for attempt in (1, 2):
            pipe = self.redis().pipeline(transaction=False)
            self.queue(pipe, batch, keys)
            if extra is not None:
                extra(pipe)
            try:
                pipe.execute()
                return
            except redis.exceptions.NoScriptError:  # nothing of the script ran; the rest may run twice
                if attempt == 2:
                    raise
                self.redis().script_load(WRITE_EVENTS)  # type: ignore[no-untyped-call]

    def queue(self, pipe: Any, batch: list[str], keys: dict[str, tuple[str, int] | None]) -> None:
        """Queue ``batch`` and the key writes into ``pipe`` (a pipeline on the cache database): one
        :data:`WRITE_EVENTS` command per :data:`EVENTS_PER_COMMAND` events, by its digest (one reply to
        parse, not one an event)."""
        if not batch and not keys:
            return
        for start in range(0, max(len(batch), 1), EVENTS_PER_COMMAND):
            last = start + EVENTS_PER_COMMAND >= len(batch)
            args = self.script_args(batch[start : start + EVENTS_PER_COMMAND], keys if last else {})
            pipe.evalsha(WRITE_EVENTS_SHA, 0, *args)

    def script_args(self, batch: list[str], keys: dict[str, tuple[str, int] | None]) -> list[Any]:
        """``batch`` and the key writes as the arguments of a script that writes them (the result store's):
        the stream, its MAXLEN and field, the number of events, the events, then (key, value or '' for a
        deletion, ttl) triples."""
        args: list[Any] = [EVENT_STREAM, self._maxlen, EVENT_FIELD, len(batch), *batch]
        for key, write in keys.items():
            args += [key, "", 0] if write is None else [key, write[0], write[1]]
        return args

    def put_back(self, batch: list[str], keys: dict[str, tuple[str, int] | None]) -> None:
        """Return what :meth:`take` took and could not write, in front of what was buffered since."""
        with self._lock:
            self._buffer.extendleft(reversed(batch))
            self._keys = keys | self._keys
            while len(self._buffer) > MAX_BUFFERED:
                self._buffer.popleft()
                self.dropped += 1

    @property
    def url(self) -> str:
        return self._url

    @property
    def flush_lock(self) -> threading.Lock:
        """Held by whoever writes the buffer: one write at a time, so events keep their order."""
        return self._flush_lock

    def encode(self, type_: EventType, fields: dict[str, Any]) -> str:
        """One event as the JSON the stream holds (what :meth:`emit` buffers)."""
        fields["type"] = type_
        fields["v"] = EVENT_SCHEMA_VERSION
        fields["ts"] = time.time()
        fields.setdefault("host", self.node)
        fields["pid"] = self.pid
        return json.dumps(fields, separators=(",", ":"), default=str)

    def _start_thread(self) -> None:
        with self._lock:
            if self._thread is not None:
                return
            self._thread = threading.Thread(target=self._run, name="mallops-events", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stopping.is_set():
            self._wake.wait(self._interval)
            self._wake.clear()
            try:
                self.flush(deferred="due")
            except Exception:  # never let the flusher die
                log.exception("lifecycle event flush failed")

    def close(self) -> None:
        """Flush what is buffered and stop the flusher thread."""
        self._stopping.set()
        self._wake.set()
        try:
            self.flush(deferred="all")
        except Exception:
            log.exception("final lifecycle event flush failed")
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=2)
        if self._client is not None:
            self._client.close()
            self._client = None


# -- one app's lifecycle events ------------------------------------------------------------------


class LifecycleEvents:
    """The lifecycle events of one Celery app in this process: its emitter, and while the process is a
    worker, the worker's identity, its running tasks' start times and its heartbeat thread.

    Built by :func:`shared.celery_extensions.install` from the app's settings and reached by the signal
    handlers through the sender's app (:func:`for_app`)."""

    def __init__(self, settings: Settings, node: str) -> None:
        self.settings = settings
        self.emitter = EventEmitter(settings, node)
        self.worker: dict[str, Any] = {}  # a worker main process: hostname, service, queues, concurrency
        # (task id, attempt) -> perf_counter at task_prerun. The attempt is part of the key: in a threads
        # pool a retry may start in another thread before the attempt that published it has finished.
        self.started: dict[tuple[str, int], float] = {}
        self.heartbeat_thread: _Heartbeat | None = None
        # the task-succeeded event of the task this thread is storing the result of (result_store.py)
        self._staged = threading.local()
        # (task id, attempt) whose task-succeeded event (and holder deletion) went with the result
        self.outcomes_written: set[tuple[str, int]] = set()
        # a forked process (a prefork pool's child): it runs tasks another process received
        self.pool_child = False

    def after_fork_in_child(self) -> None:
        """A forked child must not share its parent's buffer, lock, socket or thread."""
        self.pool_child = True
        self.emitter = EventEmitter(self.emitter.settings, self.emitter.node)
        self.started.clear()
        self.heartbeat_thread = None
        self._staged = threading.local()
        self.outcomes_written.clear()

    def stage_success(self, task: Any, result: Any, result_key: Any) -> StagedOutcome:
        """Build ``task``'s task-succeeded event for the result store, which writes it in the round trip
        that stores the result (:mod:`shared.celery_extensions.result_store`); until then (and if that
        write does not happen) :func:`_on_success` emits it as usual."""
        fields = _task_fields(task)
        if "host" not in fields and self.worker.get("hostname"):
            fields["host"] = self.worker["hostname"]
        attempt = (str(fields["id"]), int(fields["retries"]))
        fields |= {"runtime": self.runtime(*attempt), "result": _truncate(result, SUMMARY_CHARS)}
        staged = StagedOutcome(
            attempt, result_key, self.emitter.encode(EventType.TASK_SUCCEEDED, fields), holder_key(*attempt)
        )
        self._staged.outcome = staged
        return staged

    def unstage(self) -> None:
        self._staged.outcome = None

    def staged_for(self, result_key: Any) -> StagedOutcome | None:
        """The outcome staged by this thread for the result stored under ``result_key``."""
        staged: StagedOutcome | None = getattr(self._staged, "outcome", None)
        return staged if staged is not None and staged.result_key == result_key else None

    def emit(self, type_: EventType, **fields: Any) -> None:
        if "host" not in fields and self.worker.get("hostname"):
            fields["host"] = self.worker["hostname"]
        try:
            self.emitter.emit(type_, **fields)
        except SoftTimeLimitExceeded:  # the task's own time limit, landing here: it ends the task, not the event
            raise
        except Exception:  # monitoring must never break a task
            log.exception("could not emit %s", type_)

    def emit_rejected(self, task_id: str, *, name: Any, queue: Any, owner: Any, exception: str, error: str) -> None:
        """A ``task-rejected`` event for a message the worker could not run (``dead_letters``), written at
        once: the message is gone from the broker, its record must not wait in a buffer."""
        self.emit(
            EventType.TASK_REJECTED,
            id=task_id,
            name=name if isinstance(name, str) else None,
            queue=queue,
            retries=0,
            owner=owner if isinstance(owner, str) else None,
            exception=exception,
            error=_truncate(error, ERROR_CHARS),
        )
        self.emitter.flush()

    def emit_requeued(
        self, task_id: str, *, name: str | None, queue: str | None, retries: int, requeues: int, worker: str
    ) -> None:
        """A ``task-requeued`` event (``shared.celery_extensions.redelivery``), written at once: it must
        precede the events of the worker that runs the message next."""
        fields = {"id": task_id, "name": name, "queue": queue, "retries": retries}
        self.emit(EventType.TASK_REQUEUED, **fields, requeues=requeues, worker=worker)
        self.emitter.flush()

    def emit_progress(self, task: Any, current: Any, total: Any) -> None:
        """A PROGRESS update of the running ``task`` (called from MallopsTask.update_state)."""
        self.emit(EventType.TASK_PROGRESS, **_task_fields(task), current=current, total=total)

    def runtime(self, task_id: str | None, attempt: int) -> float | None:
        start = self.started.get((task_id or "", attempt))
        return round(time.perf_counter() - start, 6) if start is not None else None

    def heartbeat(self, status: WorkerStatus = "online", type_: EventType = EventType.WORKER_HEARTBEAT) -> None:
        """Emit a worker event and refresh the worker's liveness entry, in one round trip."""
        if not self.worker.get("hostname"):
            return
        fields = self._worker_fields()
        self.emit(type_, **fields)
        record = WorkerRecord.of(fields, os.getpid(), status).to_json()
        process = json.dumps({"last": time.time(), "status": status}, separators=(",", ":"))

        def liveness(pipe: Any) -> None:
            pipe.hset(WORKERS_KEY, fields["host"], record)
            pipe.hset(PROCESSES_KEY, process_field(fields["host"], os.getpid()), process)

        self.emitter.flush(extra=liveness)

    def _worker_fields(self) -> WorkerEventFields:
        from celery.worker import state

        return {
            "host": self.worker["hostname"],
            "service": self.worker.get("service"),
            "queues": self.worker.get("queues", []),
            "concurrency": self.worker.get("concurrency"),
            "active": len(state.active_requests),
            "processed": state.all_total_count[0],
        }

    def close(self) -> None:
        if self.heartbeat_thread is not None:
            self.heartbeat_thread.stop.set()
            self.heartbeat_thread = None
        self.emitter.close()


@dataclass(frozen=True)
class StagedOutcome:
    """A task-succeeded event waiting to be written with its task's result."""

    attempt: tuple[str, int]  # (task id, retries)
    result_key: Any  # the result backend's key of the task
    event: str  # the event's JSON
    holder: str  # the holder key deleted in the same write


class _Heartbeat(threading.Thread):
    def __init__(self, events: LifecycleEvents) -> None:
        super().__init__(name="mallops-heartbeat", daemon=True)
        self.events = events
        self.interval = events.settings.worker_heartbeat_interval
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.wait(self.interval):
            try:
                self.events.heartbeat()
            except Exception:
                log.exception("worker heartbeat failed")


# -- this process's apps (fork handling) -----------------------------------------------------------

# Every LifecycleEvents of this process, oldest first: a forked child replaces their buffers and threads,
# a pool process closes them on shutdown, and atexit flushes them. Celery's after_task_publish signal does
# not say which app published: its events go to the newest app's emitter (a service has one app; tests
# and tools that build several build the one they publish with last).
_apps: list[weakref.ref[LifecycleEvents]] = []
_hooks_registered = False
_lock = threading.Lock()


def _live() -> list[LifecycleEvents]:
    return [events for ref in _apps if (events := ref()) is not None]


def _after_fork_in_child() -> None:
    for events in _live():
        events.after_fork_in_child()


def _close_at_exit() -> None:
    for events in _live():
        if events.emitter.pid == os.getpid():
            events.emitter.close()


def build(app: Celery, settings: Settings, node: str | None = None) -> LifecycleEvents:
    """The app's lifecycle events, with the signal handlers connected (once per process). ``node`` names
    the publisher in ``task-sent`` events until a worker names itself (default ``<service>@<hostname>``)."""
    global _hooks_registered
    service = app.main.removeprefix("mallops.") if app.main else "mallops"
    events = LifecycleEvents(settings, node or f"{service}@{socket.gethostname()}")
    with _lock:
        _apps[:] = [ref for ref in _apps if ref() is not None]
        _apps.append(weakref.ref(events))
        if not _hooks_registered:
            for sig, handler in _HANDLERS:
                sig.connect(handler, weak=False, dispatch_uid=f"mallops.events.{handler.__name__}")
            os.register_at_fork(after_in_child=_after_fork_in_child)
            atexit.register(_close_at_exit)
            _hooks_registered = True
    return events


def for_app(app: Any) -> LifecycleEvents | None:
    """The lifecycle events of ``app`` (None when they are off or the app was not built by the factory)."""
    from shared.celery_extensions.config import find_extensions

    extensions = find_extensions(app)
    return extensions.events if extensions is not None else None


def newest() -> LifecycleEvents | None:
    """The events of the app built last in this process (for callers that do not know their app)."""
    live = _live()
    return live[-1] if live else None


# -- field extraction ------------------------------------------------------------------------------


def _truncate(value: Any, limit: int) -> str:
    text = value if isinstance(value, str) else repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _args_summary(argsrepr: Any, kwargsrepr: Any, body: Any = None) -> str | None:
    """The task's arguments for the history, as JSON when the message body has them (protocol 2's
    ``(args, kwargs, embed)``): ``{"date": "2026-11-14"}``, ``[1, 2]`` or ``{"args": [...], "kwargs": {...}}``;
    else Celery's ``argsrepr``/``kwargsrepr``."""
    if isinstance(body, list | tuple) and len(body) >= 2 and isinstance(body[1], dict):
        args, kwargs = list(body[0] or ()), body[1]
        value: Any = {"args": args, "kwargs": kwargs} if args and kwargs else args or kwargs
        if not value:
            return None
        try:
            return _truncate(json.dumps(value, ensure_ascii=False, default=str), SUMMARY_CHARS)
        except (TypeError, ValueError):
            pass
    parts = [str(p) for p in (argsrepr, kwargsrepr) if p not in (None, "", "()", "[]", "{}")]
    return _truncate(" ".join(parts), SUMMARY_CHARS) if parts else None


def capped_traceback(text: Any) -> str | None:
    """A traceback as text, at most :data:`TRACEBACK_CHARS` (the start is cut: the end says most)."""
    if not text:
        return None
    value = str(text)
    return value if len(value) <= TRACEBACK_CHARS else "…" + value[-(TRACEBACK_CHARS - 1) :]


def capped_arguments(args: Any, kwargs: Any) -> dict[str, Any] | None:
    """``{"args": [...], "kwargs": {...}}`` as JSON values, at most :data:`ARGUMENTS_CHARS` as JSON.

    Too long: values longer than :data:`ARGUMENT_VALUE_CHARS` as JSON become the start of their JSON text
    (``"truncated": true`` is added), so the short values one filters on (ids, dates, names) stay exact."""
    if args is None and kwargs is None:
        return None
    positional: list[Any] = list(args) if isinstance(args, list | tuple) else []
    named: dict[str, Any] = dict(kwargs) if isinstance(kwargs, dict) else {}
    text = json.dumps({"args": positional, "kwargs": named}, separators=(",", ":"), default=str)
    if len(text) <= ARGUMENTS_CHARS:
        return dict(json.loads(text))  # JSON values only (dates as strings)

    def cut(item: Any) -> Any:
        dumped = json.dumps(item, separators=(",", ":"), default=str)
        return json.loads(dumped) if len(dumped) <= ARGUMENT_VALUE_CHARS else dumped[: ARGUMENT_VALUE_CHARS - 1] + "…"

    short = {
        "args": [cut(item) for item in positional],
        "kwargs": {str(key): cut(item) for key, item in named.items()},
        "truncated": True,
    }
    if len(json.dumps(short, separators=(",", ":"))) > ARGUMENTS_CHARS:
        return {"args": [], "kwargs": {}, "truncated": True}
    return short


def _body_arguments(body: Any) -> dict[str, Any] | None:
    """The arguments of a protocol-2 message body ``(args, kwargs, embed)``."""
    if isinstance(body, list | tuple) and len(body) == 3:
        return capped_arguments(body[0], body[1])
    return None


def _task_fields(task: Any) -> dict[str, Any]:
    """id, name, queue, retries, owner and host of the task being executed (its request context)."""
    request = task.request
    delivery = getattr(request, "delivery_info", None) or {}
    fields: dict[str, Any] = {
        "id": request.id,
        "name": task.name,
        "queue": delivery.get("routing_key") or getattr(task, "queue", None),
        "retries": request.retries or 0,
        "owner": request.get(OWNER_HEADER),
        "requeues": request.get(REQUEUES_HEADER) or 0,
    }
    if request.get(REQUEST_ID_HEADER):
        fields["request_id"] = request.get(REQUEST_ID_HEADER)
    _workflow_fields(fields, request.get(WORKFLOW_ID_HEADER), request.get(WORKFLOW_STEP_HEADER))
    if request.hostname:
        fields["host"] = request.hostname
    return fields


def _request_fields(request: Any) -> dict[str, Any]:
    """The same fields from a worker-side ``celery.worker.request.Request``."""
    delivery = request.delivery_info or {}
    headers = request.request_dict or {}
    fields: dict[str, Any] = {
        "id": request.id,
        "name": request.name,
        "queue": delivery.get("routing_key"),
        "retries": headers.get("retries") or 0,
        "owner": headers.get(OWNER_HEADER),
        "requeues": headers.get(REQUEUES_HEADER) or 0,
    }
    if headers.get(REQUEST_ID_HEADER):
        fields["request_id"] = headers[REQUEST_ID_HEADER]
    _workflow_fields(fields, headers.get(WORKFLOW_ID_HEADER), headers.get(WORKFLOW_STEP_HEADER))
    if getattr(request, "hostname", None):
        fields["host"] = request.hostname
    return fields


def _workflow_fields(fields: dict[str, Any], workflow_id: Any, step: Any) -> None:
    """A workflow step's task events name its workflow and step (shared/workflows.py)."""
    if isinstance(workflow_id, str) and workflow_id:
        fields["workflow_id"] = workflow_id
        if isinstance(step, str):
            fields["workflow_step"] = step


def _context_fields(task: Any, context: Any) -> dict[str, Any]:
    """The same fields from a task's request :class:`celery.app.task.Context` (what ``task_revoked`` gets)."""
    delivery = getattr(context, "delivery_info", None) or {}
    fields: dict[str, Any] = {
        "id": context.id,
        "name": getattr(task, "name", None) or getattr(context, "task", None),
        "queue": delivery.get("routing_key"),
        "retries": getattr(context, "retries", None) or 0,
        "owner": getattr(context, OWNER_HEADER, None),
    }
    if getattr(context, "hostname", None):
        fields["host"] = context.hostname
    return fields


def revocation_reason(terminated: bool, signum: Any, expired: bool) -> tuple[str, str]:
    """The (exception, error) a revoked task's history shows."""
    if terminated:
        try:
            name = signal.Signals(int(signum)).name
        except (TypeError, ValueError):
            name = f"signal {signum}" if signum else "a signal"
        return "Terminated", f"terminated by {name}"
    if expired:
        return "Expired", "expired before it ran"
    return "Revoked", "revoked before it ran"


# -- signal handlers -------------------------------------------------------------------------------


def _on_after_publish(
    sender: Any = None,
    body: Any = None,
    exchange: Any = None,
    routing_key: Any = None,
    headers: Any = None,
    properties: Any = None,
    **_: Any,
) -> None:
    headers = headers or {}
    task_id = headers.get("id")
    events = newest()
    if not task_id or events is None:  # protocol 1 or not a task message
        return
    fields: dict[str, Any] = {
        "id": task_id,
        "name": headers.get("task") or sender,
        "queue": routing_key or exchange,
        "retries": headers.get("retries") or 0,
        "owner": headers.get(OWNER_HEADER),
        "args": _args_summary(headers.get("argsrepr"), headers.get("kwargsrepr"), body),
        "arguments": _body_arguments(body),
    }
    if headers.get("eta"):
        fields["eta"] = headers["eta"]
    if isinstance(headers.get(RETRY_OF_HEADER), str):
        fields["retry_of"] = headers[RETRY_OF_HEADER]
    if headers.get(REQUEST_ID_HEADER):
        fields["request_id"] = headers[REQUEST_ID_HEADER]
    _workflow_fields(fields, headers.get(WORKFLOW_ID_HEADER), headers.get(WORKFLOW_STEP_HEADER))
    events.emit(EventType.TASK_SENT, **fields)


def _on_received(sender: Any = None, request: Any = None, **_: Any) -> None:
    events = for_app(getattr(sender, "app", None))
    if request is None or events is None:
        return
    fields = _request_fields(request)
    if events.worker.get("hostname"):
        fields["host"] = events.worker["hostname"]
    args = _args_summary(getattr(request, "argsrepr", None), getattr(request, "kwargsrepr", None))
    tag = getattr(getattr(request, "message", None), "delivery_tag", None)
    # one event (a merge had left two per task: one with the delivery tag, one with the arguments)
    arguments = _request_arguments(request)
    events.emit(EventType.TASK_RECEIVED, **fields, args=args, delivery_tag=tag, arguments=arguments)
    if fields["id"] and fields.get("host") and not getattr(getattr(request, "message", None), HELD_BY_POP, False):
        # who holds the message, for a requeuer to put it back at once if this worker is gone, where the
        # pop was kombu's BRPOP (reliable_pop's fallbacks). The reliable pop writes it with the message's
        # unacked entry (redelivery.delivery_holder_key): then no receipt
        holder = Holder(str(fields["host"]), os.getpid(), time.time())
        ttl = holder_ttl(events.emitter.settings.broker_visibility_timeout)
        events.emitter.put(holder_key(fields["id"], int(fields["retries"])), holder.dumps(), ttl)
    # else it waits in the buffer: in a threads pool it goes with the task's own next state write; a prefork
    # child's outcome may reach the stream first, and its task-started carries the arguments (_on_prerun)


def _request_arguments(request: Any) -> dict[str, Any] | None:
    try:
        return capped_arguments(request.args, request.kwargs)
    except Exception:  # a body that does not decode: the dead-letter path records it
        return None


def _on_prerun(sender: Any = None, task_id: str | None = None, task: Any = None, **_: Any) -> None:
    events = for_app(getattr(task, "app", None))
    if task is None or task_id is None or events is None:
        return
    events.started[(task_id, task.request.retries or 0)] = time.perf_counter()
    fields = _task_fields(task)
    if events.pool_child:
        # the parent's task-received (with the arguments) is flushed on its own interval and may follow this
        # process's outcome: the history must not show a finished task without its arguments
        request = task.request
        fields["args"] = _args_summary(getattr(request, "argsrepr", None), getattr(request, "kwargsrepr", None))
        fields["arguments"] = capped_arguments(request.args, request.kwargs)
    eta = getattr(task.request, "eta", None)
    if eta:  # the monitor's queue wait starts at the ETA (or countdown), not at the publish
        fields["eta"] = eta.isoformat() if isinstance(eta, dt.datetime) else str(eta)
    events.emit(EventType.TASK_STARTED, **fields)


def _on_success(sender: Any = None, result: Any = None, **_: Any) -> None:
    events = for_app(getattr(sender, "app", None))
    if sender is None or events is None:
        return
    fields = _task_fields(sender)
    if (fields["id"], fields["retries"]) in events.outcomes_written:
        return  # written with the result (result_store.py)
    runtime = events.runtime(fields["id"], fields["retries"])
    events.emit(EventType.TASK_SUCCEEDED, **fields, runtime=runtime, result=_truncate(result, SUMMARY_CHARS))


def _on_failure(
    sender: Any = None,
    task_id: str | None = None,
    exception: BaseException | None = None,
    einfo: Any = None,
    **_: Any,
) -> None:
    events = for_app(getattr(sender, "app", None))
    if sender is None or events is None:
        return
    fields = _task_fields(sender)
    fields["id"] = task_id or fields["id"]
    events.emit(
        EventType.TASK_FAILED,
        **fields,
        runtime=events.runtime(fields["id"], fields["retries"]),
        exception=type(exception).__name__ if exception is not None else None,
        error=_truncate(str(exception), ERROR_CHARS) if exception is not None else None,
        traceback=capped_traceback(getattr(einfo, "traceback", None)),
    )


def _on_retry(sender: Any = None, request: Any = None, reason: Any = None, **_: Any) -> None:
    events = for_app(getattr(sender, "app", None))
    if sender is None or events is None:
        return
    exc = reason if isinstance(reason, BaseException) else None
    events.emit(
        EventType.TASK_RETRIED,
        **_task_fields(sender),
        exception=type(exc).__name__ if exc else None,
        error=_truncate(str(reason), ERROR_CHARS) if reason is not None else None,
    )


def _on_postrun(sender: Any = None, task_id: str | None = None, **_: Any) -> None:
    """The task's outcome is in the stream before the worker acknowledges its message."""
    events = for_app(getattr(sender, "app", None))
    if events is None:
        return
    attempt = getattr(getattr(sender, "request", None), "retries", None) or 0
    events.started.pop((task_id or "", attempt), None)
    written = (task_id or "", attempt) in events.outcomes_written
    events.outcomes_written.discard((task_id or "", attempt))
    if written:
        # the outcome and the holder's deletion went with the result: what is buffered now is other tasks'
        # (a threads pool's task-received and task-started) and goes with their own writes or the next tick
        return
    if task_id:
        events.emitter.forget(holder_key(task_id, attempt))
    events.emitter.flush()


def _on_revoked(
    sender: Any = None,
    request: Any = None,
    terminated: Any = None,
    signum: Any = None,
    expired: Any = None,
    **_: Any,
) -> None:
    events = for_app(getattr(sender, "app", None))
    if request is None or not getattr(request, "id", None) or events is None:
        return
    fields = _context_fields(sender, request)
    if events.worker.get("hostname"):
        fields["host"] = events.worker["hostname"]
    exception, error = revocation_reason(bool(terminated), signum, bool(expired))
    events.emit(
        EventType.TASK_REVOKED,
        **fields,
        terminated=bool(terminated),
        expired=bool(expired),
        exception=exception,
        error=error,
    )
    events.emitter.flush()  # the message is acknowledged: its outcome must not wait in a buffer


def _on_rejected(sender: Any = None, message: Any = None, exc: Any = None, **_: Any) -> None:
    events = for_app(getattr(sender, "app", None))
    headers = getattr(message, "headers", None) or {}
    if not headers.get("id") or events is None:
        return
    delivery = getattr(message, "delivery_info", None) or {}
    events.emit(
        EventType.TASK_REJECTED,
        id=headers["id"],
        name=headers.get("task"),
        queue=delivery.get("routing_key"),
        retries=headers.get("retries") or 0,
        owner=headers.get(OWNER_HEADER),
        error=_truncate(str(exc), ERROR_CHARS) if exc is not None else None,
    )


def _on_unknown(
    sender: Any = None, message: Any = None, exc: Any = None, name: Any = None, id: Any = None, **_: Any
) -> None:
    events = for_app(getattr(sender, "app", None))
    if not id or events is None:
        return
    delivery = getattr(message, "delivery_info", None) or {}
    headers = getattr(message, "headers", None) or {}
    events.emit(
        EventType.TASK_REJECTED,
        id=id,
        name=name,
        queue=delivery.get("routing_key"),
        retries=0,
        owner=headers.get(OWNER_HEADER) if isinstance(headers, dict) else None,
        exception="NotRegistered",
        error=_truncate(str(exc), ERROR_CHARS) if exc is not None else None,
    )


# -- workers ---------------------------------------------------------------------------------------


def _on_celeryd_init(sender: Any = None, instance: Any = None, **_: Any) -> None:
    """Name this worker's events (and its pool children's, inherited at fork) after its hostname."""
    events = for_app(getattr(instance, "app", None))
    if events is not None and sender:
        events.emitter.node = str(sender)
        events.worker["hostname"] = str(sender)


def _on_worker_ready(sender: Any = None, **_: Any) -> None:
    app = getattr(sender, "app", None)
    events = for_app(app)
    if events is None or app is None:
        return
    hostname = getattr(sender, "hostname", None) or events.emitter.node
    queues: list[str] = []
    try:
        queues = sorted(q.name for q in sender.task_consumer.queues)
    except AttributeError:
        queues = sorted(app.amqp.queues.consume_from or [])
    pool = getattr(sender, "pool", None)
    events.worker.update(
        hostname=hostname,
        service=(app.main or "").removeprefix("mallops."),
        queues=queues,
        concurrency=getattr(pool, "limit", None) if pool is not None else None,
    )
    events.emitter.node = hostname
    events.heartbeat(type_=EventType.WORKER_ONLINE)
    if events.heartbeat_thread is None:
        events.heartbeat_thread = _Heartbeat(events)
        events.heartbeat_thread.start()


def _on_worker_shutdown(sender: Any = None, **_: Any) -> None:
    events = for_app(getattr(sender, "app", None))
    if events is None:
        return
    if events.heartbeat_thread is not None:
        events.heartbeat_thread.stop.set()
        events.heartbeat_thread = None
    try:
        events.heartbeat(status="offline", type_=EventType.WORKER_OFFLINE)
    finally:
        events.close()


def _on_process_shutdown(**_: Any) -> None:
    for events in _live():
        events.emitter.close()


_HANDLERS: tuple[tuple[Any, Callable[..., None]], ...] = (
    (signals.after_task_publish, _on_after_publish),
    (signals.task_received, _on_received),
    (signals.task_prerun, _on_prerun),
    (signals.task_success, _on_success),
    (signals.task_failure, _on_failure),
    (signals.task_retry, _on_retry),
    (signals.task_postrun, _on_postrun),
    (signals.task_revoked, _on_revoked),
    (signals.task_rejected, _on_rejected),
    (signals.task_unknown, _on_unknown),
    (signals.celeryd_init, _on_celeryd_init),
    (signals.worker_ready, _on_worker_ready),
    (signals.worker_shutdown, _on_worker_shutdown),
    (signals.worker_process_shutdown, _on_process_shutdown),
)
