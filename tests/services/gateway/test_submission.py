"""The submission rules, each with its own test: unknown task, bad arguments, body size, broker down,
idempotency, quota, rate limit; and that a 202 means the message really is in the broker."""

from __future__ import annotations

import base64
import datetime as dt
import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from shared.db import session_scope
from shared.models import TaskRecord
from shared.settings import Settings
from tests.harness import RedisServer, free_port, start_redis
from tests.services.gateway.conftest import _CREATED, GatewayClient, GatewayFactory, Tokens

pytestmark = pytest.mark.integration

TASKS = "/api/v1/tasks"
# A broker database no test worker consumes, so that published messages stay where a test can see them.
IDLE_BROKER_DB = 9


def queued(redis_server: RedisServer, queue: str = "default", db: int = IDLE_BROKER_DB) -> list[dict[str, Any]]:
    client = redis_server.client(db)
    try:
        return [json.loads(raw) for raw in client.lrange(queue, 0, -1)]
    finally:
        client.close()


@pytest.fixture(autouse=True)
def _empty_idle_broker(redis_server: RedisServer) -> None:
    client = redis_server.client(IDLE_BROKER_DB)
    client.flushdb()
    client.close()


@pytest.fixture
def idle(gateway: GatewayFactory, redis_server: RedisServer) -> Iterator[GatewayClient]:
    """A gateway publishing to a broker database with no consumer; quota and rate limit generous."""
    with gateway(
        broker_url=f"{redis_server.url_base}/{IDLE_BROKER_DB}", task_max_per_user=1000, rate_limit_per_minute=100_000
    ) as c:
        yield c


def test_a_202_means_the_message_is_in_the_broker_with_its_owner(
    idle: GatewayClient, tokens: Tokens, redis_server: RedisServer
) -> None:
    response = idle.post(
        TASKS, json={"task_name": "test_task", "args": ["positional"], "priority": 0}, headers=tokens.auth("alice")
    )
    assert response.status_code == 202, response.text
    body = response.json()
    assert body["task_name"] == "test_task"
    assert body["status"] == "PENDING"
    assert body["queue"] == "default"
    [message] = queued(redis_server)
    assert message["headers"]["id"] == body["task_id"]
    assert message["headers"]["task"] == "mallops.maintenance.test_task"
    assert message["headers"]["mallops_owner"] == tokens.alice_name
    args, kwargs, _ = json.loads(base64.b64decode(message["body"]))
    assert args == []
    assert kwargs == {"message": "positional", "fail": False}


def test_a_submission_after_redis_lost_its_scripts_is_still_one_message(
    idle: GatewayClient, tokens: Tokens, redis_server: RedisServer
) -> None:
    """The submission script goes by its digest (EVALSHA); a server that forgot it (restarted, SCRIPT FLUSH)
    gets it again, and the task is recorded and queued once."""
    server, alice = redis_server.client(0), tokens.auth("alice")
    try:
        answers = []
        for message in ("before", "after"):
            server.script_flush()
            response = idle.post(TASKS, json={"task_name": "test_task", "args": [message]}, headers=alice)
            assert response.status_code == 202, response.text
            answers.append(response.json()["task_id"])
        assert [m["headers"]["id"] for m in reversed(queued(redis_server))] == answers
        assert [idle.get(f"{TASKS}/{task_id}", headers=alice).status_code for task_id in answers] == [200, 200]
    finally:
        server.close()


def test_unknown_task_is_404_and_nothing_is_enqueued(
    idle: GatewayClient, tokens: Tokens, redis_server: RedisServer
) -> None:
    for name in ("no_such_task", "celery.backend_cleanup", "mallops.maintenance.test_task"):
        response = idle.post(TASKS, json={"task_name": name}, headers=tokens.auth("alice"))
        assert response.status_code == 404, name
        problem = response.json()
        assert problem["type"] == "urn:mallops:problem:unknown-task"
        assert name in problem["detail"]
    assert queued(redis_server) == []


