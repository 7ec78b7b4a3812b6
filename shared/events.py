"""Task and worker lifecycle events, from Celery signals into the Redis Stream ``mallops:events``.

Every process built by :func:`shared.celery_app.create_celery_app` (workers, beat, the gateway)
installs the signal handlers once (:func:`install`). An event is a small JSON object in the stream
entry's field ``e``; the monitor (``services/monitor``) reads the stream with a consumer group.

Event types and their fields (all carry ``type``, ``ts`` (epoch seconds), ``host``, ``pid``):

- ``task-sent`` (publisher): id, name, queue, retries, owner, args, arguments, eta, retry_of
- ``task-received`` (worker main process): id, name, queue, retries, owner, args, arguments
- ``task-started``, ``task-progress`` (current, total), ``task-retried`` (exception, error),
  ``task-succeeded`` (runtime, result), ``task-failed`` (runtime, exception, error, traceback),
  ``task-revoked`` (terminated, expired), ``task-rejected``: id, name, queue, retries, owner
- ``worker-online``, ``worker-heartbeat``, ``worker-offline``: service, queues, active, processed,
  concurrency. Heartbeats also refresh the worker's entry in ``shared.cache.WORKERS_KEY``.

Cost: emitting never does network I/O on the caller's thread except where durability needs it. An
event is serialised and appended to a per-process buffer; a background thread writes the buffer with
one pipelined round trip (``XADD ... MAXLEN ~ N`` per event) every ``MALLOPS_EVENTS_FLUSH_INTERVAL``
seconds, or at once when ``MALLOPS_EVENTS_FLUSH_SIZE`` events are waiting.

Durability trade-off: a task's final events (started, succeeded/failed/retried) are flushed in the
pool process in ``task_postrun``, i.e. before the worker acknowledges the message (acks_late), in the
same single round trip. So a task whose message is gone from the broker always has its outcome in the
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
import json
import logging
import os
import socket
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import redis
from celery import Celery, signals

from shared.cache import EVENT_STREAM, WORKERS_KEY
from shared.logs import REQUEST_ID_HEADER
from shared.settings import Settings, get_settings

log = logging.getLogger("mallops.events")

MAX_BUFFERED = 100_000
SUMMARY_CHARS = 500
ERROR_CHARS = 2000
TRACEBACK_CHARS = 16_000  # the end of a traceback is kept: the innermost frames and the exception
ARGUMENTS_CHARS = 16_000  # the JSON of a task's {"args", "kwargs"} in events and the history
ARGUMENT_VALUE_CHARS = 1000  # when the arguments are too long, each value longer than this is cut
OWNER_HEADER = "mallops_owner"
RETRY_OF_HEADER = "mallops_retry_of"  # a retry's message names the task it repeats (the history's retry_of)


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

    def emit(self, type_: str, **fields: Any) -> None:
        """Buffer one event; never blocks on the network."""
        fields["type"] = type_
        fields["ts"] = time.time()
        fields.setdefault("host", self.node)
        fields["pid"] = self.pid
        data = json.dumps(fields, separators=(",", ":"), default=str)
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

    def flush(self, extra: Callable[[Any], None] | None = None) -> int:
        """Write every buffered event in one pipelined round trip; returns how many were written.

        ``extra(pipeline)`` may queue more commands into the same round trip. On a Redis error the
        events go back to the front of the buffer and the error is logged (at most every 30 s).
        """
        with self._flush_lock:
            with self._lock:
                batch = list(self._buffer)
                self._buffer.clear()
            if not batch and extra is None:
                return 0
            try:
                pipe = self.redis().pipeline(transaction=False)
                for data in batch:
                    pipe.xadd(EVENT_STREAM, {"e": data}, maxlen=self._maxlen, approximate=True)
                if extra is not None:
                    extra(pipe)
                pipe.execute()
            except redis.RedisError as exc:
                with self._lock:
                    self._buffer.extendleft(reversed(batch))
                    while len(self._buffer) > MAX_BUFFERED:
                        self._buffer.popleft()
                        self.dropped += 1
                now = time.monotonic()
                if now - self._warned_at > 30:
                    self._warned_at = now
                    log.warning("could not write %d lifecycle events to Redis (%s); keeping them", len(batch), exc)
                return 0
            self.written += len(batch)
            return len(batch)

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
                self.flush()
            except Exception:  # never let the flusher die
                log.exception("lifecycle event flush failed")

    def close(self) -> None:
        """Flush what is buffered and stop the flusher thread."""
        self._stopping.set()
        self._wake.set()
        try:
            self.flush()
        except Exception:
            log.exception("final lifecycle event flush failed")
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=2)
        if self._client is not None:
            self._client.close()
            self._client = None


# -- the process's emitter -----------------------------------------------------------------------

_emitter: EventEmitter | None = None
_installed = False
_install_lock = threading.Lock()
# (task id, attempt) -> perf_counter at task_prerun (this process). The attempt is part of the key: in a
# threads pool a retry may start in another thread before the attempt that published it has finished.
_started: dict[tuple[str, int], float] = {}
_worker: dict[str, Any] = {}  # the worker main process: hostname, service, queues, concurrency


def emitter() -> EventEmitter | None:
    return _emitter


def _after_fork_in_child() -> None:
    """A forked child must not share its parent's buffer, lock, socket or thread."""
    global _emitter
    if _emitter is not None:
        _emitter = EventEmitter(_emitter.settings, _emitter.node)
    _started.clear()


