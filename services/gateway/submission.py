"""Submitting tasks: validate against the catalog, apply the quota, publish to the broker.

Order of checks, so that nothing is enqueued for a request that is refused: every item is validated
(unknown task 404, bad arguments 422, bad timing 422); then the owner's quota is reserved atomically
(429); then the metadata is recorded and the messages are published in one pipelined round trip on the
gateway's pooled asyncio broker connection (:mod:`services.gateway.broker`).
If publishing fails, the reservation and metadata are undone and the answer is 503 with Retry-After.
"""

from __future__ import annotations

import datetime as dt
import logging
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from kombu.exceptions import KombuError, OperationalError
from pydantic import ValidationError
from redis.exceptions import RedisError
from sqlalchemy import select
from starlette.concurrency import run_in_threadpool

from services.gateway.broker import TaskMessage
from services.gateway.problems import ProblemError, describe_errors, field_errors
from services.gateway.runtime import Runtime
from services.gateway.schemas import TaskAccepted, TaskSubmission
from services.gateway.taskstore import READY_STATES, TaskMeta, TaskStore
from shared.catalog import TaskArgumentError, TaskSpec, get_spec
from shared.events import OWNER_HEADER, RETRY_OF_HEADER
from shared.models import TaskRecord
from shared.tokens import Principal

log = logging.getLogger("mallops.gateway")

BROKER_RETRY_AFTER = "5"
KWARGS_REPR_MAX = 1024  # what monitors and `celery inspect` show of the arguments


@dataclass
class Prepared:
    task_id: str
    spec: TaskSpec
    args: list[Any]
    kwargs: dict[str, Any]
    validated: dict[str, Any]
    countdown: float | None
    eta: dt.datetime | None
    priority: int | None

    @property
    def kwargs_repr(self) -> str:
        text = repr(self.validated)
        return text if len(text) <= KWARGS_REPR_MAX else text[: KWARGS_REPR_MAX - 3] + "..."

    def accepted(self, retry_of: str | None = None) -> TaskAccepted:
        return TaskAccepted(task_id=self.task_id, task_name=self.spec.name, queue=self.spec.queue, retry_of=retry_of)


def prepare(item: TaskSubmission, loc: Sequence[str | int] = ("body",), max_delay: float = 7200) -> Prepared:
    """Validate one submission; ProblemError 404 for an unknown task, 422 for arguments that do not fit."""
    spec = get_spec(item.task_name)
    if spec is None or item.task_name != spec.name:
        raise ProblemError(
            404,
            f"there is no task named {item.task_name!r}; GET /api/v1/catalog lists them",
            kind="unknown-task",
            title="Unknown task",
            extra={"loc": [*loc, "task_name"]} if len(loc) > 1 else None,
        )
    try:
        validated = spec.validate(item.args, item.kwargs)
    except TaskArgumentError as exc:
        errors = [{"loc": [*loc, "args"], "msg": str(exc), "type": "arguments"}]
        raise _invalid(errors) from exc
    except ValidationError as exc:
        fields = list(spec.args_model.model_fields)
        errors = field_errors(exc.errors())
        for error in errors:
            first = error["loc"][0] if error["loc"] else None
            if isinstance(first, str) and first in fields and fields.index(first) < len(item.args):
                error["loc"] = [*loc, "args", fields.index(first), *error["loc"][1:]]
            else:
                error["loc"] = [*loc, "kwargs", *error["loc"]]
        raise _invalid(errors) from exc
    if item.eta is not None:
        if item.eta.tzinfo is None:
            raise _invalid(
                [{"loc": [*loc, "eta"], "msg": "eta needs a timezone, e.g. 2026-11-22T10:00:00Z", "type": "timezone"}]
            )
        ahead = (item.eta - dt.datetime.now(dt.UTC)).total_seconds()
        if ahead > max_delay:
            raise _invalid(
                [{"loc": [*loc, "eta"], "msg": f"eta may be at most {max_delay:g} s ahead", "type": "too_far"}]
            )
    if item.countdown is not None and item.countdown > max_delay:
        raise _invalid(
            [{"loc": [*loc, "countdown"], "msg": f"countdown may be at most {max_delay:g} s", "type": "too_far"}]
        )
    return Prepared(
        task_id=str(uuid.uuid4()),
        spec=spec,
        args=list(item.args),
        kwargs=dict(item.kwargs),
        validated=validated.model_dump(mode="json"),
        countdown=item.countdown,
        eta=item.eta,
        priority=item.priority,
    )


def _invalid(errors: list[dict[str, Any]]) -> ProblemError:
    return ProblemError(
        422,
        describe_errors(errors),
        kind="invalid-arguments",
        title="The task's arguments do not fit its schema",
        errors=errors,
    )


