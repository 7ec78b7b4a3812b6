"""Permissions, and roles as named bundles of them.

A permission is a stable identifier (``tasks.submit.finance``, ``audit.read``): clients may rely on it,
docs/security.md lists every one, and a ``403`` names the one that was missing in its ``permission``
member. Every catalog task declares the permission that submitting it needs (``TaskSpec.permission``);
every gateway endpoint declares the one it needs (``services.gateway.authz.Requires``). A role is only a
name for a set of permissions, so a new task or endpoint is unreachable until some bundle holds its
permission, never open by default.

Nothing here imports the catalog (the catalog imports this module); the role x task matrix takes the
specs as an argument.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Literal, Protocol, get_args

Role = Literal["viewer", "store_manager", "finance", "operator", "admin", "user"]
ROLES: tuple[Role, ...] = get_args(Role)

# -- submitting tasks (each catalog task names one of these) ------------------------------------
SUBMIT_FINANCE = "tasks.submit.finance"  # overdue bills, reminders, monthly revenue
SUBMIT_REPORTS = "tasks.submit.reports"  # the period sales and billing reports
SUBMIT_ACCESS_LOGS = "tasks.submit.access_logs"  # draining the access log and its statistics
SUBMIT_EXPORTS = "tasks.submit.exports"  # export_data (each dataset needs its exports.dataset.* too)
SUBMIT_EMAIL = "tasks.submit.email"  # send_notification_email to a tenant's address on file
SUBMIT_MAINTENANCE = "tasks.submit.maintenance"  # backups, cache and retention clean-ups
SUBMIT_DIAGNOSTICS = "tasks.submit.diagnostics"  # test_task and long_running_task (`mallops ping`)
# -- what a task's arguments may ask for ---------------------------------------------------------
EMAIL_ANY_ADDRESS = "email.any_address"  # send_notification_email to an address that is no tenant's
EXPORT_DATASETS: tuple[str, ...] = ("bills", "payments", "revenue", "stores", "sales")
DATASET_PREFIX = "exports.dataset."  # exports.dataset.bills, ...
STORES_ALL = "stores.all"  # every store's data; a token created with `stores` has only those stores
# -- reading -------------------------------------------------------------------------------------
CATALOG_READ = "catalog.read"
TASKS_READ_OWN = "tasks.read.own"  # tasks, history and stats of the token's own tasks
TASKS_READ_FINANCE_QUEUE = "tasks.read.finance_queue"  # ... and every task of the finance queue
TASKS_READ_ALL = "tasks.read.all"  # ... and everyone's
REPORTS_READ = "reports.read"  # every report (mall-wide figures)
REPORTS_READ_FINANCE = "reports.read.finance"  # the period (sales and billing) reports only
EXPORTS_READ_ALL = "exports.read.all"  # other tokens' exports (everyone reads their own)
WORKERS_READ = "workers.read"
QUEUES_READ = "queues.read"
SCHEDULES_READ = "schedules.read"
# -- acting --------------------------------------------------------------------------------------
TASKS_RETRY = "tasks.retry"  # retry a failed or revoked task it can see (maintenance: also that permission)
TASKS_REVOKE = "tasks.revoke"  # revoke a task it can see (maintenance: also that permission)
SCHEDULES_WRITE = "schedules.write"
TOKENS_MANAGE = "tokens.manage"
AUDIT_READ = "audit.read"
DEAD_LETTERS_MANAGE = "dead_letters.manage"
TASKS_BULK = "tasks.bulk"  # retry or revoke many tasks at once by the history's filters (admin for now)
WORKFLOWS_RUN = "workflows.run"  # submit, retry and revoke workflows (each step's or the named one's own too)
WORKFLOWS_READ = "workflows.read"  # read workflows: its own, or everyone's with tasks.read.all

SUBMIT_PERMISSIONS: tuple[str, ...] = (
    SUBMIT_FINANCE,
    SUBMIT_REPORTS,
    SUBMIT_ACCESS_LOGS,
    SUBMIT_EXPORTS,
    SUBMIT_EMAIL,
    SUBMIT_MAINTENANCE,
    SUBMIT_DIAGNOSTICS,
)


def dataset_permission(dataset: str) -> str:
    return DATASET_PREFIX + dataset


DESCRIPTIONS: Mapping[str, str] = {
    SUBMIT_FINANCE: "submit the finance tasks (overdue bills, reminders, monthly revenue)",
    SUBMIT_REPORTS: "submit the period sales and billing reports",
    SUBMIT_ACCESS_LOGS: "submit the access-log tasks (drain the buffer, daily statistics)",
    SUBMIT_EXPORTS: "submit export_data (and hold the dataset's exports.dataset.* permission)",
    SUBMIT_EMAIL: "submit send_notification_email to the address of a tenant in the database",
    SUBMIT_MAINTENANCE: "submit maintenance (backup, cache and retention clean-ups); retry or revoke them",
    SUBMIT_DIAGNOSTICS: "submit test_task and long_running_task (mallops ping)",
    EMAIL_ANY_ADDRESS: "send_notification_email to any address, not only a tenant's",
    **{dataset_permission(d): f"export the {d} dataset" for d in EXPORT_DATASETS},
    STORES_ALL: "every store's rows in exports (a token created with stores has only those stores)",
    CATALOG_READ: "read the task catalog",
    TASKS_READ_OWN: "read its own tasks, their history and statistics",
    TASKS_READ_FINANCE_QUEUE: "read every task of the finance queue, its history and statistics",
    TASKS_READ_ALL: "read every task, the whole history and statistics",
    REPORTS_READ: "read every report and its files (mall-wide figures)",
    REPORTS_READ_FINANCE: "read the period sales and billing reports and their files",
    EXPORTS_READ_ALL: "read and download every export (everyone reads their own)",
    WORKERS_READ: "read the workers",
    QUEUES_READ: "read the queues",
    SCHEDULES_READ: "read the beat schedule",
    TASKS_RETRY: "retry a failed or revoked task it can see",
    TASKS_REVOKE: "revoke a task it can see",
    SCHEDULES_WRITE: "change the beat schedule",
    TOKENS_MANAGE: "create, list and revoke API tokens",
    AUDIT_READ: "read the audit trail",
    DEAD_LETTERS_MANAGE: "read, replay and drop dead letters",
    TASKS_BULK: "retry or revoke many tasks at once, selected by the history's filters",
    WORKFLOWS_RUN: "submit, retry and revoke workflows (and hold each step's submit permission, or the named "
    "workflow's)",
    WORKFLOWS_READ: "read its own workflows (every workflow with tasks.read.all)",
}
PERMISSIONS: tuple[str, ...] = tuple(DESCRIPTIONS)

_READ_EVERYTHING = frozenset(
    {
        CATALOG_READ,
        TASKS_READ_OWN,
        TASKS_READ_ALL,
        REPORTS_READ,
        EXPORTS_READ_ALL,
        WORKERS_READ,
        QUEUES_READ,
        SCHEDULES_READ,
        STORES_ALL,
        WORKFLOWS_READ,
    }
)
_SUBMIT_LIKE_OPERATOR = frozenset(
    {
        SUBMIT_REPORTS,
        SUBMIT_ACCESS_LOGS,
        SUBMIT_EXPORTS,
        SUBMIT_EMAIL,
        SUBMIT_DIAGNOSTICS,
        *(dataset_permission(d) for d in EXPORT_DATASETS),
    }
)

ROLE_PERMISSIONS: Mapping[Role, frozenset[str]] = {
    "viewer": _READ_EVERYTHING,
    "store_manager": frozenset(
        {
            CATALOG_READ,
            TASKS_READ_OWN,
            SCHEDULES_READ,
            SUBMIT_EXPORTS,
            SUBMIT_DIAGNOSTICS,
            TASKS_RETRY,
            WORKFLOWS_READ,
            *(dataset_permission(d) for d in EXPORT_DATASETS),
        }
    ),
    "finance": frozenset(
        {
            CATALOG_READ,
            TASKS_READ_OWN,
            TASKS_READ_FINANCE_QUEUE,
            SCHEDULES_READ,
            SUBMIT_FINANCE,
            SUBMIT_REPORTS,
            SUBMIT_EXPORTS,
            SUBMIT_DIAGNOSTICS,
            TASKS_RETRY,
            REPORTS_READ_FINANCE,
            STORES_ALL,
            WORKFLOWS_RUN,
            WORKFLOWS_READ,
            *(dataset_permission(d) for d in ("bills", "payments", "revenue")),
        }
    ),
    "operator": _READ_EVERYTHING | _SUBMIT_LIKE_OPERATOR | {TASKS_RETRY, TASKS_REVOKE, WORKFLOWS_RUN},
    "admin": frozenset(PERMISSIONS),
    # today's role: submits what an operator may, sees only its own tasks; reports stay readable
    "user": _SUBMIT_LIKE_OPERATOR
    | {
        CATALOG_READ,
        TASKS_READ_OWN,
        SCHEDULES_READ,
        TASKS_RETRY,
        REPORTS_READ,
        STORES_ALL,
        WORKFLOWS_RUN,
        WORKFLOWS_READ,
    },
}

ROLE_SUMMARIES: Mapping[Role, str] = {
    "viewer": "submits nothing; reads every task, the history, stats, reports, exports, workers, queues and schedules",
    "store_manager": "exports its own stores' data; reads only its own tasks (mall-wide reports are 403)",
    "finance": "the finance tasks, the period reports and the bills, payments and revenue exports; reads its own "
    "tasks and every task of the finance queue",
    "operator": "report and export tasks, e-mail to tenants on file, retry and revoke of any non-maintenance task; "
    "reads every task, workers and queues",
    "admin": "everything: maintenance tasks, e-mail to any address, tokens, schedules, dead letters, the audit trail",
    "user": "submits what an operator may; sees only its own tasks (the role of mallops before roles)",
}


def permissions_of(role: str) -> frozenset[str]:
    """The permissions of ``role``; none for a name that is not a role."""
    return ROLE_PERMISSIONS.get(role, frozenset())  # type: ignore[call-overload,no-any-return]


def can_submit(permissions: Iterable[str]) -> bool:
    return any(p in SUBMIT_PERMISSIONS for p in permissions)


class HasPermission(Protocol):
    @property
    def name(self) -> str: ...

    @property
    def permission(self) -> str: ...


def task_matrix(specs: Iterable[HasPermission]) -> dict[str, dict[Role, bool]]:
    """Task name -> role -> whether the role may submit it (argument checks aside)."""
    return {spec.name: {role: spec.permission in ROLE_PERMISSIONS[role] for role in ROLES} for spec in specs}


__all__ = [
    "DESCRIPTIONS",
    "PERMISSIONS",
    "ROLES",
    "ROLE_PERMISSIONS",
    "Role",
    "can_submit",
    "dataset_permission",
    "permissions_of",
    "task_matrix",
]
