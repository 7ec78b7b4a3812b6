"""Workflows: catalog tasks run in order and in parallel, as one submission (plain functions over a session).

mallops orchestrates workflows itself instead of with Celery's canvas (chain, group, chord). A workflow is a
row in ``workflows`` with one row per step in ``workflow_steps``; each step is published as an ordinary
catalog task whose message carries the workflow's id and the step's name (``WORKFLOW_ID_HEADER``,
``WORKFLOW_STEP_HEADER``). The worker that runs a step records its outcome here before the message is
acknowledged (``shared/celery_extensions/task_base.py``) and publishes the steps that waited for it. Why not
the canvas (docs/workflows.md): its messages embed the follow-up tasks and their arguments in the body, which
the workers would have to accept from any publisher; a chord's counter lives in the result backend (expiring
with the results, counted again by a redelivered step); and neither retry from a failed step nor counting once
against the quota has a place there.

Exactly once, by conditional state transitions in one transaction that first locks the workflow's row:

- a step is *claimed* for publishing (PENDING -> SENT, a new task id) only while the workflow is unfinished
  and every step it waits for has succeeded; of two workers finishing the last two steps of a parallel group
  at once, the second to commit sees both successes and is the only one to claim the step after them;
- the claim is committed before the message is published, and ``published_at`` is set after: a worker killed
  in between leaves its own step's message unacknowledged, the broker delivers it again, the step (idempotent)
  runs again and publishes the claimed steps that were never published (``unpublished``);
- a step's outcome is recorded only for the task id of its current attempt, so an old attempt's late outcome
  changes nothing.

Failure: a failed step (its final failure, after the task's own retries) sets the workflow to FAILURE with the
step's name and the reason; the steps that wait for it stay PENDING and never run; steps already running finish
and their effects stay (every task is idempotent). ``retry`` puts the failed and revoked steps back to PENDING,
keeps the succeeded ones, and publishes what is ready again. ``revoke`` marks the steps not yet run REVOKED and
returns the task ids of those published, for the caller to revoke.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError
from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session

from shared.catalog import TaskArgumentError, TaskSpec, from_previous_fields, get_spec
from shared.contracts import WORKFLOW_FINAL_STATES, TaskState
from shared.models import Workflow, WorkflowStep, WorkflowTotals, utcnow

MAX_STEPS = 100
REASON_MAX = 4000
STEP_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$"
UNFINISHED_STEP = (TaskState.SENT, TaskState.STARTED)


class DefinitionError(ValueError):
    """Steps that do not fit: each error as the gateway's ``{loc, msg, type}``."""

    def __init__(self, errors: list[dict[str, Any]]) -> None:
        self.errors = errors
        super().__init__("; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in errors))


class NotRetryable(ValueError):
    """A retry of a workflow that is not FAILURE or REVOKED."""


@dataclass(frozen=True)
class PlannedStep:
    """A validated step, ready to be stored."""

    name: str
    spec: TaskSpec
    kwargs: dict[str, Any]
    after: tuple[str, ...] = ()
    from_previous: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Outgoing:
    """A claimed step to publish: its task id, catalog task and arguments, and the workflow's owner."""

    workflow_id: str
    step: str
    task_id: str
    spec: TaskSpec
    kwargs: dict[str, Any]
    owner: str
    request_id: str | None


# -- planning --------------------------------------------------------------------------------------------


def plan(definition: Sequence[Any], loc: Sequence[str | int] = ("body", "steps")) -> list[PlannedStep]:
    """Validate ``definition`` (items in order; each a step ``{task_name, kwargs, name?}`` or
    ``{"parallel": [step, ...]}``; each item waits for every step of the item before it) against the catalog.
    Raises :class:`DefinitionError` with every problem found."""
    errors: list[dict[str, Any]] = []
    planned: list[PlannedStep] = []
    previous: tuple[str, ...] = ()
    if not definition:
        errors.append({"loc": list(loc), "msg": "a workflow needs at least one step", "type": "too_short"})
    for index, item in enumerate(definition):
        here = [*loc, index]
        group = item.get("parallel") if isinstance(item, Mapping) else None
        if isinstance(item, Mapping) and "parallel" in item:
            if not isinstance(group, list) or not group:
                errors.append({"loc": [*here, "parallel"], "msg": "a list of steps", "type": "parallel"})
                continue
            members = [(f"{index + 1}.{j + 1}", step, [*here, "parallel", j]) for j, step in enumerate(group)]
        else:
            members = [(str(index + 1), item, here)]
        names = [step for default, raw, where in members if (step := _plan_step(raw, default, previous, where, errors))]
        planned.extend(names)
        previous = tuple(step.name for step in names)
    _check_names(planned, loc, errors)
    if len(planned) > MAX_STEPS:
        errors.append({"loc": list(loc), "msg": f"at most {MAX_STEPS} steps", "type": "too_long"})
    if errors:
        raise DefinitionError(errors)
    return planned


def _plan_step(
    raw: Any, default_name: str, previous: tuple[str, ...], loc: list[Any], errors: list[dict[str, Any]]
) -> PlannedStep | None:
    if not isinstance(raw, Mapping) or not isinstance(raw.get("task_name"), str):
        errors.append({"loc": loc, "msg": "a step is {task_name, kwargs} or {parallel: [...]}", "type": "step"})
        return None
    spec = get_spec(raw["task_name"])
    if spec is None or spec.name != raw["task_name"]:
        msg = f"there is no task named {raw['task_name']!r}"
        errors.append({"loc": [*loc, "task_name"], "msg": msg, "type": "unknown_task"})
        return None
    name = raw.get("name") or default_name
    kwargs = raw.get("kwargs") or {}
    if not isinstance(kwargs, Mapping) or not isinstance(name, str):
        errors.append({"loc": loc, "msg": "kwargs is an object and name a string", "type": "step"})
        return None
    try:
        validated = spec.validate((), kwargs).model_dump(mode="json")
    except (ValidationError, TaskArgumentError) as exc:
        problems = exc.errors(include_url=False) if isinstance(exc, ValidationError) else [{"loc": (), "msg": str(exc)}]
        for problem in problems:
            where = [*loc, "kwargs", *problem["loc"]]
            errors.append({"loc": where, "msg": problem["msg"], "type": str(problem.get("type", "value_error"))})
        return None
    taken = {arg: key for arg, key in from_previous_fields(spec).items() if arg not in kwargs and len(previous) == 1}
    return PlannedStep(name, spec, validated, previous, taken)


def _check_names(steps: list[PlannedStep], loc: Sequence[str | int], errors: list[dict[str, Any]]) -> None:
    import re

    seen: set[str] = set()
    for step in steps:
        if step.name in seen or not re.match(STEP_NAME_PATTERN, step.name):
            msg = f"step name {step.name!r} is used twice or not of {STEP_NAME_PATTERN}"
            errors.append({"loc": list(loc), "msg": msg, "type": "step_name"})
        seen.add(step.name)


# -- creating and advancing ------------------------------------------------------------------------------


def create(
    session: Session,
    steps: Sequence[PlannedStep],
    *,
    owner: str,
    name: str | None = None,
    kwargs: Mapping[str, Any] | None = None,
    workflow_id: str | None = None,
    request_id: str | None = None,
) -> tuple[Workflow, list[Outgoing]]:
    """Store a workflow and claim its first steps (publish them after the commit, then :func:`published`)."""
    workflow = Workflow(
        id=workflow_id or str(uuid.uuid4()),
        name=name,
        owner=owner,
        kwargs=dict(kwargs or {}),
        status=TaskState.PENDING.value,
        request_id=request_id,
        retries=0,
        failures=0,
        created_at=utcnow(),
    )
    for position, step in enumerate(steps):
        workflow.steps.append(
            WorkflowStep(
                name=step.name,
                position=position,
                task_name=step.spec.name,
                kwargs=step.kwargs,
                after=list(step.after),
                from_previous=dict(step.from_previous),
                state=TaskState.PENDING.value,
                attempts=0,
            )
        )
    session.add(workflow)
    session.flush()
    return workflow, claim_ready(session, workflow.id)


def _lock(session: Session, workflow_id: str) -> Workflow | None:
    """Lock the workflow's row for this transaction (a no-op UPDATE: PostgreSQL's row lock, SQLite's write
    lock), so that transitions of one workflow happen one after the other; then read it afresh."""
    locked = session.execute(update(Workflow).where(Workflow.id == workflow_id).values(retries=Workflow.retries))
    if not locked.rowcount:  # type: ignore[attr-defined]
        return None
    session.expire_all()
    return session.get(Workflow, workflow_id)


def claim_ready(session: Session, workflow_id: str) -> list[Outgoing]:
    """Claim every PENDING step whose steps before it all succeeded (PENDING -> SENT, a new task id)."""
    workflow = _lock(session, workflow_id)
    if workflow is None or workflow.status in WORKFLOW_FINAL_STATES:
        return []
    steps = {step.name: step for step in workflow.steps}
    claimed: list[Outgoing] = []
    for step in workflow.steps:
        if step.state != TaskState.PENDING or any(steps[n].state != TaskState.SUCCESS for n in step.after):
            continue
        kwargs = dict(step.kwargs)
        if step.from_previous and len(step.after) == 1:
            result = steps[step.after[0]].result
            for arg, key in step.from_previous.items():
                if isinstance(result, Mapping) and key in result:
                    kwargs[arg] = result[key]
        task_id = str(uuid.uuid4())
        moved = session.execute(
            update(WorkflowStep)
            .where(WorkflowStep.id == step.id, WorkflowStep.state == TaskState.PENDING.value)
            .values(
                state=TaskState.SENT.value,
                task_id=task_id,
                kwargs=kwargs,
                attempts=WorkflowStep.attempts + 1,
                published_at=None,
                error=None,
                result=None,
                started_at=None,
                finished_at=None,
            )
        )
        if moved.rowcount:  # type: ignore[attr-defined]
            spec = get_spec(step.task_name)
            assert spec is not None
            claimed.append(Outgoing(workflow.id, step.name, task_id, spec, kwargs, workflow.owner, workflow.request_id))
    return claimed


def unpublished(session: Session, workflow_id: str) -> list[Outgoing]:
    """Claimed steps whose message was never published (their publisher died between commit and publish)."""
    workflow = session.get(Workflow, workflow_id)
    if workflow is None or workflow.status in WORKFLOW_FINAL_STATES:
        return []
    found = []
    for step in workflow.steps:
        if step.state == TaskState.SENT and step.published_at is None and step.task_id:
            spec = get_spec(step.task_name)
            assert spec is not None
            found.append(
                Outgoing(
                    workflow.id, step.name, step.task_id, spec, dict(step.kwargs), workflow.owner, workflow.request_id
                )
            )
    return found


def published(session: Session, outgoing: Sequence[Outgoing]) -> None:
    """Record that these steps' messages are in the broker."""
    now = utcnow()
    for item in outgoing:
        session.execute(
            update(WorkflowStep)
            .where(WorkflowStep.workflow_id == item.workflow_id, WorkflowStep.task_id == item.task_id)
            .values(published_at=now)
        )


def _current_step(session: Session, workflow_id: str, step: str, task_id: str) -> WorkflowStep | None:
    """The step, when ``task_id`` is its current attempt."""
    return session.scalar(
        select(WorkflowStep).where(
            WorkflowStep.workflow_id == workflow_id, WorkflowStep.name == step, WorkflowStep.task_id == task_id
        )
    )


def step_started(session: Session, workflow_id: str, step: str, task_id: str) -> None:
    """The step's task started: the step and (at its first step) the workflow are STARTED."""
    workflow = _lock(session, workflow_id)
    row = _current_step(session, workflow_id, step, task_id)
    if workflow is None or row is None:
        return
    now = utcnow()
    if row.state in (TaskState.PENDING, TaskState.SENT):
        row.state = TaskState.STARTED.value
        row.started_at = row.started_at or now
    if workflow.status == TaskState.PENDING:
        workflow.status = TaskState.STARTED.value
        workflow.started_at = workflow.started_at or now
    session.flush()


def step_succeeded(session: Session, workflow_id: str, step: str, task_id: str, result: Any) -> list[Outgoing]:
    """Record the step's success and claim the steps now ready; the workflow is SUCCESS once every step is.
    A step already recorded (a redelivered message run again) claims nothing: it returns what is claimed
    but unpublished instead."""
    workflow = _lock(session, workflow_id)
    row = _current_step(session, workflow_id, step, task_id)
    if workflow is None or row is None:
        return []
    if row.state == TaskState.SUCCESS:
        return unpublished(session, workflow_id)
    now = utcnow()
    row.state = TaskState.SUCCESS.value
    row.result = result
    row.finished_at = now
    row.started_at = row.started_at or now
    if workflow.status == TaskState.PENDING:
        workflow.status = TaskState.STARTED.value
        workflow.started_at = workflow.started_at or now
    session.flush()
    if all(s.state == TaskState.SUCCESS for s in workflow.steps) and workflow.status not in WORKFLOW_FINAL_STATES:
        workflow.status = TaskState.SUCCESS.value
        workflow.finished_at = now
        session.flush()
        return []
    return claim_ready(session, workflow_id)


def step_failed(session: Session, workflow_id: str, step: str, task_id: str, reason: str) -> bool:
    """Record the step's final failure; the workflow is FAILURE at this step with the reason (unless it is
    already finished). True when this call failed the workflow."""
    workflow = _lock(session, workflow_id)
    row = _current_step(session, workflow_id, step, task_id)
    if workflow is None or row is None or row.state in (TaskState.SUCCESS, TaskState.FAILURE):
        return False
    now = utcnow()
    row.state = TaskState.FAILURE.value
    row.error = reason[:REASON_MAX]
    row.finished_at = now
    if workflow.status in WORKFLOW_FINAL_STATES:
        return False
    workflow.status = TaskState.FAILURE.value
    workflow.failures += 1
    workflow.failed_step = step
    workflow.reason = f"step {step!r} ({row.task_name}) failed: {reason}"[:REASON_MAX]
    workflow.finished_at = now
    session.flush()
    return True


def revoke(session: Session, workflow_id: str, reason: str = "revoked") -> list[str] | None:
    """Revoke an unfinished workflow: its steps not yet run never run. Returns the task ids of the steps that
    were published but have not finished (for the caller to revoke), or None for an unknown workflow."""
    workflow = _lock(session, workflow_id)
    if workflow is None:
        return None
    if workflow.status in WORKFLOW_FINAL_STATES:
        return []
    now = utcnow()
    running = []
    for step in workflow.steps:
        if step.state in UNFINISHED_STEP and step.task_id:
            running.append(step.task_id)
        if step.state in (TaskState.PENDING, TaskState.SENT):
            step.state = TaskState.REVOKED.value
            step.finished_at = now
    workflow.status = TaskState.REVOKED.value
    workflow.reason = reason[:REASON_MAX]
    workflow.finished_at = now
    session.flush()
    return running


def retry(session: Session, workflow_id: str) -> list[Outgoing] | None:
    """Retry a FAILURE or REVOKED workflow from where it stopped: failed and revoked steps go back to
    PENDING, succeeded ones are kept; the steps now ready are claimed. None for an unknown workflow;
    :class:`NotRetryable` for one that did not fail and was not revoked."""
    workflow = _lock(session, workflow_id)
    if workflow is None:
        return None
    if workflow.status not in (TaskState.FAILURE, TaskState.REVOKED):
        raise NotRetryable(f"workflow {workflow_id} is {workflow.status}: only FAILURE or REVOKED ones are retried")
    for step in workflow.steps:
        if step.state in (TaskState.FAILURE, TaskState.REVOKED):
            step.state = TaskState.PENDING.value
    started = any(step.state == TaskState.SUCCESS for step in workflow.steps)
    workflow.status = (TaskState.STARTED if started else TaskState.PENDING).value
    workflow.failed_step = None
    workflow.reason = None
    workflow.finished_at = None
    workflow.retries += 1
    session.flush()
    return claim_ready(session, workflow_id)


def progress(workflow: Workflow) -> dict[str, int]:
    """``{done, total}``: steps succeeded out of all."""
    done = sum(1 for step in workflow.steps if step.state == TaskState.SUCCESS)
    return {"done": done, "total": len(workflow.steps)}


def duration(workflow: Workflow) -> float | None:
    """Seconds from submission to the end, for a finished workflow."""
    if workflow.finished_at is None:
        return None
    return max(0.0, (workflow.finished_at - workflow.created_at).total_seconds())


def now_local(timezone: str) -> dt.date:
    """Today in the mall's timezone (named workflows resolve 'last month' and 'yesterday' from it)."""
    from zoneinfo import ZoneInfo

    return dt.datetime.now(ZoneInfo(timezone)).date()


AD_HOC = "ad_hoc"  # the metrics' name label of a workflow that has no name


@dataclass
class Totals:
    """What the monitor exports per workflow name: started, succeeded, failed (every time one went FAILURE)
    and the durations (submission to end) of the succeeded ones."""

    started: int = 0
    succeeded: int = 0
    failed: int = 0
    durations: list[float] = field(default_factory=list)
    # the succeeded ones the retention deleted: their durations' sum and count per bucket bound ("+Inf" too)
    retired_sum: float = 0.0
    retired_buckets: dict[str, int] = field(default_factory=dict)


def totals(session: Session) -> dict[str, Totals]:
    """Totals per workflow name (``ad_hoc`` for unnamed ones), read from the workflows table, plus what the
    retention deleted of them (``workflow_totals``, :func:`retire_finished`)."""
    found: dict[str, Totals] = {}
    for kept in session.scalars(select(WorkflowTotals)):
        found[kept.name] = Totals(
            started=kept.started,
            succeeded=kept.succeeded,
            failed=kept.failed,
            retired_sum=kept.duration_sum,
            retired_buckets=dict(kept.duration_buckets or {}),
        )
    rows = session.execute(
        select(
            Workflow.name,
            Workflow.status,
            Workflow.failures,
            Workflow.started_at,
            Workflow.created_at,
            Workflow.finished_at,
        )
    )
    for name, status, failures, started_at, created_at, finished_at in rows:
        item = found.setdefault(name or AD_HOC, Totals())
        item.started += 1 if started_at is not None else 0
        item.failed += int(failures or 0)
        if status == TaskState.SUCCESS:
            item.succeeded += 1
            if finished_at is not None:
                item.durations.append(max(0.0, (finished_at - created_at).total_seconds()))
    return found


def retire_finished(session: Session, before: dt.datetime, buckets: Sequence[float], limit: int = 1000) -> int:
    """Delete up to ``limit`` workflows that finished (SUCCESS, FAILURE, REVOKED) before ``before``, with
    their steps, adding what they counted to ``workflow_totals`` first (in this transaction), so that the
    monitor's counters do not go down. A succeeded one's duration is kept as a count in the bucket of
    ``buckets`` (the monitor's ``MALLOPS_RUNTIME_BUCKETS``) it falls in. Returns how many were deleted."""
    rows = session.execute(
        select(
            Workflow.id,
            Workflow.name,
            Workflow.status,
            Workflow.failures,
            Workflow.started_at,
            Workflow.created_at,
            Workflow.finished_at,
        )
        .where(Workflow.status.in_([str(s) for s in WORKFLOW_FINAL_STATES]), Workflow.finished_at < before)
        .order_by(Workflow.finished_at, Workflow.id)
        .limit(limit)
    ).all()
    if not rows:
        return 0
    bounds = sorted(buckets)
    added: dict[str, WorkflowTotals] = {}
    for _, name, status, failures, started_at, created_at, finished_at in rows:
        key = name or AD_HOC
        kept = added.get(key) or session.get(WorkflowTotals, key)
        if kept is None:
            kept = WorkflowTotals(name=key, started=0, succeeded=0, failed=0, duration_sum=0.0, duration_buckets={})
            session.add(kept)
        added[key] = kept
        kept.started += 1 if started_at is not None else 0
        kept.failed += int(failures or 0)
        if status == TaskState.SUCCESS:
            kept.succeeded += 1
            seconds = max(0.0, (finished_at - created_at).total_seconds()) if finished_at else 0.0
            kept.duration_sum += seconds
            bound = next((str(b) for b in bounds if seconds <= b), "+Inf")
            kept.duration_buckets = {**kept.duration_buckets, bound: kept.duration_buckets.get(bound, 0) + 1}
        kept.updated_at = utcnow()
    ids = [row[0] for row in rows]
    session.execute(delete(WorkflowStep).where(WorkflowStep.workflow_id.in_(ids)))
    session.execute(delete(Workflow).where(Workflow.id.in_(ids)))
    return len(ids)
