"""Across processes: a real gateway process and a real reports worker.

An export submitted over HTTP lands as a file whose ``exports`` row names the token that asked for it
(the ``mallops_owner`` header contract), and the gateway's access log of those very requests reaches the
``access_logs`` table through process_access_logs.
"""

from __future__ import annotations

import csv
import uuid
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select

from shared import models
from shared.db import session_scope
from shared.settings import Settings
from shared.tokens import create_token
from tests.harness import Process, free_port, service_argv, spawn, wait_until
from tests.plugins.catalog_tasks import Submit

pytestmark = pytest.mark.integration


def test_http_export_and_its_access_log(
    demo_db: Settings,
    service_env: dict[str, str],
    running_worker: Callable[[str], Process],
    submit_task: Submit,
    tmp_path: Path,
) -> None:
    running_worker("reports")
    name = f"reporter-{uuid.uuid4().hex[:8]}"
    with session_scope(demo_db) as session:
        secret = create_token(session, name, "user")
    port = free_port()
    gateway = spawn("gateway", service_argv("gateway", "--port", str(port)), service_env, tmp_path)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as http:
            wait_until(
                lambda: http.get("/healthz").status_code == 200,
                timeout=60,
                interval=0.2,
                message=f"the gateway on port {port}",
            )
            accepted = http.post(
                "/api/v1/tasks",
                headers={"Authorization": f"Bearer {secret}"},
                json={"task_name": "export_data", "kwargs": {"dataset": "stores", "format": "csv"}},
            )
            assert accepted.status_code == 202, accepted.text
            task_id = accepted.json()["task_id"]
            refused = http.get("/api/v1/catalog")
            assert refused.status_code == 401
            request_ids = {accepted.headers["x-request-id"]: 202, refused.headers["x-request-id"]: 401}

            def finished() -> models.Export | None:
                with session_scope(demo_db) as session:
                    row = session.scalar(select(models.Export).where(models.Export.task_id == task_id))
                return row if row is not None and row.status == "done" else None

            export = wait_until(finished, timeout=120, interval=0.2, message="the export")
            assert export.owner == name
            assert export.rows == 20
            with (demo_db.exports_dir / str(export.file_name)).open(newline="") as handle:
                assert len(list(csv.reader(handle))) == 21

            def drained() -> dict[str, models.AccessLog] | None:
                submit_task("process_access_logs").get(timeout=60)
                with session_scope(demo_db) as session:
                    rows = {
                        r.request_id: r
                        for r in session.scalars(
                            select(models.AccessLog).where(models.AccessLog.request_id.in_(list(request_ids)))
                        )
                    }
                return rows if len(rows) == len(request_ids) else None

            rows = wait_until(drained, timeout=60, interval=0.5, message="the access log in the database")
        assert {rid: row.status for rid, row in rows.items()} == request_ids
        posted = rows[accepted.headers["x-request-id"]]
        assert (posted.method, posted.path, posted.principal) == ("POST", "/api/v1/tasks", name)
        assert rows[refused.headers["x-request-id"]].principal is None
    finally:
        gateway.stop()
