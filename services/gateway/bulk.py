"""Bulk retry and revoke: the tasks the history's filters select, at most ``limit`` per request.

A :class:`Selection` is the history's filters (task name, states, owner, time, argument values). Retrying
re-submits each selected FAILURE or REVOKED task with the arguments its history row keeps (a new task id,
``retry_of`` the old one), in its owner's name; revoking records every selected unfinished task as revoked
(:mod:`shared.celery_extensions.revocations`) and broadcasts one revoke for all of them. ``dry_run`` only counts.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from kombu.exceptions import KombuError
from sqlalchemy import ColumnElement, exists, func, select
from sqlalchemy.orm import Session, aliased
from starlette.concurrency import run_in_threadpool

from services.gateway.problems import ProblemError
from services.gateway.runtime import Runtime
from services.gateway.schemas import TaskSubmission
from services.gateway.submission import BROKER_RETRY_AFTER, Submitter, prepare
from services.gateway.task_filters import ArgumentFilter, argument_clauses
from services.gateway.task_history import _filters as history_filters
from services.gateway.taskstore import TaskStore
from shared.catalog import get_spec
from shared.celery_extensions.revocations import queue_revoke
from shared.contracts import TaskState
from shared.models import TaskRecord
from shared.tokens import Principal

MAX_LIMIT = 1000
RETRYABLE = (TaskState.FAILURE, TaskState.REVOKED)
REVOCABLE = (TaskState.SENT, TaskState.RECEIVED, TaskState.STARTED, TaskState.PROGRESS, TaskState.RETRY)
PARALLEL_SUBMISSIONS = 20


@dataclass(frozen=True)
class Selection:
    states: tuple[str, ...]
    task_name: str | None = None
    owner: str | None = None
    since: dt.datetime | None = None
    until: dt.datetime | None = None
    arguments: tuple[ArgumentFilter, ...] = ()
    only_not_retried: bool = False

    def clauses(self, dialect: str) -> list[ColumnElement[bool]]:
        return [
            *([not_retried()] if self.only_not_retried else []),
            *history_filters(
                task_name=self.task_name,
                status=",".join(self.states),
                owner=self.owner,
                since=self.since,
                until=self.until,
            ),
            *argument_clauses(self.arguments, dialect),
        ]


@dataclass(frozen=True)
class Selected:
    task_id: str
    task_name: str
    state: str
    owner: str | None
    arguments: dict[str, Any] | None


RETRIES = aliased(TaskRecord)


def not_retried() -> ColumnElement[bool]:
    """Tasks no retry names yet (bulk retry selects each failed task once, however often it is asked)."""
    return ~exists().where(RETRIES.retry_of == TaskRecord.task_id)


def count(session: Session, selection: Selection) -> int:
    where = selection.clauses(session.get_bind().dialect.name)
    return int(session.scalar(select(func.count()).select_from(TaskRecord).where(*where)) or 0)


def select_tasks(session: Session, selection: Selection, limit: int) -> list[Selected]:
    """The newest ``limit`` tasks of the selection."""
    where = selection.clauses(session.get_bind().dialect.name)
    stmt = (
        select(TaskRecord.task_id, TaskRecord.task_name, TaskRecord.state, TaskRecord.owner, TaskRecord.arguments)
        .where(*where)
        .order_by(TaskRecord.sent_at.desc().nulls_last(), TaskRecord.task_id.desc())
        .limit(limit)
    )
    return [Selected(*row) for row in session.execute(stmt)]


@dataclass
class Outcome:
    """What a bulk action did: per task, the new task id (retry) or nothing (revoke); what it skipped."""

    done: list[dict[str, Any]]
    skipped: list[dict[str, Any]]


async def retry(runtime: Runtime, store: TaskStore, principal: Principal, tasks: Sequence[Selected]) -> Outcome:
    """Re-submit each task with the arguments its history row keeps, in its owner's name."""
    outcome = Outcome([], [])
    prepared = []
    for task in tasks:
        spec = get_spec(task.task_name)
        arguments = task.arguments
        if spec is None:
            outcome.skipped.append({"task_id": task.task_id, "reason": f"{task.task_name} is not in the catalog"})
            continue
        if not isinstance(arguments, dict) or arguments.get("truncated"):
            outcome.skipped.append({"task_id": task.task_id, "reason": "its arguments were not kept whole"})
            continue
        submission = TaskSubmission(
            task_name=spec.name, args=list(arguments.get("args") or []), kwargs=dict(arguments.get("kwargs") or {})
        )
        try:
            prepared.append((task, prepare(submission)))
        except ProblemError as exc:
            outcome.skipped.append({"task_id": task.task_id, "reason": exc.detail})
    submitter = Submitter(runtime, store)
    gate = asyncio.Semaphore(PARALLEL_SUBMISSIONS)

    async def one(task: Selected, item: Any) -> dict[str, Any]:
        async with gate:
            accepted = await submitter.submit(
                principal, [item], owner=task.owner or principal.name, retry_of=task.task_id
            )
        return {"task_id": task.task_id, "new_task_id": accepted[0].task_id}

    outcome.done = list(await asyncio.gather(*(one(task, item) for task, item in prepared)))
    return outcome


async def revoke(runtime: Runtime, tasks: Sequence[Selected], terminate: bool) -> Outcome:
    """Record every task as revoked (workers that start later skip them too), then one broadcast."""
    ids = [task.task_id for task in tasks]
    if not ids:
        return Outcome([], [])
    async with runtime.cache.pipeline(transaction=True) as pipe:
        for task_id in ids:
            queue_revoke(pipe, task_id, runtime.settings.task_meta_ttl_seconds)
        await pipe.execute()

    def broadcast() -> None:
        runtime.celery.control.revoke(ids, terminate=terminate, signal="SIGTERM")

    try:
        await run_in_threadpool(broadcast)
    except (KombuError, OSError, TimeoutError) as exc:
        raise ProblemError(
            503,
            f"the task queue cannot be reached ({type(exc).__name__}); the tasks are recorded as revoked, "
            "so workers skip them, but running ones were not told",
            kind="broker-unavailable",
            headers={"Retry-After": BROKER_RETRY_AFTER},
        ) from exc
    return Outcome([{"task_id": task_id} for task_id in ids], [])
