"""``/api/v1/tasks``: submit (one or a batch), list, read, follow over SSE, revoke and retry."""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, Header, Path, Query, Request
from fastapi.responses import JSONResponse, Response
from fastapi.sse import EventSourceResponse, ServerSentEvent
from kombu.exceptions import KombuError
from starlette.concurrency import run_in_threadpool

from services.gateway import audit as gateway_audit
from services.gateway import authz
from services.gateway.deps import PendingRateLimit, RuntimeDep, StoreDep, get_store, settle_rate_limit
from services.gateway.idempotency import Answer, IdempotencyClaim, Replay, submit_once
from services.gateway.openapi import admin_only
from services.gateway.problems import ProblemError
from services.gateway.routes import API_PREFIX
from services.gateway.runtime import Runtime
from services.gateway.schemas import (
    BatchAccepted,
    BatchSubmission,
    RevokeAccepted,
    RevokeRequest,
    TaskAccepted,
    TaskDetail,
    TaskList,
    TaskSubmission,
    TaskSummary,
)
from services.gateway.submission import BROKER_RETRY_AFTER, Submitter, prepare
from services.gateway.task_view import TaskView, arguments, detail, load_view, summaries
from services.gateway.taskstore import decode_result
from shared import audit, deferred, permissions
from shared.catalog import get_spec
from shared.celery_extensions.revocations import queue_revoke
from shared.contracts import FINAL_STATES, RESULT_KEY_PREFIX, TaskState
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
SCAN_CHUNK = 500
SCAN_MAX = 5_000
SSE_MAX_SECONDS = 3600.0


# -- submission --------------------------------------------------------------------------------


async def _submit(
    runtime: Runtime,
    principal: Principal,
    idempotency_key: str | None,
    body: dict[str, Any],
    submit: Callable[[], Awaitable[Answer]],
) -> Answer | Response:
    """``submit``, once per Idempotency-Key; a repeat gets the first answer again."""
    claim = None
    if idempotency_key is not None:
        ttl = runtime.settings.idempotency_ttl_seconds
        claim = IdempotencyClaim(runtime.cache, principal.name, idempotency_key, body, ttl)
    outcome = await submit_once(claim, submit)
    if isinstance(outcome, Replay):
        return JSONResponse(outcome.body, status_code=outcome.status, headers={"Idempotent-Replayed": "true"})
    return outcome


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
    principal: authz.SingleSubmitter,
    request: Request,
    idempotency_key: IdempotencyKey = None,
) -> Any:
    """Validate a submission against the catalog and put it on its queue. 202 means it is in the broker.

    The token's rate-limit hit is made by the submission's own script (one round trip for both); any other
    answer makes it first (``deps.PendingRateLimit``), so a request over the limit is 429 whatever else."""
    # not RuntimeDep and StoreDep: FastAPI solves each dependency on every request (authz.RequiresSubmitting)
    runtime: Runtime = request.app.state.runtime
    store = await get_store(runtime)
    # None when the console calls this with its own signed-in principal (its authentication applied the limit)
    rate_limit: PendingRateLimit | None = getattr(request.state, "rate_limit_pending", None)
    try:
        item = prepare(submission, max_delay=runtime.settings.broker_visibility_timeout)
        await authz.authorize_submissions(request, principal, [item])
    except BaseException:
        await settle_rate_limit(request)  # 429 (or 401 for a token revoked meanwhile) before the refusal
        raise
    if idempotency_key is not None and rate_limit is not None:
        principal = await rate_limit.settle()

    async def submit() -> TaskAccepted:
        return (await Submitter(runtime, store).submit(principal, [item], rate_limit=rate_limit))[0]

    answer = await _submit(runtime, principal, idempotency_key, submission.model_dump(mode="json"), submit)
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

    async def submit() -> BatchAccepted:
        accepted = await Submitter(runtime, store).submit(principal, items)
        return BatchAccepted(count=len(accepted), results=accepted)

    answer = await _submit(runtime, principal, idempotency_key, batch.model_dump(mode="json"), submit)
    await authz.audit_submissions(request, items, answer)
    if isinstance(answer, BatchAccepted):  # serialized once, without validating thousands of items again
        return Response(answer.model_dump_json(), status_code=202, media_type="application/json")
    return answer


