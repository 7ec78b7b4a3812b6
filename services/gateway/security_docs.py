"""The permission matrix of docs/security.md, generated from the catalog, the roles and the gateway's routes.

``python -m services.gateway.security_docs`` rewrites the part of docs/security.md between the markers;
``tests/services/gateway/test_security_docs.py`` fails when the file is out of date. The role x endpoint
table is read from each route's :class:`services.gateway.authz.Requires` declaration, so it cannot drift
from what the gateway enforces.
"""

from __future__ import annotations

import sys
from collections import deque
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from fastapi.routing import APIRoute

from services.gateway.authz import declared_permissions
from services.gateway.routes import API_PREFIX
from shared import permissions
from shared.catalog import CATALOG
from shared.permissions import ROLES, Role

START = "<!-- permission-matrix:start (generated: python -m services.gateway.security_docs) -->"
END = "<!-- permission-matrix:end -->"
DOC = Path(__file__).resolve().parents[2] / "docs" / "security.md"
SCOPE_LABELS = {"all": "all", "finance": "own + finance queue", "own": "own"}


def route_permissions(route: APIRoute) -> tuple[tuple[str, ...], bool] | None:
    """What a route declares (permissions, per_task), searched through its whole dependency tree."""
    queue = deque([route.dependant])  # breadth first: the route's own parameters before nested ones
    while queue:
        dependant = queue.popleft()
        declared = declared_permissions(dependant.call) if dependant.call is not None else None
        if declared is not None:
            return declared
        queue.extend(dependant.dependencies)
    return None


def api_routes(app: FastAPI) -> Iterator[tuple[str, str, APIRoute]]:
    for route in app.state.flat_routes:  # every route with its full path (create_app)
        if isinstance(route, APIRoute) and route.path.startswith(API_PREFIX):
            for method in sorted(route.methods or ()):
                yield method, route.path, route


def _scope(role: Role) -> str:
    granted = permissions.permissions_of(role)
    if permissions.TASKS_READ_ALL in granted:
        return SCOPE_LABELS["all"]
    if permissions.TASKS_READ_FINANCE_QUEUE in granted:
        return SCOPE_LABELS["finance"]
    return SCOPE_LABELS["own"]


def endpoint_cell(role: Role, path: str, declared: tuple[tuple[str, ...], bool]) -> str:
    needed, per_task = declared
    granted = permissions.permissions_of(role)
    if per_task:
        return "per task" if permissions.can_submit(granted) else "no"
    if not any(p in granted for p in needed):
        return "no"
    if needed[0] == permissions.TASKS_READ_OWN:
        if path.startswith(f"{API_PREFIX}/exports"):
            return "all" if permissions.EXPORTS_READ_ALL in granted else "own"
        return _scope(role)
    if needed[0] not in granted:  # holds only a narrower alternative
        return "period reports" if needed[0] == permissions.REPORTS_READ else "partly"
    if needed[0] in (permissions.TASKS_RETRY, permissions.TASKS_REVOKE):
        maintenance = permissions.SUBMIT_MAINTENANCE in granted
        return ("yes" if maintenance else "non-maintenance") + f" ({_scope(role)})"
    return "yes"


def task_cell(role: Role, task_name: str) -> str:
    spec = CATALOG[task_name]
    granted = permissions.permissions_of(role)
    if spec.permission not in granted:
        return "no"
    if task_name == "export_data":
        datasets = [d for d in permissions.EXPORT_DATASETS if permissions.dataset_permission(d) in granted]
        scoped = " (its stores)" if role == "store_manager" else ""
        return ", ".join(datasets) + scoped
    if task_name == "send_notification_email" and permissions.EMAIL_ANY_ADDRESS not in granted:
        return "tenants only"
    return "yes"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines


def render(app: FastAPI) -> str:
    """The generated section, markers included."""
    roles = [f"`{role}`" for role in ROLES]
    lines: list[str] = [START, "", "### Roles", ""]
    lines += [f"- `{role}`: {permissions.ROLE_SUMMARIES[role]}." for role in ROLES]
    lines += ["", "### Permissions", ""]
    rows = [
        [f"`{p}`", permissions.DESCRIPTIONS[p], ", ".join(r for r in ROLES if p in permissions.permissions_of(r))]
        for p in permissions.PERMISSIONS
    ]
    lines += _table(["permission", "what it allows", "roles"], rows)
    lines += ["", "### Role x task (submitting)", ""]
    rows = [
        [f"`{spec.name}`", f"`{spec.permission}`", *(task_cell(role, spec.name) for role in ROLES)]
        for spec in CATALOG.values()
    ]
    lines += _table(["task", "permission", *roles], rows)
    lines += ["", "### Role x endpoint", ""]
    rows = []
    for method, path, route in api_routes(app):
        declared = route_permissions(route)
        if declared is None:
            raise ValueError(f"{method} {path} declares no permission (services.gateway.authz.Requires)")
        needed = "per task" if declared[1] else " or ".join(f"`{p}`" for p in declared[0])
        rows.append([f"`{method} {path}`", needed, *(endpoint_cell(role, path, declared) for role in ROLES)])
    lines += _table(["endpoint", "permission", *roles], rows)
    lines += ["", "`/healthz`, `/readyz`, `/metrics`, `/openapi.json` and `/docs` need no token.", "", END]
    return "\n".join(lines)


def updated(text: str, app: FastAPI) -> str:
    head, _, rest = text.partition(START)
    _, _, tail = rest.partition(END)
    if not rest:
        raise ValueError(f"the marker {START!r} is missing")
    return head + render(app) + tail


def main(argv: list[str] | None = None) -> int:
    from services.gateway.app import create_app
    from shared.settings import Settings

    app: Any = create_app(Settings(environment="test"))
    DOC.write_text(updated(DOC.read_text(encoding="utf-8"), app), encoding="utf-8")
    print(f"wrote {DOC}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