def test_arguments_that_do_not_fit_are_422_with_field_errors(
    idle: GatewayClient, tokens: Tokens, redis_server: RedisServer
) -> None:
    cases = [
        ({"task_name": "test_task", "kwargs": {"message": 5}}, ["body", "kwargs", "message"]),
        ({"task_name": "test_task", "kwargs": {"surprise": 1}}, ["body", "kwargs", "surprise"]),
        ({"task_name": "test_task", "args": [["not", "a", "string"]]}, ["body", "args", 0]),
        ({"task_name": "long_running_task", "kwargs": {"steps": 0}}, ["body", "kwargs", "steps"]),
        ({"task_name": "test_task", "args": [1, 2, 3]}, ["body", "args"]),
        ({"task_name": "test_task", "countdown": -1}, ["body", "countdown"]),
        ({"task_name": "test_task", "priority": 12}, ["body", "priority"]),
        ({"kwargs": {}}, ["body", "task_name"]),
    ]
    for body, loc in cases:
        response = idle.post(TASKS, json=body, headers=tokens.auth("alice"))
        assert response.status_code == 422, (body, response.text)
        assert response.headers["content-type"] == "application/problem+json"
        problem = response.json()
        assert problem["status"] == 422
        assert problem["detail"]
        assert loc in [error["loc"] for error in problem["errors"]], (body, problem)
    assert queued(redis_server) == []


def test_batch_submits_all_or_nothing(idle: GatewayClient, tokens: Tokens, redis_server: RedisServer) -> None:
    good = {"tasks": [{"task_name": "test_task", "kwargs": {"message": f"m{i}"}} for i in range(50)]}
    response = idle.post(f"{TASKS}/batch", json=good, headers=tokens.auth("admin"))
    assert response.status_code == 202, response.text
    body = response.json()
    assert body["count"] == 50
    assert len({row["task_id"] for row in body["results"]}) == 50
    assert {m["headers"]["id"] for m in queued(redis_server)} == {row["task_id"] for row in body["results"]}

    bad = {"tasks": [{"task_name": "test_task"}, {"task_name": "test_task", "kwargs": {"message": 1}}]}
    refused = idle.post(f"{TASKS}/batch", json=bad, headers=tokens.auth("admin"))
    assert refused.status_code == 422
    assert ["body", "tasks", 1, "kwargs", "message"] in [e["loc"] for e in refused.json()["errors"]]
    unknown = idle.post(
        f"{TASKS}/batch",
        json={"tasks": [{"task_name": "test_task"}, {"task_name": "nope"}]},
        headers=tokens.auth("admin"),
    )
    assert unknown.status_code == 404
    assert len(queued(redis_server)) == 50


def test_bodies_over_the_limit_are_413(gateway: GatewayFactory, tokens: Tokens, redis_server: RedisServer) -> None:
    with gateway(max_body_bytes=2048, broker_url=f"{redis_server.url_base}/{IDLE_BROKER_DB}") as client:
        big = {"task_name": "test_task", "kwargs": {"message": "x" * 4000}}
        declared = client.post(TASKS, json=big, headers=tokens.auth("alice"))
        assert declared.status_code == 413
        assert declared.headers["content-type"] == "application/problem+json"
        assert declared.json()["status"] == 413

        def chunks() -> Iterator[bytes]:  # no Content-Length: the streamed bytes are counted
            payload = json.dumps(big).encode()
            for i in range(0, len(payload), 500):
                yield payload[i : i + 500]

        streamed = client.post(
            TASKS, content=chunks(), headers={**tokens.auth("alice"), "Content-Type": "application/json"}
        )
        assert streamed.status_code == 413
        assert streamed.json()["type"] == "urn:mallops:problem:body-too-large"
        small = client.post(TASKS, json={"task_name": "test_task"}, headers=tokens.auth("alice"))
        assert small.status_code == 202
    assert len(queued(redis_server)) == 1


def _meta_keys(redis_server: RedisServer) -> list[bytes]:
    client = redis_server.client(2)
    try:
        return list(client.scan_iter("mallops:gw:task:*"))
    finally:
        client.close()


def test_broker_down_is_503_with_retry_after_and_nothing_enqueued(
    gateway: GatewayFactory, tokens: Tokens, redis_server: RedisServer
) -> None:
    closed = free_port()
    with gateway(broker_url=f"redis://127.0.0.1:{closed}/0") as client:
        started = time.monotonic()
        response = client.post(TASKS, json={"task_name": "test_task"}, headers=tokens.auth("alice"))
        elapsed = time.monotonic() - started
        assert response.status_code == 503, response.text
        assert int(response.headers["retry-after"]) > 0
        assert response.json()["type"] == "urn:mallops:problem:broker-unavailable"
        assert elapsed < 10  # a dead broker answers fast, it does not hang the client
        assert _meta_keys(redis_server) == []  # no record of a task that does not exist
        # the refused task does not count against the quota either
        listing = client.get(TASKS, headers=tokens.auth("alice")).json()
        assert listing["count"] == 0