def messages(items: Sequence[Prepared]) -> list[TaskMessage]:
    """The broker messages of validated submissions: the catalog names the task and its queue."""
    return [
        TaskMessage(
            item.task_id,
            item.spec.celery_name,
            item.spec.queue,
            item.validated,
            item.kwargs_repr,
            countdown=item.countdown,
            eta=item.eta,
            priority=item.priority,
        )
        for item in items
    ]


class Submitter:
    """Quota, metadata and publishing for one or many prepared submissions of one owner."""

    def __init__(self, runtime: Runtime, store: TaskStore) -> None:
        self.runtime = runtime
        self.store = store

    async def submit(
        self, principal: Principal, items: Sequence[Prepared], owner: str | None = None, retry_of: str | None = None
    ) -> list[TaskAccepted]:
        owner = owner or principal.name
        ids = [item.task_id for item in items]
        quota = not principal.is_admin
        if quota:
            await self._reserve(owner, ids)
        now = dt.datetime.now(dt.UTC)
        metas = [
            TaskMeta(item.task_id, item.spec.name, item.spec.queue, owner, item.args, item.kwargs, now, retry_of)
            for item in items
        ]
        recorded = False
        try:
            await self.store.record(metas)
            recorded = True
            headers = {OWNER_HEADER: owner, RETRY_OF_HEADER: retry_of} if retry_of else {OWNER_HEADER: owner}
            await self.runtime.publisher.publish(messages(items), headers)
        except (OperationalError, KombuError, RedisError, OSError, TimeoutError) as exc:
            log.warning("cannot enqueue %d task(s) for %s: %s", len(items), owner, exc)
            self.runtime.metrics.publish_failures.inc()
            await self._undo(owner, ids, metas if recorded else [], quota)
            raise ProblemError(
                503,
                f"the task queue cannot be reached ({type(exc).__name__}); nothing was "
                f"enqueued, try again in {BROKER_RETRY_AFTER} s",
                kind="broker-unavailable",
                headers={"Retry-After": BROKER_RETRY_AFTER},
            ) from exc
        except BaseException:
            await self._undo(owner, ids, metas if recorded else [], quota)
            raise
        for item in items:
            self.runtime.metrics.tasks_submitted.labels(item.spec.name).inc()
        return [item.accepted(retry_of) for item in items]

    async def _undo(self, owner: str, ids: list[str], metas: list[TaskMeta], quota: bool) -> None:
        try:
            if metas:
                await self.store.forget(metas)
            if quota:
                await self.store.release(owner, ids)
        except Exception as exc:  # Redis itself is down: nothing more to undo with
            log.warning("could not undo the records of unpublished tasks: %s", exc)

    async def _reserve(self, owner: str, ids: list[str]) -> None:
        limit = self.runtime.settings.task_max_per_user
        if len(ids) > limit:
            raise self._quota_problem(owner, limit, None, len(ids))
        try:
            current = await self.store.reserve(owner, ids, limit)
            if current is None:
                return
            await self._prune(owner)
            current = await self.store.reserve(owner, ids, limit)
        except RedisError as exc:
            raise ProblemError(
                503,
                f"the gateway's Redis cannot be reached ({type(exc).__name__})",
                kind="redis-unavailable",
                headers={"Retry-After": BROKER_RETRY_AFTER},
            ) from exc
        if current is not None:
            raise self._quota_problem(owner, limit, current, len(ids))

    def _quota_problem(self, owner: str, limit: int, current: int | None, wanted: int) -> ProblemError:
        have = f"already has {current} unfinished task(s)" if current is not None else f"asked for {wanted} tasks"
        return ProblemError(
            429,
            f"quota exceeded: {owner!r} {have}, and at most {limit} unfinished tasks are allowed per user "
            f"(MALLOPS_TASK_MAX_PER_USER); wait for some to finish",
            kind="quota-exceeded",
            title="Too many unfinished tasks",
            headers={"Retry-After": "10"},
            extra={"limit": limit, "unfinished": current},
        )

    async def _prune(self, owner: str) -> None:
        """Forget the owner's tasks that have finished (result backend, else the monitor's history)."""
        members = await self.store.unfinished(owner)
        ids = [task_id for task_id, _ in members]
        results = await self.store.results_many(ids)
        finished = {
            task_id
            for task_id, meta in zip(ids, results, strict=True)
            if meta is not None and meta.get("status") in READY_STATES
        }
        unknown = [task_id for task_id, meta in zip(ids, results, strict=True) if meta is None]
        if unknown:
            finished |= await run_in_threadpool(self._finished_in_history, unknown)
        await self.store.prune_unfinished(owner, finished)

    def _finished_in_history(self, task_ids: list[str]) -> set[str]:
        try:
            with self.runtime.sessions() as session:
                rows = session.execute(
                    select(TaskRecord.task_id, TaskRecord.state).where(TaskRecord.task_id.in_(task_ids))
                ).all()
        except Exception as exc:
            log.warning("cannot read task history for the quota: %s", exc)
            return set()
        return {row.task_id for row in rows if row.state in READY_STATES}
