"""Workflows over HTTP: validation and permissions, the quota (one per workflow), storing and publishing
the first steps, reading, revoke and retry. The orchestration itself is in :mod:`shared.workflows`; the
worker that finishes a step publishes the next (``shared/celery_extensions/workflow_steps.py``).

Order, as for tasks (:mod:`services.gateway.submission`): everything is validated and authorized first
(404, 422, 403), then the owner's quota is reserved once for the whole workflow (the workflow's id is the
member of the owner's unfinished set, released when the workflow is finished), then the workflow is stored
with its first steps claimed, then they are published. If publishing fails, the workflow is deleted, the
reservation released, and the answer is 503.
"""

from __future__ import annotations

import datetime as dt
import logging
import uuid
from typing import Any

from fastapi import Request
from kombu.exceptions import KombuError, OperationalError
from pydantic import ValidationError
from redis.exceptions import RedisError
from sqlalchemy import delete, func, select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import selectinload
from starlette.concurrency import run_in_threadpool

from services.gateway import authz
from services.gateway.broker import TaskMessage
from services.gateway.problems import ProblemError, field_errors
from services.gateway.runtime import Runtime
from services.gateway.schemas import (
    WorkflowCatalogEntry,
    WorkflowDetail,
    WorkflowProgress,
    WorkflowStepView,
    WorkflowSubmission,
    WorkflowSummary,
)
from services.gateway.submission import BROKER_RETRY_AFTER, Prepared, Submitter, invalid
from services.gateway.taskstore import TaskStore
from shared import permissions, workflows
from shared.catalog import WORKFLOWS
from shared.celery_extensions.workflow_steps import step_headers
from shared.logs import request_id_var
from shared.models import Workflow
from shared.tokens import Principal

log = logging.getLogger("mallops.gateway")


def catalog_entries(today: dt.date) -> list[WorkflowCatalogEntry]:
    entries = []
    for spec in WORKFLOWS.values():
        _, steps = spec.steps({}, today)
        entries.append(
            WorkflowCatalogEntry(
                name=spec.name,
                description=spec.description,
                args_schema=spec.json_schema(),
                steps=steps,
                schedule=spec.schedule.as_dict() if spec.schedule else None,
                schedule_text=spec.schedule.describe() if spec.schedule else None,
            )
        )
    return entries


def plan(body: WorkflowSubmission, today: dt.date) -> tuple[str | None, dict[str, Any], list[workflows.PlannedStep]]:
    """(name, its validated kwargs, the steps) of a submission; 404 for an unknown name, 422 for steps or
    arguments that do not fit."""
    if (body.name is None) == (body.steps is None):
        raise invalid([{"loc": ["body"], "msg": "give either name (and kwargs) or steps", "type": "workflow"}])
    definition: list[Any] = body.steps or []
    kwargs: dict[str, Any] = {}
    if body.name is not None:
        spec = WORKFLOWS.get(body.name)
        if spec is None:
            raise ProblemError(
                404,
                f"there is no workflow named {body.name!r}; GET /api/v1/catalog lists them under `workflows`",
                kind="unknown-workflow",
                title="Unknown workflow",
            )
        try:
            kwargs, definition = spec.steps(body.kwargs, today)
        except ValidationError as exc:
            errors = field_errors(exc.errors())
            for error in errors:
                error["loc"] = ["body", "kwargs", *error["loc"]]
            raise invalid(errors) from exc
    try:
        return body.name, kwargs, workflows.plan(definition)
    except workflows.DefinitionError as exc:
        raise invalid(exc.errors) from exc


