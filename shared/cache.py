"""Redis clients for everything that is not the broker: cache, event stream, quotas, access-log buffer.

The key names are contracts (:mod:`shared.contracts`).
"""

from __future__ import annotations

import functools
from typing import Any

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


#: what identifies a Redis server in a connection pool's keyword arguments (the database does not)
SERVER_KEYS = ("host", "port", "path", "username", "password")


def same_server(ours: Any, theirs: Any) -> bool:
    """Whether two redis-py connection pools (sync or asyncio) connect to the same server, whatever their
    databases: then one script can write to both."""
    return bool(
        _redis_class(ours.connection_class) is _redis_class(theirs.connection_class)
        and all(ours.connection_kwargs.get(k) == theirs.connection_kwargs.get(k) for k in SERVER_KEYS)
    )


def _redis_class(connection_class: type) -> type:
    """redis-py's own class of a connection class (kombu's event loop subclasses it)."""
    return next((c for c in connection_class.__mro__ if c.__module__.startswith("redis.")), connection_class)
