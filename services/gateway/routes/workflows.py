"""``/api/v1/workflows``: submit a named or an ad-hoc workflow, list and read them, revoke and retry."""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any

from fastapi import APIRouter, Header, Path, Query, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from services.gateway import audit as gateway_audit
from services.gateway import authz, workflow_runs
from services.gateway.deps import RuntimeDep, StoreDep
from services.gateway.idempotency import IdempotencyClaim, Replay, submit_once
from services.gateway.problems import ProblemError
from services.gateway.routes import API_PREFIX
from services.gateway.schemas import WorkflowDetail, WorkflowList, WorkflowSubmission
from services.gateway.task_filters import FilterError, parse_states
from shared import audit, permissions
from shared.tokens import Principal
from shared.workflows import now_local

router = APIRouter(prefix=API_PREFIX, tags=["workflows"])

WorkflowId = Annotated[str, Path(pattern=r"^[A-Za-z0-9._:-]{1,64}$", description="The workflow's id.")]
Runner = Annotated[Principal, authz.requires(permissions.WORKFLOWS_RUN)]
Reader = Annotated[Principal, authz.requires(permissions.WORKFLOWS_READ)]
IdempotencyKey = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        min_length=1,
        max_length=255,
        description="Repeat a submission safely: the same key and body return the first answer; another body is 409.",
    ),
]


@router.post(
    "/workflows",
    status_code=202,
    response_model=WorkflowDetail,
    summary="Run a workflow",
    responses={
        202: {"description": "The workflow is stored and its first steps are in the broker."},
        404: {"description": "Unknown workflow name or task."},
        409: {"description": "The Idempotency-Key was used with another body."},
    },
)
async def submit_workflow(
    body: WorkflowSubmission,
    principal: Runner,
    runtime: RuntimeDep,
    store: StoreDep,
    request: Request,
    idempotency_key: IdempotencyKey = None,
) -> Any:
    """A named workflow (``name``, ``kwargs``) or an ad-hoc one (``steps``). Every step is validated before
    anything is published; the workflow counts once against the owner's quota however many steps it has."""
    name, kwargs, steps = workflow_runs.plan(body, now_local(runtime.settings.timezone))
    steps = await workflow_runs.authorize(request, principal, name, steps)

    async def submit() -> WorkflowDetail:
        return await workflow_runs.WorkflowRunner(runtime, store).submit(principal, name, kwargs, steps)

    claim = None
    if idempotency_key is not None:
        ttl = runtime.settings.idempotency_ttl_seconds
        claim = IdempotencyClaim(runtime.cache, principal.name, idempotency_key, body.model_dump(mode="json"), ttl)
    outcome = await submit_once(claim, submit)
    if isinstance(outcome, Replay):
        return JSONResponse(outcome.body, status_code=outcome.status, headers={"Idempotent-Replayed": "true"})
    details = {"name": name, "steps": [step.name for step in steps]}
    await gateway_audit.record(request, audit.WORKFLOW_SUBMIT, target=outcome.workflow_id, details=details)
    return outcome


@router.get("/workflows", response_model=WorkflowList, summary="List workflows")
async def list_workflows(
    principal: Reader,
    runtime: RuntimeDep,
    status: Annotated[str | None, Query(description="States, comma-separated: FAILURE,REVOKED.")] = None,
    name: Annotated[str | None, Query(description="A named workflow.")] = None,
    owner: Annotated[str | None, Query(description="Only this owner's (roles that read every task).")] = None,
    since: Annotated[dt.datetime | None, Query(description="Submitted at or after (ISO 8601 with timezone).")] = None,
    until: Annotated[dt.datetime | None, Query(description="Submitted before (ISO 8601 with timezone).")] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Annotated[int, Query(ge=0)] = 0,
) -> WorkflowList:
    """The newest first; a token sees its own workflows, or every one with ``tasks.read.all``. ``count`` is
    the workflows on this page, ``total`` those that match on every page (page on with ``offset``)."""
    try:
        statuses = list(parse_states(status))
    except FilterError as exc:
        raise ProblemError(422, str(exc), kind="validation-error") from exc
    for value, label in ((since, "since"), (until, "until")):
        if value is not None and value.tzinfo is None:
            raise ProblemError(422, f"{label} needs a timezone, e.g. 2026-11-22T00:00:00Z", kind="validation-error")
    total, results = await run_in_threadpool(
        workflow_runs.listing,
        runtime,
        principal,
        statuses=statuses,
        name=name,
        owner=owner,
        since=since,
        until=until,
        limit=limit,
        offset=offset,
    )
    return WorkflowList(count=len(results), total=total, results=results)


async def _visible(workflow_id: str, principal: Principal, runtime: RuntimeDep) -> WorkflowDetail:
    runner = workflow_runs.WorkflowRunner(runtime, None)  # type: ignore[arg-type]  # reading needs no store
    found = await run_in_threadpool(runner.detail, workflow_id)
    if not workflow_runs.sees(principal, found.owner):
        raise workflow_runs.not_found(workflow_id)
    return found


@router.get("/workflows/{workflow_id}", response_model=WorkflowDetail, summary="A workflow and its steps")
async def get_workflow(workflow_id: WorkflowId, principal: Reader, runtime: RuntimeDep) -> WorkflowDetail:
    """Every step with its state and task, the workflow's ``status``, ``progress``, and where and why it failed."""
    return await _visible(workflow_id, principal, runtime)


@router.post(
    "/workflows/{workflow_id}/revoke", status_code=202, response_model=WorkflowDetail, summary="Revoke a workflow"
)
async def revoke_workflow(
    workflow_id: WorkflowId, principal: Runner, runtime: RuntimeDep, store: StoreDep, request: Request
) -> WorkflowDetail:
    """Steps not yet run never run; steps already sent are revoked (a running one finishes)."""
    await _visible(workflow_id, principal, runtime)
    answer = await workflow_runs.WorkflowRunner(runtime, store).revoke(workflow_id, principal)
    await gateway_audit.record(request, audit.WORKFLOW_REVOKE, target=workflow_id)
    return answer


@router.post(
    "/workflows/{workflow_id}/retry",
    status_code=202,
    response_model=WorkflowDetail,
    summary="Retry a workflow from its failed step",
    responses={409: {"description": "The workflow did not fail and was not revoked."}},
)
async def retry_workflow(
    workflow_id: WorkflowId, principal: Runner, runtime: RuntimeDep, store: StoreDep, request: Request
) -> WorkflowDetail:
    """Run the failed (and revoked) steps again and what follows them; succeeded steps are kept, not re-run."""
    found = await _visible(workflow_id, principal, runtime)
    needed = workflow_runs.permission_of(found.name)
    if needed and not principal.has(needed):
        raise await authz.deny(request, needed, f"workflow {found.name} needs the permission {needed!r}")
    answer = await workflow_runs.WorkflowRunner(runtime, store).retry(principal, found)
    await gateway_audit.record(request, audit.WORKFLOW_RETRY, target=workflow_id)
    return answer
