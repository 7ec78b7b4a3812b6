"""Malformed broker messages: rejected, recorded as dead letters, and never fatal to a worker.

A message that a worker cannot run ends here instead of crashing the worker or vanishing unseen:

- not even a kombu envelope (not JSON, not UTF-8, not an object, no ``properties``, a body that does not
  decode): kombu's Redis transport would raise inside the worker's event loop, and Celery stops the whole
  worker ("Unrecoverable error"). :class:`RedisTransport` catches that for the one message, records it and
  goes on consuming;
- a task message whose headers have the wrong types (no ``id``, ``retries`` that is not a count ...) or
  whose body is not ``[args, kwargs, options]``, and one of Celery's built-in tasks: Celery would raise in
  its handler (a KeyError counts as a lost connection, so the message came back for ever) or fail later
  outside the task and leave the message unacknowledged. :class:`Consumer` checks them first
  (:func:`header_problem`, :func:`body_problem`) and drops them; so also a canvas message (one whose options
  carry callbacks, errbacks, a chain or a chord: workflows are mallops' own, ``shared/workflows.py``);
- an envelope whose body cannot be deserialised (``on_decode_error``): Celery logs and acknowledges it
  without any signal; :class:`Consumer` also records it;
- no ``task`` header / unknown format (``task_rejected``) and an unregistered task name (``task_unknown``):
  Celery rejects them; the signal handlers connected by :func:`configure` record them.

Each is kept whole, with an id, by :mod:`shared.dead_letter_store` in the cache Redis (the message's
headers, body up to ``MALLOPS_MAX_BODY_BYTES``, content type and properties; the reason, the queue, the
task and its arguments), for ``/api/v1/dead-letters`` to show, replay or drop. A message that names a task
id also gets a ``task-rejected`` lifecycle event, so the monitor's history has a REJECTED row for it with
the reason. Messages whose arguments do not fit the task's catalog model are not dead letters:
:class:`~shared.celery_extensions.task_base.MallopsTask` fails them (FAILURE, ``InvalidTaskArguments``).

The same transport also rides out a Redis restart under load (issue 12): :meth:`Channel.close` and
:class:`QoS`, and its channel takes messages with :mod:`shared.celery_extensions.reliable_pop`, whose pop
records the message in ``unacked`` in the same command (docs/reliability.md).
"""

from __future__ import annotations

import json
import logging
import os
import threading
from queue import Empty
from typing import Any

import redis
from celery import Celery, signals
from celery.worker.consumer import Consumer as CeleryConsumer
from kombu.transport import redis as kombu_redis
from kombu.transport import virtual

from shared import dead_letter_store
from shared.cache import consumer_loop_client
from shared.celery_extensions import events, redelivery, reliable_pop
from shared.celery_extensions.config import find_extensions
from shared.contracts import OWNER_HEADER
from shared.settings import Settings

log = logging.getLogger("mallops.dead_letters")

REPLAYED_PROPERTIES = ("correlation_id", "reply_to", "priority")  # what a replay publishes again
DEFAULT_MAX_BODY_BYTES: int = Settings.model_fields["max_body_bytes"].default

# the broker transport options that tell RedisTransport where to record dead letters (the cache Redis)
# and how much of a body to keep
CACHE_URL_OPTION = "mallops_cache_url"
MAX_BODY_OPTION = "mallops_max_body_bytes"


def _redis(url: str) -> redis.Redis[bytes]:
    return consumer_loop_client(url)


def _app_target(app: Any) -> tuple[str | None, int]:
    """The cache Redis URL and body limit of ``app``'s settings (no URL for an app the factory did not build)."""
    extensions = find_extensions(app)
    if extensions is None:
        return None, DEFAULT_MAX_BODY_BYTES
    return extensions.settings.cache_redis_url, extensions.settings.max_body_bytes


