"""The monitor trims the event stream by age, never past what a consumer group has not acknowledged
(``MALLOPS_EVENTS_STREAM_RETENTION_SECONDS``, docs/capacity.md)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from services.monitor.consumer import StreamConsumer
from services.monitor.metrics import Health, MetricStore
from shared.contracts import EVENT_STREAM, MONITOR_GROUP
from shared.settings import Settings
from tests.harness import RedisServer, start_redis

pytestmark = pytest.mark.integration


def consumer_on(tmp_path: Path, settings: Settings, retention: int) -> tuple[StreamConsumer, RedisServer]:
    server = start_redis(tmp_path / "redis")
    update = {"redis_url": server.url_base, "events_stream_retention_seconds": retention}
    return StreamConsumer(settings.model_copy(update=update), MetricStore(), Health()), server


def add_old(consumer: StreamConsumer, count: int, age: float) -> list[str]:
    """``count`` entries ``age`` seconds old (explicit ids), then return their ids."""
    base = int((time.time() - age) * 1000)
    return [consumer.redis.xadd(EVENT_STREAM, {"e": "{}"}, id=f"{base + i}-0") for i in range(count)]


def test_acknowledged_entries_past_the_retention_are_trimmed_and_nothing_unprocessed(
    tmp_path: Path, settings: Settings
) -> None:
    consumer, server = consumer_on(tmp_path, settings, retention=60)
    try:
        client = consumer.redis
        client.xgroup_create(EVENT_STREAM, MONITOR_GROUP, id="0", mkstream=True)
        old = add_old(consumer, 3000, age=600)  # ten minutes old
        recent = add_old(consumer, 10, age=5)
        # the group read and acknowledged the first 2000; 500 more read but not acknowledged (a monitor
        # that crashed in the middle of a batch); the rest never read
        read = client.xreadgroup(MONITOR_GROUP, "m1", {EVENT_STREAM: ">"}, count=2500)[0][1]
        client.xack(EVENT_STREAM, MONITOR_GROUP, *[entry_id for entry_id, _ in read[:2000]])

        assert consumer.trim_stream() == old[2000]  # the oldest entry not acknowledged
        left = [entry_id for entry_id, _ in client.xrange(EVENT_STREAM)]
        assert set(old[2000:]) <= set(left)
        assert set(recent) <= set(left)
        assert len(left) < 3010  # approximate trimming drops whole nodes of acknowledged entries only

        # all read and acknowledged: only the last minute stays
        rest = client.xreadgroup(MONITOR_GROUP, "m1", {EVENT_STREAM: ">"}, count=10_000)[0][1]
        client.xack(EVENT_STREAM, MONITOR_GROUP, *[e for e, _ in read[2000:]], *[e for e, _ in rest])
        consumer.trim_stream()
        left = [entry_id for entry_id, _ in client.xrange(EVENT_STREAM)]
        assert set(recent) <= set(left)
        assert len(left) < 200  # ten-minute-old entries gone but for the last partial node

        # a second group (another reader) that has read nothing holds everything back
        add_old(consumer, 5, age=1)
        client.xgroup_create(EVENT_STREAM, "another-reader", id="0")
        assert consumer.trim_stream() is None
    finally:
        consumer.redis.close()
        server.stop()


def test_retention_zero_keeps_the_stream_to_maxlen(tmp_path: Path, settings: Settings) -> None:
    consumer, server = consumer_on(tmp_path, settings, retention=0)
    try:
        consumer.redis.xgroup_create(EVENT_STREAM, MONITOR_GROUP, id="0", mkstream=True)
        add_old(consumer, 100, age=600)
        read = consumer.redis.xreadgroup(MONITOR_GROUP, "m1", {EVENT_STREAM: ">"}, count=100)[0][1]
        consumer.redis.xack(EVENT_STREAM, MONITOR_GROUP, *[e for e, _ in read])
        assert consumer.trim_stream() is None
        assert consumer.redis.xlen(EVENT_STREAM) == 100
    finally:
        consumer.redis.close()
        server.stop()
