"""One-off runs further ahead than the broker's visibility timeout: stored SCHEDULED in the database,
listed, revoked, capped per owner, outside the unfinished-task quota; published once when due.

Time is driven by the clock given to :func:`shared.deferred.publish_due` (what beat calls every tick),
never by waiting.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from celery import Celery
from sqlalchemy import select

from shared import deferred
from shared.celery_app import create_celery_app
from shared.db import session_factory, session_scope
from shared.models import DeferredTask
from shared.settings import Settings
from shared.taskmeta import META_KEY, UNFINISHED
from tests.harness import RedisServer, free_port
from tests.services.gateway.conftest import GatewayClient, GatewayFactory, Tokens

pytestmark = pytest.mark.integration

TASKS = "/api/v1/tasks"
IDLE_BROKER_DB = 9  # no worker consumes it: published messages stay where the test can see them
HOURS_3 = 3 * 3600


def queued(redis_server: RedisServer) -> list[dict[str, Any]]:
    client = redis_server.client(IDLE_BROKER_DB)
    try:
        lists = sorted(k for k in client.keys("default*") if client.type(k) == b"list")  # priority sub-queues too
        return [json.loads(raw) for key in lists for raw in client.lrange(key, 0, -1)]
    finally:
        client.close()


@pytest.fixture(autouse=True)
def _no_deferred_rows(migrated: Settings, redis_server: RedisServer) -> Iterator[None]:
    client = redis_server.client(IDLE_BROKER_DB)
    client.flushdb()
    yield
    client.flushdb()
    client.close()
    with session_scope(migrated) as session:
        session.query(DeferredTask).delete()


@pytest.fixture
def idle(gateway: GatewayFactory, redis_server: RedisServer) -> Iterator[GatewayClient]:
    with gateway(
        broker_url=f"{redis_server.url_base}/{IDLE_BROKER_DB}",
        task_max_per_user=1,
        scheduled_max_per_user=3,
        rate_limit_per_minute=100_000,
    ) as client:
        yield client


@pytest.fixture
def beat_app(migrated: Settings, redis_server: RedisServer) -> Iterator[Celery]:
    app = create_celery_app("test-deferred", migrated.model_copy(update={"broker_url": _idle(redis_server)}))
    yield app
    app.close()


def _idle(redis_server: RedisServer) -> str:
    return f"{redis_server.url_base}/{IDLE_BROKER_DB}"


def publish(app: Celery, settings: Settings, redis_server: RedisServer, now: dt.datetime) -> list[str]:
    """One beat tick's worth of deferred publishing at ``now``."""
    import redis

    cache = redis.Redis.from_url(settings.cache_redis_url, decode_responses=True)
    try:
        return deferred.publish_due(session_factory(settings), app, cache, settings, now)
    finally:
        cache.close()


def state(settings: Settings, task_id: str) -> str | None:
    with session_scope(settings) as session:
        return session.scalar(select(DeferredTask.state).where(DeferredTask.task_id == task_id))


def test_a_run_beyond_the_visibility_timeout_waits_in_the_database(
    idle: GatewayClient, tokens: Tokens, migrated: Settings, redis_server: RedisServer
) -> None:
    alice = tokens.auth("alice")
    later = idle.post(
        TASKS, json={"task_name": "test_task", "kwargs": {"message": "3h"}, "countdown": HOURS_3}, headers=alice
    )
    assert later.status_code == 202, later.text
    assert later.json()["status"] == "SCHEDULED"
    tomorrow = (dt.datetime.now(dt.UTC) + dt.timedelta(days=1)).isoformat()
    day = idle.post(TASKS, json={"task_name": "test_task", "eta": tomorrow}, headers=alice)
    assert day.json()["status"] == "SCHEDULED"
    assert queued(redis_server) == []  # nothing in the broker
    later_id, day_id = later.json()["task_id"], day.json()["task_id"]
    assert state(migrated, later_id) == "SCHEDULED"

    # waiting runs take no quota (alice may have 1 unfinished task): an immediate one is still accepted
    assert idle.post(TASKS, json={"task_name": "test_task"}, headers=alice).status_code == 202
    assert idle.post(TASKS, json={"task_name": "test_task"}, headers=alice).status_code == 429
    # exactly the visibility timeout ahead still goes to the broker
    at_limit = idle.post(TASKS, json={"task_name": "test_task", "countdown": 7200}, headers=tokens.auth("bob"))
    assert at_limit.json()["status"] == "PENDING"
    assert len(queued(redis_server)) == 2

    listing = idle.get(TASKS, params={"status": "SCHEDULED"}, headers=alice).json()
    assert listing["count"] == 2
    assert [row["task_id"] for row in listing["results"]] == [later_id, day_id]  # soonest first
    assert all(row["status"] == "SCHEDULED" and row["eta"] for row in listing["results"])
    assert idle.get(TASKS, params={"status": "SCHEDULED"}, headers=tokens.auth("bob")).json()["count"] == 0
    assert idle.get(TASKS, params={"status": "SCHEDULED"}, headers=tokens.auth("admin")).json()["count"] == 2

    detail = idle.get(f"{TASKS}/{later_id}", headers=alice).json()
    assert detail["status"] == "SCHEDULED"
    assert detail["kwargs"] == {"message": "3h"}
    eta = dt.datetime.fromisoformat(detail["eta"])
    assert abs((eta - dt.datetime.now(dt.UTC)).total_seconds() - HOURS_3) < 60
    assert idle.get(f"{TASKS}/{later_id}", headers=tokens.auth("bob")).status_code == 404

    # the cap on waiting runs per owner (3 here)
    assert idle.post(TASKS, json={"task_name": "test_task", "countdown": 10**6}, headers=alice).status_code == 202
    refused = idle.post(TASKS, json={"task_name": "test_task", "countdown": 10**6}, headers=alice)
    assert refused.status_code == 429
    assert refused.json()["type"] == "urn:mallops:problem:scheduled-quota-exceeded"
    assert "MALLOPS_SCHEDULED_MAX_PER_USER" in refused.json()["detail"]

    # the usual revoke cancels a waiting run
    revoked = idle.post(f"{TASKS}/{day_id}/revoke", headers=tokens.auth("admin"))
    assert revoked.status_code == 202, revoked.text
    assert state(migrated, day_id) == "REVOKED"
    assert idle.get(f"{TASKS}/{day_id}", headers=alice).json()["status"] == "REVOKED"
    assert day_id not in {
        r["task_id"] for r in idle.get(TASKS, params={"status": "SCHEDULED"}, headers=alice).json()["results"]
    }