async def authorize(
    request: Request, principal: Principal, name: str | None, steps: list[workflows.PlannedStep]
) -> list[workflows.PlannedStep]:
    """403 unless the token may run it: workflows.run, and the named workflow's permission or, ad hoc, each
    step's own (with its argument checks: exports are confined to the token's stores)."""
    if not principal.has(permissions.WORKFLOWS_RUN):
        raise await authz.deny(request, permissions.WORKFLOWS_RUN, f"a {principal.role} token may not run workflows")
    if name is not None:
        needed = WORKFLOWS[name].permission
        if not principal.has(needed):
            raise await authz.deny(
                request,
                needed,
                f"workflow {name} needs the permission {needed!r}, which a {principal.role} token does not have",
            )
        return steps
    items = [Prepared("", step.spec, [], dict(step.kwargs), dict(step.kwargs), None, None, None) for step in steps]
    await authz.authorize_submissions(request, principal, items)
    return [
        workflows.PlannedStep(step.name, step.spec, item.validated, step.after, step.from_previous)
        for step, item in zip(steps, items, strict=True)
    ]


class WorkflowRunner:
    """Quota, storing and publishing of workflows for one request."""

    def __init__(self, runtime: Runtime, store: TaskStore) -> None:
        self.runtime = runtime
        self.store = store

    async def submit(
        self, principal: Principal, name: str | None, kwargs: dict[str, Any], steps: list[workflows.PlannedStep]
    ) -> WorkflowDetail:
        workflow_id = str(uuid.uuid4())
        owner = principal.name
        quota = not principal.is_admin
        if quota:
            await Submitter(self.runtime, self.store).reserve(owner, [workflow_id])
        rid = request_id_var.get()

        def create() -> list[workflows.Outgoing]:
            with self.runtime.sessions() as session, session.begin():
                _, outgoing = workflows.create(
                    session,
                    steps,
                    owner=owner,
                    name=name,
                    kwargs=kwargs,
                    workflow_id=workflow_id,
                    request_id=rid,
                )
                return outgoing

        try:
            try:
                outgoing = await run_in_threadpool(create)
            except SQLAlchemyError as exc:
                raise ProblemError(
                    503,
                    f"the database cannot be reached ({type(exc).__name__}); nothing was started",
                    kind="database-unavailable",
                    headers={"Retry-After": BROKER_RETRY_AFTER},
                ) from exc
            await self.publish(outgoing)
        except BaseException:
            await run_in_threadpool(self._forget, workflow_id)
            if quota:
                await self.store.release(owner, [workflow_id])
            raise
        return await run_in_threadpool(self.detail, workflow_id)

    async def publish(self, outgoing: list[workflows.Outgoing]) -> None:
        """Publish claimed steps and record them published; 503 when the broker cannot be reached."""
        try:
            for item in outgoing:
                message = TaskMessage(
                    item.task_id, item.spec.celery_name, item.spec.queue, item.kwargs, repr(item.kwargs)[:1024]
                )
                await self.runtime.publisher.publish([message], step_headers(item))
        except (OperationalError, KombuError, RedisError, OSError, TimeoutError) as exc:
            log.warning("cannot publish workflow steps: %s", exc)
            self.runtime.metrics.publish_failures.inc()
            raise ProblemError(
                503,
                f"the task queue cannot be reached ({type(exc).__name__}); try again in {BROKER_RETRY_AFTER} s",
                kind="broker-unavailable",
                headers={"Retry-After": BROKER_RETRY_AFTER},
            ) from exc

        def mark() -> None:
            with self.runtime.sessions() as session, session.begin():
                workflows.published(session, outgoing)

        await run_in_threadpool(mark)

    def _forget(self, workflow_id: str) -> None:
        try:
            with self.runtime.sessions() as session, session.begin():
                session.execute(delete(Workflow).where(Workflow.id == workflow_id))
        except Exception as exc:
            log.warning("could not remove the unpublished workflow %s: %s", workflow_id, exc)

    def detail(self, workflow_id: str) -> WorkflowDetail:
        with self.runtime.sessions() as session:
            workflow = session.get(Workflow, workflow_id)
            if workflow is None:
                raise not_found(workflow_id)
            return detail(workflow)

    async def retry(self, principal: Principal, workflow: WorkflowDetail) -> WorkflowDetail:
        quota = not principal.is_admin
        if quota:  # a retried workflow counts once again, for its owner
            await Submitter(self.runtime, self.store).reserve(workflow.owner, [workflow.workflow_id])

        def claim() -> list[workflows.Outgoing]:
            with self.runtime.sessions() as session, session.begin():
                return workflows.retry(session, workflow.workflow_id) or []

        try:
            outgoing = await run_in_threadpool(claim)
        except workflows.NotRetryable as exc:
            if quota:
                await self.store.release(workflow.owner, [workflow.workflow_id])
            raise ProblemError(409, str(exc), kind="not-retryable", title="The workflow cannot be retried") from exc
        await self.publish(outgoing)
        return await run_in_threadpool(self.detail, workflow.workflow_id)

    async def revoke(self, workflow_id: str, principal: Principal) -> WorkflowDetail:
        def mark() -> list[str]:
            with self.runtime.sessions() as session, session.begin():
                return workflows.revoke(session, workflow_id, f"revoked by {principal.name}") or []

        running = await run_in_threadpool(mark)
        if running:
            from shared.celery_extensions.revocations import queue_revoke

            async with self.runtime.cache.pipeline(transaction=True) as pipe:
                for task_id in running:
                    queue_revoke(pipe, task_id, self.runtime.settings.task_meta_ttl_seconds)
                await pipe.execute()
        return await run_in_threadpool(self.detail, workflow_id)


