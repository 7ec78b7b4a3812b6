"""A fault-injection platform of each test's own: a redis-server with AOF (so a test may kill and restart it),
optionally a RabbitMQ virtual host as the broker, and real worker, monitor, gateway and beat processes.

Counting: every scenario publishes tasks (or submits them to the gateway, 202 = accepted) and reads what
happened from the lifecycle event stream (``mallops:events``), which a worker writes before it acknowledges
a message: a task is *finished* when it has a final event, *lost* when accepted and never finished by the
deadline, *duplicated* when its body completed more than once (more than one ``task-succeeded``).
Figures go to :class:`FaultResults`; ``MALLOPS_FAULT_RESULTS=<dir>`` writes them as ``results.json`` and
``results.md`` at the end of the run (``scripts/faults`` does).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from celery import Celery
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import select

from shared.celery_app import create_celery_app
from shared.contracts import EVENT_STREAM
from shared.db import session_scope
from shared.models import TaskRecord
from shared.settings import Settings
from shared.tokens import create_token
from tests.harness import (
    Process,
    RedisServer,
    free_port,
    service_argv,
    spawn,
    start_redis,
    start_worker,
    wait_http_ready,
    wait_until,
)

RABBITMQ = ("127.0.0.1", 5672)
FINAL_EVENTS = ("task-succeeded", "task-failed", "task-revoked", "task-rejected")
# long enough for the longest test task plus a wait in a worker's prefetch; short enough that a task of
# a SIGKILLed worker comes back within seconds
VISIBILITY_TIMEOUT = 6

# Sizes: the quick variant runs in the default suite; the full one (marker ``fault``) in scripts/faults.
SIZES = [pytest.param("quick", id="quick"), pytest.param("full", id="full", marks=pytest.mark.fault)]
FULL_ONLY = [pytest.param("full", id="full", marks=pytest.mark.fault)]


# -- results -----------------------------------------------------------------------------------------


@dataclass
class Outcome:
    scenario: str
    broker: str
    size: str
    trials: int
    accepted: int
    finished: int
    lost: int
    duplicated: int
    seconds: float
    notes: str = ""


@dataclass
class FaultResults:
    rows: list[Outcome] = field(default_factory=list)

    def add(self, outcome: Outcome) -> None:
        self.rows.append(outcome)

    def markdown(self) -> str:
        lines = [
            "| scenario | broker | size | trials | accepted | finished | lost | duplicated | seconds | notes |",
            "|---|---|---|---:|---:|---:|---:|---:|---:|---|",
        ]
        for r in self.rows:
            lines.append(
                f"| {r.scenario} | {r.broker} | {r.size} | {r.trials} | {r.accepted} | {r.finished} | "
                f"{r.lost} | {r.duplicated} | {r.seconds:.0f} | {r.notes} |"
            )
        return "\n".join(lines) + "\n"


@pytest.fixture(scope="session")
def fault_results() -> Iterator[FaultResults]:
    results = FaultResults()
    yield results
    target = os.environ.get("MALLOPS_FAULT_RESULTS")
    if target and results.rows:
        out = Path(target)
        out.mkdir(parents=True, exist_ok=True)
        (out / "results.json").write_text(json.dumps([asdict(r) for r in results.rows], indent=2) + "\n")
        (out / "results.md").write_text(results.markdown())


# -- the event stream as witness -------------------------------------------------------------------


@dataclass
class Ledger:
    """Per task id: how many of each event type the stream holds."""

    counts: dict[str, Counter[str]]
    events: list[dict[str, Any]]

    def finished(self, ids: list[str]) -> list[str]:
        return [i for i in ids if any(self.counts[i][t] for t in FINAL_EVENTS)]

    def succeeded(self, ids: list[str]) -> list[str]:
        return [i for i in ids if self.counts[i]["task-succeeded"]]

    def duplicated(self, ids: list[str]) -> list[str]:
        return [i for i in ids if self.counts[i]["task-succeeded"] > 1]


# -- the platform --------------------------------------------------------------------------------------


@dataclass
class FaultStack:
    broker: str  # "redis" or "amqp"
    env: dict[str, str]
    settings: Settings
    redis: RedisServer
    redis_dir: Path
    log_dir: Path
    processes: list[Process] = field(default_factory=list)
    monitor_port: int = field(default_factory=free_port)
    gateway_port: int = field(default_factory=free_port)
    _app: Celery | None = None

    # processes

    def worker(
        self,
        service: str = "maintenance",
        *extra: str,
        command: list[str] | None = None,
        env: dict[str, str] | None = None,
        hostname: str | None = None,
    ) -> Process:
        hostname = hostname or f"{service}-{uuid.uuid4().hex[:8]}@127.0.0.1"
        process = start_worker(
            service, self.env | (env or {}), self.log_dir, *extra, hostname=hostname, command=command
        )
        process.name = hostname
        self.processes.append(process)
        return process

    def monitor(self) -> Process:
        argv = service_argv("monitor", f"--port={self.monitor_port}", "--name=monitor-fault")
        process = spawn("monitor", argv, self.env, self.log_dir)
        self.processes.append(process)
        wait_http_ready(process, f"http://127.0.0.1:{self.monitor_port}/health")
        return process

    def gateway(self) -> tuple[Process, httpx.Client]:
        base = f"http://127.0.0.1:{self.gateway_port}"
        process = spawn("gateway", service_argv("gateway", f"--port={self.gateway_port}"), self.env, self.log_dir)
        self.processes.append(process)
        wait_http_ready(process, f"{base}/readyz")
        with session_scope(self.settings) as session:
            token = create_token(session, f"faults-{uuid.uuid4().hex[:8]}", "admin")
        return process, httpx.Client(base_url=base, timeout=10, headers={"Authorization": f"Bearer {token}"})

    def beat(self) -> Process:
        process = spawn("beat", service_argv("beat"), self.env, self.log_dir)
        self.processes.append(process)
        wait_until(
            lambda: "Acquired lock" in process.log() or not process.alive(),
            timeout=60,
            message="beat to take the RedBeat lock",
        )
        if not process.alive():
            pytest.fail(f"beat exited:\n{process.log()[-3000:]}")
        return process

    def restart_redis(self, down: Callable[[], None] | None = None) -> None:
        """Stop redis-server (SIGTERM: it writes its AOF), call ``down()`` while it is away, start it again
        on the same port with the same data."""
        self.redis.stop()
        if down is not None:
            down()
        self.redis = start_redis(self.redis_dir, port=self.redis.port, appendonly=True)

    # publishing and reading

    @property
    def app(self) -> Celery:
        if self._app is None:
            self._app = create_celery_app("fault-client", self.settings)
        return self._app

    def publish(self, celery_name: str, queue: str = "default", **kwargs: Any) -> str:
        return str(self.app.send_task(celery_name, kwargs=kwargs, queue=queue).id)

    def ledger(self) -> Ledger:
        client = self.redis.client(2)
        try:
            entries = client.xrange(EVENT_STREAM, "-", "+")
        finally:
            client.close()
        counts: dict[str, Counter[str]] = defaultdict(Counter)
        events = []
        for _, fields in entries:
            event = json.loads(fields[b"e"])
            events.append(event)
            if event.get("id"):
                counts[event["id"]][event["type"]] += 1
        return Ledger(counts, events)

    def wait_finished(self, ids: list[str], timeout: float) -> Ledger:
        """Wait until every id has a final event, or the deadline; the ledger at that moment."""
        deadline = time.monotonic() + timeout
        while True:
            ledger = self.ledger()
            if len(ledger.finished(ids)) == len(ids) or time.monotonic() > deadline:
                return ledger
            time.sleep(0.25)

    def history(self, ids: list[str]) -> dict[str, TaskRecord]:
        with session_scope(self.settings) as session:
            rows = session.scalars(select(TaskRecord).where(TaskRecord.task_id.in_(ids))).all()
            return {row.task_id: row for row in rows}

    def metric(self, metric: str, /, **labels: str) -> float:
        text = httpx.get(f"http://127.0.0.1:{self.monitor_port}/metrics", timeout=10).text
        return sum(
            s.value
            for family in text_string_to_metric_families(text)
            for s in family.samples
            if s.name == metric and all(s.labels.get(k) == v for k, v in labels.items())
        )

    def stop(self) -> None:
        # nothing to keep: SIGKILL (by process group) is the fast way down; stop() reaps what is left
        for process in self.processes:
            process.signal(signal.SIGKILL)
        for process in reversed(self.processes):
            process.stop()
        if self._app is not None:
            self._app.close()
        self.redis.stop()


# -- RabbitMQ: a virtual host per stack ----------------------------------------------------------------


def _rabbitmq_answers() -> bool:
    try:
        with socket.create_connection(RABBITMQ, timeout=0.5):
            return True
    except OSError:
        return False


@contextlib.contextmanager
def rabbitmq_vhost() -> Iterator[str]:
    """A fresh virtual host on the local RabbitMQ (guest has all rights on it), deleted afterwards."""
    ctl = shutil.which("rabbitmqctl")
    if not _rabbitmq_answers() or ctl is None:
        if os.environ.get("CI") == "true":
            pytest.fail("the RabbitMQ variants need a RabbitMQ on 127.0.0.1:5672 and rabbitmqctl")
        pytest.skip("no RabbitMQ on 127.0.0.1:5672 (or no rabbitmqctl): RabbitMQ variants skipped")
    vhost = f"mallops-fault-{uuid.uuid4().hex[:10]}"
    subprocess.run([ctl, "-q", "add_vhost", vhost], check=True, capture_output=True, timeout=60)
    try:
        subprocess.run(
            [ctl, "-q", "set_permissions", "-p", vhost, "guest", ".*", ".*", ".*"],
            check=True,
            capture_output=True,
            timeout=60,
        )
        yield vhost
    finally:
        subprocess.run([ctl, "-q", "delete_vhost", vhost], check=False, capture_output=True, timeout=60)


@pytest.fixture
def fault_stack(
    request: pytest.FixtureRequest, service_env: dict[str, str], migrated: Settings, tmp_path: Path
) -> Iterator[FaultStack]:
    """``fault_stack`` is parametrised indirectly with the broker: "redis" (default) or "amqp"."""
    broker = getattr(request, "param", "redis")
    with contextlib.ExitStack() as stack:
        redis_dir = tmp_path / "redis"
        redis = start_redis(redis_dir, appendonly=True)
        base = redis.url_base
        broker_url = f"{base}/0"
        if broker == "amqp":
            vhost = stack.enter_context(rabbitmq_vhost())
            broker_url = f"amqp://guest:guest@{RABBITMQ[0]}:{RABBITMQ[1]}/{vhost}"
        values = {
            "MALLOPS_REDIS_URL": base,
            "MALLOPS_BROKER_URL": broker_url,
            "MALLOPS_RESULT_BACKEND": f"{base}/1",
            "MALLOPS_BROKER_VISIBILITY_TIMEOUT": str(VISIBILITY_TIMEOUT),
            "MALLOPS_BROKER_RESTORE_INTERVAL": "1",
            "MALLOPS_TASK_RETRY_BACKOFF": "0.5",
            "MALLOPS_WORKER_HEARTBEAT_INTERVAL": "0.5",
            "MALLOPS_TASK_MAX_PER_USER": "100000",
            "MALLOPS_RATE_LIMIT_PER_MINUTE": "100000",
            "MALLOPS_BEAT_MAX_INTERVAL": "1",
            "MALLOPS_LOG_LEVEL": "INFO",
        }
        env = service_env | values
        settings = migrated.model_copy(
            update={
                "redis_url": base,
                "broker_url": broker_url,
                "result_backend": f"{base}/1",
                "broker_visibility_timeout": VISIBILITY_TIMEOUT,
                "broker_restore_interval": 1.0,
            }
        )
        fault = FaultStack(broker, env, settings, redis, redis_dir, tmp_path / "logs")
        stack.callback(fault.stop)
        yield fault


# the RabbitMQ variants run with the full suite only (scripts/faults), to keep the default suite short
BROKERS = [pytest.param("redis", id="redis"), pytest.param("amqp", id="rabbitmq", marks=pytest.mark.fault)]
