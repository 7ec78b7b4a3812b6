"""Publishing task messages from the event loop: Celery builds them, the gateway's asyncio Redis client pushes them.

Through kombu, every submission went to a worker thread (the Redis client there blocks), through kombu's
Producer and Channel, and out on a socket of its own: under load most of the gateway's CPU per request
(see docs/performance.md). Here the message is the one Celery makes (``app.amqp.create_task_message``,
protocol 2, the signals ``before_task_publish`` and ``after_task_publish`` sent as Celery sends them), in
the envelope kombu's Redis transport writes (:func:`envelope`: JSON with a base64 body, the
``delivery_info``, a delivery tag) and LPUSHed onto the list kombu would choose (the queue, or its
priority sub-list). A batch is one pipelined round trip. With the Redis transport a publish is complete
when Redis has answered the LPUSH: the confirmation a 202 promises.

``tests/services/gateway/test_broker.py`` compares the envelope with what kombu publishes, field by field,
and real workers consume what this module sends in every gateway test. On any other broker (RabbitMQ,
``deploy/compose.rabbitmq.yaml``), or a Redis broker with another key layout, :class:`KombuPublisher`
publishes through kombu in a worker thread, as the gateway did before.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import uuid
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol

import redis
import redis.asyncio as aioredis
from celery import Celery, signals
from kombu.serialization import dumps as kombu_dumps
from starlette.concurrency import run_in_threadpool

from shared.cache import same_server
from shared.contracts import priority_queue_key

MIN_PRIORITY, MAX_PRIORITY, DEFAULT_PRIORITY = 0, 9, 0
PERSISTENT = 2


def message_priority(priority: Any) -> int:
    """The priority kombu stores and routes by: an int from 0 to 9 (0 when missing or not a number)."""
    if priority is None:  # the usual case, without the cost of raising TypeError
        return DEFAULT_PRIORITY
    try:
        return max(min(int(priority), MAX_PRIORITY), MIN_PRIORITY)
    except (TypeError, ValueError):
        return DEFAULT_PRIORITY


def delivery_tags(count: int) -> list[str]:
    """``count`` random UUID4 strings from one call to the OS's random source."""
    raw = os.urandom(16 * count)
    return [str(uuid.UUID(bytes=raw[i * 16 : (i + 1) * 16], version=4)) for i in range(count)]


def envelope(
    body: Any, headers: dict[str, Any], properties: dict[str, Any], queue: str, priority: int | None, delivery_tag: str
) -> str:
    """The JSON kombu's Redis transport stores for a message published to ``queue`` (anonymous direct
    exchange, routing key = queue name), with ``body`` serialised as JSON and base64-encoded."""
    content_type, content_encoding, payload = kombu_dumps(body, serializer="json")  # type: ignore[no-untyped-call]
    data = payload.encode(content_encoding) if isinstance(payload, str) else payload
    props = dict(properties)
    props.update(
        delivery_mode=PERSISTENT,
        delivery_info={"exchange": "", "routing_key": queue},
        priority=priority or DEFAULT_PRIORITY,
        body_encoding="base64",
        delivery_tag=delivery_tag,
    )
    return json.dumps(
        {
            "body": base64.b64encode(data).decode("ascii"),
            "content-encoding": content_encoding,
            "content-type": content_type,
            "headers": headers,
            "properties": props,
        }
    )


class TaskMessage:
    """One task to publish: what :meth:`Publisher.publish` needs of a validated submission."""

    __slots__ = ("countdown", "eta", "kwargs", "kwargs_repr", "name", "priority", "queue", "task_id")

    def __init__(
        self,
        task_id: str,
        name: str,
        queue: str,
        kwargs: dict[str, Any],
        kwargs_repr: str,
        countdown: float | None = None,
        eta: Any = None,
        priority: int | None = None,
    ) -> None:
        self.task_id, self.name, self.queue = task_id, name, queue
        self.kwargs, self.kwargs_repr = kwargs, kwargs_repr
        self.countdown, self.eta, self.priority = countdown, eta, priority


# kombu Redis transport options that change where or how a message is stored: this module writes kombu's
# defaults, so an app configured with any of them publishes through kombu instead
REDIS_LAYOUT_OPTIONS = ("global_keyprefix", "priority_steps", "sep", "queue_order_strategy")
# kombu path: a pooled connection may have gone stale: one immediate reconnect, then give up (fast 503)
PUBLISH_RETRY_POLICY = {"max_retries": 1, "interval_start": 0, "interval_step": 0.2, "interval_max": 0.2}
POOL_TIMEOUT = 5.0


class Outgoing:
    """Messages built for the broker: what to LPUSH where, and what ``after_task_publish`` will say."""

    __slots__ = ("pushes", "sent")

    def __init__(self) -> None:
        self.pushes: list[tuple[str, str]] = []
        self.sent: list[tuple[str, Any, dict[str, Any], str]] = []


async def once_more_if_single(out: Outgoing, push: Callable[..., Awaitable[Any]], *args: Any) -> Any:
    """``await push(*args)``; a single message whose pooled connection was dead is pushed once more on a new
    one (the failed connection was dropped), a batch is not (it may have been pushed half-way)."""
    try:
        return await push(*args)
    except redis.ConnectionError:
        if len(out.pushes) > 1:
            raise
        return await push(*args)


class TaskPublisher(Protocol):
    async def publish(self, messages: Sequence[TaskMessage], headers: dict[str, Any]) -> None: ...

    async def aclose(self) -> None: ...


def writes_kombu_redis_layout(app: Celery) -> bool:
    """Whether ``app``'s broker is Redis with kombu's default key layout (what :class:`Publisher` writes)."""
    url = str(app.conf.broker_url or "")
    options = app.conf.broker_transport_options or {}
    return url.startswith(("redis://", "rediss://", "unix://")) and not set(options) & set(REDIS_LAYOUT_OPTIONS)


