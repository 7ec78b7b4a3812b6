"""Per-token rate limit: at most ``MALLOPS_RATE_LIMIT_PER_MINUTE`` requests in any 60 s, in Redis.

An exact sliding log: each token has a sorted set of the times of its accepted requests in the last
60 s. One Lua script per request (one round trip, atomic, so concurrent requests and several gateway
processes never let more through than the limit) drops entries older than the window, counts the rest,
and records the request if it fits; a refused request is not recorded. Times come from the Redis
server's clock, so gateways on several machines agree. At most ``limit`` entries per token.

(A sliding-window *counter*, the usual cheaper approximation, let 25 of a burst of 80 through a limit
of 20 when the burst straddled a minute boundary on a slow machine.)
"""

from __future__ import annotations

import math
import uuid
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis

from shared.contracts import GATEWAY_KEY_PREFIX

WINDOW = 60
KEY = GATEWAY_KEY_PREFIX + "rate:{name}"
AUTH_FAILURES_KEY = GATEWAY_KEY_PREFIX + "authfail:{name}"  # per client address: requests without a valid token

# A Lua function of (the token's log, window seconds, limit, a unique member for this request): allowed (1/0),
# remaining, retry-after in ms. Also run inside the gateway's submission script (services/gateway/taskstore.py).
HIT_FUNCTION = """
local function rate_limit_hit(key, window_s, limit_s, member)
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  local window = tonumber(window_s) * 1000
  local limit = tonumber(limit_s)
  redis.call('ZREMRANGEBYSCORE', key, '-inf', now - window)
  local count = redis.call('ZCARD', key)
  if count < limit then
    redis.call('ZADD', key, now, member)
    redis.call('PEXPIRE', key, window)
    return 1, limit - count - 1, 0
  end
  local oldest = redis.call('ZRANGE', key, 0, 0, 'WITHSCORES')
  local wait = window
  if oldest[2] then wait = tonumber(oldest[2]) + window - now end
  return 0, 0, wait
end
"""

# KEYS[1] the token's log, KEYS[2] (optional) a key to read in the same round trip; ARGV: window seconds,
# limit, a unique member for this request. Returns {allowed (1/0), remaining, retry-after in ms, KEYS[2]'s value}.
_HIT = (
    HIT_FUNCTION
    + """
local read = false
if KEYS[2] then read = redis.call('GET', KEYS[2]) end
local allowed, remaining, wait = rate_limit_hit(KEYS[1], ARGV[1], ARGV[2], ARGV[3])
return {allowed, remaining, wait, read}
"""
)


# KEYS[1] the log; ARGV: window seconds, limit. Returns {full (1/0), retry-after in milliseconds}; records nothing.
_PEEK = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local window = tonumber(ARGV[1]) * 1000
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
if redis.call('ZCARD', KEYS[1]) < tonumber(ARGV[2]) then return {0, 0} end
local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
local wait = window
if oldest[2] then wait = tonumber(oldest[2]) + window - now end
return {1, wait}
"""


@dataclass(frozen=True)
class Decision:
    allowed: bool
    limit: int
    remaining: int
    retry_after: int
    read: str | None = None  # the value of the key :meth:`RateLimiter.hit` was asked to read


class RateLimiter:
    def __init__(self, client: aioredis.Redis[str], per_minute: int, key: str = KEY) -> None:
        self._client = client
        self.limit = per_minute
        self._key = key
        self._hit: Any = client.register_script(_HIT)
        self._peek: Any = client.register_script(_PEEK)

    async def peek(self, name: str) -> Decision:
        """Whether one more would be allowed, without recording anything."""
        full, wait_ms = await self._peek(keys=[self._key.format(name=name)], args=[WINDOW, self.limit])
        if not int(full):
            return Decision(True, self.limit, 0, 0)
        return Decision(False, self.limit, 0, max(1, math.ceil(int(wait_ms) / 1000)))

    async def hit(self, name: str, read: str | None = None) -> Decision:
        """Record a request of ``name`` if it fits; also read the key ``read`` in the same round trip."""
        keys = [self._key.format(name=name), *([read] if read else [])]
        allowed, remaining, wait_ms, *value = await self._hit(keys=keys, args=self.hit_args(name)[1:])
        return self.decision(int(allowed), int(remaining), int(wait_ms), value[0] if value else None)

    def hit_args(self, name: str) -> list[Any]:
        """``rate_limit_hit``'s arguments for a request of ``name``: its log, window, limit, a unique member."""
        return [self._key.format(name=name), WINDOW, self.limit, uuid.uuid4().hex]

    def decision(self, allowed: int, remaining: int, wait_ms: int, read: str | None = None) -> Decision:
        """What ``rate_limit_hit`` answered, as a :class:`Decision`."""
        if allowed:
            return Decision(True, self.limit, remaining, 0, read)
        return Decision(False, self.limit, 0, max(1, math.ceil(wait_ms / 1000)), read)
