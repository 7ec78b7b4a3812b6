"""Fault injection against real processes: nothing accepted is lost, and what runs twice is counted.

Each scenario has a quick variant (default suite) and a full one (``-m fault``, ``scripts/faults``);
the figures of the last full run are in docs/reliability.md.
"""

from __future__ import annotations

import functools
import os
import signal
import time
import uuid
from collections import Counter
from typing import Any

import httpx
import pytest
from sqlalchemy.engine import make_url

from services.beat.main import create_app as create_beat_app
from shared import dead_letter_store
from shared.catalog import Schedule
from shared.celery_extensions.dead_letters import header_problem
from shared.contracts import DELIVERIES_PREFIX
from shared.schedules import update_entry
from tests.conftest import DEFAULT_PG
from tests.harness import connections_refused, free_port, wait_until
from tests.plugins.smtp import SMTPServer
from tests.reliability.conftest import (
    BROKERS,
    FULL_ONLY,
    SIZES,
    FaultResults,
    FaultStack,
    Ledger,
    Outcome,
    record,
)
from tests.reliability.poison_worker import COMMAND as POISON_WORKER
from tests.reliability.poison_worker import POISON_TASK

LONG = "mallops.maintenance.long_running_task"
TEST = "mallops.maintenance.test_task"
CLEANUP = "mallops.maintenance.cleanup_expired_data"
EMAIL = "mallops.notifier.send_notification_email"
ACCESS_LOGS = "mallops.reports.process_access_logs"
HEALTHY = 5


def _events_on(stack: FaultStack, type_: str, host: str, **match: Any) -> list[str]:
    return [
        e["id"]
        for e in stack.ledger().events
        if e["type"] == type_ and e.get("host") == host and all(e.get(k) == v for k, v in match.items())
    ]


def _sent_since(stack: FaultStack, name: str, since: float) -> bool:
    return any(e["type"] == "task-sent" and e.get("name") == name and e["ts"] > since for e in stack.ledger().events)


def _retried(stack: FaultStack, task_id: str) -> int:
    return stack.ledger().counts[task_id]["task-retried"]


def _duplicate_timeline(ledger: Ledger, ids: list[str], restarts_at: list[float]) -> str:
    """For each task that succeeded twice: when its runs started and succeeded, in seconds after the last
    Redis restart before them (negative: before the first restart)."""
    parts = []
    for task_id in ledger.duplicated(ids):
        marks = []
        for event in ledger.events:
            if event.get("id") == task_id and event["type"] in ("task-started", "task-succeeded"):
                before = [r for r in restarts_at if r <= event["ts"]]
                since = event["ts"] - (before[-1] if before else restarts_at[0])
                marks.append(f"{event['type'].removeprefix('task-')} {since:+.1f}s")
        parts.append(f"{task_id[:8]}: " + ", ".join(marks))
    return f"duplicates (s after the restart): {'; '.join(parts)}. " if parts else ""


def _wait_history(stack: FaultStack, ids: list[str], state: str, timeout: float) -> dict[str, Any]:
    """Wait until the monitor's history has a row in ``state`` for every id; fail with what it has."""
    deadline = time.monotonic() + timeout
    while True:
        rows = stack.history(ids)
        if len(rows) == len(ids) and all(row.state == state for row in rows.values()):
            return rows
        if time.monotonic() > deadline:
            ledger = stack.ledger()
            odd = {
                i: (rows[i].state if i in rows else None, dict(ledger.counts[i]))
                for i in ids
                if i not in rows or rows[i].state != state
            }
            pytest.fail(f"history after {timeout}s: {len(rows)} rows of {len(ids)}; not {state}: {odd}")
        time.sleep(0.25)


