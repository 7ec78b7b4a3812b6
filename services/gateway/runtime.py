"""Everything the gateway builds once per process: the Celery app, the Redis clients, caches, metrics.

Built by :func:`services.gateway.app.create_app`'s lifespan and kept on ``app.state.runtime``; no request
creates a connection pool, an app or a registry of its own.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import redis.asyncio as aioredis
from celery import Celery
from sqlalchemy.orm import Session, sessionmaker

from services.gateway.accesslog import AccessLogBuffer
from services.gateway.auth import TokenCache
from services.gateway.broker import TaskPublisher, task_publisher
from services.gateway.metrics import GatewayMetrics
from services.gateway.ratelimit import AUTH_FAILURES_KEY, RateLimiter
from services.gateway.task_view import FinishedRecords
from shared.celery_app import create_celery_app
from shared.db import session_factory
from shared.settings import Settings

log = logging.getLogger("mallops.gateway")

# How long a dead Redis or broker may keep a request waiting: short, so that the answer is a fast 503.
CONNECT_TIMEOUT = 1.0
SOCKET_TIMEOUT = 5.0


def create_gateway_celery(settings: Settings) -> Celery:
    """The gateway's one Celery app: it builds task messages (published by :mod:`services.gateway.broker`)
    and sends control commands (revoke); it never runs or waits on a task.

    The result backend is disabled on purpose: with the Redis backend, ``send_task`` subscribes this
    process to every submitted task's result channel (``on_task_call``), which costs a round trip per
    task and piles up subscriptions nobody reads. The gateway reads results itself, asynchronously,
    from the result backend's keys (:mod:`services.gateway.taskstore`).
    """
    app = create_celery_app("gateway", settings)
    transport_options: dict[str, Any] = dict(app.conf.broker_transport_options or {})
    transport_options.update(socket_connect_timeout=CONNECT_TIMEOUT, socket_timeout=SOCKET_TIMEOUT)
    app.conf.update(
        result_backend="disabled",
        broker_transport_options=transport_options,
        broker_connection_timeout=CONNECT_TIMEOUT,
        broker_connection_retry=False,
        broker_connection_max_retries=1,
        broker_pool_limit=16,
    )
    return app


def async_redis(url: str) -> aioredis.Redis[str]:
    return aioredis.Redis.from_url(
        url,
        decode_responses=True,
        socket_connect_timeout=CONNECT_TIMEOUT,
        socket_timeout=SOCKET_TIMEOUT,
        health_check_interval=30,
        max_connections=64,
    )


@dataclass
class Runtime:
    settings: Settings
    celery: Celery
    publisher: TaskPublisher  # task messages onto the broker (from the event loop on Redis)
    cache: aioredis.Redis[str]  # cache db: task metadata, quotas, idempotency, rate limits, access log
    results: aioredis.Redis[str]  # Celery's result backend db, read only
    sessions: sessionmaker[Session]
    tokens: TokenCache
    limiter: RateLimiter
    auth_failures: RateLimiter  # per client address, MALLOPS_AUTH_FAILURES_PER_MINUTE
    metrics: GatewayMetrics
    access_log: AccessLogBuffer
    finished_records: FinishedRecords = field(default_factory=FinishedRecords)
    console: dict[str, Any] = field(default_factory=dict)  # the console's sessions store and overview cache

    @classmethod
    def build(cls, settings: Settings) -> Runtime:
        cache = async_redis(settings.cache_redis_url)
        sessions = session_factory(settings)
        celery = create_gateway_celery(settings)
        return cls(
            settings=settings,
            celery=celery,
            publisher=task_publisher(celery, async_redis),
            cache=cache,
            results=async_redis(settings.celery_result_backend),
            sessions=sessions,
            tokens=TokenCache(sessions, ttl=settings.token_cache_seconds),
            limiter=RateLimiter(cache, settings.rate_limit_per_minute),
            auth_failures=RateLimiter(cache, settings.auth_failures_per_minute, AUTH_FAILURES_KEY),
            metrics=GatewayMetrics(),
            access_log=AccessLogBuffer(cache),
        )

    async def start(self) -> None:
        self.access_log.start()

    async def close(self) -> None:
        await self.access_log.stop()
        await self.cache.aclose()  # type: ignore[attr-defined]  # types-redis predates aclose
        await self.results.aclose()  # type: ignore[attr-defined]
        await self.publisher.aclose()
        self.celery.close()
