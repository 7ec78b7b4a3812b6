"""The base class of every mallops Celery task and the helper that registers catalog tasks.

Cross-cutting behaviour lives here so that task bodies stay thin (load by id, call a plain function,
return a small JSON value):

- arguments are validated against the task's catalog model before the body runs;
- transient errors (connections, timeouts, SMTP 4xx, :class:`TransientError`) are retried up to
  ``MALLOPS_TASK_MAX_RETRIES`` times with exponential backoff from ``MALLOPS_TASK_RETRY_BACKOFF``
  seconds plus jitter; every other exception fails the task at once, type and message kept;
- poison messages are capped: a message is put back on its queue when the worker process running it
  dies (acks_late, reject_on_worker_lost), which Celery would do forever for a message that kills its
  worker every time. Each run of a *redelivered* message is counted in Redis (``INCR`` with a TTL,
  per task id and attempt; a first delivery costs nothing); the run after
  ``MALLOPS_TASK_MAX_DELIVERIES`` runs does not call the body: it records the message in the
  dead letters (:mod:`shared.dead_letter_store`) and fails the task with
  :class:`PoisonMessage`, so the history shows it as FAILURE with the reason;
- a soft time limit is also checked at every PROGRESS update: Celery's own (a timer in the worker's main
  process that signals the pool process) is best effort, and is missed now and then (celery/celery#6873)
  or not there at all (the threads pool); a task that reports progress stops at its next report past
  the limit with the same :class:`SoftTimeLimitExceeded`.
"""

from __future__ import annotations

import json
import logging
import random
import smtplib
import socket
import sys
import time
from collections.abc import Callable
from typing import Any

import redis.exceptions
from celery import Celery, Task
from celery.exceptions import Reject, Retry, SoftTimeLimitExceeded
from pydantic import ValidationError

from shared.cache import redis_client
from shared.catalog import CATALOG, TaskSpec
from shared.celery_extensions import dead_letters, events, workflow_steps
from shared.celery_extensions.config import app_settings
from shared.contracts import DELIVERIES_PREFIX, OWNER_HEADER, TaskState
from shared.errors import PermanentError, TransientError
from shared.settings import Settings

log = logging.getLogger("mallops.tasks")

# Celery's protocol-2 headers, read back from a running task's request to keep its message as a dead letter
PROTOCOL_HEADERS = (
    "shadow",
    "eta",
    "expires",
    "group",
    "group_index",
    "timelimit",
    "root_id",
    "parent_id",
    "argsrepr",
    "kwargsrepr",
    "origin",
    "ignore_result",
)


class InvalidTaskArguments(PermanentError, ValueError):
    """The message's arguments do not fit the task's catalog model (one line per bad field).

    Raised instead of pydantic's ValidationError, which does not survive the result backend's JSON."""


class PoisonMessage(PermanentError):
    """The message's worker died in each of its last runs: it was dead-lettered instead of run again."""


def describe_validation_error(exc: ValidationError) -> str:
    """``field: problem; other.field: problem`` for a pydantic ValidationError."""
    problems = []
    for error in exc.errors(include_url=False):
        where = ".".join(str(part) for part in error["loc"]) or "arguments"
        problems.append(f"{where}: {error['msg']}")
    return "; ".join(problems)


_TRANSIENT_TYPES: tuple[type[BaseException], ...] = (
    TransientError,
    ConnectionError,
    TimeoutError,
    socket.timeout,
    smtplib.SMTPServerDisconnected,
    smtplib.SMTPConnectError,
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
)


def is_transient(exc: BaseException) -> bool:
    """Whether a retry may succeed where this attempt failed."""
    if isinstance(exc, PermanentError | SoftTimeLimitExceeded):
        return False
    if isinstance(exc, smtplib.SMTPRecipientsRefused):
        codes = [code for code, _ in exc.recipients.values()]
        return bool(codes) and all(400 <= code < 500 for code in codes)
    if isinstance(exc, smtplib.SMTPResponseException):
        return 400 <= exc.smtp_code < 500
    if isinstance(exc, OSError) and not isinstance(exc, FileNotFoundError | PermissionError):
        return True  # refused or reset connections, unreachable hosts
    # SQLAlchemy's errors only when a task has imported it: a worker does not load it for this (idle memory)
    database = sys.modules.get("sqlalchemy.exc")
    if database is not None and isinstance(
        exc, database.OperationalError | database.DisconnectionError | database.TimeoutError
    ):
        return True
    return isinstance(exc, _TRANSIENT_TYPES)


