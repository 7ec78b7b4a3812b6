"""Every role x every endpoint x every catalog task, against the real gateway, its Redis and the database.

The expectations are written out here from the issue's words (who may submit and see what), not derived
from ``shared.permissions``, so that a change of a bundle that breaks a promise fails this test.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from sqlalchemy import select

from services.gateway.app import create_app
from shared import permissions
from shared.catalog import CATALOG
from shared.db import session_scope
from shared.models import ApiToken, Report, Store, TaskRecord, Tenant
from shared.permissions import ROLES
from shared.settings import Settings
from shared.tokens import create_token
from tests.services.gateway.conftest import GatewayClient, GatewayFactory, make_export, make_report

pytestmark = pytest.mark.integration

OPEN = {"quota": 1_000_000, "rate": 1_000_000, "auth": 1_000_000}
CALLERS = (*ROLES, "none")

# -- which tasks each role may submit (the issue, in its own words) -------------------------------
FINANCE_TASKS = {"check_pending_bills", "send_bill_reminders", "calculate_monthly_revenue"}
PERIOD_REPORTS = {f"generate_{period}_report" for period in ("hourly", "daily", "weekly", "monthly")}
ACCESS_LOG_TASKS = {"process_access_logs", "generate_access_statistics"}
MAINTENANCE = {
    "backup_database",
    "cleanup_cache",
    "cleanup_expired_data",
    "cleanup_old_access_records",
    "cleanup_old_notifications",
}
DIAGNOSTICS = {"test_task", "long_running_task"}
# send_report_email mails a stored report to MALLOPS_MANAGEMENT_EMAILS only: whoever may build the reports may
REPORT_MAIL = {"send_report_email"}
OPERATOR_TASKS = (
    PERIOD_REPORTS | ACCESS_LOG_TASKS | {"export_data", "send_notification_email"} | DIAGNOSTICS | REPORT_MAIL
)
MAY_SUBMIT: dict[str, set[str]] = {
    "viewer": set(),
    "store_manager": {"export_data"} | DIAGNOSTICS,
    "finance": FINANCE_TASKS | PERIOD_REPORTS | {"export_data"} | DIAGNOSTICS | REPORT_MAIL,
    "operator": OPERATOR_TASKS,
    "admin": set(CATALOG),
    "user": OPERATOR_TASKS,
}
ARGUMENTS: dict[str, dict[str, Any]] = {  # valid arguments per task ({tenant} is a tenant's address)
    "send_notification_email": {"email": "{tenant}", "subject": "s", "message": "m"},
    "export_data": {"dataset": "bills"},
    "calculate_monthly_revenue": {"year": 2026, "month": 10},
    "long_running_task": {"steps": 1, "step_seconds": 0},
    "run_workflow": {"name": "month_end_close", "kwargs": {"year": 2026, "month": 10}},
}


@dataclass
class World:
    client: GatewayClient
    secrets: dict[str, str]
    names: dict[str, str]
    store_id: int
    tenant: str
    user_task: str  # test_task of the `user` token, PENDING
    revoke_task: str  # another test_task of `user`, for the revoke calls
    finance_task: str  # check_pending_bills of `admin` (finance queue)
    maintenance_task: str  # cleanup_cache of `admin`
    report: int
    access_report: int
    export: str  # an export of `user`
    user_workflow: str  # an ad-hoc workflow of `user`

    def auth(self, caller: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.secrets[caller]}"} if caller in self.secrets else {}


def _tokens(settings: Settings, store_id: int) -> tuple[dict[str, str], dict[str, str]]:
    suffix = uuid.uuid4().hex[:8]
    names: dict[str, str] = {role: f"{role}-{suffix}" for role in ROLES}
    with session_scope(settings) as session:
        secrets: dict[str, str] = {
            role: create_token(session, names[role], role, stores=[store_id] if role == "store_manager" else None)
            for role in ROLES
        }
    return secrets, names


def _submit(client: GatewayClient, secret: str, task_name: str, kwargs: dict[str, Any] | None = None) -> str:
    answer = client.post(
        "/api/v1/tasks",
        json={"task_name": task_name, "kwargs": kwargs or {}},
        headers={"Authorization": f"Bearer {secret}"},
    )
    assert answer.status_code == 202, answer.text
    return str(answer.json()["task_id"])


@pytest.fixture
def world(gateway: GatewayFactory, demo_db: Settings) -> Iterator[World]:
    settings = demo_db
    with session_scope(settings) as session:
        store_id = int(session.scalar(select(Store.id).order_by(Store.id)) or 0)
        tenant = str(session.scalar(select(Tenant.email).order_by(Tenant.id)))
    secrets, names = _tokens(settings, store_id)
    settings.reports_dir.mkdir(parents=True, exist_ok=True)
    (settings.reports_dir / "roles.csv").write_text("a,b\n")
    report = make_report(settings, "roles.csv", None)
    access_report = make_report(settings, "roles.csv", None)
    with session_scope(settings) as session:
        row = session.get(Report, access_report)
        assert row is not None
        row.kind = "access"
    settings.exports_dir.mkdir(parents=True, exist_ok=True)
    (settings.exports_dir / "roles-export.csv").write_text("a,b\n")
    export = make_export(settings, names["user"], file_name="roles-export.csv")
    with gateway(
        task_max_per_user=OPEN["quota"], rate_limit_per_minute=OPEN["rate"], auth_failures_per_minute=OPEN["auth"]
    ) as client:
        yield World(
            client=client,
            secrets=secrets,
            names=names,
            store_id=store_id,
            tenant=tenant,
            user_task=_submit(client, secrets["user"], "test_task"),
            revoke_task=_submit(client, secrets["user"], "test_task"),
            finance_task=_submit(client, secrets["admin"], "check_pending_bills"),
            maintenance_task=_submit(client, secrets["admin"], "cleanup_cache"),
            report=report,
            access_report=access_report,
            export=export,
            user_workflow=_workflow(client, secrets["user"]),
        )
    with session_scope(settings) as session:
        for token in session.scalars(select(ApiToken).where(ApiToken.name.in_(names.values()))):
            session.delete(token)


def _workflow(client: GatewayClient, secret: str) -> str:
    body = {"steps": [{"task_name": "test_task"}]}
    answer = client.post("/api/v1/workflows", json=body, headers={"Authorization": f"Bearer {secret}"})
    assert answer.status_code == 202, answer.text
    return str(answer.json()["workflow_id"])


def expect(**by_role: int) -> dict[str, int]:
    """Expected status per caller: ``default`` for roles not named, 401 without a token."""
    default = by_role.pop("default")
    return {**dict.fromkeys(ROLES, default), **by_role, "none": 401}


READ_ALL = {"viewer", "operator", "admin"}
# (method, route template, concrete path, body, expected status per caller)
ENDPOINTS: list[tuple[str, str, str, Any, dict[str, int]]] = [
    ("GET", "/api/v1/catalog", "/api/v1/catalog", None, expect(default=200)),
    ("GET", "/api/v1/tasks", "/api/v1/tasks", None, expect(default=200)),
    ("POST", "/api/v1/tasks", "/api/v1/tasks", {"task_name": "test_task"}, expect(default=202, viewer=403)),
    (
        "POST",
        "/api/v1/tasks/batch",
        "/api/v1/tasks/batch",
        {"tasks": [{"task_name": "test_task"}, {"task_name": "long_running_task", "kwargs": {"steps": 1}}]},
        expect(default=202, viewer=403),
    ),
    (
        "GET",
        "/api/v1/tasks/{task_id}",
        "/api/v1/tasks/{user_task}",
        None,
        expect(default=404, viewer=200, operator=200, admin=200, user=200),
    ),
    (
        "GET",
        "/api/v1/tasks/{task_id}",
        "/api/v1/tasks/{finance_task}",
        None,
        expect(default=404, viewer=200, finance=200, operator=200, admin=200),
    ),
    (
        "GET",
        "/api/v1/tasks/{task_id}/events",
        "/api/v1/tasks/{user_task}/events",
        None,
        expect(default=404, viewer=200, operator=200, admin=200, user=200),
    ),
    (  # 409: the task has not failed; 404: retry allowed but the task is not visible to it
        "POST",
        "/api/v1/tasks/{task_id}/retry",
        "/api/v1/tasks/{user_task}/retry",
        None,
        expect(default=409, viewer=403, store_manager=404, finance=404),
    ),
    (
        "POST",
        "/api/v1/tasks/{task_id}/revoke",
        "/api/v1/tasks/{revoke_task}/revoke",
        {"terminate": False},
        expect(default=403, operator=202, admin=202),
    ),
    (
        "POST",
        "/api/v1/tasks/{task_id}/revoke",
        "/api/v1/tasks/{maintenance_task}/revoke",
        {"terminate": False},
        expect(default=403, admin=202),
    ),
    ("GET", "/api/v1/tasks/history", "/api/v1/tasks/history", None, expect(default=200)),
    ("GET", "/api/v1/tasks/stats", "/api/v1/tasks/stats", None, expect(default=200)),
    # workflows: everyone reads their own (and every one with tasks.read.all); workflows.run to act
    ("GET", "/api/v1/workflows", "/api/v1/workflows", None, expect(default=200)),
    (
        "POST",
        "/api/v1/workflows",
        "/api/v1/workflows",
        {"steps": [{"task_name": "test_task"}, {"task_name": "test_task"}]},
        expect(default=202, viewer=403, store_manager=403),
    ),
    (
        "GET",
        "/api/v1/workflows/{workflow_id}",
        "/api/v1/workflows/{user_workflow}",
        None,
        expect(default=404, viewer=200, operator=200, admin=200, user=200),
    ),
    (  # 409: it has not failed
        "POST",
        "/api/v1/workflows/{workflow_id}/retry",
        "/api/v1/workflows/{user_workflow}/retry",
        None,
        expect(default=409, viewer=403, store_manager=403, finance=404),
    ),
    (
        "POST",
        "/api/v1/workflows/{workflow_id}/revoke",
        "/api/v1/workflows/{user_workflow}/revoke",
        None,
        expect(default=202, viewer=403, store_manager=403, finance=404),
    ),
    ("GET", "/api/v1/workers", "/api/v1/workers", None, expect(default=403, viewer=200, operator=200, admin=200)),
    ("GET", "/api/v1/queues", "/api/v1/queues", None, expect(default=403, viewer=200, operator=200, admin=200)),
    # everyone who may read tasks may read schedules (issue 15); only admin changes them
    ("GET", "/api/v1/schedules", "/api/v1/schedules", None, expect(default=200)),
    (
        "GET",
        "/api/v1/schedules/{name}",
        "/api/v1/schedules/cleanup_old_notifications",
        None,
        expect(default=200),
    ),
    (
        "POST",
        "/api/v1/schedules",
        "/api/v1/schedules",
        {"name": "roles.probe", "task_name": "test_task", "schedule": {"every": 3600}, "enabled": False},
        expect(default=403, admin=201),
    ),
    (
        "POST",
        "/api/v1/schedules/{name}/run",
        "/api/v1/schedules/roles.probe/run",
        None,
        expect(default=403, admin=202),
    ),
    (
        "DELETE",
        "/api/v1/schedules/{name}",
        "/api/v1/schedules/roles.probe",
        None,
        expect(default=403, admin=204),
    ),
    (
        "PATCH",
        "/api/v1/schedules/{name}",
        "/api/v1/schedules/cleanup_old_notifications",
        {"enabled": True},
        expect(default=403, admin=200),
    ),
    ("GET", "/api/v1/reports", "/api/v1/reports", None, expect(default=200, store_manager=403)),
    ("GET", "/api/v1/reports/{report_id}", "/api/v1/reports/{report}", None, expect(default=200, store_manager=403)),
    (
        "GET",
        "/api/v1/reports/{report_id}",
        "/api/v1/reports/{access_report}",
        None,
        expect(default=200, store_manager=403, finance=404),
    ),
    (
        "GET",
        "/api/v1/reports/{report_id}/file",
        "/api/v1/reports/{report}/file?format=csv",
        None,
        expect(default=200, store_manager=403),
    ),
    # every reader lists exports: its own (every token's with exports.read.all and stores.all)
    ("GET", "/api/v1/exports", "/api/v1/exports", None, expect(default=200)),
    (
        "GET",
        "/api/v1/exports/{task_id}",
        "/api/v1/exports/{export}",
        None,
        expect(default=404, viewer=200, operator=200, admin=200, user=200),
    ),
    (
        "GET",
        "/api/v1/exports/{task_id}/download",
        "/api/v1/exports/{export}/download",
        None,
        expect(default=404, viewer=200, operator=200, admin=200, user=200),
    ),
    ("POST", "/api/v1/tokens", "/api/v1/tokens", "new-token", expect(default=403, admin=201)),
    ("GET", "/api/v1/tokens", "/api/v1/tokens", None, expect(default=403, admin=200)),
    ("DELETE", "/api/v1/tokens/{name}", "/api/v1/tokens/{victim}", None, expect(default=403, admin=200)),
    ("GET", "/api/v1/audit", "/api/v1/audit", None, expect(default=403, admin=200)),
    # bulk actions (tasks.bulk) and dead letters (dead_letters.manage): admin only
    *(
        ("POST", path, path, {"task_name": "test_task", "arguments": {"kwargs.message": "x"}, "dry_run": True}, admin)
        for path, admin in (
            ("/api/v1/tasks/retry", expect(default=403, admin=200)),
            ("/api/v1/tasks/revoke", expect(default=403, admin=200)),
        )
    ),
    ("GET", "/api/v1/dead-letters", "/api/v1/dead-letters", None, expect(default=403, admin=200)),
    (
        "POST",
        "/api/v1/dead-letters/replay",
        "/api/v1/dead-letters/replay",
        {"dry_run": True},
        expect(default=403, admin=200),
    ),
    (
        "DELETE",
        "/api/v1/dead-letters",
        "/api/v1/dead-letters?queue=none&dry_run=true",
        None,
        expect(default=403, admin=200),
    ),
    *(
        (method, template, template.replace("{letter_id}", "0" * 32), None, expect(default=403, admin=404))
        for method, template in (
            ("GET", "/api/v1/dead-letters/{letter_id}"),
            ("POST", "/api/v1/dead-letters/{letter_id}/replay"),
            ("DELETE", "/api/v1/dead-letters/{letter_id}"),
        )
    ),
]


def _call(world: World, method: str, path: str, body: Any, caller: str) -> tuple[int, dict[str, Any] | None]:
    if body == "new-token":
        body = {"name": f"made-by-{caller}-{uuid.uuid4().hex[:6]}", "role": "viewer"}
    with world.client.stream(method, path, json=body, headers=world.auth(caller)) as response:
        if response.status_code >= 400:
            response.read()
            assert response.headers["content-type"] == "application/problem+json", (method, path, caller)
            return response.status_code, response.json()
        return response.status_code, None


def _check_forbidden(problem: dict[str, Any] | None, where: str) -> str | None:
    if problem is None or problem.get("permission") not in permissions.PERMISSIONS:
        return f"{where}: a 403 without a known `permission` member: {problem}"
    return None


def test_every_role_every_endpoint_every_task(world: World, migrated: Settings) -> None:
    app = create_app(migrated)
    served = {
        (method, route.path)
        for route in app.state.flat_routes
        if route.path.startswith("/api/v1")
        for method in getattr(route, "methods", ())
    }
    assert served == {(method, template) for method, template, *_ in ENDPOINTS}, "an endpoint is not covered"

    with session_scope(migrated) as session:
        victim = f"victim-{uuid.uuid4().hex[:6]}"
        create_token(session, victim, "viewer")
    values = {
        "user_task": world.user_task,
        "revoke_task": world.revoke_task,
        "finance_task": world.finance_task,
        "maintenance_task": world.maintenance_task,
        "report": world.report,
        "access_report": world.access_report,
        "export": world.export,
        "user_workflow": world.user_workflow,
        "victim": victim,
    }
    failures: list[str] = []
    for method, _, template, body, expected in ENDPOINTS:
        path = template.format(**values)
        for caller in CALLERS:
            status, problem = _call(world, method, path, body, caller)
            where = f"{method} {template} as {caller}"
            if status != expected[caller]:
                failures.append(f"{where}: {status}, expected {expected[caller]} ({problem})")
            elif status == 403 and (bad := _check_forbidden(problem, where)):
                failures.append(bad)

    for task_name in CATALOG:
        kwargs = {k: (world.tenant if v == "{tenant}" else v) for k, v in ARGUMENTS.get(task_name, {}).items()}
        for caller in CALLERS:
            status, problem = _call(world, "POST", "/api/v1/tasks", {"task_name": task_name, "kwargs": kwargs}, caller)
            wanted = 401 if caller == "none" else (202 if task_name in MAY_SUBMIT[caller] else 403)
            where = f"submit {task_name} as {caller}"
            if status != wanted:
                failures.append(f"{where}: {status}, expected {wanted} ({problem})")
            elif status == 403:
                if bad := _check_forbidden(problem, where):
                    failures.append(bad)
                elif problem and problem["permission"] != CATALOG[task_name].permission:
                    failures.append(f"{where}: names {problem['permission']}, not the task's permission")
    assert failures == []


def test_what_each_role_reads(world: World, migrated: Settings) -> None:
    """The lists follow the visibility rules: every task, own + finance queue, or own."""
    client = world.client
    now = dt.datetime.now(dt.UTC)
    rows = {
        "user-row": (world.names["user"], "default"),
        "finance-row": (world.names["admin"], "finance"),
        "sm-row": (world.names["store_manager"], "reports"),
    }
    tag = uuid.uuid4().hex[:8]
    with session_scope(migrated) as session:
        for key, (owner, queue) in rows.items():
            session.add(
                TaskRecord(
                    task_id=f"{key}-{tag}",
                    task_name="mallops.maintenance.test_task",
                    queue=queue,
                    state="SUCCESS",
                    owner=owner,
                    sent_at=now,
                    updated_at=now,
                )
            )
    everything = set(rows)
    sees = {
        "viewer": everything,
        "operator": everything,
        "admin": everything,
        "finance": {"finance-row"},
        "store_manager": {"sm-row"},
        "user": {"user-row"},
    }
    live = {"viewer": True, "operator": True, "admin": True, "finance": False, "store_manager": False, "user": True}
    try:
        for role in ROLES:
            page = client.get("/api/v1/tasks/history", params={"limit": 500}, headers=world.auth(role)).json()
            found = {r["task_id"].rsplit("-", 1)[0] for r in page["results"] if r["task_id"].endswith(tag)}
            assert found == sees[role], role
            stats = client.get("/api/v1/tasks/stats", headers=world.auth(role)).json()
            assert stats["overall"]["total"] >= len(sees[role]), role
            listed = {r["task_id"] for r in client.get("/api/v1/tasks", headers=world.auth(role)).json()["results"]}
            assert (world.user_task in listed) == live[role], role
            assert (world.finance_task in listed) == (role in READ_ALL | {"finance"}), role
            reports = client.get("/api/v1/reports", params={"limit": 200}, headers=world.auth(role))
            if role == "store_manager":
                assert reports.status_code == 403
                assert reports.json()["permission"] == permissions.STORES_ALL
            else:
                ids = {r["id"] for r in reports.json()["results"]}
                assert world.report in ids
                assert (world.access_report in ids) == (role != "finance"), role
    finally:
        with session_scope(migrated) as session:
            for key in rows:
                row = session.get(TaskRecord, f"{key}-{tag}")
                if row is not None:
                    session.delete(row)


def test_maintenance_and_mail_are_admin_only(world: World) -> None:
    """user and operator: 403 for backup_database, cleanup_cache, cleanup_expired_data and e-mail to an
    address that is no tenant's; admin: 202 for each."""
    submissions = [
        ("backup_database", {}, permissions.SUBMIT_MAINTENANCE),
        ("cleanup_cache", {}, permissions.SUBMIT_MAINTENANCE),
        ("cleanup_expired_data", {}, permissions.SUBMIT_MAINTENANCE),
        (
            "send_notification_email",
            {"email": "victim@example.com", "subject": "Your account", "message": "Click here"},
            permissions.EMAIL_ANY_ADDRESS,
        ),
    ]
    for task_name, kwargs, permission in submissions:
        body = {"task_name": task_name, "kwargs": kwargs}
        for role in ("user", "operator"):
            answer = world.client.post("/api/v1/tasks", json=body, headers=world.auth(role))
            assert answer.status_code == 403, (task_name, role, answer.text)
            assert answer.headers["content-type"] == "application/problem+json"
            assert answer.json()["permission"] == permission
        answer = world.client.post("/api/v1/tasks", json=body, headers=world.auth("admin"))
        assert answer.status_code == 202, (task_name, answer.text)
    # in a batch too: one refused item refuses the batch, and nothing is enqueued for it
    batch = {"tasks": [{"task_name": "test_task"}, {"task_name": "backup_database"}]}
    refused = world.client.post("/api/v1/tasks/batch", json=batch, headers=world.auth("operator"))
    assert refused.status_code == 403
    assert refused.json()["permission"] == permissions.SUBMIT_MAINTENANCE
    # the tenant's own address, in another case, is fine
    tenant_mail = {"email": world.tenant.upper(), "subject": "s", "message": "m"}
    for role in ("user", "operator"):
        answer = world.client.post(
            "/api/v1/tasks",
            json={"task_name": "send_notification_email", "kwargs": tenant_mail},
            headers=world.auth(role),
        )
        assert answer.status_code == 202, answer.text
