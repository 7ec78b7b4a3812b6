"""What a signed-in console user may see and do: ONE table, ``GRANTS``, read through :func:`can`.

Every page and action of the console asks :func:`can` (templates too, to hide what the role may not use);
nothing else in the console looks at a role. Today's roles are ``admin`` and ``user``, as the API has them
(``services.gateway.deps``): a user sees and retries only its own tasks; workers, queues, the monitor and
revoking are an admin's. When roles become bundles of permissions, this table is the one place to change.
"""

from __future__ import annotations

from typing import Literal

from shared.tokens import Principal

Action = Literal[
    "tasks.read_all",  # every owner's tasks (without it: only the principal's own)
    "task.retry",  # submit a failed or revoked task again
    "task.revoke",  # revoke (and terminate) a task
    "workers.read",  # workers online
    "queues.read",  # queue lengths
    "monitor.read",  # the monitor's lag behind the event stream
]

GRANTS: dict[Action, frozenset[str]] = {
    "tasks.read_all": frozenset({"admin"}),
    "task.retry": frozenset({"admin", "user"}),
    "task.revoke": frozenset({"admin"}),
    "workers.read": frozenset({"admin"}),
    "queues.read": frozenset({"admin"}),
    "monitor.read": frozenset({"admin"}),
}


def can(principal: Principal, action: Action) -> bool:
    """Whether ``principal`` may do ``action``; an action missing from the table is refused."""
    return principal.role in GRANTS.get(action, frozenset())


def owner_scope(principal: Principal) -> str | None:
    """The owner filter of the principal's task queries: None (everyone's) or its own name."""
    return None if can(principal, "tasks.read_all") else principal.name
