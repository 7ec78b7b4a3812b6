"""What a signed-in console user may see and do: ONE table, ``GRANTS``, read through :func:`can`.

Every page and action of the console asks :func:`can` (templates too, to hide what the role may not use);
nothing else in the console looks at a role. Each console action is one of the platform's permissions
(:mod:`shared.permissions`, roles as bundles of them), so the console grants exactly what the API grants
the same token; which tasks a token reads (all, its own plus the finance queue, its own) is the API's
:func:`services.gateway.authz.history_owner`.
"""

from __future__ import annotations

from typing import Literal

from services.gateway import authz
from shared import permissions
from shared.catalog import get_spec
from shared.tokens import Principal

Action = Literal[
    "tasks.read",  # the pages at all: its own tasks (more with the scope below)
    "tasks.read_all",  # every owner's tasks, and the owner filter
    "task.retry",  # submit a failed or revoked task again
    "task.revoke",  # revoke (and terminate) a task
    "workers.read",  # workers online
    "queues.read",  # queue lengths
    "monitor.read",  # the monitor's lag behind the event stream
    "tasks.bulk",  # retry every failure a filter selects at once
    "dead_letters.read",  # the dead letters (whole messages: admin)
    "dead_letters.replay",  # put dead letters back onto their queues
    "schedules.read",  # the beat schedule
    "schedules.write",  # add, change, enable, disable and run beat entries
    "reports.read",  # every report
    "reports.read_finance",  # the period (sales and billing) reports
    "exports.request",  # submit export_data (each dataset also needs its permission: the API checks)
    "audit.read",  # the audit trail (admin)
    "workflows.read",  # the workflows page: its own workflows (every one with tasks.read_all)
    "workflow.retry",  # retry a failed or revoked workflow from its failed step (a named one: its permission too)
    "workflow.revoke",  # revoke a workflow: its steps not yet run never run
]

GRANTS: dict[Action, str] = {
    "tasks.read": permissions.TASKS_READ_OWN,
    "tasks.read_all": permissions.TASKS_READ_ALL,
    "task.retry": permissions.TASKS_RETRY,
    "task.revoke": permissions.TASKS_REVOKE,
    "workers.read": permissions.WORKERS_READ,
    "queues.read": permissions.QUEUES_READ,
    "monitor.read": permissions.QUEUES_READ,  # platform health, shown with the queues
    "tasks.bulk": permissions.TASKS_BULK,
    "dead_letters.read": permissions.DEAD_LETTERS_MANAGE,
    "dead_letters.replay": permissions.DEAD_LETTERS_MANAGE,
    "schedules.read": permissions.SCHEDULES_READ,
    "schedules.write": permissions.SCHEDULES_WRITE,
    "reports.read": permissions.REPORTS_READ,
    "reports.read_finance": permissions.REPORTS_READ_FINANCE,
    "exports.request": permissions.SUBMIT_EXPORTS,
    "audit.read": permissions.AUDIT_READ,
    "workflows.read": permissions.WORKFLOWS_READ,
    "workflow.retry": permissions.WORKFLOWS_RUN,
    "workflow.revoke": permissions.WORKFLOWS_RUN,
}


def can(principal: Principal, action: Action, task_name: str | None = None) -> bool:
    """Whether ``principal`` may do ``action`` (on a task called ``task_name``: retrying or revoking a
    maintenance task also needs the maintenance permission, as the API decides)."""
    if not principal.has(GRANTS[action]):
        return False
    spec = get_spec(task_name) if task_name else None
    if action in ("task.retry", "task.revoke") and spec is not None:
        return spec.permission != permissions.SUBMIT_MAINTENANCE or principal.has(spec.permission)
    return True


def task_scope(principal: Principal, owner: str | None = None) -> tuple[str | None, str | None]:
    """The (owner, or_queue) filter of the principal's history and statistics, as the API applies it."""
    return authz.history_owner(principal, owner)
