"""Acceptance: the real gateway process (`mallops serve gateway`, uvicorn + uvloop + httptools), a real
maintenance worker, the run's Redis and database. Submit over HTTP, the worker runs it, read it back; follow a
long task's progress over Server-Sent Events to the end; retry a failed task; revoke a waiting one."""

from __future__ import annotations

import json
import secrets
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.harness import Process, free_port, service_argv, spawn, wait_until

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def admin_token() -> str:
    return "mlp_bootstrap_" + secrets.token_urlsafe(24)


@pytest.fixture(scope="module")
def gateway_process(
    service_env: dict[str, str], migrated: object, admin_token: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    port = free_port()
    env = {
        **service_env,
        "MALLOPS_BOOTSTRAP_ADMIN_TOKEN": admin_token,
        "MALLOPS_GATEWAY_PORT": str(port),
        "MALLOPS_TASK_MAX_PER_USER": "50",
    }
    process: Process = spawn("gateway", service_argv("gateway"), env, Path(tmp_path_factory.mktemp("gateway-log")))
    url = f"http://127.0.0.1:{port}"
    try:

        def ready() -> bool:
            if not process.alive():
                pytest.fail(f"the gateway exited:\n{process.log()[-3000:]}")
            return httpx.get(f"{url}/readyz", timeout=2).status_code == 200

        wait_until(ready, timeout=60, interval=0.2, message="the gateway process to be ready")
        yield url
    finally:
        process.stop()


@pytest.fixture
def api(gateway_process: str, admin_token: str) -> Iterator[httpx.Client]:
    with httpx.Client(
        base_url=f"{gateway_process}/api/v1", timeout=30, headers={"Authorization": f"Bearer {admin_token}"}
    ) as client:
        yield client


def wait_for_status(api: httpx.Client, task_id: str, statuses: set[str], timeout: float = 60) -> dict[str, Any]:
    def check() -> dict[str, Any] | None:
        body = api.get(f"/tasks/{task_id}").json()
        return body if body["status"] in statuses else None

    result: dict[str, Any] = wait_until(check, timeout=timeout, interval=0.2, message=f"task {task_id} in {statuses}")
    return result


def test_submit_run_and_read_back_test_task(api: httpx.Client, running_worker: Callable[[str], Process]) -> None:
    running_worker("maintenance")
    submitted = api.post("/tasks", json={"task_name": "test_task", "kwargs": {"message": "hello mall"}})
    assert submitted.status_code == 202, submitted.text
    task_id = submitted.json()["task_id"]
    body = wait_for_status(api, task_id, {"SUCCESS", "FAILURE"})
    assert body["status"] == "SUCCESS"
    assert body["result"] == "Task received: hello mall"
    assert body["task_name"] == "test_task"
    assert body["queue"] == "default"
    assert body["kwargs"] == {"message": "hello mall"}
    assert body["owner"] == "bootstrap-admin"
    assert body["worker"]
    assert body["worker"].startswith("maintenance")
    assert body["sent_at"]
    assert body["finished_at"]
    assert body["error"] is None
    listed = api.get("/tasks", params={"status": "SUCCESS", "task_name": "test_task"}).json()
    assert task_id in [row["task_id"] for row in listed["results"]]


def read_events(response: httpx.Response) -> Iterator[tuple[str, dict[str, Any]]]:
    event, data = "message", ""
    for line in response.iter_lines():
        if line.startswith("event:"):
            event = line.split(":", 1)[1].strip()
        elif line.startswith("data:"):
            data += line.split(":", 1)[1].strip()
        elif line == "" and data:
            yield event, json.loads(data)
            event, data = "message", ""


def test_long_running_task_streams_progress_to_the_end(
    api: httpx.Client, running_worker: Callable[[str], Process]
) -> None:
    running_worker("maintenance")
    submitted = api.post("/tasks", json={"task_name": "long_running_task", "kwargs": {"steps": 5, "step_seconds": 0.3}})
    task_id = submitted.json()["task_id"]
    events: list[tuple[str, dict[str, Any]]] = []
    with api.stream("GET", f"/tasks/{task_id}/events", timeout=httpx.Timeout(90)) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        for event in read_events(response):
            events.append(event)
            if event[0] == "end":
                break
    kinds = [kind for kind, _ in events]
    progress = [data["progress"]["current"] for kind, data in events if kind == "progress"]
    assert progress == [1, 2, 3, 4, 5], events
    assert all(data["progress"]["total"] == 5 for kind, data in events if kind == "progress")
    assert kinds[-1] == "end"
    assert events[-1][1]["status"] == "SUCCESS"
    assert events[-2][1]["status"] == "SUCCESS"
    assert events[-2][1]["result"] == {"current": 5, "total": 5}


def test_retry_resubmits_a_failed_task_with_its_arguments(
    api: httpx.Client, running_worker: Callable[[str], Process]
) -> None:
    running_worker("maintenance")
    failed_id = api.post("/tasks", json={"task_name": "test_task", "args": ["boom"], "kwargs": {"fail": True}}).json()[
        "task_id"
    ]
    failed = wait_for_status(api, failed_id, {"SUCCESS", "FAILURE"})
    assert failed["status"] == "FAILURE"
    assert failed["error"]["type"] == "RequestedFailure"
    assert "boom" in failed["error"]["message"]
    retried = api.post(f"/tasks/{failed_id}/retry")
    assert retried.status_code == 202, retried.text
    new = retried.json()
    assert new["task_id"] != failed_id
    assert new["retry_of"] == failed_id
    again = wait_for_status(api, new["task_id"], {"SUCCESS", "FAILURE"})
    assert again["status"] == "FAILURE"
    assert again["args"] == ["boom"]
    assert again["kwargs"] == {"fail": True}
    assert again["retry_of"] == failed_id


def test_revoke_a_waiting_task(api: httpx.Client, running_worker: Callable[[str], Process]) -> None:
    running_worker("maintenance")
    task_id = api.post("/tasks", json={"task_name": "test_task", "countdown": 3}).json()["task_id"]
    revoked = api.post(f"/tasks/{task_id}/revoke", json={"terminate": False})
    assert revoked.status_code == 202
    assert revoked.json() == {"task_id": task_id, "revoked": True, "terminate": False}
    body = wait_for_status(api, task_id, {"REVOKED", "SUCCESS"}, timeout=60)
    assert body["status"] == "REVOKED"


def test_openapi_and_docs_are_served(gateway_process: str) -> None:
    schema = httpx.get(f"{gateway_process}/openapi.json").json()
    assert "/api/v1/tasks" in schema["paths"]
    assert httpx.get(f"{gateway_process}/docs").status_code == 200
