"""shared.workers on real Redis (and RabbitMQ when one answers): workers online, offline, purged; queue lengths."""

from __future__ import annotations

import json
import os
import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import redis

from shared.cache import redis_client
from shared.contracts import EVENT_STREAM, WORKERS_KEY, priority_keys
from shared.settings import Settings
from shared.workers import list_workers, monitor_lag, queue_lengths
from tests.harness import start_redis, wait_until


@pytest.fixture
def private_redis(settings: Settings, tmp_path: Path) -> Iterator[Settings]:
    """``settings`` on a redis-server of this test's own: the run's shared workers heartbeat into the
    run's Redis at any moment, and must not show up in (or vanish from) what the test counts."""
    server = start_redis(tmp_path / "redis")
    try:
        yield settings.model_copy(update={"redis_url": server.url_base})
    finally:
        server.stop()


def test_workers_online_offline_and_purged(private_redis: Settings) -> None:
    settings = private_redis
    now = time.time()
    cache = redis.Redis.from_url(settings.cache_redis_url)

    def put(hostname: str, age: float, status: str = "online") -> None:
        cache.hset(
            WORKERS_KEY,
            hostname,
            json.dumps(
                {
                    "hostname": hostname,
                    "service": "maintenance",
                    "pid": 1,
                    "queues": ["default", "history-test"],
                    "active": 2,
                    "processed": 7,
                    "last_heartbeat": now - age,
                    "status": status,
                    "concurrency": 2,
                }
            ),
        )

    put("fresh@h", 1)
    put("silent@h", settings.worker_offline_after + 1)
    put("stopped@h", 0.5, status="offline")
    put("gone@h", settings.worker_purge_after + 1)
    cache.hset(WORKERS_KEY, "garbage@h", "not json")
    workers = {w["hostname"]: w for w in list_workers(settings, now=now)}
    assert set(workers) == {"fresh@h", "silent@h", "stopped@h"}
    assert workers["fresh@h"]["status"] == "online"
    assert workers["fresh@h"]["active"] == 2
    assert workers["fresh@h"]["processed"] == 7
    assert workers["fresh@h"]["queues"] == ["default", "history-test"]
    assert workers["silent@h"]["status"] == "offline"
    assert workers["silent@h"]["active"] == 0
    assert workers["stopped@h"]["status"] == "offline"

    # queues: pending counts priority sub-queues, consumers count online workers (a queue that no
    # real worker of the test run consumes, so nothing takes the messages away)
    broker = redis.Redis.from_url(settings.celery_broker_url)
    keys = priority_keys("history-test")
    assert keys == ["history-test", "history-test\x06\x163", "history-test\x06\x166", "history-test\x06\x169"]
    broker.lpush(keys[0], "a", "b")
    broker.lpush(keys[2], "c")
    lengths = queue_lengths(settings)
    assert lengths["history-test"] == {"pending": 3, "consumers": 1}
    assert lengths["default"]["consumers"] == 1
    assert lengths["email"]["consumers"] == 0
    broker.delete(*keys)
    assert set(lengths) >= {"finance", "reports", "email", "default"}
    cache.close()
    broker.close()


RABBITMQ_URL = os.environ.get("MALLOPS_TEST_RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:5672//")


def _rabbitmq_answers() -> bool:
    url = urlsplit(RABBITMQ_URL)
    try:
        socket.create_connection((url.hostname or "127.0.0.1", url.port or 5672), timeout=1).close()
    except OSError:
        return False
    return True


@pytest.mark.skipif(not _rabbitmq_answers(), reason=f"no RabbitMQ answers at {RABBITMQ_URL}")
def test_queue_lengths_on_rabbitmq(settings: Settings) -> None:
    from kombu import Connection, Exchange, Queue  # type: ignore[attr-defined]

    name = f"mallops-test-{uuid.uuid4().hex[:8]}"
    queue = Queue(name, Exchange(name, type="direct"), routing_key=name, auto_delete=False)
    on_rabbitmq = settings.model_copy(update={"broker_url": RABBITMQ_URL})
    consumer = {"hostname": "w@h", "status": "online", "queues": [name]}
    with Connection(RABBITMQ_URL) as connection:
        bound = queue(connection.default_channel)
        bound.declare()
        try:
            producer = connection.Producer()
            for i in range(3):
                producer.publish({"i": i}, exchange=queue.exchange, routing_key=name)
            wait_until(
                lambda: queue_lengths(on_rabbitmq, [consumer])[name]["pending"] == 3,
                timeout=10,
                message="3 messages ready in RabbitMQ",
            )
            lengths = queue_lengths(on_rabbitmq, [consumer])
        finally:
            bound.delete()
    assert lengths[name] == {"pending": 3, "consumers": 1}
    # the mallops queues are listed even before anything declared them; an absent queue has nothing waiting
    assert set(lengths) >= {"finance", "reports", "email", "default"}
    assert all(isinstance(lengths[q]["pending"], int) for q in ("finance", "reports", "email", "default"))


def test_monitor_lag_from_the_consumer_group(private_redis: Settings) -> None:
    assert monitor_lag(private_redis) == {"reading": False, "unread": 0, "pending": 0, "lag_seconds": None}
    client = redis_client(private_redis)
    client.xgroup_create(EVENT_STREAM, "monitor", id="0", mkstream=True)
    first = client.xadd(EVENT_STREAM, {"e": "1"})
    client.xadd(EVENT_STREAM, {"e": "2"})
    sent_at = int(first.split("-")[0]) / 1000
    assert monitor_lag(private_redis, now=sent_at + 30) == {
        "reading": True,
        "unread": 2,
        "pending": 0,
        "lag_seconds": 30.0,
    }
    client.xreadgroup("monitor", "m1", {EVENT_STREAM: ">"}, count=1)  # delivered, not acknowledged
    lag = monitor_lag(private_redis, now=sent_at + 30)
    assert (lag["unread"], lag["pending"], lag["lag_seconds"]) == (1, 1, 30.0)
    client.xreadgroup("monitor", "m1", {EVENT_STREAM: ">"})
    ids = [
        entry_id for _, entries in client.xreadgroup("monitor", "m1", {EVENT_STREAM: "0"}) for entry_id, _ in entries
    ]
    client.xack(EVENT_STREAM, "monitor", *ids)
    assert monitor_lag(private_redis, now=sent_at + 30)["lag_seconds"] == 0.0
