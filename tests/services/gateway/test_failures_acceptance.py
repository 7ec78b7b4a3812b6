"""Acceptance of the failure tools against real processes: a maintenance worker and the monitor on a
redis-server of the test's own, the gateway app on the run's database (SQLite or PostgreSQL).

- a failure's traceback reads back through ``GET /api/v1/tasks/{id}`` and the history;
- a bulk retry of the 50 failed tasks an argument filter selects, among failed tasks with other arguments
  and succeeded tasks with the same ones, retries exactly those 50.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from services.gateway.app import create_app
from shared.db import session_scope
from shared.settings import Settings
from shared.tokens import create_token
from tests.harness import wait_until
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
