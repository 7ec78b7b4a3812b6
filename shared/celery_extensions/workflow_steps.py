"""The worker's side of workflows (``shared/workflows.py``): a task whose message names a workflow step
records the step's start and outcome in the database, and publishes the steps that waited for it, before its
message is acknowledged (acks_late). Called by :class:`~shared.celery_extensions.task_base.MallopsTask`.

A worker killed anywhere in here loses nothing: the step's message is delivered again, the step (idempotent)
runs again, its success is found already recorded, and the claimed steps that were never published are
published then (``workflows.unpublished``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from celery import Celery

from shared.catalog import WORKFLOWS
from shared.contracts import OWNER_HEADER, REQUEST_ID_HEADER, WORKFLOW_ID_HEADER, WORKFLOW_STEP_HEADER
from shared.settings import Settings

if TYPE_CHECKING:
    from shared import workflows

# The database side (shared.workflows, shared.db, shared.models: SQLAlchemy) is imported by the functions
# that a workflow's step calls, not when the worker starts: every task imports this module through the
# task base class, and an idle worker holds no SQLAlchemy (docs/performance.md, idle memory).

log = logging.getLogger("mallops.workflows")


def step_of(request: Any) -> tuple[str, str] | None:
    """(workflow id, step name) of the task being run, or None when it is no workflow's step."""
    workflow_id, step = request.get(WORKFLOW_ID_HEADER), request.get(WORKFLOW_STEP_HEADER)
    if isinstance(workflow_id, str) and workflow_id and isinstance(step, str) and step:
        return workflow_id, step
    return None


def step_headers(item: workflows.Outgoing) -> dict[str, str]:
    headers = {OWNER_HEADER: item.owner, WORKFLOW_ID_HEADER: item.workflow_id, WORKFLOW_STEP_HEADER: item.step}
    if item.request_id:
        headers[REQUEST_ID_HEADER] = item.request_id
    return headers


def publish(app: Celery, settings: Settings, outgoing: Sequence[workflows.Outgoing]) -> None:
    """Publish claimed steps as ordinary catalog tasks, then record that they are in the broker."""
    from shared import workflows
    from shared.db import session_scope

    if not outgoing:
        return
    for item in outgoing:
        app.send_task(
            item.spec.celery_name,
            kwargs=item.kwargs,
            task_id=item.task_id,
            queue=item.spec.queue,
            headers=step_headers(item),
        )
        log.info("workflow %s: step %r sent as %s[%s]", item.workflow_id, item.step, item.spec.name, item.task_id)
    with session_scope(settings) as session:
        workflows.published(session, outgoing)


def start_named(
    app: Celery, settings: Settings, name: str, kwargs: dict[str, Any], *, workflow_id: str, owner: str
) -> dict[str, Any]:
    """Store named workflow ``name`` under ``workflow_id`` and publish its first steps (the ``run_workflow``
    task, which beat schedules). A redelivered message finds the workflow stored and publishes only what was
    claimed and never published, so a workflow is started once."""
    from shared import workflows
    from shared.db import session_scope
    from shared.models import Workflow

    spec = WORKFLOWS[name]
    validated, definition = spec.steps(kwargs, workflows.now_local(settings.timezone))
    planned = workflows.plan(definition)
    with session_scope(settings) as session:
        if session.get(Workflow, workflow_id) is None:
            _, outgoing = workflows.create(
                session, planned, owner=owner, name=name, kwargs=validated, workflow_id=workflow_id
            )
        else:
            outgoing = workflows.unpublished(session, workflow_id)
    publish(app, settings, outgoing)
    return {"workflow_id": workflow_id, "name": name, "steps": len(planned)}


def started(settings: Settings, step: tuple[str, str], task_id: str) -> None:
    from shared import workflows
    from shared.db import session_scope

    with session_scope(settings) as session:
        workflows.step_started(session, step[0], step[1], task_id)


def succeeded(app: Celery, settings: Settings, step: tuple[str, str], task_id: str, result: Any) -> None:
    from shared import workflows
    from shared.db import session_scope

    with session_scope(settings) as session:
        outgoing = workflows.step_succeeded(session, step[0], step[1], task_id, result)
    publish(app, settings, outgoing)


# How often, and after how long, a step's final failure is tried again when the database refuses it (a lock
# held past SQLite's busy timeout, PostgreSQL restarting), before the step is retried as a whole.
FAILURE_RECORD_PAUSES = (1.0, 3.0)


def failed(settings: Settings, step: tuple[str, str], task_id: str, exc: BaseException) -> bool:
    """Record the step's final failure. True once it is recorded (or needs no record: the step or its workflow
    had already finished); False when the database refused it every time: the caller must not let the
    message go, or the workflow would read STARTED forever."""
    from shared import workflows
    from shared.db import session_scope

    reason = f"{type(exc).__name__}: {exc}"
    pauses = list(FAILURE_RECORD_PAUSES)
    while True:
        try:
            with session_scope(settings) as session:
                if workflows.step_failed(session, step[0], step[1], task_id, reason):
                    log.warning("workflow %s failed at step %r: %s", step[0], step[1], reason)
            return True
        except Exception as error:
            log.error(
                "workflow %s: could not record the failure of step %r (%s: %s)%s",
                step[0],
                step[1],
                type(error).__name__,
                error,
                f"; trying again in {pauses[0]:.0f}s" if pauses else "",
            )
            if not pauses:
                return False
            time.sleep(pauses.pop(0))
