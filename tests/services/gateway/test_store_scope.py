"""A store_manager token scoped to one store exports bills through the real gateway and a real reports
worker: the file holds that store's rows and no other; another store is 403; both are in the audit trail."""

from __future__ import annotations

import csv
import io
import uuid
from collections.abc import Callable
from typing import Any

import pytest
from sqlalchemy import func, select

from shared import permissions
from shared.db import session_scope
from shared.models import Bill
from shared.settings import Settings
from shared.tokens import create_token
from tests.harness import Process, wait_until
from tests.services.gateway.conftest import GatewayClient, GatewayFactory

pytestmark = pytest.mark.integration


def _finished(client: GatewayClient, task_id: str, auth: dict[str, str]) -> dict[str, Any]:
    def done() -> dict[str, Any] | None:
        task: dict[str, Any] = client.get(f"/api/v1/tasks/{task_id}", headers=auth).json()
        return task if task["status"] in ("SUCCESS", "FAILURE") else None

    result = wait_until(done, timeout=120, interval=0.2, message="the export to finish")
    assert result is not None
    return result


def test_a_scoped_store_manager_exports_only_its_store(
    gateway: GatewayFactory, demo_db: Settings, running_worker: Callable[[str], Process]
) -> None:
    running_worker("reports")
    with session_scope(demo_db) as session:
        grouped = session.execute(select(Bill.store_id, func.count()).group_by(Bill.store_id)).all()
        counts = {int(store): int(count) for store, count in grouped}
        mine, other = sorted(counts)[:2]
        suffix = uuid.uuid4().hex[:6]
        manager = f"manager-{suffix}"
        secret = create_token(session, manager, "store_manager", stores=[mine])
        admin = create_token(session, f"auditor-{suffix}", "admin")
    auth = {"Authorization": f"Bearer {secret}"}

    with gateway() as client:
        answer = client.post(
            "/api/v1/tasks", json={"task_name": "export_data", "kwargs": {"dataset": "bills"}}, headers=auth
        )
        assert answer.status_code == 202, answer.text
        task_id = answer.json()["task_id"]
        task = _finished(client, task_id, auth)
        assert task["status"] == "SUCCESS", task
        download = client.get(f"/api/v1/exports/{task_id}/download", headers=auth)
        assert download.status_code == 200
        rows = list(csv.DictReader(io.StringIO(download.content.decode("utf-8-sig"))))
        assert len(rows) == counts[mine] > 0
        assert {int(row["store_id"]) for row in rows} == {mine}

        refused = client.post(
            "/api/v1/tasks",
            json={"task_name": "export_data", "kwargs": {"dataset": "bills", "filters": {"store_id": other}}},
            headers=auth,
        )
        assert refused.status_code == 403
        assert refused.headers["content-type"] == "application/problem+json"
        assert refused.json()["permission"] == permissions.STORES_ALL
        # asking for its own store explicitly is fine; a dataset needs no store filter to be scoped
        own = {"dataset": "bills", "filters": {"store_id": mine}}
        assert (
            client.post("/api/v1/tasks", json={"task_name": "export_data", "kwargs": own}, headers=auth).status_code
            == 202
        )
        # mall-wide reports are closed to it
        assert client.get("/api/v1/reports", headers=auth).status_code == 403

        trail = client.get(
            "/api/v1/audit", params={"actor": manager, "limit": 100}, headers={"Authorization": f"Bearer {admin}"}
        )
        assert trail.status_code == 200
        entries = trail.json()["results"]
        by_action = {(e["action"], e["outcome"], e["target"]): e for e in entries}
        submitted = by_action[("task.submit", "ok", task_id)]
        assert submitted["details"]["arguments"]["filters"]["store_ids"] == [mine]
        assert ("export.download", "ok", task_id) in by_action
        denied = by_action[("task.submit", "denied", "export_data")]
        assert denied["details"]["permission"] == permissions.STORES_ALL
        assert all(e["request_id"] and e["client"] == "127.0.0.1" for e in entries)
        assert secret not in trail.text
