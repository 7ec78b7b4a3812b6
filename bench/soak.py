"""The soak: the whole platform under steady load with a random fault every minute, then every accepted task
checked (``./scripts/soak --minutes N``; docs/reliability.md).

Everything runs on this machine with the shipped defaults (no shortened timeouts): a redis-server of the
run's own with AOF (broker, results, cache), a database of its own (a fresh PostgreSQL database when the
server at ``MALLOPS_TEST_POSTGRES_URL`` answers, else SQLite), an SMTP server in this process, and real
``mallops serve`` processes: gateway, monitor, beat and the four workers. First a burst measures the
platform's capacity (test_task over HTTP, batch submissions); then tasks are submitted one request each at
``--rate`` per second (default: half the measured capacity): test_task, long_running_task and
send_notification_email. Every ``--fault-every`` seconds one fault, chosen at random: a worker SIGKILLed
(its process group; started again at once under the same name), Redis restarted under load, the monitor
SIGKILLed and started again, a database outage (PostgreSQL: connections refused and open ones dropped for
10 s), an SMTP outage (15 s). The RSS of every process (with its children) is sampled every 5 s.

At the end: load stops, every accepted task (a ``202``) must reach a final event in ``mallops:events``
(lost = accepted - finished), and each task whose body succeeded twice is matched with the fault that
explains it (a worker kill or Redis restart between its first start and its second). Results go to
``--out``: ``summary.json``, ``table.md``, ``rss.csv`` and ``rss.png`` (matplotlib, the ``bench`` extra).
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import datetime as dt
import json
import os
import random
import signal
import sys
import threading
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil
import redis
from aiosmtpd.controller import Controller
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from bench.processes import (
    Process,
    RedisServer,
    drop_sessions,
    free_port,
    service_argv,
    spawn,
    start_redis,
    start_worker,
    wait_http_ready,
    wait_until,
)
from bench.smtp_server import SMTPServer
from shared.contracts import EVENT_STREAM
from shared.db import migrate, reset_engines, session_scope
from shared.settings import get_settings
from shared.tokens import create_token

DEFAULT_PG = "postgresql://postgres@127.0.0.1:5432/postgres"
FINAL = ("task-succeeded", "task-failed", "task-revoked", "task-rejected")
WORKERS = ("maintenance", "notifier", "reports", "finance")
SAMPLE_EVERY = 5.0
MIX = (("test_task", 0.88), ("send_notification_email", 0.10), ("long_running_task", 0.02))


@dataclass
class Fault:
    at: float  # epoch seconds
    kind: str
    detail: str = ""
    seconds: float = 0.0


@dataclass
class Ledger:
    """The event stream read incrementally: per task id, the count and the times of each event type."""

    last: str = "0-0"
    counts: dict[str, Counter[str]] = field(default_factory=lambda: defaultdict(Counter))
    starts: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))

    def read(self, client: redis.Redis[bytes]) -> None:
        while True:
            entries = client.xrange(EVENT_STREAM, f"({self.last}", "+", count=10_000)
            if not entries:
                return
            for entry_id, fields in entries:
                self.last = entry_id.decode()
                event = json.loads(fields[b"e"])
                task_id = event.get("id")
                if task_id:
                    self.counts[task_id][event["type"]] += 1
                    if event["type"] == "task-started":
                        self.starts[task_id].append(float(event["ts"]))

    def finished(self, task_id: str) -> bool:
        return any(self.counts[task_id][t] for t in FINAL)


class Platform:
    """The processes of the run, by role; each can be killed and started again."""

    def __init__(self, workdir: Path, env: dict[str, str], redis_server: RedisServer, smtp: SMTPServer) -> None:
        self.workdir = workdir
        self.env = env
        self.redis = redis_server
        self.smtp = smtp
        self.logs = workdir / "logs"
        self.gateway_port = free_port()
        self.monitor_port = free_port()
        self.roles: dict[str, Process] = {}
        self.names: dict[str, str] = {}
        self.lock = threading.Lock()

    def start_worker(self, service: str) -> None:
        name = self.names.setdefault(service, f"{service}-soak@127.0.0.1")
        process = start_worker(service, self.env, self.logs, hostname=name)
        with self.lock:
            self.roles[f"worker {service}"] = process

    def start_monitor(self) -> None:
        argv = service_argv("monitor", f"--port={self.monitor_port}", "--name=monitor-soak")
        process = spawn("monitor", argv, self.env, self.logs)
        wait_http_ready(process, f"http://127.0.0.1:{self.monitor_port}/health")
        with self.lock:
            self.roles["monitor"] = process

    def start_gateway(self) -> None:
        process = spawn("gateway", service_argv("gateway", f"--port={self.gateway_port}"), self.env, self.logs)
        wait_http_ready(process, f"http://127.0.0.1:{self.gateway_port}/readyz")
        with self.lock:
            self.roles["gateway"] = process

    def start_beat(self) -> None:
        process = spawn("beat", service_argv("beat"), self.env, self.logs)
        with self.lock:
            self.roles["beat"] = process

    def supervise(self) -> list[Fault]:
        """Start again any process that exited by itself (compose's ``restart: unless-stopped``); each is
        recorded as a crash."""
        crashes = []
        if self.redis.process is not None and not self.redis.process.alive():
            crashes.append(Fault(time.time(), "crash", "redis-server"))
            self.redis = start_redis(self.workdir / "redis", port=self.redis.port, appendonly=True)
        with self.lock:
            dead = [role for role, process in self.roles.items() if not process.alive()]
        for role in dead:
            crashes.append(Fault(time.time(), "crash", role))
            if role.startswith("worker "):
                self.start_worker(role.removeprefix("worker "))
            else:
                {"monitor": self.start_monitor, "gateway": self.start_gateway, "beat": self.start_beat}[role]()
        return crashes

    def pids(self) -> dict[str, int]:
        with self.lock:
            found = {role: p.popen.pid for role, p in self.roles.items() if p.alive()}
        if self.redis.process is not None and self.redis.process.alive():
            found["redis-server"] = self.redis.process.popen.pid
        found["soak (load, SMTP)"] = os.getpid()
        return found

    def stop(self) -> None:
        with self.lock:
            processes = list(self.roles.values())
        for process in processes:
            process.stop()
        self.redis.stop()


# -- faults ---------------------------------------------------------------------------------------------


class Faults:
    def __init__(self, platform: Platform, pg_admin: str | None, database: str | None, rng: random.Random) -> None:
        self.platform = platform
        self.pg_admin = pg_admin
        self.database = database
        self.rng = rng
        self.done: list[Fault] = []

    def kinds(self) -> list[str]:
        kinds = ["worker SIGKILL", "Redis restart", "monitor restart", "SMTP outage"]
        if self.pg_admin:
            kinds.append("database outage")
        return kinds

    def one(self) -> Fault:
        kind = self.rng.choice(self.kinds())
        fault = Fault(time.time(), kind)
        began = time.monotonic()
        if kind == "worker SIGKILL":
            service = self.rng.choice(WORKERS)
            fault.detail = service
            process = self.platform.roles[f"worker {service}"]
            process.signal(signal.SIGKILL)
            process.popen.wait(15)
            self.platform.start_worker(service)
        elif kind == "Redis restart":
            port = self.platform.redis.port
            self.platform.redis.stop()
            time.sleep(2)  # the outage itself
            self.platform.redis = start_redis(self.platform.workdir / "redis", port=port, appendonly=True)
        elif kind == "monitor restart":
            process = self.platform.roles["monitor"]
            process.signal(signal.SIGKILL)
            process.popen.wait(15)
            self.platform.start_monitor()
        elif kind == "SMTP outage":
            self.platform.smtp.stop()
            time.sleep(15)
            # aiosmtpd's controller cannot start twice: a new one, same port, same recording handler
            smtp = self.platform.smtp
            smtp.controller = Controller(
                smtp.handler, hostname=smtp.host, port=smtp.port, auth_require_tls=False, auth_required=False
            )
            smtp.start()
        elif kind == "database outage":
            self.database_outage(10)
        fault.seconds = round(time.monotonic() - began, 1)
        self.done.append(fault)
        return fault

    def database_outage(self, seconds: float) -> None:
        assert self.pg_admin
        assert self.database
        admin = create_engine(self.pg_admin, isolation_level="AUTOCOMMIT")
        try:
            with admin.connect() as conn:
                conn.execute(text(f'ALTER DATABASE "{self.database}" ALLOW_CONNECTIONS false'))
                drop_sessions(conn, self.database)
            time.sleep(seconds)
        finally:
            with admin.connect() as conn:
                conn.execute(text(f'ALTER DATABASE "{self.database}" ALLOW_CONNECTIONS true'))
            admin.dispose()


# -- load and sampling ----------------------------------------------------------------------------------


def submission(kind: str, n: int) -> dict[str, Any]:
    if kind == "test_task":
        return {"task_name": "test_task", "kwargs": {"message": f"soak {n}"}}
    if kind == "long_running_task":
        return {"task_name": "long_running_task", "kwargs": {"steps": 2, "step_seconds": 0.25}}
    return {
        "task_name": "send_notification_email",
        "kwargs": {
            "email": f"tenant{n % 50}@mall.example",
            "subject": "Soak",
            "message": f"soak {n}",
            "language": "en",
        },
    }


@dataclass
class Load:
    accepted: dict[str, str] = field(default_factory=dict)  # task id -> kind
    refused: Counter[str] = field(default_factory=Counter)  # status code or error -> count


def run_load(api: httpx.Client, rate: float, stop: threading.Event, load: Load, rng: random.Random) -> None:
    """Open loop: one submission every 1/rate seconds, each its own request."""
    kinds = [k for k, _ in MIX]
    weights = [w for _, w in MIX]
    interval = 1.0 / rate
    due = time.monotonic()
    n = 0
    while not stop.is_set():
        due += interval
        kind = rng.choices(kinds, weights)[0]
        try:
            response = api.post("/api/v1/tasks", json=submission(kind, n))
            if response.status_code == 202:
                load.accepted[response.json()["task_id"]] = kind
            else:
                load.refused[str(response.status_code)] += 1
        except httpx.HTTPError as exc:
            load.refused[type(exc).__name__] += 1
        n += 1
        pause = due - time.monotonic()
        if pause > 0:
            stop.wait(pause)
        elif pause < -5:
            due = time.monotonic()  # fell behind (a fault): do not burst to catch up


def sample_rss(platform: Platform, stop: threading.Event, rows: list[tuple[float, str, float]]) -> None:
    while not stop.is_set():
        now = time.time()
        for role, pid in platform.pids().items():
            with contextlib.suppress(psutil.Error):
                proc = psutil.Process(pid)
                rss = proc.memory_info().rss
                if role != "soak (load, SMTP)":
                    rss += sum(c.memory_info().rss for c in proc.children(recursive=True))
                rows.append((now, role, rss / 1_048_576))
        stop.wait(SAMPLE_EVERY)


def measure_capacity(api: httpx.Client, ledger: Ledger, client: Callable[[], redis.Redis[bytes]], n: int) -> float:
    """test_task end to end: n submitted in batches of 500, the time until all succeeded."""
    began = time.monotonic()
    ids: list[str] = []
    for start in range(0, n, 500):
        batch = [{"task_name": "test_task", "kwargs": {"message": "capacity"}}] * min(500, n - start)
        response = api.post("/api/v1/tasks/batch", json={"tasks": batch})
        response.raise_for_status()
        ids += [item["task_id"] for item in response.json()["results"]]

    def done() -> bool:
        ledger.read(client())
        return all(ledger.finished(i) for i in ids)

    wait_until(done, timeout=600, interval=0.5, message="the capacity burst")
    return n / (time.monotonic() - began)


# -- the verdict ----------------------------------------------------------------------------------------


def explain(task_id: str, starts: list[float], faults: list[Fault]) -> str | None:
    """The fault between a task's first start and its second that explains its second run, if any."""
    if len(starts) < 2:
        return None
    first, second = sorted(starts)[:2]
    for fault in faults:
        if fault.kind in ("worker SIGKILL", "Redis restart", "crash") and first - 1 <= fault.at <= second:
            return f"{fault.kind} {fault.detail}".strip() + f" at +{fault.at - first:.1f}s after its first start"
    return None


def locate(broker: redis.Redis[bytes], ids: list[str], limit: int = 200_000) -> dict[str, list[str]]:
    """Where each of ``ids`` still is on the broker (its Redis database 0): the lists and hashes whose
    values name it (queues, kombu's ``unacked``, any processing list). Read after the drain, when the
    broker is nearly empty; at most ``limit`` values are read in all."""
    found: dict[str, list[str]] = {i: [] for i in ids}
    read = 0
    for key in broker.scan_iter(count=1000):
        kind = broker.type(key)
        if kind == b"list":
            values = broker.lrange(key, 0, limit - read)
        elif kind == b"hash":
            values = broker.hvals(key)[: limit - read]
        else:
            continue
        read += len(values)
        for value in values:
            for task_id in ids:
                if task_id.encode() in value:
                    found[task_id].append(key.decode(errors="replace"))
        if read >= limit:
            break
    return found


def rss_summary(rows: list[tuple[float, str, float]]) -> dict[str, dict[str, float]]:
    """Per role: the median RSS of the first and the last fifth of the run (after a warm-up fifth)."""
    by_role: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for at, role, mb in rows:
        by_role[role].append((at, mb))
    out = {}
    for role, points in sorted(by_role.items()):
        points.sort()
        fifth = max(len(points) // 5, 1)
        early = sorted(mb for _, mb in points[fifth : 2 * fifth] or points[:1])
        late = sorted(mb for _, mb in points[-fifth:])
        first, last = early[len(early) // 2], late[len(late) // 2]
        out[role] = {
            "early_mb": round(first, 1),
            "late_mb": round(last, 1),
            "max_mb": round(max(mb for _, mb in points), 1),
            "growth_pct": round((last - first) / first * 100, 1) if first else 0.0,
        }
    return out


def chart(rows: list[tuple[float, str, float]], faults: list[Fault], began: float, path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    by_role: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for at, role, mb in rows:
        by_role[role].append(((at - began) / 60, mb))
    fig, ax = plt.subplots(figsize=(11, 5.5))
    for role, points in sorted(by_role.items()):
        points.sort()
        ax.plot([p[0] for p in points], [p[1] for p in points], label=role, linewidth=1.2)
    for fault in faults:
        ax.axvline((fault.at - began) / 60, color="grey", alpha=0.35, linewidth=0.8)
    ax.set_xlabel("minutes (grey lines: faults)")
    ax.set_ylabel("RSS, MB (process and its children)")
    ax.set_title("mallops soak: RSS of every process under load and a fault a minute")
    ax.legend(fontsize=7, ncol=3, loc="upper left")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


# -- the run --------------------------------------------------------------------------------------------


@contextlib.contextmanager
def database(workdir: Path) -> Iterator[tuple[str, str | None, str | None]]:
    """(database URL, admin URL, database name): a fresh PostgreSQL database if the server answers."""
    admin_url = make_url(os.environ.get("MALLOPS_TEST_POSTGRES_URL", DEFAULT_PG)).set(drivername="postgresql+psycopg")
    name = f"mallops_soak_{uuid.uuid4().hex[:8]}"
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    except Exception:
        admin.dispose()
        yield f"sqlite:///{workdir / 'mallops.db'}", None, None
        return
    admin_str = admin_url.render_as_string(hide_password=False)
    try:
        yield admin_url.set(database=name).render_as_string(hide_password=False), admin_str, name
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true'))
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def run(args: argparse.Namespace) -> dict[str, Any]:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    workdir = out / "work"
    rng = random.Random(args.seed)
    smtp = SMTPServer()
    smtp.start()
    with database(workdir) as (db_url, pg_admin, db_name):
        redis_server = start_redis(workdir / "redis", appendonly=True)
        base = redis_server.url_base
        values = {
            "MALLOPS_ENVIRONMENT": "test",
            "MALLOPS_DATABASE_URL": db_url,
            "MALLOPS_REDIS_URL": base,
            "MALLOPS_BROKER_URL": f"{base}/0",
            "MALLOPS_RESULT_BACKEND": f"{base}/1",
            "MALLOPS_DATA_DIR": str(workdir / "data"),
            "MALLOPS_LOG_LEVEL": "WARNING",
            "MALLOPS_TASK_MAX_PER_USER": "1000000",
            "MALLOPS_RATE_LIMIT_PER_MINUTE": "1000000",
            **smtp.env,
        }
        env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOPS_")} | values
        env["PYTHONPATH"] = str(Path(__file__).resolve().parent.parent)
        os.environ.update(values)
        get_settings.cache_clear()
        reset_engines()
        migrate(get_settings())
        with session_scope() as session:
            token = create_token(session, f"soak-{uuid.uuid4().hex[:8]}", "admin")
        platform = Platform(workdir, env, redis_server, smtp)
        try:
            return soak(args, platform, pg_admin, db_name, token, rng, out)
        finally:
            platform.stop()
            smtp.stop()


def soak(
    args: argparse.Namespace,
    platform: Platform,
    pg_admin: str | None,
    db_name: str | None,
    token: str,
    rng: random.Random,
    out: Path,
) -> dict[str, Any]:
    for service in WORKERS:
        platform.start_worker(service)
    platform.start_monitor()
    platform.start_gateway()
    platform.start_beat()
    api = httpx.Client(
        base_url=f"http://127.0.0.1:{platform.gateway_port}", timeout=10, headers={"Authorization": f"Bearer {token}"}
    )
    ledger = Ledger()
    stream = platform.redis.client(2)  # the port stays the same through Redis restarts

    def client() -> redis.Redis[bytes]:
        return stream

    capacity = measure_capacity(api, ledger, client, args.capacity_tasks)
    rate = args.rate or capacity / 2
    print(f"capacity {capacity:.0f} tasks/s (test_task, batches over HTTP); soaking at {rate:.1f} tasks/s", flush=True)

    stop = threading.Event()
    load = Load()
    rss_rows: list[tuple[float, str, float]] = []
    faults = Faults(platform, pg_admin, db_name, rng)
    began = time.time()
    threads = [
        threading.Thread(target=run_load, args=(api, rate, stop, load, rng), daemon=True),
        threading.Thread(target=sample_rss, args=(platform, stop, rss_rows), daemon=True),
    ]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + args.minutes * 60
    next_fault = time.monotonic() + args.fault_every
    while time.monotonic() < deadline:
        if time.monotonic() >= next_fault:
            next_fault += args.fault_every
            fault = faults.one()
            print(f"{(fault.at - began) / 60:5.1f} min  {fault.kind} {fault.detail} ({fault.seconds}s)", flush=True)
        time.sleep(0.5)
        for crash in platform.supervise():
            faults.done.append(crash)
            print(f"{(crash.at - began) / 60:5.1f} min  {crash.detail} exited by itself: started again", flush=True)
        with contextlib.suppress(redis.RedisError):
            ledger.read(client())
    stop.set()
    threads[0].join(30)
    load_seconds = time.time() - began

    accepted = list(load.accepted)

    def drained() -> bool:
        with contextlib.suppress(redis.RedisError):
            ledger.read(client())
        return all(ledger.finished(i) for i in accepted)

    drain_until = time.monotonic() + args.drain_seconds
    while not drained() and time.monotonic() < drain_until:
        time.sleep(2)
    stop.set()
    threads[1].join(10)

    lost = [i for i in accepted if not ledger.finished(i)]
    where: dict[str, list[str]] = {}
    with contextlib.suppress(redis.RedisError):
        where = locate(platform.redis.client(0), lost[:50])
    lost_detail = {
        i: {"kind": load.accepted[i], "events": dict(ledger.counts[i]), "on_the_broker": where.get(i, [])}
        for i in lost[:50]
    }
    duplicates = [i for i in accepted if ledger.counts[i]["task-succeeded"] > 1]
    explained = {i: explain(i, ledger.starts[i], faults.done) for i in duplicates}
    failed = Counter(load.accepted[i] for i in accepted if ledger.counts[i]["task-failed"])
    summary = {
        "started": dt.datetime.fromtimestamp(began, dt.UTC).isoformat(timespec="seconds"),
        "minutes": args.minutes,
        "capacity_tasks_per_s": round(capacity, 1),
        "rate_tasks_per_s": round(rate, 2),
        "load_seconds": round(load_seconds, 1),
        "accepted": len(accepted),
        "accepted_by_kind": dict(Counter(load.accepted.values())),
        "refused": dict(load.refused),
        "finished": len(accepted) - len(lost),
        "lost": len(lost),
        "lost_ids": lost[:50],
        "lost_detail": lost_detail,  # per lost task: its kind, the events the stream has of it, where it still is
        "failed_by_kind": dict(failed),
        "duplicated": len(duplicates),
        "duplicates_explained": sum(1 for v in explained.values() if v),
        "duplicates": explained,
        "requeued_events": sum(c["task-requeued"] for c in ledger.counts.values()),
        "faults": [asdict(f) | {"minute": round((f.at - began) / 60, 2)} for f in faults.done],
        "faults_by_kind": dict(Counter(f.kind for f in faults.done if f.kind != "crash")),
        "crashes": dict(Counter(f.detail for f in faults.done if f.kind == "crash")),
        "rss": rss_summary(rss_rows),
        "database": "postgresql" if pg_admin else "sqlite",
        "emails_received": len(platform.smtp.messages),
    }
    with (out / "rss.csv").open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["epoch", "role", "rss_mb"])
        writer.writerows((round(at, 1), role, round(mb, 1)) for at, role, mb in rss_rows)
    summary["chart"] = "rss.png" if chart(rss_rows, faults.done, began, out / "rss.png") else None
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    (out / "table.md").write_text(table(summary))
    print(table(summary), flush=True)
    return summary


def table(s: dict[str, Any]) -> str:
    lines = [
        "| minutes | rate (tasks/s) | capacity (tasks/s) | accepted | finished | lost | duplicated (explained) | "
        "faults | processes that exited by themselves (restarted) | refused submissions |",
        "|---:|---:|---:|---:|---:|---:|---:|---|---|---|",
        f"| {s['minutes']} | {s['rate_tasks_per_s']} | {s['capacity_tasks_per_s']} | {s['accepted']} | "
        f"{s['finished']} | {s['lost']} | {s['duplicated']} ({s['duplicates_explained']}) | "
        + ", ".join(f"{k} {v}" for k, v in sorted(s["faults_by_kind"].items()))
        + " | "
        + (", ".join(f"{k} {v}" for k, v in sorted(s["crashes"].items())) or "none")
        + " | "
        + (", ".join(f"{k}: {v}" for k, v in sorted(s["refused"].items())) or "none")
        + " |",
        "",
        "| process | RSS early (MB) | RSS late (MB) | max (MB) | growth |",
        "|---|---:|---:|---:|---:|",
    ]
    for role, r in s["rss"].items():
        lines.append(f"| {role} | {r['early_mb']} | {r['late_mb']} | {r['max_mb']} | {r['growth_pct']:+.1f} % |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="scripts/soak", description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=60.0)
    parser.add_argument("--rate", type=float, default=0.0, help="tasks/s (default: half the measured capacity)")
    parser.add_argument("--fault-every", type=float, default=60.0, help="seconds between faults")
    parser.add_argument("--capacity-tasks", type=int, default=2000, help="tasks in the capacity burst")
    parser.add_argument("--drain-seconds", type=float, default=600.0, help="how long to wait for the last tasks")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--out", default=".mallops/soak")
    args = parser.parse_args(argv)
    summary = run(args)
    explained_all = summary["duplicates_explained"] == summary["duplicated"]
    return 0 if summary["lost"] == 0 and explained_all else 1


if __name__ == "__main__":
    sys.exit(main())
