"""``python -m bench console-pages``: each console page's render time with 100,000 rows of task history.

Per database (SQLite in a temporary file, and PostgreSQL in a database of its own on
``MALLOPS_BENCH_POSTGRES_URL``, default ``postgresql://postgres@127.0.0.1:5432/postgres``, dropped at the
end): a redis-server of the run's own on a free port (stopped by its PID), the schema migrated, the history
filled with ``--rows`` tasks over the last 7 days (every state, 50 owners, arguments, failures with
tracebacks) plus 1,000 audit rows, 200 exports and 5,000 workflows (at 100,000 rows). Then the history queries
behind the task pages are timed alone (on PostgreSQL the database's own work, which the CPU time below leaves
out), and the gateway app is served by uvicorn in a thread. An admin and a user sign in to the console; each
page is requested ``--requests`` times one after the other (after 3 warm-up requests) and its latency (request
sent to body read, on 127.0.0.1) is summed up as p50, p95 and max, beside the CPU time this process spent on
it (gateway and client; on a shared machine the latency follows the load average, the CPU time much less). The
overview keeps its counts for 10 s: it is measured both as served (``overview``) and with that cache emptied
before every request (``overview (cold)``).

Self-contained on purpose: no import of the tests package (the bench runs without the test extra).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import random
import re
import shutil
import socket
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import uvicorn
from sqlalchemy import create_engine, insert, text
from sqlalchemy.engine import make_url

from shared.contracts import TaskState
from shared.db import migrate, reset_engines, session_scope
from shared.models import AuditEntry, Export, TaskRecord, Workflow, WorkflowStep
from shared.settings import Settings, get_settings
from shared.tokens import create_token

TARGET_P95_MS = 50.0
WARM_UP = 3
NAMES = ("mallops.maintenance.test_task", "mallops.reports.export_data", "mallops.finance.check_pending_bills")
STATES = (
    (TaskState.SUCCESS, 0.80),
    (TaskState.FAILURE, 0.08),
    (TaskState.REVOKED, 0.02),
    (TaskState.STARTED, 0.05),
    (TaskState.SENT, 0.05),
)
CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')


@dataclass
class PageTiming:
    page: str
    path: str
    p50_ms: float
    p95_ms: float
    max_ms: float
    requests: int
    cpu_p50_ms: float  # CPU time of this process (gateway and client) per request: what load cannot inflate
    cpu_p95_ms: float

    @property
    def within_target(self) -> bool:
        return self.p95_ms < TARGET_P95_MS


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(check: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.05)
    raise RuntimeError(f"timed out waiting for {what}")


@contextlib.contextmanager
def redis_server(workdir: Path) -> Iterator[str]:
    """A redis-server of the run's own (no persistence), stopped by its PID."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("console-pages: redis-server is needed (apt-get install redis-server)")
    port = free_port()
    process = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(workdir)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
    )
    try:

        def answers() -> bool:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return True
            return False

        wait_for(answers, "redis-server")
        yield f"redis://127.0.0.1:{port}"
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)


@contextlib.contextmanager
def postgres_database(admin_url: str) -> Iterator[str]:
    """A fresh PostgreSQL database for the run, dropped at the end."""
    name = f"mallops_bench_console_{uuid.uuid4().hex[:8]}"
    engine = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with engine.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield make_url(admin_url).set(database=name).render_as_string(hide_password=False)
    finally:
        reset_engines()  # close the app's pooled connections before the drop
        with engine.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        engine.dispose()


@contextlib.contextmanager
def platform_settings(database_url: str, redis_url: str, data_dir: Path) -> Iterator[Settings]:
    """The MALLOPS_* environment of the run, applied to this process (as a service would read it)."""
    values = {
        "MALLOPS_ENVIRONMENT": "test",
        "MALLOPS_DATABASE_URL": database_url,
        "MALLOPS_REDIS_URL": redis_url,
        "MALLOPS_BROKER_URL": f"{redis_url}/0",
        "MALLOPS_RESULT_BACKEND": f"{redis_url}/1",
        "MALLOPS_DATA_DIR": str(data_dir),
        "MALLOPS_LOG_LEVEL": "WARNING",
        "MALLOPS_RATE_LIMIT_PER_MINUTE": "1000000",  # the bench measures pages, not the token's rate limit
    }
    saved = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    get_settings.cache_clear()
    reset_engines()
    try:
        yield get_settings()
    finally:
        for key, old in saved.items():
            if old is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = old
        get_settings.cache_clear()
        reset_engines()


