"""Celery's Redis result backend, writing a task's state in one command that also carries the worker's
buffered lifecycle events.

Celery's Redis backend writes a state in two round trips: it reads the stored meta first (a SUCCESS is
never overwritten: a lost worker's late write must not replace it), then ``MULTI``/``SETEX``/``PUBLISH``/
``EXEC``. A task on a worker with lifecycle events also costs the events' writes: the buffered
``task-received`` and ``task-started``, and at ``task_postrun`` a synchronous write of ``task-succeeded``
and the deletion of the message's holder, so that the outcome is in the stream before the message is
acknowledged. :class:`ResultStore` does all of it in one command, the script :data:`STORE_STATE`: the
SUCCESS check, the ``SETEX`` and ``PUBLISH`` (atomically, where Celery's read and write are two commands
another worker can come between), and, when the event stream is a database of the same Redis server (the
default layout: results in db 1, the stream in db 2), whatever the process has buffered (the ``XADD`` commands
and holder writes) and on success the task's ``task-succeeded`` event and its holder's deletion, built
just before the result is stored. The postrun flush then finds nothing to write. A running task's STARTED
waits for the events flusher's next tick and goes with what is buffered then; a task that ends sooner
never writes it (its outcome drops it), which saves a round trip a task (:meth:`ResultStore._defer_started`).
A SUCCESS also acknowledges the task's message when this process holds it (:mod:`.outcome_ack`). The
guarantees stay: every event is written before the message is acknowledged, in the order it was emitted (the emitter's
flush lock is held), and a write that fails puts the buffered events back (the staged outcome is then
emitted by the ``task_success`` handler as before). Measured with ``python -m bench events-cost``
(docs/performance.md).

With the stream on another server, or events off: the state alone, still one command.
"""

from __future__ import annotations

import threading
from functools import cached_property, partial
from typing import Any

import redis
from celery import states
from celery.backends.redis import RedisBackend
from celery.exceptions import BackendStoreError
from redis.commands.core import Script

from shared.cache import same_server
from shared.celery_extensions import events as lifecycle
from shared.celery_extensions import outcome_ack

#: what a deferred STARTED passes as the script's third argument: it never replaces a final state
KEEP_FINAL = 2


