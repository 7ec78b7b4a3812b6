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

Every write of a task's state (events on or off) is also one round trip instead of Celery's two: Celery's
``_store_result`` reads the stored meta first and skips the write when it says SUCCESS (a lost worker's
late write must not overwrite a success); :data:`STORE_UNLESS_SUCCEEDED` does that check, the ``SETEX``
and the ``PUBLISH`` in one script, so the check and the write are also atomic (Celery's are two commands
another worker can come between).
"""

from __future__ import annotations

from functools import partial
from typing import Any

import redis
from celery import states
from celery.backends.redis import RedisBackend
from celery.exceptions import BackendStoreError

from shared.celery_extensions import events as lifecycle

_SERVER_KEYS = ("host", "port", "path", "username", "password")


# KEYS[1] the task's result key; ARGV: the encoded meta (JSON), seconds to keep it (0: for good). Celery's
# rule, in one command: a stored SUCCESS is never overwritten. Returns 1 when written, 0 when kept.
STORE_UNLESS_SUCCEEDED = """
local current = redis.call('GET', KEYS[1])
if current then
  local ok, meta = pcall(cjson.decode, current)
  if ok and type(meta) == 'table' and meta['status'] == 'SUCCESS' then return 0 end
end
if tonumber(ARGV[2]) > 0 then
  redis.call('SETEX', KEYS[1], ARGV[2], ARGV[1])
else
  redis.call('SET', KEYS[1], ARGV[1])
end
redis.call('PUBLISH', KEYS[1], ARGV[1])
return 1
"""


def backend_url(result_backend: str) -> str:
    """The ``result_backend`` setting for Celery: this class on a Redis URL, the URL itself otherwise."""
    if result_backend.startswith(("redis://", "rediss://")):
        return f"{__name__}:ResultStore+{result_backend}"
    return result_backend


class ResultStore(RedisBackend):  # type: ignore[misc]
    """:class:`celery.backends.redis.RedisBackend` whose state writes take one round trip and carry the
    process's lifecycle events."""

    def _store_result(
        self, task_id: Any, result: Any, state: str, traceback: Any = None, request: Any = None, **kwargs: Any
    ) -> Any:
        """Celery's ``_store_result`` (the same meta, the same SUCCESS rule) without its read before the write."""
        if self.content_type != "application/json":  # the script reads the stored meta as JSON
            return super()._store_result(task_id, result, state, traceback, request, **kwargs)
        meta = self._get_result_meta(result=result, state=state, traceback=traceback, request=request)
        meta["task_id"] = task_id.decode() if isinstance(task_id, bytes) else str(task_id)
        value = self.encode(meta)
        if isinstance(value, str) and len(value) > self._MAX_STR_VALUE_SIZE:
            raise BackendStoreError("value too large for Redis backend", state=state, task_id=task_id)
        try:
            self.ensure(partial(self._set, unless_succeeded=True), (self.get_key_for_task(task_id), value))
        except BackendStoreError as ex:
            raise BackendStoreError(str(ex), state=state, task_id=task_id) from ex
        return result

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

    def _set(self, key: Any, value: Any, expires: Any = None, unless_succeeded: bool = False) -> None:
        """Celery's ``_set`` (``SETEX`` and ``PUBLISH``); with ``unless_succeeded``, the script that keeps a
        stored SUCCESS instead. Either way with whatever lifecycle events this process has buffered."""
        if expires is None:
            expires = self.expires
        store = partial(self._queue_store, key, value, expires or 0, unless_succeeded)
        events = lifecycle.for_app(self.app)
        target = self._stream_db(events.emitter) if events is not None else None
        if events is None or target is None:
            self._write(store)
            return
        emitter = events.emitter
        staged = events.staged_for(key)
        with emitter.flush_lock:
            batch, keys = emitter.take()
            if not batch and not keys and staged is None:
                self._write(store)
                return
            outcome = [staged.event] if staged is not None else []
            holder: dict[str, tuple[str, int] | None] = {staged.holder: None} if staged is not None else {}
            own = int(self.client.connection_pool.connection_kwargs.get("db", 0))

            def with_events(pipe: Any) -> None:
                store(pipe)
                pipe.execute_command("SELECT", target)
                emitter.queue(pipe, batch + outcome, keys | holder)
                pipe.execute_command("SELECT", own)

            try:
                self._write(with_events)
            except BaseException:
                emitter.put_back(batch, keys)
                raise
            emitter.written += len(batch) + len(outcome)
        if staged is not None:
            events.outcomes_written.add(staged.attempt)

    @staticmethod
    def _queue_store(key: Any, value: Any, expires: int, unless_succeeded: bool, pipe: Any) -> None:
        if unless_succeeded:
            pipe.eval(STORE_UNLESS_SUCCEEDED, 1, key, value, expires)
            return
        if expires:
            pipe.setex(key, expires, value)
        else:
            pipe.set(key, value)
        pipe.publish(key, value)

    def _write(self, queue: Any) -> None:
        """One round trip: a transaction of what ``queue`` puts in the pipeline."""
        with self.client.pipeline() as pipe:
            queue(pipe)
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
