"""``/api/v1/schedules``: beat entries for any catalog task (read: any token; change: admin).

The work is in :mod:`shared.schedules` (entries in Redis, read by the running beat on every tick); these
routes only translate HTTP: arguments are validated as a submission's are (:func:`prepare`), errors are
problem+json.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated

from fastapi import APIRouter, Path, Request, Response
from starlette.concurrency import run_in_threadpool

from services.gateway import audit as gateway_audit
from services.gateway import authz
from services.gateway.deps import RuntimeDep, StoreDep
from services.gateway.openapi import admin_only
from services.gateway.problems import ProblemError
from services.gateway.routes import API_PREFIX
from services.gateway.schemas import (
    ScheduleCreate,
    ScheduleInfo,
    ScheduleList,
    SchedulePatch,
    ScheduleTiming,
    TaskAccepted,
    TaskSubmission,
)
from services.gateway.submission import Submitter, prepare
from shared import audit, permissions, schedules
from shared.catalog import Schedule
from shared.tokens import Principal

router = APIRouter(prefix=API_PREFIX, tags=["schedules"])

SchedulesReader = Annotated[Principal, authz.requires(permissions.SCHEDULES_READ)]
SchedulesWriter = Annotated[Principal, authz.requires(permissions.SCHEDULES_WRITE)]
EntryName = Annotated[str, Path(pattern=schedules.NAME_PATTERN, description="The entry's name.")]


def _unknown(name: str) -> ProblemError:
    return ProblemError(
        404, f"there is no beat entry named {name!r}; GET /api/v1/schedules lists them", kind="unknown-schedule"
    )


def _timing(timing: ScheduleTiming | None) -> Schedule | None:
    if timing is None:
        return None
    try:
        return schedules.schedule_from_dict(timing.model_dump(exclude_none=True))
    except ValueError as exc:
        raise _invalid("schedule", exc) from exc


def _invalid(field: str, exc: Exception) -> ProblemError:
    return ProblemError(
        422,
        f"invalid {field}: {exc}",
        kind=f"invalid-{field}",
        errors=[{"loc": ["body", field], "msg": str(exc), "type": "value_error"}],
    )


def _answer(entry: schedules.ScheduleEntry) -> ScheduleInfo:
    return ScheduleInfo.model_validate(entry.as_dict())


async def _in_thread(name: str, call: Callable[[], schedules.ScheduleEntry]) -> ScheduleInfo:
    try:
        return _answer(await run_in_threadpool(call))
    except KeyError as exc:
        raise _unknown(name) from exc
    except schedules.EntryExists as exc:
        raise ProblemError(
            409, f"a beat entry named {name!r} exists already; PATCH it or pick another name", kind="schedule-exists"
        ) from exc
    except ValueError as exc:  # a description that is too long (the rest was validated before)
        raise _invalid("description", exc) from exc


@router.get("/schedules", response_model=ScheduleList, summary="Beat schedule")
async def list_schedules(principal: SchedulesReader, runtime: RuntimeDep) -> ScheduleList:
    """Every beat entry: task, timing (crontabs in MALLOPS_TIMEZONE), arguments, enabled, last run and
    next run (UTC with `Z`, and `next_run_local` in the mall's zone); `last_run_at` is null until it ran."""
    entries = await run_in_threadpool(schedules.list_entries, runtime.celery)
    items = [_answer(entry) for entry in entries]
    return ScheduleList(count=len(items), results=items)


@router.get("/schedules/{name}", response_model=ScheduleInfo, summary="One beat entry")
async def get_schedule(name: EntryName, principal: SchedulesReader, runtime: RuntimeDep) -> ScheduleInfo:
    return await _in_thread(name, lambda: schedules.get_entry(runtime.celery, name))


@router.post(
    "/schedules",
    status_code=201,
    response_model=ScheduleInfo,
    summary="Add a beat entry",
    openapi_extra=admin_only(),
    responses={404: {"description": "Unknown task_name."}, 409: {"description": "The name is taken."}},
)
async def create_schedule(
    body: ScheduleCreate, principal: SchedulesWriter, runtime: RuntimeDep, request: Request, response: Response
) -> ScheduleInfo:
    """Run a catalog task on a schedule with the given arguments (validated against its schema). The
    running beat fires it from its next scheduled time on. Re-creating a deleted default restores it."""
    prepare(TaskSubmission(task_name=body.task_name, args=body.args, kwargs=body.kwargs))
    timing = _timing(body.schedule)
    assert timing is not None
    response.headers["Location"] = f"{API_PREFIX}/schedules/{body.name}"
    created = await _in_thread(
        body.name,
        lambda: schedules.create_entry(
            runtime.celery,
            body.name,
            body.task_name,
            timing,
            args=body.args,
            kwargs=body.kwargs,
            enabled=body.enabled,
            description=body.description,
        ),
    )
    await gateway_audit.record(request, audit.SCHEDULE_CREATE, target=body.name, details=body.model_dump(mode="json"))
    return created


@router.patch(
    "/schedules/{name}",
    response_model=ScheduleInfo,
    summary="Change a beat entry",
    openapi_extra=admin_only(),
)
async def update_schedule(
    name: EntryName, patch: SchedulePatch, principal: SchedulesWriter, runtime: RuntimeDep, request: Request
) -> ScheduleInfo:
    """Enable, disable, re-time, change the arguments (each of `args`, `kwargs` replaces the entry's) or
    the description of an entry; the running beat picks it up on its next tick."""
    given = patch.model_dump(exclude_unset=True, exclude_none=True)
    if not given:
        raise ProblemError(
            422,
            "give at least one of `enabled`, `schedule`, `args`, `kwargs`, `description`",
            kind="validation-error",
            errors=[{"loc": ["body"], "msg": "nothing to change", "type": "value_error"}],
        )
    timing = _timing(patch.schedule)
    if patch.args is not None or patch.kwargs is not None:
        current = await _in_thread(name, lambda: schedules.get_entry(runtime.celery, name))
        args = patch.args if patch.args is not None else current.args
        kwargs = patch.kwargs if patch.kwargs is not None else current.kwargs
        prepare(TaskSubmission(task_name=current.task_name, args=args, kwargs=kwargs))
    updated = await _in_thread(
        name,
        lambda: schedules.update_entry(
            runtime.celery,
            name,
            enabled=patch.enabled,
            schedule=timing,
            args=patch.args,
            kwargs=patch.kwargs,
            description=patch.description,
        ),
    )
    await gateway_audit.record(
        request, audit.SCHEDULE_UPDATE, target=name, details=patch.model_dump(mode="json", exclude_none=True)
    )
    return updated


@router.delete(
    "/schedules/{name}",
    status_code=204,
    response_class=Response,
    summary="Delete a beat entry",
    openapi_extra=admin_only(),
)
async def delete_schedule(
    name: EntryName, principal: SchedulesWriter, runtime: RuntimeDep, request: Request
) -> Response:
    """Beat stops firing it within MALLOPS_BEAT_MAX_INTERVAL. A deleted default entry stays deleted across
    beat restarts until an entry of its name is created again."""
    try:
        await run_in_threadpool(schedules.delete_entry, runtime.celery, name)
    except KeyError as exc:
        raise _unknown(name) from exc
    await gateway_audit.record(request, audit.SCHEDULE_DELETE, target=name)
    return Response(status_code=204)


@router.post(
    "/schedules/{name}/run",
    status_code=202,
    response_model=TaskAccepted,
    summary="Run a beat entry now",
    openapi_extra=admin_only(),
)
async def run_schedule(
    name: EntryName, principal: SchedulesWriter, runtime: RuntimeDep, store: StoreDep, request: Request
) -> TaskAccepted:
    """Submit the entry's task with its arguments now, as a task of the caller (the schedule is unchanged)."""
    entry = await _in_thread(name, lambda: schedules.get_entry(runtime.celery, name))
    item = prepare(TaskSubmission(task_name=entry.task_name, args=entry.args, kwargs=entry.kwargs))
    accepted = await Submitter(runtime, store).submit(principal, [item])
    await gateway_audit.record(request, audit.SCHEDULE_RUN, target=name, details={"task_id": accepted[0].task_id})
    return accepted[0]
