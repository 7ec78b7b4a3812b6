"""``MALLOPS_GATEWAY_WORKERS=2``: two uvicorn processes on one port behave as one gateway.

``mallops serve gateway`` runs against a redis-server of the test's own (nothing consumes its queues). The
test keeps one HTTP connection to each worker process (it finds which process holds a connection from the
process's sockets), so it chooses which process answers: counters in ``/metrics`` are the sum over both, a
token revoked through one is refused by the other (whose cache had verified it, for 60 s), and the per-user
quota counts what both accepted.
"""

from __future__ import annotations

import http.client
import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import pytest
from prometheus_client.parser import text_string_to_metric_families

from shared.db import session_scope
from shared.settings import Settings
from shared.tokens import create_token
from tests import harness
from tests.harness import Process

pytestmark = pytest.mark.integration

API = "/api/v1"


@dataclass
class Gateway:
    process: Process
    port: int
    workers: list[psutil.Process]  # uvicorn's worker processes


@dataclass
class Answer:
    status: int
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


class Pinned:
    """A keep-alive connection that one worker process accepted: every request on it is answered there."""

    def __init__(self, connection: http.client.HTTPConnection, pid: int) -> None:
        self.connection = connection
        self.pid = pid

    def request(self, method: str, path: str, token: str | None = None, body: Any = None) -> Answer:
        headers = {"Content-Type": "application/json"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        payload = None if body is None else json.dumps(body)
        self.connection.request(method, path, body=payload, headers=headers)
        response = self.connection.getresponse()
        return Answer(response.status, response.read())


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[harness.RedisServer]:
    """A redis-server of this test's own: no worker consumes its broker database."""
    server = harness.start_redis(tmp_path / "redis")
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def two_processes(
    service_env: dict[str, str], migrated: Settings, own_redis: harness.RedisServer, tmp_path: Path
) -> Iterator[Gateway]:
    port = harness.free_port()
    env = (
        service_env
        | harness.redis_env(own_redis)
        | {
            "MALLOPS_GATEWAY_WORKERS": "2",
            "MALLOPS_TOKEN_CACHE_SECONDS": "60",  # a verified token stays in each process's cache for the whole test
            "MALLOPS_TASK_MAX_PER_USER": "2",
        }
    )
    process = harness.spawn("gateway", harness.service_argv("gateway", f"--port={port}"), env, tmp_path / "logs")
    try:
        harness.wait_http_ready(process, f"http://127.0.0.1:{port}/readyz")

        def workers() -> list[psutil.Process] | None:
            found = [
                p for p in psutil.Process(process.pid).children(recursive=True) if "spawn_main" in " ".join(p.cmdline())
            ]
            return found if len(found) == 2 else None

        yield Gateway(process, port, harness.wait_until(workers, timeout=30, message="two gateway worker processes"))
    finally:
        process.stop()


@pytest.fixture
def pinned(two_processes: Gateway) -> Iterator[list[Pinned]]:
    """A connection held by each of the two worker processes."""
    connections = pin_each(two_processes)
    yield list(connections.values())
    for each in connections.values():
        each.connection.close()


def pin_each(gateway: Gateway) -> dict[int, Pinned]:
    """One connection held by each worker process (new connections until both have one)."""
    pinned: dict[int, Pinned] = {}
    spare: list[http.client.HTTPConnection] = []

    def owner(connection: http.client.HTTPConnection) -> int | None:
        local = connection.sock.getsockname()[1]
        for worker in gateway.workers:
            if any(c.raddr and c.raddr.port == local for c in worker.net_connections(kind="tcp")):
                pid: int = worker.pid
                return pid
        return None

    def both() -> bool:
        connection = http.client.HTTPConnection("127.0.0.1", gateway.port, timeout=10)
        connection.request("GET", "/healthz")
        connection.getresponse().read()
        pid = owner(connection)
        if pid is None or pid in pinned:
            spare.append(connection)
        else:
            pinned[pid] = Pinned(connection, pid)
        return len(pinned) == 2

    harness.wait_until(both, timeout=30, interval=0.01, message="a connection accepted by each gateway process")
    for connection in spare:
        connection.close()
    return pinned


def requests_counted(metrics: bytes, route: str) -> float:
    return sum(
        sample.value
        for family in text_string_to_metric_families(metrics.decode())
        for sample in family.samples
        if sample.name == "mallops_gateway_requests_total" and sample.labels.get("route") == route
    )


def make_token(settings: Settings, role: str) -> tuple[str, str]:
    name = f"gw2-{role}-{uuid.uuid4().hex[:8]}"
    with session_scope(settings) as session:
        return name, create_token(session, name, role)


def test_metrics_are_summed_over_both_processes(pinned: list[Pinned]) -> None:
    first, second = pinned
    before = requests_counted(first.request("GET", "/metrics").body, "/healthz")
    for _ in range(3):
        assert first.request("GET", "/healthz").status == 200
    for _ in range(5):
        assert second.request("GET", "/healthz").status == 200
    for each in (first, second):  # whichever process answers /metrics
        assert requests_counted(each.request("GET", "/metrics").body, "/healthz") == before + 8


def test_a_token_revoked_through_one_process_is_refused_by_the_other(pinned: list[Pinned], migrated: Settings) -> None:
    first, second = pinned
    _, admin = make_token(migrated, "admin")
    name, user = make_token(migrated, "user")
    for each in (first, second):  # both processes have verified (and cached) the token
        assert each.request("GET", f"{API}/catalog", user).status == 200
    assert first.request("DELETE", f"{API}/tokens/{name}", admin).status == 200
    refused = second.request("GET", f"{API}/catalog", user)
    assert refused.status == 401, refused.body
    assert first.request("GET", f"{API}/catalog", user).status == 401


def test_the_quota_counts_what_both_processes_accepted(pinned: list[Pinned], migrated: Settings) -> None:
    first, second = pinned
    _, user = make_token(migrated, "user")
    body = {"task_name": "test_task"}
    assert first.request("POST", f"{API}/tasks", user, body).status == 202
    assert second.request("POST", f"{API}/tasks", user, body).status == 202
    for each in (first, second):
        refused = each.request("POST", f"{API}/tasks", user, body)
        assert refused.status == 429, refused.body
        assert refused.json()["type"].endswith("quota-exceeded")
