"""RedBeat's scheduler, made to ride out a Redis outage instead of exiting.

RedBeat extends its lock at the start of every tick with a plain Redis call; when Redis restarts, that
call raises ConnectionError and the beat process exits (found by tests/reliability). Here a tick that
cannot reach Redis logs (at most every 30 s) and tries again a second later. When Redis is back with
the lock (AOF keeps it, with its TTL), ticking goes on; when the lock is gone (the outage outlasted
``MALLOPS_BEAT_LOCK_TIMEOUT``), beat takes it again unless another beat holds it, and fires nothing
until it does, so two beats still never fire the same entry.

Every tick also publishes the deferred one-off runs that are due (:func:`shared.deferred.publish_due`,
from the database; at most ``MALLOPS_BEAT_MAX_INTERVAL`` late). Only the beat holding the lock ticks,
and each run is claimed in the database as well, so a run is published once even with two beats.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import redis
import redis.exceptions
from redbeat.schedulers import RedBeatScheduler
from sqlalchemy.orm import Session, sessionmaker

from shared import deferred
from shared.db import session_factory
from shared.settings import Settings, get_settings

log = logging.getLogger("mallops.beat")

RETRY_SECONDS = 1.0
WARN_EVERY = 30.0


class MallopsScheduler(RedBeatScheduler):  # type: ignore[misc]
    _warned_at = 0.0
    _deferred_warned_at = 0.0
    #: the process's settings; tests may set another before the first tick
    settings: Settings | None = None
    #: when deferred runs are due: the wall clock (shifted by MALLOPS_CLOCK_OFFSET_SECONDS); injectable
    clock: deferred.Clock | None = None
    _sessions: sessionmaker[Session] | None = None
    _cache: redis.Redis[str] | None = None

    def tick(self, min: Any = min, **kwargs: Any) -> float:
        try:
            interval = float(super().tick(min=min, **kwargs))
            self.publish_deferred()
            return interval
        except redis.exceptions.LockNotOwnedError:
            if self.lock is not None and self.lock.acquire(blocking=False):
                log.warning("beat: the RedBeat lock had expired during an outage; took it again")
                return 0.0
            self._warn("beat: another beat holds the RedBeat lock now; standing by")
            return float(self.max_interval)
        except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as exc:
            self._warn(f"beat: Redis cannot be reached ({exc}); trying again every {RETRY_SECONDS:g} s")
            return RETRY_SECONDS

    def publish_deferred(self) -> list[str]:
        """Publish the deferred runs that are due; a database or broker failure is logged and retried
        at the next tick (the runs stay SCHEDULED)."""
        settings = self.settings = self.settings or get_settings()
        clock = self.clock = self.clock or deferred.settings_clock(settings)
        try:
            if self._sessions is None:
                self._sessions = session_factory(settings)
            if self._cache is None:
                self._cache = redis.Redis.from_url(settings.cache_redis_url, decode_responses=True)
            return deferred.publish_due(self._sessions, self.app, self._cache, settings, clock())
        except Exception as exc:  # the database, Redis or the broker is down: try again next tick
            now = time.monotonic()
            if now - self._deferred_warned_at > WARN_EVERY:
                self._deferred_warned_at = now
                log.warning("beat: cannot publish deferred runs now (%s: %s); retrying", type(exc).__name__, exc)
            return []

    def close(self) -> None:
        if self._cache is not None:
            self._cache.close()
            self._cache = None
        super().close()

    def _warn(self, message: str) -> None:
        now = time.monotonic()
        if now - self._warned_at > WARN_EVERY:
            self._warned_at = now
            log.warning(message)