def not_found(workflow_id: str) -> ProblemError:
    return ProblemError(404, f"there is no workflow {workflow_id!r}", kind="unknown-workflow", title="Unknown workflow")


def summary_fields(workflow: Workflow) -> dict[str, Any]:
    return {
        "workflow_id": workflow.id,
        "name": workflow.name,
        "owner": workflow.owner,
        "status": workflow.status,
        "progress": WorkflowProgress(**workflows.progress(workflow)),
        "failed_step": workflow.failed_step,
        "reason": workflow.reason,
        "retries": workflow.retries,
        "created_at": workflow.created_at,
        "started_at": workflow.started_at,
        "finished_at": workflow.finished_at,
        "duration": workflows.duration(workflow),
    }


def summary(workflow: Workflow) -> WorkflowSummary:
    return WorkflowSummary(**summary_fields(workflow))


def detail(workflow: Workflow) -> WorkflowDetail:
    steps = [
        WorkflowStepView(
            name=step.name,
            task_name=step.task_name,
            kwargs=step.kwargs,
            after=list(step.after),
            state=step.state,
            task_id=step.task_id,
            attempts=step.attempts,
            error=step.error,
            result=step.result,
            started_at=step.started_at,
            finished_at=step.finished_at,
        )
        for step in workflow.steps
    ]
    return WorkflowDetail(**summary_fields(workflow), kwargs=workflow.kwargs, steps=steps)


def permission_of(name: str | None) -> str | None:
    """What running (or retrying) the named workflow needs besides workflows.run; None for an ad-hoc one."""
    spec = WORKFLOWS.get(name) if name else None
    return spec.permission if spec else None


def sees(principal: Principal, owner: str) -> bool:
    return owner == principal.name or principal.has(permissions.TASKS_READ_ALL)


def listing(
    runtime: Runtime,
    principal: Principal,
    *,
    statuses: list[str] | None,
    name: str | None,
    owner: str | None,
    since: dt.datetime | None,
    until: dt.datetime | None,
    limit: int,
    offset: int,
) -> tuple[int, list[WorkflowSummary]]:
    """(how many match, the page of them): the newest workflows the principal may see, filtered."""
    query = select(Workflow)
    if not principal.has(permissions.TASKS_READ_ALL):
        query = query.where(Workflow.owner == principal.name)
    elif owner:
        query = query.where(Workflow.owner == owner)
    if statuses:
        query = query.where(Workflow.status.in_(statuses))
    if name:
        query = query.where(Workflow.name == name)
    if since:
        query = query.where(Workflow.created_at >= since)
    if until:
        query = query.where(Workflow.created_at < until)
    page = (
        query.order_by(Workflow.created_at.desc(), Workflow.id)
        .limit(limit)
        .offset(offset)
        .options(selectinload(Workflow.steps))  # each row's progress: one query for the page's steps
    )
    with runtime.sessions() as session:
        total = session.scalar(select(func.count()).select_from(query.subquery())) or 0
        return total, [summary(workflow) for workflow in session.scalars(page)]
