"""Bounded Redis at sustained load (issue 19, docs/capacity.md): once the monitor has written a task's final
state into task_history, it drops the gateway's metadata ``mallops:gw:task:<id>`` (or shortens its TTL with
``MALLOPS_TASK_META_FINISHED_TTL_SECONDS``), and every reader of that metadata answers from the history:
the task view, the list, ownership, retry, revocation and idempotent submission.

A platform of the test's own: a redis-server, a real maintenance worker and a real monitor process, and
the gateway app on that Redis and the run's database (SQLite or PostgreSQL).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis

from services.monitor.consumer import StreamConsumer
from services.monitor.metrics import Health, MetricStore
from services.monitor.state import SENT_BIT
from services.monitor.store import answers_for
from shared.db import session_scope
from shared.models import TaskRecord
from shared.settings import Settings
from shared.taskmeta import META_KEY
from tests.harness import (
    Process,
    RedisServer,
    free_port,
    redis_env,
    service_argv,
    spawn,
    start_redis,
    wait_http_ready,
    wait_until,
)
from tests.services.gateway.conftest import GatewayClient, GatewayFactory, Tokens

pytestmark = pytest.mark.integration


@dataclass
class Platform:
    server: RedisServer
    overrides: dict[str, Any]

    def cache(self) -> redis.Redis[bytes]:
        return self.server.client(2)


@pytest.fixture
def platform(service_env: dict[str, str], worker_factory: Callable[..., Process], tmp_path: Path) -> Iterator[Platform]:
    server = start_redis(tmp_path / "redis")
    env = service_env | redis_env(server) | {"MALLOPS_TASK_RETRY_BACKOFF": "0", "MALLOPS_LOG_LEVEL": "WARNING"}
    worker = worker_factory("maintenance", env=env)
    port = free_port()
    monitor = spawn("monitor", service_argv("monitor", f"--port={port}", "--name=meta-test"), env, tmp_path)
    try:
        wait_http_ready(monitor, f"http://127.0.0.1:{port}/health")
        base = server.url_base
        yield Platform(server, {"redis_url": base, "broker_url": f"{base}/0", "result_backend": f"{base}/1"})
    finally:
        monitor.stop()
        worker.stop()
        server.stop()


def submit(
    client: GatewayClient, tokens: Tokens, who: str, headers: dict[str, str] | None = None, **kwargs: Any
) -> str:
    body = {"task_name": "test_task", "kwargs": {"message": "m", **kwargs}}
    answer = client.post("/api/v1/tasks", json=body, headers=tokens.auth(who) | (headers or {}))
    assert answer.status_code == 202, answer.text
    task_id: str = answer.json()["task_id"]
    return task_id


def history_state(settings: Settings, task_id: str) -> str | None:
    with session_scope(settings) as session:
        row = session.get(TaskRecord, task_id)
        return row.state if row is not None else None


def wait_forgotten(platform: Platform, settings: Settings, task_id: str, state: str) -> None:
    """The history holds the final state and the metadata is gone (the monitor dropped it)."""
    cache = platform.cache()
    wait_until(
        lambda: history_state(settings, task_id) == state and not cache.exists(META_KEY + task_id),
        timeout=60,
        message=f"{task_id} {state} in the history and its metadata dropped",
    )


def test_a_finished_task_is_read_from_the_history_once_its_metadata_is_dropped(
    platform: Platform, gateway: GatewayFactory, tokens: Tokens, migrated: Settings
) -> None:
    key = {"Idempotency-Key": f"meta-{uuid.uuid4().hex}"}
    with gateway(**platform.overrides) as client:
        task_id = submit(client, tokens, "alice", headers=key, message="kept in the history")
        wait_forgotten(platform, migrated, task_id, "SUCCESS")

        shown = client.get(f"/api/v1/tasks/{task_id}", headers=tokens.auth("alice"))
        assert shown.status_code == 200, shown.text
        detail = shown.json()
        assert detail["status"] == "SUCCESS"
        assert detail["task_name"] == "test_task"
        assert detail["owner"] == tokens.alice_name
        assert detail["queue"] == "default"
        assert detail["kwargs"] == {"message": "kept in the history", "fail": False}  # with the defaults
        assert detail["sent_at"]
        assert detail["finished_at"]
        # ownership still holds: bob does not see alice's task
        assert client.get(f"/api/v1/tasks/{task_id}", headers=tokens.auth("bob")).status_code == 404

        listed = client.get("/api/v1/tasks", headers=tokens.auth("alice")).json()["results"]
        row = next(r for r in listed if r["task_id"] == task_id)
        assert (row["task_name"], row["owner"], row["status"]) == ("test_task", tokens.alice_name, "SUCCESS")
        assert row["sent_at"]
        assert row["queue"] == "default"
        mine = client.get("/api/v1/tasks?task_name=test_task", headers=tokens.auth("alice")).json()["results"]
        assert task_id in {r["task_id"] for r in mine}

        # the same Idempotency-Key and body: the first answer again, nothing enqueued
        again = client.post(
            "/api/v1/tasks",
            json={"task_name": "test_task", "kwargs": {"message": "kept in the history"}},
            headers=tokens.auth("alice") | key,
        )
        assert again.status_code == 202
        assert again.json()["task_id"] == task_id


def test_a_failed_task_is_retried_and_revoked_after_its_metadata_is_dropped(
    platform: Platform, gateway: GatewayFactory, tokens: Tokens, migrated: Settings
) -> None:
    with gateway(**platform.overrides) as client:
        task_id = submit(client, tokens, "alice", fail=True, message="retry me")
        wait_forgotten(platform, migrated, task_id, "FAILURE")
        assert client.get(f"/api/v1/tasks/{task_id}", headers=tokens.auth("alice")).json()["status"] == "FAILURE"

        retried = client.post(f"/api/v1/tasks/{task_id}/retry", headers=tokens.auth("alice"))
        assert retried.status_code == 202, retried.text
        new_id = retried.json()["task_id"]
        new = client.get(f"/api/v1/tasks/{new_id}", headers=tokens.auth("alice")).json()
        assert new["kwargs"] == {"message": "retry me", "fail": True}
        assert new["retry_of"] == task_id
        wait_forgotten(platform, migrated, new_id, "FAILURE")
        assert client.get(f"/api/v1/tasks/{new_id}", headers=tokens.auth("alice")).json()["retry_of"] == task_id

        # bob may retry tasks he sees, and does not see alice's
        assert client.post(f"/api/v1/tasks/{task_id}/retry", headers=tokens.auth("bob")).status_code == 404
        revoked = client.post(f"/api/v1/tasks/{task_id}/revoke", headers=tokens.auth("admin"))
        assert revoked.status_code == 202, revoked.text


def test_a_finished_ttl_shortens_the_metadata_instead(redis_server: RedisServer, settings: Settings) -> None:
    """``MALLOPS_TASK_META_FINISHED_TTL_SECONDS=N``: the key stays N seconds at most, never longer than it had."""
    redis_client = redis_server.client(2)  # the cache database, where the gateway keeps the metadata
    consumer = StreamConsumer(
        settings.model_copy(update={"task_meta_finished_ttl_seconds": 120}), MetricStore(), Health()
    )
    long_id, short_id, gone_id = (f"meta-{uuid.uuid4().hex}" for _ in range(3))
    redis_client.set(META_KEY + long_id, "{}", ex=7 * 86400)
    redis_client.set(META_KEY + short_id, "{}", ex=30)
    with consumer.redis.pipeline(transaction=False) as pipe:
        consumer.forget_finished(pipe, [long_id, short_id, gone_id])
        pipe.execute()
    assert 0 < redis_client.ttl(META_KEY + long_id) <= 120
    assert 0 < redis_client.ttl(META_KEY + short_id) <= 30
    assert not redis_client.exists(META_KEY + gone_id)
    consumer.redis.close()
    redis_client.close()


def test_the_metadata_stays_until_the_history_has_the_publish_event() -> None:
    """A worker's events can overtake the publisher's buffered task-sent (arguments, retry_of): a final row
    without it does not yet answer for the task."""
    final_unsent = {"state": "SUCCESS", "event_mask": 1 << 56}
    assert not answers_for(final_unsent)
    assert answers_for(final_unsent | {"event_mask": (1 << 56) | (1 << SENT_BIT)})
    assert not answers_for({"state": "STARTED", "event_mask": 1 << SENT_BIT})
