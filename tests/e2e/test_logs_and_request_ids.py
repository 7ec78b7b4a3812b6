"""Logs for the tools people run: ``MALLOPS_LOG_FORMAT=json`` makes every process print one JSON object
per line, ``MALLOPS_LOG_LEVEL`` is read in any case, and the X-Request-ID of the request that submitted
a task reaches the worker's log lines and the task's history row."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from shared import models
from shared.db import session_scope
from shared.logs import normalize_level
from shared.settings import Settings
from tests.harness import Process, free_port, service_argv, spawn, start_worker, wait_until

pytestmark = pytest.mark.integration
ADMIN = "mlp_logs_admin_token_0123456789"


def test_log_levels_are_read_in_any_case() -> None:
    assert Settings(log_level="info").log_level == "INFO"
    assert Settings(log_level="Warn").log_level == "WARNING"
    assert Settings(log_format="JSON").log_format == "json"
    with pytest.raises(ValueError, match="unknown log level 'loud'"):
        normalize_level("loud")


def json_lines(process: Process) -> list[dict[str, Any]]:
    """Every line of the process's output, each parsed as one JSON object (fails on any other line)."""
    lines = [line for line in process.log().splitlines() if line.strip()]
    parsed = []
    for line in lines:
        try:
            value = json.loads(line)
        except json.JSONDecodeError:
            pytest.fail(f"{process.name} printed a line that is not JSON: {line!r}")
        assert isinstance(value, dict), line
        assert {"time", "level", "service", "logger", "message"} <= value.keys(), line
        parsed.append(value)
    return parsed


def test_json_logs_from_every_process_and_the_request_id_in_the_task(
    migrated: Settings, service_env: dict[str, str], tmp_path: Path
) -> None:
    env = service_env | {
        # a broker database of its own: no other test's worker takes this test's task
        "MALLOPS_BROKER_URL": service_env["MALLOPS_REDIS_URL"] + "/7",
        "MALLOPS_LOG_FORMAT": "json",
        "MALLOPS_LOG_LEVEL": "info",  # lower case: `mallops serve monitor` crashed on it
        "MALLOPS_BOOTSTRAP_ADMIN_TOKEN": ADMIN,
    }
    port, monitor_port = free_port(), free_port()
    processes = [
        spawn("gateway", service_argv("gateway", "--port", str(port)), env, tmp_path),
        spawn("monitor", service_argv("monitor", f"--port={monitor_port}", "--name=logs-test"), env, tmp_path),
        start_worker("maintenance", env, tmp_path),
    ]
    gateway, monitor, worker = processes
    request_id = f"req-{uuid.uuid4().hex[:12]}"
    try:
        wait_until(lambda: _answers(f"http://127.0.0.1:{port}/readyz", gateway), timeout=60, message="gateway")
        wait_until(lambda: _answers(f"http://127.0.0.1:{monitor_port}/health", monitor), timeout=60, message="monitor")
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as http:
            auth = {"Authorization": f"Bearer {ADMIN}"}
            accepted = http.post(
                "/api/v1/tasks",
                headers={**auth, "X-Request-ID": request_id},
                json={"task_name": "test_task", "kwargs": {"message": "traced"}},
            )
            assert accepted.status_code == 202, accepted.text
            assert accepted.headers["x-request-id"] == request_id
            task_id = accepted.json()["task_id"]
            made = http.get("/healthz").headers["x-request-id"]  # no id given: the gateway makes one
            assert len(made) == 32

        def recorded() -> str | None:
            with session_scope(migrated) as session:
                row = session.scalar(select(models.TaskRecord).where(models.TaskRecord.task_id == task_id))
                return row.request_id if row is not None and row.state == "SUCCESS" else None

        assert wait_until(recorded, timeout=60, interval=0.2, message="the history row") == request_id

        def worker_line() -> dict[str, Any] | None:
            return next((r for r in json_lines(worker) if r.get("task_id") == task_id), None)

        line = wait_until(worker_line, timeout=30, interval=0.2, message="a worker log line of the task")
        assert line["request_id"] == request_id
        assert line["service"] == "maintenance"
        assert line["task_name"] == "mallops.maintenance.test_task"
        access = [r for r in json_lines(gateway) if r["logger"] == "mallops.gateway.access"]
        assert any(r["request_id"] == request_id and "POST /api/v1/tasks 202" in r["message"] for r in access)
        assert {r["service"] for r in json_lines(gateway)} == {"gateway"}
        assert {r["level"] for r in json_lines(monitor)} <= {"INFO", "WARNING"}
        assert any("monitor serving /metrics" in r["message"] for r in json_lines(monitor))
    finally:
        for process in processes:
            process.stop()


def _answers(url: str, process: Process) -> bool:
    assert process.alive(), process.log()[-3000:]
    try:
        return httpx.get(url, timeout=1).status_code == 200
    except httpx.HTTPError:
        return False
