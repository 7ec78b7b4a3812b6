"""RedBeat's scheduler, made to ride out a Redis outage instead of exiting.

RedBeat extends its lock at the start of every tick with a plain Redis call; when Redis restarts, that
call raises ConnectionError and the beat process exits (found by tests/reliability). Here a tick that
cannot reach Redis logs (at most every 30 s) and tries again a second later. When Redis is back with
the lock (AOF keeps it, with its TTL), ticking goes on; when the lock is gone (the outage outlasted
``MALLOPS_BEAT_LOCK_TIMEOUT``), beat takes it again unless another beat holds it, and fires nothing
until it does, so two beats still never fire the same entry.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import redis.exceptions
from redbeat.schedulers import RedBeatScheduler

log = logging.getLogger("mallops.beat")

RETRY_SECONDS = 1.0
WARN_EVERY = 30.0


class MallopsScheduler(RedBeatScheduler):  # type: ignore[misc]
    _warned_at = 0.0

    def tick(self, min: Any = min, **kwargs: Any) -> float:
        try:
            return float(super().tick(min=min, **kwargs))
        except redis.exceptions.LockNotOwnedError:
            if self.lock is not None and self.lock.acquire(blocking=False):
                log.warning("beat: the RedBeat lock had expired during an outage; took it again")
                return 0.0
            self._warn("beat: another beat holds the RedBeat lock now; standing by")
            return float(self.max_interval)
        except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as exc:
            self._warn(f"beat: Redis cannot be reached ({exc}); trying again every {RETRY_SECONDS:g} s")
            return RETRY_SECONDS

    def _warn(self, message: str) -> None:
        now = time.monotonic()
        if now - self._warned_at > WARN_EVERY:
            self._warned_at = now
            log.warning(message)
