"""shared.celery_extensions.result_store: a task's state and the worker's buffered lifecycle events in one
write, with every event still in the stream once."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from shared.celery_app import create_celery_app
from shared.celery_extensions import events
from shared.celery_extensions.redelivery import holder_key
from shared.celery_extensions.result_store import KEEP_FINAL, ResultStore
from shared.contracts import EVENT_STREAM, EventType
from shared.settings import Settings
from tests.harness import Process, RedisServer, free_port, start_redis, wait_until


def _stream(cache: Any, key: str, value: str) -> list[dict[str, Any]]:
    found = [json.loads(fields[b"e"]) for _, fields in cache.xrange(EVENT_STREAM)]
    return [event for event in found if event.get(key) == value]


def test_a_stored_state_carries_the_buffered_events(
    settings: Settings, redis_server: RedisServer, clean_broker: None
) -> None:
    quiet = settings.model_copy(update={"events_flush_interval": 60.0})  # no background flush in this test
    app = create_celery_app("tester", quiet)
    lifecycle = events.for_app(app)
    assert lifecycle is not None
    assert isinstance(app.backend, ResultStore)
    host, task_id = f"tester-{uuid.uuid4().hex[:8]}@h", str(uuid.uuid4())
    cache = redis_server.client(2)
    try:
        lifecycle.emit(EventType.TASK_STARTED, id=task_id, name="n", queue="default", retries=0, host=host)
        lifecycle.emitter.put(holder_key(task_id, 0), "holder", 60)
        assert lifecycle.emitter.pending == 1
        app.backend.store_result(task_id, {"pid": 1}, "STARTED")
        # no flush: the state's write carried them
        assert [e["type"] for e in _stream(cache, "host", host)] == ["task-started"]
        assert cache.get(holder_key(task_id, 0)) == b"holder"
        assert lifecycle.emitter.pending == 0
        assert app.backend.get_state(task_id) == "STARTED"  # the backend's connection is back on its database
        app.backend.store_result(task_id, "done", "SUCCESS")  # nothing buffered: the state alone
        assert app.backend.get_state(task_id) == "SUCCESS"
        assert len(_stream(cache, "host", host)) == 1

        lifecycle.emitter.forget(holder_key(task_id, 0))  # a deletion goes with the next write too
        app.backend.store_result(task_id, {"pid": 2}, "STARTED")  # a late write: the SUCCESS is kept
        assert cache.get(holder_key(task_id, 0)) is None
        assert app.backend.get_state(task_id) == "SUCCESS"
    finally:
        lifecycle.close()
        cache.close()
        app.close()


def test_with_the_stream_on_another_server_the_events_are_written_apart(settings: Settings) -> None:
    elsewhere = settings.model_copy(update={"result_backend": f"redis://127.0.0.1:{free_port()}/1"})
    app = create_celery_app("tester", elsewhere)
    lifecycle = events.for_app(app)
    assert lifecycle is not None
    try:
        assert app.backend._stream_db(lifecycle.emitter) is None
        same = create_celery_app("tester", settings)
        assert same.backend._stream_db(events.for_app(same).emitter) == 2  # type: ignore[union-attr]
        off = create_celery_app("tester", settings.model_copy(update={"events_enabled": False}))
        assert isinstance(off.backend, ResultStore)  # its state writes take one round trip too
        assert events.for_app(off) is None
        rabbit = create_celery_app("tester", settings.model_copy(update={"result_backend": "rpc://"}))
        assert not isinstance(rabbit.backend, ResultStore)
    finally:
        lifecycle.close()
        app.close()


def test_a_task_run_by_a_worker_has_each_event_once_and_its_holder_gone(
    settings: Settings, redis_server: RedisServer, clean_broker: None, worker_factory: Callable[..., Process]
) -> None:
    worker_factory("maintenance")
    app = create_celery_app("publisher", settings)
    cache = redis_server.client(2)
    try:
        result = app.send_task("mallops.maintenance.test_task", kwargs={"message": "once"}, queue="default")
        assert result.get(timeout=60) == "Task received: once"

        def succeeded() -> list[dict[str, Any]] | None:
            # task-received comes from the pool's parent (prefork), whose buffer is flushed on its own
            # interval: it may follow the child's task-succeeded
            mine = _stream(cache, "id", result.id)
            return mine if {"task-received", "task-succeeded"} <= {e["type"] for e in mine} else None

        mine = wait_until(succeeded, timeout=60, message="the task's events")
        types = [e["type"] for e in mine if e["type"] != "task-sent"]
        assert sorted(types) == ["task-received", "task-started", "task-succeeded"], types
        assert types.index("task-started") < types.index("task-succeeded")
        started = mine[[e["type"] for e in mine].index("task-started")]
        # from the prefork child: its parent's task-received may come later, the arguments must not
        assert started["arguments"] == {"args": [], "kwargs": {"message": "once"}}
        assert started["pid"] != next(e for e in mine if e["type"] == "task-received")["pid"]
        outcome = mine[[e["type"] for e in mine].index("task-succeeded")]
        assert outcome["runtime"] is not None
        assert outcome["runtime"] >= 0
        assert outcome["result"]
        assert outcome["host"].startswith("maintenance")
        wait_until(lambda: cache.get(holder_key(result.id, 0)) is None, timeout=10, message="the holder deleted")
    finally:
        cache.close()
        app.close()


@pytest.fixture(params=[False, True], ids=["events-off", "events-on"])
def own_redis(request: pytest.FixtureRequest, tmp_path: Path, settings: Settings) -> Iterator[tuple[Settings, Any]]:
    """Settings on a redis-server of this test's own, so that its counters count this test's commands only."""
    server = start_redis(tmp_path / "redis")
    update = {"redis_url": server.url_base, "broker_url": "", "result_backend": "", "events_enabled": request.param}
    client = server.client(1)
    try:
        yield settings.model_copy(update=update), client
    finally:
        client.close()
        server.stop()


def _reads(client: Any) -> int:
    return int(client.info("stats")["total_reads_processed"])


def test_a_state_write_is_one_round_trip_and_never_overwrites_a_success(own_redis: tuple[Settings, Any]) -> None:
    """Celery reads the stored state before every write (two round trips) so that a late write cannot replace
    a SUCCESS; the result store does both in one script."""
    own, client = own_redis
    app = create_celery_app("tester", own)
    task_id = str(uuid.uuid4())
    key = app.backend.get_key_for_task(task_id)
    listener = client.pubsub()
    listener.subscribe(key)
    try:
        app.backend.store_result(str(uuid.uuid4()), None, "SUCCESS")  # connected, and the script loaded
        idle = -_reads(client) + _reads(client)  # what reading the counter itself costs
        before = _reads(client)
        app.backend.store_result(task_id, {"pid": 1}, "STARTED")
        assert _reads(client) - before - idle == 1
        assert app.backend.get_state(task_id) == "STARTED"

        app.backend.store_result(task_id, "done", "SUCCESS")
        app.backend.store_result(task_id, {"pid": 2}, "STARTED")  # a lost worker's late write
        app.backend.store_result(task_id, None, "FAILURE")
        stored = json.loads(client.get(key))
        assert (stored["status"], stored["result"], stored["task_id"]) == ("SUCCESS", "done", task_id)
        assert 0 < client.ttl(key) <= own.result_expires_seconds

        published = []  # every write made has published before store_result returned
        while (message := listener.get_message(timeout=0.5)) is not None:
            if message["type"] == "message":
                published.append(json.loads(message["data"])["status"])
        assert published == ["STARTED", "SUCCESS"]
    finally:
        listener.close()
        lifecycle = events.for_app(app)
        if lifecycle is not None:
            lifecycle.close()
        app.close()


def _published(listener: Any, until: str, timeout: float = 60.0) -> list[str]:
    """The states published on the subscribed result key, up to ``until``."""
    seen: list[str] = []

    def finished() -> bool:
        while (message := listener.get_message(timeout=0.05)) is not None:
            if message["type"] == "message":
                seen.append(json.loads(message["data"])["status"])
        return until in seen

    wait_until(finished, timeout=timeout, message=f"{until} published")
    return seen


def test_a_worker_writes_started_only_for_a_task_still_running_a_flush_interval_later(
    settings: Settings, redis_server: RedisServer, clean_broker: None, worker_factory: Callable[..., Process]
) -> None:
    """A task's STARTED waits for the events flusher's next tick (the history has it from task-started at
    once): a short task's outcome overtakes it and it is never written, a long task's is there while it runs."""
    worker_factory("maintenance")
    app = create_celery_app("publisher", settings)
    results = redis_server.client(1)
    short, long = str(uuid.uuid4()), str(uuid.uuid4())
    listener = results.pubsub()
    listener.subscribe(app.backend.get_key_for_task(short), app.backend.get_key_for_task(long))
    try:
        app.send_task("mallops.maintenance.test_task", kwargs={"message": "quick"}, queue="default", task_id=short)
        assert _published(listener, "SUCCESS") == ["SUCCESS"]
        assert app.AsyncResult(short).get(timeout=10) == "Task received: quick"

        kwargs = {"steps": 2, "step_seconds": 3.0}
        app.send_task("mallops.maintenance.long_running_task", kwargs=kwargs, queue="default", task_id=long)
        wait_until(lambda: app.AsyncResult(long).state == "STARTED", timeout=30, message="STARTED while it runs")
        stored = json.loads(results.get(app.backend.get_key_for_task(long)) or b"{}")
        assert stored["result"]["pid"] > 0
        assert _published(listener, "SUCCESS") == ["STARTED", "PROGRESS", "PROGRESS", "SUCCESS"]
        assert app.AsyncResult(long).get(timeout=10) == {"current": 2, "total": 2}
    finally:
        listener.close()
        results.close()
        app.close()


def test_a_deferred_started_never_replaces_a_final_state(own_redis: tuple[Settings, Any]) -> None:
    own, client = own_redis
    app = create_celery_app("tester", own)
    try:
        for stored, written in (("FAILURE", 0), ("REVOKED", 0), ("SUCCESS", 0), ("RETRY", 1), ("PENDING", 1)):
            key = app.backend.get_key_for_task(str(uuid.uuid4()))
            client.set(key, json.dumps({"status": stored, "result": None}))
            started = json.dumps({"status": "STARTED", "result": {"pid": 1}})
            assert app.backend._script(keys=[key], args=[started, 60, KEEP_FINAL, ""]) == written, stored
            assert json.loads(client.get(key))["status"] == ("STARTED" if written else stored)
    finally:
        lifecycle = events.for_app(app)
        if lifecycle is not None:
            lifecycle.close()
        app.close()


def test_a_threads_worker_acknowledges_a_success_in_the_write_that_stores_it(
    settings: Settings,
    redis_server: RedisServer,
    clean_broker: None,
    worker_factory: Callable[..., Process],
    service_env: dict[str, str],
) -> None:
    """On the threads pool the process that stores a task's SUCCESS holds its message: the script that stores
    it also removes the message's unacked entry, index score and holder (no acknowledgement of its own)."""
    own_broker = f"{redis_server.url_base}/5"  # no other test's worker consumes there
    env = service_env | {"MALLOPS_MAINTENANCE_POOL": "threads", "MALLOPS_BROKER_URL": own_broker}
    worker = worker_factory("maintenance", env=env)
    app = create_celery_app("publisher", settings.model_copy(update={"broker_url": own_broker}))
    broker = redis_server.client(5)
    monitor = redis_server.client(5).monitor()
    try:
        with monitor as commands:
            seen: list[dict[str, Any]] = []
            for message in ("one", "two"):  # the first one's acknowledgement comes before the second's SUCCESS
                result = app.send_task("mallops.maintenance.test_task", kwargs={"message": message}, queue="default")
                assert result.get(timeout=60) == f"Task received: {message}"

            def acknowledged() -> bool:
                seen.append(commands.next_command())
                return sum(1 for c in seen if str(c["command"]).startswith("DEL mallops:held")) == 2

            wait_until(acknowledged, timeout=30, interval=0, message="both acknowledgements")
        removal = ("ZREM unacked_index", "HDEL unacked", "DEL mallops:held")
        removals = [c for c in seen if c["command"].startswith(removal)]
        assert [c["client_type"] for c in removals] == ["lua"] * 6  # in the scripts, not kombu's MULTI
        stored = [c for c in seen if c["command"].startswith("SETEX celery-task-meta-")]
        assert [json.loads(c["command"].split(" ", 3)[3])["status"] for c in stored] == ["SUCCESS", "SUCCESS"]
        assert all(c["client_type"] == "lua" for c in stored)
        assert seen.index(stored[1]) < seen.index(removals[3])  # each SUCCESS, then its removals
        tags = [c["command"].split(" ")[2] for c in removals if c["command"].startswith("ZREM")]
        assert [broker.hget("unacked", tag) for tag in tags] == [None, None]
        assert [broker.zscore("unacked_index", tag) for tag in tags] == [None, None]
    finally:
        worker.stop()
        broker.close()
        app.close()
