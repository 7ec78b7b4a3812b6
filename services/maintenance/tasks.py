"""Thin Celery task bodies of the maintenance service.

The modules that need SQLAlchemy (backups, expired data, the database session) or RedBeat (the schedules)
are imported by the task that uses them, not when the worker starts: an idle worker holds neither, and its
prefork children load them only if they run such a task (docs/performance.md, idle memory)."""

from __future__ import annotations

import uuid
from typing import Any

from celery import Celery

from services.maintenance import cache_cleanup, diagnostics
from shared.cache import redis_client
from shared.celery_extensions import workflow_steps
from shared.celery_extensions.task_base import MallopsTask, register
from shared.contracts import OWNER_HEADER, TaskState


def test_task(task: MallopsTask, message: str, fail: bool) -> str:
    return diagnostics.echo(message, fail, attempt=task.request.retries or 0)


def long_running_task(task: MallopsTask, steps: int, step_seconds: float) -> dict[str, Any]:
    def progress(current: int, total: int) -> None:
        task.update_state(state=TaskState.PROGRESS, meta={"current": current, "total": total})

    return diagnostics.run_steps(steps, step_seconds, progress)


def backup_database(task: MallopsTask, keep: int | None) -> dict[str, Any]:
    from services.maintenance import backups

    return backups.backup_database(task.settings, keep).as_dict()


def cleanup_cache(task: MallopsTask, prefix: str) -> dict[str, Any]:
    return cache_cleanup.delete_by_prefix(redis_client(task.settings), prefix)


def cleanup_expired_data(task: MallopsTask) -> dict[str, Any]:
    from services.maintenance import expired_data
    from shared.db import session_factory

    settings = task.settings
    with session_factory(settings)() as session:
        return expired_data.cleanup_expired_data(session, settings)


def run_workflow(task: MallopsTask, name: str, kwargs: dict[str, Any]) -> dict[str, Any]:
    """Start a named workflow; its id comes from this task's id, so a redelivered message starts it once."""
    from shared.schedules import BEAT_OWNER  # with RedBeat, Tornado and tenacity: not in an idle worker

    owner = str(task.request.get(OWNER_HEADER) or BEAT_OWNER)
    workflow_id = str(uuid.uuid5(uuid.NAMESPACE_URL, f"mallops:run_workflow:{task.request.id}"))
    return workflow_steps.start_named(task.app, task.settings, name, kwargs, workflow_id=workflow_id, owner=owner)


def register_all(app: Celery) -> None:
    register(app, "test_task", test_task)
    register(app, "long_running_task", long_running_task)
    register(app, "backup_database", backup_database)
    register(app, "cleanup_cache", cleanup_cache)
    register(app, "cleanup_expired_data", cleanup_expired_data)
    register(app, "run_workflow", run_workflow)
