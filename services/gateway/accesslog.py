"""The access-log buffer: every request is appended, in the background, to the Redis list
``shared.contracts.ACCESS_LOG_BUFFER`` that the reports worker's process_access_logs drains.

Requests never wait for Redis: entries go into a bounded in-process queue and a background task RPUSHes
them in pipelined batches. If Redis is down, entries wait (up to ``MAX_PENDING``, then the oldest are
dropped and counted) and the failure is logged at most once a minute.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import logging
import time
from typing import Any

import redis.asyncio as aioredis

from shared.contracts import ACCESS_LOG_BUFFER

log = logging.getLogger("mallops.gateway.access")

MAX_PENDING = 100_000
BATCH = 1_000
FLUSH_INTERVAL = 0.2


class AccessLogBuffer:
    def __init__(self, client: aioredis.Redis[str], key: str = ACCESS_LOG_BUFFER) -> None:
        self._client = client
        self._key = key
        self._pending: collections.deque[str] = collections.deque(maxlen=MAX_PENDING)
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._last_error_log = 0.0
        self.dropped = 0

    def append(self, entry: dict[str, Any]) -> None:
        if len(self._pending) == MAX_PENDING:
            self.dropped += 1
        self._pending.append(json.dumps(entry, separators=(",", ":")))
        if len(self._pending) >= BATCH:
            self._wake.set()

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="mallops-access-log")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.flush(), timeout=2.0)

    async def _run(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=FLUSH_INTERVAL)
            self._wake.clear()
            try:
                await self.flush()
            except Exception as exc:  # Redis down: keep the entries, try again later
                now = time.monotonic()
                if now - self._last_error_log > 60:
                    self._last_error_log = now
                    log.warning(
                        "cannot write the access log to Redis (%s); %d entries waiting", exc, len(self._pending)
                    )
                await asyncio.sleep(1.0)

    async def flush(self) -> int:
        """Push everything pending; returns how many entries were written."""
        written = 0
        while self._pending:
            batch = [self._pending.popleft() for _ in range(min(BATCH, len(self._pending)))]
            try:
                await self._client.rpush(self._key, *batch)
            except Exception:
                self._pending.extendleft(reversed(batch))
                raise
            written += len(batch)
        return written