# -- reading -----------------------------------------------------------------------------------


async def visible_task(task_id: TaskId, principal: authz.Reader, runtime: RuntimeDep, store: StoreDep) -> TaskView:
    """The task, if it exists and the caller may see it (authz.sees_task); 404 otherwise."""
    task = await load_view(runtime, store, task_id)
    if not task.exists or (task.known_only_by_result and authz.task_scope(principal) != "all"):
        raise _not_found(task_id)
    if not authz.sees_task(principal, task.owner, task.queue):
        raise _not_found(task_id)
    return task


def _not_found(task_id: str) -> ProblemError:
    return ProblemError(404, f"there is no task {task_id!r} (or it is not yours)", kind="unknown-task-id")


VisibleTask = Annotated[TaskView, Depends(visible_task)]


@router.get("/tasks", response_model=TaskList, summary="List recent tasks")
async def list_tasks(
    principal: authz.Reader,
    runtime: RuntimeDep,
    store: StoreDep,
    status: Annotated[TaskState | None, Query(description="Only tasks in this state.")] = None,
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
    if status == TaskState.SCHEDULED:
        waiting_owner = None if scope == "all" else principal.name
        return _json(await run_in_threadpool(_waiting, runtime, waiting_owner, task_name, limit, offset))
    if status is None and task_name is None and scope != "finance":
        total = await store.recent_count(owner)
        ids = await store.recent_ids(owner, offset, offset + limit - 1)
        return _json(TaskList(count=total, results=await summaries(runtime, store, ids)))
    matches: list[TaskSummary] = []
    for start in range(0, SCAN_MAX, SCAN_CHUNK):
        ids = await store.recent_ids(owner, start, start + SCAN_CHUNK - 1)
        if not ids:
            break
        for row in await summaries(runtime, store, ids):
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
            status=TaskState.SCHEDULED,
            queue=row.queue,
            owner=row.owner,
            sent_at=None,
            eta=row.eta,
        )
        for row in rows
    ]
    return TaskList(count=total, results=results)


@router.get("/tasks/{task_id}", response_model=TaskDetail, summary="Read a task")
async def get_task(task: VisibleTask) -> Response:
    """Status, result or error, progress while running, queue, worker, retries, times and duration."""
    return _json(detail(task))


def _json(model: TaskDetail | TaskList) -> Response:
    """Serialized once (the hot read paths skip FastAPI's second validation of the response model)."""
    return Response(model.model_dump_json(), media_type="application/json")


def _event(task: TaskView, seq: int) -> ServerSentEvent:
    info = detail(task)
    kind = "progress" if info.status == TaskState.PROGRESS else "status"
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
    channel = RESULT_KEY_PREFIX + task.task_id
    await pubsub.subscribe(channel)
    try:
        seq = 0
        last: Any = None
        deadline = time.monotonic() + SSE_MAX_SECONDS
        latest = await store.result(task.task_id)  # read after subscribing: no change falls in between
        current = task.with_result(latest)
        while True:
            event = _event(current, seq)
            if event.data != last:
                seq += 1
                last = event.data
                event.id = str(seq)
                yield event
            if current.status in FINAL_STATES:
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
            current = current.with_result(result)
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
    if task.status not in (TaskState.FAILURE, TaskState.REVOKED):
        raise ProblemError(
            409, f"only a failed or revoked task can be retried; {task.task_id} is {task.status}", kind="not-retryable"
        )
    spec = get_spec(task.task_name)
    if spec is None:
        raise ProblemError(409, f"task {task.task_name!r} is no longer in the catalog", kind="not-retryable")
    known = arguments(task)
    if known is None:
        raise ProblemError(409, "the original arguments of this task are no longer known", kind="not-retryable")
    args, kwargs = known
    item = prepare(TaskSubmission(task_name=spec.name, args=args, kwargs=kwargs))
    await authz.authorize_retry_arguments(request, principal, item, task.task_id)
    owner = task.owner or principal.name
    accepted = await Submitter(runtime, store).submit(principal, [item], owner=owner, retry_of=task.task_id)
    await gateway_audit.record(request, audit.TASK_RETRY, target=task.task_id, details={"new_task_id": item.task_id})
    return accepted[0]
