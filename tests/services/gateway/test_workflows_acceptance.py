"""Acceptance of workflows against real processes: the finance, reports, notifier and maintenance workers on
a redis-server of this module's own (the run's shared workers, started by other tests, must not take its
steps: they lack its settings), the run's database (SQLite or PostgreSQL) and SMTP server, the gateway app.

- ``month_end_close`` for a month of the demo mall writes the revenue rows, the report files and one e-mail
  with the report attached;
- with the report step made to fail, no e-mail is sent, the workflow reads FAILURE at that step with the
  reason, and a retry from that step completes it without computing the revenue again;
- a parallel group of 20 steps then one step: the last starts once, after all 20 succeeded, and the whole
  counts once against the owner's quota;
- beat's run_workflow starts a named workflow; a worker SIGKILLed mid-workflow loses nothing.
"""

from __future__ import annotations

import datetime as dt
import shutil
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from shared.db import session_scope
from shared.models import MonthlyRevenue, Report
from shared.settings import Settings
from shared.tokens import create_token
from tests.harness import Process, RedisServer, redis_env, start_redis, wait_until
from tests.plugins.smtp import SMTPServer
from tests.services.gateway.conftest import GatewayFactory

pytestmark = pytest.mark.integration
API = "/api/v1"
MANAGEMENT = ("boss@mall.example", "cfo@mall.example")
YEAR, MONTH = 2026, 10  # a month of the demo mall (3 months to 2026-11-15)
WORKERS: dict[str, Process] = {}  # this module's workers, whose logs a timed-out workflow quotes


@pytest.fixture(scope="module")
def own_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = start_redis(tmp_path_factory.mktemp("workflows-redis"))
    yield server
    server.stop()


@pytest.fixture
def gateway(gateway: GatewayFactory, own_redis: RedisServer) -> GatewayFactory:
    """The run's gateway factory, on this module's Redis."""
    base = own_redis.url_base
    on_own = {"redis_url": base, "broker_url": f"{base}/0", "result_backend": f"{base}/1"}

    def start(**overrides: Any) -> Any:
        return gateway(**(on_own | overrides))

    return start


@pytest.fixture(scope="module")
def workflow_workers(
    worker_factory: Callable[..., Process], service_env: dict[str, str], own_redis: RedisServer
) -> Iterator[dict[str, Process]]:
    """The four workers, with the management's addresses and no retries (a failed step fails at once)."""
    env = (
        service_env
        | redis_env(own_redis)
        | {"MALLOPS_MANAGEMENT_EMAILS": ",".join(MANAGEMENT), "MALLOPS_TASK_MAX_RETRIES": "0"}
    )
    workers = {service: worker_factory(service, env=env) for service in ("finance", "reports", "notifier")}
    workers["maintenance"] = worker_factory("maintenance", "--concurrency=4", env=env)
    WORKERS.update(workers)
    yield workers
    WORKERS.clear()
    for process in workers.values():
        process.stop()


@pytest.fixture
def api(
    gateway: GatewayFactory, demo_db: Settings, workflow_workers: dict[str, Process]
) -> Iterator[tuple[httpx.Client, str]]:
    """A gateway and a finance token (finance may run month_end_close)."""
    with session_scope(demo_db) as session:
        token = create_token(session, f"finance-{time.monotonic_ns()}", "finance")
    with gateway() as client:
        client.headers["Authorization"] = f"Bearer {token}"
        yield client, token


def finished(client: httpx.Client, workflow_id: str, timeout: float = 90) -> dict[str, Any]:
    """The workflow once it is SUCCESS, FAILURE or REVOKED (polled with a deadline)."""
    seen: dict[str, Any] = {}

    def done() -> bool:
        answer = client.get(f"{API}/workflows/{workflow_id}")
        assert answer.status_code == 200, answer.text
        seen.update(answer.json())
        return seen["status"] in ("SUCCESS", "FAILURE", "REVOKED")

    try:
        wait_until(done, timeout=timeout, interval=0.2, message=f"workflow {workflow_id}")
    except pytest.fail.Exception as exc:  # say where it stood: each step's state and task
        where = [(s.get("name"), s.get("state") or s.get("status"), s.get("task_id")) for s in seen.get("steps", [])]
        pytest.fail(f"{exc}; status {seen.get('status')}, steps {where}{_logged(workflow_id, where)}")
    return seen


