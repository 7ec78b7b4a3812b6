"""Authorization: what a token's role (and store scope) lets it do, as FastAPI dependencies and checks.

- Every ``/api/v1`` route declares what it needs with a :class:`Requires` dependency (a permission, any of
  several, or ``per_task`` for the submission routes); the docs' role x endpoint matrix is read from
  these declarations (``services.gateway.security_docs``), and a test fails on a route without one.
- A submission needs the permission its catalog task declares, and its arguments are checked:
  ``export_data`` needs the dataset's permission and is confined to the token's stores (the gateway writes
  ``filters.store_ids``; a ``store_id`` outside them is 403); ``send_notification_email`` goes only to a
  tenant's address unless the token holds ``email.any_address``.
- Reading follows the role's scope: every task, the own tasks plus the finance queue, or the own only.

A refusal is ``403`` problem+json whose ``permission`` member names the permission that was missing, and
is written to the audit trail.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials
from sqlalchemy import func, select
from starlette.concurrency import run_in_threadpool

from services.gateway import audit as gateway_audit
from services.gateway.deps import CurrentPrincipal, bearer, settle_rate_limit, submitting_principal
from services.gateway.problems import ProblemError
from services.gateway.submission import Prepared
from shared import audit, permissions
from shared.catalog import TaskSpec
from shared.models import Tenant
from shared.tokens import Principal

Scope = Literal["all", "finance", "own"]
FINANCE_QUEUE = "finance"
REPORT_KINDS_FINANCE = ("hourly", "daily", "weekly", "monthly")  # the period sales and billing reports


def forbidden(permission: str, detail: str) -> ProblemError:
    return ProblemError(403, detail, kind="forbidden", extra={"permission": permission})


async def deny(
    request: Request, permission: str, detail: str, *, action: str = audit.PERMISSION_DENIED, target: str | None = None
) -> ProblemError:
    """Record the refusal in the audit trail and return the 403 to raise (a 429 first, when a submission's
    rate-limit hit was pending and the limit is reached: such a request is refused before anything else)."""
    await settle_rate_limit(request)
    details = {"permission": permission, "method": request.method, "path": request.url.path}
    await gateway_audit.record(request, action, outcome="denied", target=target, details=details)
    return forbidden(permission, detail)


class Requires:
    """Dependency: the caller must hold ``permission`` (or, with several, any of them).

    ``per_task=True`` marks the submission routes, whose permission is the submitted task's own (checked
    by :func:`authorize_submissions`); it lets every token through here.
    """

    def __init__(self, *needed: str, per_task: bool = False) -> None:
        unknown = [p for p in needed if p not in permissions.PERMISSIONS]
        if unknown or (not needed and not per_task):
            raise ValueError(f"unknown or missing permission(s): {unknown}")
        self.permissions = needed
        self.per_task = per_task

    async def __call__(self, request: Request, principal: CurrentPrincipal) -> Principal:
        if self.per_task or any(principal.has(p) for p in self.permissions):
            return principal
        missing = self.permissions[0]
        raise await deny(
            request, missing, f"this needs the permission {missing!r}, which a {principal.role} token does not have"
        )


def requires(*needed: str) -> Any:
    """``Annotated[Principal, requires(...)]``: the principal, once it has ``needed``."""
    return Depends(Requires(*needed))


Submitter = Annotated[Principal, Depends(Requires(per_task=True))]


class RequiresSubmitting(Requires):
    """``Requires(per_task=True)`` whose principal's rate-limit hit is left to the submission script
    (:func:`services.gateway.deps.submitting_principal`): ``POST /api/v1/tasks``.

    It authenticates itself rather than through ``CurrentPrincipal`` and ``RuntimeDep``: FastAPI solves every
    dependency of the tree on each request, cached or not, about 15-20 us each (docs/performance.md)."""

    def __init__(self) -> None:
        super().__init__(per_task=True)

    async def __call__(  # type: ignore[override]
        self, request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]
    ) -> Principal:
        return await submitting_principal(request, request.app.state.runtime, credentials)


SingleSubmitter = Annotated[Principal, Depends(RequiresSubmitting())]
Reader = Annotated[Principal, requires(permissions.TASKS_READ_OWN)]


# -- what a token sees ---------------------------------------------------------------------------


def task_scope(principal: Principal) -> Scope:
    if principal.has(permissions.TASKS_READ_ALL):
        return "all"
    if principal.has(permissions.TASKS_READ_FINANCE_QUEUE):
        return "finance"
    return "own"


def sees_task(principal: Principal, owner: str | None, queue: str | None) -> bool:
    scope = task_scope(principal)
    return scope == "all" or owner == principal.name or (scope == "finance" and queue == FINANCE_QUEUE)


def history_owner(principal: Principal, asked: str | None) -> tuple[str | None, str | None]:
    """The (owner, or_queue) filter of the history and stats: everyone's (optionally one owner's), the own
    plus the finance queue, or the own."""
    scope = task_scope(principal)
    if scope == "all":
        return asked, None
    if scope == "finance" and asked in (None, principal.name):
        return principal.name, (FINANCE_QUEUE if asked is None else None)
    return principal.name, None


def sees_export(principal: Principal, owner: str | None) -> bool:
    return owner == principal.name or (
        principal.has(permissions.EXPORTS_READ_ALL) and principal.has(permissions.STORES_ALL)
    )


@dataclass(frozen=True)
class ReportAccess:
    principal: Principal
    kinds: tuple[str, ...] | None  # None: every kind


async def report_access(request: Request, principal: CurrentPrincipal) -> ReportAccess:
    """Reports are mall-wide: ``reports.read`` reads all, ``reports.read.finance`` the period reports; a
    store-scoped token none."""
    if principal.has(permissions.REPORTS_READ):
        return ReportAccess(principal, None)
    if principal.has(permissions.REPORTS_READ_FINANCE):
        return ReportAccess(principal, REPORT_KINDS_FINANCE)
    missing = permissions.REPORTS_READ if principal.stores is None else permissions.STORES_ALL
    raise await deny(request, missing, f"reports are mall-wide; a {principal.role} token cannot read them")


report_access.permissions = (permissions.REPORTS_READ, permissions.REPORTS_READ_FINANCE)  # type: ignore[attr-defined]
ReportReader = Annotated[ReportAccess, Depends(report_access)]


# -- what a token may submit, retry or revoke ----------------------------------------------------


def _tenant_addresses(sessions: Any, addresses: set[str]) -> set[str]:
    with sessions() as session:
        rows = session.scalars(select(func.lower(Tenant.email)).where(func.lower(Tenant.email).in_(addresses)))
        return set(rows)


def _scope_export(principal: Principal, item: Prepared) -> str | None:
    """Confine an export to the token's stores; the permission that is missing, or None."""
    dataset = str(item.validated.get("dataset"))
    if not principal.has(permissions.dataset_permission(dataset)):
        return permissions.dataset_permission(dataset)
    if principal.stores is None:
        return None
    filters: dict[str, Any] = dict(item.validated.get("filters") or {})
    allowed = set(principal.stores)
    asked = set(filters.get("store_ids") or ())
    if filters.get("store_id") is not None:
        asked.add(int(filters["store_id"]))
    if not asked <= allowed:
        return permissions.STORES_ALL
    filters["store_ids"] = sorted(asked or allowed)
    item.validated = {**item.validated, "filters": filters}
    item.args, item.kwargs = [], dict(item.validated)  # kept for a retry: the scope stays with the task
    return None


