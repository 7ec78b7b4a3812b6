"""``/api/v1/tasks``: submit (one or a batch), list, read, follow over SSE, revoke and retry."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import time
from collections import OrderedDict
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Body, Depends, Header, Path, Query, Request
from fastapi.responses import JSONResponse, Response
from fastapi.sse import EventSourceResponse, ServerSentEvent
from kombu.exceptions import KombuError
from sqlalchemy import select
from starlette.concurrency import run_in_threadpool

from services.gateway import audit as gateway_audit
from services.gateway import authz
from services.gateway.deps import RuntimeDep, StoreDep
from services.gateway.idempotency import IdempotencyClaim
from services.gateway.openapi import admin_only
from services.gateway.problems import ProblemError
from services.gateway.routes import API_PREFIX
from services.gateway.runtime import Runtime
from services.gateway.schemas import (
    BatchAccepted,
    BatchSubmission,
    Progress,
    RevokeAccepted,
    RevokeRequest,
    TaskAccepted,
    TaskDetail,
    TaskErrorInfo,
    TaskList,
    TaskSubmission,
    TaskSummary,
)
from services.gateway.submission import BROKER_RETRY_AFTER, Prepared, Submitter, prepare
from services.gateway.taskstore import READY_STATES, TaskStore, decode_result, parse_time
from shared import audit, deferred, permissions
from shared.catalog import get_spec
from shared.celery_app import RESULT_EXPIRES
from shared.events import capped_traceback
from shared.models import DeferredTask, TaskRecord
from shared.revocations import queue_revoke
from shared.taskmeta import RESULT_KEY, TaskMeta
from shared.tokens import Principal

router = APIRouter(prefix=API_PREFIX, tags=["tasks"])

TaskId = Annotated[str, Path(pattern=r"^[A-Za-z0-9._:-]{1,64}$", description="The task's id.")]
IdempotencyKey = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        min_length=1,
        max_length=255,
        description="Repeat a submission safely: the same key and body return the first answer; another body is 409.",
    ),
]
State = Literal["SCHEDULED", "PENDING", "RECEIVED", "STARTED", "PROGRESS", "RETRY", "SUCCESS", "FAILURE", "REVOKED"]
SCAN_CHUNK = 500
SCAN_MAX = 5_000
SSE_MAX_SECONDS = 3600.0
FINISHED_RECORDS_MAX = 10_000


# -- submission --------------------------------------------------------------------------------


async def _submit_once(
    runtime: Runtime,
    store: TaskStore,
    principal: Principal,
    items: list[Prepared],
    idempotency_key: str | None,
    body: Any,
    make_answer: Any,
) -> Any:
    claim = None
    if idempotency_key is not None:
        claim = IdempotencyClaim(
            runtime.cache, principal.name, idempotency_key, body, runtime.settings.idempotency_ttl_seconds
        )
        replay = await claim.claim()
        if replay is not None:
            return JSONResponse(replay.body, status_code=replay.status, headers={"Idempotent-Replayed": "true"})
    try:
        accepted = await Submitter(runtime, store).submit(principal, items)
    except BaseException:
        if claim is not None:
            with contextlib.suppress(Exception):
                await claim.release()
        raise
    answer = make_answer(accepted)
    if claim is not None:
        await claim.complete(202, answer.model_dump(mode="json"))
    return answer


SUBMIT_ERRORS: dict[int | str, dict[str, Any]] = {
    404: {"description": "Unknown task_name."},
    409: {"description": "The Idempotency-Key was used with another body, or its first request is in progress."},
}


@router.post(
    "/tasks",
    status_code=202,
    response_model=TaskAccepted,
    summary="Submit a task",
    responses={202: {"description": "The task is in the broker."}, **SUBMIT_ERRORS},
)
async def submit_task(
    submission: TaskSubmission,
    principal: authz.Submitter,
    runtime: RuntimeDep,
    store: StoreDep,
    request: Request,
    idempotency_key: IdempotencyKey = None,
) -> Any:
    """Validate a submission against the catalog and put it on its queue. 202 means it is in the broker."""
    item = prepare(submission, max_delay=runtime.settings.broker_visibility_timeout)
    await authz.authorize_submissions(request, principal, [item])
    answer = await _submit_once(
        runtime,
        store,
        principal,
        [item],
        idempotency_key,
        submission.model_dump(mode="json"),
        lambda accepted: accepted[0],
    )
    await authz.audit_submissions(request, [item], answer)
    return answer


@router.post(
    "/tasks/batch",
    status_code=202,
    response_model=BatchAccepted,
    summary="Submit many tasks",
    responses={202: {"description": "Every task of the batch is in the broker."}, **SUBMIT_ERRORS},
)
async def submit_batch(
    batch: BatchSubmission,
    principal: authz.Submitter,
    runtime: RuntimeDep,
    store: StoreDep,
    request: Request,
    idempotency_key: IdempotencyKey = None,
) -> Any:
    """Submit many tasks in one request, published on one broker connection. All items are validated
    first; one invalid item refuses the whole batch (its index is in the error's ``loc``)."""
    max_delay = runtime.settings.broker_visibility_timeout
    items = [prepare(item, ("body", "tasks", i), max_delay) for i, item in enumerate(batch.tasks)]
    await authz.authorize_submissions(request, principal, items)
    answer = await _submit_once(
        runtime,
        store,
        principal,
        items,
        idempotency_key,
        batch.model_dump(mode="json"),
        lambda accepted: BatchAccepted(count=len(accepted), results=accepted),
    )
    await authz.audit_submissions(request, items, answer)
    if isinstance(answer, BatchAccepted):  # serialized once, without validating thousands of items again
        return Response(answer.model_dump_json(), status_code=202, media_type="application/json")
    return answer


# -- reading -----------------------------------------------------------------------------------


@dataclass
class Visible:
    """A task the caller may see: what the gateway recorded, its result and its history row."""

    task_id: str
    meta: TaskMeta | None
    result: dict[str, Any] | None
    record: dict[str, Any] | None
    deferred: DeferredTask | None = None  # a one-off run that waits (or waited) in the database

    @property
    def owner(self) -> str | None:
        if self.meta is not None:
            return self.meta.owner
        if self.deferred is not None:
            return self.deferred.owner
        return self.record.get("owner") if self.record else None

    @property
    def status(self) -> str:
        if self.result is not None:
            return str(self.result.get("status") or "PENDING")
        if self.record is not None:
            return str(self.record.get("state") or "PENDING")
        if self.deferred is not None and self.deferred.state in (deferred.SCHEDULED, deferred.REVOKED):
            return self.deferred.state
        return "PENDING"

    @property
    def task_name(self) -> str:
        if self.meta is not None:
            return self.meta.task_name
        if self.deferred is not None:
            return self.deferred.task_name
        name = (self.result or {}).get("name") or (self.record or {}).get("task_name") or ""
        spec = get_spec(str(name))
        return spec.name if spec else str(name)


def _history_record(runtime: Runtime, task_id: str) -> dict[str, Any] | None:
    """The task's history row; a finished task's row no longer changes, so it is remembered."""
    cache: OrderedDict[str, dict[str, Any]] = runtime.extras.setdefault("finished_records", OrderedDict())
    cached = cache.get(task_id)
    if cached is not None:
        return cached
    with runtime.sessions() as session:
        row = session.scalar(select(TaskRecord).where(TaskRecord.task_id == task_id))
        if row is None:
            return None
        record = {column.key: getattr(row, column.key) for column in TaskRecord.__table__.columns}
    if record.get("state") in READY_STATES:
        cache[task_id] = record
        if len(cache) > FINISHED_RECORDS_MAX:
            cache.popitem(last=False)
    return record


async def visible_task(task_id: TaskId, principal: authz.Reader, runtime: RuntimeDep, store: StoreDep) -> Visible:
    """The task, if it exists and the caller may see it (authz.sees_task); 404 otherwise."""
    meta, result = await asyncio.gather(store.load(task_id), store.result(task_id))
    record = None
    if (
        meta is None
        or (result or {}).get("status") in READY_STATES
        or (result or {}).get("status") == "STARTED"
        or (result is None and _result_may_have_expired(meta))
    ):
        record = await run_in_threadpool(_history_record, runtime, task_id)
    waiting = None
    if meta is None and record is None:
        waiting = await run_in_threadpool(_deferred_row, runtime, task_id)
    task = Visible(task_id, meta, result, record, waiting)
    if meta is None and record is None and waiting is None and (result is None or authz.task_scope(principal) != "all"):
        raise _not_found(task_id)
    queue = (meta.queue if meta else None) or (record or {}).get("queue") or (result or {}).get("queue")
    if not authz.sees_task(principal, task.owner, queue):
        raise _not_found(task_id)
    return task


def _result_may_have_expired(meta: TaskMeta) -> bool:
    """A task submitted more than ``result_expires`` ago may have finished and lost its result: then the
    history knows its state (before that, no result means it has not started)."""
    submitted = meta.submitted_at
    return submitted is None or (dt.datetime.now(dt.UTC) - submitted).total_seconds() >= RESULT_EXPIRES


def _deferred_row(runtime: Runtime, task_id: str) -> DeferredTask | None:
    with runtime.sessions() as session:
        return deferred.find(session, task_id)


def _not_found(task_id: str) -> ProblemError:
    return ProblemError(404, f"there is no task {task_id!r} (or it is not yours)", kind="unknown-task-id")


VisibleTask = Annotated[Visible, Depends(visible_task)]


def _error(result: dict[str, Any]) -> TaskErrorInfo | None:
    if result.get("status") not in ("FAILURE", "RETRY"):
        return None
    value = result.get("result")
    if isinstance(value, dict) and "exc_type" in value:
        message = value.get("exc_message", "")
        if isinstance(message, list | tuple):
            message = " ".join(str(part) for part in message)
        return TaskErrorInfo(type=str(value["exc_type"]), message=str(message))
    return TaskErrorInfo(type="Error", message=str(value))


def detail(task: Visible) -> TaskDetail:
    result = task.result or {}
    record = task.record or {}
    meta = task.meta
    status = task.status
    value = result.get("result")
    progress = None
    worker = result.get("worker") or record.get("worker")
    if status == "PROGRESS" and isinstance(value, dict) and {"current", "total"} <= value.keys():
        progress = Progress(current=int(value["current"]), total=int(value["total"]))
    if status == "STARTED" and isinstance(value, dict):
        worker = worker or value.get("hostname")
    finished_at = parse_time(result.get("date_done")) if status in READY_STATES else None
    finished_at = finished_at or record.get("finished_at")
    started_at = record.get("started_at")
    duration = record.get("runtime")
    if duration is None and started_at is not None and finished_at is not None:
        duration = max(0.0, (finished_at - started_at).total_seconds())
    if meta is not None:
        args, kwargs = meta.args, meta.kwargs
    elif task.deferred is not None:
        args, kwargs = list(task.deferred.args), dict(task.deferred.kwargs)
    else:
        args = list(result.get("args") or [])
        kwargs = dict(result.get("kwargs") or {})
    return TaskDetail(
        task_id=task.task_id,
        task_name=task.task_name,
        status=status,
        result=value if status == "SUCCESS" else None,
        error=_error(result)
        if result
        else (
            TaskErrorInfo(type=str(record.get("exception") or "Error"), message=str(record.get("error") or ""))
            if status == "FAILURE" and record
            else None
        ),
        traceback=_traceback(status, result, record),
        progress=progress,
        queue=(meta.queue if meta else None) or result.get("queue") or record.get("queue"),
        worker=worker,
        retries=int(result.get("retries") or record.get("retries") or 0),
        args=args,
        kwargs=kwargs,
        owner=task.owner,
        retry_of=meta.retry_of if meta else None,
        sent_at=(meta.submitted_at if meta else None) or record.get("sent_at"),
        started_at=started_at,
        finished_at=finished_at,
        duration=duration,
        eta=task.deferred.eta if task.deferred is not None else None,
    )


def _traceback(status: str, result: dict[str, Any], record: dict[str, Any]) -> str | None:
    """A failure's traceback: the result backend's while it keeps the result, else the history's."""
    if status != "FAILURE":
        return None
    return capped_traceback(result.get("traceback")) or record.get("traceback")


@router.get("/tasks", response_model=TaskList, summary="List recent tasks")
async def list_tasks(
    principal: authz.Reader,
    store: StoreDep,
    runtime: RuntimeDep,
    status: Annotated[State | None, Query(description="Only tasks in this state.")] = None,
    task_name: Annotated[str | None, Query(max_length=200, description="Only this task.")] = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    offset: Annotated[int, Query(ge=0, le=100_000)] = 0,
) -> Response:
    """Active and recent tasks (newest first) the token may see (its own, the finance queue's, or every
    task, by role). Older tasks are in ``GET /api/v1/tasks/history``. With a filter, the newest 5,000 tasks
    are searched. ``status=SCHEDULED`` lists the one-off runs waiting in the database for their eta
    (soonest first)."""
    scope = authz.task_scope(principal)
    owner = principal.name if scope == "own" else None
    spec = get_spec(task_name) if task_name else None
    task_name = spec.name if spec is not None else task_name  # the short or the Celery name
    if status == deferred.SCHEDULED:
        waiting_owner = None if scope == "all" else principal.name
        return _json(await run_in_threadpool(_waiting, runtime, waiting_owner, task_name, limit, offset))
    if status is None and task_name is None and scope != "finance":
        total = await store.recent_count(owner)
        ids = await store.recent_ids(owner, offset, offset + limit - 1)
        metas, results = await asyncio.gather(store.load_many(ids), store.results_many(ids))
        rows = [_summary(task_id, meta, result) for task_id, meta, result in zip(ids, metas, results, strict=True)]
        return _json(TaskList(count=total, results=rows))
    matches: list[TaskSummary] = []
    for start in range(0, SCAN_MAX, SCAN_CHUNK):
        ids = await store.recent_ids(owner, start, start + SCAN_CHUNK - 1)
        if not ids:
            break
        metas, results = await asyncio.gather(store.load_many(ids), store.results_many(ids))
        for task_id, meta, result in zip(ids, metas, results, strict=True):
            row = _summary(task_id, meta, result)
            if (status is None or row.status == status) and (task_name is None or row.task_name == task_name):
                if scope == "finance" and not authz.sees_task(principal, row.owner, row.queue):
                    continue
                matches.append(row)
    return _json(TaskList(count=len(matches), results=matches[offset : offset + limit]))


def _waiting(runtime: Runtime, owner: str | None, task_name: str | None, limit: int, offset: int) -> TaskList:
    with runtime.sessions() as session:
        total, rows = deferred.waiting(session, owner, limit, offset, task_name)
    results = [
        TaskSummary(
            task_id=row.task_id,
            task_name=row.task_name,
            status=deferred.SCHEDULED,
            queue=row.queue,
            owner=row.owner,
            sent_at=None,
            eta=row.eta,
        )
        for row in rows
    ]
    return TaskList(count=total, results=results)


def _summary(task_id: str, meta: TaskMeta | None, result: dict[str, Any] | None) -> TaskSummary:
    status = str((result or {}).get("status") or "PENDING")
    return TaskSummary(
        task_id=task_id,
        task_name=meta.task_name if meta else str((result or {}).get("name") or ""),
        status=status,
        queue=meta.queue if meta else None,
        owner=meta.owner if meta else None,
        sent_at=meta.submitted_at if meta else None,
        finished_at=parse_time((result or {}).get("date_done")) if status in READY_STATES else None,
    )


@router.get("/tasks/{task_id}", response_model=TaskDetail, summary="Read a task")
async def get_task(task: VisibleTask) -> Response:
    """Status, result or error, progress while running, queue, worker, retries, times and duration."""
    return _json(detail(task))


def _json(model: TaskDetail | TaskList) -> Response:
    """Serialized once (the hot read paths skip FastAPI's second validation of the response model)."""
    return Response(model.model_dump_json(), media_type="application/json")


def _event(task: Visible, seq: int) -> ServerSentEvent:
    info = detail(task)
    kind = "progress" if info.status == "PROGRESS" else "status"
    data = {
        "task_id": info.task_id,
        "status": info.status,
        "progress": info.progress.model_dump() if info.progress else None,
        "result": info.result,
        "error": info.error.model_dump() if info.error else None,
    }
    return ServerSentEvent(event=kind, data=data, id=str(seq))


@router.get(
    "/tasks/{task_id}/events",
    response_class=EventSourceResponse,
    summary="Follow a task (SSE)",
    responses={
        200: {
            "description": "Server-Sent Events: `status` on every state change, `progress` on "
            "every progress change, and `end` when the task has finished.",
            "content": {"text/event-stream": {"schema": {"type": "string"}}},
        }
    },
)
async def task_events(task: VisibleTask, runtime: RuntimeDep, store: StoreDep) -> AsyncIterator[ServerSentEvent]:
    """Every state and progress change of the task, until it ends (then an ``end`` event)."""
    pubsub = runtime.results.pubsub()
    channel = RESULT_KEY + task.task_id
    await pubsub.subscribe(channel)
    try:
        seq = 0
        last: Any = None
        deadline = time.monotonic() + SSE_MAX_SECONDS
        latest = await store.result(task.task_id)  # read after subscribing: no change falls in between
        current = Visible(task.task_id, task.meta, latest, task.record) if latest is not None else task
        while True:
            event = _event(current, seq)
            if event.data != last:
                seq += 1
                last = event.data
                event.id = str(seq)
                yield event
            if current.status in READY_STATES:
                yield ServerSentEvent(event="end", data=last, id=str(seq + 1))
                return
            if time.monotonic() > deadline:
                return
            # Each state the worker stores is also published on the key's channel: use the published
            # value itself (so that no progress step is skipped), and read the key once a second anyway.
            message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
            if message is not None and message.get("type") == "message":
                result = decode_result(message.get("data"))
            else:
                result = await store.result(task.task_id)
            if result is not None:
                current = Visible(task.task_id, task.meta, result, task.record)
    finally:
        with contextlib.suppress(Exception):
            await pubsub.unsubscribe(channel)
            await pubsub.aclose()  # type: ignore[attr-defined]


# -- acting on a task --------------------------------------------------------------------------


@router.post(
    "/tasks/{task_id}/revoke",
    status_code=202,
    response_model=RevokeAccepted,
    summary="Revoke a task",
    openapi_extra=admin_only(),
)
async def revoke_task(
    principal: Annotated[Principal, authz.requires(permissions.TASKS_REVOKE)],
    task: VisibleTask,
    runtime: RuntimeDep,
    http: Request,
    request: Annotated[RevokeRequest | None, Body()] = None,
) -> RevokeAccepted:
    """Operator or admin: workers discard the task if it has not started, including workers that start later
    (the id is kept for MALLOPS_TASK_META_TTL_SECONDS); with ``terminate`` a running one is killed.
    Maintenance tasks need the maintenance permission too."""
    await authz.authorize_task_action(http, principal, audit.TASK_REVOKE, get_spec(task.task_name), task.task_id)
    terminate = bool(request and request.terminate)
    if task.deferred is not None and await run_in_threadpool(_revoke_waiting, runtime, task.task_id):
        return RevokeAccepted(task_id=task.task_id, terminate=terminate)  # never published: nothing to tell
    async with runtime.cache.pipeline(transaction=True) as pipe:
        queue_revoke(pipe, task.task_id, runtime.settings.task_meta_ttl_seconds)
        await pipe.execute()

    def broadcast() -> None:
        runtime.celery.control.revoke(task.task_id, terminate=terminate, signal="SIGTERM")

    try:
        await run_in_threadpool(broadcast)
    except (KombuError, OSError, TimeoutError) as exc:
        raise ProblemError(
            503,
            f"the task queue cannot be reached ({type(exc).__name__}); nothing was revoked",
            kind="broker-unavailable",
            headers={"Retry-After": BROKER_RETRY_AFTER},
        ) from exc
    await gateway_audit.record(http, audit.TASK_REVOKE, target=task.task_id, details={"terminate": terminate})
    return RevokeAccepted(task_id=task.task_id, terminate=terminate)


def _revoke_waiting(runtime: Runtime, task_id: str) -> bool:
    with runtime.sessions() as session, session.begin():
        return deferred.revoke(session, task_id)


@router.post(
    "/tasks/{task_id}/retry",
    status_code=202,
    response_model=TaskAccepted,
    summary="Retry a task",
    responses={409: {"description": "The task has not failed (or its arguments are no longer known)."}},
)
async def retry_task(
    principal: Annotated[Principal, authz.requires(permissions.TASKS_RETRY)],
    task: VisibleTask,
    runtime: RuntimeDep,
    store: StoreDep,
    request: Request,
) -> TaskAccepted:
    """Submit a failed (or revoked) task again with its original arguments, as a new task."""
    await authz.authorize_task_action(request, principal, audit.TASK_RETRY, get_spec(task.task_name), task.task_id)
    if task.status not in ("FAILURE", "REVOKED"):
        raise ProblemError(
            409, f"only a failed or revoked task can be retried; {task.task_id} is {task.status}", kind="not-retryable"
        )
    spec = get_spec(task.task_name)
    if spec is None:
        raise ProblemError(409, f"task {task.task_name!r} is no longer in the catalog", kind="not-retryable")
    if task.meta is not None:
        args, kwargs = task.meta.args, task.meta.kwargs
    elif task.deferred is not None:
        args, kwargs = list(task.deferred.args), dict(task.deferred.kwargs)
    elif task.result is not None and isinstance(task.result.get("kwargs"), dict):
        args, kwargs = list(task.result.get("args") or []), dict(task.result["kwargs"])
    else:
        raise ProblemError(409, "the original arguments of this task are no longer known", kind="not-retryable")
    item = prepare(TaskSubmission(task_name=spec.name, args=args, kwargs=kwargs))
    await authz.authorize_retry_arguments(request, principal, item, task.task_id)
    owner = task.owner or principal.name
    accepted = await Submitter(runtime, store).submit(principal, [item], owner=owner, retry_of=task.task_id)
    await gateway_audit.record(request, audit.TASK_RETRY, target=task.task_id, details={"new_task_id": item.task_id})
    return accepted[0]
