"""Malformed messages put straight on a queue do not crash a worker, are rejected and are recorded.

A real maintenance worker and a real monitor on a redis-server of the module's own. Messages are LPUSHed
onto the ``default`` list as kombu's Redis transport would store them (or not at all like it): garbage,
JSON that is no envelope, an undecodable body, a pickle, an unknown task, no task header, no id or one that is
not a string, headers of the wrong type, a body that is not [args, kwargs, options], arguments of the wrong
type. Then a valid task: it succeeds, so the worker kept consuming. Every bad message left the queue
(nothing is redelivered forever), has a dead letter or a history row with the reason, or both.
"""

from __future__ import annotations

import base64
import functools
import json
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from services.gateway.task_filters import argument_clauses, parse_arguments
from shared import dead_letter_store
from shared.contracts import DELIVERY_HOLDER_PREFIX
from shared.db import session_scope
from shared.models import TaskRecord
from shared.settings import Settings
from tests.harness import Process, RedisServer, free_port, service_argv, spawn, wait_until

pytestmark = pytest.mark.integration

QUEUE = "default"


def envelope(headers: dict[str, Any], body: bytes, content_type: str = "application/json") -> bytes:
    """A message as kombu's Redis transport stores it in the queue's list."""
    return json.dumps(
        {
            "body": base64.b64encode(body).decode(),
            "content-encoding": "utf-8",
            "content-type": content_type,
            "headers": headers,
            "properties": {
                "correlation_id": headers.get("id", "x"),
                "reply_to": "",
                "delivery_mode": 2,
                "delivery_info": {"exchange": QUEUE, "routing_key": QUEUE},
                "priority": 0,
                "body_encoding": "base64",
                "delivery_tag": str(uuid.uuid4()),
            },
        }
    ).encode()


def task_headers(task: Any, task_id: Any, **extra: Any) -> dict[str, Any]:
    return {
        "lang": "py",
        "task": task,
        "id": task_id,
        "shadow": None,
        "eta": None,
        "expires": None,
        "group": None,
        "group_index": None,
        "retries": 0,
        "timelimit": [None, None],
        "root_id": task_id,
        "parent_id": None,
        "argsrepr": "()",
        "kwargsrepr": "{}",
        "origin": "tests",
        "ignore_result": False,
        "mallops_owner": "mallory",
        **extra,
    }


def task_body(kwargs: dict[str, Any]) -> bytes:
    return json.dumps([[], kwargs, {"callbacks": None, "errbacks": None, "chain": None, "chord": None}]).encode()


@pytest.fixture
def platform(
    service_env: dict[str, str],
    migrated: Settings,
    worker_factory: Callable[..., Process],
    module_redis: RedisServer,
    tmp_path: Path,
) -> Iterator[tuple[dict[str, str], Process, str]]:
    base = module_redis.url_base
    for db in (0, 1, 2):
        module_redis.client(db).flushdb()
    env = service_env | {
        "MALLOPS_REDIS_URL": base,
        "MALLOPS_BROKER_URL": f"{base}/0",
        "MALLOPS_RESULT_BACKEND": f"{base}/1",
        "MALLOPS_TASK_RETRY_BACKOFF": "0",
    }
    worker = worker_factory("maintenance", env=env)
    port = free_port()
    monitor = spawn(
        "monitor", service_argv("monitor", f"--port={port}", "--name=monitor-security"), env, tmp_path / "logs"
    )
    wait_until(
        lambda: httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200,
        timeout=60,
        interval=0.2,
        message="monitor /health",
    )
    yield env, worker, f"http://127.0.0.1:{port}"
    monitor.stop()
    worker.stop()


def in_state(settings: Settings, task_id: str, state: str) -> TaskRecord | None:
    """The task's history row once it is in ``state``."""
    with session_scope(settings) as session:
        row = session.scalar(select(TaskRecord).where(TaskRecord.task_id == task_id))
        if row is None or row.state != state:
            return None
        session.expunge(row)
        return row