# -- workers killed ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("fault_stack", BROKERS, indirect=True)
def test_worker_sigkill_mid_task_is_redelivered_and_finishes(
    fault_stack: FaultStack, size: str, fault_results: FaultResults
) -> None:
    kills = 1 if size == "quick" else 20
    started = time.monotonic()
    ids = [fault_stack.publish(LONG, steps=3, step_seconds=0.5) for _ in range(kills + 4)]
    killed: list[str] = []
    # a redelivered message is taken first again, so one task may be killed many times: lift the poison cap
    # (tested on its own below) above the number of kills
    no_cap = {"MALLOPS_TASK_MAX_DELIVERIES": str(kills + 2)}
    for _ in range(kills):
        worker = fault_stack.worker(env=no_cap)
        # mid-task: the first of three progress steps is done
        running = wait_until(
            functools.partial(_events_on, fault_stack, "task-progress", worker.name, current=1),
            timeout=90,
            interval=0.1,
            message=f"a task in progress on {worker.name}",
        )
        worker.signal(signal.SIGKILL)
        worker.popen.wait(10)
        killed.extend(running)
    fault_stack.worker(env=no_cap)
    ledger = fault_stack.wait_finished(ids, timeout=120)
    most = max(Counter(killed).values())
    outcome = record(
        fault_results,
        fault_stack,
        "worker SIGKILL mid long_running_task",
        size,
        kills,
        ids,
        started,
        notes=f"{len(killed)} runs killed mid-task ({len(set(killed))} tasks, one up to {most} times), "
        "all redelivered and finished",
        finished=ledger.succeeded(ids),
    )
    assert outcome.lost == 0, f"lost: {set(ids) - set(ledger.succeeded(ids))}"
    assert set(killed) <= set(ledger.succeeded(ids))
    for task_id in killed:  # it started again after the kill
        assert ledger.counts[task_id]["task-started"] >= 2 or ledger.counts[task_id]["task-received"] >= 2


@pytest.mark.parametrize("size", FULL_ONLY)  # full run only, to keep the default suite short
@pytest.mark.parametrize("fault_stack", BROKERS, indirect=True)
def test_worker_sigterm_while_busy_finishes_its_tasks(
    fault_stack: FaultStack, size: str, fault_results: FaultResults
) -> None:
    trials = 1 if size == "quick" else 5
    started = time.monotonic()
    ids = [fault_stack.publish(LONG, steps=4, step_seconds=0.5) for _ in range(2 * trials + 2)]
    finished_in_shutdown = 0
    for _ in range(trials):
        worker = fault_stack.worker()
        running = wait_until(
            functools.partial(_events_on, fault_stack, "task-progress", worker.name, current=1),
            timeout=90,
            interval=0.1,
            message=f"a task in progress on {worker.name}",
        )
        os.kill(worker.pid, signal.SIGTERM)  # the main process only, as `docker stop` or systemd would
        assert worker.popen.wait(60) == 0, worker.log()[-3000:]
        done_here = _events_on(fault_stack, "task-succeeded", worker.name)
        assert set(running) <= set(done_here), "a running task was not finished by the warm shutdown"
        finished_in_shutdown += len(set(running))
    fault_stack.worker()
    ledger = fault_stack.wait_finished(ids, timeout=120)
    outcome = record(
        fault_results,
        fault_stack,
        "worker SIGTERM while busy",
        size,
        trials,
        ids,
        started,
        notes=f"{finished_in_shutdown} running tasks finished during the warm shutdown",
        finished=ledger.succeeded(ids),
    )
    assert outcome.lost == 0
    assert outcome.duplicated == 0


