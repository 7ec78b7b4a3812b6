"""One benchmark run: raw Celery, the Celery-events stack (and Flower), and mallops end to end, side by side.

Everything runs on one machine against one redis-server of the run's own (a free port): database 0 is the
broker, 1 the result backend, 2 mallops' cache and event stream, 3 the bench's own counters, 4 to 6 the
brokers of the other workers of the worker-alone comparison. Processes are
started with :mod:`bench.processes` and stopped by PID.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx
from celery import Celery
from sqlalchemy import delete, func, select

from bench import http_load, wrk
from bench.measure import PeakRSS, cpu_per_task, median_cpu, percentiles, spread, tree_memory
from bench.noop_app import QUEUE, TASK
from bench.processes import ROOT, Process, free_port, service_argv, spawn, start_celery_worker, start_redis, wait_until
from shared.contracts import EVENT_STREAM, MONITOR_GROUP
from shared.db import migrate, reset_engines, session_scope
from shared.models import TaskRecord
from shared.settings import Settings
from shared.tokens import create_token

MALLOPS_TASK = "mallops.maintenance.test_task"
MALLOPS_BODY = {"task_name": "test_task"}
WARM_UP = 100  # tasks or requests through each stack before anything is measured
SHARED_ROLES = ("redis-server", "bench (publisher, HTTP clients)")
RAW_ROLES = ("raw worker", *SHARED_ROLES)
EVENTS_ROLES = ("events worker", "events consumer (EventReceiver+State)", *SHARED_ROLES)
MALLOPS_ROLES = ("mallops gateway", "mallops worker (events on)", "mallops monitor", *SHARED_ROLES)
RAW_QUEUE, EVENTS_QUEUE = QUEUE, f"{QUEUE}-events"  # one queue per stack: all three stay up together
NOOP_CELERY = (sys.executable, "-m", "celery", "-A", "bench.noop_app")  # the bare app's `celery` command


@dataclass
class Config:
    tasks: int = 3000  # tasks per throughput run
    http_tasks: int = 2000  # single-request HTTP submissions per run
    repeats: int = 5  # alternating rounds of every scenario (issue 19: at least 5)
    paced_rate: float = 100.0
    paced_seconds: float = 5.0
    concurrency: int = 16
    batch_size: int = 500
    monitor_seconds: float = 60.0  # sustained synthetic event load on the monitor
    monitor_backlog: int = 100_000  # synthetic events for the monitor's capacity
    flower: bool = True
    wrk_rounds: int = 5  # alternating rounds of the front doors under wrk
    wrk_seconds: float = 10.0
    prefork_comparison: bool = True  # also measure the mallops worker on prefork -c 2
    profile_dir: str | None = None  # py-spy profiles (collapsed stacks) of the mallops processes

    @classmethod
    def quick(cls) -> Config:
        """A smoke run: a few hundred tasks, every scenario once."""
        return cls(
            tasks=200,
            http_tasks=100,
            repeats=1,
            paced_rate=50,
            paced_seconds=1,
            batch_size=100,
            monitor_seconds=1,
            monitor_backlog=2000,
            flower=False,
            wrk_rounds=1,
            wrk_seconds=1,
            prefork_comparison=False,
        )


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def _now_utc(value: Any) -> float:
    """A Celery ``date_done`` (ISO text, UTC) or a datetime as epoch seconds."""
    if isinstance(value, str):
        value = dt.datetime.fromisoformat(value)
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.UTC)
    return float(value.timestamp())


def _ms(values: list[float]) -> dict[str, float | None]:
    return {k: (None if v is None else round(v * 1000, 2) if k != "n" else v) for k, v in percentiles(values).items()}


class Bench:
    def __init__(self, config: Config, workdir: Path) -> None:
        self.config = config
        self.workdir = workdir
        self.log_dir = workdir / "logs"
        self.redis = start_redis(workdir / "redis")
        self.base = self.redis.url_base
        self.rss = PeakRSS().start()
        self.rss.watch("redis-server", self.redis.process.pid if self.redis.process else 0)
        self.rss.watch("bench (publisher, HTTP clients)", os.getpid(), children=False)
        self.results: dict[str, Any] = {}
        self.processes: list[Process] = []
        self.db = {n: self.redis.client(n) for n in range(4)}

    @contextlib.contextmanager
    def profiled(self, name: str, *processes: Process) -> Iterator[None]:
        """With ``profile_dir`` set: py-spy records each process (and its pool children) while the block runs."""
        if not self.config.profile_dir or not _venv_bin("py-spy").exists():
            yield
            return
        out = Path(self.config.profile_dir)
        out.mkdir(parents=True, exist_ok=True)
        spies = []
        for process in processes:
            target = out / f"{name}-{process.name}.txt"
            argv = [
                str(_venv_bin("py-spy")),
                "record",
                "-p",
                str(process.pid),
                "--subprocesses",
                "--nonblocking",
                "--rate",
                "250",
                "--format",
                "raw",
                "-o",
                str(target),
            ]
            spies.append(spawn(f"py-spy-{process.name}", argv, os.environ, self.log_dir))
        time.sleep(1)  # py-spy attaches asynchronously; a profile that misses the start is still useful
        try:
            yield
        finally:
            for spy in spies:
                spy.signal(signal.SIGINT)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    spy.popen.wait(30)
                spy.stop()

    def close(self) -> None:
        for process in reversed(self.processes):
            process.stop()
        self.rss.stop()
        for client in self.db.values():
            client.close()
        self.redis.stop()

    def started(self, process: Process, role: str | None = None) -> Process:
        self.processes.append(process)
        if role:
            self.rss.watch(role, process.pid)
        return process

    def stop(self, process: Process, role: str | None = None) -> None:
        if role:
            self.rss.sample()
            self.rss.forget(role)
        process.stop()
        self.processes.remove(process)

    # -- helpers -----------------------------------------------------------------------------------

    def bare_env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("MALLOPS_", "BENCH_"))}
        return env | {
            "BENCH_BROKER_URL": f"{self.base}/0",
            "BENCH_RESULT_BACKEND": f"{self.base}/1",
            "PYTHONPATH": str(ROOT),
        }

    def bare_worker(self, name: str, queue: str, *extra: str) -> Process:
        hostname = f"{name}@bench"
        argv = [
            *NOOP_CELERY,
            "worker",
            "-P",
            "prefork",
            "-c",
            "2",
            "-Q",
            queue,
            "-n",
            hostname,
            "-l",
            "WARNING",
            "--without-mingle",
            "--without-gossip",
            *extra,
        ]
        return self.started(
            start_celery_worker(name, argv, self.bare_env(), self.log_dir, f"{self.base}/0", hostname), f"{name} worker"
        )

    def publisher(self, sent_events: bool = False, db: int = 0) -> Celery:
        """A plain publishing app: no result backend (so send_task subscribes to nothing)."""
        app = Celery("bench-publisher", broker=f"{self.base}/{db}", set_as_current=False)
        app.conf.update(
            task_serializer="json", task_send_sent_event=sent_events, broker_connection_retry_on_startup=True
        )
        return app

    def results_count(self) -> int:
        return int(self.db[1].dbsize())

    def wait_results(self, count: int, timeout: float) -> float:
        wait_until(lambda: self.results_count() >= count, timeout=timeout, interval=0.01, message=f"{count} results")
        return time.perf_counter()

    def read_results(self, ids: list[str]) -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {}
        for start in range(0, len(ids), 1000):
            chunk = ids[start : start + 1000]
            values = self.db[1].mget([f"celery-task-meta-{i}" for i in chunk])
            for task_id, raw in zip(chunk, values, strict=True):
                if raw:
                    out[task_id] = json.loads(raw)
        return out

    def timeout_for(self, count: int) -> float:
        return 60 + count / 20  # generous: at least 20 tasks/s on a loaded machine

    # -- (1) and (2): Celery publisher and worker ---------------------------------------------------

    def publish_drain(
        self, app: Celery, name: str, queue: str, n: int, kwargs: dict[str, Any] | None = None, before_done: Any = None
    ) -> dict[str, Any]:
        """Publish ``n`` tasks as fast as one thread can; tasks/s until every result is stored."""
        self.db[1].flushdb()
        cpu = self.rss.cpu()
        start = time.perf_counter()
        for _ in range(n):
            app.send_task(name, kwargs=kwargs or {}, queue=queue)
        published = time.perf_counter()
        done = self.wait_results(n, self.timeout_for(n))
        if before_done is not None:
            done = before_done()
        return {
            "tasks_per_s": n / (done - start),
            "publish_per_s": n / (published - start),
            "cpu_ms_per_task": cpu_per_task(cpu, self.rss.cpu(), n),
        }

    def paced_celery(self, app: Celery, name: str, queue: str) -> dict[str, Any]:
        """Submit-to-start and submit-to-finish latency at ``paced_rate`` tasks/s."""
        self.db[1].flushdb()
        rate, count = self.config.paced_rate, max(1, int(self.config.paced_rate * self.config.paced_seconds))
        submitted: dict[str, float] = {}
        start = time.perf_counter()
        for i in range(count):
            delay = start + i / rate - time.perf_counter()
            if delay > 0:
                time.sleep(delay)  # pacing the load, not waiting for a condition
            task_id = str(uuid.uuid4())
            submitted[task_id] = time.time()
            app.send_task(name, task_id=task_id, queue=queue)
        self.wait_results(count, self.timeout_for(count))
        results = self.read_results(list(submitted))
        to_start = [float(r["result"]) - submitted[i] for i, r in results.items()]
        to_finish = [_now_utc(r["date_done"]) - submitted[i] for i, r in results.items()]
        return {
            "rate": rate,
            "tasks": count,
            "submit_to_start_ms": _ms(to_start),
            "submit_to_finish_ms": _ms(to_finish),
        }

    def idle_memory(self, process: Process) -> dict[str, Any]:
        """RSS and PSS of a worker's process tree once it is idle (after 2 s without work)."""
        time.sleep(2)  # settle: memory of a freshly started, idle worker, not a synchronisation
        return tree_memory(process.pid, pss=True)

    # -- scenario helpers ------------------------------------------------------------------------------

    def events_counts(self) -> dict[str, int]:
        return {k.decode(): int(v) for k, v in self.db[3].hgetall("bench:events").items()}

    def mallops_env(self, **overrides: str) -> dict[str, str]:
        data = self.workdir / "data"
        env = {k: v for k, v in os.environ.items() if not k.startswith(("MALLOPS_", "BENCH_"))}
        env |= {
            "MALLOPS_ENVIRONMENT": "development",
            "MALLOPS_DATA_DIR": str(data),
            "MALLOPS_DATABASE_URL": f"sqlite:///{data / 'mallops.db'}",
            "MALLOPS_REDIS_URL": self.base,
            "MALLOPS_LOG_LEVEL": "WARNING",
            "MALLOPS_WORKER_CONCURRENCY": "2",
            "MALLOPS_RATE_LIMIT_PER_MINUTE": "100000000",
            "PYTHONPATH": str(ROOT),
        }
        return env | overrides

    def mallops_settings(self) -> Settings:
        env = self.mallops_env()
        return Settings(
            environment="development",
            data_dir=Path(env["MALLOPS_DATA_DIR"]),
            database_url=env["MALLOPS_DATABASE_URL"],
            redis_url=self.base,
        )

    def mallops_worker(self, role: str, *extra: str, **env: str) -> Process:
        """``mallops serve maintenance`` on the threads pool (``MALLOPS_MAINTENANCE_POOL=threads``; the default
        is prefork, which ``--pool=prefork`` variants measure) and its RSS watched as ``role``."""
        env = {"MALLOPS_MAINTENANCE_POOL": "threads", **env}
        hostname = f"maintenance-{role.replace(' ', '-')}@bench"
        argv = service_argv("maintenance", f"--hostname={hostname}", *extra)
        broker = env.get("MALLOPS_BROKER_URL", f"{self.base}/0")
        return self.started(
            start_celery_worker("maintenance", argv, self.mallops_env(**env), self.log_dir, broker, hostname),
            f"mallops worker ({role})",
        )

    def history_done(self) -> int:
        with session_scope(self.settings) as session:
            return int(
                session.scalar(select(func.count()).select_from(TaskRecord).where(TaskRecord.state == "SUCCESS")) or 0
            )

    def stream_drained(self) -> bool:
        groups = self.db[2].xinfo_groups(EVENT_STREAM)
        return any(
            g["name"] in (MONITOR_GROUP, MONITOR_GROUP.encode()) and not g["pending"] and not g.get("lag")
            for g in groups
        )

    def reset_history(self) -> None:
        wait_until(self.stream_drained, timeout=120, interval=0.05, message="the monitor to catch up")
        with session_scope(self.settings) as session:
            session.execute(delete(TaskRecord))
        self.db[1].flushdb()

    def wait_history(self, count: int) -> float:
        wait_until(
            lambda: self.history_done() >= count,
            timeout=self.timeout_for(count),
            interval=0.05,
            message=f"{count} tasks in task_history",
        )
        return time.perf_counter()

    def worker_rounds(self, workers: dict[str, int]) -> dict[str, dict[str, Any]]:
        """Drain rates of several mallops workers, each on a broker database of its own (``workers``: label
        -> database), fed by a plain publisher (no gateway, no monitor), one run of each per round."""
        apps = {label: self.publisher(db=db) for label, db in workers.items()}
        runs: dict[str, list[dict[str, Any]]] = {label: [] for label in workers}
        for app in apps.values():  # warm up
            self.publish_drain(app, MALLOPS_TASK, "default", WARM_UP)
        for i in range(self.config.repeats):
            for label, app in apps.items():
                runs[label].append(self.publish_drain(app, MALLOPS_TASK, "default", self.config.tasks))
            log(
                f"  round {i + 1}: "
                + ", ".join(f"{label} {runs[label][-1]['tasks_per_s']:.0f}" for label in workers)
                + " tasks/s"
            )
        for app in apps.values():
            app.close()
        return {
            label: {
                "tasks_per_s": spread([r["tasks_per_s"] for r in runs[label]]),
                "cpu_ms_per_task": _only(
                    median_cpu([r["cpu_ms_per_task"] for r in runs[label]]),
                    (f"mallops worker ({label})", *SHARED_ROLES),
                ),
            }
            for label in workers
        }

    def http_single(
        self, url: str, headers: dict[str, str], body: dict[str, Any], requests: int | None = None
    ) -> dict[str, Any]:
        """``http_tasks`` single POSTs from ``concurrency`` clients: req/s, latency, CPU per request."""
        requests = requests or self.config.http_tasks
        cpu = self.rss.cpu()
        load = http_load.run(http_load.closed_loop(url, headers, lambda _i: body, requests, self.config.concurrency))
        return load.summary() | {"cpu_ms_per_task": cpu_per_task(cpu, self.rss.cpu(), requests)}

    def http_batches(self, url: str, headers: dict[str, str], tasks: int | None = None) -> dict[str, Any]:
        """``tasks`` tasks as batches of ``batch_size``, two requests in flight: tasks/s submitted."""
        size = min(self.config.batch_size, tasks or self.config.tasks)
        n = (tasks or self.config.tasks) // size
        body = {"tasks": [MALLOPS_BODY] * size}
        cpu = self.rss.cpu()
        load = http_load.run(http_load.closed_loop(url, headers, lambda _i: body, n, 2))
        return {
            "tasks": n * size,
            "submit_per_s": n * size / load.seconds,
            "errors": load.errors,
            "cpu_ms_per_task": cpu_per_task(cpu, self.rss.cpu(), n * size),
        }

    # -- phase 0: the front doors alone ----------------------------------------------------------------

    def setup_mallops(self) -> None:
        self.settings = self.mallops_settings()
        self.settings.data_dir.mkdir(parents=True, exist_ok=True)
        migrate(self.settings)
        with session_scope(self.settings) as session:
            token = create_token(session, f"bench-{uuid.uuid4().hex[:6]}", "admin")
        self.headers = {"Authorization": f"Bearer {token}"}
        self.gateway, self.gw = self.start_gateway("mallops gateway")

    def start_gateway(self, role: str, workers: int = 1, **settings: str) -> tuple[Process, str]:
        """``mallops serve gateway`` with ``MALLOPS_GATEWAY_WORKERS=workers`` (and ``settings``, environment
        variables), watched as ``role``; its URL."""
        port = free_port()
        env = self.mallops_env(MALLOPS_GATEWAY_WORKERS=str(workers), **settings)
        gateway = self.started(spawn("gateway", service_argv("gateway", f"--port={port}"), env, self.log_dir), role)
        url = f"http://127.0.0.1:{port}"
        wait_until(
            lambda: httpx.get(f"{url}/readyz", timeout=2).status_code == 200,
            timeout=60,
            interval=0.2,
            message="gateway /readyz",
        )
        return gateway, url

    def start_flower(self) -> tuple[Process, str]:
        port = free_port()
        env = self.bare_env() | {"FLOWER_UNAUTHENTICATED_API": "true"}
        argv = [
            *NOOP_CELERY,
            "flower",
            f"--port={port}",
            "--address=127.0.0.1",
        ]
        flower = self.started(spawn("flower", argv, env, self.log_dir), "flower")
        wait_until(
            lambda: httpx.get(f"http://127.0.0.1:{port}/healthcheck", timeout=2).status_code == 200,
            timeout=60,
            interval=0.2,
            message="flower /healthcheck",
        )
        return flower, f"http://127.0.0.1:{port}/api/task/async-apply/{TASK}"

    def wrk_round(self, target: wrk.Target, role: str) -> dict[str, Any]:
        """One wrk run; the CPU seconds of ``role``'s process tree (from /proc) before and after."""
        before = self.rss.cpu()
        run = wrk.run(target, self.workdir, self.config.wrk_seconds, connections=self.config.concurrency)
        after = self.rss.cpu()
        cpu = after[role] - before[role]
        self.db[0].delete(QUEUE, "default")  # nothing consumes them
        return run | {"server_cpu_s": round(cpu, 3), "req_per_cpu_s": round(run["requests"] / cpu, 1) if cpu else None}

    def wrk_phase(
        self, servers: list[tuple[wrk.Target, str]], profiled: dict[str, Process] | None = None
    ) -> dict[str, list[dict[str, Any]]]:
        """Each server warmed up, then ``wrk_rounds`` alternating wrk rounds: the runs of each role. A role in
        ``profiled`` has its process recorded by py-spy during its own runs (with ``profile_dir`` set)."""
        log(
            f"front doors alone, wrk ({self.config.concurrency} connections, {self.config.wrk_seconds:g} s, "
            f"{self.config.wrk_rounds} alternating rounds): " + ", ".join(role for _, role in servers)
        )
        runs: dict[str, list[dict[str, Any]]] = {role: [] for _, role in servers}
        for target, _ in servers:  # warm up: caches, connection pools
            wrk.run(target, self.workdir, 1, connections=self.config.concurrency)
            self.db[0].delete(QUEUE, "default")
        for i in range(self.config.wrk_rounds):
            for target, role in servers:
                process = (profiled or {}).get(role)
                spy = self.profiled(f"front-door-{i + 1}", process) if process else contextlib.nullcontext()
                with spy:
                    runs[role].append(self.wrk_round(target, role))
            log(
                f"  round {i + 1}: "
                + "; ".join(
                    f"{role} {r[-1]['req_per_s']:.0f} req/s (p50 {r[-1]['latency_ms']['p50']}, p99 "
                    f"{r[-1]['latency_ms']['p99']} ms, {r[-1]['req_per_cpu_s']} per CPU-s)"
                    for role, r in runs.items()
                )
            )
        return runs

    def wrk_what(self) -> str:
        return f"wrk, 2 threads, {self.config.concurrency} connections, {self.config.wrk_seconds:g} s a run"

    def flower_summary(self, version: str, runs: list[dict[str, Any]]) -> dict[str, Any]:
        return {
            "what": f"Flower {version} POST /api/task/async-apply/<name>, {self.wrk_what()}; the front door alone "
            "(no worker consumes: Flower and Redis are all that run)",
            "version": version,
            **_wrk_summary(runs),
            "peak_rss": self.rss.report(["flower"]),
        }

    def front_doors(self) -> None:  # long: three servers, wrk in alternating rounds, then the batch endpoint
        """Flower's async-apply, the gateway on 1 and on 2 processes, each with nothing consuming, driven by wrk
        in alternating rounds; then the gateway's batch endpoint with the bench's own client."""
        version = _version("flower") if self.config.flower else None
        servers: list[tuple[wrk.Target, str]] = []
        if version is not None:
            flower, flower_url = self.start_flower()
            servers.append((wrk.Target("flower", flower_url, {}, {}), "flower"))
        servers.append(
            (wrk.Target("gateway", f"{self.gw}/api/v1/tasks", MALLOPS_BODY, self.headers), "mallops gateway")
        )
        two, two_url = self.start_gateway("mallops gateway (2 processes)", workers=2)
        servers.append(
            (
                wrk.Target("gateway-2", f"{two_url}/api/v1/tasks", MALLOPS_BODY, self.headers),
                "mallops gateway (2 processes)",
            )
        )
        runs = self.wrk_phase(servers)
        self.stop(two, "mallops gateway (2 processes)")
        if version is not None:
            self.results["flower"] = self.flower_summary(version, runs["flower"])
            self.stop(flower, "flower")
        else:
            self.results["flower"] = {"skipped": "--no-flower, or flower is not installed (pip install -e '.[bench]')"}
        what = self.wrk_what()
        self.db[0].delete(QUEUE, "default")
        warm = max(WARM_UP, self.config.concurrency)
        self.http_batches(f"{self.gw}/api/v1/tasks/batch", self.headers, warm)
        batch: list[dict[str, Any]] = []
        for _ in range(self.config.repeats):
            batch.append(self.http_batches(f"{self.gw}/api/v1/tasks/batch", self.headers))
            self.db[0].delete(QUEUE, "default")  # nothing consumed them
        log(f"  batch submission: {spread([r['submit_per_s'] for r in batch])['median']} tasks/s")
        self.results["mallops"] = {
            "front_door_alone": {
                "what": "the gateway alone, nothing consuming (the queue is emptied after each run)",
                "single": {"what": f"POST /api/v1/tasks, {what}", **_wrk_summary(runs["mallops gateway"])}
                | {"concurrency": self.config.concurrency},
                "single_2_processes": {
                    "what": f"the same with MALLOPS_GATEWAY_WORKERS=2, {what}",
                    **_wrk_summary(runs["mallops gateway (2 processes)"]),
                },
                "batch": {
                    "submit_per_s": spread([r["submit_per_s"] for r in batch]),
                    "cpu_ms_per_task": _only(
                        median_cpu([r["cpu_ms_per_task"] for r in batch]), ("mallops gateway", *SHARED_ROLES)
                    ),
                },
            }
        }
        self.db[2].delete(EVENT_STREAM)

    # -- phase 1: every stack up -----------------------------------------------------------------------

    def start_stacks(self) -> None:
        log("starting the three stacks (idle memory of each worker 2 s after it answers a ping)")
        self.raw_worker = self.bare_worker("raw", RAW_QUEUE)
        self.results["raw"] = {"idle_worker_memory": self.idle_memory(self.raw_worker)}
        self.consumer = self.started(
            spawn(
                "events-consumer",
                [
                    sys.executable,
                    "-m",
                    "bench.events_consumer",
                    "--broker",
                    f"{self.base}/0",
                    "--stats-url",
                    f"{self.base}/3",
                ],
                self.bare_env(),
                self.log_dir,
            ),
            "events consumer (EventReceiver+State)",
        )
        wait_until(lambda: self.events_counts().get("ready"), timeout=30, message="events consumer")
        self.events_worker = self.bare_worker("events", EVENTS_QUEUE, "-E")
        self.results["events"] = {}
        self.worker = self.mallops_worker("events on")
        self.results["mallops"]["idle_worker_memory"] = self.idle_memory(self.worker)
        port = free_port()
        self.monitor = self.started(
            spawn(
                "monitor", service_argv("monitor", f"--port={port}", "--name=bench"), self.mallops_env(), self.log_dir
            ),
            "mallops monitor",
        )
        self.mon = f"http://127.0.0.1:{port}"
        wait_until(
            lambda: httpx.get(f"{self.mon}/health", timeout=2).status_code == 200,
            timeout=60,
            interval=0.2,
            message="monitor /health",
        )
        self.raw_app = self.publisher()
        self.events_app = self.publisher(sent_events=True)

    # -- phase 2: throughput, the scenarios in turn within each round ---------------------------------

    def events_drain(self, tasks: int | None = None) -> dict[str, Any]:
        base, n = self.events_counts().get("succeeded", 0), tasks or self.config.tasks

        def consumed() -> float:
            wait_until(
                lambda: self.events_counts().get("succeeded", 0) >= base + n,
                timeout=self.timeout_for(n),
                interval=0.01,
                message="task-succeeded events",
            )
            return time.perf_counter()

        return self.publish_drain(self.events_app, TASK, EVENTS_QUEUE, n, before_done=consumed)

    def mallops_round(self, form: str, tasks: int | None = None) -> dict[str, Any]:
        self.reset_history()
        start = time.perf_counter()
        if form == "batch":
            run = self.http_batches(f"{self.gw}/api/v1/tasks/batch", self.headers, tasks)
        else:
            run = self.http_single(f"{self.gw}/api/v1/tasks", self.headers, MALLOPS_BODY, tasks)
        tasks = run.get("tasks", tasks or self.config.http_tasks)
        cpu = self.rss.cpu()
        done = self.wait_history(tasks)
        after = cpu_per_task(cpu, self.rss.cpu(), tasks)  # the drain after the last answer
        run["cpu_ms_per_task"] = {k: round(v + after.get(k, 0.0), 3) for k, v in run["cpu_ms_per_task"].items()}
        return run | {"tasks_per_s": tasks / (done - start)}

    def warm_up(self) -> None:
        """A few tasks through every stack, not measured: pool children, connections and caches ready."""
        self.publish_drain(self.raw_app, TASK, RAW_QUEUE, WARM_UP)
        self.events_drain(WARM_UP)
        self.mallops_round("batch", WARM_UP)
        self.mallops_round("single", WARM_UP)

    def throughput(self) -> None:
        self.warm_up()
        log(f"throughput: {self.config.repeats} rounds of raw, events, mallops batch, mallops single")
        raw: list[dict[str, Any]] = []
        events: list[dict[str, Any]] = []
        batch: list[dict[str, Any]] = []
        single: list[dict[str, Any]] = []
        lags: list[float] = []
        for i in range(self.config.repeats):
            raw.append(self.publish_drain(self.raw_app, TASK, RAW_QUEUE, self.config.tasks))
            self.db[3].delete("bench:lags")
            events.append(self.events_drain())
            lags += [float(v) for v in self.db[3].lrange("bench:lags", 0, -1)]
            with self.profiled(f"batch-{i}", self.gateway, self.worker, self.monitor):
                batch.append(self.mallops_round("batch"))
            with self.profiled(f"single-{i}", self.gateway, self.worker, self.monitor):
                single.append(self.mallops_round("single"))
            log(
                f"  round {i + 1}: raw {raw[-1]['tasks_per_s']:.0f}, events {events[-1]['tasks_per_s']:.0f}, "
                f"mallops batch {batch[-1]['tasks_per_s']:.0f} (submitted {batch[-1]['submit_per_s']:.0f}/s), "
                f"single {single[-1]['tasks_per_s']:.0f} tasks/s (p99 {single[-1]['latency_ms']['p99']} ms)"
            )
        self.results["raw"] |= {
            "what": "send_task from one thread -> bare celery worker (prefork -c 2, acks_late, Redis results)",
            "tasks_per_s": spread([r["tasks_per_s"] for r in raw]),
            "publish_per_s": spread([r["publish_per_s"] for r in raw]),
            "cpu_ms_per_task": _only(median_cpu([r["cpu_ms_per_task"] for r in raw]), RAW_ROLES),
        }
        self.results["events"] |= {
            "what": "the same with -E and task_send_sent_event, plus an EventReceiver process keeping "
            "celery.events.State (what Flower and celery-exporter run); a run ends when it has every "
            "task-succeeded",
            "tasks_per_s": spread([r["tasks_per_s"] for r in events]),
            "publish_per_s": spread([r["publish_per_s"] for r in events]),
            "cpu_ms_per_task": _only(median_cpu([r["cpu_ms_per_task"] for r in events]), EVENTS_ROLES),
            "event_lag_ms": _ms(lags),
        }
        self.results["mallops"] |= {
            "what": "HTTP POST to the gateway (uvicorn, uvloop, httptools) -> maintenance worker (its default "
            "threads pool, 2 threads, lifecycle events on) -> monitor -> task_history; a run ends when "
            "the history holds every task",
            "batch": {
                "tasks_per_s": spread([r["tasks_per_s"] for r in batch]),
                "submit_per_s": spread([r["submit_per_s"] for r in batch]),
                "cpu_ms_per_task": _only(median_cpu([r["cpu_ms_per_task"] for r in batch]), MALLOPS_ROLES),
                "batch_size": self.config.batch_size,
                "concurrent_requests": 2,
            },
            "single": {
                "tasks_per_s": spread([r["tasks_per_s"] for r in single]),
                "req_per_s": spread([r["req_per_s"] for r in single]),
                "latency_ms": _median_latency(single),
                "concurrency": self.config.concurrency,
                "cpu_ms_per_task": _only(median_cpu([r["cpu_ms_per_task"] for r in single]), MALLOPS_ROLES),
                "runs": single,
            },
        }

    # -- phase 3: latency at a paced rate ---------------------------------------------------------------

    def latency(self) -> None:
        log(f"latency at a paced {self.config.paced_rate:g} tasks/s for {self.config.paced_seconds:g} s")
        self.results["raw"]["paced"] = self.paced_celery(self.raw_app, TASK, RAW_QUEUE)
        self.db[3].delete("bench:lags")
        paced = self.paced_celery(self.events_app, TASK, EVENTS_QUEUE)
        wait_until(lambda: self.db[3].llen("bench:lags") >= paced["tasks"], timeout=30, message="paced lags")
        paced["event_lag_ms"] = _ms([float(v) for v in self.db[3].lrange("bench:lags", 0, -1)])
        self.results["events"]["paced"] = paced
        self.results["mallops"]["paced"] = self.paced_mallops()
        for name in ("raw", "events", "mallops"):
            p = self.results[name]["paced"]
            log(
                f"  {name}: submit-to-start p50 {p['submit_to_start_ms']['p50']} ms, p99 "
                f"{p['submit_to_start_ms']['p99']} ms"
            )

    def paced_mallops(self) -> dict[str, Any]:
        self.reset_history()
        lag_samples: list[float] = []
        sampling = threading.Event()

        def sample_lag() -> None:  # the monitor's own lag metric: age of the oldest entry of its batch
            with httpx.Client(timeout=5) as client:
                while not sampling.wait(0.05):
                    with contextlib.suppress(httpx.HTTPError):
                        lag_samples.append(float(client.get(f"{self.mon}/stats").json()["lag_seconds"]))

        sampler = threading.Thread(target=sample_lag, daemon=True)
        sampler.start()
        load = http_load.run(
            http_load.paced(
                f"{self.gw}/api/v1/tasks",
                self.headers,
                lambda _i: MALLOPS_BODY,
                self.config.paced_rate,
                self.config.paced_seconds,
            )
        )
        submitted = {answer["task_id"]: at for at, answer in load.answers}
        self.wait_history(len(submitted))
        sampling.set()
        sampler.join(10)
        with session_scope(self.settings) as session:
            rows = list(
                session.execute(
                    select(
                        TaskRecord.task_id, TaskRecord.started_at, TaskRecord.finished_at, TaskRecord.updated_at
                    ).where(TaskRecord.task_id.in_(list(submitted)))
                )
            )
        self.results["mallops"]["events_per_task"] = self._events_per_task()
        return {
            "rate": self.config.paced_rate,
            "tasks": len(submitted),
            "http_latency_ms": load.summary()["latency_ms"],
            "submit_to_start_ms": _ms([_now_utc(r.started_at) - submitted[r.task_id] for r in rows]),
            "submit_to_finish_ms": _ms([_now_utc(r.finished_at) - submitted[r.task_id] for r in rows]),
            # what /metrics shows as mallops_monitor_event_lag_seconds, sampled every 50 ms
            "monitor_lag_ms": _ms(lag_samples),
            # until a task's row is complete: includes the worker's buffering of task-received (flushed
            # every MALLOPS_EVENTS_FLUSH_INTERVAL, 0.1 s), which usually arrives after the outcome
            "row_complete_after_finish_ms": _ms([_now_utc(r.updated_at) - _now_utc(r.finished_at) for r in rows]),
        }

    # -- phase 4: the baselines stop; the monitor and the mallops worker alone -----------------------------

    def stop_baselines(self) -> None:
        self.raw_app.close()
        self.events_app.close()
        self.results["raw"]["peak_rss"] = self.rss.report(["raw worker"])
        self.results["events"]["peak_rss"] = self.rss.report(["events worker", "events consumer (EventReceiver+State)"])
        self.stop(self.consumer, "events consumer (EventReceiver+State)")
        self.stop(self.events_worker, "events worker")
        self.stop(self.raw_worker, "raw worker")

    def mallops_alone(self) -> None:
        result = self.results["mallops"]
        self.scenario_monitor(self.mon, self.monitor)
        result["peak_rss"] = self.rss.report(["mallops gateway", "mallops worker (events on)", "mallops monitor"])
        self.stop(self.gateway, "mallops gateway")
        self.stop(self.monitor, "mallops monitor")
        log("the mallops worker alone, fed by a plain publisher: lifecycle events on, off, and on prefork -c 2")
        # each worker on a broker database of its own, so that all three stay up and run in turn
        workers = {"events on": 0, "events off": 4}
        off = self.mallops_worker("events off", MALLOPS_EVENTS_ENABLED="false", MALLOPS_BROKER_URL=f"{self.base}/4")
        prefork, prefork_off = None, None
        if self.config.prefork_comparison:
            prefork = self.mallops_worker("prefork", "--pool=prefork", MALLOPS_BROKER_URL=f"{self.base}/5")
            result["prefork_idle_worker_memory"] = self.idle_memory(prefork)
            prefork_off = self.mallops_worker(
                "prefork events off",
                "--pool=prefork",
                MALLOPS_EVENTS_ENABLED="false",
                MALLOPS_BROKER_URL=f"{self.base}/6",
            )
            workers |= {"prefork": 5, "prefork events off": 6}
        with self.profiled("worker-alone", self.worker, off):
            rounds = self.worker_rounds(workers)
        result["worker_events_on"] = rounds["events on"]
        result["worker_events_off"] = rounds["events off"]
        if prefork is not None and prefork_off is not None:
            result["prefork_worker_events_on"] = rounds["prefork"]
            result["prefork_worker_events_off"] = rounds["prefork events off"]
            self.stop(prefork, "mallops worker (prefork)")
            self.stop(prefork_off, "mallops worker (prefork events off)")
        self.stop(off, "mallops worker (events off)")
        self.stop(self.worker, "mallops worker (events on)")
        reset_engines()

    def _events_per_task(self) -> float:
        """Stream entries per task of the last (paced) run: what one task costs the monitor."""
        entries = self.db[2].xrevrange(EVENT_STREAM, count=2000)
        tasks = set()
        count = 0
        for _, fields in entries:
            event = json.loads(fields[b"e"])
            if event.get("type", "").startswith("task-"):
                tasks.add(event.get("id"))
                count += 1
        return round(count / len(tasks), 2) if tasks else 0.0

    # -- the monitor under synthetic load ------------------------------------------------------------

    def push_events(self, tasks: int, prefix: str) -> int:
        """XADD four lifecycle events per synthetic task, as the platform's emitters do, pipelined."""
        pipe = self.db[2].pipeline(transaction=False)
        now = time.time()
        count = 0
        for i in range(tasks):
            task_id = f"{prefix}-{i}"
            common = {
                "id": task_id,
                "name": MALLOPS_TASK,
                "queue": "default",
                "retries": 0,
                "owner": "bench",
                "host": "synthetic@bench",
                "pid": 1,
            }
            for type_, extra in (
                ("task-sent", {"args": None}),
                ("task-received", {"args": None}),
                ("task-started", {}),
                ("task-succeeded", {"runtime": 0.001, "result": "'ok'"}),
            ):
                data = json.dumps({**common, **extra, "type": type_, "ts": now}, separators=(",", ":"))
                pipe.xadd(EVENT_STREAM, {"e": data}, maxlen=500_000, approximate=True)
                count += 1
            if i % 250 == 249:
                pipe.execute()
        pipe.execute()
        return count

    def scenario_monitor(self, mon: str, monitor: Process) -> None:
        log("monitor: synthetic lifecycle events pushed into the stream")

        def stats() -> dict[str, Any]:
            answer: dict[str, Any] = httpx.get(f"{mon}/stats", timeout=5).json()
            return answer

        self.reset_history()
        tasks = self.config.monitor_backlog // 4
        pushed_at = time.perf_counter()
        events = self.push_events(tasks, f"cap-{uuid.uuid4().hex[:6]}")
        push_seconds = time.perf_counter() - pushed_at
        wait_until(self.stream_drained, timeout=self.timeout_for(events), interval=0.05, message="backlog drained")
        capacity = events / (time.perf_counter() - pushed_at)
        log(
            f"  capacity: {events} events in a backlog processed at {capacity:.0f} events/s "
            f"(pushed at {events / push_seconds:.0f}/s)"
        )

        peak = self.results["mallops"]["batch"]["tasks_per_s"]["median"] or 0
        per_task = self.results["mallops"].get("events_per_task") or 4
        rate = max(5 * peak * per_task, 100.0)
        lags, rss = [], []
        tick = 0.1
        per_tick = max(1, round(rate * tick / 4))
        total_events = 0
        prefix = f"sus-{uuid.uuid4().hex[:6]}"
        start = time.perf_counter()
        next_sample = start
        i = 0
        while time.perf_counter() - start < self.config.monitor_seconds:
            total_events += self.push_events(per_tick, f"{prefix}-{i}")
            i += 1
            now = time.perf_counter()
            if now >= next_sample:
                next_sample = now + 0.5
                lags.append(float(stats()["lag_seconds"]))
                rss.append(round(tree_memory(monitor.pid)["rss_mb"], 1))
            delay = start + i * tick - time.perf_counter()
            if delay > 0:
                time.sleep(delay)  # pacing the load
        sent_seconds = time.perf_counter() - start
        wait_until(
            self.stream_drained, timeout=self.timeout_for(total_events), interval=0.05, message="sustained load drained"
        )
        drained = time.perf_counter() - start
        self.results["monitor"] = {
            "what": "synthetic task-sent/received/started/succeeded events XADDed into mallops:events; the "
            "monitor (SQLite history) folds them into task_history",
            "capacity_events_per_s": round(capacity, 1),
            "backlog_events": events,
            "sustained": {
                "target_events_per_s": round(rate, 1),
                "achieved_push_events_per_s": round(total_events / sent_seconds, 1),
                "seconds": round(sent_seconds, 1),
                "events": total_events,
                "tasks": total_events // 4,
                "drained_after_s": round(drained, 1),
                "lag_s": {k: (None if v is None else round(v, 3)) for k, v in percentiles(lags).items()},
                "rss_mb": {
                    "first": rss[0] if rss else None,
                    "last": rss[-1] if rss else None,
                    "max": max(rss) if rss else None,
                    "samples": rss,
                },
            },
        }
        log(
            f"  sustained {rate:.0f} events/s for {sent_seconds:.0f} s: lag max "
            f"{max(lags) if lags else 0:.2f} s, RSS {rss[0] if rss else '?'} -> {rss[-1] if rss else '?'} MB"
        )
        self.reset_history()


