"""Celery's Redis result backend, writing a worker's buffered lifecycle events in the round trip that
stores a task's state.

A task on a worker with lifecycle events costs, besides Celery's own result writes (STARTED with
``task_track_started``, then the outcome), the events' writes: the buffered ``task-received`` and
``task-started`` and the holder of the message, and at ``task_postrun`` a synchronous round trip with
``task-succeeded`` and the holder's deletion, so that the outcome is in the stream before the message is
acknowledged. When the result backend and the event stream are databases of one Redis server (the default
layout: results in db 1, the stream in db 2), :class:`ResultStore` puts whatever the process has buffered
into the result's own pipeline (``MULTI``, the result's ``SETEX`` and ``PUBLISH``, ``SELECT`` the stream's
database, the ``XADD``\\ s and holder writes, ``SELECT`` back, ``EXEC``), and on success also the task's
``task-succeeded`` event and its holder's deletion, built just before the result is stored. The postrun
flush then finds nothing to write. The guarantees stay: every event is written before the message is
acknowledged, in the order it was emitted (the emitter's flush lock is held), and a write that fails puts
the buffered events back (the staged outcome is then emitted by the ``task_success`` handler as before).
Measured with ``python -m bench events-cost`` (docs/performance.md).

Another server, or events off: Celery's backend unchanged.
"""

from __future__ import annotations

from typing import Any

import redis
from celery import states
from celery.backends.redis import RedisBackend

from shared.celery_extensions import events as lifecycle

_SERVER_KEYS = ("host", "port", "path", "username", "password")


def backend_url(result_backend: str, events_enabled: bool) -> str:
    """The ``result_backend`` setting for Celery: this class on a Redis URL when events are on."""
    if events_enabled and result_backend.startswith(("redis://", "rediss://")):
        return f"{__name__}:ResultStore+{result_backend}"
    return result_backend


class ResultStore(RedisBackend):  # type: ignore[misc]
    """:class:`celery.backends.redis.RedisBackend` whose writes carry the process's lifecycle events."""

    def mark_as_done(
        self,
        task_id: str,
        result: Any,
        request: Any = None,
        store_result: bool = True,
        state: str = states.SUCCESS,
    ) -> None:
        events = lifecycle.for_app(self.app)
        task = self.app.current_worker_task
        if events is None or state != states.SUCCESS or task is None or task.request.id != task_id:
            super().mark_as_done(task_id, result, request, store_result, state)
            return
        events.stage_success(task, result, self.get_key_for_task(task_id))
        try:
            super().mark_as_done(task_id, result, request, store_result, state)
        finally:
            events.unstage()

    def _set(self, key: Any, value: Any, expires: Any = None) -> None:
        events = lifecycle.for_app(self.app)
        target = self._stream_db(events.emitter) if events is not None else None
        if events is None or target is None:
            super()._set(key, value, expires)
            return
        emitter = events.emitter
        staged = events.staged_for(key)
        with emitter.flush_lock:
            batch, keys = emitter.take()
            if not batch and not keys and staged is None:
                super()._set(key, value, expires)
                return
            outcome = [staged.event] if staged is not None else []
            holder: dict[str, tuple[str, int] | None] = {staged.holder: None} if staged is not None else {}
            try:
                self._write(key, value, expires, target, lambda p: emitter.queue(p, batch + outcome, keys | holder))
            except BaseException:
                emitter.put_back(batch, keys)
                raise
            emitter.written += len(batch) + len(outcome)
        if staged is not None:
            events.outcomes_written.add(staged.attempt)

    def _write(self, key: Any, value: Any, expires: Any, target: int, queue_events: Any) -> None:
        """Celery's result write (``SETEX``/``SET`` and ``PUBLISH``) and the events, in one transaction."""
        if expires is None:
            expires = self.expires
        own = int(self.client.connection_pool.connection_kwargs.get("db", 0))
        with self.client.pipeline() as pipe:
            if expires:
                pipe.setex(key, expires, value)
            else:
                pipe.set(key, value)
            pipe.publish(key, value)
            pipe.execute_command("SELECT", target)
            queue_events(pipe)
            pipe.execute_command("SELECT", own)
            pipe.execute()

    def _stream_db(self, emitter: lifecycle.EventEmitter) -> int | None:
        """The event stream's database when it is on this backend's Redis server, else None."""
        cache: dict[str, int | None] = self.__dict__.setdefault("_events_db", {})
        url = emitter.url
        if url not in cache:
            ours, theirs = self.client.connection_pool, redis.Redis.from_url(url).connection_pool
            same = ours.connection_class is theirs.connection_class and all(
                ours.connection_kwargs.get(k) == theirs.connection_kwargs.get(k) for k in _SERVER_KEYS
            )
            cache[url] = int(theirs.connection_kwargs.get("db", 0)) if same else None
        return cache[url]