# One command for a task's state and whatever lifecycle events the process has buffered (a script's
# SELECT changes the database of the script only, not the connection's). KEYS[1]: the task's result key;
# with a SUCCESS that acknowledges its message (outcome_ack.py), also kombu's unacked index and hash and the
# message's delivery holder in the broker's database. ARGV: the encoded meta (JSON); seconds to keep it (0:
# for good); '1' to keep a stored SUCCESS (Celery's rule: a lost worker's late write must not overwrite a
# success), '2' to keep any final state (a deferred STARTED), '0' to write regardless; with the
# acknowledgement, the broker's database and the delivery tag; the stream's
# database ('' when there is nothing else to write), the stream, its approximate MAXLEN and its entries'
# field; the number of events, the events; then (key, value, ttl) triples for the cache database, the
# value '' for a deletion. Returns 1 when the state was written, 0 when a SUCCESS was kept.
STORE_STATE = (
    """
local written = 1
local current = ARGV[3] ~= '0' and redis.call('GET', KEYS[1])
if current then
  local ok, meta = pcall(cjson.decode, current)
  if ok and type(meta) == 'table' then
    local status = meta['status']
    if status == 'SUCCESS' or (ARGV[3] == '2' and (status == 'FAILURE' or status == 'REVOKED')) then
      written = 0
    end
  end
end
if written == 1 then
  if tonumber(ARGV[2]) > 0 then
    redis.call('SETEX', KEYS[1], ARGV[2], ARGV[1])
  else
    redis.call('SET', KEYS[1], ARGV[1])
  end
  redis.call('PUBLISH', KEYS[1], ARGV[1])
end
local n = 4
if #KEYS == 4 then
  redis.call('SELECT', ARGV[4])
  redis.call('ZREM', KEYS[2], ARGV[5])
  redis.call('HDEL', KEYS[3], ARGV[5])
  redis.call('DEL', KEYS[4])
  n = 6
end
if ARGV[n] == '' then return written end
redis.call('SELECT', ARGV[n])
"""
    + lifecycle.WRITE_EVENTS_LUA
    + "return written\n"
)


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
        """Celery's ``_store_result`` (the same meta, the same SUCCESS rule) without its read before the write;
        a running task's STARTED is put off (:meth:`_defer_started`)."""
        if self.content_type != "application/json":  # the script reads the stored meta as JSON
            return super()._store_result(task_id, result, state, traceback, request, **kwargs)
        meta = self._get_result_meta(result=result, state=state, traceback=traceback, request=request)
        meta["task_id"] = task_id.decode() if isinstance(task_id, bytes) else str(task_id)
        value = self.encode(meta)
        if isinstance(value, str) and len(value) > self._MAX_STR_VALUE_SIZE:
            raise BackendStoreError("value too large for Redis backend", state=state, task_id=task_id)
        key = self.get_key_for_task(task_id)
        if state == states.STARTED and self._defer_started(meta["task_id"], key, value):
            return result
        try:
            self.ensure(partial(self._set, unless_succeeded=True), (key, value))
        except BackendStoreError as ex:
            raise BackendStoreError(str(ex), state=state, task_id=task_id) from ex
        return result

    def _defer_started(self, task_id: str, key: Any, value: Any) -> bool:
        """Put a running task's STARTED off to the events flusher's next tick (within two flush intervals),
        with whatever is buffered then; its outcome, written first, drops it (:meth:`_set`). Most tasks end
        within the interval: their STARTED is never written and the worker saves a round trip a task. The
        task's ``task-started`` event and the history say STARTED at once either way. Only in a worker task
        whose events go to this server; a write the flusher makes never replaces a final state."""
        events = lifecycle.for_app(self.app)
        task = self.app.current_worker_task
        if events is None or task is None or task.request.id != task_id:
            return False
        target = self._stream_db(events.emitter)
        if target is None:
            return False
        emitter = events.emitter
        state = [value, int(self.expires or 0), KEEP_FINAL]

        def write(batch: list[str], keys: dict[str, tuple[str, int] | None]) -> None:
            self._store([key], state, [target, *emitter.script_args(batch, keys)] if batch or keys else None)

        emitter.defer(key, write)
        return True

    def mark_as_done(
        self,
        task_id: str,
        result: Any,
        request: Any = None,
        store_result: bool = True,
        state: str = states.SUCCESS,
    ) -> None:
        """Celery's, with the task's task-succeeded event staged for the write, and its message's
        acknowledgement (:mod:`~shared.celery_extensions.outcome_ack`) when this process holds it."""
        task = self.app.current_worker_task
        if state != states.SUCCESS or not store_result or task is None or task.request.id != task_id:
            super().mark_as_done(task_id, result, request, store_result, state)
            return
        events = lifecycle.for_app(self.app)
        key = self.get_key_for_task(task_id)
        if events is not None:
            events.stage_success(task, result, key)
        self._local.ack = (key, outcome_ack.find(task_id, self.client.connection_pool))
        try:
            super().mark_as_done(task_id, result, request, store_result, state)
        finally:
            self._local.ack = None
            if events is not None:
                events.unstage()

    def _set(self, key: Any, value: Any, expires: Any = None, unless_succeeded: bool = False) -> None:
        """Celery's ``_set`` (``SETEX`` and ``PUBLISH``), with ``unless_succeeded`` keeping a stored SUCCESS,
        the message's acknowledgement staged by :meth:`mark_as_done` and whatever lifecycle events this
        process has buffered: one command (:data:`STORE_STATE`). It overtakes the task's deferred STARTED."""
        if expires is None:
            expires = self.expires
        staged_ack: tuple[Any, outcome_ack.OutcomeAck | None] | None = getattr(self._local, "ack", None)
        ack = staged_ack[1] if staged_ack is not None and staged_ack[0] == key else None
        keys, state = [key], [value, int(expires or 0), int(unless_succeeded)]
        if ack is not None:
            keys, state = [key, *ack.keys], [*state, ack.db, ack.tag]
        events = lifecycle.for_app(self.app)
        target = self._stream_db(events.emitter) if events is not None else None
        if events is None or target is None:
            self._store(keys, state)
        else:
            self._write_with_events(events, target, keys, state)
        if ack is not None:
            ack.done()

    def _write_with_events(
        self, events: lifecycle.LifecycleEvents, target: int, keys: list[Any], state: list[Any]
    ) -> None:
        """The state and whatever the process has buffered, with the staged task-succeeded and its holder's
        deletion when this is that task's SUCCESS."""
        emitter = events.emitter
        staged = events.staged_for(keys[0])
        with emitter.flush_lock:
            emitter.supersede(keys[0])
            batch, writes = emitter.take()
            if not batch and not writes and staged is None:
                self._store(keys, state)
                return
            outcome = [staged.event] if staged is not None else []
            holder: dict[str, tuple[str, int] | None] = {staged.holder: None} if staged is not None else {}
            try:
                self._store(keys, state, [target, *emitter.script_args(batch + outcome, writes | holder)])
            except BaseException:
                emitter.put_back(batch, writes)
                raise
            emitter.written += len(batch) + len(outcome)
        if staged is not None:
            events.outcomes_written.add(staged.attempt)

    def _store(self, keys: list[Any], state: list[Any], carried: list[Any] | None = None) -> None:
        """One :data:`STORE_STATE` command: ``state`` under ``keys``, and ``carried`` (the stream's database
        and :meth:`~shared.celery_extensions.events.EventEmitter.script_args`) when events or key writes go
        with it."""
        self._script(keys=keys, args=[*state, *(carried or [""])], client=self.client)

    @cached_property
    def _local(self) -> threading.local:
        """This thread's acknowledgement staged by :meth:`mark_as_done`, as (result key, ack or None)."""
        return threading.local()

    @cached_property
    def _script(self) -> Script:
        """:data:`STORE_STATE`, called by its digest (``EVALSHA``; loaded again if the server lost it)."""
        return Script(self.client, STORE_STATE)

    def _stream_db(self, emitter: lifecycle.EventEmitter) -> int | None:
        """The event stream's database when it is on this backend's Redis server, else None."""
        cache: dict[str, int | None] = self.__dict__.setdefault("_events_db", {})
        url = emitter.url
        if url not in cache:
            theirs = redis.Redis.from_url(url).connection_pool
            same = same_server(self.client.connection_pool, theirs)
            cache[url] = int(theirs.connection_kwargs.get("db", 0)) if same else None
        return cache[url]
