"""The monitor's batches under a trickle of events (``MALLOPS_MONITOR_LINGER_SECONDS``): a read that finds
less than a full batch waits, from its oldest entry, for more before storing them in one transaction."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from services.monitor.consumer import StreamConsumer
from services.monitor.metrics import Health, MetricStore
from shared.contracts import EVENT_FIELD, EVENT_STREAM, MONITOR_GROUP
from shared.db import session_scope
from shared.models import TaskRecord
from shared.settings import Settings
from tests.harness import RedisServer, start_redis, wait_until

pytestmark = pytest.mark.integration


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    server = start_redis(tmp_path / "redis")
    yield server
    server.stop()


def consumer_on(server: RedisServer, migrated: Settings, **update: float) -> StreamConsumer:
    settings = migrated.model_copy(update={"redis_url": server.url_base, **update})
    consumer = StreamConsumer(settings, MetricStore(), Health())
    consumer.start()  # the group, the persisted counters
    return consumer


def send(consumer: StreamConsumer, task_id: str, type_: str) -> None:
    event: dict[str, object] = {"type": type_, "id": task_id, "name": "mallops.maintenance.test_task"}
    event |= {"queue": "default", "retries": 0, "ts": time.time(), "v": 1, "host": "linger@test", "pid": 1}
    consumer.redis.xadd(EVENT_STREAM, {EVENT_FIELD: json.dumps(event)})


def delivered(consumer: StreamConsumer) -> int:
    return int(consumer.redis.xpending(EVENT_STREAM, MONITOR_GROUP)["pending"])


def state(migrated: Settings, task_id: str) -> tuple[str, bool] | None:
    with session_scope(migrated) as session:
        row = session.get(TaskRecord, task_id)
        return (row.state, row.received_at is not None) if row is not None else None


def test_an_event_that_arrives_while_a_small_batch_waits_is_stored_with_it(
    own_redis: RedisServer, migrated: Settings, database_url: str
) -> None:
    consumer = consumer_on(own_redis, migrated, monitor_linger_seconds=2.0)
    task_id = str(uuid.uuid4())
    try:
        send(consumer, task_id, "task-sent")

        def second() -> None:  # once the first is read (delivered, not yet acknowledged), the second
            wait_until(lambda: delivered(consumer) == 1, timeout=10, interval=0.01, message="the first read")
            send(consumer, task_id, "task-received")

        sender = threading.Thread(target=second)
        sender.start()
        assert consumer.step() == 2
        sender.join()
        assert (consumer.health.batches, consumer.health.events_processed) == (1, 2)
        assert state(migrated, task_id) == ("RECEIVED", True)
        assert delivered(consumer) == 0  # both acknowledged with their transaction
    finally:
        consumer.redis.close()


def test_a_full_batch_is_stored_at_once_and_no_linger_stores_each_read(
    own_redis: RedisServer, migrated: Settings, database_url: str
) -> None:
    consumer = consumer_on(own_redis, migrated, monitor_linger_seconds=5.0, monitor_batch_size=2)
    first, second = str(uuid.uuid4()), str(uuid.uuid4())
    try:
        send(consumer, first, "task-sent")
        send(consumer, first, "task-received")
        started = time.monotonic()
        assert consumer.step() == 2  # a full batch: no wait for the linger
        assert time.monotonic() - started < 4.0
        assert state(migrated, first) == ("RECEIVED", True)

        unhurried = consumer_on(own_redis, migrated, monitor_linger_seconds=0.0)
        try:
            send(unhurried, second, "task-sent")
            assert unhurried.step() == 1
            assert unhurried.health.batches == 1
            assert state(migrated, second) == ("SENT", False)
        finally:
            unhurried.redis.close()
    finally:
        consumer.redis.close()