def task_publisher(app: Celery, client_factory: Callable[[str], aioredis.Redis[str]]) -> TaskPublisher:
    """The fast path on a Redis broker with kombu's layout; kombu itself on any other broker (RabbitMQ)."""
    if writes_kombu_redis_layout(app):
        return Publisher(app, client_factory(str(app.conf.broker_url)))
    return KombuPublisher(app)


class Publisher:
    """Builds task messages with ``app``'s own message factory and pushes them with ``client``."""

    def __init__(self, app: Celery, client: aioredis.Redis[str]) -> None:
        if not writes_kombu_redis_layout(app):
            raise ValueError("Publisher writes kombu's default Redis layout; this app's broker has another")
        self.app = app
        self.client = client

    async def aclose(self) -> None:
        await self.client.aclose()  # type: ignore[attr-defined]  # types-redis predates aclose

    def broker_db_beside(self, cache: aioredis.Redis[str]) -> int | None:
        """The broker's database number when it is on the same Redis server as ``cache`` (only the database
        differs), so that one script can write to both; else None."""
        ours = self.client.connection_pool
        return int(ours.connection_kwargs.get("db") or 0) if same_server(ours, cache.connection_pool) else None

    def outgoing(self, messages: Sequence[TaskMessage], headers: dict[str, Any]) -> Outgoing:
        """The LPUSHes of ``messages`` (list key, kombu envelope), built as Celery builds them, with
        ``before_task_publish`` sent for each."""
        amqp = self.app.amqp
        out = Outgoing()
        for message, tag in zip(messages, delivery_tags(len(messages)), strict=True):
            task = amqp.create_task_message(
                message.task_id,
                message.name,
                (),
                message.kwargs,
                countdown=message.countdown,
                eta=message.eta,
                ignore_result=False,
                argsrepr="()",
                kwargsrepr=message.kwargs_repr,
            )
            task_headers, properties, body = task.headers, task.properties, task.body
            task_headers.update(headers)
            if message.priority is not None:
                properties["priority"] = message.priority
            signals.before_task_publish.send(
                sender=message.name,
                body=body,
                exchange="",
                routing_key=message.queue,
                declare=[],
                headers=task_headers,
                properties=properties,
                retry_policy=None,
            )
            priority = message_priority(properties.get("priority"))
            out.pushes.append(
                (
                    priority_queue_key(message.queue, priority),
                    envelope(body, task_headers, properties, message.queue, properties.get("priority"), tag),
                )
            )
            out.sent.append((message.name, body, task_headers, message.queue))
        return out

    def published(self, out: Outgoing) -> None:
        """``after_task_publish`` for each message of ``out``, once Redis has answered its LPUSH."""
        for name, body, task_headers, queue in out.sent:
            signals.after_task_publish.send(
                sender=name, body=body, headers=task_headers, exchange="", routing_key=queue
            )

    async def publish(self, messages: Sequence[TaskMessage], headers: dict[str, Any]) -> None:
        """Push every message in one pipelined round trip; raises redis errors.

        A message is in the broker exactly when its LPUSH was answered. A single message whose pooled
        connection turns out dead (Redis restarted since it was last used) is pushed once more on a new
        connection at once, as kombu's publish retry did; a batch is not (a pipeline that failed half-way
        would be pushed twice), the caller answers 503 and the client repeats it.
        """
        out = self.outgoing(messages, headers)
        await once_more_if_single(out, self._push, out.pushes)
        self.published(out)

    async def _push(self, pushes: Sequence[tuple[str, str]]) -> None:
        async with self.client.pipeline(transaction=False) as pipe:
            for key, payload in pushes:
                pipe.lpush(key, payload)
            await pipe.execute()


class KombuPublisher:
    """Publishing through kombu (any broker Celery supports), in a worker thread: the blocking client."""

    def __init__(self, app: Celery) -> None:
        self.app = app

    async def publish(self, messages: Sequence[TaskMessage], headers: dict[str, Any]) -> None:
        await run_in_threadpool(self.publish_blocking, messages, headers)

    async def aclose(self) -> None:
        return None

    def publish_blocking(self, messages: Sequence[TaskMessage], headers: dict[str, Any]) -> None:
        """Every message on one pooled producer; several in kombu's ``Producer.batch()`` where it has one."""
        amqp = self.app.amqp
        with contextlib.ExitStack() as stack:
            producer = stack.enter_context(self.app.producer_pool.acquire(block=True, timeout=POOL_TIMEOUT))
            batched = len(messages) > 1 and hasattr(producer, "batch")  # kombu >= 5.7
            if batched:
                stack.enter_context(producer.batch(max_size=len(messages) + 1))
            for message in messages:
                task = amqp.create_task_message(
                    message.task_id,
                    message.name,
                    (),
                    message.kwargs,
                    countdown=message.countdown,
                    eta=message.eta,
                    ignore_result=False,
                    argsrepr="()",
                    kwargsrepr=message.kwargs_repr,
                )
                amqp.send_task_message(
                    producer,
                    message.name,
                    task,
                    queue=amqp.queues[message.queue],
                    headers=headers,
                    priority=message.priority,
                    # declared once per connection (kombu caches it): on a fresh RabbitMQ virtual host, before
                    # any worker declared it, the exchange would drop a message already answered 202
                    declare=[amqp.queues[message.queue]],
                    # a batch is flushed once, with no automatic retry (kombu: delivery would be uncertain)
                    retry=not batched,
                    retry_policy=PUBLISH_RETRY_POLICY,
                )
