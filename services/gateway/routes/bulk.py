"""``POST /api/v1/tasks/retry`` and ``POST /api/v1/tasks/revoke``: many tasks at once, by the history's filters."""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any

from fastapi import APIRouter, Request
from pydantic import BaseModel, Field, StrictBool
from starlette.concurrency import run_in_threadpool

from services.gateway import authz, bulk
from services.gateway.admin_actions import record_admin_action
from services.gateway.deps import RuntimeDep, StoreDep
from services.gateway.openapi import admin_only
from services.gateway.problems import ProblemError
from services.gateway.routes import API_PREFIX
from services.gateway.routes.history import filter_problem
from services.gateway.runtime import Runtime
from services.gateway.schemas import Strict
from services.gateway.task_filters import FilterError, parse_arguments, parse_states
from shared import audit, permissions
from shared.catalog import get_spec
from shared.tokens import Principal

router = APIRouter(prefix=API_PREFIX, tags=["tasks"])

Scalar = str | int | float | bool
BulkActor = Annotated[Principal, authz.requires(permissions.TASKS_BULK)]


class BulkFilters(Strict):
    task_name: str | None = Field(default=None, max_length=200, description="Only this catalog task.")
    status: str | list[str] | None = Field(
        default=None, description="One state, several comma-separated (FAILURE,REVOKED) or a list."
    )
    owner: str | None = Field(default=None, max_length=100, description="Only this owner's tasks.")
    since: dt.datetime | None = Field(default=None, description="Sent at or after (ISO 8601 with timezone).")
    until: dt.datetime | None = Field(default=None, description="Sent before (ISO 8601 with timezone).")
    arguments: dict[str, Scalar] = Field(
        default_factory=dict,
        description='Argument values, as the history\'s query: {"kwargs.filters.store_id": 12}.',
        examples=[{"kwargs.filters.store_id": 12}],
    )
    limit: int = Field(default=bulk.MAX_LIMIT, ge=1, le=bulk.MAX_LIMIT, description="At most this many tasks.")
    dry_run: StrictBool = Field(default=False, description="Only count the tasks that match.")


class BulkRevokeRequest(BulkFilters):
    terminate: StrictBool = Field(default=False, description="Also kill the running ones (SIGTERM).")


class BulkAnswer(BaseModel):
    dry_run: bool
    matched: int = Field(description="Tasks that match the filters (all of them, not only up to `limit`).")
    count: int = Field(description="Tasks retried or revoked by this request (0 for a dry run).")
    results: list[dict[str, Any]] = Field(description="Each task acted on: task_id (and new_task_id for a retry).")
    skipped: list[dict[str, Any]] = Field(default_factory=list, description="task_id and why it was left alone.")


def _selection(filters: BulkFilters, allowed: tuple[str, ...]) -> bulk.Selection:
    try:
        states = parse_states(filters.status) or allowed
        arguments = parse_arguments(filters.arguments)
    except FilterError as exc:
        raise filter_problem(exc, "body") from exc
    wrong = [state for state in states if state not in allowed]
    if wrong:
        raise filter_problem(
            FilterError("status", f"only {', '.join(allowed)} tasks qualify, not {', '.join(wrong)}"), "body"
        )
    if filters.task_name is not None and get_spec(filters.task_name) is None:
        raise ProblemError(
            404, f"there is no task named {filters.task_name!r}", kind="unknown-task", title="Unknown task"
        )
    for name in ("since", "until"):
        value = getattr(filters, name)
        if value is not None and value.tzinfo is None:
            raise filter_problem(FilterError(name, f"{name} needs a timezone, e.g. 2026-11-22T00:00:00Z"), "body")
    return bulk.Selection(
        states,
        filters.task_name,
        filters.owner,
        filters.since,
        filters.until,
        arguments,
        only_not_retried=allowed == bulk.RETRYABLE,
    )


async def _find(runtime: Runtime, filters: BulkFilters, allowed: tuple[str, ...]) -> tuple[int, list[bulk.Selected]]:
    """How many tasks the filters select, and (unless a dry run) the newest ``limit`` of them."""
    selection = _selection(filters, allowed)

    def find() -> tuple[int, list[bulk.Selected]]:
        with runtime.sessions() as session:
            matched = bulk.count(session, selection)
            return matched, [] if filters.dry_run else bulk.select_tasks(session, selection, filters.limit)

    return await run_in_threadpool(find)


UNKNOWN_TASK: dict[int | str, dict[str, Any]] = {404: {"description": "task_name is not a catalog task."}}


@router.post(
    "/tasks/retry",
    response_model=BulkAnswer,
    summary="Retry many tasks",
    openapi_extra=admin_only(),
    responses=UNKNOWN_TASK,
)
async def retry_many(
    filters: BulkFilters, request: Request, principal: BulkActor, runtime: RuntimeDep, store: StoreDep
) -> BulkAnswer:
    """``tasks.bulk`` (admin): re-submit the failed (or revoked) tasks the filters select, newest first, at
    most ``limit`` (default and maximum 1,000) per request, each with the arguments its history keeps, as a new task
    (``retry_of`` the old one). A task already retried is not selected again. ``status`` defaults to
    FAILURE,REVOKED. ``dry_run`` only counts."""
    matched, tasks = await _find(runtime, filters, bulk.RETRYABLE)
    if filters.dry_run:
        return BulkAnswer(dry_run=True, matched=matched, count=0, results=[])
    outcome = await bulk.retry(runtime, store, principal, tasks)
    await record_admin_action(
        request,
        audit.TASKS_BULK,
        "retry",
        filters=filters.model_dump(mode="json", exclude={"dry_run"}),
        retried=outcome.done,
        skipped=outcome.skipped,
    )
    return BulkAnswer(
        dry_run=False, matched=matched, count=len(outcome.done), results=outcome.done, skipped=outcome.skipped
    )


@router.post(
    "/tasks/revoke",
    response_model=BulkAnswer,
    summary="Revoke many tasks",
    openapi_extra=admin_only(),
    responses=UNKNOWN_TASK,
)
async def revoke_many(
    filters: BulkRevokeRequest, request: Request, principal: BulkActor, runtime: RuntimeDep
) -> BulkAnswer:
    """``tasks.bulk`` (admin): revoke the unfinished tasks the filters select, at most ``limit`` (default and
    maximum 1,000) per request; with ``terminate`` running ones are killed. ``status`` defaults to every
    unfinished state (SENT, RECEIVED, STARTED, PROGRESS, RETRY). ``dry_run`` only counts."""
    matched, tasks = await _find(runtime, filters, bulk.REVOCABLE)
    if filters.dry_run:
        return BulkAnswer(dry_run=True, matched=matched, count=0, results=[])
    outcome = await bulk.revoke(runtime, tasks, filters.terminate)
    await record_admin_action(
        request,
        audit.TASKS_BULK,
        "revoke",
        filters=filters.model_dump(mode="json", exclude={"dry_run"}),
        revoked=[item["task_id"] for item in outcome.done],
    )
    return BulkAnswer(dry_run=False, matched=matched, count=len(outcome.done), results=outcome.done)
