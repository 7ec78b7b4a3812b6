"""Redis memory against its limit, read at scrape time (docs/capacity.md).

mallops' Redis runs with ``maxmemory-policy noeviction``: once full it refuses every write, the broker's
included, so the platform stops accepting and finishing tasks. Per Redis server the platform uses (the
broker's when it is Redis, the result backend's, the cache's; one series when they are one server):

- ``mallops_redis_memory_used_bytes{server, roles}``: ``used_memory`` (INFO memory);
- ``mallops_redis_memory_max_bytes{server, roles}``: ``maxmemory`` (0: no limit set);
- ``mallops_redis_memory_max_ratio{server, roles}``: used / max, only when a limit is set.

``server`` is ``host:port`` (no credentials), ``roles`` the comma-separated uses (``broker,results,cache``).
The alert ``RedisMemoryHigh`` (``deploy/prometheus/alerts.yml``) fires above 80 % of the limit.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Iterator
from urllib.parse import urlsplit

import redis
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from shared.settings import Settings

log = logging.getLogger("mallops.monitor")

LABELS = ["server", "roles"]


def redis_servers(settings: Settings) -> dict[str, tuple[str, list[str]]]:
    """``host:port`` -> (a URL to reach it, its roles), for every Redis server the platform uses."""
    urls = [("broker", settings.celery_broker_url), ("results", settings.celery_result_backend)]
    urls.append(("cache", settings.cache_redis_url))
    servers: dict[str, tuple[str, list[str]]] = {}
    for role, url in urls:
        parts = urlsplit(url)
        if parts.scheme not in ("redis", "rediss", "unix"):
            continue  # RabbitMQ as the broker
        server = parts.path if parts.scheme == "unix" else f"{parts.hostname or 'localhost'}:{parts.port or 6379}"
        servers.setdefault(server, (url, []))[1].append(role)
    return servers


@functools.lru_cache(maxsize=8)
def _client(url: str) -> redis.Redis[str]:
    return redis.Redis.from_url(url, decode_responses=True, socket_timeout=2, socket_connect_timeout=2)


class RedisMemoryCollector(Collector):
    def __init__(self, settings: Settings) -> None:
        self.servers = redis_servers(settings)

    def collect(self) -> Iterator[Metric]:
        used = GaugeMetricFamily(
            "mallops_redis_memory_used_bytes", "Memory Redis uses (INFO used_memory).", labels=LABELS
        )
        limit = GaugeMetricFamily(
            "mallops_redis_memory_max_bytes", "Redis maxmemory; 0 when no limit is set.", labels=LABELS
        )
        ratio = GaugeMetricFamily(
            "mallops_redis_memory_max_ratio",
            "Memory Redis uses as a fraction of its maxmemory (only when a limit is set).",
            labels=LABELS,
        )
        for server, (url, roles) in sorted(self.servers.items()):
            try:
                info = _client(url).info("memory")
            except (redis.RedisError, OSError) as exc:
                log.warning("could not read Redis memory of %s: %s", server, exc)
                continue
            labels = [server, ",".join(roles)]
            used_bytes, max_bytes = float(info.get("used_memory", 0)), float(info.get("maxmemory", 0))
            used.add_metric(labels, used_bytes)
            limit.add_metric(labels, max_bytes)
            if max_bytes > 0:
                ratio.add_metric(labels, used_bytes / max_bytes)
        yield used
        yield limit
        yield ratio