def test_beat_publishes_a_due_run_once_as_an_ordinary_task(
    idle: GatewayClient, tokens: Tokens, migrated: Settings, redis_server: RedisServer, beat_app: Celery
) -> None:
    alice = tokens.auth("alice")
    body = {"task_name": "test_task", "kwargs": {"message": "later"}, "countdown": HOURS_3, "priority": 3}
    task_id = idle.post(TASKS, json=body, headers=alice).json()["task_id"]
    other = idle.post(TASKS, json={**body, "countdown": 2 * HOURS_3}, headers=alice).json()["task_id"]
    now = dt.datetime.now(dt.UTC)

    assert publish(beat_app, migrated, redis_server, now) == []
    assert publish(beat_app, migrated, redis_server, now + dt.timedelta(seconds=HOURS_3 - 120)) == []
    assert queued(redis_server) == []

    # two beats ticking at the same moment, 3 h on: published once
    due = now + dt.timedelta(seconds=HOURS_3 + 60)
    results: list[list[str]] = []
    threads = [
        threading.Thread(target=lambda: results.append(publish(beat_app, migrated, redis_server, due)))
        for _ in range(2)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert sorted(id_ for found in results for id_ in found) == [task_id]
    assert publish(beat_app, migrated, redis_server, due) == []
    [message] = queued(redis_server)
    assert message["headers"]["id"] == task_id
    assert message["headers"]["mallops_owner"] == tokens.alice_name
    assert message["properties"]["priority"] == 3
    _, kwargs, _ = json.loads(base64.b64decode(message["body"]))
    assert kwargs == {"message": "later", "fail": False}
    assert state(migrated, task_id) == "PUBLISHED"
    assert state(migrated, other) == "SCHEDULED"

    # from now on an ordinary task of alice's: listed, readable, counted against her quota
    cache = redis_server.client(2)
    try:
        assert cache.exists(META_KEY + task_id)
        assert cache.zscore(UNFINISHED + tokens.alice_name, task_id) is not None
    finally:
        cache.close()
    detail = idle.get(f"{TASKS}/{task_id}", headers=alice).json()
    assert (detail["status"], detail["kwargs"]) == ("PENDING", {"message": "later"})
    assert task_id in {row["task_id"] for row in idle.get(TASKS, headers=alice).json()["results"]}
    assert idle.post(TASKS, json={"task_name": "test_task"}, headers=alice).status_code == 429  # quota of 1 taken


def test_a_revoked_run_is_never_published_and_a_broker_outage_loses_nothing(
    idle: GatewayClient, tokens: Tokens, migrated: Settings, redis_server: RedisServer, beat_app: Celery
) -> None:
    alice = tokens.auth("alice")
    body = {"task_name": "test_task", "countdown": HOURS_3}
    revoked = idle.post(TASKS, json=body, headers=alice).json()["task_id"]
    kept = idle.post(TASKS, json=body, headers=alice).json()["task_id"]
    assert idle.post(f"{TASKS}/{revoked}/revoke", headers=tokens.auth("admin")).status_code == 202
    due = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=HOURS_3 + 60)

    dead = create_celery_app(
        "test-deferred-dead", migrated.model_copy(update={"broker_url": f"redis://127.0.0.1:{free_port()}/0"})
    )
    try:
        with pytest.raises(Exception):  # noqa: B017, PT011 - whatever kombu raises for a refused connection
            publish(dead, migrated, redis_server, due)
    finally:
        dead.close()
    assert state(migrated, kept) == "SCHEDULED"  # the claim was rolled back with the failed publish

    assert publish(beat_app, migrated, redis_server, due) == [kept]
    assert [m["headers"]["id"] for m in queued(redis_server)] == [kept]
    assert state(migrated, revoked) == "REVOKED"