def _only(cpu: dict[str, float], roles: tuple[str, ...]) -> dict[str, float]:
    """The CPU figures of a stack's own processes (the other stacks idle meanwhile)."""
    return {role: value for role, value in cpu.items() if role in roles}


def _worker_cpu(block: dict[str, Any]) -> float | None:
    """The worker's own CPU ms per task in a worker-alone block."""
    values = [v for role, v in (block.get("cpu_ms_per_task") or {}).items() if "worker" in role]
    return sum(values) if values else None


def _wrk_summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Median and spread over wrk rounds: requests/s, latency percentiles, requests per server CPU-second."""
    return {
        "req_per_s": spread([r["req_per_s"] for r in runs]),
        "latency_ms": _median_latency(runs),
        "p50_ms": spread([r["latency_ms"]["p50"] for r in runs]),
        "p99_ms": spread([r["latency_ms"]["p99"] for r in runs]),
        "req_per_cpu_s": spread([r["req_per_cpu_s"] for r in runs if r["req_per_cpu_s"]]),
        "errors": sum(r["errors"] for r in runs),
        "runs": runs,
    }


def _median_latency(runs: list[dict[str, Any]]) -> dict[str, float | None]:
    """Per percentile, the median over runs."""
    import statistics

    keys = ("p50", "p90", "p95", "p99", "max")
    return {
        k: round(statistics.median(values), 2)
        for k in keys
        if (values := [r["latency_ms"][k] for r in runs if r["latency_ms"].get(k) is not None])
    }


def _venv_bin(name: str) -> Path:
    return Path(sys.executable).parent / name


def _version(package: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return None


def machine() -> dict[str, Any]:
    model = ""
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        for line in subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout.splitlines():
            if line.startswith("Model name:"):
                model = line.split(":", 1)[1].strip()
    redis_version = ""
    binary = shutil.which("redis-server")
    if binary:
        redis_version = subprocess.run(
            [binary, "--version"], capture_output=True, text=True, check=False
        ).stdout.strip()
    return {
        "nproc": os.cpu_count(),
        "cpu_model": model,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "celery": _version("celery"),
        "kombu": _version("kombu"),
        "redis_py": _version("redis"),
        "hiredis": _version("hiredis"),
        "uvicorn": _version("uvicorn"),
        "flower": _version("flower"),
        "redis_server": redis_version,
    }


def ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a and b else None


def _lifecycle_cpu(mallops: dict[str, Any], on: str, off: str) -> float | None:
    """Worker CPU per task added by lifecycle events, in % of the worker's CPU per task without them."""
    cpu_on, cpu_off = _worker_cpu(mallops.get(on, {})), _worker_cpu(mallops.get(off, {}))
    return round((cpu_on - cpu_off) / cpu_off * 100, 1) if cpu_on and cpu_off else None


