"""Durable revocation: a revoked task id is kept in Redis, so that a worker that starts later skips it too.

Celery's revoke is a broadcast: only the workers online at that moment hear it, and they remember it in
memory (or in a ``--statedb`` file of their own). A task revoked while its queue's workers were down, or
redelivered to a worker started since, would run anyway. The gateway therefore also records the id in the
sorted set :data:`REVOKED_KEY` of the cache Redis (score: when it may be forgotten, after
``MALLOPS_TASK_META_TTL_SECONDS``) and bumps :data:`REVOKED_VERSION_KEY` (both in :mod:`shared.contracts`).

Every worker checks each task it receives against its copy of that set and, if the id is there, adds it to
Celery's own revoked set, so Celery discards it exactly as after a broadcast: state REVOKED, the
``task_revoked`` signal, message acknowledged. The copy is loaded before the first task a worker receives
and refreshed at most every :data:`REFRESH_SECONDS` (one GET of the version; the set only when it changed),
so the check costs no round trip per message; a revoke within that second reaches the online workers by
the broadcast anyway. If Redis cannot be asked, the last copy is used (revocation is best effort, as in
Celery).
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import redis
from celery import signals

from shared.cache import consumer_loop_client
from shared.contracts import REVOKED_KEY, REVOKED_VERSION_KEY

log = logging.getLogger("mallops.revocations")

REFRESH_SECONDS = 1.0


def queue_revoke(pipe: Any, task_id: str, ttl: float, now: float | None = None) -> None:
    """Queue the commands that record a revocation on a (sync or asyncio) Redis pipeline."""
    now = time.time() if now is None else now
    pipe.zadd(REVOKED_KEY, {task_id: now + ttl})
    pipe.zremrangebyscore(REVOKED_KEY, "-inf", now)  # forget the expired ones
    pipe.incr(REVOKED_VERSION_KEY)  # incremented at every revoke


class RevokedIds:
    """A worker's copy of the durable revocations, refreshed when their version changes."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.ids: frozenset[str] = frozenset()
        self.version: bytes | None = None
        self.checked_at: float | None = None
        self._lock = threading.Lock()

    def __contains__(self, task_id: object) -> bool:
        now = time.monotonic()
        with self._lock:
            if self.checked_at is None or now - self.checked_at >= REFRESH_SECONDS:
                self.checked_at = now
                self._refresh()
            return task_id in self.ids

    def _refresh(self) -> None:
        client = consumer_loop_client(self.url)
        try:
            version = client.get(REVOKED_VERSION_KEY)
            if version is not None and version == self.version:
                return
            members = client.zrangebyscore(REVOKED_KEY, time.time(), "+inf")
        except redis.RedisError as exc:
            log.warning("cannot read the revoked task ids (%s); using the last %d known", exc, len(self.ids))
            return
        self.ids = frozenset(member.decode() for member in members)
        self.version = version


def _on_received(sender: Any = None, request: Any = None, **_: Any) -> None:
    from celery.worker import state

    from shared.celery_extensions.config import find_extensions

    extensions = find_extensions(getattr(sender, "app", None))
    task_id = getattr(request, "id", None)
    if not task_id or extensions is None or task_id in state.revoked:
        return
    if task_id in extensions.revoked:
        log.info("task %s was revoked before this worker received it; discarding it", task_id)
        state.revoked.add(task_id)


def connect() -> None:
    """Check every task a worker receives against its app's copy of the durable revocations."""
    signals.task_received.connect(_on_received, weak=False, dispatch_uid="mallops.revocations.received")
