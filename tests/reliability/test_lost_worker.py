"""A whole worker SIGKILLed with every setting at its default: its tasks run again within seconds.

On Redis the messages a gone worker held unacknowledged are put back by the requeuers of the other (or
the restarted) workers once the worker has been silent for ``MALLOPS_WORKER_OFFLINE_AFTER``
(shared/celery_extensions/redelivery.py), not after the two-hour visibility timeout; RabbitMQ gives them
back when the dead connection closes. The quick variant (one kill, Redis) runs in the default suite; the
full one (20 kills on each broker) in scripts/faults.
"""

from __future__ import annotations

import functools
import json
import signal
import time
from typing import Any

import pytest

from shared.celery_extensions.redelivery import REQUEUED, Holder, holder_key, process_field
from shared.contracts import DELIVERY_HOLDER_PREFIX, PROCESSES_KEY
from tests.harness import wait_until
from tests.reliability.conftest import BROKERS, SIZES, FaultResults, FaultStack, Outcome

LONG = "mallops.maintenance.long_running_task"
RESTART_WITHIN = 30.0  # seconds from the kill to both tasks started again (the acceptance)
# the fault stack's shortcuts for the other scenarios; this file runs with the shipped defaults
FAULT_OVERRIDES = (
    "MALLOPS_BROKER_VISIBILITY_TIMEOUT",
    "MALLOPS_BROKER_RESTORE_INTERVAL",
    "MALLOPS_WORKER_HEARTBEAT_INTERVAL",
    "MALLOPS_TASK_RETRY_BACKOFF",
)


def _defaults(stack: FaultStack) -> FaultStack:
    for key in FAULT_OVERRIDES:
        stack.env.pop(key, None)
    return stack


def _events(stack: FaultStack, type_: str, ids: list[str], since: float = 0.0, **match: Any) -> dict[str, float]:
    """For each id: the time of its first ``type_`` event after ``since`` matching ``match``."""
    first: dict[str, float] = {}
    for event in stack.ledger().events:
        if (
            event["type"] == type_
            and event.get("id") in ids
            and event["ts"] > since
            and all(event.get(k) == v for k, v in match.items())
        ):
            first.setdefault(event["id"], event["ts"])
    return first


def _all_in(stack: FaultStack, type_: str, ids: list[str], since: float = 0.0, **match: Any) -> dict[str, float]:
    found = _events(stack, type_, ids, since, **match)
    return found if len(found) == len(ids) else {}


def _only_pops_hold(stack: FaultStack, host: str, ids: list[str]) -> None:
    """Check that the pops of the (killed) worker ``host`` named it the holder of the messages of ``ids``,
    with its liveness field, and that it wrote no receipt when it received them (its pops had named it):
    the requeuers find them by the pops' holders alone, as if it had died between the pop and the receipt
    (issue 18's soak loss)."""
    broker, cache = stack.redis.client(0), stack.redis.client(2)
    try:
        holders = {}
        for key in broker.scan_iter(f"{DELIVERY_HOLDER_PREFIX}*"):
            raw = broker.hget("unacked", key.decode().removeprefix(DELIVERY_HOLDER_PREFIX))
            holder = Holder.parse(broker.get(key))
            if raw is not None and holder is not None:
                holders[json.loads(raw)[0]["headers"]["id"]] = holder
        assert {task_id: holders[task_id].host for task_id in ids if task_id in holders} == dict.fromkeys(ids, host)
        processes = {name.decode() for name in cache.hkeys(PROCESSES_KEY)}
        assert {process_field(holders[task_id].host, holders[task_id].pid) for task_id in ids} <= processes
        assert cache.exists(*(holder_key(task_id, 0) for task_id in ids)) == 0
    finally:
        broker.close()
        cache.close()