def targets(results: dict[str, Any]) -> list[dict[str, Any]]:  # long: one line per target of the issue
    """Every target of issue 19, with the measured value and met/missed."""
    raw = results.get("raw", {}).get("tasks_per_s", {}).get("median")
    events = results.get("events", {}).get("tasks_per_s", {}).get("median")
    mallops = results.get("mallops", {})
    batch = mallops.get("batch", {}).get("tasks_per_s", {}).get("median")
    alone = mallops.get("front_door_alone", {})
    batch_submit = alone.get("batch", {}).get("submit_per_s", {}).get("median")
    single = alone.get("single", {})
    flower = results.get("flower", {})
    paced = mallops.get("paced", {}).get("submit_to_start_ms", {})
    monitor = results.get("monitor", {})
    sustained = monitor.get("sustained", {})
    out: list[dict[str, Any]] = []

    def add(name: str, target: str, value: float | None, met: bool | None, unit: str = "") -> None:
        out.append({"target": name, "wanted": target, "value": value, "unit": unit, "met": met})

    def ge(value: float | None, limit: float) -> bool | None:
        return None if value is None else value >= limit

    def le(value: float | None, limit: float) -> bool | None:
        return None if value is None else value <= limit

    r = ratio(batch, raw)
    add("mallops end to end (HTTP batch, monitoring on) / raw Celery", ">= 0.9 (aim 1.0)", r, ge(r, 0.9), "x")
    r = ratio(batch, events)
    add("mallops end to end (HTTP batch) / Celery-events stack", ">= 1.6", r, ge(r, 1.6), "x")
    r = ratio(single.get("req_per_cpu_s", {}).get("median"), flower.get("req_per_cpu_s", {}).get("median"))
    add("POST /api/v1/tasks / Flower async-apply, requests per server CPU-second (wrk)", ">= 3", r, ge(r, 3), "x")
    r = ratio(single.get("latency_ms", {}).get("p99"), flower.get("latency_ms", {}).get("p99"))
    add("POST /api/v1/tasks p99 / Flower async-apply p99 (wrk)", "<= 0.4", r, le(r, 0.4), "x")
    r = ratio(single.get("req_per_s", {}).get("median"), flower.get("req_per_s", {}).get("median"))
    add(
        "POST /api/v1/tasks / Flower async-apply, requests/s (wrk; the machine's cores shared)", "(shown)", r, None, "x"
    )
    r = _lifecycle_cpu(mallops, "worker_events_on", "worker_events_off")
    add("worker CPU per task added by lifecycle events (threads)", "<= 5", r, le(r, 5), "%")
    r = _lifecycle_cpu(mallops, "prefork_worker_events_on", "prefork_worker_events_off")
    add("worker CPU per task added by lifecycle events (prefork -c 2)", "<= 5", r, le(r, 5), "%")
    bare = results.get("raw", {}).get("idle_worker_memory", {})
    idle = mallops.get("prefork_idle_worker_memory", {})
    for unit in ("rss_mb", "pss_mb"):
        add(
            f"idle worker, default pool (prefork -c 2), {unit[:3].upper()} of the tree / bare Celery prefork -c 2",
            "<= 1",
            ratio(idle.get(unit), bare.get(unit)),
            le(ratio(idle.get(unit), bare.get(unit)), 1),
            "x",
        )
    rate = mallops.get("paced", {}).get("rate", 100)
    for pct, limit in (("p99", 10), ("p50", 3)):
        value = paced.get(pct)
        add(
            f"{pct} submit-to-start at {rate:g} tasks/s (HTTP, to the worker)",
            f"< {limit}",
            value,
            None if value is None else value < limit,
            "ms",
        )
    add("batch submission rate (front door alone)", ">= 5000", batch_submit, ge(batch_submit, 5000), "tasks/s")
    lag = sustained.get("lag_s", {}).get("max")
    add("monitor lag at 5x peak event rate (max sampled)", "< 1", lag, None if lag is None else lag < 1, "s")
    rss = sustained.get("rss_mb", {}).get("max")
    add(
        f"monitor RSS over the sustained run ({sustained.get('tasks', 0):,} tasks, not 1,000,000)",
        "< 150 flat",
        rss,
        le(rss, 150),
        "MB",
    )
    return out