def install(app: Celery, settings: Settings | None = None, node: str | None = None) -> EventEmitter | None:
    """Connect the lifecycle signal handlers (once per process). ``node`` names the publisher in
    ``task-sent`` events until a worker names itself (default ``<service>@<hostname>``)."""
    global _emitter, _installed
    settings = settings or get_settings()
    if not settings.events_enabled:
        return None
    with _install_lock:
        if _installed:
            if _emitter is not None and _emitter.settings.cache_redis_url != settings.cache_redis_url:
                # the latest configuration wins (tests and tools build apps for other Redis servers)
                old, _emitter = _emitter, EventEmitter(settings, _emitter.node)
                old.close()
            return _emitter
        service = app.main.removeprefix("mallops.") if app.main else "mallops"
        _emitter = EventEmitter(settings, node or f"{service}@{socket.gethostname()}")
        for signal, handler in _HANDLERS:
            signal.connect(handler, weak=False, dispatch_uid=f"mallops.events.{handler.__name__}")
        os.register_at_fork(after_in_child=_after_fork_in_child)
        atexit.register(_close_at_exit)
        _installed = True
        return _emitter


def _close_at_exit() -> None:
    if _emitter is not None and _emitter.pid == os.getpid():
        _emitter.close()


def _emit(type_: str, **fields: Any) -> None:
    em = _emitter
    if em is None:
        return
    try:
        em.emit(type_, **fields)
    except Exception:  # monitoring must never break a task
        log.exception("could not emit %s", type_)


def emit_rejected(task_id: str, *, name: Any, queue: Any, owner: Any, exception: str, error: str) -> None:
    """A ``task-rejected`` event for a message the worker could not run (``shared.dead_letters``)."""
    fields: dict[str, Any] = {
        "id": task_id,
        "name": name if isinstance(name, str) else None,
        "queue": queue,
        "retries": 0,
        "owner": owner if isinstance(owner, str) else None,
        "exception": exception,
        "error": _truncate(error, ERROR_CHARS),
    }
    if _worker.get("hostname"):
        fields["host"] = _worker["hostname"]
    _emit("task-rejected", **fields)
    em = _emitter
    if em is not None:
        em.flush()  # the message is gone from the broker: its record must not wait in a buffer


def emit_progress(task: Any, current: Any, total: Any) -> None:
    """A PROGRESS update of the running ``task`` (called from MallopsTask.update_state)."""
    _emit("task-progress", **_task_fields(task), current=current, total=total)


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
    }
    if request.get(REQUEST_ID_HEADER):
        fields["request_id"] = request.get(REQUEST_ID_HEADER)
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
    }
    if headers.get(REQUEST_ID_HEADER):
        fields["request_id"] = headers[REQUEST_ID_HEADER]
    hostname = _worker.get("hostname") or getattr(request, "hostname", None)
    if hostname:
        fields["host"] = hostname
    return fields


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
    if not task_id:  # protocol 1 or not a task message
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
    if _worker.get("hostname"):
        fields["host"] = _worker["hostname"]
    _emit("task-sent", **fields)


