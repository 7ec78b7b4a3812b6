"""Every endpoint x {no token, bad token, revoked token, user, other user, admin} -> the expected status."""

from __future__ import annotations

import time
from typing import Any

import pytest

from shared.db import session_scope
from shared.settings import Settings
from shared.tokens import create_token, revoke_token
from tests.harness import wait_until
from tests.services.gateway.conftest import GatewayClient, GatewayFactory, Tokens, make_export, make_report

pytestmark = pytest.mark.integration

CALLERS = ("none", "bad", "revoked", "user", "other", "admin")
PUBLIC = dict.fromkeys(CALLERS, 200)


def user_endpoint(user: int, other: int | None = None, admin: int | None = None) -> dict[str, int]:
    """Needs any valid token. ``user`` is the owner, ``other`` another user (404 for someone else's task)."""
    return {
        "none": 401,
        "bad": 401,
        "revoked": 401,
        "user": user,
        "other": user if other is None else other,
        "admin": user if admin is None else admin,
    }


def admin_endpoint(admin: int) -> dict[str, int]:
    return {"none": 401, "bad": 401, "revoked": 401, "user": 403, "other": 403, "admin": admin}


# (method, path, json body, expected status per caller); {task} is a PENDING task of "user"
ENDPOINTS: list[tuple[str, str, Any, dict[str, int]]] = [
    ("GET", "/healthz", None, PUBLIC),
    ("GET", "/readyz", None, PUBLIC),
    ("GET", "/metrics", None, PUBLIC),
    ("GET", "/openapi.json", None, PUBLIC),
    ("GET", "/docs", None, PUBLIC),
    ("GET", "/api/v1/catalog", None, user_endpoint(200)),
    ("POST", "/api/v1/tasks", {"task_name": "test_task", "kwargs": {"message": "m"}}, user_endpoint(202)),
    ("POST", "/api/v1/tasks/batch", {"tasks": [{"task_name": "test_task"}]}, user_endpoint(202)),
    ("GET", "/api/v1/tasks", None, user_endpoint(200)),
    ("GET", "/api/v1/tasks/{task}", None, user_endpoint(200, other=404)),
    ("GET", "/api/v1/tasks/{task}/events", None, user_endpoint(200, other=404)),
    ("POST", "/api/v1/tasks/{task}/retry", None, user_endpoint(409, other=404)),  # 409: it has not failed
    ("POST", "/api/v1/tasks/{task}/revoke", {"terminate": False}, admin_endpoint(202)),
    ("GET", "/api/v1/tasks/history", None, user_endpoint(200)),
    ("GET", "/api/v1/tasks/stats", None, user_endpoint(200)),
    ("GET", "/api/v1/workers", None, admin_endpoint(200)),
    ("GET", "/api/v1/queues", None, admin_endpoint(200)),
    ("GET", "/api/v1/schedules", None, user_endpoint(200)),
    ("GET", "/api/v1/schedules/cleanup_old_notifications", None, user_endpoint(200)),
    ("PATCH", "/api/v1/schedules/cleanup_old_notifications", {"enabled": True}, admin_endpoint(200)),
    (
        "POST",
        "/api/v1/schedules",
        {"name": "matrix", "task_name": "test_task", "schedule": {"every": 3600}, "kwargs": {"message": "m"}},
        admin_endpoint(201),
    ),
    ("POST", "/api/v1/schedules/matrix/run", None, admin_endpoint(202)),
    ("DELETE", "/api/v1/schedules/matrix", None, admin_endpoint(204)),
    ("GET", "/api/v1/reports", None, user_endpoint(200)),
    ("GET", "/api/v1/reports/{report}", None, user_endpoint(200)),
    ("GET", "/api/v1/reports/{report}/file?format=csv", None, user_endpoint(200)),
    ("GET", "/api/v1/exports/{export}", None, user_endpoint(200, other=404)),
    ("GET", "/api/v1/exports/{export}/download", None, user_endpoint(200, other=404)),
]


