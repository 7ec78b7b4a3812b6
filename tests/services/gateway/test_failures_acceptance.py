"""Acceptance of the failure tools against real processes: a maintenance worker and the monitor on a
redis-server of the test's own, the gateway app on the run's database (SQLite or PostgreSQL).

- a failure's traceback reads back through ``GET /api/v1/tasks/{id}`` and the history;
- a bulk retry of the 50 failed tasks an argument filter selects, among failed tasks with other arguments
  and succeeded tasks with the same ones, retries exactly those 50;
- a malformed message pushed onto a queue shows up in ``GET /api/v1/dead-letters`` (and the monitor's
  ``mallops_dead_letters``), its replay goes back onto the queue and is recorded by the admin-action hook;
  a poison message is replayed only with ``force`` and then runs; dead letters are dropped by filter.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from services.gateway.app import create_app
from shared import dead_letter_store
from shared.db import session_scope
from shared.settings import Settings
from shared.tokens import create_token
from tests.harness import wait_until
from tests.security.test_malformed_messages import envelope, task_body, task_headers
from tests.services.gateway.conftest import serve
from tests.services.monitor.conftest import MonitorStack, monitor_stack  # noqa: F401 - the stack fixture

pytestmark = pytest.mark.integration
API = "/api/v1"


@pytest.fixture
def api(monitor_stack: MonitorStack, migrated: Settings) -> Iterator[httpx.Client]:  # noqa: F811
    """A worker, the monitor and a gateway on the stack's Redis; an admin client."""
    stack = monitor_stack
    stack.worker()
    stack.monitor()
    settings = migrated.model_copy(
        update={
            "redis_url": stack.redis.url_base,
            "broker_url": f"{stack.redis.url_base}/0",
            "result_backend": f"{stack.redis.url_base}/1",
        }
    )
    with session_scope(settings) as session:
        token = create_token(session, f"failures-{stack.port}", "admin")
    with (
        serve(create_app(settings)) as url,
        httpx.Client(base_url=f"{url}{API}", timeout=30, headers={"Authorization": f"Bearer {token}"}) as client,
    ):
        yield client


def submit(api: httpx.Client, tasks: list[dict[str, Any]]) -> list[str]:
    answer = api.post("/tasks/batch", json={"tasks": tasks})
    assert answer.status_code == 202, answer.text
    return [item["task_id"] for item in answer.json()["results"]]


def history_states(api: httpx.Client, ids: list[str], **params: Any) -> dict[str, str]:
    """The history's state of each of ``ids`` (admin, newest 500 matching ``params``)."""
    rows = api.get("/tasks/history", params={"limit": 500, **params}).json()["results"]
    wanted = set(ids)
    return {row["task_id"]: row["state"] for row in rows if row["task_id"] in wanted}


def failing(message: str) -> dict[str, Any]:
    return {"task_name": "test_task", "kwargs": {"message": message, "fail": True}}


