"""The history's filters over HTTP: several states at once, argument values (nested), time; SQLite and
PostgreSQL alike (the run's database)."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

import pytest

from shared.settings import Settings
from shared.taskmeta import META_KEY, TaskMeta
from tests.harness import RedisServer
from tests.services.gateway.conftest import GatewayClient, Tokens, make_history

pytestmark = pytest.mark.integration
API = "/api/v1"


def export_args(store_id: Any, status: str = "paid", fmt: str = "csv") -> dict[str, Any]:
    return {
        "args": [],
        "kwargs": {"dataset": "bills", "format": fmt, "filters": {"store_id": store_id, "status": status}},
    }


def test_filters_by_states_argument_values_and_time(client: GatewayClient, tokens: Tokens, migrated: Settings) -> None:
    base = dt.datetime(2031, 1, 1, tzinfo=dt.UTC) + dt.timedelta(minutes=uuid.uuid4().int % 100_000)
    owner = tokens.alice_name
    export = "mallops.reports.export_data"

    def row(state: str, seconds: int, arguments: dict[str, Any] | None) -> str:
        return make_history(
            migrated, owner, state, base + dt.timedelta(seconds=seconds), task_name=export, arguments=arguments
        )

    store12_failed = row("FAILURE", 1, export_args(12))
    store12_revoked = row("REVOKED", 2, export_args(12))
    store12_ok = row("SUCCESS", 3, export_args(12))
    store12_text = row("FAILURE", 4, export_args("12"))  # a string "12" matches as well
    store13 = row("FAILURE", 5, export_args(13))
    no_arguments = row("FAILURE", 6, None)
    later = row("FAILURE", 120, export_args(12, fmt="xlsx"))
    window = {"since": base.isoformat(), "until": (base + dt.timedelta(minutes=1)).isoformat()}

    def ids(**params: Any) -> list[str]:
        answer = client.get(f"{API}/tasks/history", params=params, headers=tokens.auth("alice"))
        assert answer.status_code == 200, answer.text
        return [item["task_id"] for item in answer.json()["results"]]

    assert ids(**window, status="FAILURE,REVOKED", **{"kwargs.filters.store_id": "12"}) == [
        store12_text,
        store12_revoked,
        store12_failed,
    ]
    assert ids(**window, **{"kwargs.filters.store_id": "12"}) == [
        store12_text,
        store12_ok,
        store12_revoked,
        store12_failed,
    ]
    assert ids(**window, status="failure", **{"kwargs.filters.store_id": 13}) == [store13]
    assert ids(**window, **{"kwargs.dataset": "bills", "kwargs.filters.status": "paid", "kwargs.format": "csv"}) == [
        store13,
        store12_text,
        store12_ok,
        store12_revoked,
        store12_failed,
    ]
    assert ids(since=base.isoformat(), **{"kwargs.format": "xlsx"}) == [later]
    assert no_arguments in ids(**window, status="FAILURE")
    assert ids(**window, **{"kwargs.filters.nothing_here": "12"}) == []
    flagged = row("FAILURE", 7, {"args": [], "kwargs": {"fail": True, "ratio": 0.5}})
    assert ids(**window, **{"kwargs.fail": "true"}) == [flagged]
    assert ids(**window, **{"kwargs.fail": "false"}) == []
    assert ids(**window, **{"kwargs.ratio": "0.5"}) == [flagged]

    page = client.get(
        f"{API}/tasks/history", params={**window, "status": "FAILURE"}, headers=tokens.auth("alice")
    ).json()
    shown = {item["task_id"]: item for item in page["results"]}
    assert shown[store13]["arguments"] == export_args(13)

    for bad in ({"status": "FAILURE,NOPE"}, {"kwargs.filters.store id": "1"}, {"kwargs.": "1"}):
        answer = client.get(f"{API}/tasks/history", params=bad, headers=tokens.auth("alice"))
        assert answer.status_code == 422, (bad, answer.text)
        assert answer.headers["content-type"] == "application/problem+json"


def test_a_failure_whose_result_expired_shows_its_traceback_from_the_history(
    client: GatewayClient, tokens: Tokens, migrated: Settings, redis_server: RedisServer
) -> None:
    """The result backend forgets a result after an hour; the gateway's record of the task lives 7 days:
    GET /tasks/{id} then reads the state, the error and the traceback from the history."""
    sent = dt.datetime.now(dt.UTC) - dt.timedelta(hours=2)
    trace = 'Traceback (most recent call last):\n  File "diagnostics.py", line 24, in echo\nRequestedFailure: boom'
    task_id = make_history(migrated, tokens.alice_name, "FAILURE", sent, traceback=trace)
    meta = TaskMeta(task_id, "test_task", "default", tokens.alice_name, [], {"fail": True}, sent)
    cache = redis_server.client(2)
    cache.set(META_KEY + task_id, meta.to_json(), ex=600)
    body = client.get(f"{API}/tasks/{task_id}", headers=tokens.auth("alice")).json()
    cache.close()
    assert body["status"] == "FAILURE"
    assert body["error"] == {"type": "RequestedFailure", "message": "failed on request"}
    assert body["traceback"] == trace