def run(config: Config, out: Path, chart: bool = True, workdir: Path | None = None) -> dict[str, Any]:
    started = time.time()
    loadavg_at_start = [round(x, 2) for x in os.getloadavg()]
    with _workdir(workdir) as path:
        bench = Bench(config, path)
        try:
            bench.setup_mallops()
            bench.front_doors()
            bench.start_stacks()
            bench.throughput()
            bench.latency()
            bench.stop_baselines()
            bench.mallops_alone()
        finally:
            bench.close()
        results = bench.results
        results["rss_redis_and_bench"] = bench.rss.report(["redis-server", "bench (publisher, HTTP clients)"])
    raw = results["raw"]["tasks_per_s"]["median"]
    report = {
        "command": " ".join(["python", "-m", "bench", *sys.argv[1:]]),
        "started_at": dt.datetime.fromtimestamp(started, dt.UTC).isoformat(timespec="seconds"),
        "duration_s": round(time.time() - started, 1),
        "machine": machine()
        | {"loadavg_at_start": loadavg_at_start, "loadavg_at_end": [round(x, 2) for x in os.getloadavg()]},
        "config": asdict(config),
        "ratios_to_raw": {
            "raw": 1.0,
            "events": ratio(results["events"]["tasks_per_s"]["median"], raw),
            "mallops_batch": ratio(results["mallops"]["batch"]["tasks_per_s"]["median"], raw),
            "mallops_single": ratio(results["mallops"]["single"]["tasks_per_s"]["median"], raw),
        },
        "results": results,
        "targets": targets(results),
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    log(f"wrote {out}")
    if chart:
        from bench.chart import draw

        png = out.with_suffix(".png")
        draw(report, png)
        log(f"wrote {png}")
    return report


@contextlib.contextmanager
def _workdir(path: Path | None) -> Iterator[Path]:
    if path is not None:
        path.mkdir(parents=True, exist_ok=True)
        yield path
        return
    with tempfile.TemporaryDirectory(prefix="mallops-bench-") as tmp:
        yield Path(tmp)
