"""Submitting tasks: validate against the catalog, apply the quota, publish to the broker.

Order of checks, so that nothing is enqueued for a request that is refused: every item is validated
(unknown task 404, bad arguments 422, bad timing 422); then the owner's quota is reserved atomically
(429); then the metadata is recorded and the messages are published in one pipelined round trip on the
gateway's pooled asyncio broker connection (:mod:`services.gateway.broker`).
If publishing fails, the reservation and metadata are undone and the answer is 503 with Retry-After.

A run further ahead than ``MALLOPS_BROKER_VISIBILITY_TIMEOUT`` is not published: it is stored in the
database with status SCHEDULED (:mod:`shared.deferred`, capped per owner by
``MALLOPS_SCHEDULED_MAX_PER_USER``) and beat publishes it when due; it takes no quota until then.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from kombu.exceptions import KombuError, OperationalError
from pydantic import ValidationError
from redis.exceptions import RedisError
from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError
from starlette.concurrency import run_in_threadpool

from services.gateway.broker import Outgoing, Publisher, TaskMessage, once_more_if_single
from services.gateway.problems import ProblemError, describe_errors, field_errors
from services.gateway.runtime import Runtime
from services.gateway.schemas import TaskAccepted, TaskSubmission
from services.gateway.taskstore import PUSHED, TaskStore
from shared import deferred
from shared.catalog import TaskArgumentError, TaskSpec, get_spec
from shared.contracts import (
    FINAL_STATES,
    OWNER_HEADER,
    REQUEST_ID_HEADER,
    RETRY_OF_HEADER,
    WORKFLOW_FINAL_STATES,
    TaskState,
)
from shared.logs import request_id_var
from shared.models import DeferredTask, TaskRecord, Workflow
from shared.taskmeta import UNFINISHED, TaskMeta
from shared.tokens import Principal

if TYPE_CHECKING:
    from services.gateway.deps import PendingRateLimit

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
    # further ahead than the broker holds a message safely: waits in the database (shared/deferred.py)
    deferred_until: dt.datetime | None = None

    @property
    def kwargs_repr(self) -> str:
        text = repr(self.validated)
        return text if len(text) <= KWARGS_REPR_MAX else text[: KWARGS_REPR_MAX - 3] + "..."

    def accepted(self, retry_of: str | None = None) -> TaskAccepted:
        return TaskAccepted(
            task_id=self.task_id,
            task_name=self.spec.name,
            status=TaskState.SCHEDULED if self.deferred_until is not None else TaskState.PENDING,
            queue=self.spec.queue,
            retry_of=retry_of,
        )

    def deferred_row(self, owner: str) -> DeferredTask:
        assert self.deferred_until is not None
        return DeferredTask(
            task_id=self.task_id,
            task_name=self.spec.name,
            queue=self.spec.queue,
            owner=owner,
            args=self.args,
            kwargs=self.kwargs,
            payload=self.validated,
            priority=self.priority,
            eta=self.deferred_until,
        )


def prepare(item: TaskSubmission, loc: Sequence[str | int] = ("body",), max_delay: float = 7200) -> Prepared:
    """Validate one submission; ProblemError 404 for an unknown task, 422 for arguments that do not fit.
    A run more than ``max_delay`` seconds ahead (the broker's visibility timeout) is to be deferred."""
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
    if item.eta is not None and item.eta.tzinfo is None:
        raise _invalid(
            [{"loc": [*loc, "eta"], "msg": "eta needs a timezone, e.g. 2026-11-22T10:00:00Z", "type": "timezone"}]
        )
    at = deferred.run_at(item.eta, item.countdown, dt.datetime.now(dt.UTC))
    ahead = (at - dt.datetime.now(dt.UTC)).total_seconds() if at is not None else 0.0
    return Prepared(
        task_id=str(uuid.uuid4()),
        spec=spec,
        args=list(item.args),
        kwargs=dict(item.kwargs),
        validated=validated.model_dump(mode="json"),
        countdown=item.countdown,
        eta=item.eta,
        priority=item.priority,
        deferred_until=at if ahead > max_delay else None,
    )


def invalid(errors: list[dict[str, Any]]) -> ProblemError:
    """422 problem for arguments that do not fit, each error with its ``loc``."""
    return _invalid(errors)


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


class _RateLimitUnreachable(Exception):
    """The submission script failed on Redis, and so did the rate-limit hit made after it."""

    def __init__(self, error: RedisError) -> None:
        super().__init__(str(error))
        self.error = error


class Submitter:
    """Quota, metadata and publishing for one or many prepared submissions of one owner."""

    def __init__(self, runtime: Runtime, store: TaskStore) -> None:
        self.runtime = runtime
        self.store = store

    async def submit(
        self,
        principal: Principal,
        items: Sequence[Prepared],
        owner: str | None = None,
        retry_of: str | None = None,
        rate_limit: PendingRateLimit | None = None,
    ) -> list[TaskAccepted]:
        """Publish the items due within the broker's horizon and store the others as deferred runs.

        ``rate_limit``: the request's rate-limit hit, still to make; the submission script makes it when it
        can (metadata and messages on the cache's Redis server), else it is made first."""
        owner = owner or principal.name
        later = [item for item in items if item.deferred_until is not None]
        now = [item for item in items if item.deferred_until is None]
        if rate_limit is not None and (later or not self._fusable(principal, now)):
            await rate_limit.settle()
        if later:
            await self._defer(owner, later)
        try:
            if now:
                await self._publish(principal, owner, now, retry_of, rate_limit)
        except BaseException:
            if later:
                await run_in_threadpool(self._forget_deferred, [item.task_id for item in later])
            raise
        for item in items:
            self.runtime.metrics.tasks_submitted.labels(item.spec.name).inc()
        return [item.accepted(retry_of) for item in items]

    async def _defer(self, owner: str, items: Sequence[Prepared]) -> None:
        """Store runs further ahead than the broker holds safely; 429 beyond MALLOPS_SCHEDULED_MAX_PER_USER."""
        limit = self.runtime.settings.scheduled_max_per_user

        def store() -> None:
            with self.runtime.sessions() as session, session.begin():
                deferred.store(session, [item.deferred_row(owner) for item in items], limit)

        try:
            await run_in_threadpool(store)
        except deferred.TooManyWaiting as exc:
            raise ProblemError(
                429,
                f"quota exceeded: {owner!r} already has {exc.waiting} scheduled run(s) waiting, and at most "
                f"{limit} are allowed per user (MALLOPS_SCHEDULED_MAX_PER_USER)",
                kind="scheduled-quota-exceeded",
                title="Too many scheduled runs",
                extra={"limit": limit, "scheduled": exc.waiting},
            ) from exc
        except SQLAlchemyError as exc:
            log.warning("cannot store %d deferred run(s) for %s: %s", len(items), owner, exc)
            raise ProblemError(
                503,
                f"the database cannot be reached ({type(exc).__name__}); nothing was scheduled",
                kind="database-unavailable",
                headers={"Retry-After": BROKER_RETRY_AFTER},
            ) from exc

    def _forget_deferred(self, task_ids: list[str]) -> None:
        try:
            with self.runtime.sessions() as session, session.begin():
                deferred.forget(session, task_ids)
        except SQLAlchemyError as exc:
            log.warning("could not undo deferred runs %s: %s", task_ids, exc)

    def _fusable(self, principal: Principal, items: Sequence[Prepared]) -> bool:
        """Whether the rate limit, the quota, the metadata and the messages of ``items`` fit one script: the
        broker is a database of the cache's Redis server and the items alone do not exceed the quota."""
        publisher = self.runtime.publisher
        beside = isinstance(publisher, Publisher) and publisher.broker_db_beside(self.runtime.cache) is not None
        return beside and (principal.is_admin or len(items) <= self.runtime.settings.task_max_per_user)

    async def _publish(
        self,
        principal: Principal,
        owner: str,
        items: Sequence[Prepared],
        retry_of: str | None,
        rate_limit: PendingRateLimit | None = None,
    ) -> None:
        ids = [item.task_id for item in items]
        quota = not principal.is_admin
        fused = rate_limit is not None and not rate_limit.settled
        if fused and not self._fusable(principal, items):
            assert rate_limit is not None
            await rate_limit.settle()
            fused = False
        if quota and not fused:
            await self._reserve(owner, ids)
        metas = _metas(items, owner, retry_of)
        headers = _headers(owner, retry_of)
        recorded = False
        try:
            publisher = self.runtime.publisher
            broker_db = publisher.broker_db_beside(self.runtime.cache) if isinstance(publisher, Publisher) else None
            if isinstance(publisher, Publisher) and broker_db is not None:  # metadata and messages: one round trip
                recorded = True  # (whatever part of the script ran is undone on failure)
                out = publisher.outgoing(messages(items), headers)
                pushed = False
                if fused:
                    assert rate_limit is not None
                    pushed = await self._limit_and_push(rate_limit, owner, ids, quota, metas, (broker_db, out))
                if not pushed:
                    await once_more_if_single(out, self.store.record, metas, (broker_db, out.pushes))
                publisher.published(out)
            else:
                await self.store.record(metas)
                recorded = True
                await publisher.publish(messages(items), headers)
        except _RateLimitUnreachable as exc:  # 503 from the handler of Redis errors, as for any request's hit
            await self._undo(owner, ids, metas, quota)
            raise exc.error from exc.__cause__
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

    async def _limit_and_push(
        self,
        rate_limit: PendingRateLimit,
        owner: str,
        ids: list[str],
        quota: bool,
        metas: Sequence[TaskMeta],
        to: tuple[int, Outgoing],
    ) -> bool:
        """The rate-limit hit, the quota, the metadata and the messages in one script (LIMIT_RECORD_AND_PUSH);
        True when it pushed them. Otherwise the hit is decided here (401 for a token revoked meanwhile, 429 over
        the limit) and, for a full quota, the owner's finished tasks are pruned and the quota reserved as
        :meth:`reserve` does; the caller then records and pushes."""
        broker_db, out = to
        settings = self.runtime.settings
        reserve = [UNFINISHED + owner, settings.task_max_per_user, time.time(), self.store.ttl] if quota else [""] * 4
        try:
            answer = await once_more_if_single(
                out, self.store.record, metas, (broker_db, out.pushes), [*rate_limit.script_args(), *reserve, *ids]
            )
        except RedisError as exc:
            try:  # the request counts as any other; if the hit fails too, it is answered as such a failure is
                await rate_limit.settle()
            except RedisError as unreachable:
                raise _RateLimitUnreachable(unreachable) from exc
            raise
        code, allowed, remaining, count, *epoch = answer
        decision = self.runtime.limiter.decision(int(allowed), int(remaining), int(count), epoch[0] if epoch else None)
        await rate_limit.decided(decision)
        if int(code) == PUSHED:
            return True
        if quota:
            await self._reserve(owner, ids)
        return False

    async def _undo(self, owner: str, ids: list[str], metas: list[TaskMeta], quota: bool) -> None:
        try:
            if metas:
                await self.store.forget(metas)
            if quota:
                await self.store.release(owner, ids)
        except Exception as exc:  # Redis itself is down: nothing more to undo with
            log.warning("could not undo the records of unpublished tasks: %s", exc)

    async def reserve(self, owner: str, ids: list[str]) -> None:
        """Count ``ids`` (tasks, or a workflow's id: one per workflow) as the owner's unfinished work; 429
        beyond MALLOPS_TASK_MAX_PER_USER."""
        await self._reserve(owner, ids)

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
            if meta is not None and meta.get("status") in FINAL_STATES
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
                flows = session.execute(select(Workflow.id, Workflow.status).where(Workflow.id.in_(task_ids))).all()
        except Exception as exc:
            log.warning("cannot read task history for the quota: %s", exc)
            return set()
        # a workflow counts once against the quota (its id is the member) until it is finished
        finished = {row.id for row in flows if row.status in WORKFLOW_FINAL_STATES}
        return finished | {row.task_id for row in rows if row.state in FINAL_STATES}


def _metas(items: Sequence[Prepared], owner: str, retry_of: str | None) -> list[TaskMeta]:
    """The gateway's metadata of the tasks about to be published."""
    now = dt.datetime.now(dt.UTC)
    return [
        TaskMeta(item.task_id, item.spec.name, item.spec.queue, owner, item.args, item.kwargs, now, retry_of)
        for item in items
    ]


def _headers(owner: str, retry_of: str | None) -> dict[str, str]:
    """The message headers mallops adds to a submission's messages."""
    headers = {OWNER_HEADER: owner}
    if retry_of:  # the history keeps which task a retry repeats
        headers[RETRY_OF_HEADER] = retry_of
    request_id = request_id_var.get()
    if request_id:  # the worker's log lines and the history name the request that submitted it
        headers[REQUEST_ID_HEADER] = request_id
    return headers