def _on_received(sender: Any = None, request: Any = None, **_: Any) -> None:
    if request is None:
        return
    _emit(
        "task-received",
        **_request_fields(request),
        args=_args_summary(getattr(request, "argsrepr", None), getattr(request, "kwargsrepr", None)),
        arguments=_request_arguments(request),
    )


def _request_arguments(request: Any) -> dict[str, Any] | None:
    try:
        return capped_arguments(request.args, request.kwargs)
    except Exception:  # a body that does not decode: the dead-letter path records it
        return None


def _on_prerun(sender: Any = None, task_id: str | None = None, task: Any = None, **_: Any) -> None:
    if task is None or task_id is None:
        return
    _started[(task_id, task.request.retries or 0)] = time.perf_counter()
    _emit("task-started", **_task_fields(task))


def _runtime(task_id: str | None, attempt: int) -> float | None:
    start = _started.get((task_id or "", attempt))
    return round(time.perf_counter() - start, 6) if start is not None else None


def _on_success(sender: Any = None, result: Any = None, **_: Any) -> None:
    if sender is None:
        return
    fields = _task_fields(sender)
    _emit(
        "task-succeeded",
        **fields,
        runtime=_runtime(fields["id"], fields["retries"]),
        result=_truncate(result, SUMMARY_CHARS),
    )


def _on_failure(
    sender: Any = None,
    task_id: str | None = None,
    exception: BaseException | None = None,
    einfo: Any = None,
    **_: Any,
) -> None:
    if sender is None:
        return
    fields = _task_fields(sender)
    fields["id"] = task_id or fields["id"]
    _emit(
        "task-failed",
        **fields,
        runtime=_runtime(fields["id"], fields["retries"]),
        exception=type(exception).__name__ if exception is not None else None,
        error=_truncate(str(exception), ERROR_CHARS) if exception is not None else None,
        traceback=capped_traceback(getattr(einfo, "traceback", None)),
    )


def _on_retry(sender: Any = None, request: Any = None, reason: Any = None, **_: Any) -> None:
    if sender is None:
        return
    fields = _task_fields(sender)
    exc = reason if isinstance(reason, BaseException) else None
    _emit(
        "task-retried",
        **fields,
        exception=type(exc).__name__ if exc else None,
        error=_truncate(str(reason), ERROR_CHARS) if reason is not None else None,
    )


def _on_postrun(sender: Any = None, task_id: str | None = None, **_: Any) -> None:
    """The task's outcome is in the stream before the worker acknowledges its message."""
    attempt = (getattr(getattr(sender, "request", None), "retries", None) or 0) if sender is not None else 0
    _started.pop((task_id or "", attempt), None)
    em = _emitter
    if em is not None:
        em.flush()


def _on_revoked(sender: Any = None, request: Any = None, terminated: Any = None, expired: Any = None, **_: Any) -> None:
    if request is None:
        return
    # Celery sends the task's request *context* here (Request._announce_revoked), not the worker Request
    fields = _request_fields(request) if hasattr(request, "request_dict") else _context_fields(sender, request)
    _emit("task-revoked", **fields, terminated=bool(terminated), expired=bool(expired))


def _context_fields(task: Any, context: Any) -> dict[str, Any]:
    """The task fields from a request context (``celery.app.task.Context``) and the task it is for."""
    delivery = getattr(context, "delivery_info", None) or {}
    fields: dict[str, Any] = {
        "id": context.id,
        "name": getattr(task, "name", None) or getattr(context, "task", None),
        "queue": delivery.get("routing_key"),
        "retries": getattr(context, "retries", None) or 0,
        "owner": getattr(context, OWNER_HEADER, None),
    }
    hostname = _worker.get("hostname") or getattr(context, "hostname", None)
    if hostname:
        fields["host"] = hostname
    return fields


