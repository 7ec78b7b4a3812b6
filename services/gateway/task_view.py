"""What the gateway shows of a task: its own metadata, the result backend's state and the monitor's history,
merged into one view (:class:`TaskView`), its detail and list summaries. No HTTP here: the routes decide
who may see what (:mod:`services.gateway.routes.tasks`).
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections import OrderedDict
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sqlalchemy import select
from starlette.concurrency import run_in_threadpool

from services.gateway.schemas import Progress, TaskDetail, TaskErrorInfo, TaskSummary
from services.gateway.taskstore import TaskStore, parse_time
from shared import deferred
from shared.catalog import get_spec
from shared.celery_extensions.events import capped_traceback
from shared.contracts import FINAL_STATES, HISTORY_SENT_BIT, DeferredState, TaskState, parse_state
from shared.models import DeferredTask, TaskRecord
from shared.taskmeta import TaskMeta

if TYPE_CHECKING:
    from services.gateway.runtime import Runtime

FINISHED_RECORDS_MAX = 10_000


@dataclass(frozen=True)
class HistoryFacts:
    """What the history row of a task says, as the view uses it."""

    state: TaskState | None
    task_name: str
    queue: str | None
    owner: str | None
    worker: str | None
    retries: int
    exception: str | None
    error: str | None
    traceback: str | None
    sent_at: dt.datetime | None
    started_at: dt.datetime | None
    finished_at: dt.datetime | None
    runtime: float | None
    workflow_id: str | None = None
    workflow_step: str | None = None
    arguments: dict[str, Any] | None = None  # {"args", "kwargs"} as sent, capped ("truncated": true)
    retry_of: str | None = None
    # the monitor has folded the publish's task-sent event (arguments, retry_of): a worker's events can
    # make the row final before it
    sent_folded: bool = False

    @property
    def call(self) -> tuple[list[Any], dict[str, Any]] | None:
        """The task's arguments as sent, unless the history had to cut them."""
        value = self.arguments
        if not isinstance(value, dict) or value.get("truncated"):
            return None
        return list(value.get("args") or []), dict(value.get("kwargs") or {})

    @classmethod
    def of(cls, row: TaskRecord) -> HistoryFacts:
        return cls(
            state=parse_state(row.state),
            task_name=row.task_name,
            queue=row.queue,
            owner=row.owner,
            worker=row.worker,
            retries=row.retries or 0,
            exception=row.exception,
            error=row.error,
            traceback=row.traceback,
            sent_at=parse_time(row.sent_at),
            started_at=parse_time(row.started_at),
            finished_at=parse_time(row.finished_at),
            runtime=row.runtime,
            workflow_id=row.workflow_id,
            workflow_step=row.workflow_step,
            arguments=row.arguments if isinstance(row.arguments, dict) else None,
            retry_of=row.retry_of,
            sent_folded=bool(int(row.event_mask or 0) & (1 << HISTORY_SENT_BIT)),
        )


class FinishedRecords:
    """The history of finished tasks, remembered in this process: a final row that holds the publish's
    task-sent event no longer changes (one without it still gets the arguments and retry_of)."""

    def __init__(self, limit: int = FINISHED_RECORDS_MAX) -> None:
        self.limit = limit
        self._facts: OrderedDict[str, HistoryFacts] = OrderedDict()

    def get(self, task_id: str) -> HistoryFacts | None:
        return self._facts.get(task_id)

    def remember(self, task_id: str, facts: HistoryFacts) -> None:
        if facts.state in FINAL_STATES and facts.sent_folded:
            self._facts[task_id] = facts
            if len(self._facts) > self.limit:
                self._facts.popitem(last=False)


