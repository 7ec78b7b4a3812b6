"""shared.celery_extensions.result_store: a task's state and the worker's buffered lifecycle events in one
write, with every event still in the stream once."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from typing import Any

from shared.celery_app import create_celery_app
from shared.celery_extensions import events
from shared.celery_extensions.redelivery import holder_key
from shared.celery_extensions.result_store import ResultStore
from shared.contracts import EVENT_STREAM, EventType
from shared.settings import Settings
from tests.harness import Process, RedisServer, free_port, wait_until


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
        app.backend.store_result(task_id, "done", "SUCCESS")  # nothing buffered: Celery's own write
        assert app.backend.get_state(task_id) == "SUCCESS"
        assert len(_stream(cache, "host", host)) == 1
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
        assert type(off.backend) is not ResultStore
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
            mine = _stream(cache, "id", result.id)
            return mine if any(e["type"] == "task-succeeded" for e in mine) else None

        mine = wait_until(succeeded, timeout=60, message="the task's events")
        types = [e["type"] for e in mine if e["type"] != "task-sent"]
        assert sorted(types) == ["task-received", "task-started", "task-succeeded"], types
        assert types.index("task-started") < types.index("task-succeeded")
        outcome = mine[[e["type"] for e in mine].index("task-succeeded")]
        assert outcome["runtime"] is not None
        assert outcome["runtime"] >= 0
        assert outcome["result"]
        assert outcome["host"].startswith("maintenance")
        wait_until(lambda: cache.get(holder_key(result.id, 0)) is None, timeout=10, message="the holder deleted")
    finally:
        cache.close()
        app.close()