def _on_rejected(sender: Any = None, message: Any = None, exc: Any = None, **_: Any) -> None:
    headers = getattr(message, "headers", None) or {}
    if not headers.get("id"):
        return
    delivery = getattr(message, "delivery_info", None) or {}
    _emit(
        "task-rejected",
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
    if not id:
        return
    delivery = getattr(message, "delivery_info", None) or {}
    headers = getattr(message, "headers", None) or {}
    _emit(
        "task-rejected",
        id=id,
        name=name,
        queue=delivery.get("routing_key"),
        retries=0,
        owner=headers.get(OWNER_HEADER) if isinstance(headers, dict) else None,
        exception="NotRegistered",
        error=_truncate(str(exc), ERROR_CHARS) if exc is not None else None,
    )


# -- workers ---------------------------------------------------------------------------------------


def _worker_fields() -> dict[str, Any]:
    from celery.worker import state

    return {
        "host": _worker["hostname"],
        "service": _worker.get("service"),
        "queues": _worker.get("queues", []),
        "concurrency": _worker.get("concurrency"),
        "active": len(state.active_requests),
        "processed": state.all_total_count[0],
    }


def _worker_record(fields: dict[str, Any], status: str) -> str:
    return json.dumps(
        {
            "hostname": fields["host"],
            "service": fields["service"],
            "pid": os.getpid(),
            "queues": fields["queues"],
            "concurrency": fields["concurrency"],
            "active": fields["active"],
            "processed": fields["processed"],
            "last_heartbeat": time.time(),
            "status": status,
        },
        separators=(",", ":"),
    )


def heartbeat(status: str = "online", type_: str = "worker-heartbeat") -> None:
    """Emit a worker event and refresh the worker's liveness entry, in one round trip."""
    em = _emitter
    if em is None or not _worker.get("hostname"):
        return
    fields = _worker_fields()
    _emit(type_, **fields)
    record = _worker_record(fields, status)
    em.flush(extra=lambda pipe: pipe.hset(WORKERS_KEY, fields["host"], record))


class _Heartbeat(threading.Thread):
    def __init__(self, interval: float) -> None:
        super().__init__(name="mallops-heartbeat", daemon=True)
        self.interval = interval
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.wait(self.interval):
            try:
                heartbeat()
            except Exception:
                log.exception("worker heartbeat failed")


_heartbeat: _Heartbeat | None = None


def _on_worker_ready(sender: Any = None, **_: Any) -> None:
    global _heartbeat
    em = _emitter
    if em is None or sender is None:
        return
    hostname = getattr(sender, "hostname", None) or em.node
    app = getattr(sender, "app", None)
    queues: list[str] = []
    try:
        queues = sorted(q.name for q in sender.task_consumer.queues)
    except AttributeError:
        if app is not None:
            queues = sorted(app.amqp.queues.consume_from or [])
    pool = getattr(sender, "pool", None)
    _worker.update(
        hostname=hostname,
        service=(app.main or "").removeprefix("mallops.") if app is not None else None,
        queues=queues,
        concurrency=getattr(pool, "limit", None) if pool is not None else None,
    )
    em.node = hostname
    heartbeat(type_="worker-online")
    if _heartbeat is None:
        _heartbeat = _Heartbeat(em.settings.worker_heartbeat_interval)
        _heartbeat.start()


def _on_worker_shutdown(sender: Any = None, **_: Any) -> None:
    global _heartbeat
    if _heartbeat is not None:
        _heartbeat.stop.set()
        _heartbeat = None
    try:
        heartbeat(status="offline", type_="worker-offline")
    finally:
        if _emitter is not None:
            _emitter.close()


def _on_process_shutdown(**_: Any) -> None:
    if _emitter is not None:
        _emitter.close()


def _on_celeryd_init(sender: Any = None, **_: Any) -> None:
    """Name this worker's events (and its pool children's, inherited at fork) after its hostname."""
    if _emitter is not None and sender:
        _emitter.node = str(sender)
        _worker["hostname"] = str(sender)


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