@dataclass
class TaskView:
    """A task as the gateway knows it: what it recorded at submission, its result, its history row and,
    for a one-off run further ahead than the broker holds, its row in the database (:mod:`shared.deferred`)."""

    task_id: str
    meta: TaskMeta | None
    result: dict[str, Any] | None
    history: HistoryFacts | None
    deferred: DeferredTask | None = None

    @property
    def exists(self) -> bool:
        return any(part is not None for part in (self.meta, self.history, self.result, self.deferred))

    @property
    def known_only_by_result(self) -> bool:
        """Only the result backend knows it (no metadata, history or waiting row): no owner to check."""
        return self.meta is None and self.history is None and self.deferred is None

    @property
    def owner(self) -> str | None:
        if self.meta is not None:
            return self.meta.owner
        if self.deferred is not None:
            return self.deferred.owner
        return self.history.owner if self.history else None

    @property
    def queue(self) -> str | None:
        for queue in (
            self.meta.queue if self.meta else None,
            self.deferred.queue if self.deferred else None,
            self.history.queue if self.history else None,
            (self.result or {}).get("queue"),
        ):
            if queue:
                return str(queue)
        return None

    @property
    def status(self) -> TaskState:
        if self.result is not None:  # a state no mallops task stores would read PENDING
            return parse_state(self.result.get("status")) or TaskState.PENDING
        state = self.history.state if self.history else None
        # a task the gateway submitted reads PENDING until a worker stores a state, unless its history
        # already has a final one: a worker that rejects a message stores no result
        if state and (self.meta is None or state in FINAL_STATES):
            return state
        if self.deferred is not None and self.deferred.state in (DeferredState.SCHEDULED, DeferredState.REVOKED):
            return TaskState(self.deferred.state)
        return TaskState.PENDING

    @property
    def task_name(self) -> str:
        if self.meta is not None:
            return self.meta.task_name
        if self.deferred is not None:
            return self.deferred.task_name
        name = (self.result or {}).get("name") or (self.history.task_name if self.history else "")
        spec = get_spec(str(name))
        return spec.name if spec else str(name)

    def with_result(self, result: dict[str, Any] | None) -> TaskView:
        return self if result is None else TaskView(self.task_id, self.meta, result, self.history, self.deferred)


def history_facts(runtime: Runtime, task_id: str) -> HistoryFacts | None:
    """The task's history row (remembered once final)."""
    cached = runtime.finished_records.get(task_id)
    if cached is not None:
        return cached
    with runtime.sessions() as session:
        row = session.get(TaskRecord, task_id)
        facts = HistoryFacts.of(row) if row is not None else None
    if facts is not None:
        runtime.finished_records.remember(task_id, facts)
    return facts


async def load_view(runtime: Runtime, store: TaskStore, task_id: str) -> TaskView:
    """The task's view; the history is read unless the result backend already says everything."""
    meta, result = await asyncio.gather(store.load(task_id), store.result(task_id))
    facts = None
    if meta is None or result is None or result.get("status") in (*FINAL_STATES, TaskState.STARTED):
        facts = await run_in_threadpool(history_facts, runtime, task_id)
    waiting = None
    if meta is None and facts is None:  # perhaps a run that waits in the database
        waiting = await run_in_threadpool(deferred_row, runtime, task_id)
    return TaskView(task_id, meta, result, facts, waiting)


def deferred_row(runtime: Runtime, task_id: str) -> DeferredTask | None:
    with runtime.sessions() as session:
        return deferred.find(session, task_id)


def _result_error(result: dict[str, Any]) -> TaskErrorInfo | None:
    if result.get("status") not in (TaskState.FAILURE, TaskState.RETRY):
        return None
    value = result.get("result")
    if isinstance(value, dict) and "exc_type" in value:
        message = value.get("exc_message", "")
        if isinstance(message, list | tuple):
            message = " ".join(str(part) for part in message)
        return TaskErrorInfo(type=str(value["exc_type"]), message=str(message))
    return TaskErrorInfo(type="Error", message=str(value))


def error_info(task: TaskView) -> TaskErrorInfo | None:
    """Why the task failed: the result backend's exception, else (FAILURE or REJECTED) the history's."""
    if task.result:
        return _result_error(task.result)
    history = task.history
    if history is not None and task.status in (TaskState.FAILURE, TaskState.REJECTED):
        return TaskErrorInfo(type=history.exception or "Error", message=history.error or "")
    return None


def traceback_text(task: TaskView) -> str | None:
    """A failure's traceback: the result backend's while it keeps the result, else the history's."""
    if task.status != TaskState.FAILURE:
        return None
    return capped_traceback((task.result or {}).get("traceback")) or (task.history.traceback if task.history else None)


def arguments(task: TaskView) -> tuple[list[Any], dict[str, Any]] | None:
    """The arguments the task was sent with: the gateway's metadata while it is kept, a waiting run's row,
    the history once the task has finished (the monitor then drops the metadata), else the result backend's
    (``result_extended``). None when nothing knows them whole."""
    if task.meta is not None:
        return task.meta.args, task.meta.kwargs
    if task.deferred is not None:
        return list(task.deferred.args), dict(task.deferred.kwargs)
    known = task.history.call if task.history is not None else None
    if known is not None:
        return known
    result = task.result or {}
    if isinstance(result.get("kwargs"), dict):
        return list(result.get("args") or []), dict(result["kwargs"])
    return None