def test_malformed_messages_are_dead_lettered_and_the_worker_keeps_consuming(
    platform: tuple[dict[str, str], Process, str],
    module_redis: RedisServer,
    migrated: Settings,
) -> None:
    _, worker, _ = platform
    broker = module_redis.client(0)
    rejected = (
        "undecodable",
        "pickle",
        "unknown",
        "bad_retries",
        "bad_timelimit",
        "task_not_a_name",
        "kwargs_not_a_mapping",
        "args_not_a_list",
        "body_not_a_triple",
        "celery_builtin",
        "canvas_chain",
    )
    ids = {name: str(uuid.uuid4()) for name in (*rejected, "wrong_types", "nul", "valid")}
    test_task = "mallops.maintenance.test_task"
    without_id = [
        b"this is not json {",
        b"\xff\xfe\xfa not utf-8",
        b"[1, 2, 3]",
        b'"a string"',
        b'{"body": "no properties"}',
        json.dumps(
            {
                "body": "!!! not base64 !!!",
                "headers": {},
                "content-type": "application/json",
                "properties": {"body_encoding": "base64", "delivery_tag": "t", "delivery_info": {"routing_key": QUEUE}},
            }
        ).encode(),
        envelope({}, b'{"no": "task header"}'),  # no task header, not protocol 1 either
        envelope({k: v for k, v in task_headers(test_task, "x").items() if k != "id"}, task_body({})),  # no id
        envelope(task_headers(test_task, 12345), task_body({})),  # an id that is not a string
    ]
    with_id = [
        envelope(task_headers(test_task, ids["undecodable"]), b"\x00 not json at all"),
        envelope(
            task_headers(test_task, ids["pickle"]), b"\x80\x04K\x01.", content_type="application/x-python-serialize"
        ),
        envelope(task_headers("mallops.maintenance.no_such_task", ids["unknown"]), task_body({})),
        envelope(task_headers(test_task, ids["bad_retries"], retries="many"), task_body({})),
        envelope(task_headers(test_task, ids["bad_timelimit"], timelimit=[1, 2, 3]), task_body({})),
        envelope(task_headers(["not", "a", "name"], ids["task_not_a_name"]), task_body({})),
        envelope(task_headers(test_task, ids["kwargs_not_a_mapping"]), b'[[], ["message"], {}]'),
        envelope(task_headers(test_task, ids["args_not_a_list"]), b'[{"message": "m"}, {}, {}]'),
        envelope(task_headers(test_task, ids["body_not_a_triple"]), b"[[]]"),
        envelope(task_headers("celery.accumulate", ids["celery_builtin"]), task_body({})),  # Celery internals
        envelope(  # a valid task with a chain behind it: Celery's canvas is not run
            task_headers(test_task, ids["canvas_chain"]),
            json.dumps([[], {}, {"chain": [{"task": "mallops.maintenance.cleanup_cache", "kwargs": {}}]}]).encode(),
        ),
    ]
    wrong_types = envelope(
        task_headers(test_task, ids["wrong_types"]), task_body({"message": ["not", "a", "string"], "fail": "perhaps"})
    )
    # valid, but its result echoes a NUL character, which PostgreSQL text cannot hold (the history must cope)
    nul = envelope(task_headers(test_task, ids["nul"]), task_body({"message": "a\x00b"}))
    valid = envelope(task_headers(test_task, ids["valid"]), task_body({"message": "still here"}))
    for raw in [*without_id, *with_id, wrong_types, nul, valid]:
        broker.lpush(QUEUE, raw)

    results = module_redis.client(1)

    def finished() -> dict[str, Any] | None:
        raw = results.get(f"celery-task-meta-{ids['valid']}")
        meta: dict[str, Any] | None = json.loads(raw) if raw else None
        return meta if meta and meta["status"] in ("SUCCESS", "FAILURE") else None

    done = wait_until(finished, timeout=60, message="the valid task after the malformed ones")
    assert done["status"] == "SUCCESS"
    assert done["result"] == "Task received: still here"
    assert worker.alive()
    assert "Unrecoverable error" not in worker.log()
    # every message left the queue, and none waits to be redelivered
    assert broker.llen(QUEUE) == 0
    wait_until(lambda: broker.hlen("unacked") == 0, timeout=10, message="no unacknowledged message left")
    # the holders the worker's pops wrote beside the unacked entries went with them (run, dropped or
    # never recorded: a message the pop script cannot read gets neither, and the pop does not fail)
    assert list(broker.scan_iter(f"{DELIVERY_HOLDER_PREFIX}*")) == []

    cache = module_redis.client(2)
    expected = len(without_id) + len(with_id)

    def recorded() -> list[dict[str, Any]] | None:
        _, found = dead_letter_store.find(cache, dead_letter_store.LetterFilter(), limit=1000)
        rows = [vars(letter) for letter in found]
        return rows if len(rows) >= expected else None

    letters = wait_until(recorded, timeout=20, message=f"{expected} dead letters")
    assert len(letters) == expected
    assert all(letter["reason"] and letter["queue"] == QUEUE for letter in letters), letters
    by_id = {letter["task_id"]: letter for letter in letters if letter["task_id"]}
    assert set(by_id) == {ids[name] for name in rejected}
    assert by_id[ids["bad_timelimit"]]["exception"] == "InvalidTaskHeaders"
    assert by_id[ids["kwargs_not_a_mapping"]]["exception"] == "InvalidTaskBody"
    assert by_id[ids["kwargs_not_a_mapping"]]["reason"].startswith("the body is not [args")
    assert by_id[ids["canvas_chain"]]["exception"] == "InvalidTaskBody"
    assert by_id[ids["canvas_chain"]]["reason"].startswith("a canvas message (chain)")
    assert by_id[ids["unknown"]]["exception"] == "NotRegistered"
    assert "no_such_task" in by_id[ids["unknown"]]["reason"]
    assert by_id[ids["pickle"]]["exception"] == "ContentDisallowed"
    assert sum("not a JSON message envelope" in letter["reason"] for letter in letters) == 2
    assert len({letter["id"] for letter in letters}) == expected  # each has an id of its own
    stored = [dead_letter_store.get_message(cache, letter["id"]) for letter in letters]
    assert any(m is not None and not m.envelope and m.body == "this is not json {" for m in stored)
    assert by_id[ids["unknown"]]["arguments"] == {"args": [], "kwargs": {}}
    assert by_id[ids["unknown"]]["envelope"]
    assert by_id[ids["unknown"]]["owner"] == "mallory"

    # the history: the ones with an id are REJECTED with the reason, wrong types FAILED with the field errors
    for name in rejected:
        task_id = ids[name]
        row = wait_until(
            functools.partial(in_state, migrated, task_id, "REJECTED"),
            timeout=30,
            message=f"the REJECTED history row of {name}",
        )
        assert row.error, name
        assert row.owner == "mallory" or name == "task_not_a_name", name
    failed = wait_until(
        lambda: in_state(migrated, ids["wrong_types"], "FAILURE"),
        timeout=30,
        message="the FAILURE row of the wrong argument types",
    )
    assert failed.exception == "InvalidTaskArguments"
    echoed = wait_until(
        lambda: in_state(migrated, ids["nul"], "SUCCESS"),
        timeout=30,
        message="the SUCCESS row of the task whose result has a NUL character",
    )
    assert echoed.result_summary == "Task received: a\ufffdb"
    assert echoed.arguments == {"args": [], "kwargs": {"message": "a\ufffdb"}}
    with session_scope(migrated) as session:  # and its arguments can be searched (PostgreSQL: no \u0000 in JSON)
        where = argument_clauses(parse_arguments({"kwargs.message": "a\ufffdb"}), session.get_bind().dialect.name)
        assert session.scalars(select(TaskRecord.task_id).where(*where)).all() == [ids["nul"]]
    assert in_state(migrated, ids["valid"], "SUCCESS") is not None  # and the monitor went on
    assert "message: Input should be a valid string" in (failed.error or "")
    assert "fail: Input should be a valid boolean" in (failed.error or "")
    for client in (broker, results, cache):
        client.close()
