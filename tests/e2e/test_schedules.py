"""Issue 15's acceptance across real processes: gateway, beat (two of them), a maintenance worker,
redis-server and the database (SQLite or PostgreSQL, as the run chose).

- an entry added over HTTP with arguments fires within its interval with those arguments, and again
  after a beat restart; a default deleted over HTTP stays deleted after a beat restart;
- a one-off run 3 h ahead waits in the database, survives restarts of the gateway, of beat and of Redis,
  and is published once, with two beats running. The 3 hours are not waited for: the second pair of
  beats runs with ``MALLOPS_CLOCK_OFFSET_SECONDS`` (the clock a test controls).

Each test has a redis-server of its own (AOF on, as deployed), so its beats fire nothing into the
queues of the other tests' workers.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select

from shared.db import session_scope
from shared.models import DeferredTask
from shared.settings import Settings
from shared.tokens import create_token
from tests.harness import (
    Process,
    RedisServer,
    free_port,
    redis_env,
    service_argv,
    spawn,
    start_redis,
    start_worker,
    wait_until,
)

pytestmark = pytest.mark.integration

API = "/api/v1"


@dataclass
class Stack:
    redis: RedisServer
    env: dict[str, str]
    logs: Path
    admin: str
    user: str
    user_name: str
    processes: list[Process]

    def start(self, name: str, service: str, **extra_env: str) -> Process:
        process = spawn(name, service_argv(service), self.env | extra_env, self.logs)
        self.processes.append(process)
        return process

    def worker(self) -> Process:
        process = start_worker("maintenance", self.env, self.logs)
        self.processes.append(process)
        return process

    def restart_redis(self) -> None:
        port = self.redis.port
        self.redis.stop()
        self.redis = start_redis(self.logs / "redis", port=port, appendonly=True)


@pytest.fixture
def stack(migrated: Settings, service_env: dict[str, str], tmp_path: Path) -> Iterator[Stack]:
    redis_server = start_redis(tmp_path / "redis", appendonly=True)
    env = (
        service_env
        | redis_env(redis_server)
        | {
            "MALLOPS_BEAT_MAX_INTERVAL": "1",
            "MALLOPS_GATEWAY_PORT": str(free_port()),
        }
    )
    suffix = uuid.uuid4().hex[:8]
    with session_scope(migrated) as session:
        admin = create_token(session, f"sched-admin-{suffix}", "admin")
        user = create_token(session, f"sched-user-{suffix}", "user")
    built = Stack(redis_server, env, tmp_path, admin, user, f"sched-user-{suffix}", [])
    try:
        yield built
    finally:
        for process in reversed(built.processes):
            process.stop()
        built.redis.stop()
        with session_scope(migrated) as session:
            session.query(DeferredTask).delete()


@pytest.fixture
def http(stack: Stack) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=f"http://127.0.0.1:{stack.env['MALLOPS_GATEWAY_PORT']}", timeout=30) as client:
        yield client


def start_gateway(stack: Stack, http: httpx.Client) -> Process:
    gateway = stack.start("gateway", "gateway")

    def up() -> bool:
        if not gateway.alive():
            pytest.fail(f"the gateway exited:\n{gateway.log()[-3000:]}")
        return http.get("/readyz").status_code == 200

    wait_until(up, timeout=90, interval=0.2, message="the gateway's /readyz")
    return gateway


def start_beat(stack: Stack, name: str, **extra_env: str) -> Process:
    beat = stack.start(name, "beat", **extra_env)
    wait_until(lambda: "beat: Starting" in beat.log(), timeout=60, message=f"{name} to start")
    return beat


def holding_lock(beats: list[Process]) -> Process:
    return wait_until(
        lambda: next((b for b in beats if "Acquired lock" in b.log()), None), timeout=60, message="a beat to lock"
    )


def received(worker: Process, message: str) -> int:
    return worker.log().count(f"'Task received: {message}'")


def test_an_entry_added_over_http_fires_with_its_arguments_and_survives_a_beat_restart(
    stack: Stack, http: httpx.Client
) -> None:
    admin = {"Authorization": f"Bearer {stack.admin}"}
    start_gateway(stack, http)
    worker = stack.worker()
    message = f"every-2s-{uuid.uuid4().hex[:6]}"
    body = {
        "name": "acceptance.echo",
        "task_name": "test_task",
        "schedule": {"every": 2},
        "kwargs": {"message": message},
    }
    created = http.post(f"{API}/schedules", json=body, headers=admin)
    assert created.status_code == 201, created.text
    assert created.json()["last_run_at"] is None

    beat = start_beat(stack, "beat-1")
    wait_until(lambda: received(worker, message) >= 2, timeout=60, message="two runs with the entry's arguments")
    entry = http.get(f"{API}/schedules/acceptance.echo", headers=admin).json()
    assert entry["last_run_at"] is not None
    assert entry["last_run_at"].endswith("Z")
    # a default deleted over HTTP while beat runs
    assert http.delete(f"{API}/schedules/backup_database", headers=admin).status_code == 204

    beat.stop()
    runs_before = received(worker, message)
    restarted = start_beat(stack, "beat-2")
    holding_lock([restarted])
    wait_until(lambda: received(worker, message) >= runs_before + 2, timeout=60, message="runs after the beat restart")
    # new arguments reach the running beat within MALLOPS_BEAT_MAX_INTERVAL (1 s here) plus the 2 s period
    changed = f"{message}-changed"
    patched = http.patch(f"{API}/schedules/acceptance.echo", json={"kwargs": {"message": changed}}, headers=admin)
    assert patched.status_code == 200, patched.text
    started = time.monotonic()
    wait_until(lambda: received(worker, changed) >= 1, timeout=30, message="a run with the new arguments")
    assert time.monotonic() - started < 1 + 2 + 5  # interval + period + the worker's own delay

    after = http.get(f"{API}/schedules", headers=admin).json()["results"]
    names = {row["name"]: row for row in after}
    assert names["acceptance.echo"]["kwargs"] == {"message": changed}
    assert "backup_database" not in names  # seeded once, deleted, not seeded again at the restart
    assert {"cleanup_expired_data", "cleanup_old_access_records", "generate_daily_report"} <= set(names)
    cache = stack.redis.client(2)
    try:
        assert not cache.exists("mallops:redbeat:backup_database")
    finally:
        cache.close()


def test_a_one_off_run_three_hours_ahead_is_published_once_across_restarts(
    stack: Stack, http: httpx.Client, migrated: Settings
) -> None:
    from celery import Celery

    from shared import schedules
    from shared.catalog import Schedule

    user = {"Authorization": f"Bearer {stack.user}"}
    gateway = start_gateway(stack, http)
    message = f"three-hours-{uuid.uuid4().hex[:6]}"
    accepted = http.post(
        f"{API}/tasks",
        json={"task_name": "test_task", "kwargs": {"message": message}, "countdown": 3 * 3600},
        headers=user,
    )
    assert accepted.status_code == 202, accepted.text
    assert accepted.json()["status"] == "SCHEDULED"
    task_id = accepted.json()["task_id"]
    waiting = http.get(f"{API}/tasks", params={"status": "SCHEDULED"}, headers=user).json()
    assert [row["task_id"] for row in waiting["results"]] == [task_id]
    gateway.stop()

    # an entry every second shows how many ticks the beats have made (each tick also looks for due runs)
    app = Celery(set_as_current=False)
    app.conf.update(
        redbeat_redis_url=f"{stack.redis.url_base}/2", redbeat_key_prefix="mallops:redbeat:", timezone=migrated.timezone
    )
    schedules.create_entry(app, "ticks", "test_task", Schedule(every=1), kwargs={"message": "tick"})
    app.close()

    def ticks(beats: list[Process]) -> int:
        return sum(b.log().count("Sending due task ticks") for b in beats)

    def published(beats: list[Process]) -> int:
        return sum(b.log().count(f"deferred: published {task_id}") for b in beats)

    # two beats, real time: three ticks and the run still waits
    first = [start_beat(stack, "beat-a"), start_beat(stack, "beat-b")]
    holding_lock(first)
    wait_until(lambda: ticks(first) >= 3, timeout=60, message="three ticks")
    assert published(first) == 0
    for beat in first:
        beat.stop()

    # Redis restarts (the run was never in it); a worker and two beats 3 h (and a minute) later
    stack.restart_redis()
    worker = stack.worker()
    later = {"MALLOPS_CLOCK_OFFSET_SECONDS": str(3 * 3600 + 60)}
    second = [start_beat(stack, "beat-c", **later), start_beat(stack, "beat-d", **later)]
    holding_lock(second)
    wait_until(lambda: received(worker, message) >= 1, timeout=60, message="the worker to run the deferred task")
    seen = ticks(second)
    wait_until(lambda: ticks(second) >= seen + 3, timeout=60, message="three more ticks")
    assert published(second) == 1
    assert received(worker, message) == 1
    with session_scope(migrated) as session:
        assert session.scalar(select(DeferredTask.state).where(DeferredTask.task_id == task_id)) == "PUBLISHED"

    # a new gateway process reads it as an ordinary finished task of its owner
    start_gateway(stack, http)

    def finished() -> dict[str, object] | None:
        detail = http.get(f"{API}/tasks/{task_id}", headers=user).json()
        return detail if detail["status"] == "SUCCESS" else None

    detail = wait_until(finished, timeout=30, message="SUCCESS over HTTP")
    assert detail["result"] == f"Task received: {message}"
    assert http.get(f"{API}/tasks", params={"status": "SCHEDULED"}, headers=user).json()["count"] == 0
