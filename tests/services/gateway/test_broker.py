"""The gateway publishes exactly what kombu would: same list, same envelope, same Celery message."""

from __future__ import annotations

import asyncio
import base64
import json
import uuid
from typing import Any

import pytest
import redis

from services.gateway.broker import KombuPublisher, Publisher, TaskMessage, task_publisher
from services.gateway.runtime import async_redis, create_gateway_celery
from shared.catalog import CATALOG
from shared.contracts import priority_queue_key
from shared.settings import Settings
from tests.harness import RedisServer

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("priority", [None, 0, 5, 9])
def test_the_envelope_is_the_one_kombu_publishes(redis_server: RedisServer, priority: int | None) -> None:
    settings = Settings(redis_url=redis_server.url_base, broker_url=f"{redis_server.url_base}/5", events_enabled=False)
    app = create_gateway_celery(settings)
    spec = CATALOG["test_task"]
    task_id, kwargs = str(uuid.uuid4()), {"message": "hi", "fail": False}
    client = redis_server.client(5)
    client.flushdb()
    try:
        # what the gateway sent through kombu before: Celery's message factory and sender on a pooled producer
        message = app.amqp.create_task_message(
            task_id, spec.celery_name, (), kwargs, ignore_result=False, argsrepr="()", kwargsrepr=repr(kwargs)
        )
        with app.producer_pool.acquire(block=True) as producer:
            app.amqp.send_task_message(
                producer,
                spec.celery_name,
                message,
                queue=app.amqp.queues[spec.queue],
                headers={"mallops_owner": "alice"},
                priority=priority,
                declare=[],
            )

        async def ours() -> None:
            broker = async_redis(settings.celery_broker_url)
            try:
                await Publisher(app, broker).publish(
                    [TaskMessage(task_id, spec.celery_name, spec.queue, kwargs, repr(kwargs), priority=priority)],
                    {"mallops_owner": "alice"},
                )
            finally:
                await broker.aclose()  # type: ignore[attr-defined]

        asyncio.run(ours())
        keys = client.keys("*")
        queue_keys = [k for k in keys if not k.startswith(b"_kombu")]
        assert queue_keys == [priority_queue_key(spec.queue, priority or 0).encode()]
        ours_raw, kombus_raw = client.lrange(queue_keys[0], 0, -1)  # LPUSH: the latest is first
    finally:
        client.close()
        app.close()
    theirs, mine = _decode(kombus_raw), _decode(ours_raw)
    for message in (theirs, mine):
        message["properties"].pop("delivery_tag")
    for part in ("headers", "properties"):
        assert {k: v for k, v in mine[part].items() if theirs[part].get(k) != v} == {}, part
        assert {k: v for k, v in theirs[part].items() if mine[part].get(k) != v} == {}, part
    assert mine == theirs
    assert mine["headers"]["mallops_owner"] == "alice"
    assert mine["properties"]["delivery_info"] == {"exchange": "", "routing_key": spec.queue}


def _decode(raw: bytes) -> dict[str, Any]:
    message: dict[str, Any] = json.loads(raw)
    message["body"] = json.loads(base64.b64decode(message["body"]))
    return message


def test_priority_lists_follow_kombus_steps() -> None:
    assert [priority_queue_key("default", p) for p in (0, 2, 3, 5, 6, 9)] == [
        "default",
        "default",
        "default\x06\x163",
        "default\x06\x163",
        "default\x06\x166",
        "default\x06\x169",
    ]


def test_nothing_is_left_half_published_when_redis_is_gone() -> None:
    app = create_gateway_celery(Settings(redis_url="redis://127.0.0.1:1", events_enabled=False))

    async def publish() -> None:
        broker = async_redis("redis://127.0.0.1:1/0")
        try:
            await Publisher(app, broker).publish(
                [TaskMessage(str(uuid.uuid4()), "mallops.maintenance.test_task", "default", {}, "{}")], {}
            )
        finally:
            await broker.aclose()  # type: ignore[attr-defined]

    try:
        with pytest.raises((redis.RedisError, OSError)):
            asyncio.run(publish())
    finally:
        app.close()


@pytest.mark.parametrize(
    ("broker_url", "transport_options", "fast"),
    [
        ("redis://127.0.0.1:6379/0", {}, True),
        ("redis://127.0.0.1:6379/0", {"global_keyprefix": "x:"}, False),
        ("amqp://guest:guest@127.0.0.1:5672//", {}, False),
    ],
)
def test_other_brokers_and_layouts_publish_through_kombu(
    broker_url: str, transport_options: dict[str, Any], fast: bool
) -> None:
    app = create_gateway_celery(Settings(broker_url=broker_url, events_enabled=False))
    app.conf.broker_transport_options = {**app.conf.broker_transport_options, **transport_options}
    try:
        publisher = task_publisher(app, async_redis)
        assert isinstance(publisher, Publisher if fast else KombuPublisher)
        asyncio.run(publisher.aclose())
    finally:
        app.close()


def test_the_kombu_path_publishes_a_batch(redis_server: RedisServer) -> None:
    settings = Settings(redis_url=redis_server.url_base, broker_url=f"{redis_server.url_base}/5", events_enabled=False)
    app = create_gateway_celery(settings)
    client = redis_server.client(5)
    client.flushdb()
    ids = [str(uuid.uuid4()) for _ in range(3)]
    try:
        asyncio.run(
            KombuPublisher(app).publish(
                [TaskMessage(i, "mallops.maintenance.test_task", "default", {}, "{}") for i in ids],
                {"mallops_owner": "bob"},
            )
        )
        pushed = [_decode(raw) for raw in client.lrange("default", 0, -1)]
    finally:
        client.close()
        app.close()
    assert sorted(m["headers"]["id"] for m in pushed) == sorted(ids)
    assert {m["headers"]["mallops_owner"] for m in pushed} == {"bob"}
