"""A task revoked while no worker was online is skipped by a worker that starts afterwards (issue 4).

Celery's revoke broadcast reaches only the workers online at that moment; the gateway also keeps the id in
Redis (``shared.celery_extensions.revocations``), which every worker checks for each task it receives.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import httpx
import pytest

from shared.contracts import REVOKED_KEY
from shared.settings import Settings
from tests.harness import Process, wait_until
from tests.security.conftest import API, Gateway

pytestmark = pytest.mark.integration


def status(api: httpx.Client, gateway: Gateway, task_id: str) -> str:
    return str(api.get(f"{API}/tasks/{task_id}", headers=gateway.auth("admin")).json()["status"])


def test_a_task_revoked_before_any_worker_started_is_never_run(
    secure_gateway: Gateway,
    api: httpx.Client,
    service_env: dict[str, str],
    migrated: Settings,
    worker_factory: Callable[..., Process],
) -> None:
    admin = secure_gateway.auth("admin")
    revoked = api.post(
        f"{API}/tasks", json={"task_name": "test_task", "kwargs": {"message": "revoked"}}, headers=admin
    ).json()["task_id"]
    kept = api.post(
        f"{API}/tasks", json={"task_name": "test_task", "kwargs": {"message": "kept"}}, headers=admin
    ).json()["task_id"]
    answer = api.post(f"{API}/tasks/{revoked}/revoke", json={"terminate": False}, headers=admin)
    assert answer.status_code == 202
    cache = secure_gateway.redis.client(2)
    kept_until = cache.zscore(REVOKED_KEY, revoked)
    assert kept_until is not None
    assert 0 < kept_until - time.time() <= migrated.task_meta_ttl_seconds
    cache.close()
    assert secure_gateway.queue_length("default") >= 2  # nobody was there to hear the broadcast

    base = secure_gateway.redis.url_base
    worker_factory(
        "maintenance",
        env=service_env
        | {"MALLOPS_REDIS_URL": base, "MALLOPS_BROKER_URL": f"{base}/0", "MALLOPS_RESULT_BACKEND": f"{base}/1"},
    )
    # FIFO: once the later task has succeeded, the revoked one has been received and dealt with
    wait_until(lambda: status(api, secure_gateway, kept) == "SUCCESS", timeout=60, message="the kept task")
    wait_until(lambda: status(api, secure_gateway, revoked) == "REVOKED", timeout=20, message="the revoked task")
    detail = api.get(f"{API}/tasks/{revoked}", headers=admin).json()
    assert detail["result"] is None
    assert secure_gateway.queue_length("default") == 0