def _kill(worker: Any) -> float:
    """SIGKILL the worker's whole process group (main process and pool); the time of the kill."""
    killed_at = time.time()
    worker.signal(signal.SIGKILL)
    worker.popen.wait(10)
    return killed_at


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("fault_stack", BROKERS, indirect=True)
def test_whole_worker_sigkilled_its_tasks_start_again_within_30s(
    fault_stack: FaultStack, size: str, fault_results: FaultResults
) -> None:
    """Each round: two fresh long tasks in progress on a worker, its process group SIGKILLed, the worker
    started again at once under the same name; both tasks start again within 30 s and succeed once."""
    stack = _defaults(fault_stack)
    kills = 1 if size == "quick" else 20
    started = time.monotonic()
    worker = stack.worker()
    name = worker.name
    ids: list[str] = []
    delays: list[float] = []
    for _ in range(kills):
        since = time.time()
        pair = [stack.publish(LONG, steps=4, step_seconds=1.0) for _ in range(2)]
        ids += pair
        wait_until(
            functools.partial(_all_in, stack, "task-progress", pair, since, host=name, current=1),
            timeout=90,
            interval=0.1,
            message=f"both tasks in progress on {name}",
        )
        killed_at = _kill(worker)
        worker = stack.worker(hostname=name)  # restarted at once, under the same name
        again = wait_until(
            functools.partial(_all_in, stack, "task-started", pair, killed_at),
            timeout=120,
            interval=0.1,
            message="both tasks started again after the kill",
        )
        delays += [again[task_id] - killed_at for task_id in pair]
        stack.wait_finished(pair, timeout=60)  # the next round's kill must not hit a redelivered task
    ledger = stack.wait_finished(ids, timeout=60)
    succeeded = ledger.succeeded(ids)
    outcome = Outcome(
        "whole worker SIGKILLed, default settings (restarted at once)",
        stack.broker,
        size,
        kills,
        len(ids),
        len(succeeded),
        len(ids) - len(succeeded),
        len(ledger.duplicated(ids)),
        round(time.monotonic() - started, 1),
        notes=f"started again {min(delays):.1f}-{max(delays):.1f} s after the kill "
        f"(median {sorted(delays)[len(delays) // 2]:.1f} s); each task started twice: before and after the kill",
    )
    fault_results.add(outcome)
    assert outcome.lost == 0, f"lost: {set(ids) - set(succeeded)}"
    assert outcome.duplicated == 0, f"succeeded twice: {ledger.duplicated(ids)}"
    assert max(delays) <= RESTART_WITHIN, f"started again {max(delays):.1f} s after the kill"
    for task_id in ids:  # once before the kill, once after it: never while its first worker was alive
        assert ledger.counts[task_id]["task-started"] == 2, (task_id, dict(ledger.counts[task_id]))


def test_a_gone_workers_tasks_read_requeued_until_another_worker_starts_them(fault_stack: FaultStack) -> None:
    """Redis, default settings. Two bystander workers (two requeuers racing) and a live worker busy with a
    long task; the maintenance worker running two long tasks is SIGKILLed (only its pops name it: it
    writes no receipt) and nothing replaces it yet:
    both tasks are put back on their queue exactly once and read REQUEUED in GET /api/v1/tasks/{id} and
    in the history; the live worker keeps its task. A maintenance worker started later runs them."""
    stack = _defaults(fault_stack)
    stack.worker("reports")
    stack.worker("finance")
    stack.monitor()
    _, api = stack.gateway()
    busy = stack.worker("maintenance", "--concurrency=1")
    kept = stack.publish(LONG, steps=60, step_seconds=1.0)
    wait_until(lambda: _all_in(stack, "task-started", [kept], host=busy.name), timeout=60, message="busy task")
    doomed = stack.worker()
    pair = [stack.publish(LONG, steps=4, step_seconds=1.0) for _ in range(2)]
    wait_until(
        lambda: _all_in(stack, "task-progress", pair, host=doomed.name, current=1),
        timeout=90,
        interval=0.1,
        message="both tasks in progress",
    )
    killed_at = _kill(doomed)
    _only_pops_hold(stack, doomed.name, pair)

    def api_state(task_id: str) -> str:
        response = api.get(f"/api/v1/tasks/{task_id}")
        response.raise_for_status()
        return str(response.json()["status"])

    requeued = wait_until(
        lambda: _all_in(stack, "task-requeued", pair, killed_at), timeout=45, message="both tasks requeued"
    )
    assert max(requeued.values()) - killed_at < RESTART_WITHIN
    wait_until(lambda: all(api_state(t) == REQUEUED for t in pair), timeout=20, message="REQUEUED over HTTP")
    wait_until(
        lambda: all(row.state == REQUEUED for row in stack.history(pair).values()) and len(stack.history(pair)) == 2,
        timeout=30,
        message="REQUEUED in the history",
    )
    client = stack.redis.client(0)
    try:
        assert client.llen("default") == 2  # back on the queue, once each, though two requeuers looked
    finally:
        client.close()
    counts = stack.ledger().counts
    assert [counts[t]["task-requeued"] for t in pair] == [1, 1]
    assert not _events(stack, "task-started", pair, killed_at)  # nobody ran them meanwhile
    assert api_state(kept) in ("STARTED", "PROGRESS")
    assert counts[kept]["task-requeued"] == 0

    stack.worker()
    ledger = stack.wait_finished(pair, timeout=60)
    assert ledger.succeeded(pair) == pair
    assert [ledger.counts[t]["task-started"] for t in pair] == [2, 2]
    wait_until(lambda: all(api_state(t) == "SUCCESS" for t in pair), timeout=20, message="SUCCESS over HTTP")
    assert ledger.counts[kept]["task-started"] == 1
    assert ledger.counts[kept]["task-requeued"] == 0
