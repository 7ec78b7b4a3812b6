"""Redis clients for everything that is not the broker: cache, event stream, quotas, access-log buffer.

The key names are contracts (:mod:`shared.contracts`).
"""

from __future__ import annotations

import functools

import redis

from shared.settings import Settings, get_settings


@functools.lru_cache(maxsize=8)
def _client_for(url: str) -> redis.Redis[str]:
    return redis.Redis.from_url(url, decode_responses=True, health_check_interval=30)


def redis_client(settings: Settings | None = None) -> redis.Redis[str]:
    """This process's pooled client for the cache database (``settings.cache_redis_url``)."""
    return _client_for((settings or get_settings()).cache_redis_url)


@functools.lru_cache(maxsize=8)
def consumer_loop_client(url: str) -> redis.Redis[bytes]:
    """A client with one-second timeouts for the few calls a worker makes inside its consumer loop
    (dead letters, revocation checks): a slow Redis must not stall message consumption. redis-py's pool
    notices a fork and reconnects in the child."""
    return redis.Redis.from_url(url, socket_timeout=1, socket_connect_timeout=1)
