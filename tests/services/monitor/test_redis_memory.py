"""The monitor's gauge of Redis memory against its maxmemory (docs/capacity.md; alert RedisMemoryHigh)."""

from __future__ import annotations

import pytest

from services.monitor.redis_memory import redis_servers
from shared.settings import Settings
from tests.services.monitor.conftest import MonitorStack

pytestmark = pytest.mark.integration


def test_redis_memory_and_its_limit_are_on_metrics(monitor_stack: MonitorStack) -> None:
    client = monitor_stack.redis.client()
    client.config_set("maxmemory", str(256 * 1024 * 1024))
    monitor_stack.monitor()
    server = f"127.0.0.1:{monitor_stack.redis.port}"
    labels = {"server": server, "roles": "broker,results,cache"}
    used = monitor_stack.value("mallops_redis_memory_used_bytes", **labels)
    assert used is not None
    assert 100_000 < used < 256 * 1024 * 1024
    assert monitor_stack.value("mallops_redis_memory_max_bytes", **labels) == 256 * 1024 * 1024
    ratio = monitor_stack.value("mallops_redis_memory_max_ratio", **labels)
    assert ratio is not None
    assert 0 < ratio < 0.5

    client.config_set("maxmemory", "0")  # no limit: no ratio, the limit reads 0
    assert monitor_stack.value("mallops_redis_memory_max_bytes", **labels) == 0
    assert monitor_stack.value("mallops_redis_memory_max_ratio", **labels) is None
    client.close()


def test_one_series_per_redis_server_and_none_for_rabbitmq() -> None:
    split = Settings(
        redis_url="redis://cache.example:6380",
        broker_url="amqp://guest:secret@rabbit:5672//",
        result_backend="redis://:secret@results.example:6379/1",
    )
    assert {server: roles for server, (_, roles) in redis_servers(split).items()} == {
        "cache.example:6380": ["cache"],
        "results.example:6379": ["results"],
    }
    one = Settings(redis_url="redis://redis:6379", broker_url="", result_backend="")
    assert {server: roles for server, (_, roles) in redis_servers(one).items()} == {
        "redis:6379": ["broker", "results", "cache"]
    }
