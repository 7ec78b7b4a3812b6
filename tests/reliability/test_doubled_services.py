"""Two monitors and two gateways at once (full suite only, ``scripts/faults``): the monitors share the
stream's consumer group and the database, so no event is counted twice; the gateways share Redis, so one
owner's quota of unfinished tasks and one token's rate limit hold across both."""

from __future__ import annotations

import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from sqlalchemy import select

from shared.db import session_scope
from shared.models import MonitorMetric
from shared.tokens import create_token
from tests.harness import Process, free_port, service_argv, spawn, wait_http_ready, wait_until
from tests.reliability.conftest import BROKERS, FULL_ONLY, FaultResults, FaultStack, Outcome

TEST = "mallops.maintenance.test_task"
QUOTA = 5
RATE = 30


def _gateway(stack: FaultStack, env: dict[str, str]) -> tuple[Process, str]:
    port = free_port()
    process = spawn("gateway", service_argv("gateway", f"--port={port}"), stack.env | env, stack.log_dir)
    stack.processes.append(process)
    wait_http_ready(process, f"http://127.0.0.1:{port}/readyz")
    return process, f"http://127.0.0.1:{port}"


def _monitor(stack: FaultStack, name: str) -> int:
    port = free_port()
    argv = service_argv("monitor", f"--port={port}", f"--name={name}")
    process = spawn("monitor", argv, stack.env, stack.log_dir)
    stack.processes.append(process)
    wait_http_ready(process, f"http://127.0.0.1:{port}/health")
    return port


def _token(stack: FaultStack, role: str = "admin") -> str:
    with session_scope(stack.settings) as session:
        return create_token(session, f"twice-{uuid.uuid4().hex[:8]}", role)


def _stored_count(stack: FaultStack, metric: str) -> float:
    with session_scope(stack.settings) as session:
        keys = session.execute(select(MonitorMetric.key, MonitorMetric.value)).all()
    return sum(value for key, value in keys if key.startswith(f'["{metric}"'))


@pytest.mark.parametrize("size", FULL_ONLY)
@pytest.mark.parametrize("fault_stack", BROKERS, indirect=True)
def test_two_monitors_and_two_gateways_count_once_and_keep_the_limits(
    fault_stack: FaultStack, size: str, fault_results: FaultResults
) -> None:
    stack = fault_stack
    started = time.monotonic()
    before = _stored_count(stack, "celery_task_succeeded")  # the database outlives one test
    limits = {"MALLOPS_TASK_MAX_PER_USER": str(QUOTA), "MALLOPS_RATE_LIMIT_PER_MINUTE": str(RATE)}
    gateways = [_gateway(stack, limits)[1] for _ in range(2)]

    # quota: one owner, 40 submissions at once through both gateways, no worker yet: 5 accepted
    owner = _token(stack, "user")  # an admin has no quota
    with ThreadPoolExecutor(max_workers=16) as pool:
        codes = list(
            pool.map(
                lambda n: (
                    httpx.post(
                        f"{gateways[n % 2]}/api/v1/tasks",
                        json={"task_name": "test_task", "kwargs": {"message": f"quota {n}"}},
                        headers={"Authorization": f"Bearer {owner}"},
                        timeout=30,
                    ).status_code
                ),
                range(40),
            )
        )
    quota = Counter(codes)
    # rate limit: another token, 80 requests at once through both gateways: RATE let through
    limited = _token(stack)
    with ThreadPoolExecutor(max_workers=16) as pool:
        rate_codes = Counter(
            pool.map(
                lambda n: (
                    httpx.get(
                        f"{gateways[n % 2]}/api/v1/tasks", headers={"Authorization": f"Bearer {limited}"}, timeout=30
                    ).status_code
                ),
                range(80),
            )
        )

    # counting: two monitors on one stream, 400 tasks
    ports = [_monitor(stack, f"monitor-{i}") for i in range(2)]
    stack.worker()
    ids = [stack.publish(TEST, message=f"twice {i}") for i in range(400)]
    ledger = stack.wait_finished(ids, timeout=180)
    wait_until(
        lambda: _stored_count(stack, "celery_task_succeeded") - before >= len(ids) + quota[202],
        timeout=90,
        message="both monitors' counts stored",
    )
    stored = _stored_count(stack, "celery_task_succeeded") - before
    rows = stack.history(ids)
    processed = [httpx.get(f"http://127.0.0.1:{port}/stats", timeout=10).json()["events_processed"] for port in ports]
    outcome = Outcome(
        "two monitors and two gateways at once",
        stack.broker,
        size,
        1,
        len(ids),
        len(ledger.succeeded(ids)),
        len(ids) - len(ledger.succeeded(ids)),
        len(ledger.duplicated(ids)),
        round(time.monotonic() - started, 1),
        notes=f"celery_task_succeeded stored {stored:g} for {len(ids) + quota[202]} tasks (history rows "
        f"{len(rows)}; the monitors processed {processed[0]} and {processed[1]} entries); quota "
        f"{QUOTA}: {quota[202]} of 40 concurrent submissions accepted ({dict(quota)}); rate limit {RATE}/min: "
        f"{rate_codes[200]} of 80 concurrent requests let through ({dict(rate_codes)})",
    )
    fault_results.add(outcome)
    assert quota[202] == QUOTA
    assert rate_codes[200] == RATE
    assert outcome.lost == 0
    assert len(rows) == len(ids)
    assert stored == len(ids) + quota[202]  # the quota test's five ran too, once each
    assert all(p > 0 for p in processed)
