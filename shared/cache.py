"""Redis for everything that is not the broker: cache, event stream, quotas, access-log buffer.

Key names that more than one service uses are defined here and nowhere else.
"""

from __future__ import annotations

import functools

import redis

from shared.settings import Settings, get_settings

KEY_PREFIX = "mallops:"
CACHE_PREFIX = "mallops:cache:"
# The gateway RPUSHes one JSON object per request; process_access_logs drains it. Fields:
# request_id, ts (ISO 8601 UTC), method, path, status, duration_ms, principal, client_ip
ACCESS_LOG_BUFFER = "mallops:access_log"
# Lifecycle events (shared/events.py writes, services/monitor reads with a consumer group)
EVENT_STREAM = "mallops:events"
# Worker liveness: hostname -> JSON {hostname, service, pid, queues, active, processed, last_heartbeat,
# status, concurrency}; written by each worker's heartbeat, read by shared.history.list_workers
WORKERS_KEY = "mallops:workers"
# Poison messages (shared.tasks): runs of a redelivered message, per task id and attempt
# (``mallops:deliveries:<task_id>:<retries>``, an integer with a TTL)
DELIVERIES_PREFIX = "mallops:deliveries:"


def revenue_cache_key(period: str) -> str:
    """Where calculate_monthly_revenue caches a month (``YYYY-MM``): JSON with totals, by_category,
    by_store; expires after an hour."""
    return f"{CACHE_PREFIX}revenue:{period}"


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


def reset_clients() -> None:
    """Forget pooled clients (after fork, or when tests change the settings)."""
    _client_for.cache_clear()
    consumer_loop_client.cache_clear()
