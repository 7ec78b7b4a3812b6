"""The base class of every mallops Celery task and the helper that registers catalog tasks.

Cross-cutting behaviour lives here so that task bodies stay thin (load by id, call a plain function,
return a small JSON value):

- arguments are validated against the task's catalog model before the body runs;
- transient errors (connections, timeouts, SMTP 4xx, :class:`TransientError`) are retried up to
  ``MALLOPS_TASK_MAX_RETRIES`` times with exponential backoff from ``MALLOPS_TASK_RETRY_BACKOFF``
  seconds plus jitter; every other exception fails the task at once, type and message kept.
"""

from __future__ import annotations

import logging
import random
import smtplib
import socket
from collections.abc import Callable
from typing import Any

import redis.exceptions
import sqlalchemy.exc
from celery import Celery, Task
from celery.exceptions import Retry, SoftTimeLimitExceeded
from pydantic import ValidationError

from shared import events
from shared.catalog import CATALOG, TaskSpec
from shared.settings import get_settings

log = logging.getLogger("mallops.tasks")


class TransientError(Exception):
    """Raise from business code for a failure that may go away on its own (retry it)."""


class PermanentError(Exception):
    """Raise from business code for a failure that a retry cannot fix (bad data, invalid input)."""


class InvalidTaskArguments(PermanentError, ValueError):
    """The message's arguments do not fit the task's catalog model (one line per bad field).

    Raised instead of pydantic's ValidationError, which does not survive the result backend's JSON."""


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
    sqlalchemy.exc.OperationalError,
    sqlalchemy.exc.DisconnectionError,
    sqlalchemy.exc.TimeoutError,
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
    return isinstance(exc, _TRANSIENT_TYPES)


def retry_delay(retries: int, base: float, rng: random.Random | None = None) -> float:
    """Exponential backoff (base, 2*base, 4*base, ...) with up to 25 % jitter either way."""
    jitter = (rng or random).uniform(0.75, 1.25)
    return float(base * (2**retries) * jitter)


class MallopsTask(Task):  # type: ignore[misc]
    """Base task: validates arguments against its catalog spec and classifies failures."""

    spec: TaskSpec
    abstract = True

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        try:
            validated = self.spec.validate(args, kwargs)
        except ValidationError as exc:
            raise InvalidTaskArguments(f"invalid arguments for {self.spec.name}: "
                                       f"{describe_validation_error(exc)}") from None
        try:
            return self.run(**validated.model_dump())
        except Retry:
            raise
        except Exception as exc:
            settings = get_settings()
            if is_transient(exc) and self.request.retries < settings.task_max_retries:
                delay = retry_delay(self.request.retries, settings.task_retry_backoff)
                log.warning("%s[%s] transient %s: %s; retry %d in %.1fs", self.name, self.request.id,
                            type(exc).__name__, exc, self.request.retries + 1, delay)
                raise self.retry(exc=exc, countdown=delay, max_retries=settings.task_max_retries) from exc
            raise

    def update_state(self, task_id: str | None = None, state: str | None = None, meta: Any = None,
                     **kwargs: Any) -> None:
        """Store the state as Celery does; a PROGRESS of the running task also becomes a lifecycle event."""
        super().update_state(task_id=task_id, state=state, meta=meta, **kwargs)
        if state == "PROGRESS" and (task_id is None or task_id == self.request.id):
            progress = meta if isinstance(meta, dict) else {}
            events.emit_progress(self, progress.get("current"), progress.get("total"))


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
