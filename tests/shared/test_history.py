"""shared.history on the run's real database and Redis: pagination, filters, statistics, workers, queues."""

from __future__ import annotations

import datetime as dt
import json
import os
import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import redis

from shared.contracts import WORKERS_KEY, priority_keys
from shared.db import session_scope
from shared.history import (
    decode_cursor,
    get_task_record,
    list_workers,
    percentile,
    query_history,
    queue_lengths,
    task_stats,
)
from shared.models import TaskRecord
from shared.settings import Settings
from tests.harness import start_redis, wait_until

T0 = dt.datetime(2026, 11, 1, 8, 0, tzinfo=dt.UTC)


def _row(
    name: str,
    i: int,
    state: str,
    *,
    owner: str = "alice",
    runtime: float | None = None,
    wait: float | None = None,
    sent: dt.datetime | None = None,
) -> TaskRecord:
    sent = sent or T0 + dt.timedelta(seconds=i)
    return TaskRecord(
        task_id=f"{name}-{i:05d}",
        task_name=name,
        queue="default",
        state=state,
        owner=owner,
        retries=0,
        sent_at=sent,
        finished_at=sent + dt.timedelta(seconds=1) if state == "SUCCESS" else None,
        runtime=runtime,
        queue_wait=wait,
        last_event_seq=0,
        updated_at=sent,
    )


@pytest.fixture
def task_name(migrated: Settings) -> str:
    return f"test.history.{uuid.uuid4().hex[:8]}"


def test_pages_walk_every_row_once_newest_first(migrated: Settings, task_name: str) -> None:
    with session_scope(migrated) as session:
        # 25 rows, some sharing a sent_at so the task_id tie-break matters
        session.add_all(_row(task_name, i, "SUCCESS", sent=T0 + dt.timedelta(seconds=i // 3)) for i in range(25))
    seen: list[str] = []
    cursor = None
    with session_scope(migrated) as session:
        while True:
            page = query_history(session, task_name=task_name, cursor=cursor, limit=7)
            seen.extend(item["task_id"] for item in page.items)
            if page.next_cursor is None:
                break
            cursor = page.next_cursor
    assert len(seen) == 25
    assert len(set(seen)) == 25
    expected = sorted((f"{task_name}-{i:05d}" for i in range(25)), key=lambda t: (int(t[-5:]) // 3, t), reverse=True)
    assert seen == expected


def test_filters_by_status_owner_and_time(migrated: Settings, task_name: str) -> None:
    with session_scope(migrated) as session:
        session.add_all(
            [
                _row(task_name, 1, "SUCCESS", owner="alice"),
                _row(task_name, 2, "FAILURE", owner="bob"),
                _row(task_name, 3, "SUCCESS", owner="bob"),
                _row(task_name, 4, "RETRY", owner="alice"),
            ]
        )
    with session_scope(migrated) as session:

        def ids(**kw: Any) -> list[str]:
            return [i["task_id"][-1] for i in query_history(session, task_name=task_name, **kw).items]

        assert ids(status="success") == ["3", "1"]
        assert ids(owner="bob") == ["3", "2"]
        assert ids(status="SUCCESS", owner="bob") == ["3"]
        assert ids(since=T0 + dt.timedelta(seconds=2), until=T0 + dt.timedelta(seconds=4)) == ["3", "2"]
        with pytest.raises(ValueError, match="unknown status"):
            query_history(session, status="exploded")
        with pytest.raises(ValueError, match="invalid cursor"):
            query_history(session, cursor="not-a-cursor!")
        with pytest.raises(ValueError, match="limit"):
            query_history(session, limit=0)


def test_short_name_finds_celery_name(migrated: Settings) -> None:
    task_id = f"short-{uuid.uuid4().hex}"
    with session_scope(migrated) as session:
        row = _row("mallops.maintenance.long_running_task", 0, "SUCCESS", owner=task_id)
        row.task_id = task_id
        session.add(row)
    with session_scope(migrated) as session:
        items = query_history(session, task_name="long_running_task", owner=task_id).items
        assert [i["task_id"] for i in items] == [task_id]
        record = get_task_record(session, task_id)
        assert record is not None
        assert record["state"] == "SUCCESS"
        assert record["sent_at"] == T0.isoformat()
        assert get_task_record(session, "no-such-task") is None


def test_cursor_round_trip() -> None:
    from shared.history import encode_cursor

    assert decode_cursor(encode_cursor(T0, "abc")) == (T0, "abc")
    assert decode_cursor(encode_cursor(None, "abc")) == (None, "abc")


def test_percentile_matches_linear_interpolation() -> None:
    assert percentile([], 0.5) is None
    assert percentile([3.0], 0.99) == 3.0
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 0.5) == pytest.approx(50.5)
    assert percentile(values, 0.95) == pytest.approx(95.05)
    assert percentile(values, 0.99) == pytest.approx(99.01)


def test_stats_over_a_window(migrated: Settings, task_name: str) -> None:
    other = task_name + ".other"
    with session_scope(migrated) as session:
        session.add_all(_row(task_name, i, "SUCCESS", runtime=float(i + 1), wait=i / 100) for i in range(100))
        session.add_all(_row(task_name, 100 + i, "FAILURE", runtime=0.5) for i in range(20))
        session.add_all(_row(other, i, "SUCCESS", runtime=10.0, wait=1.0, owner="bob") for i in range(10))
        # outside the window
        session.add(_row(task_name, 999, "FAILURE", sent=T0 + dt.timedelta(hours=2)))
    until = T0 + dt.timedelta(minutes=10)
    with session_scope(migrated) as session:
        stats = task_stats(session, since=T0, until=until, task_name=task_name)
        assert set(stats["tasks"]) == {task_name}
        block = stats["tasks"][task_name]
        assert block == stats["overall"]
        assert block["total"] == 120
        assert block["counts"]["SUCCESS"] == 100
        assert block["counts"]["FAILURE"] == 20
        assert block["counts"]["STARTED"] == 0
        assert block["success_rate"] == pytest.approx(100 / 120)
        assert block["throughput_per_minute"] == pytest.approx(120 / 10)
        runtimes = sorted([float(i + 1) for i in range(100)] + [0.5] * 20)
        assert block["runtime"]["p50"] == pytest.approx(percentile(runtimes, 0.5))
        assert block["runtime"]["p99"] == pytest.approx(percentile(runtimes, 0.99))
        assert block["queue_wait"]["p50"] == pytest.approx(0.495)

        bob = task_stats(session, since=T0, until=until, owner="bob")
        assert bob["overall"]["total"] >= 10
        assert bob["tasks"][other]["runtime"]["p95"] == pytest.approx(10.0)
        with pytest.raises(ValueError, match="until"):
            task_stats(session, since=until, until=T0)


def test_stats_of_an_empty_window(migrated: Settings, task_name: str) -> None:
    with session_scope(migrated) as session:
        stats = task_stats(session, since=T0, until=T0 + dt.timedelta(seconds=1), task_name=task_name)
    assert stats["overall"]["total"] == 0
    assert stats["overall"]["success_rate"] is None
    assert stats["overall"]["runtime"] == {"p50": None, "p95": None, "p99": None}
    assert stats["tasks"] == {}


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