# -- a poison message ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("fault_stack", BROKERS, indirect=True)
def test_poison_message_is_dead_lettered_after_max_deliveries(
    fault_stack: FaultStack, size: str, fault_results: FaultResults
) -> None:
    trials = 1 if size == "quick" else 3
    max_deliveries = 2 if size == "quick" else fault_stack.settings.task_max_deliveries  # default: 5
    started = time.monotonic()
    fault_stack.worker(command=POISON_WORKER, env={"MALLOPS_TASK_MAX_DELIVERIES": str(max_deliveries)})
    fault_stack.monitor()
    poison = [fault_stack.publish(POISON_TASK) for _ in range(trials)]
    healthy = [fault_stack.publish(TEST, message=f"beside poison {i}") for i in range(HEALTHY)]
    ids = poison + healthy
    ledger = fault_stack.wait_finished(ids, timeout=120)
    assert set(ledger.succeeded(healthy)) == set(healthy)
    assert not ledger.succeeded(poison)

    rows = _wait_history(fault_stack, poison, "FAILURE", timeout=60)
    for row in rows.values():
        assert row.exception == "PoisonMessage"
        assert "dead-lettered" in (row.error or "")
        assert f"MALLOPS_TASK_MAX_DELIVERIES={max_deliveries}" in row.error
    cache = fault_stack.redis.client(2)
    _, found = dead_letter_store.find(cache, dead_letter_store.LetterFilter(), limit=10_000)
    letters = [vars(letter) for letter in found]
    for letter in found:  # kept whole: a replay (with force) sends a message a worker accepts
        message = dead_letter_store.get_message(cache, letter.id)
        assert message is not None
        assert letter.replayable
        assert letter.poison
        assert header_problem(message.headers) is None
        assert message.headers["id"] == letter.task_id
    runs = {task_id: int(cache.get(f"{DELIVERIES_PREFIX}{task_id}:0") or 0) + 1 for task_id in poison}
    cache.close()
    assert sorted(letter["task_id"] for letter in letters) == sorted(poison)
    assert all(letter["exception"] == "PoisonMessage" and letter["task"] == POISON_TASK for letter in letters)
    assert all(f"delivered {max_deliveries + 1} times" in letter["reason"] for letter in letters)
    assert all(count == max_deliveries + 1 for count in runs.values())  # N runs that died + the dead-lettering one
    record(
        fault_results,
        fault_stack,
        "poison message (SIGKILLs its worker)",
        size,
        trials,
        ids,
        started,
        notes=f"each poison message ran {max_deliveries} times, then FAILED (PoisonMessage) and went to "
        f"the dead letters; {HEALTHY} healthy tasks beside them succeeded",
    )


# -- Redis restarted -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("fault_stack", BROKERS, indirect=True)
def test_redis_restart_loses_nothing_and_everything_resumes(
    fault_stack: FaultStack, size: str, fault_results: FaultResults
) -> None:
    restarts = 1 if size == "quick" else 3
    started = time.monotonic()
    beat_app = create_beat_app(fault_stack.settings)
    update_entry(beat_app, "process_access_logs", schedule=Schedule(every=1.0))
    beat_app.close()
    worker = fault_stack.worker()
    fault_stack.monitor()
    beat = fault_stack.beat()
    gateway, client = fault_stack.gateway()
    body = {"task_name": "long_running_task", "kwargs": {"steps": 4, "step_seconds": 0.5}}
    accepted: list[str] = []
    restarts_at: list[float] = []
    outage_answers: list[int] = []

    def submit() -> httpx.Response:
        return client.post("/api/v1/tasks", json=body)

    def during_outage() -> None:
        end = time.monotonic() + 2.0  # the outage lasts two seconds; the gateway is asked throughout
        while time.monotonic() < end:
            try:
                outage_answers.append(submit().status_code)
            except httpx.HTTPError:
                outage_answers.append(0)

    for _ in range(restarts):
        for _ in range(6):
            response = submit()
            assert response.status_code == 202, response.text
            accepted.append(response.json()["task_id"])
        wait_until(
            lambda: _events_on(fault_stack, "task-progress", worker.name),
            timeout=60,
            message="a task running before the restart",
        )
        fault_stack.restart_redis(down=during_outage)
        restarted_at = time.time()
        restarts_at.append(restarted_at)
        wait_until(
            lambda: client.get("/readyz").status_code == 200,
            timeout=60,
            interval=0.2,
            message="the gateway ready again by itself",
        )
        response = submit()
        assert response.status_code == 202, response.text
        accepted.append(response.json()["task_id"])
        wait_until(
            functools.partial(_sent_since, fault_stack, ACCESS_LOGS, restarted_at),
            timeout=60,
            message="beat sending again after the restart",
        )

    ledger = fault_stack.wait_finished(accepted, timeout=180)
    rows = _wait_history(fault_stack, accepted, "SUCCESS", timeout=90)
    outcome = record(
        fault_results,
        fault_stack,
        "Redis restarted (AOF) with tasks queued and running",
        size,
        restarts,
        accepted,
        started,
        finished=ledger.succeeded(accepted),
        notes=_duplicate_timeline(ledger, accepted, restarts_at)
        + f"{outage_answers.count(503)} of {len(outage_answers)} submissions during the outages "
        f"answered 503; gateway, worker, beat and monitor never restarted",
    )
    assert outcome.lost == 0
    assert len(rows) == len(accepted)
    assert outage_answers
    assert set(outage_answers) == {503}, outage_answers
    assert all(p.alive() for p in (worker, beat, gateway)), "a process died"


