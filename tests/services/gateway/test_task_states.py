"""Every state the API can return is documented in its schemas and accepted by its ``status`` filters, and
every timestamp it returns is UTC with ``Z``."""

from __future__ import annotations

import datetime as dt
import json
import re
import uuid
from typing import Any

import pytest

from shared.contracts import HISTORY_STATES, TaskState
from shared.settings import Settings
from tests.harness import RedisServer
from tests.services.gateway.conftest import GatewayClient, GatewayFactory, Tokens, make_history

pytestmark = pytest.mark.integration
API = "/api/v1"
ALL_STATES = sorted(TaskState)
IDLE_BROKER_DB = 9  # a broker database no test worker consumes


def enum_of(openapi: dict[str, Any], schema: dict[str, Any]) -> list[str]:
    """The enum a (possibly referenced, possibly nullable) schema allows."""
    for option in schema.get("anyOf", [schema]):
        if "$ref" in option:
            option = openapi["components"]["schemas"][option["$ref"].rsplit("/", 1)[-1]]
        if "enum" in option:
            return sorted(option["enum"])
    return []


def test_every_state_is_documented_and_accepted_by_the_filters(client: GatewayClient, tokens: Tokens) -> None:
    openapi = client.get("/openapi.json").json()
    components = openapi["components"]["schemas"]
    for model, field in (("TaskDetail", "status"), ("TaskSummary", "status"), ("HistoryItem", "state")):
        assert enum_of(openapi, components[model]["properties"][field]) == ALL_STATES, model
    for path in ("/api/v1/tasks", "/api/v1/tasks/history"):
        (status,) = [p for p in openapi["paths"][path]["get"]["parameters"] if p["name"] == "status"]
        if path.endswith("/history"):  # one state or several, comma-separated: the description names them
            assert all(state in status["description"] for state in HISTORY_STATES), path
        else:
            assert enum_of(openapi, status["schema"]) == ALL_STATES, path
        for state in TaskState:
            answer = client.get(path, params={"status": state}, headers=tokens.auth("admin"))
            assert answer.status_code == 200, (path, state, answer.text)


UTC_Z = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$")


def timestamps(value: Any, key: str = "") -> list[tuple[str, str]]:
    """Every (field, value) of a JSON document whose field name says it is a time."""
    if isinstance(value, dict):
        return [pair for k, v in value.items() for pair in timestamps(v, k)]
    if isinstance(value, list):
        return [pair for item in value for pair in timestamps(item, key)]
    if isinstance(value, str) and (key.endswith("_at") or key in ("since", "until", "last_heartbeat")):
        return [(key, value)]
    return []


def test_every_timestamp_is_utc_with_z(
    gateway: GatewayFactory, tokens: Tokens, migrated: Settings, redis_server: RedisServer
) -> None:
    with gateway(broker_url=f"{redis_server.url_base}/{IDLE_BROKER_DB}") as client:  # no worker takes the task
        check_timestamps(client, tokens, migrated, redis_server)


def check_timestamps(client: GatewayClient, tokens: Tokens, migrated: Settings, redis_server: RedisServer) -> None:
    admin = tokens.auth("admin")
    task_id = client.post(f"{API}/tasks", json={"task_name": "test_task"}, headers=admin).json()["task_id"]
    # what Celery stores with timezone=Asia/Shanghai: date_done in local time
    results = redis_server.client(1)
    done = {"status": "SUCCESS", "result": "ok", "task_id": task_id, "date_done": "2030-01-01T08:00:00+08:00"}
    results.set(f"celery-task-meta-{task_id}", json.dumps(done))
    results.close()
    sent = dt.datetime(2030, 1, 2, tzinfo=dt.UTC) + dt.timedelta(minutes=uuid.uuid4().int % 100_000)
    make_history(migrated, tokens.alice_name, "SUCCESS", sent, 0.5)
    window = {"since": sent.isoformat(), "until": (sent + dt.timedelta(minutes=1)).isoformat()}

    detail = client.get(f"{API}/tasks/{task_id}", headers=admin).json()
    assert detail["finished_at"] == "2030-01-01T00:00:00Z"
    documents = [
        detail,
        client.get(f"{API}/tasks", headers=admin).json(),
        client.get(f"{API}/tasks/history", params=window, headers=admin).json(),
        client.get(f"{API}/tasks/stats", params=window, headers=admin).json(),
    ]
    seen = [pair for document in documents for pair in timestamps(document)]
    assert {key for key, _ in seen} >= {"sent_at", "finished_at", "started_at", "since", "until"}
    assert [(key, value) for key, value in seen if not UTC_Z.match(value)] == []
