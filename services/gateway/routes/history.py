"""``/api/v1/tasks/history`` and ``/api/v1/tasks/stats``: the monitor's durable task history."""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from pydantic import ValidationError

from services.gateway import authz
from services.gateway import task_history as history
from services.gateway.deps import SessionDep
from services.gateway.problems import ProblemError
from services.gateway.routes import API_PREFIX
from services.gateway.schemas import HistoryItem, HistoryPage, TaskStats
from services.gateway.task_filters import ARGUMENT_PREFIX, FilterError, argument_clauses, parse_arguments, parse_states
from shared.catalog import get_spec
from shared.contracts import HISTORY_STATES, state_list
from shared.models import TaskRecord

router = APIRouter(prefix=API_PREFIX, tags=["history"])

STATUS_HELP = f"One state or several, comma-separated (FAILURE,REVOKED): {state_list(HISTORY_STATES)}."


def _known_task(task_name: str | None) -> None:
    if task_name is not None and get_spec(task_name) is None:
        raise ProblemError(
            404,
            f"there is no task named {task_name!r}; GET /api/v1/catalog lists them",
            kind="unknown-task",
            title="Unknown task",
        )


def _aware(value: dt.datetime | None, name: str) -> dt.datetime | None:
    if value is not None and value.tzinfo is None:
        raise ProblemError(
            422,
            f"{name} needs a timezone, e.g. 2026-11-22T00:00:00Z",
            kind="validation-error",
            errors=[{"loc": ["query", name], "msg": "timezone required", "type": "timezone"}],
        )
    return value


OWNER_DOC = "Only this owner's tasks (roles that read every task); other roles always see what they may."
UNKNOWN_TASK: dict[int | str, dict[str, Any]] = {404: {"description": "task_name is not a catalog task."}}


def filter_problem(exc: FilterError, where: str = "query") -> ProblemError:
    return ProblemError(
        422,
        f"invalid filter: {exc}",
        kind="validation-error",
        errors=[{"loc": [where, exc.field], "msg": str(exc), "type": "value_error"}],
    )


@router.get("/tasks/history", response_model=HistoryPage, summary="Task history (durable)", responses=UNKNOWN_TASK)
def task_history(
    request: Request,
    principal: authz.Reader,
    session: SessionDep,
    task_name: Annotated[str | None, Query(max_length=200)] = None,
    status: Annotated[str | None, Query(max_length=200, description=STATUS_HELP)] = None,
    owner: Annotated[str | None, Query(max_length=100, description=OWNER_DOC)] = None,
    since: Annotated[dt.datetime | None, Query(description="Sent at or after (ISO 8601 with timezone).")] = None,
    until: Annotated[dt.datetime | None, Query(description="Sent before (ISO 8601 with timezone).")] = None,
    cursor: Annotated[str | None, Query(max_length=500)] = None,
    limit: Annotated[int, Query(ge=1, le=history.MAX_PAGE)] = 50,
    workflow_id: Annotated[str | None, Query(max_length=64, description="Only the steps of this workflow.")] = None,
) -> HistoryPage:
    """Every task the monitor recorded, newest first, kept ``MALLOPS_HISTORY_TTL_DAYS``; page with ``cursor``.
    Argument filters: ``kwargs.<field>=<value>`` query parameters (nested with dots)."""
    _known_task(task_name)
    visible_owner, or_queue = authz.history_owner(principal, owner)
    try:
        states = parse_states(status)
        pairs = {key: value for key, value in request.query_params.items() if key.startswith(ARGUMENT_PREFIX)}
        where = argument_clauses(parse_arguments(pairs), session.get_bind().dialect.name)
        if workflow_id:
            where.append(TaskRecord.workflow_id == workflow_id)
    except FilterError as exc:
        raise filter_problem(exc) from exc
    try:
        page = history.query_history(
            session,
            task_name=task_name,
            status=",".join(states) or None,
            where=where,
            owner=visible_owner,
            or_queue=or_queue,
            since=_aware(since, "since"),
            until=_aware(until, "until"),
            cursor=cursor,
            limit=limit,
        )
        items = [HistoryItem.model_validate(item) for item in page.items]
    except (ValueError, ValidationError) as exc:
        raise ProblemError(
            422,
            f"invalid history query: {exc}",
            kind="validation-error",
            errors=[{"loc": ["query", "cursor"], "msg": str(exc), "type": "value_error"}],
        ) from exc
    return HistoryPage(count=len(items), results=items, next_cursor=page.next_cursor)


@router.get("/tasks/stats", response_model=TaskStats, summary="Task statistics over a window", responses=UNKNOWN_TASK)
def task_stats(
    principal: authz.Reader,
    session: SessionDep,
    since: Annotated[dt.datetime | None, Query(description="Window start (default: 24 h before until).")] = None,
    until: Annotated[dt.datetime | None, Query(description="Window end (default: now).")] = None,
    task_name: Annotated[str | None, Query(max_length=200)] = None,
    owner: Annotated[str | None, Query(max_length=100, description=OWNER_DOC)] = None,
) -> TaskStats:
    """Counts by state, success rate, throughput, run time p50/p95/p99 and queue wait p50/p95, overall and
    per task name, for the tasks sent in ``[since, until)``."""
    _known_task(task_name)
    end = _aware(until, "until") or dt.datetime.now(dt.UTC)
    start = _aware(since, "since") or end - dt.timedelta(days=1)
    if end <= start:
        raise ProblemError(
            422,
            "the window must have since < until",
            kind="validation-error",
            errors=[{"loc": ["query", "since"], "msg": "bad window", "type": "value_error"}],
        )
    visible_owner, or_queue = authz.history_owner(principal, owner)
    stats = history.task_stats(
        session, since=start, until=end, task_name=task_name, owner=visible_owner, or_queue=or_queue
    )
    stats["tasks"] = {_short(name): {**block, "celery_name": name} for name, block in stats["tasks"].items()}
    return TaskStats.model_validate(stats)


def _short(name: str) -> str:
    """The catalog name of a task recorded under its Celery name (unknown names stay as they are)."""
    spec = get_spec(name)
    return spec.name if spec is not None else name