def test_broker_that_dies_after_start_is_503_then_recovers(
    gateway: GatewayFactory, tokens: Tokens, tmp_path_factory: pytest.TempPathFactory
) -> None:
    broker = start_redis(tmp_path_factory.mktemp("broker"))
    port = broker.port
    try:
        with gateway(broker_url=f"{broker.url_base}/0") as client:
            assert client.post(TASKS, json={"task_name": "test_task"}, headers=tokens.auth("alice")).status_code == 202
            broker.stop()
            down = client.post(TASKS, json={"task_name": "test_task"}, headers=tokens.auth("alice"))
            assert down.status_code == 503
            assert "retry-after" in down.headers
            broker = start_redis(tmp_path_factory.mktemp("broker2"), port=port)
            again = client.post(TASKS, json={"task_name": "test_task"}, headers=tokens.auth("alice"))
            assert again.status_code == 202, again.text
            assert broker.client().llen("default") == 1  # only the one accepted after the restart
    finally:
        broker.stop()


def test_idempotency_key_replays_and_conflicts(idle: GatewayClient, tokens: Tokens, redis_server: RedisServer) -> None:
    body = {"task_name": "test_task", "kwargs": {"message": "once"}}
    headers = {**tokens.auth("alice"), "Idempotency-Key": "order-42"}
    first = idle.post(TASKS, json=body, headers=headers)
    assert first.status_code == 202
    again = idle.post(TASKS, json=body, headers=headers)
    assert again.status_code == 202
    assert again.json() == first.json()
    assert again.headers.get("idempotent-replayed") == "true"
    assert len(queued(redis_server)) == 1

    other = idle.post(TASKS, json={**body, "kwargs": {"message": "twice"}}, headers=headers)
    assert other.status_code == 409
    assert other.json()["type"] == "urn:mallops:problem:idempotency-conflict"
    # keys belong to their caller: bob's "order-42" is his own
    bobs = idle.post(TASKS, json=body, headers={**tokens.auth("bob"), "Idempotency-Key": "order-42"})
    assert bobs.status_code == 202
    assert bobs.json()["task_id"] != first.json()["task_id"]
    assert len(queued(redis_server)) == 2


def test_a_failed_submission_releases_its_idempotency_key(
    gateway: GatewayFactory, tokens: Tokens, redis_server: RedisServer
) -> None:
    body = {"task_name": "test_task"}
    headers = {**tokens.auth("alice"), "Idempotency-Key": "retry-me"}
    with gateway(broker_url=f"redis://127.0.0.1:{free_port()}/0") as down:
        assert down.post(TASKS, json=body, headers=headers).status_code == 503
    with gateway(broker_url=f"{redis_server.url_base}/{IDLE_BROKER_DB}") as up:
        assert up.post(TASKS, json=body, headers=headers).status_code == 202


def test_quota_of_unfinished_tasks_per_user(gateway: GatewayFactory, tokens: Tokens, redis_server: RedisServer) -> None:
    results = redis.Redis(host="127.0.0.1", port=redis_server.port, db=1)
    with gateway(task_max_per_user=3, broker_url=f"{redis_server.url_base}/{IDLE_BROKER_DB}") as client:
        ids = []
        for _ in range(3):
            response = client.post(TASKS, json={"task_name": "test_task"}, headers=tokens.auth("alice"))
            assert response.status_code == 202
            ids.append(response.json()["task_id"])
        refused = client.post(TASKS, json={"task_name": "test_task"}, headers=tokens.auth("alice"))
        assert refused.status_code == 429
        problem = refused.json()
        assert problem["type"] == "urn:mallops:problem:quota-exceeded"
        assert "at most 3 unfinished tasks" in problem["detail"]
        assert "MALLOPS_TASK_MAX_PER_USER" in problem["detail"]
        batch = client.post(
            f"{TASKS}/batch", json={"tasks": [{"task_name": "test_task"}] * 4}, headers=tokens.auth("bob")
        )
        assert batch.status_code == 429
        # another user and admins are not affected
        assert client.post(TASKS, json={"task_name": "test_task"}, headers=tokens.auth("bob")).status_code == 202
        assert client.post(TASKS, json={"task_name": "test_task"}, headers=tokens.auth("admin")).status_code == 202
        # once one of alice's tasks has finished, she may submit again
        results.set(f"celery-task-meta-{ids[0]}", json.dumps({"status": "SUCCESS", "result": "ok", "task_id": ids[0]}))
        assert client.post(TASKS, json={"task_name": "test_task"}, headers=tokens.auth("alice")).status_code == 202
        assert client.post(TASKS, json={"task_name": "test_task"}, headers=tokens.auth("alice")).status_code == 429
    results.close()
    assert len(queued(redis_server)) == 6


