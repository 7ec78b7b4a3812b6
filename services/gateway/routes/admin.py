"""Admin views: ``/api/v1/workers``, ``/api/v1/queues`` and the beat ``/api/v1/schedules``."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path
from starlette.concurrency import run_in_threadpool

from services.gateway.deps import AdminPrincipal, RuntimeDep
from services.gateway.openapi import admin_only
from services.gateway.problems import ProblemError
from services.gateway.routes import API_PREFIX
from services.gateway.schemas import (
    QueueInfo,
    QueueList,
    ScheduleInfo,
    ScheduleList,
    SchedulePatch,
    WorkerInfo,
    WorkerList,
)
from shared import schedules
from shared.workers import list_workers, queue_lengths

router = APIRouter(prefix=API_PREFIX, tags=["admin"])


@router.get("/workers", response_model=WorkerList, summary="Workers online and offline", openapi_extra=admin_only())
async def workers(principal: AdminPrincipal, runtime: RuntimeDep) -> WorkerList:
    """Every worker seen recently (from their heartbeats): status, queues, active and processed tasks."""
    rows = await run_in_threadpool(list_workers, runtime.settings)
    items = [WorkerInfo.model_validate(row) for row in rows]
    return WorkerList(count=len(items), online=sum(1 for w in items if w.status == "online"), results=items)


@router.get("/queues", response_model=QueueList, summary="Queue lengths and consumers", openapi_extra=admin_only())
async def queues(principal: AdminPrincipal, runtime: RuntimeDep) -> QueueList:
    """Each queue's pending messages in the broker (priority sub-queues included) and its online consumers."""
    lengths = await run_in_threadpool(queue_lengths, runtime.settings)
    items = [
        QueueInfo(name=name, pending=value["pending"], consumers=value["consumers"]) for name, value in lengths.items()
    ]
    return QueueList(count=len(items), results=items)


ScheduleName = Annotated[
    str,
    Path(
        pattern=r"^[a-z0-9_]{1,100}$",
        description="A catalog task's short name (one with a default schedule; another name is answered 404).",
        json_schema_extra={"enum": sorted(schedules.scheduled_specs())},
    ),
]


@router.get("/schedules", response_model=ScheduleList, summary="Beat schedule", openapi_extra=admin_only())
async def list_schedules(principal: AdminPrincipal, runtime: RuntimeDep) -> ScheduleList:
    """Every beat entry: task, timing, enabled, last and next run."""
    entries = await run_in_threadpool(schedules.list_entries, runtime.celery)
    items = [ScheduleInfo.model_validate(entry.as_dict()) for entry in entries]
    return ScheduleList(count=len(items), results=items)


@router.patch(
    "/schedules/{name}",
    response_model=ScheduleInfo,
    summary="Enable, disable or re-time an entry",
    openapi_extra=admin_only(),
)
async def update_schedule(
    name: ScheduleName, patch: SchedulePatch, principal: AdminPrincipal, runtime: RuntimeDep
) -> ScheduleInfo:
    """Change a beat entry at runtime; the running beat picks it up on its next tick."""
    if patch.enabled is None and patch.schedule is None:
        raise ProblemError(
            422,
            "give `enabled`, `schedule` or both",
            kind="validation-error",
            errors=[{"loc": ["body"], "msg": "nothing to change", "type": "value_error"}],
        )
    try:
        timing = None
        if patch.schedule is not None:
            timing = schedules.validate_schedule(
                schedules.schedule_from_dict(patch.schedule.model_dump(exclude_none=True))
            )
        entry = await run_in_threadpool(
            lambda: schedules.update_entry(runtime.celery, name, enabled=patch.enabled, schedule=timing)
        )
    except KeyError as exc:
        raise ProblemError(
            404, f"there is no beat entry named {name!r}; GET /api/v1/schedules lists them", kind="unknown-schedule"
        ) from exc
    except ValueError as exc:
        raise ProblemError(
            422,
            f"invalid schedule: {exc}",
            kind="invalid-schedule",
            errors=[{"loc": ["body", "schedule"], "msg": str(exc), "type": "value_error"}],
        ) from exc
    return ScheduleInfo.model_validate(entry.as_dict())