# -- the database and the SMTP server unavailable ----------------------------------------------------------


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("fault_stack", BROKERS, indirect=True)
def test_database_unavailable_task_retries_then_succeeds(
    fault_stack: FaultStack, size: str, fault_results: FaultResults
) -> None:
    url = make_url(fault_stack.settings.sqlalchemy_url)
    if url.get_backend_name() != "postgresql":
        pytest.skip("the database outage is made with PostgreSQL's ALLOW_CONNECTIONS; SQLite has no server to stop")
    trials = 1 if size == "quick" else 3
    admin_url = make_url(os.environ.get("MALLOPS_TEST_POSTGRES_URL", DEFAULT_PG)).set(drivername="postgresql+psycopg")
    assert url.database is not None
    started = time.monotonic()
    fault_stack.worker()
    fault_stack.monitor()
    ids: list[str] = []
    for _ in range(trials):
        with connections_refused(admin_url, url.database):
            task_id = fault_stack.publish(CLEANUP)
            ids.append(task_id)
            wait_until(
                functools.partial(_retried, fault_stack, task_id),
                timeout=60,
                message="a retry while the database is unavailable",
            )
    ledger = fault_stack.wait_finished(ids, timeout=90)
    rows = _wait_history(fault_stack, ids, "SUCCESS", timeout=90)
    outcome = record(
        fault_results,
        fault_stack,
        "database unavailable during a task",
        size,
        trials,
        ids,
        started,
        finished=ledger.succeeded(ids),
        notes="PostgreSQL refused connections and dropped open ones; each task retried "
        f"(retries {sorted(row.retries for row in rows.values())}) then succeeded",
    )
    assert outcome.lost == 0
    assert all(row.retries >= 1 for row in rows.values())


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("fault_stack", BROKERS, indirect=True)
def test_smtp_down_email_is_retried_then_fails_with_the_reason(
    fault_stack: FaultStack, size: str, fault_results: FaultResults
) -> None:
    trials = 1 if size == "quick" else 3
    started = time.monotonic()
    fault_stack.worker("notifier", env={"MALLOPS_SMTP_PORT": str(free_port())})  # nothing listens there
    fault_stack.monitor()
    ids = [
        fault_stack.publish(
            EMAIL,
            queue="email",
            email=f"tenant{i}@mall.example",
            subject="Fault test",
            message="The SMTP server is down.",
            language="en",
        )
        for i in range(trials)
    ]
    ledger = fault_stack.wait_finished(ids, timeout=90)
    rows = _wait_history(fault_stack, ids, "FAILURE", timeout=60)
    max_retries = fault_stack.settings.task_max_retries
    for row in rows.values():
        assert row.retries == max_retries
        assert "refused" in (row.error or "").lower(), row.error
    assert all(ledger.counts[i]["task-retried"] == max_retries for i in ids)
    outcome = record(
        fault_results,
        fault_stack,
        "SMTP server down",
        size,
        trials,
        ids,
        started,
        notes=f"each e-mail retried {max_retries} times, then FAILURE: {next(iter(rows.values())).error}",
    )
    assert outcome.lost == 0


# -- the monitor stopped and started under load -------------------------------------------------------------


