"""Per-token rate limit: at most ``MALLOPS_RATE_LIMIT_PER_MINUTE`` requests in any 60 s, in Redis.

A sliding-window counter: the count of the current minute plus the previous minute's count weighted
by how much of it still lies inside the last 60 s. One pipelined round trip per request (INCR,
EXPIRE, GET); a refused request is not counted. Shared by every gateway process using the same Redis.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import redis.asyncio as aioredis

WINDOW = 60
KEY = "mallops:gw:rate:{name}:{window}"


@dataclass(frozen=True)
class Decision:
    allowed: bool
    limit: int
    remaining: int
    retry_after: int


class RateLimiter:
    def __init__(self, client: aioredis.Redis[str], per_minute: int) -> None:
        self._client = client
        self.limit = per_minute

    async def hit(self, name: str, now: float | None = None) -> Decision:
        now = time.time() if now is None else now
        window = int(now // WINDOW)
        elapsed = now - window * WINDOW
        current_key = KEY.format(name=name, window=window)
        previous_key = KEY.format(name=name, window=window - 1)
        async with self._client.pipeline(transaction=False) as pipe:
            pipe.incr(current_key)
            pipe.expire(current_key, 2 * WINDOW)
            pipe.get(previous_key)
            current, _, previous_raw = await pipe.execute()
        previous = int(previous_raw or 0)
        weight = (WINDOW - elapsed) / WINDOW
        estimate = previous * weight + int(current)
        if estimate <= self.limit:
            return Decision(True, self.limit, max(0, math.floor(self.limit - estimate)), 0)
        await self._client.decr(current_key)
        return Decision(False, self.limit, 0, _retry_after(previous, int(current) - 1, elapsed, self.limit))


def _retry_after(previous: int, current: int, elapsed: float, limit: int) -> int:
    """Seconds until one more request fits, assuming no other request arrives meanwhile."""
    if current + 1 > limit or previous == 0:
        return max(1, math.ceil(WINDOW - elapsed))
    # previous * (WINDOW - t) / WINDOW + current + 1 <= limit  ->  t >= WINDOW * (1 - (limit - current - 1) / previous)
    t = WINDOW * (1 - (limit - current - 1) / previous)
    return max(1, math.ceil(t - elapsed))