def record(
    reason: str,
    *,
    url: str | None,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    queue: str | None = None,
    headers: Any = None,
    body: Any = None,
    exception: str = "MalformedMessage",
    message: Any = None,
    content_type: str | None = None,
    content_encoding: str | None = None,
) -> None:
    """Keep a dead letter for a message that was dropped in the cache Redis at ``url``; never raises (a
    worker must go on).

    ``message`` is the kombu message when there is one (its headers, body, content type and properties
    are kept); otherwise ``headers`` and ``body`` are what is known, and without headers the body is
    taken as something that was not even a message envelope."""
    properties: dict[str, Any] = {}
    if message is not None:
        headers = getattr(message, "headers", headers)
        body = getattr(message, "body", body)
        content_type = getattr(message, "content_type", None)
        content_encoding = getattr(message, "content_encoding", None)
        props = getattr(message, "properties", None) or {}
        properties = {key: props[key] for key in REPLAYED_PROPERTIES if props.get(key) is not None}
    try:
        data = dead_letter_store.as_bytes(body) or b""
        decoded = dead_letter_store.decode_body_arguments(content_type, data) if isinstance(headers, dict) else None
        letter, stored = dead_letter_store.build(
            reason,
            exception=exception,
            queue=str(queue) if queue else None,
            headers=headers,
            body=data,
            content_type=content_type,
            content_encoding=content_encoding,
            properties=properties,
            envelope=isinstance(headers, dict) and (message is not None or content_type is not None),
            max_body_bytes=max_body_bytes,
            arguments=events.capped_arguments(*decoded) if decoded else None,
        )
    except Exception:  # never let the record of a bad message stop the worker
        log.exception("could not describe the dead letter from queue %s: %s", queue, reason)
        return
    log.error(
        "dead letter %s from queue %s (task %s, id %s): %s", letter.id, queue, letter.task, letter.task_id, reason
    )
    if url is None:
        log.error("no cache Redis to record the dead letter in (an app not built by create_celery_app)")
        return
    try:
        dead_letter_store.add(_redis(url), letter, stored)
    except redis.RedisError as exc:
        log.error("could not record the dead letter in Redis: %s", exc)


def reject(
    reason: str,
    *,
    url: str | None,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    app: Any = None,
    queue: str | None = None,
    headers: Any = None,
    exception: str = "MalformedMessage",
    message: Any = None,
) -> None:
    """Record a dead letter and, if the message names a task id, a ``task-rejected`` event for its history
    (with ``app``'s events, or the process's newest app's when the caller does not know its app)."""
    record(
        reason,
        url=url,
        max_body_bytes=max_body_bytes,
        queue=queue,
        headers=headers,
        exception=exception,
        message=message,
    )
    _history_row(reason, app, queue, getattr(message, "headers", headers), exception)


def _history_row(reason: str, app: Any, queue: str | None, headers: Any, exception: str) -> None:
    """A ``task-rejected`` event when the message names a task id: its history row shows the reason."""
    lifecycle = events.for_app(app) if app is not None else events.newest()
    if lifecycle is not None and isinstance(headers, dict) and isinstance(headers.get("id"), str):
        lifecycle.emit_rejected(
            headers["id"],
            name=headers.get("task"),
            queue=queue,
            owner=headers.get(OWNER_HEADER),
            exception=exception,
            error=reason,
        )


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


# What a worker could not put back while Redis was away, for its next channel to put back (Channel.__init__):
# messages a BRPOP took off their queue whose record in ``unacked`` failed (pid, payload, exchange, routing
# key), and the delivery tags of unacknowledged messages that their closing channel could not restore (pid,
# tag). The pid keeps a forked pool process from putting back its parent's.
_unrecorded: list[tuple[int, Any, str, str]] = []
_unrestored: list[tuple[int, str]] = []
_unsent_acks: list[tuple[int, str]] = []  # (pid, delivery tag) of finished tasks whose acknowledgement failed
_pending_lock = threading.Lock()


