"""A platform of the monitor tests' own: a redis-server, real workers and a real monitor process.

The monitor tests use their own Redis (broker, results and event stream) so that workers shared by
other tests never take their tasks, and start from an empty history and empty persisted counters.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import delete

from shared.db import session_scope
from shared.models import MonitorMetric, TaskRecord
from shared.settings import Settings
from tests.harness import (
    Process,
    RedisServer,
    free_port,
    redis_env,
    service_argv,
    spawn,
    start_redis,
    wait_http_ready,
)

OFFLINE_AFTER = 3.0


@dataclass
class MonitorStack:
    env: dict[str, str]
    settings: Settings
    redis: RedisServer
    log_dir: Path
    port: int
    start_worker: Callable[..., Process]
    processes: list[Process] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def worker(self, *extra: str, hostname: str | None = None) -> Process:
        process = self.start_worker("maintenance", *extra, env=self.env, hostname=hostname)
        self.processes.append(process)
        return process

    def monitor(self) -> Process:
        process = spawn(
            "monitor", service_argv("monitor", f"--port={self.port}", "--name=monitor-test"), self.env, self.log_dir
        )
        self.processes.append(process)
        wait_http_ready(process, f"{self.url}/health")
        return process

    def samples(self) -> list[tuple[str, dict[str, str], float]]:
        text = httpx.get(f"{self.url}/metrics", timeout=10).text
        return [(s.name, s.labels, s.value) for family in text_string_to_metric_families(text) for s in family.samples]

    def total(self, name: str, /, **labels: str) -> float:
        """The sum of a metric's samples whose labels include ``labels``."""
        return sum(
            value
            for sample, sample_labels, value in self.samples()
            if sample == name and all(sample_labels.get(k) == v for k, v in labels.items())
        )

    def value(self, name: str, /, **labels: str) -> float | None:
        for sample, sample_labels, value in self.samples():
            if sample == name and sample_labels == labels:
                return value
        return None


@pytest.fixture
def monitor_stack(
    service_env: dict[str, str], migrated: Settings, worker_factory: Callable[..., Process], tmp_path: Path
) -> Iterator[MonitorStack]:
    redis = start_redis(tmp_path / "redis")
    base = redis.url_base
    env = (
        service_env
        | redis_env(redis)
        | {
            "MALLOPS_TASK_RETRY_BACKOFF": "0",
            "MALLOPS_WORKER_HEARTBEAT_INTERVAL": "0.5",
            "MALLOPS_WORKER_OFFLINE_AFTER": str(OFFLINE_AFTER),
            "MALLOPS_LOG_LEVEL": "WARNING",
        }
    )
    settings = Settings(
        redis_url=base, broker_url=f"{base}/0", result_backend=f"{base}/1", worker_offline_after=OFFLINE_AFTER
    )
    with session_scope(migrated) as session:
        session.execute(delete(TaskRecord))
        session.execute(delete(MonitorMetric))
    stack = MonitorStack(env, settings, redis, tmp_path / "logs", free_port(), worker_factory)
    yield stack
    for process in stack.processes:
        process.stop()
    redis.stop()
