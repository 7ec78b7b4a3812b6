"""The gateway's access log: drained from Redis into ``access_logs`` exactly once (also across a failed
insert and a redelivery), daily statistics upserted, old records deleted."""

from __future__ import annotations

import datetime as dt
import json
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis
from sqlalchemy import delete, func, insert, select
from sqlalchemy.exc import OperationalError

from services.reports import access_logs
from shared import models
from shared.cache import redis_client
from shared.contracts import ACCESS_LOG_BUFFER
from shared.db import session_scope
from shared.settings import Settings
from tests.harness import Process
from tests.plugins.catalog_tasks import Submit

pytestmark = pytest.mark.integration


def entry(i: int, **overrides: Any) -> dict[str, Any]:
    base = {
        "request_id": f"req-{i:04d}-{uuid.uuid4().hex[:8]}",
        "ts": (dt.datetime(2026, 11, 14, 3, 0, tzinfo=dt.UTC) + dt.timedelta(seconds=i)).isoformat(),
        "method": "GET" if i % 3 else "POST",
        "path": f"/api/v1/tasks/{i % 4}",
        "status": 200 if i % 5 else 404,
        "duration_ms": 1.5 * i,
        "principal": "alice" if i % 2 else None,
        "client_ip": "10.0.0.7",
    }
    return base | overrides


@pytest.fixture
def buffer(migrated: Settings) -> Iterator[redis.Redis[str]]:
    client = redis_client(migrated)
    client.delete(ACCESS_LOG_BUFFER, access_logs.PROCESSING_LIST, access_logs.DRAIN_LOCK)
    with session_scope(migrated) as session:
        session.execute(delete(models.AccessLog))
        session.execute(delete(models.AccessStatistic))
    yield client
    client.delete(ACCESS_LOG_BUFFER, access_logs.PROCESSING_LIST, access_logs.DRAIN_LOCK)


def stored(settings: Settings) -> dict[str, models.AccessLog]:
    with session_scope(settings) as session:
        return {row.request_id: row for row in session.scalars(select(models.AccessLog))}


def test_buffered_entries_move_to_the_table_exactly_once(
    migrated: Settings, buffer: redis.Redis[str], running_worker: Callable[[str], Process], submit_task: Submit
) -> None:
    running_worker("reports")
    entries = [entry(i) for i in range(25)]
    buffer.rpush(ACCESS_LOG_BUFFER, *[json.dumps(e) for e in entries])
    buffer.rpush(ACCESS_LOG_BUFFER, "not json", json.dumps({"request_id": "only-an-id"}), json.dumps(entries[0]))

    result = submit_task("process_access_logs", {"batch_size": 10}).get(timeout=120)
    assert result == {"inserted": 25, "duplicates": 1, "malformed": 2, "batches": 3, "remaining": 0, "skipped": False}
    rows = stored(migrated)
    assert set(rows) == {e["request_id"] for e in entries}
    sample = rows[entries[7]["request_id"]]
    assert (sample.method, sample.path, sample.status, sample.principal, sample.client_ip) == (
        "GET",
        "/api/v1/tasks/3",
        200,
        "alice",
        "10.0.0.7",
    )
    assert sample.ts == dt.datetime(2026, 11, 14, 3, 0, 7, tzinfo=dt.UTC)
    assert sample.duration_ms == pytest.approx(10.5)
    assert buffer.llen(ACCESS_LOG_BUFFER) == 0
    assert not buffer.exists(access_logs.PROCESSING_LIST)

    again = submit_task("process_access_logs").get(timeout=120)
    assert (again["inserted"], again["batches"]) == (0, 0)
    assert len(stored(migrated)) == 25


def test_a_failed_insert_loses_nothing_and_a_redelivery_inserts_nothing_twice(
    migrated: Settings, buffer: redis.Redis[str], running_worker: Callable[[str], Process], submit_task: Submit
) -> None:
    entries = [entry(i) for i in range(6)]
    buffer.rpush(ACCESS_LOG_BUFFER, *[json.dumps(e) for e in entries])
    unreachable = migrated.model_copy(update={"database_url": "postgresql://nobody@127.0.0.1:1/mallops"})
    with pytest.raises(OperationalError):
        access_logs.drain(unreachable, buffer, batch_size=4)
    # the claimed batch waits in the processing list, the rest in the buffer
    assert buffer.llen(access_logs.PROCESSING_LIST) == 4
    assert buffer.llen(ACCESS_LOG_BUFFER) == 2
    assert stored(migrated) == {}

    running_worker("reports")
    result = submit_task("process_access_logs", {"batch_size": 4}).get(timeout=120)
    assert (result["inserted"], result["duplicates"]) == (6, 0)
    assert set(stored(migrated)) == {e["request_id"] for e in entries}

    # a run that died after its commit but before clearing the processing list: its entries come back
    fresh = entry(99)
    buffer.rpush(access_logs.PROCESSING_LIST, *[json.dumps(e) for e in entries[:3]], json.dumps(fresh))
    result = submit_task("process_access_logs").get(timeout=120)
    assert (result["inserted"], result["duplicates"]) == (1, 3)
    assert len(stored(migrated)) == 7
    assert not buffer.exists(access_logs.PROCESSING_LIST)