def test_traceback_and_a_bulk_retry_by_argument_value(api: httpx.Client) -> None:
    store12 = submit(api, [failing("exports of store 12") for _ in range(50)])
    others = submit(api, [failing("exports of store 13") for _ in range(15)])
    succeeded = submit(
        api, [{"task_name": "test_task", "kwargs": {"message": "exports of store 12"}} for _ in range(10)]
    )
    everything = store12 + others + succeeded

    def all_recorded() -> dict[str, str] | None:
        states = history_states(api, everything)
        return (
            states
            if len(states) == len(everything) and all(s in ("SUCCESS", "FAILURE") for s in states.values())
            else None
        )

    states = wait_until(all_recorded, timeout=120, interval=0.5, message="75 finished tasks in the history")
    assert sorted(states[task_id] for task_id in succeeded) == ["SUCCESS"] * 10

    # the traceback of a failure, from the result backend and from the history
    detail = api.get(f"/tasks/{store12[0]}").json()
    assert detail["status"] == "FAILURE"
    assert detail["error"]["type"] == "RequestedFailure"
    assert detail["traceback"].startswith("Traceback (most recent call last)")
    assert "diagnostics.py" in detail["traceback"]
    assert "RequestedFailure: test_task failed on request: exports of store 12" in detail["traceback"]
    row = next(
        r
        for r in api.get("/tasks/history", params={"status": "FAILURE", "limit": 500}).json()["results"]
        if r["task_id"] == store12[0]
    )
    assert "RequestedFailure" in row["traceback"]
    assert row["arguments"] == {"args": [], "kwargs": {"message": "exports of store 12", "fail": True}}

    selection = {"status": "FAILURE", "task_name": "test_task", "arguments": {"kwargs.message": "exports of store 12"}}
    dry = api.post("/tasks/retry", json={**selection, "dry_run": True})
    assert dry.status_code == 200, dry.text
    assert dry.json() == {"dry_run": True, "matched": 50, "count": 0, "results": [], "skipped": []}

    done = api.post("/tasks/retry", json=selection)
    assert done.status_code == 200, done.text
    answer = done.json()
    assert answer["matched"] == 50
    assert answer["count"] == 50
    assert answer["skipped"] == []
    assert sorted(item["task_id"] for item in answer["results"]) == sorted(store12)
    new_ids = [item["new_task_id"] for item in answer["results"]]
    trail = api.get("/audit", params={"action": "tasks.bulk"}).json()["results"]
    # the batches above are recorded too, and so are other tests' bulk actions in the shared database
    recorded = [row for row in trail if row["target"] != "submit" and row["actor"].startswith("failures-")]
    assert [(row["target"], len(row["details"]["retried"])) for row in recorded] == [("retry", 50)]
    assert recorded[0]["details"]["filters"]["arguments"] == {"kwargs.message": "exports of store 12"}
    assert not set(new_ids) & set(everything)

    # each new task runs with the original arguments (and fails again, as asked) and names its original
    for item in answer["results"][:3]:
        new = api.get(f"/tasks/{item['new_task_id']}").json()
        assert new["retry_of"] == item["task_id"]
        assert new["kwargs"] == {"message": "exports of store 12", "fail": True}

    def retried_recorded() -> dict[str, str] | None:
        states = history_states(api, new_ids, status="FAILURE")
        return states if len(states) == 50 else None

    wait_until(retried_recorded, timeout=120, interval=0.5, message="the 50 retries in the history")
    rows = api.get("/tasks/history", params={"status": "FAILURE", "limit": 500}).json()["results"]
    lineage = {row["task_id"]: row["retry_of"] for row in rows if row["task_id"] in set(new_ids)}
    assert sorted(lineage.values()) == sorted(store12)
    # asked again, the same selection finds only the 50 retries (which failed too), not the originals
    again = api.post("/tasks/retry", json={**selection, "dry_run": True}).json()
    assert again["matched"] == 50
    # nothing else was retried: 50 + 15 + 10 originals and the 50 retries, no more
    total = api.get("/tasks/history", params={"task_name": "test_task", "limit": 500}).json()["results"]
    assert len(total) == 125

    # bad selections are refused
    assert api.post("/tasks/retry", json={"status": "SUCCESS"}).status_code == 422
    assert api.post("/tasks/retry", json={"limit": 1001}).status_code == 422
    assert api.post("/tasks/revoke", json={"status": "FAILURE"}).status_code == 422
    revoke = api.post("/tasks/revoke", json={"task_name": "test_task", "dry_run": True})
    assert revoke.status_code == 200
    assert revoke.json()["matched"] == 0


def letters(api: httpx.Client, **params: Any) -> list[dict[str, Any]]:
    answer = api.get("/dead-letters", params=params)
    assert answer.status_code == 200, answer.text
    results: list[dict[str, Any]] = answer.json()["results"]
    return results


