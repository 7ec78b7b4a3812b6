"""Fixtures of the hostile-input suite: a gateway on a redis-server of the module's own.

The gateway is the real app (``create_app``) served by uvicorn (``tests.services.gateway.conftest.serve``).
Its Redis is private to the module, so fuzzed submissions, schedule edits and rate-limit counters touch
no other test, and a test can count a queue's length exactly. Nothing consumes the broker database.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from redis import Redis

from services.gateway.app import create_app
from shared.db import session_scope
from shared.settings import Settings
from shared.tokens import create_token
from tests.harness import RedisServer, start_redis
from tests.services.gateway.conftest import serve

API = "/api/v1"


@dataclass
class Gateway:
    url: str
    redis: RedisServer
    settings: Settings
    admin: str
    viewer: str
    alice: str
    bob: str
    alice_name: str
    bob_name: str
    broker: Redis[bytes]

    def auth(self, who: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {getattr(self, who)}"}

    def queue_length(self, queue: str) -> int:
        """Messages waiting in ``queue`` (every priority sub-list of kombu's Redis transport)."""
        client = self.broker
        return sum(int(client.llen(key)) for key in client.scan_iter(match=f"{queue}*", _type="LIST"))


def make_tokens(settings: Settings) -> dict[str, str]:
    suffix = uuid.uuid4().hex[:8]
    names = {who: f"sec-{who}-{suffix}" for who in ("admin", "alice", "bob", "viewer")}
    roles = {"admin": "admin", "viewer": "viewer"}
    with session_scope(settings) as session:
        secrets = {who: create_token(session, name, roles.get(who, "user")) for who, name in names.items()}
    return {**secrets, "alice_name": names["alice"], "bob_name": names["bob"]}


@pytest.fixture(scope="module")
def module_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = start_redis(Path(tmp_path_factory.mktemp("security-redis")))
    yield server
    server.stop()


def gateway_settings(migrated: Settings, redis: RedisServer, **overrides: Any) -> Settings:
    base = redis.url_base
    return migrated.model_copy(
        update={
            "redis_url": base,
            "broker_url": f"{base}/0",
            "result_backend": f"{base}/1",
            "rate_limit_per_minute": 1_000_000,
            "task_max_per_user": 1_000_000,
            "auth_failures_per_minute": 1_000_000,
            **overrides,
        }
    )


@pytest.fixture(scope="module")
def secure_gateway(migrated: Settings, module_redis: RedisServer) -> Iterator[Gateway]:
    """One gateway for the module: generous rate limit and quota (the tests of those set their own)."""
    settings = gateway_settings(migrated, module_redis)
    secrets = make_tokens(migrated)
    broker = module_redis.client(0)
    with serve(create_app(settings)) as url:
        yield Gateway(url=url, redis=module_redis, settings=settings, broker=broker, **secrets)
    broker.close()


@pytest.fixture
def api(secure_gateway: Gateway) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=secure_gateway.url, timeout=30) as client:
        yield client