class QoS(kombu_redis.QoS):
    """kombu's Redis ack emulation, except that nothing it cannot write while Redis is away is forgotten.

    - kombu takes a message off its queue with BRPOP and records it in the ``unacked`` hash in a second
      round trip (only where :mod:`~shared.celery_extensions.reliable_pop` cannot be used: its pop records
      the message itself, and :meth:`append` then only notes it in memory). When the connection breaks
      in between (a reply already in the socket when Redis stops, read by ``Channel.close``), the record
      fails and the message is in neither place: nothing would ever deliver it again.
    - A closing channel puts its unacknowledged messages back on their queues (``restore_unacked``), and
      Celery drops the ones it had not started yet, counting on that. With Redis away the restore fails and
      they waited in ``unacked`` for the visibility timeout (2 hours).

    - The acknowledgement of a task that finished while Redis was away failed, and its message was put
      back with them: the task ran again.
    - A closing channel put back the messages of the tasks still running too (at once when Redis answered,
      or at the first sweep after their end, racing with their acknowledgement): each ran a second time
      (the notifier's duplicates, issue 12). They are left to their own acknowledgement or rejection.

    All four were found by tests/reliability/test_redis_restart_under_load.py. Here the messages are kept
    and put back, and the acknowledgements sent, by the next channel of the process or its next sweep, as
    soon as Redis answers again; a task the worker is still running is not put back.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[no-untyped-call]
        # tags whose entries the script that stored their task's SUCCESS removed (outcome_ack.py)
        self.acked_with_outcome: set[str] = set()

    def _done_with_outcome(self, delivery_tag: Any) -> bool:
        """Whether the task's SUCCESS write already removed this message's entries (then only kombu's
        in-memory bookkeeping is left)."""
        if not self.acked_with_outcome:
            return False
        tag = delivery_tag.decode() if isinstance(delivery_tag, bytes) else str(delivery_tag)
        if tag not in self.acked_with_outcome:
            return False
        self.acked_with_outcome.discard(tag)
        virtual.QoS.ack(self, delivery_tag)  # type: ignore[no-untyped-call]
        return True

    def append(self, message: Any, delivery_tag: Any) -> None:
        take_recorded = getattr(self.channel, "take_recorded", None)
        if take_recorded is not None and take_recorded(delivery_tag):  # the pop script recorded it
            if getattr(self.channel, "names_holder", False):  # and its holder: no receipt needed (events.py)
                setattr(message, redelivery.HELD_BY_POP, True)
            virtual.QoS.append(self, message, delivery_tag)  # type: ignore[no-untyped-call]
            return
        try:
            super().append(message, delivery_tag)  # type: ignore[no-untyped-call]
        except self.channel.connection_errors:
            delivery = message.delivery_info
            with _pending_lock:
                _unrecorded.append((os.getpid(), message._raw, delivery["exchange"], delivery["routing_key"]))
            log.warning(
                "a message taken off queue %s could not be recorded; it goes back later", delivery["routing_key"]
            )
            raise

    def ack(self, delivery_tag: Any) -> None:
        if self._done_with_outcome(delivery_tag):
            return
        try:
            super().ack(delivery_tag)  # type: ignore[no-untyped-call]
        except self.channel.connection_errors:  # the task is done: acknowledge it later rather than run it again
            with _pending_lock:
                _unsent_acks.append((os.getpid(), str(delivery_tag)))
            raise

    def reject(self, delivery_tag: Any, requeue: bool = False) -> None:
        if self._done_with_outcome(delivery_tag):  # its task succeeded: nothing to put back
            return
        try:
            super().reject(delivery_tag, requeue=requeue)  # type: ignore[no-untyped-call]
        except self.channel.connection_errors:  # done with it: put it back, or drop it, once Redis answers
            with _pending_lock:
                (_unrestored if requeue else _unsent_acks).append((os.getpid(), str(delivery_tag)))
            raise

    def _remove_from_indices(self, delivery_tag: Any, pipe: Any = None) -> Any:
        """kombu's removal of a message's ``unacked`` entry (acknowledged, rejected or put back), with the
        holder the reliable pop wrote beside it (:func:`~shared.celery_extensions.redelivery.delivery_holder_key`)."""
        pipe = super()._remove_from_indices(delivery_tag, pipe)  # type: ignore[no-untyped-call]
        return pipe.delete(redelivery.delivery_holder_key(delivery_tag))

    def restore_visible(self, *args: Any, **kwargs: Any) -> Any:
        """Also put back, at every sweep, what a closed channel left for later (:meth:`Channel._put_back_pending`)."""
        self.channel._put_back_pending()
        return super().restore_visible(*args, **kwargs)  # type: ignore[no-untyped-call]

    def restore_unacked(self, client: Any = None) -> None:
        """kombu's restore of a closing channel's unacknowledged messages, except the tasks the worker is
        still running: each one's own acknowledgement (or rejection) decides, sent later if it fails (kombu
        put them back at once, and they ran a second time; checking them again at a later sweep raced with
        their acknowledgement, which Celery sends a moment after it stops counting the task as running)."""
        running = _running_tags()
        kept = [tag for tag in self._delivered if str(tag) in running]
        for tag in kept:
            self._delivered.pop(tag, None)
        if kept:
            log.info("%d unacknowledged message(s) of running tasks not put back: theirs to acknowledge", len(kept))
        try:
            super().restore_unacked(client)  # type: ignore[no-untyped-call]
        except self.channel.connection_errors:
            with _pending_lock:
                _unrestored.extend((os.getpid(), str(tag)) for tag in self._delivered)
            log.warning("%d unacknowledged message(s) could not be restored; they go back later", len(self._delivered))
            raise


def _running_tags() -> set[str]:
    """The delivery tags of the tasks this worker process is running (none outside a worker)."""
    from celery.worker import state

    tags = set()
    for request in list(state.active_requests):
        tag = getattr(getattr(request, "message", None), "delivery_tag", None)
        if tag is not None:
            tags.add(str(tag))
    return tags


class Channel(reliable_pop.ReliablePopChannel):
    Message = Message
    QoS = QoS

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._put_back_pending()  # Redis answered: the connection is back

    def _put_back_pending(self) -> None:
        pid = os.getpid()
        with _pending_lock:
            unrecorded = [entry for entry in _unrecorded if entry[0] == pid]
            unrestored = [entry for entry in _unrestored if entry[0] == pid]
            acks = [entry for entry in _unsent_acks if entry[0] == pid]
            _unrecorded[:] = [entry for entry in _unrecorded if entry[0] != pid]
            _unrestored[:] = [entry for entry in _unrestored if entry[0] != pid]
            _unsent_acks[:] = [entry for entry in _unsent_acks if entry[0] != pid]
        unanswered = reliable_pop.take_unanswered()
        if not unrecorded and not unrestored and not acks and not unanswered:
            return
        done = {tag for _, tag in acks}
        unrestored = [entry for entry in unrestored if entry[1] not in done]  # finished: not to be run again
        count = len(unrecorded) + len(unrestored)
        try:
            with self.conn_or_acquire() as client:
                count += reliable_pop.put_back_unanswered(self, client, unanswered)
                if acks:
                    pipe = client.pipeline()
                    for _, tag in acks:
                        self.qos._remove_from_indices(tag, pipe)
                    pipe.execute()
                    acks = []
                if unrecorded:
                    pipe = client.pipeline()
                    for _, payload, exchange, routing_key in unrecorded:
                        self._do_restore_message(payload, exchange, routing_key, pipe)  # type: ignore[no-untyped-call]
                    pipe.execute()
                    unrecorded = []
                running = _running_tags()  # acknowledged by their old channel when done: not run twice
                later = [entry for entry in unrestored if entry[1] in running]
                unrestored = [entry for entry in unrestored if entry[1] not in running]
                while unrestored:  # each one only if still unacknowledged: a task that finished meanwhile is not
                    self.qos.restore_by_tag(unrestored[0][1], client)
                    unrestored.pop(0)
                if later:  # checked again at the next sweep: put back then if their acknowledgement failed
                    with _pending_lock:
                        _unrestored.extend(later)
                    count -= len(later)
        except self.connection_errors as exc:
            reliable_pop.keep_unanswered(unanswered)
            with _pending_lock:  # the next channel tries again
                _unrecorded[:0] = unrecorded
                _unrestored[:0] = unrestored
                _unsent_acks[:0] = acks
            log.warning("could not put back %d message(s) yet: %s", len(unrecorded) + len(unrestored), exc)
            return
        if count:
            log.warning("put back %d message(s) that could not be while Redis was away", count)

    def close(self) -> None:
        """kombu's close, except that a connection error while it drains a pending BRPOP reply does not
        leave the channel half closed.

        kombu's ``Channel.close`` first reads the reply of a BRPOP still in flight (celery/kombu#1733); when
        the connection is broken (Redis restarting), that read raises before anything is closed. Celery's
        consumer then drops the transport's connection (``Connection.collect``), and its next close of the
        same channel puts back the unacknowledged messages through a new connection pool built from that
        connection, now None: ``AttributeError: 'NoneType' object has no attribute 'hostname'`` in
        ``_connparams`` (celery/kombu#582), which stops the worker. A reply lost with its connection cannot
        be read anyway: close the channel as if there had been none.
        """
        if self._in_poll:
            try:
                self._brpop_read()
            except Empty:
                pass
            except self.connection_errors as exc:
                log.info("the connection ended with a pop or its wait pending (a lost pop goes back later): %s", exc)
            self._in_poll = None  # read, or only pushes were to come (the reliable pop's idle wait)
            self._pop_state = None
        super().close()  # type: ignore[no-untyped-call]

    def _connparams(self, asynchronous: bool = False) -> Any:
        """kombu's connection parameters; a connection error instead of an AttributeError when the channel's
        connection is already closed (celery/kombu#582), so that every caller treats it as the lost
        connection it is and the worker reconnects."""
        transport = self.connection
        if transport is None or transport.client is None:
            raise redis.ConnectionError("the connection to the broker is closed")
        return super()._connparams(asynchronous=asynchronous)  # type: ignore[no-untyped-call]

    def _brpop_read(self, **options: Any) -> Any:
        self.connection.handed_over = False
        try:
            return super()._brpop_read(**options)
        except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError, kombu's object_hook
            if self.connection.handed_over:
                raise  # not the envelope: something further on, which is not ours to swallow
            # the round-robin cycle has just moved the queue it read from to its end
            queue = self._queue_cycle.items[-1] if self._queue_cycle.items else None
            raw = getattr(exc, "doc", None) or getattr(exc, "object", None)
            url, max_body = _transport_target(self.connection)
            record(f"not a JSON message envelope: {exc}", url=url, max_body_bytes=max_body, queue=queue, body=raw)
            return True

    def _get(self, queue: Any, timeout: Any = None) -> Any:
        try:  # nothing is delivered here: a ValueError can only be the envelope's
            return super()._get(queue)  # type: ignore[no-untyped-call]
        except ValueError as exc:
            url, max_body = _transport_target(self.connection)
            record(
                f"not a JSON message envelope: {exc}",
                url=url,
                max_body_bytes=max_body,
                queue=queue,
                body=getattr(exc, "doc", None) or getattr(exc, "object", None),
            )
            raise Empty() from exc


class RedisTransport(kombu_redis.Transport):
    """kombu's Redis transport, except that one malformed message cannot stop the consumer, nor can a
    connection lost while a BRPOP is pending (:meth:`Channel.close`)."""

    Channel = Channel
    handed_over = False

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[no-untyped-call]
        self.cycle: Any = reliable_pop.Poller()  # type: ignore[no-untyped-call]  # the reliable pop at each turn

    def _deliver(self, message: Any, queue: str) -> None:
        self.handed_over = True
        try:
            super()._deliver(message, queue)  # type: ignore[no-untyped-call]
        except MalformedEnvelope as exc:
            headers = message.get("headers") if isinstance(message, dict) else None
            url, max_body = _transport_target(self)
            record(str(exc), url=url, max_body_bytes=max_body, queue=queue, body=message)  # kept as it came
            _history_row(str(exc), None, queue, headers, "MalformedMessage")


# -- the worker's consumer and signals -------------------------------------------------------------


class Consumer(CeleryConsumer):  # type: ignore[misc]
    """Celery's consumer, except that no single message can stop or loop it.

    Celery's handler of a received message raises on some malformed headers (a ``task`` header without an
    ``id``: KeyError; a ``timelimit`` that is not a pair: TypeError ...). A KeyError counts as a lost
    connection for kombu's Redis transport: the consumer reconnects and restores the unacknowledged message,
    which fails again, for ever; any other error stops the worker. Here such a message is dropped
    (rejected without requeue) and recorded as a dead letter. Real connection errors still propagate.
    A message whose body cannot be decoded is also recorded (Celery only logs it).

    Its connection also names this worker as the holder of what its reliable pop takes
    (:data:`~shared.celery_extensions.reliable_pop.HOLDER_OPTION`), when its liveness is written (events on).
    """

    def connection_for_read(self, heartbeat: Any = None) -> Any:
        connection = super().connection_for_read(heartbeat)
        extensions = find_extensions(self.app)
        if extensions is not None and extensions.events is not None and self.hostname:
            # a copy: the options may be the app's own dict, shared by every connection it makes
            options = dict(connection.transport_options or {})
            options[reliable_pop.HOLDER_OPTION] = str(self.hostname)
            connection.transport_options = options
        return connection

    def create_task_handler(self, *args: Any, **kwargs: Any) -> Any:
        handle = super().create_task_handler(*args, **kwargs)
        network_errors = tuple(
            error for error in (*self.connection_errors, *self.channel_errors) if not issubclass(error, LookupError)
        )

        def on_task_received(message: Any) -> Any:
            problem = header_problem(getattr(message, "headers", None))
            if problem is not None:
                self._drop(message, problem, "InvalidTaskHeaders")
                return None
            problem = body_problem(message)
            if problem is not None:
                self._drop(message, problem, "InvalidTaskBody")
                return None
            try:
                return handle(message)
            except network_errors:
                raise
            except Exception as exc:
                self._drop(
                    message, f"the worker cannot handle this message: {type(exc).__name__}: {exc}", type(exc).__name__
                )
                return None

        return on_task_received

    def _drop(self, message: Any, reason: str, exception: str) -> None:
        url, max_body = _app_target(self.app)
        reject(
            reason,
            url=url,
            max_body_bytes=max_body,
            app=self.app,
            queue=_queue(message),
            exception=exception,
            message=message,
        )
        try:
            if not message.acknowledged:
                message.reject(requeue=False)
        except Exception as error:  # the connection went away: it will be redelivered, and dropped again
            log.warning("could not drop the malformed message: %s", error)

    def on_decode_error(self, message: Any, exc: Exception) -> None:
        super().on_decode_error(message, exc)
        delivery = getattr(message, "delivery_info", None) or {}
        url, max_body = _app_target(self.app)
        reject(
            f"the body cannot be decoded ({message.content_type}): {exc}",
            url=url,
            max_body_bytes=max_body,
            app=self.app,
            queue=delivery.get("routing_key"),
            exception=type(exc).__name__,
            message=message,
        )


_OPTIONAL_TEXT_HEADERS = (
    "root_id",
    "parent_id",
    "group",
    "eta",
    "expires",
    "argsrepr",
    "kwargsrepr",
    "origin",
    "shadow",
    "lang",
    OWNER_HEADER,
)


def header_problem(headers: Any) -> str | None:
    """What is wrong with a task message's protocol-2 headers, or None (also for messages that are not
    protocol 2, which Celery rejects on its own). A wrong type here would make Celery fail later, in a
    callback, without acknowledging the message: it would hold a worker slot until a restart, then loop."""
    if not isinstance(headers, dict) or "task" not in headers:
        return None
    if not isinstance(headers["task"], str) or not headers["task"]:
        return "the task header is not a task name"
    if headers["task"].startswith("celery."):
        return f"{headers['task']} is one of Celery's built-in tasks, which mallops never sends through a queue"
    if not isinstance(headers.get("id"), str) or not headers["id"]:
        return "the id header is missing or not a string"
    for key in _OPTIONAL_TEXT_HEADERS:
        if headers.get(key) is not None and not isinstance(headers[key], str):
            return f"the {key} header is not a string"
    retries = headers.get("retries")
    if retries is not None and (type(retries) is not int or retries < 0):
        return "the retries header is not a count"
    limits = headers.get("timelimit")
    if limits is not None and not (
        isinstance(limits, list | tuple)
        and len(limits) == 2
        and all(limit is None or (type(limit) in (int, float) and limit > 0) for limit in limits)
    ):
        return "the timelimit header is not a pair of (soft, hard) seconds"
    return None


# the options of a protocol-2 body that make the worker publish further tasks (Celery's canvas): refused, so
# that no publisher can chain arbitrary tasks behind a valid one (shared/workflows.py orchestrates instead)
CANVAS_OPTIONS = ("callbacks", "errbacks", "chain", "chord")


def body_problem(message: Any) -> str | None:
    """What is wrong with the shape of a JSON protocol-2 body (``[args, kwargs, embed]``), or None. Celery
    checks it only in the pool, where a kwargs that is not a mapping fails outside the task and leaves
    the message unacknowledged. A body that is not JSON is left to Celery (``on_decode_error``)."""
    headers = getattr(message, "headers", None)
    if not isinstance(headers, dict) or "task" not in headers or message.content_type != "application/json":
        return None
    try:
        body = json.loads(message.body)
    except (TypeError, ValueError):
        return None
    if not (
        isinstance(body, list)
        and len(body) == 3
        and isinstance(body[0], list)
        and isinstance(body[1], dict)
        and (body[2] is None or isinstance(body[2], dict))
    ):
        return "the body is not [args (a list), kwargs (an object), options (an object)]"
    canvas = [key for key in CANVAS_OPTIONS if body[2] and body[2].get(key)]
    if canvas:
        return (
            f"a canvas message ({', '.join(canvas)}): mallops does not run Celery's chains, groups or chords; "
            "workflows go through POST /api/v1/workflows"
        )
    return None


def _queue(message: Any) -> str | None:
    delivery = getattr(message, "delivery_info", None) or {}
    routing_key = delivery.get("routing_key")
    return str(routing_key) if routing_key else None


def _on_rejected(sender: Any = None, message: Any = None, exc: Any = None, **_: Any) -> None:
    reason = f"rejected: {exc}" if exc is not None else "rejected: not a task message (no task name)"
    url, max_body = _app_target(getattr(sender, "app", None))
    record(
        reason,
        url=url,
        max_body_bytes=max_body,
        queue=_queue(message),
        exception=type(exc).__name__ if exc is not None else "UnknownFormat",
        message=message,
    )


def _on_unknown(sender: Any = None, message: Any = None, exc: Any = None, name: Any = None, **_: Any) -> None:
    url, max_body = _app_target(getattr(sender, "app", None))
    record(
        f"unknown task {name!r}",
        url=url,
        max_body_bytes=max_body,
        queue=_queue(message),
        exception="NotRegistered",
        message=message,
    )


def _transport_target(transport: Any) -> tuple[str | None, int]:
    """The cache Redis and body limit :func:`configure` put into the broker transport options of a
    RedisTransport."""
    options = getattr(getattr(transport, "client", None), "transport_options", None) or {}
    url = options.get(CACHE_URL_OPTION)
    max_body = options.get(MAX_BODY_OPTION)
    return (
        url if isinstance(url, str) else None,
        max_body if isinstance(max_body, int) else DEFAULT_MAX_BODY_BYTES,
    )


def configure(app: Celery, settings: Settings) -> None:
    """Use the dead-lettering transport (Redis brokers) and consumer, and record rejected messages."""
    if str(app.conf.broker_url or "").split("://", 1)[0] in ("redis", "rediss"):
        app.conf.broker_transport = f"{__name__}:RedisTransport"
        options = dict(app.conf.broker_transport_options or {})
        options[CACHE_URL_OPTION] = settings.cache_redis_url
        options[MAX_BODY_OPTION] = settings.max_body_bytes
        app.conf.broker_transport_options = options
    app.conf.worker_consumer = f"{__name__}:Consumer"
    signals.task_rejected.connect(_on_rejected, weak=False, dispatch_uid="mallops.dead_letters.rejected")
    signals.task_unknown.connect(_on_unknown, weak=False, dispatch_uid="mallops.dead_letters.unknown")