def detail(task: TaskView) -> TaskDetail:
    result = task.result or {}
    history = task.history
    meta = task.meta
    status = task.status
    value = result.get("result")
    progress = None
    worker = result.get("worker") or (history.worker if history else None)
    if status == TaskState.PROGRESS and isinstance(value, dict) and {"current", "total"} <= value.keys():
        progress = Progress(current=int(value["current"]), total=int(value["total"]))
    if status == TaskState.STARTED and isinstance(value, dict):
        worker = worker or value.get("hostname")
    finished_at = parse_time(result.get("date_done")) if status in FINAL_STATES else None
    finished_at = finished_at or (history.finished_at if history else None)
    started_at = history.started_at if history else None
    duration = history.runtime if history else None
    if duration is None and started_at is not None and finished_at is not None:
        duration = max(0.0, (finished_at - started_at).total_seconds())
    args, kwargs = arguments(task) or ([], {})
    return TaskDetail(
        task_id=task.task_id,
        task_name=task.task_name,
        status=status,
        result=value if status == TaskState.SUCCESS else None,
        error=error_info(task),
        traceback=traceback_text(task),
        progress=progress,
        queue=task.queue,
        worker=worker,
        retries=int(result.get("retries") or (history.retries if history else 0)),
        args=args,
        kwargs=kwargs,
        owner=task.owner,
        retry_of=meta.retry_of if meta else (history.retry_of if history else None),
        workflow_id=history.workflow_id if history else None,
        workflow_step=history.workflow_step if history else None,
        sent_at=(meta.submitted_at if meta else None) or (history.sent_at if history else None),
        started_at=started_at,
        finished_at=finished_at,
        duration=duration,
        eta=task.deferred.eta if task.deferred is not None else None,
    )


# -- lists -------------------------------------------------------------------------------------


async def summaries(runtime: Runtime, store: TaskStore, ids: list[str]) -> list[TaskSummary]:
    """The tasks' summaries: the gateway's metadata and the result backend's state; for a task with no
    result (rejected, or its result expired) the final state in its history, and for a finished task
    whose metadata the monitor dropped, its name, queue, owner and send time from the history too."""
    metas, results = await asyncio.gather(store.load_many(ids), store.results_many(ids))
    missing = [
        task_id for task_id, meta, result in zip(ids, metas, results, strict=True) if result is None or meta is None
    ]
    finals = await run_in_threadpool(final_records, runtime, missing) if missing else {}
    return [
        _summary(task_id, meta, result, finals.get(task_id))
        for task_id, meta, result in zip(ids, metas, results, strict=True)
    ]


@dataclass(frozen=True)
class FinalRecord:
    """What a list needs of a final history row."""

    state: str
    finished_at: dt.datetime | None
    task_name: str
    queue: str | None
    owner: str | None
    sent_at: dt.datetime | None


def final_records(runtime: Runtime, task_ids: list[str]) -> dict[str, FinalRecord]:
    """task id -> its final history row, for those of ``task_ids`` whose history row is final."""
    columns = (TaskRecord.state, TaskRecord.finished_at, TaskRecord.task_name, TaskRecord.queue, TaskRecord.owner)
    with runtime.sessions() as session:
        rows = session.execute(
            select(TaskRecord.task_id, *columns, TaskRecord.sent_at).where(
                TaskRecord.task_id.in_(task_ids), TaskRecord.state.in_(FINAL_STATES)
            )
        )
        return {
            row.task_id: FinalRecord(
                row.state,
                parse_time(row.finished_at),
                row.task_name,
                row.queue,
                row.owner,
                parse_time(row.sent_at),
            )
            for row in rows
        }


def _summary(
    task_id: str,
    meta: TaskMeta | None,
    result: dict[str, Any] | None,
    final: FinalRecord | None = None,
) -> TaskSummary:
    status = parse_state((result or {}).get("status") or (final.state if final else None)) or TaskState.PENDING
    finished_at = parse_time((result or {}).get("date_done")) if result else (final.finished_at if final else None)
    queue: str | None
    owner: str | None
    if meta is not None:
        task_name, queue, owner, sent_at = meta.task_name, meta.queue, meta.owner, meta.submitted_at
    elif final is not None:
        spec = get_spec(final.task_name)
        task_name = spec.name if spec else final.task_name
        queue, owner, sent_at = final.queue, final.owner, final.sent_at
    else:
        task_name, queue, owner, sent_at = str((result or {}).get("name") or ""), None, None, None
    return TaskSummary(
        task_id=task_id,
        task_name=task_name,
        status=status,
        queue=queue,
        owner=owner,
        sent_at=sent_at,
        finished_at=finished_at if status in FINAL_STATES else None,
    )
