"""Durable revocation: a revoked task id is kept in Redis, so that a worker that starts later skips it too.

Celery's revoke is a broadcast: only the workers online at that moment hear it, and they remember it in
memory (or in a ``--statedb`` file of their own). A task revoked while its queue's workers were down, or
redelivered to a worker started since, would run anyway. The gateway therefore also records the id under
:func:`revoked_key` in the cache Redis for ``MALLOPS_TASK_META_TTL_SECONDS``; every worker checks each task
it receives against that key (one EXISTS) and, if present, adds the id to Celery's own revoked set, so
Celery discards it exactly as after a broadcast: state REVOKED, the ``task_revoked`` signal, message
acknowledged. If Redis cannot be asked, the task runs (revocation is best effort, as in Celery).
"""

from __future__ import annotations

import logging
from typing import Any

import redis
from celery import Celery, signals

from shared.cache import KEY_PREFIX, consumer_loop_client
from shared.settings import Settings

log = logging.getLogger("mallops.revocations")

REVOKED_PREFIX = f"{KEY_PREFIX}revoked:"


def revoked_key(task_id: str) -> str:
    """Where a revoked task id is kept (value ``1``, with a TTL)."""
    return f"{REVOKED_PREFIX}{task_id}"


_url: str | None = None  # the cache Redis of the settings given to install()


def _on_received(sender: Any = None, request: Any = None, **_: Any) -> None:
    from celery.worker import state

    task_id = getattr(request, "id", None)
    if not task_id or task_id in state.revoked:
        return
    if _url is None:
        return
    try:
        revoked = bool(consumer_loop_client(_url).exists(revoked_key(task_id)))
    except redis.RedisError as exc:
        log.warning("cannot check whether task %s was revoked: %s", task_id, exc)
        return
    if revoked:
        log.info("task %s was revoked before this worker received it; discarding it", task_id)
        state.revoked.add(task_id)


def install(app: Celery, settings: Settings) -> None:
    """Check every task a worker of this process receives against the durable revocations."""
    global _url
    _url = settings.cache_redis_url
    signals.task_received.connect(_on_received, weak=False, dispatch_uid="mallops.revocations.received")
