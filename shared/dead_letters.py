"""Malformed broker messages: rejected, recorded as dead letters, and never fatal to a worker.

A message that a worker cannot run ends here instead of crashing the worker or vanishing unseen:

- not even a kombu envelope (not JSON, not UTF-8, not an object, no ``properties``, a body that does not
  decode): kombu's Redis transport would raise inside the worker's event loop, and Celery stops the whole
  worker ("Unrecoverable error"). :class:`RedisTransport` catches that for the one message, records it and
  goes on consuming;
- an envelope whose body cannot be deserialised (``on_decode_error``): Celery logs and acknowledges it
  without any signal; :class:`Consumer` also records it;
- no ``task`` header / unknown format (``task_rejected``) and an unregistered task name (``task_unknown``):
  Celery rejects them; :func:`install` records them.

Each record is a JSON object in the capped list :data:`DEAD_LETTERS_KEY` of the cache Redis (newest first,
:data:`MAX_DEAD_LETTERS` kept): ``ts``, ``reason``, ``queue``, ``id``, ``task``, ``headers`` and an excerpt of
``body``. A message that names a task id also gets a ``task-rejected`` lifecycle event, so the monitor's
history has a REJECTED row for it with the reason. Messages whose arguments do not fit the task's catalog
model are not dead letters: :class:`shared.tasks.MallopsTask` fails them (FAILURE, ``InvalidTaskArguments``).
"""

from __future__ import annotations

import json
import logging
import time
from queue import Empty
from typing import Any

import redis
from celery import Celery, signals
from celery.worker.consumer import Consumer as CeleryConsumer
from kombu.transport import redis as kombu_redis
from kombu.transport import virtual

from shared import events
from shared.cache import KEY_PREFIX, consumer_loop_client
from shared.settings import Settings, get_settings

log = logging.getLogger("mallops.dead_letters")

DEAD_LETTERS_KEY = f"{KEY_PREFIX}dead_letters"
MAX_DEAD_LETTERS = 10_000
EXCERPT_CHARS = 2000

_url: str | None = None  # the cache Redis of the settings given to install()


def _redis() -> redis.Redis[bytes]:
    return consumer_loop_client(_url or get_settings().cache_redis_url)


def _excerpt(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, bytes | bytearray | memoryview):
        value = bytes(value).decode("utf-8", errors="replace")
    text = value if isinstance(value, str) else repr(value)
    return text if len(text) <= EXCERPT_CHARS else text[: EXCERPT_CHARS - 1] + "…"


def record(reason: str, *, queue: str | None = None, headers: Any = None, body: Any = None,
           exception: str = "MalformedMessage") -> None:
    """Keep a dead letter for a message that was dropped; never raises (a worker must go on)."""
    headers = headers if isinstance(headers, dict) else {}
    task_id = headers.get("id") if isinstance(headers.get("id"), str) else None
    task_name = headers.get("task") if isinstance(headers.get("task"), str) else None
    entry = {
        "ts": time.time(), "reason": _excerpt(reason), "exception": exception, "queue": queue, "id": task_id,
        "task": task_name, "headers": _excerpt(json.dumps(headers, default=repr)) if headers else None,
        "body": _excerpt(body),
    }
    log.error("dead letter from queue %s (task %s, id %s): %s", queue, task_name, task_id, reason)
    try:
        pipe = _redis().pipeline(transaction=False)
        pipe.lpush(DEAD_LETTERS_KEY, json.dumps(entry, separators=(",", ":")))
        pipe.ltrim(DEAD_LETTERS_KEY, 0, MAX_DEAD_LETTERS - 1)
        pipe.execute()
    except redis.RedisError as exc:
        log.error("could not record the dead letter in Redis: %s", exc)


def reject(reason: str, *, queue: str | None = None, headers: Any = None, body: Any = None,
           exception: str = "MalformedMessage") -> None:
    """Record a dead letter and, if the message names a task id, a ``task-rejected`` event for its history."""
    record(reason, queue=queue, headers=headers, body=body, exception=exception)
    if isinstance(headers, dict) and isinstance(headers.get("id"), str):
        events.emit_rejected(headers["id"], name=headers.get("task"), queue=queue,
                             owner=headers.get(events.OWNER_HEADER), exception=exception, error=reason)


# -- the broker transport ------------------------------------------------------------------------------