def test_access_statistics_per_path_principal_and_status(
    migrated: Settings, buffer: redis.Redis[str], running_worker: Callable[[str], Process], submit_task: Submit
) -> None:
    running_worker("reports")
    day_start = dt.datetime(2026, 11, 13, 16, tzinfo=dt.UTC)  # 2026-11-14 00:00 in Shanghai
    rows = [
        ("/a", "alice", 200, day_start - dt.timedelta(seconds=1), 5.0),  # the day before: not counted
        ("/a", "alice", 200, day_start, 10.0),
        ("/a", "alice", 200, day_start + dt.timedelta(hours=3), 30.0),
        ("/a", None, 200, day_start + dt.timedelta(hours=4), 7.0),
        ("/a", "alice", 404, day_start + dt.timedelta(hours=5), 2.0),
        ("/b", "bob", 500, day_start + dt.timedelta(hours=24) - dt.timedelta(seconds=1), 100.0),
        ("/b", "bob", 500, day_start + dt.timedelta(hours=24), 1.0),  # the day after: not counted
    ]
    with session_scope(migrated) as session:
        session.execute(
            insert(models.AccessLog),
            [
                {
                    "request_id": f"stat-{i}",
                    "ts": ts,
                    "method": "GET",
                    "path": path,
                    "status": status,
                    "duration_ms": ms,
                    "principal": who,
                    "client_ip": None,
                }
                for i, (path, who, status, ts, ms) in enumerate(rows)
            ],
        )
    result = submit_task("generate_access_statistics", {"date": "2026-11-14"}).get(timeout=120)
    assert result == {"date": "2026-11-14", "groups": 4, "requests": 5}

    def statistics() -> dict[tuple[str, str, int], tuple[int, float, float]]:
        with session_scope(migrated) as session:
            return {
                (s.path, s.principal, s.status): (s.requests, s.avg_ms, s.max_ms)
                for s in session.scalars(
                    select(models.AccessStatistic).where(models.AccessStatistic.day == dt.date(2026, 11, 14))
                )
            }

    assert statistics() == {
        ("/a", "alice", 200): (2, 20.0, 30.0),
        ("/a", "anonymous", 200): (1, 7.0, 7.0),
        ("/a", "alice", 404): (1, 2.0, 2.0),
        ("/b", "bob", 500): (1, 100.0, 100.0),
    }

    # a re-run after more requests arrived updates the same rows
    with session_scope(migrated) as session:
        session.execute(
            insert(models.AccessLog),
            [
                {
                    "request_id": "stat-late",
                    "ts": day_start + dt.timedelta(hours=6),
                    "method": "GET",
                    "path": "/a",
                    "status": 200,
                    "duration_ms": 50.0,
                    "principal": "alice",
                    "client_ip": None,
                }
            ],
        )
    submit_task("generate_access_statistics", {"date": "2026-11-14"}).get(timeout=120)
    after = statistics()
    assert after[("/a", "alice", 200)] == (3, 30.0, 50.0)
    assert len(after) == 4
    with session_scope(migrated) as session:
        assert session.scalar(select(func.count()).select_from(models.AccessStatistic)) == 4


def test_cleanup_old_access_records_deletes_only_old_ones(
    migrated: Settings, buffer: redis.Redis[str], running_worker: Callable[[str], Process], submit_task: Submit
) -> None:
    running_worker("reports")
    now = dt.datetime.now(dt.UTC)
    ages = {"old-1": 400, "old-2": 91, "young-1": 89, "young-2": 0}
    with session_scope(migrated) as session:
        session.execute(
            insert(models.AccessLog),
            [
                {
                    "request_id": rid,
                    "ts": now - dt.timedelta(days=age),
                    "method": "GET",
                    "path": "/",
                    "status": 200,
                    "duration_ms": 1.0,
                    "principal": None,
                    "client_ip": None,
                }
                for rid, age in ages.items()
            ],
        )
    result = submit_task("cleanup_old_access_records", {"days": 90}).get(timeout=120)
    assert result["access_logs"] == 2
    assert set(stored(migrated)) == {"young-1", "young-2"}