async def _arguments_problem(request: Request, principal: Principal, items: Sequence[Prepared]) -> str | None:
    """The permission the items' arguments need and the token lacks, or None (exports are rewritten)."""
    addresses: set[str] = set()
    for item in items:
        if item.spec.name == "export_data" and (missing := _scope_export(principal, item)):
            return missing
        if item.spec.name == "send_notification_email" and not principal.has(permissions.EMAIL_ANY_ADDRESS):
            addresses.add(str(item.validated["email"]).lower())
    if addresses:
        known = await run_in_threadpool(_tenant_addresses, request.app.state.runtime.sessions, addresses)
        if addresses - known:
            return permissions.EMAIL_ANY_ADDRESS
    return None


_ARGUMENT_DETAILS = {
    permissions.EMAIL_ANY_ADDRESS: "send_notification_email may only go to the address of a tenant on file",
    permissions.STORES_ALL: "this token may export only its own stores' data",
}


async def authorize_submissions(request: Request, principal: Principal, items: Sequence[Prepared]) -> None:
    """403 unless the token may submit every item, as asked; export filters are confined to its stores."""
    refusal = await submission_refusal(request, principal, items)
    if refusal is not None:
        item, missing = refusal
        raise await _refuse(request, principal, item, missing)


async def submission_refusal(
    request: Request, principal: Principal, items: Sequence[Prepared]
) -> tuple[Prepared, str] | None:
    """The item the token may not submit and the permission it lacks, or None; records nothing (export filters
    are confined to the token's stores). :func:`authorize_submissions` refuses with it."""
    for item in items:
        if not principal.has(item.spec.permission):
            return item, item.spec.permission
    missing = await _arguments_problem(request, principal, items)
    if missing is not None:
        culprit = next((i for i in items if i.spec.name in ("export_data", "send_notification_email")), items[0])
        return culprit, missing
    return None