@pytest.mark.parametrize("size", FULL_ONLY)  # the monitor's own tests cover restarts without load
@pytest.mark.parametrize("fault_stack", BROKERS, indirect=True)
def test_monitor_restarts_under_load_leave_no_gap_and_no_double_count(
    fault_stack: FaultStack, size: str, fault_results: FaultResults
) -> None:
    total = 60 if size == "quick" else 600
    restarts = 2 if size == "quick" else 6
    started = time.monotonic()
    worker = fault_stack.worker()
    monitor = fault_stack.monitor()
    ids: list[str] = []
    every = total // (restarts + 1)
    for i in range(total):
        ids.append(fault_stack.publish(TEST, message=f"load {i}"))
        if i and i % every == 0 and i // every <= restarts:
            # alternately a clean stop and a SIGKILL (its unacknowledged stream entries are read again)
            if (i // every) % 2:
                monitor.stop()
            else:
                monitor.signal(signal.SIGKILL)
                monitor.popen.wait(10)
            monitor = fault_stack.monitor()
        time.sleep(0.01)  # a steady load of about 100 tasks a second, not a synchronisation
    ledger = fault_stack.wait_finished(ids, timeout=120)
    rows = _wait_history(fault_stack, ids, "SUCCESS", timeout=90)
    labels = {"name": TEST, "hostname": worker.name}
    counted = wait_until(
        lambda: (v := fault_stack.metric("celery_task_succeeded_total", **labels)) >= len(ids) and v,
        timeout=60,
        message="the succeeded counter",
    )
    received = fault_stack.metric("celery_task_received_total", **labels)
    outcome = record(
        fault_results,
        fault_stack,
        "monitor stopped/killed and restarted under load",
        size,
        restarts,
        ids,
        started,
        finished=ledger.succeeded(ids),
        notes=f"history rows {len(rows)}, celery_task_succeeded_total {counted:g}, "
        f"celery_task_received_total {received:g}",
    )
    assert outcome.lost == 0
    assert len(rows) == len(ids)
    assert counted == len(ids)
    assert received == len(ids)


# -- the notifier killed while sending: no e-mail twice ----------------------------------------------------


@pytest.mark.parametrize("size", FULL_ONLY)
@pytest.mark.parametrize("fault_stack", BROKERS, indirect=True)
def test_notifier_sigkill_while_sending_sends_no_email_twice(
    fault_stack: FaultStack, size: str, smtp: SMTPServer, fault_results: FaultResults
) -> None:
    kills, total = 3, 60
    started = time.monotonic()
    # every e-mail is in flight for half a second before the server has it: the kills land mid-send
    smtp.handler.rcpt_delay = 0.5
    try:
        run = uuid.uuid4().hex[:8]
        addresses = [f"tenant{i}-{run}@mall.example" for i in range(total)]
        ids = [
            fault_stack.publish(
                EMAIL,
                queue="email",
                email=address,
                subject="Fault test",
                message="One e-mail, whatever happens.",
                language="en",
            )
            for address in addresses
        ]
        for kill in range(kills):
            worker = fault_stack.worker("notifier")
            smtp.wait_for(8 * (kill + 1), timeout=60, where=lambda m: any(run in r for r in m.rcpt_tos))
            worker.signal(signal.SIGKILL)
            worker.popen.wait(10)
        fault_stack.worker("notifier")
        ledger = fault_stack.wait_finished(ids, timeout=120)
        received = Counter(r for m in smtp.messages for r in m.rcpt_tos if run in r)
    finally:
        smtp.handler.rcpt_delay = 0.0
    twice = [a for a in addresses if received[a] > 1]
    never = [a for a in addresses if received[a] == 0]
    # a copy sent again (its worker died after the server took it, before the row said sent) is the SAME
    # e-mail: one Message-ID per notification, which mail stores de-duplicate
    copies = {a: {m.message["Message-ID"] for m in smtp.messages if a in m.rcpt_tos} for a in twice}
    # only e-mails in flight at a kill can go out twice: at most one per notifier thread per kill
    in_flight = kills * fault_stack.settings.notifier_concurrency
    outcome = Outcome(
        "notifier SIGKILL while sending e-mail",
        fault_stack.broker,
        size,
        kills,
        len(ids),
        len(ledger.finished(ids)),
        len(ids) - len(ledger.finished(ids)),
        len(twice),
        round(time.monotonic() - started, 1),
        notes=f"e-mails received: {sum(received.values())} for {total} tasks; never sent: {len(never)}; "
        f"sent twice: {len(twice)} (at most {in_flight} could be mid-send: {kills} kills x "
        f"{fault_stack.settings.notifier_concurrency} threads), each copy with the same "
        f"Message-ID: {all(len(i) == 1 for i in copies.values())}; task runs that succeeded "
        f"twice: {len(ledger.duplicated(ids))}",
    )
    fault_results.add(outcome)
    assert outcome.lost == 0
    assert never == [], f"{len(never)} e-mails were never sent (their worker died mid-send)"
    assert len(twice) <= in_flight, f"more e-mails sent twice than could be in flight at the kills: {twice}"
    assert all(len(found) == 1 for found in copies.values()), copies
