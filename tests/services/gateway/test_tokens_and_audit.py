"""Tokens over the API, the audit trail over the API, and the limit on requests without a valid token."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Callable
from typing import Any

import pytest
from sqlalchemy import event, select, update

from shared import audit
from shared.db import session_scope
from shared.models import ApiToken, Store
from shared.settings import Settings
from shared.tokens import create_token
from tests.harness import Process, wait_until
from tests.services.gateway.conftest import GatewayClient, GatewayFactory, make_report

pytestmark = pytest.mark.integration


@pytest.fixture
def admin(migrated: Settings) -> dict[str, str]:
    name = f"admin-{uuid.uuid4().hex[:6]}"
    with session_scope(migrated) as session:
        secret = create_token(session, name, "admin")
    return {"Authorization": f"Bearer {secret}", "name": name}


def _auth(headers: dict[str, str]) -> dict[str, str]:
    return {"Authorization": headers["Authorization"]}


def _trail(client: GatewayClient, admin: dict[str, str], **params: Any) -> list[dict[str, Any]]:
    answer = client.get("/api/v1/audit", params={"limit": 500, **params}, headers=_auth(admin))
    assert answer.status_code == 200, answer.text
    results: list[dict[str, Any]] = answer.json()["results"]
    return results


def test_tokens_over_the_api(client: GatewayClient, admin: dict[str, str], demo_db: Settings) -> None:
    with session_scope(demo_db) as session:
        store = int(session.scalar(select(Store.id).order_by(Store.id)) or 0)
    name = f"shop-{uuid.uuid4().hex[:6]}"
    expires = (dt.datetime.now(dt.UTC) + dt.timedelta(days=30)).replace(microsecond=0)
    body = {"name": name, "role": "store_manager", "stores": [store], "expires_at": expires.isoformat()}
    created = client.post("/api/v1/tokens", json=body, headers=_auth(admin))
    assert created.status_code == 201, created.text
    secret = created.json()["token"]
    assert created.json()["stores"] == [store]
    assert client.get("/api/v1/catalog", headers={"Authorization": f"Bearer {secret}"}).status_code == 200

    listed = client.get("/api/v1/tokens", headers=_auth(admin))
    assert listed.status_code == 200
    assert secret not in listed.text
    mine = next(row for row in listed.json()["results"] if row["name"] == name)
    assert mine["role"] == "store_manager"
    assert mine["stores"] == [store]
    assert dt.datetime.fromisoformat(mine["expires_at"]) == expires
    assert mine["last_used_at"] is not None
    assert mine["active"] is True

    assert client.post("/api/v1/tokens", json=body, headers=_auth(admin)).status_code == 409
    for bad in (
        {"name": f"n-{uuid.uuid4().hex[:6]}", "role": "store_manager"},  # a store manager needs stores
        {"name": f"n-{uuid.uuid4().hex[:6]}", "role": "viewer", "stores": [2_000_000_000]},  # no such store
        {"name": f"n-{uuid.uuid4().hex[:6]}", "role": "root"},
        {"name": "bad name", "role": "viewer"},
    ):
        answer = client.post("/api/v1/tokens", json=bad, headers=_auth(admin))
        assert answer.status_code == 422, (bad, answer.text)
        assert answer.headers["content-type"] == "application/problem+json"

    revoked = client.delete(f"/api/v1/tokens/{name}", headers=_auth(admin))
    assert revoked.status_code == 200
    assert revoked.json()["revoked_at"] is not None
    assert client.get("/api/v1/catalog", headers={"Authorization": f"Bearer {secret}"}).status_code == 401
    again = client.delete(f"/api/v1/tokens/{name}", headers=_auth(admin))
    assert again.status_code == 200
    assert again.json()["revoked_at"] == revoked.json()["revoked_at"]  # final, and the row stays
    assert client.delete("/api/v1/tokens/nobody-at-all", headers=_auth(admin)).status_code == 404

    entries = _trail(client, admin, actor=admin["name"])
    actions = {(e["action"], e["target"]) for e in entries}
    assert {("token.create", name), ("token.revoke", name)} <= actions
    created_entry = next(e for e in entries if e["action"] == "token.create" and e["target"] == name)
    assert created_entry["details"]["role"] == "store_manager"
    assert all(secret not in str(e) for e in entries)


def test_an_expired_token_is_refused(gateway: GatewayFactory, migrated: Settings) -> None:
    name = f"short-{uuid.uuid4().hex[:6]}"
    with session_scope(migrated) as session:
        secret = create_token(session, name, "viewer")
    auth = {"Authorization": f"Bearer {secret}"}
    with gateway(token_cache_seconds=0.5) as client:
        assert client.get("/api/v1/catalog", headers=auth).status_code == 200
        with session_scope(migrated) as session:
            past = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1)
            session.execute(update(ApiToken).where(ApiToken.name == name).values(expires_at=past))
        wait_until(
            lambda: client.get("/api/v1/catalog", headers=auth).status_code == 401,
            timeout=10,
            interval=0.1,
            message="the expired token to be refused",
        )


def test_actions_are_in_the_audit_trail(
    client: GatewayClient, admin: dict[str, str], migrated: Settings, running_worker: Callable[[str], Process]
) -> None:
    running_worker("maintenance")
    auth = _auth(admin)
    later = {"task_name": "test_task", "countdown": 600}
    revoked = client.post("/api/v1/tasks", json=later, headers=auth).json()["task_id"]
    assert client.post(f"/api/v1/tasks/{revoked}/revoke", json={}, headers=auth).status_code == 202
    failing = {"task_name": "test_task", "kwargs": {"fail": True}}
    submitted = client.post("/api/v1/tasks", json=failing, headers=auth).json()["task_id"]
    wait_until(
        lambda: client.get(f"/api/v1/tasks/{submitted}", headers=auth).json()["status"] == "FAILURE",
        timeout=60,
        interval=0.2,
        message="the task to fail",
    )
    assert client.post(f"/api/v1/tasks/{submitted}/retry", headers=auth).status_code == 202
    batch = {"tasks": [{"task_name": "test_task"}, {"task_name": "test_task"}]}
    assert client.post("/api/v1/tasks/batch", json=batch, headers=auth).status_code == 202
    patch = {"enabled": False}
    assert client.patch("/api/v1/schedules/cleanup_old_notifications", json=patch, headers=auth).status_code == 200
    migrated.reports_dir.mkdir(parents=True, exist_ok=True)
    (migrated.reports_dir / "audited.csv").write_text("a\n")
    report = make_report(migrated, "audited.csv", None)
    assert client.get(f"/api/v1/reports/{report}/file?format=csv", headers=auth).status_code == 200

    def recorded() -> set[tuple[str, str | None]] | None:
        found = {(e["action"], e["target"]) for e in _trail(client, admin, actor=admin["name"])}
        wanted = {
            ("task.revoke", revoked),
            ("task.retry", submitted),
            ("tasks.bulk", "submit"),
            ("schedule.update", "cleanup_old_notifications"),
            ("report.download", str(report)),
        }
        return found if wanted <= found else None

    assert wait_until(recorded, timeout=10, interval=0.1, message="every action in the audit trail")
    schedule = _trail(client, admin, action="schedule.update", actor=admin["name"])[0]
    assert schedule["details"] == {"enabled": False}


def test_the_audit_api_filters_pages_and_keeps_no_secret(
    client: GatewayClient, admin: dict[str, str], migrated: Settings
) -> None:
    actor = f"someone-{uuid.uuid4().hex[:6]}"
    start = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    with session_scope(migrated) as session:
        for i in range(7):
            audit.record(
                session,
                actor=actor,
                action="token.create" if i % 2 else "task.retry",
                target=f"t{i}",
                details={"token": "mlp_secret", "password": "pw", "nested": {"api_token": "x", "kept": i}},
                at=start + dt.timedelta(hours=i),
            )
    pages: list[dict[str, Any]] = []
    cursor = None
    while True:
        params: dict[str, Any] = {"actor": actor, "limit": 2, **({"cursor": cursor} if cursor else {})}
        page = client.get("/api/v1/audit", params=params, headers=_auth(admin)).json()
        pages.extend(page["results"])
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert [e["target"] for e in pages] == [f"t{i}" for i in reversed(range(7))]
    assert all(e["details"] == {"nested": {"kept": int(e["target"][1:])}} for e in pages)
    only = _trail(client, admin, actor=actor, action="token.create")
    assert {e["target"] for e in only} == {"t1", "t3", "t5"}
    window = _trail(client, admin, actor=actor, since="2026-01-01T02:00:00Z", until="2026-01-01T04:00:00Z")
    assert {e["target"] for e in window} == {"t2", "t3"}
    assert client.get("/api/v1/audit", params={"cursor": "nope"}, headers=_auth(admin)).status_code == 422
    naive = client.get("/api/v1/audit", params={"since": "2026-01-01T00:00:00"}, headers=_auth(admin))
    assert naive.status_code == 422


def test_auth_failures_are_limited_per_client_without_database_queries(
    gateway: GatewayFactory, migrated: Settings
) -> None:
    with session_scope(migrated) as session:
        good = create_token(session, f"good-{uuid.uuid4().hex[:6]}", "viewer")
    with gateway(auth_failures_per_minute=20) as client:
        engine = client.app.state.runtime.sessions.kw["bind"]
        queries: list[str] = []

        def count(*args: Any) -> None:
            queries.append(str(args[2]))

        assert client.get("/api/v1/catalog", headers={"Authorization": f"Bearer {good}"}).status_code == 200
        event.listen(engine, "before_cursor_execute", count)
        try:
            statuses = [
                client.get("/api/v1/catalog", headers={"Authorization": f"Bearer mlp_guess_{i:04d}_{'x' * 20}"})
                for i in range(20)
            ]
            assert [r.status_code for r in statuses] == [401] * 20
            looked_up = len(queries)
            assert looked_up >= 20
            blocked = [
                client.get("/api/v1/tasks", headers={"Authorization": f"Bearer mlp_more_{i:04d}_{'y' * 20}"})
                for i in range(30)
            ]
            missing = client.get("/api/v1/tasks")
            assert len(queries) == looked_up  # not one database query for the refused ones
        finally:
            event.remove(engine, "before_cursor_execute", count)
        for answer in [*blocked, missing]:
            assert answer.status_code == 429
            assert answer.headers["content-type"] == "application/problem+json"
            assert 1 <= int(answer.headers["retry-after"]) <= 60
        # a token already verified is not held up by its address' failures; the probes need no token
        assert client.get("/api/v1/catalog", headers={"Authorization": f"Bearer {good}"}).status_code == 200
        for path in ("/healthz", "/readyz", "/metrics"):
            assert client.get(path).status_code == 200