async def _refuse(request: Request, principal: Principal, item: Prepared, missing: str) -> ProblemError:
    detail = _ARGUMENT_DETAILS.get(
        missing, f"{item.spec.name} needs the permission {missing!r}, which a {principal.role} token does not have"
    )
    return await deny(request, missing, detail, action=audit.TASK_SUBMIT, target=item.spec.name)


async def audit_submissions(request: Request, items: Sequence[Prepared], accepted: Any) -> None:
    """Exports are recorded one by one (what was asked, the stores applied); a batch as one bulk action."""
    for item in items:
        if item.spec.name == "export_data":
            details: dict[str, Any] = {"task_name": item.spec.name, "task_id": item.task_id}
            details["arguments"] = item.validated
            await gateway_audit.record(request, audit.TASK_SUBMIT, target=item.task_id, details=details)
    if len(items) > 1 or request.url.path.endswith("/batch"):
        names = sorted({item.spec.name for item in items})
        details = {"count": len(items), "task_names": names, "task_ids": [i.task_id for i in items[:100]]}
        await gateway_audit.record(request, audit.TASKS_BULK, target="submit", details=details)


async def authorize_task_action(
    request: Request, principal: Principal, action: str, spec: TaskSpec | None, target: str
) -> None:
    """Retry or revoke: the action's permission, and for a maintenance task the maintenance permission."""
    needed = permissions.TASKS_RETRY if action == audit.TASK_RETRY else permissions.TASKS_REVOKE
    if not principal.has(needed):
        raise await deny(request, needed, f"a {principal.role} token may not do this", action=action, target=target)
    if spec is not None and spec.permission == permissions.SUBMIT_MAINTENANCE and not principal.has(spec.permission):
        raise await deny(
            request,
            spec.permission,
            f"{spec.name} is a maintenance task; a {principal.role} token may not retry or revoke it",
            action=action,
            target=target,
        )


async def authorize_retry_arguments(request: Request, principal: Principal, item: Prepared, target: str) -> None:
    """A retry sends the same arguments again: they must still be ones this token may send."""
    missing = await _arguments_problem(request, principal, [item])
    if missing is not None:
        raise await deny(
            request, missing, _ARGUMENT_DETAILS.get(missing, "not allowed"), action=audit.TASK_RETRY, target=target
        )


def declared_permissions(dependency: Any) -> tuple[tuple[str, ...], bool] | None:
    """What a route dependency declares: (permissions, per_task), or None if it declares nothing."""
    if isinstance(dependency, Requires):
        return dependency.permissions, dependency.per_task
    declared = getattr(dependency, "permissions", None)
    if isinstance(declared, tuple):
        return declared, False
    return None