def test_dead_letters_are_listed_replayed_with_a_record_and_dropped(
    api: httpx.Client,
    monitor_stack: MonitorStack,  # noqa: F811
) -> None:
    stack = monitor_stack
    broker, cache = stack.redis.client(0), stack.redis.client(2)
    unknown = "mallops.maintenance.no_such_task"
    task_id = "3f8c0a52-5b8e-4c1e-9d59-000000000001"
    broker.lpush("default", envelope(task_headers(unknown, task_id), task_body({"filters": {"store_id": 12}})))

    def listed() -> dict[str, Any] | None:
        found = [x for x in letters(api) if x["task_id"] == task_id]
        return found[0] if found else None

    letter = wait_until(listed, timeout=60, interval=0.2, message="the malformed message in GET /dead-letters")
    assert re.fullmatch(r"[0-9a-f]{32}", letter["id"])
    assert letter["reason"] == f"unknown task {unknown!r}"
    assert letter["exception"] == "NotRegistered"
    assert letter["task"] == unknown
    assert letter["queue"] == "default"
    assert letter["arguments"] == {"args": [], "kwargs": {"filters": {"store_id": 12}}}
    assert letter["at"].endswith("Z")
    assert letter["replayable"]
    assert not letter["poison"]
    wait_until(lambda: stack.value("mallops_dead_letters") == 1.0, timeout=20, message="mallops_dead_letters 1")
    whole = api.get(f"/dead-letters/{letter['id']}").json()
    assert whole["headers"]["id"] == task_id
    assert whole["body"] == task_body({"filters": {"store_id": 12}}).decode()

    replay = api.post(f"/dead-letters/{letter['id']}/replay")
    assert replay.status_code == 200, replay.text
    replayed = replay.json()
    assert replayed["id"] == letter["id"]
    assert replayed["queue"] == "default"
    assert replayed["replay_of"] == task_id
    assert replayed["task_id"] != task_id
    trail = api.get("/audit", params={"action": "dead_letter.replay"}).json()["results"]
    trail = [row for row in trail if row["actor"].startswith("failures-")]  # not other tests' replays
    assert [(row["target"], row["outcome"]) for row in trail] == [(letter["id"], "ok")]
    assert trail[0]["details"]["letters"] == [replayed]
    assert trail[0]["actor"].startswith("failures-")
    assert api.get(f"/dead-letters/{letter['id']}").status_code == 404
    assert api.post(f"/dead-letters/{letter['id']}/replay").status_code == 404

    # back on its queue, the worker took it again: still an unknown task, so a new letter, with the new id
    def again() -> dict[str, Any] | None:
        found = [x for x in letters(api) if x["task_id"] == replayed["task_id"]]
        return found[0] if found else None

    second = wait_until(again, timeout=60, interval=0.2, message="the replayed message dead-lettered again")
    assert second["id"] != letter["id"]

    # a poison message goes back only with force, then runs
    poison, message = dead_letter_store.build(
        "dead-lettered: delivered 6 times and its worker died during each of the 5 runs",
        exception=dead_letter_store.POISON,
        queue="default",
        headers=task_headers("mallops.maintenance.test_task", "3f8c0a52-5b8e-4c1e-9d59-000000000002"),
        body=task_body({"message": "back from the dead"}),
        content_type="application/json",
        content_encoding="utf-8",
        max_body_bytes=1_000_000,
    )
    dead_letter_store.add(cache, poison, message)
    refused = api.post(f"/dead-letters/{poison.id}/replay")
    assert refused.status_code == 409
    assert refused.json()["type"] == "urn:mallops:problem:poison-message"
    forced = api.post(f"/dead-letters/{poison.id}/replay", json={"force": True})
    assert forced.status_code == 200, forced.text

    def ran() -> dict[str, Any] | None:
        task = api.get(f"/tasks/{forced.json()['task_id']}")
        return task.json() if task.status_code == 200 and task.json()["status"] == "SUCCESS" else None

    done = wait_until(ran, timeout=60, interval=0.2, message="the forced replay to run")
    assert done["result"] == "Task received: back from the dead"

    # dropped by filter: what is left of the unknown task; the gauge follows
    assert api.delete("/dead-letters").status_code == 422  # no filter, no all=true
    dry = api.delete("/dead-letters", params={"task": unknown, "dry_run": True}).json()
    assert dry["matched"] == 1
    assert dry["count"] == 0
    dropped = api.delete("/dead-letters", params={"task": unknown})
    assert dropped.status_code == 200, dropped.text
    assert dropped.json()["count"] == 1
    assert letters(api) == []
    wait_until(lambda: stack.value("mallops_dead_letters") == 0.0, timeout=20, message="mallops_dead_letters 0")
    drops = api.get("/audit", params={"action": "dead_letter.drop"}).json()["results"]
    assert drops[0]["target"] == "selection"
    assert drops[0]["details"]["ids"] == [second["id"]]

    for client in (broker, cache):
        client.close()


def test_a_bulk_revoke_by_argument_value_revokes_the_waiting_tasks_it_selects(api: httpx.Client) -> None:
    def waiting(steps: int) -> dict[str, Any]:
        return {"task_name": "long_running_task", "kwargs": {"steps": steps, "step_seconds": 0}, "countdown": 4}

    selected = submit(api, [waiting(7) for _ in range(5)])
    others = submit(api, [waiting(8) for _ in range(3)])

    def seen() -> dict[str, str] | None:
        states = history_states(api, selected + others)
        return states if len(states) == 8 else None

    wait_until(seen, timeout=30, interval=0.2, message="the 8 waiting tasks in the history")
    selection = {"task_name": "long_running_task", "arguments": {"kwargs.steps": 7}}
    answer = api.post("/tasks/revoke", json=selection)
    assert answer.status_code == 200, answer.text
    assert sorted(item["task_id"] for item in answer.json()["results"]) == sorted(selected)

    def finished() -> dict[str, str] | None:
        states = history_states(api, selected + others)
        done = all(state in ("SUCCESS", "REVOKED") for state in states.values())
        return states if len(states) == 8 and done else None

    states = wait_until(finished, timeout=60, interval=0.3, message="the revoked and the other tasks to end")
    assert {states[task_id] for task_id in selected} == {"REVOKED"}
    assert {states[task_id] for task_id in others} == {"SUCCESS"}
