"""shared.celery_extensions.events: buffering, batched writes to the stream, keeping events while Redis is away."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from typing import Any

from celery import signals

from shared.celery_app import create_celery_app
from shared.celery_extensions import events
from shared.contracts import EVENT_STREAM, EventType
from shared.settings import Settings
from tests.harness import Process, RedisServer, free_port, wait_until


def test_events_are_buffered_then_written_in_one_batch(
    settings: Settings, redis_server: RedisServer, clean_broker: None
) -> None:
    host = f"tester-{uuid.uuid4().hex[:8]}@h"  # running workers write heartbeats into the same stream
    emitter = events.EventEmitter(settings, host)
    emitter.emit(EventType.TASK_STARTED, id="a", name="n", queue="default", retries=0)
    emitter.emit(EventType.TASK_SUCCEEDED, id="a", name="n", queue="default", retries=0, runtime=0.1)
    cache = redis_server.client(2)

    def mine() -> list[dict[str, object]]:
        found = [json.loads(fields[b"e"]) for _, fields in cache.xrange(EVENT_STREAM)]
        return [e for e in found if e.get("host") == host]

    try:
        assert emitter.pending + emitter.written == 2
        wait_until(lambda: len(mine()) == 2, timeout=10, message="background flush")
        assert emitter.pending == 0
        first, second = mine()
        assert first["type"] == "task-started"
        assert {"ts", "pid", "id", "name", "queue", "retries"} <= set(first)
        assert second["runtime"] == 0.1
    finally:
        emitter.close()
        cache.close()


def test_a_flush_writes_every_event_in_order_with_its_keys_after_redis_lost_the_script(
    settings: Settings, redis_server: RedisServer, clean_broker: None
) -> None:
    """One script command per EVENTS_PER_COMMAND events (by its digest); a server that forgot the script
    (restarted, SCRIPT FLUSH) gets it again within the same flush."""
    host = f"tester-{uuid.uuid4().hex[:8]}@h"
    quiet = settings.model_copy(update={"events_flush_interval": 60.0, "events_flush_size": 10_000})
    emitter = events.EventEmitter(quiet, host)
    cache = redis_server.client(2)
    count = events.EVENTS_PER_COMMAND * 2 + 5
    try:
        cache.script_flush()
        for i in range(count):
            emitter.emit(EventType.TASK_RECEIVED, id=str(i))
        emitter.put(f"mallops:test:{host}", "kept", 60)
        emitter.forget(f"mallops:test:gone:{host}")
        cache.set(f"mallops:test:gone:{host}", "x")
        emitter.flush()  # or the flusher thread, which put() wakes
        wait_until(lambda: emitter.written == count and emitter.pending == 0, timeout=10, message="the flush")
        found = [json.loads(fields[b"e"]) for _, fields in cache.xrange(EVENT_STREAM)]
        assert [e["id"] for e in found if e.get("host") == host] == [str(i) for i in range(count)]
        assert cache.get(f"mallops:test:{host}") == b"kept"
        assert 0 < cache.ttl(f"mallops:test:{host}") <= 60
        assert cache.get(f"mallops:test:gone:{host}") is None
    finally:
        emitter.close()
        cache.delete(f"mallops:test:{host}")
        cache.close()


def test_events_wait_for_redis_instead_of_being_lost(settings: Settings) -> None:
    unreachable = settings.model_copy(
        update={"redis_url": f"redis://127.0.0.1:{free_port()}", "events_flush_interval": 60.0}
    )
    emitter = events.EventEmitter(unreachable, "tester@h")
    try:
        for i in range(5):
            emitter.emit(EventType.TASK_RECEIVED, id=str(i))
        assert emitter.flush() == 0
        assert emitter.pending == 5
    finally:
        emitter._stopping.set()
        emitter._wake.set()


def test_installing_twice_connects_each_handler_once(settings: Settings) -> None:
    one = create_celery_app("one", settings)
    two = create_celery_app("two", settings.model_copy(update={"redis_url": "redis://127.0.0.1:1"}))
    # each app has its own events, writing where its own settings say
    assert events.for_app(one) is not None
    assert events.for_app(two) is not None
    assert events.for_app(one) is not events.for_app(two)
    assert events.for_app(two).emitter._url.startswith("redis://127.0.0.1:1/")  # type: ignore[union-attr]
    one.close()
    two.close()
    receivers = [r for r in signals.task_prerun.receivers if "mallops.events" in str(r[0])]
    assert len(receivers) == 1


def test_a_published_task_emits_task_sent_with_its_owner(
    settings: Settings, redis_server: RedisServer, clean_broker: None
) -> None:
    # a broker database no worker listens on, so the message stays unconsumed
    app = create_celery_app("publisher", settings.model_copy(update={"broker_url": f"{redis_server.url_base}/5"}))
    cache = redis_server.client(2)
    try:
        result = app.send_task(
            "mallops.maintenance.test_task",
            kwargs={"message": "hi"},
            queue="default",
            headers={"mallops_owner": "carol"},
            ignore_result=True,
        )

        def sent() -> dict[str, object] | None:
            for _, fields in cache.xrange(EVENT_STREAM):
                event = json.loads(fields[b"e"])
                if event.get("id") == result.id:
                    return dict(event)
            return None

        event = wait_until(sent, timeout=10, message="task-sent event")
        assert event["type"] == "task-sent"
        assert event["owner"] == "carol"
        assert event["queue"] == "default"
        assert event["name"] == "mallops.maintenance.test_task"
        assert event["args"] == '{"message": "hi"}'  # the arguments as JSON, from the message body
    finally:
        broker = redis_server.client(5)
        broker.flushdb()
        broker.close()
        cache.close()
        app.close()


def test_a_revocation_names_its_reason() -> None:
    assert events.revocation_reason(True, 15, False) == ("Terminated", "terminated by SIGTERM")
    assert events.revocation_reason(True, "SIGKILL", False) == ("Terminated", "terminated by signal SIGKILL")
    assert events.revocation_reason(False, None, True) == ("Expired", "expired before it ran")
    assert events.revocation_reason(False, None, False) == ("Revoked", "revoked before it ran")


def test_a_task_run_by_a_worker_emits_one_task_received_with_its_tag_and_arguments(
    settings: Settings, redis_server: RedisServer, clean_broker: None, worker_factory: Callable[..., Process]
) -> None:
    worker_factory("maintenance")
    app = create_celery_app("publisher", settings)
    cache = redis_server.client(2)
    try:
        task_id = app.send_task(
            "mallops.maintenance.test_task", kwargs={"message": "once"}, queue="default", ignore_result=True
        ).id

        def task_events() -> list[dict[str, Any]] | None:
            found = [json.loads(fields[b"e"]) for _, fields in cache.xrange(EVENT_STREAM)]
            mine = [event for event in found if event.get("id") == task_id]
            # task-received comes from the pool's parent, whose buffer may be flushed after the child's outcome
            return mine if {"task-received", "task-succeeded"} <= {event["type"] for event in mine} else None

        mine = wait_until(task_events, timeout=60, message="the task's events")
        received = [event for event in mine if event["type"] == "task-received"]
        assert len(received) == 1, received  # one per delivery, not one per extension that reads it
        assert received[0]["delivery_tag"]
        assert received[0]["arguments"] == {"args": [], "kwargs": {"message": "once"}}
    finally:
        cache.close()
        app.close()