def retry_delay(retries: int, base: float, rng: random.Random | None = None) -> float:
    """Exponential backoff (base, 2*base, 4*base, ...) with up to 25 % jitter either way."""
    jitter = (rng or random).uniform(0.75, 1.25)
    return float(base * (2**retries) * jitter)


# A workflow step whose failure the database refused is run again after at most this long (shared/workflows.py)
MAX_RECORD_RETRY_DELAY = 300.0


class MallopsTask(Task):  # type: ignore[misc]
    """Base task: validates arguments against its catalog spec and classifies failures."""

    spec: TaskSpec
    abstract = True

    @property
    def settings(self) -> Settings:
        """The settings of the app this task runs in."""
        return app_settings(self.app)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self.request.mallops_started = time.monotonic()  # the request context is this run's own
        step = workflow_steps.step_of(self.request)
        if step is None:
            return self._checked_run(args, kwargs, None)
        try:
            return self._checked_run(args, kwargs, step)
        except (Retry, Reject):
            raise
        except Exception as exc:  # the step's final failure: the workflow stops here (shared/workflows.py)
            settings = self.settings
            if workflow_steps.failed(settings, step, self.request.id, exc):
                raise
            # The database refused the record: the step is run again later (steps are idempotent) rather than
            # its message acknowledged with the workflow left at STARTED for good.
            delay = min(retry_delay(self.request.retries, settings.task_retry_backoff), MAX_RECORD_RETRY_DELAY)
            log.warning(
                "%s[%s]: the failure of workflow step %r could not be recorded; the step runs again in %.1fs",
                self.name,
                self.request.id,
                step[1],
                delay,
            )
            raise self._retry_or_requeue(exc, delay, self.request.retries + 1) from exc

    def _checked_run(self, args: tuple[Any, ...], kwargs: dict[str, Any], step: tuple[str, str] | None) -> Any:
        """Cap deliveries, validate, run; a workflow step records its start and success around the body."""
        settings = self.settings
        deliveries = self.delivery_count(settings)
        if deliveries > settings.task_max_deliveries:
            reason = (
                f"dead-lettered: delivered {deliveries} times and its worker died during each of the "
                f"{deliveries - 1} runs (MALLOPS_TASK_MAX_DELIVERIES={settings.task_max_deliveries}); "
                "not run again, kept as a dead letter"
            )
            self.dead_letter(settings, reason, args, kwargs)
            raise PoisonMessage(reason)
        try:
            validated = self.spec.validate(args, kwargs)
        except ValidationError as exc:
            raise InvalidTaskArguments(
                f"invalid arguments for {self.spec.name}: {describe_validation_error(exc)}"
            ) from None
        try:
            if step is None:
                return self.run(**validated.model_dump())
            workflow_steps.started(settings, step, self.request.id)
            result = self.run(**validated.model_dump())
            workflow_steps.succeeded(self.app, settings, step, self.request.id, result)
            return result
        except Retry:
            raise
        except Exception as exc:
            if is_transient(exc) and self.request.retries < settings.task_max_retries:
                delay = retry_delay(self.request.retries, settings.task_retry_backoff)
                log.warning(
                    "%s[%s] transient %s: %s; retry %d in %.1fs",
                    self.name,
                    self.request.id,
                    type(exc).__name__,
                    exc,
                    self.request.retries + 1,
                    delay,
                )
                raise self._retry_or_requeue(exc, delay, settings.task_max_retries) from exc
            raise

    def _retry_or_requeue(self, exc: Exception, delay: float, max_retries: int) -> Exception:
        """The exception to raise for a retry of this task in ``delay`` seconds: Celery's Retry, or, when the
        retry cannot be published (the broker is down), a Reject that puts the message back: Celery would
        reject it *without* requeue and the task would be lost."""
        try:
            return self.retry(exc=exc, countdown=delay, max_retries=max_retries, throw=False)  # type: ignore[no-any-return]
        except Reject as rejected:
            log.warning(
                "%s[%s]: its retry could not be published (%s); requeueing the message",
                self.name,
                self.request.id,
                rejected.reason,
            )
            requeue: Exception = Reject(rejected.reason, requeue=True)
            return requeue

    def delivery_count(self, settings: Settings) -> int:
        """Which delivery of this message (and attempt) is running: 1 for a first delivery, else 1 + the
        runs of redelivered copies so far, this one included. Redis errors count as a first delivery:
        running a task is better than failing it because the counter cannot be reached."""
        request = self.request
        delivery = request.delivery_info or {}
        if not delivery.get("redelivered") or not request.id:
            return 1
        key = f"{DELIVERIES_PREFIX}{request.id}:{request.retries or 0}"
        ttl = max(86400, settings.broker_visibility_timeout * (settings.task_max_deliveries + 2))
        try:
            pipe = redis_client(settings).pipeline(transaction=True)
            pipe.incr(key)
            pipe.expire(key, ttl)
            runs, _ = pipe.execute()
        except redis.exceptions.RedisError as exc:
            log.warning("%s[%s]: could not count its delivery (%s); running it", self.name, request.id, exc)
            return 1
        return int(runs) + 1

    def dead_letter(self, settings: Settings, reason: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        """Keep the message in the dead letters (:mod:`~shared.celery_extensions.dead_letters`): its
        protocol-2 headers and body as the worker got them, so that it can be looked at and replayed."""
        request = self.request
        headers = {name: getattr(request, name, None) for name in PROTOCOL_HEADERS}
        headers.update(lang="py", task=self.name, id=request.id, retries=request.retries or 0)
        headers[OWNER_HEADER] = request.get(OWNER_HEADER)
        embed = {"callbacks": None, "errbacks": None, "chain": None, "chord": None}
        body = json.dumps([list(args), kwargs, embed], default=str)
        queue = (request.delivery_info or {}).get("routing_key") or getattr(self, "queue", None)
        dead_letters.record(
            reason,
            url=settings.cache_redis_url,
            max_body_bytes=settings.max_body_bytes,
            queue=queue,
            headers=headers,
            body=body,
            exception="PoisonMessage",
            content_type="application/json",
            content_encoding="utf-8",
        )

    def update_state(
        self, task_id: str | None = None, state: str | None = None, meta: Any = None, **kwargs: Any
    ) -> None:
        """Store the state as Celery does; a PROGRESS of the running task also becomes a lifecycle event.

        PROGRESS is informational: when the result backend cannot be reached it is logged and skipped,
        rather than failing (and retrying) the work the task is doing."""
        try:
            super().update_state(task_id=task_id, state=state, meta=meta, **kwargs)
        except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as exc:
            if state != TaskState.PROGRESS:
                raise
            log.warning("%s[%s]: progress not stored (%s)", self.name, self.request.id, exc)
        if state == TaskState.PROGRESS and (task_id is None or task_id == self.request.id):
            self.stop_past_soft_time_limit()
            progress = meta if isinstance(meta, dict) else {}
            lifecycle = events.for_app(self.app)
            if lifecycle is not None:
                lifecycle.emit_progress(self, progress.get("current"), progress.get("total"))

    def stop_past_soft_time_limit(self) -> None:
        """Raise :class:`SoftTimeLimitExceeded` when this run has passed its soft time limit (the message's,
        else the task's, else the app's), as Celery's own timer would have."""
        started = getattr(self.request, "mallops_started", None)
        if started is None:
            return
        limits = self.request.timelimit or (None, None)
        soft = (limits[1] if len(limits) > 1 else None) or self.soft_time_limit or self.app.conf.task_soft_time_limit
        if soft and time.monotonic() - started > float(soft):
            raise SoftTimeLimitExceeded(f"soft time limit ({soft} s) exceeded")


def register(app: Celery, name: str, fn: Callable[..., Any], **options: Any) -> MallopsTask:
    """Register ``fn`` as the body of catalog task ``name`` on ``app``.

    ``fn`` takes the task instance first (bound) and the validated arguments as keywords.
    """
    spec = CATALOG[name]
    # the catalog model validates (and fills defaults); Celery's own signature check would refuse a
    # retry of a message that left out an argument with a default
    options.setdefault("typing", False)
    task: MallopsTask = app.task(
        name=spec.celery_name, base=MallopsTask, bind=True, queue=spec.queue, spec=spec, **options
    )(fn)
    return task