def _history_row(rng: random.Random, now: dt.datetime, i: int) -> dict[str, Any]:
    state = rng.choices([s for s, _ in STATES], [w for _, w in STATES])[0]
    sent = now - dt.timedelta(seconds=rng.uniform(0, 7 * 86400))
    finished = state in (TaskState.SUCCESS, TaskState.FAILURE, TaskState.REVOKED)
    runtime = round(rng.uniform(0.01, 5.0), 3)
    return {
        "task_id": str(uuid.UUID(int=rng.getrandbits(128))),
        "task_name": NAMES[i % len(NAMES)],
        "queue": "default",
        "state": str(state),
        "owner": f"owner-{i % 50}",
        "worker": "maintenance@bench",
        "retries": 0,
        "arguments": {"args": [], "kwargs": {"filters": {"store_id": i % 200}}},
        "exception": "RequestedFailure" if state == TaskState.FAILURE else None,
        "error": "failed on request" if state == TaskState.FAILURE else None,
        "traceback": "Traceback (most recent call last):\n  ...\nRequestedFailure"
        if state == TaskState.FAILURE
        else None,
        "sent_at": sent,
        "started_at": sent + dt.timedelta(seconds=0.05) if state != TaskState.SENT else None,
        "finished_at": sent + dt.timedelta(seconds=runtime) if finished else None,
        "runtime": runtime if finished else None,
        "queue_wait": 0.05,
        "last_event_seq": 0,
        "updated_at": sent,
    }