def test_a_rejected_task_frees_its_quota_slot_and_reads_rejected(
    gateway: GatewayFactory, tokens: Tokens, redis_server: RedisServer, migrated: Settings
) -> None:
    """A worker that rejects a message stores no result; the monitor's history row is all there is."""
    with gateway(task_max_per_user=1, broker_url=f"{redis_server.url_base}/{IDLE_BROKER_DB}") as client:
        task_id = client.post(TASKS, json={"task_name": "test_task"}, headers=tokens.auth("alice")).json()["task_id"]
        assert client.post(TASKS, json={"task_name": "test_task"}, headers=tokens.auth("alice")).status_code == 429
        now = dt.datetime.now(dt.UTC)
        with session_scope(migrated) as session:
            session.add(
                TaskRecord(
                    task_id=task_id,
                    task_name="mallops.maintenance.test_task",
                    queue="default",
                    state="REJECTED",
                    owner="alice",
                    exception="NotRegistered",
                    error="unknown task",
                    sent_at=now,
                    finished_at=now,
                    updated_at=now,
                )
            )
        _CREATED.append((TaskRecord, task_id))
        detail = client.get(f"{TASKS}/{task_id}", headers=tokens.auth("alice")).json()
        assert detail["status"] == "REJECTED"
        assert detail["error"] == {"type": "NotRegistered", "message": "unknown task"}
        listed = client.get(TASKS, headers=tokens.auth("alice")).json()["results"]
        assert {row["task_id"]: row["status"] for row in listed}[task_id] == "REJECTED"
        assert client.post(TASKS, json={"task_name": "test_task"}, headers=tokens.auth("alice")).status_code == 202


def test_rate_limit_per_token_is_429_with_retry_after(gateway: GatewayFactory, tokens: Tokens) -> None:
    with gateway(rate_limit_per_minute=5) as client:
        statuses = [client.get("/api/v1/catalog", headers=tokens.auth("alice")).status_code for _ in range(5)]
        assert statuses == [200] * 5
        limited = client.get("/api/v1/catalog", headers=tokens.auth("alice"))
        assert limited.status_code == 429
        assert 1 <= int(limited.headers["retry-after"]) <= 60
        assert limited.json()["type"] == "urn:mallops:problem:rate-limited"
        assert client.get("/api/v1/catalog", headers=tokens.auth("bob")).status_code == 200  # per token
        assert client.get("/healthz").status_code == 200


def test_a_submission_over_the_rate_limit_is_429_before_any_other_refusal(
    gateway: GatewayFactory, tokens: Tokens, redis_server: RedisServer
) -> None:
    """POST /api/v1/tasks makes its rate-limit hit in the submission's own script: a refused request (422, 404,
    403) counts as before, and once the limit is reached every request is 429, whatever else is wrong with it,
    and records nothing (no message, no metadata, no entry in the token's log)."""
    broker = f"{redis_server.url_base}/{IDLE_BROKER_DB}"
    bad_arguments = {"task_name": "test_task", "kwargs": {"fail": "not a boolean"}}
    forbidden = {"task_name": "cleanup_old_access_records"}  # a maintenance task: not for a user's token
    with gateway(broker_url=broker, rate_limit_per_minute=4, task_max_per_user=1000) as client:
        alice = tokens.auth("alice")
        assert client.post(TASKS, json={"task_name": "test_task"}, headers=alice).status_code == 202
        assert client.post(TASKS, json=bad_arguments, headers=alice).status_code == 422
        assert client.post(TASKS, json={"task_name": "no_such_task"}, headers=alice).status_code == 404
        assert client.post(TASKS, json=forbidden, headers=alice).status_code == 403
        for body in ({"task_name": "test_task"}, bad_arguments, {"task_name": "no_such_task"}, forbidden, {}):
            refused = client.post(TASKS, json=body, headers=alice)
            assert refused.status_code == 429, (body, refused.text)
            assert refused.json()["type"] == "urn:mallops:problem:rate-limited"
            assert 1 <= int(refused.headers["retry-after"]) <= 60
        assert client.post(TASKS, json={"task_name": "test_task"}, headers=tokens.auth("bob")).status_code == 202
    assert len(queued(redis_server)) == 2  # alice's first and bob's
    assert len(_meta_keys(redis_server)) == 2
    cache = redis_server.client(2)
    try:
        assert cache.zcard(f"mallops:gw:rate:{tokens.alice_name}") == 4  # the refused were not recorded
    finally:
        cache.close()


def test_settings_fixture_is_untouched(settings: Settings) -> None:
    assert settings.rate_limit_per_minute == Settings().rate_limit_per_minute