def _logged(workflow_id: str, where: list[tuple[Any, Any, Any]]) -> str:
    """What the workers logged about this workflow and its steps' tasks (the last lines of each)."""
    marks = [workflow_id] + [task_id for *_, task_id in where if task_id]
    said = []
    for service, process in WORKERS.items():
        lines = [line for line in process.log().splitlines() if any(mark in line for mark in marks)]
        said += [f"{service}: {line}" for line in lines[-8:]]
    return "\n" + "\n".join(said) if said else "; the workers logged nothing of it"


def steps(workflow: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {step["name"]: step for step in workflow["steps"]}


def test_month_end_close_writes_revenue_reports_and_one_email(
    api: tuple[httpx.Client, str], smtp: SMTPServer, settings: Settings
) -> None:
    client, _ = api
    before = len(smtp.handler.received)
    answer = client.post(f"{API}/workflows", json={"name": "month_end_close", "kwargs": {"year": YEAR, "month": MONTH}})
    assert answer.status_code == 202, answer.text
    workflow = finished(client, answer.json()["workflow_id"])
    assert workflow["status"] == "SUCCESS", workflow
    assert workflow["progress"] == {"done": 3, "total": 3}
    by_name = steps(workflow)
    assert [s["name"] for s in workflow["steps"]] == ["revenue", "report", "email"]
    report_id = by_name["report"]["result"]["report_id"]
    assert by_name["email"]["kwargs"] == {"report_id": report_id}  # taken from the previous step's result
    with session_scope(settings) as session:
        rows = session.scalar(select(func.count()).where(MonthlyRevenue.period == f"{YEAR}-{MONTH:02d}"))
        assert rows
        report = session.get(Report, report_id)
        assert report is not None
        files = [settings.reports_dir / name for name in (report.csv_path, report.html_path) if name]
    assert len(files) == 2
    assert all(path.is_file() for path in files)
    wait_until(lambda: len(smtp.handler.received) > before, timeout=10, message="the e-mail")
    mails = smtp.handler.received[before:]
    assert len(mails) == 1
    assert sorted(mails[0].rcpt_tos) == sorted(MANAGEMENT)
    attached = {part.get_filename(): part.get_content() for part in mails[0].message.iter_attachments()}
    assert set(attached) == {path.name for path in files}
    csv_text = attached[files[0].name]
    assert isinstance(csv_text, str | bytes)
    assert len(csv_text) > 0


def _break_monthly_reports(reports_dir: Path) -> Path:
    """Make the monthly report's files unwritable: a file where its folder goes."""
    folder = reports_dir / "monthly"
    if folder.is_dir():
        shutil.rmtree(folder)
    reports_dir.mkdir(parents=True, exist_ok=True)
    folder.write_text("not a folder")
    return folder


def test_a_failed_report_step_stops_the_email_and_a_retry_resumes_there(
    api: tuple[httpx.Client, str], smtp: SMTPServer, settings: Settings
) -> None:
    client, _ = api
    before = len(smtp.handler.received)
    blocker = _break_monthly_reports(settings.reports_dir)
    try:
        answer = client.post(
            f"{API}/workflows", json={"name": "month_end_close", "kwargs": {"year": YEAR, "month": MONTH}}
        )
        assert answer.status_code == 202, answer.text
        workflow_id = answer.json()["workflow_id"]
        failed = finished(client, workflow_id)
    finally:
        blocker.unlink()
    assert failed["status"] == "FAILURE", failed
    assert failed["failed_step"] == "report"
    assert "FileExistsError" in failed["reason"]
    by_name = steps(failed)
    assert [by_name[n]["state"] for n in ("revenue", "report", "email")] == ["SUCCESS", "FAILURE", "PENDING"]
    assert by_name["email"]["task_id"] is None  # never sent
    with session_scope(settings) as session:
        computed = session.scalar(
            select(func.max(MonthlyRevenue.computed_at)).where(MonthlyRevenue.period == f"{YEAR}-{MONTH:02d}")
        )

    retried = client.post(f"{API}/workflows/{workflow_id}/retry")
    assert retried.status_code == 202, retried.text
    done = finished(client, workflow_id)
    assert done["status"] == "SUCCESS", done
    assert done["retries"] == 1
    by_name = steps(done)
    assert by_name["revenue"]["attempts"] == 1  # kept, not computed again
    assert by_name["revenue"]["task_id"] == steps(failed)["revenue"]["task_id"]
    assert by_name["report"]["attempts"] == 2
    with session_scope(settings) as session:
        again = session.scalar(
            select(func.max(MonthlyRevenue.computed_at)).where(MonthlyRevenue.period == f"{YEAR}-{MONTH:02d}")
        )
    assert again == computed
    wait_until(lambda: len(smtp.handler.received) > before, timeout=10, message="the e-mail")
    assert len(smtp.handler.received) == before + 1
    assert client.post(f"{API}/workflows/{workflow_id}/retry").status_code == 409


def test_the_catalog_lists_the_named_workflows(api: tuple[httpx.Client, str]) -> None:
    client, _ = api
    flows = {entry["name"]: entry for entry in client.get(f"{API}/catalog").json()["workflows"]}
    assert set(flows) == {"month_end_close", "nightly_reports"}
    assert [s["task_name"] for s in flows["month_end_close"]["steps"]] == [
        "calculate_monthly_revenue",
        "generate_monthly_report",
        "send_report_email",
    ]
    refused = client.post(f"{API}/workflows", json={"name": "nightly_reports", "kwargs": {}})
    assert refused.status_code == 403  # finance may not run the maintenance step
    assert refused.json()["permission"] == "tasks.submit.maintenance"
    bad = client.post(f"{API}/workflows", json={"steps": [{"task_name": "generate_daily_report", "kwargs": {"x": 1}}]})
    assert bad.status_code == 422
    assert bad.json()["errors"][0]["loc"] == ["body", "steps", 0, "kwargs", "x"]
    assert client.post(f"{API}/workflows", json={"name": "no_such"}).status_code == 404


def test_twenty_in_parallel_then_one_counts_once_against_the_quota(
    gateway: GatewayFactory, migrated: Settings, workflow_workers: dict[str, Process]
) -> None:
    with session_scope(migrated) as session:
        token = create_token(session, f"user-{time.monotonic_ns()}", "user")
    with gateway(task_max_per_user=1) as client:
        client.headers["Authorization"] = f"Bearer {token}"
        group = [{"task_name": "test_task", "kwargs": {"message": f"part {i}"}} for i in range(20)]
        body = {"steps": [{"parallel": group}, {"name": "last", "task_name": "test_task"}]}
        answer = client.post(f"{API}/workflows", json=body)
        assert answer.status_code == 202, answer.text
        # one workflow of 21 steps is one unit of the quota of 1: a second one waits
        second = client.post(f"{API}/workflows", json=body)
        assert second.status_code == 429, second.text
        workflow = finished(client, answer.json()["workflow_id"])
        assert workflow["status"] == "SUCCESS", workflow
        by_name = steps(workflow)
        last = by_name.pop("last")
        assert len(by_name) == 20
        assert last["attempts"] == 1
        assert last["after"] == sorted(by_name, key=lambda n: int(n.split(".")[1]))
        ends = [dt.datetime.fromisoformat(step["finished_at"]) for step in by_name.values()]
        assert dt.datetime.fromisoformat(last["started_at"]) >= max(ends)
        # finished: the quota is free again
        assert client.post(f"{API}/workflows", json=body).status_code == 202


def test_beat_starts_a_named_workflow_with_run_workflow(
    gateway: GatewayFactory, demo_db: Settings, workflow_workers: dict[str, Process]
) -> None:
    """What the default entry month_end_close publishes (run_workflow) starts the workflow, owned by beat's
    owner or, sent by hand, by the sender."""
    owner = f"admin-{time.monotonic_ns()}"
    with session_scope(demo_db) as session:
        token = create_token(session, owner, "admin")
    with gateway() as client:
        client.headers["Authorization"] = f"Bearer {token}"
        kwargs = {"name": "month_end_close", "kwargs": {"year": YEAR, "month": MONTH}}
        sent = client.post(f"{API}/tasks", json={"task_name": "run_workflow", "kwargs": kwargs})
        assert sent.status_code == 202, sent.text
        found: list[dict[str, Any]] = []

        def listed() -> bool:
            page = client.get(f"{API}/workflows", params={"name": "month_end_close", "limit": 500}).json()
            # this test's owner only: the database is the run's, and other tests' workflows are in it (one
            # started by run_workflow on the run's own Redis, whose steps no worker of this module takes)
            found[:] = [row for row in page["results"] if row["owner"] == owner]
            return bool(found)

        wait_until(listed, timeout=30, message="the workflow run_workflow starts")
        workflow = finished(client, found[0]["workflow_id"])
        assert workflow["status"] == "SUCCESS", (workflow["failed_step"], workflow["reason"])
        assert workflow["kwargs"] == {"year": YEAR, "month": MONTH}


def test_a_worker_killed_mid_workflow_loses_nothing(
    gateway: GatewayFactory,
    migrated: Settings,
    worker_factory: Callable[..., Process],
    service_env: dict[str, str],
    workflow_workers: dict[str, Process],
    own_redis: RedisServer,
) -> None:
    """SIGKILL the only maintenance worker while a step runs: the step's message comes back (the next worker's
    requeuer), runs again under the same task id, and the workflow goes on to SUCCESS; nothing runs twice
    but the killed step."""
    workflow_workers["maintenance"].stop()  # this test's workers only
    fast = (
        service_env
        | redis_env(own_redis)
        | {"MALLOPS_WORKER_OFFLINE_AFTER": "3", "MALLOPS_WORKER_HEARTBEAT_INTERVAL": "0.5"}
    )
    doomed = worker_factory("maintenance", env=fast)
    with session_scope(migrated) as session:
        token = create_token(session, f"admin-{time.monotonic_ns()}", "admin")
    with gateway() as client:
        client.headers["Authorization"] = f"Bearer {token}"
        body = {
            "steps": [
                {"name": "long", "task_name": "long_running_task", "kwargs": {"steps": 6, "step_seconds": 0.5}},
                {"name": "after", "task_name": "test_task", "kwargs": {"message": "after the kill"}},
            ]
        }
        answer = client.post(f"{API}/workflows", json=body)
        assert answer.status_code == 202, answer.text
        workflow_id = answer.json()["workflow_id"]

        def running() -> bool:
            return bool(steps(client.get(f"{API}/workflows/{workflow_id}").json())["long"]["state"] == "STARTED")

        wait_until(running, timeout=30, interval=0.1, message="the first step running")
        doomed.signal(signal.SIGKILL)
        doomed.popen.wait(10)
        survivor = worker_factory("maintenance", env=fast)
        try:
            workflow = finished(client, workflow_id, timeout=90)
        finally:
            survivor.stop()
    assert workflow["status"] == "SUCCESS", workflow
    by_name = steps(workflow)
    assert by_name["long"]["attempts"] == 1  # the same message, delivered again: not a new attempt
    assert by_name["after"]["attempts"] == 1
    assert by_name["after"]["result"] == "Task received: after the kill"