def fill(settings: Settings, rows: int, seed: int = 17) -> None:
    """``rows`` history rows over the last 7 days, 1,000 audit rows, 200 exports and ``rows // 20``
    workflows of 3 steps, in batches; on PostgreSQL then VACUUM ANALYZE (what autovacuum does soon after
    such a load; SQLite is left as mallops runs it)."""
    rng = random.Random(seed)
    now = dt.datetime.now(dt.UTC)
    batch = 5000
    for start in range(0, rows, batch):
        with session_scope(settings) as session:
            session.execute(
                insert(TaskRecord), [_history_row(rng, now, i) for i in range(start, min(start + batch, rows))]
            )
    with session_scope(settings) as session:
        session.execute(
            insert(AuditEntry),
            [
                {
                    "at": now - dt.timedelta(minutes=i),
                    "actor": f"owner-{i % 50}",
                    "action": "task.submit",
                    "target": "export_data",
                    "outcome": "ok",
                    "details": {"i": i},
                }
                for i in range(1000)
            ],
        )
        session.execute(
            insert(Export),
            [
                {
                    "task_id": str(uuid.uuid4()),
                    "owner": f"owner-{i % 50}",
                    "dataset": "stores",
                    "format": "csv",
                    "filters": {},
                    "status": "done",
                    "file_name": f"stores-{i}.csv",
                    "rows": 200,
                    "size_bytes": 12_345,
                    "created_at": now - dt.timedelta(hours=i),
                }
                for i in range(200)
            ],
        )
    _fill_workflows(settings, rng, now, max(rows // 20, 1))
    if make_url(settings.database_url).get_backend_name() == "postgresql":
        # VACUUM (outside a transaction) sets the visibility map, so that index-only scans (the overview's
        # counts) read no table page: what autovacuum does after a bulk insert (PostgreSQL 13 and later)
        engine = create_engine(settings.database_url, isolation_level="AUTOCOMMIT")
        with engine.connect() as connection:
            connection.execute(text("VACUUM ANALYZE"))
        engine.dispose()


def _fill_workflows(settings: Settings, rng: random.Random, now: dt.datetime, count: int) -> None:
    """``count`` finished nightly_reports-shaped workflows over the last 7 days (two steps in parallel,
    then one), 10 % failed at their second step; 50 owners, as the history."""
    workflows: list[dict[str, Any]] = []
    steps: list[dict[str, Any]] = []
    for i in range(count):
        created = now - dt.timedelta(seconds=rng.uniform(0, 7 * 86400))
        failed = rng.random() < 0.1
        workflow_id = str(uuid.UUID(int=rng.getrandbits(128)))
        workflows.append(
            {
                "id": workflow_id,
                "name": "nightly_reports",
                "owner": f"owner-{i % 50}",
                "kwargs": {"date": created.date().isoformat()},
                "status": "FAILURE" if failed else "SUCCESS",
                "failed_step": "access_statistics" if failed else None,
                "reason": "step 'access_statistics' failed: RuntimeError: bench" if failed else None,
                "failures": 1 if failed else 0,
                "created_at": created,
                "started_at": created,
                "finished_at": created + dt.timedelta(seconds=3),
            }
        )
        shape = [
            ("daily_report", "generate_daily_report", [], "SUCCESS"),
            ("access_statistics", "generate_access_statistics", [], "FAILURE" if failed else "SUCCESS"),
            (
                "cleanup",
                "cleanup_expired_data",
                ["daily_report", "access_statistics"],
                "PENDING" if failed else "SUCCESS",
            ),
        ]
        for position, (name, task, after, state) in enumerate(shape):
            steps.append(
                {
                    "workflow_id": workflow_id,
                    "name": name,
                    "position": position,
                    "task_name": task,
                    "kwargs": {},
                    "after": after,
                    "from_previous": {},
                    "state": state,
                    "task_id": None if state == "PENDING" else str(uuid.UUID(int=rng.getrandbits(128))),
                    "attempts": 0 if state == "PENDING" else 1,
                    "error": "RuntimeError: bench" if state == "FAILURE" else None,
                }
            )
    for start in range(0, count, 1000):
        with session_scope(settings) as session:
            session.execute(insert(Workflow), workflows[start : start + 1000])
            session.execute(insert(WorkflowStep), steps[start * 3 : (start + 1000) * 3])


@contextlib.contextmanager
def gateway(settings: Settings) -> Iterator[tuple[str, Any]]:
    """The gateway app (``create_app``) served by uvicorn in a thread; (base URL, the app)."""
    from services.gateway.app import create_app  # the bench's only service import: the app it measures

    app = create_app(settings)
    port = free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", access_log=False, lifespan="on")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="console-bench-gateway", daemon=True)
    thread.start()
    try:
        wait_for(lambda: server.started or not thread.is_alive(), "the gateway")
        if not server.started:
            raise RuntimeError("the gateway did not start")
        yield f"http://127.0.0.1:{port}", app
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def sign_in(client: httpx.Client, token: str) -> None:
    form = client.get("/console/login")
    found = CSRF.search(form.text)
    if found is None:
        raise RuntimeError("no CSRF field on the sign-in form")
    answer = client.post("/console/login", data={"token": token, "csrf_token": found.group(1)})
    if answer.status_code != 303:
        raise RuntimeError(f"sign-in answered {answer.status_code}")


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q
    low = int(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


def time_page(
    client: httpx.Client, page: str, path: str, requests: int, before: Callable[[], None] | None = None
) -> PageTiming:
    latencies, cpu = [], []
    for i in range(WARM_UP + requests):
        if before is not None:
            before()
        started, cpu_started = time.perf_counter(), time.process_time()
        answer = client.get(path)
        elapsed = (time.perf_counter() - started) * 1000
        cpu_ms = (time.process_time() - cpu_started) * 1000
        if answer.status_code != 200:
            raise RuntimeError(f"{path} answered {answer.status_code}: {answer.text[:300]}")
        if i >= WARM_UP:
            latencies.append(elapsed)
            cpu.append(cpu_ms)
    return PageTiming(
        page,
        path,
        round(_percentile(latencies, 0.5), 1),
        round(_percentile(latencies, 0.95), 1),
        round(max(latencies), 1),
        requests,
        round(_percentile(cpu, 0.5), 1),
        round(_percentile(cpu, 0.95), 1),
    )


def pages(settings: Settings, sample_task: str, sample_workflow: str) -> list[tuple[str, str, str]]:
    """(page, path, who): every console page as an admin, and a user's own tasks; the sign-in form to
    no one."""
    return [
        ("sign-in form", "/console/login", "nobody"),
        ("overview", "/console/", "admin"),
        ("overview (cold)", "/console/", "admin"),
        ("tasks", "/console/tasks", "admin"),
        ("tasks, failed", "/console/tasks?status=FAILURE", "admin"),
        ("tasks, one owner", "/console/tasks?owner=owner-7", "admin"),
        ("tasks, a user's own", "/console/tasks", "user"),
        ("a task", f"/console/tasks/{sample_task}", "admin"),
        ("failures and dead letters", "/console/failures", "admin"),
        ("schedules", "/console/schedules", "admin"),
        ("workers and queues", "/console/workers", "admin"),
        ("reports and exports", "/console/reports", "admin"),
        ("audit trail", "/console/audit", "admin"),
        ("workflows", "/console/workflows", "admin"),
        ("workflows, a user's own", "/console/workflows", "user"),
        ("a workflow", f"/console/workflows/{sample_workflow}", "admin"),
    ]


def query_times(settings: Settings, requests: int) -> dict[str, float]:
    """The history queries behind the task pages, timed alone (median of ``requests`` runs, ms): on
    PostgreSQL the database's own work, which the CPU time of this process does not include."""
    from services.gateway import task_history

    cases: dict[str, dict[str, Any]] = {
        "newest 25": {},
        "newest 25 of one owner": {"owner": "owner-7"},
        "newest 25 failed": {"status": "FAILURE"},
        "newest 25 failed or revoked": {"status": "FAILURE,REVOKED"},
    }
    times = {}
    with session_scope(settings) as session:
        for name, filters in cases.items():
            runs = []
            for _ in range(max(requests // 4, 5)):
                started = time.perf_counter()
                task_history.query_history(session, limit=25, **filters)
                runs.append((time.perf_counter() - started) * 1000)
            times[name] = round(_percentile(runs, 0.5), 2)
    return times


def measure(database: str, database_url: str, rows: int, requests: int, workdir: Path) -> dict[str, Any]:
    with redis_server(workdir) as redis_url, platform_settings(database_url, redis_url, workdir) as settings:
        migrate(settings)
        started = time.monotonic()
        fill(settings, rows)
        fill_seconds = round(time.monotonic() - started, 1)
        with session_scope(settings) as session:
            admin = create_token(session, "bench-admin", "admin")
            user = create_token(session, "owner-7", "user")  # owns 1/50 of the history
            sample = session.scalar(text("SELECT task_id FROM task_history WHERE state = 'FAILURE' LIMIT 1"))
            sample_workflow = session.scalar(text("SELECT id FROM workflows WHERE status = 'FAILURE' LIMIT 1"))
        queries = query_times(settings, requests)
        print(f"  {database:10} history queries (median ms): {queries}", flush=True)
        with gateway(settings) as (url, app):
            timings = []
            clients = {who: httpx.Client(base_url=url, timeout=60) for who in ("admin", "user", "nobody")}
            try:
                sign_in(clients["admin"], admin)
                sign_in(clients["user"], user)
                for page, path, who in pages(settings, str(sample), str(sample_workflow)):
                    cold = app.state.runtime.console.pop if page.endswith("(cold)") else None
                    before = (lambda: cold("console_overview", None)) if cold else None  # noqa: B023 - used at once
                    timings.append(time_page(clients[who], page, path, requests, before))
                    last = timings[-1]
                    print(
                        f"  {database:10} {page:28} p95 {last.p95_ms:6.1f} ms, CPU p95 {last.cpu_p95_ms:6.1f} ms",
                        flush=True,
                    )
            finally:
                for client in clients.values():
                    client.close()
    return {
        "database": database,
        "rows": rows,
        "fill_seconds": fill_seconds,
        "history_queries_median_ms": queries,
        "load_average_1m_after": round(os.getloadavg()[0], 1),  # the machine is shared: read p95 against it
        "cpus": os.cpu_count(),
        "pages": [timing.__dict__ | {"within_target": timing.within_target} for timing in timings],
    }


def run(databases: list[str], rows: int, requests: int, out: Path | None) -> dict[str, Any]:
    results = []
    for database in databases:
        with tempfile.TemporaryDirectory(prefix="mallops-console-bench-") as tmp:
            workdir = Path(tmp)
            if database == "sqlite":
                results.append(measure(database, f"sqlite:///{workdir / 'bench.db'}", rows, requests, workdir))
            else:
                admin_url = os.environ.get(
                    "MALLOPS_BENCH_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
                )
                with postgres_database(admin_url) as url:
                    results.append(measure(database, url, rows, requests, workdir))
    report = {"scenario": "console-pages", "target_p95_ms": TARGET_P95_MS, "results": results}
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=2) + "\n")
    print(markdown(report), end="")
    return report


def markdown(report: dict[str, Any]) -> str:
    """The p95 of each page per database as a Markdown table."""
    results = report["results"]
    head = "".join(
        f"{r['database']}: load average {r.get('load_average_1m_after')} on {r.get('cpus')} CPUs after the run\n"
        for r in results
    )
    head += "\n| page | " + " | ".join(f"{r['database']} p95 (p50) ms, CPU p95 ms" for r in results) + " |\n"
    head += "|---|" + "---:|" * len(results) + "\n"
    lines = []
    for i, timing in enumerate(results[0]["pages"] if results else []):
        cells = []
        for result in results:
            t = result["pages"][i]
            mark = "" if t["within_target"] else " **over**"
            cells.append(f"{t['p95_ms']:.1f} ({t['p50_ms']:.1f}){mark}, {t['cpu_p95_ms']:.1f}")
        lines.append(f"| {timing['page']} | " + " | ".join(cells) + " |\n")
    queries = "".join(
        f"\n{r['database']} history queries alone (median ms): "
        + ", ".join(f"{name} {value}" for name, value in r.get("history_queries_median_ms", {}).items())
        for r in results
    )
    return head + "".join(lines) + queries + "\n"