def headers_for(caller: str, tokens: Tokens) -> dict[str, str]:
    secret = {
        "none": None,
        "bad": "mlp_not-a-real-token-at-all",
        "revoked": tokens.revoked,
        "user": tokens.alice,
        "other": tokens.bob,
        "admin": tokens.admin,
    }[caller]
    return {"Authorization": f"Bearer {secret}"} if secret else {}


def call(client: GatewayClient, method: str, path: str, body: Any, headers: dict[str, str]) -> int:
    with client.stream(method, path, json=body, headers=headers) as response:
        return response.status_code  # streams (SSE) are closed without reading them


def test_authorization_matrix(gateway: GatewayFactory, tokens: Tokens, migrated: Settings) -> None:
    migrated.reports_dir.mkdir(parents=True, exist_ok=True)
    (migrated.reports_dir / "matrix.csv").write_text("a,b\n")
    report_id = make_report(migrated, "matrix.csv", None)
    migrated.exports_dir.mkdir(parents=True, exist_ok=True)
    (migrated.exports_dir / "matrix-export.csv").write_text("a,b\n")
    export_id = make_export(migrated, tokens.alice_name, file_name="matrix-export.csv")
    # quota and rate limit out of the way: this test is about who may do what
    with gateway(task_max_per_user=1000, rate_limit_per_minute=10_000, auth_failures_per_minute=10_000) as client:
        submitted = client.post(
            "/api/v1/tasks",
            json={"task_name": "test_task", "kwargs": {"message": "mine"}},
            headers=tokens.auth("alice"),
        )
        assert submitted.status_code == 202, submitted.text
        task_id = submitted.json()["task_id"]
        failures = []
        for method, template, body, expected in ENDPOINTS:
            path = template.format(task=task_id, report=report_id, export=export_id)
            for caller in CALLERS:
                status = call(client, method, path, body, headers_for(caller, tokens))
                if status != expected[caller]:
                    failures.append(f"{method} {template} as {caller}: {status}, expected {expected[caller]}")
        assert failures == []


def test_unauthorized_answers_say_how_to_authenticate(client: GatewayClient, tokens: Tokens) -> None:
    response = client.get("/api/v1/tasks")
    assert response.status_code == 401
    assert response.headers["www-authenticate"].startswith("Bearer")
    assert response.headers["content-type"] == "application/problem+json"
    assert "Authorization: Bearer" in response.json()["detail"]
    malformed = client.get("/api/v1/tasks", headers={"Authorization": "Basic dXNlcjpwdw=="})
    assert malformed.status_code == 401


def test_a_token_revoked_while_in_use_is_refused_within_the_cache_delay(
    gateway: GatewayFactory, migrated: Settings
) -> None:
    name = f"soon-revoked-{time.monotonic_ns()}"
    with session_scope(migrated) as session:
        secret = create_token(session, name, "user")
    auth = {"Authorization": f"Bearer {secret}"}
    with gateway(token_cache_seconds=1.0) as client:
        assert client.get("/api/v1/catalog", headers=auth).status_code == 200  # now cached as valid
        with session_scope(migrated) as session:
            revoke_token(session, name)
        started = time.monotonic()
        wait_until(
            lambda: client.get("/api/v1/catalog", headers=auth).status_code == 401,
            timeout=15,
            interval=0.1,
            message="the revoked token to be refused",
        )
        assert time.monotonic() - started < 10


def test_last_used_is_recorded(client: GatewayClient, tokens: Tokens, migrated: Settings) -> None:
    from shared.tokens import list_tokens

    assert client.get("/api/v1/catalog", headers=tokens.auth("bob")).status_code == 200
    with session_scope(migrated) as session:
        info = {row.name: row for row in list_tokens(session)}[tokens.bob_name]
    assert info.last_used_at is not None