class MalformedEnvelope(ValueError):
    """The broker handed over something that is not a kombu message envelope."""


class Message(virtual.Message):
    def __init__(self, payload: Any, channel: Any = None, **kwargs: Any) -> None:
        if not isinstance(payload, dict):
            raise MalformedEnvelope(f"the message is JSON but not an object ({type(payload).__name__})")
        try:
            super().__init__(payload, channel=channel, **kwargs)  # type: ignore[no-untyped-call]
        except Exception as exc:  # KeyError, TypeError, binascii.Error ...: whatever the envelope lacks
            raise MalformedEnvelope(f"not a message envelope: {type(exc).__name__}: {exc}") from exc


class Channel(kombu_redis.Channel):
    Message = Message

    def _brpop_read(self, **options: Any) -> Any:
        self.connection.handed_over = False
        try:
            return super()._brpop_read(**options)  # type: ignore[no-untyped-call]
        except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError, kombu's object_hook
            if self.connection.handed_over:
                raise  # not the envelope: something further on, which is not ours to swallow
            # the round-robin cycle has just moved the queue it read from to its end
            queue = self._queue_cycle.items[-1] if self._queue_cycle.items else None
            raw = getattr(exc, "doc", None) or getattr(exc, "object", None)
            record(f"not a JSON message envelope: {exc}", queue=queue, body=raw)
            return True

    def _get(self, queue: Any, timeout: Any = None) -> Any:
        self.connection.handed_over = False
        try:
            return super()._get(queue)  # type: ignore[no-untyped-call]
        except ValueError as exc:
            record(f"not a JSON message envelope: {exc}", queue=queue,
                   body=getattr(exc, "doc", None) or getattr(exc, "object", None))
            raise Empty() from exc


class RedisTransport(kombu_redis.Transport):
    """kombu's Redis transport, except that one malformed message cannot stop the consumer."""

    Channel = Channel
    handed_over = False

    def _deliver(self, message: Any, queue: str) -> None:
        self.handed_over = True
        try:
            super()._deliver(message, queue)  # type: ignore[no-untyped-call]
        except MalformedEnvelope as exc:
            headers = message.get("headers") if isinstance(message, dict) else None
            reject(str(exc), queue=queue, headers=headers, body=message)


# -- the worker's consumer and signals -------------------------------------------------------------


class Consumer(CeleryConsumer):  # type: ignore[misc]
    """Celery's consumer; a message whose body cannot be decoded is also recorded as a dead letter."""

    def on_decode_error(self, message: Any, exc: Exception) -> None:
        super().on_decode_error(message, exc)
        delivery = getattr(message, "delivery_info", None) or {}
        reject(f"the body cannot be decoded ({message.content_type}): {exc}", queue=delivery.get("routing_key"),
               headers=getattr(message, "headers", None), body=getattr(message, "body", None),
               exception=type(exc).__name__)


def _queue(message: Any) -> str | None:
    delivery = getattr(message, "delivery_info", None) or {}
    routing_key = delivery.get("routing_key")
    return str(routing_key) if routing_key else None


def _on_rejected(sender: Any = None, message: Any = None, exc: Any = None, **_: Any) -> None:
    reason = f"rejected: {exc}" if exc is not None else "rejected: not a task message (no task name)"
    record(reason, queue=_queue(message), headers=getattr(message, "headers", None),
           body=getattr(message, "body", None), exception=type(exc).__name__ if exc is not None else "UnknownFormat")


def _on_unknown(sender: Any = None, message: Any = None, exc: Any = None, name: Any = None, **_: Any) -> None:
    record(f"unknown task {name!r}", queue=_queue(message), headers=getattr(message, "headers", None),
           body=getattr(message, "body", None), exception="NotRegistered")


def install(app: Celery, settings: Settings) -> None:
    """Use the dead-lettering transport (Redis brokers) and consumer, and record rejected messages."""
    global _url
    _url = settings.cache_redis_url
    if str(app.conf.broker_url or "").split("://", 1)[0] in ("redis", "rediss"):
        app.conf.broker_transport = f"{__name__}:RedisTransport"
    app.conf.worker_consumer = f"{__name__}:Consumer"
    signals.task_rejected.connect(_on_rejected, weak=False, dispatch_uid="mallops.dead_letters.rejected")
    signals.task_unknown.connect(_on_unknown, weak=False, dispatch_uid="mallops.dead_letters.unknown")
