"""``python -m bench monitor-scale``: the monitor over 1,000,000 tasks (issue 19: RSS flat under 150 MB, lag
under 1 s).

Running a million real tasks through workers would take hours on two shared cores, so this feeds the
monitor's own input directly: a pusher XADDs the four lifecycle events of each synthetic task
(``task-sent``, ``task-received``, ``task-started``, ``task-succeeded``, the payloads the platform's emitters
write) into ``mallops:events``, paced at ``--rate`` events/s, while a real ``mallops serve monitor`` folds them
into ``task_history`` (SQLite in the work directory, or ``--database-url``). Every second the monitor's RSS
(its process tree) and its lag (``/stats``: age of the oldest entry of the batch it is processing) are
sampled. At the end every task must be in the history as SUCCESS.
"""

from __future__ import annotations

import json
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import func, select

from bench.measure import percentiles, tree_memory
from bench.processes import wait_until
from bench.stack import Stack, log, machine
from shared.contracts import EVENT_STREAM, MONITOR_GROUP
from shared.db import session_scope
from shared.models import TaskRecord

TASK = "mallops.maintenance.test_task"
STREAM_MAXLEN = 500_000  # as the emitters trim (MALLOPS_EVENTS_STREAM_MAXLEN's default)


def events_of(task_id: str, now: float) -> list[str]:
    common = {"id": task_id, "name": TASK, "queue": "default", "retries": 0, "owner": "bench"}
    common |= {"host": "synthetic@bench", "pid": 1}
    kinds: tuple[tuple[str, dict[str, Any]], ...] = (
        ("task-sent", {"args": None}),
        ("task-received", {"args": None}),
        ("task-started", {}),
        ("task-succeeded", {"runtime": 0.001, "result": "'ok'"}),
    )
    return [json.dumps({**common, **extra, "type": kind, "ts": now}, separators=(",", ":")) for kind, extra in kinds]


def slope_per(samples: list[tuple[float, float]], per: float) -> float | None:
    """Least-squares slope of (x, y) samples, per ``per`` units of x."""
    if len(samples) < 3:
        return None
    n = len(samples)
    mx = sum(x for x, _ in samples) / n
    my = sum(y for _, y in samples) / n
    sxx = sum((x - mx) ** 2 for x, _ in samples)
    if not sxx:
        return None
    return sum((x - mx) * (y - my) for x, y in samples) / sxx * per


class Pusher:
    def __init__(self, stack: Stack, tasks: int, rate: float) -> None:
        self.client = stack.redis(2)
        self.tasks = tasks
        self.rate = rate  # events/s
        self.pushed = 0  # tasks
        self.prefix = f"m1-{uuid.uuid4().hex[:6]}"

    def run(self) -> None:
        """Paced in ticks of 0.1 s: each tick XADDs its share of tasks (4 events each) in one pipeline."""
        per_tick = max(1, round(self.rate * 0.1 / 4))
        start = time.perf_counter()
        tick = 0
        while self.pushed < self.tasks:
            pipe = self.client.pipeline(transaction=False)
            now = time.time()
            count = min(per_tick, self.tasks - self.pushed)
            for i in range(self.pushed, self.pushed + count):
                for data in events_of(f"{self.prefix}-{i}", now):
                    pipe.xadd(EVENT_STREAM, {"e": data}, maxlen=STREAM_MAXLEN, approximate=True)
            pipe.execute()
            self.pushed += count
            tick += 1
            delay = start + tick * 0.1 - time.perf_counter()
            if delay > 0:
                time.sleep(delay)  # pacing the load


def drained(stack: Stack) -> bool:
    for group in stack.redis(2).xinfo_groups(EVENT_STREAM):
        if group["name"] in (MONITOR_GROUP, MONITOR_GROUP.encode()):
            return not group["pending"] and not group.get("lag")
    return False


def run(
    tasks: int, rate: float, database_url: str | None, workdir: Path | None
) -> dict[str, Any]:  # long: one scenario
    with tempfile.TemporaryDirectory(prefix="mallops-m1-") as tmp:
        stack = Stack(workdir or Path(tmp), database_url=database_url)
        try:
            stack.start_redis()
            stack.prepare_database()
            settings = stack.settings()
            with session_scope(settings) as session:
                before = int(session.scalar(select(func.count()).select_from(TaskRecord)) or 0)
            monitor, url = stack.monitor()
            at_start = machine()
            log(f"monitor over {tasks:,} synthetic tasks at {rate:,.0f} events/s (load {at_start['load_average']})")
            pusher = Pusher(stack, tasks, rate)
            thread = threading.Thread(target=pusher.run, name="pusher", daemon=True)
            samples: list[dict[str, float]] = []
            start = time.perf_counter()
            thread.start()
            next_log = start + 30
            while thread.is_alive() or not drained(stack):
                stats = httpx.get(f"{url}/stats", timeout=10).json()
                rss = tree_memory(monitor.pid)["rss_mb"]
                samples.append(
                    {
                        "t": round(time.perf_counter() - start, 1),
                        "pushed_tasks": pusher.pushed,
                        "events_processed": stats["events_processed"],
                        "lag_s": float(stats["lag_seconds"]),
                        "rss_mb": round(rss, 1),
                    }
                )
                if time.perf_counter() > next_log:
                    next_log += 30
                    log(
                        f"  {pusher.pushed:,} tasks pushed, {stats['events_processed']:,} events processed, "
                        f"lag {stats['lag_seconds']:.2f} s, RSS {rss:.1f} MB"
                    )
                if time.perf_counter() - start > 3 * tasks * 4 / rate + 600:
                    raise TimeoutError("the monitor did not keep up")
                time.sleep(1.0)
            seconds = time.perf_counter() - start
            wait_until(lambda: drained(stack), 60, message="the stream drained")
            with session_scope(settings) as session:
                done = session.scalar(
                    select(func.count()).select_from(TaskRecord).where(TaskRecord.task_id.startswith(pusher.prefix))
                )
            return report(tasks, rate, seconds, samples, int(done or 0), before, at_start, settings.database_url)
        finally:
            stack.close()


def report(
    tasks: int,
    rate: float,
    seconds: float,
    samples: list[dict[str, float]],
    rows: int,
    rows_before: int,
    at_start: dict[str, Any],
    database_url: str,
) -> dict[str, Any]:
    rss = [s["rss_mb"] for s in samples]
    lags = [s["lag_s"] for s in samples]
    # RSS against tasks processed, after the first 10 % (imports, connection pools and caches warm up)
    warm = [(s["events_processed"] / 4, s["rss_mb"]) for s in samples if s["events_processed"] >= 0.1 * tasks * 4]
    return {
        "scenario": "monitor over synthetic tasks",
        "tasks": tasks,
        "events": tasks * 4,
        "target_events_per_s": rate,
        "achieved_events_per_s": round(tasks * 4 / seconds, 1),
        "seconds": round(seconds, 1),
        "history_rows_of_the_run": rows,
        "history_rows_before": rows_before,
        "database": database_url.split(":", 1)[0],
        "lag_s": {**{k: (None if v is None else round(v, 3)) for k, v in percentiles(lags).items()}, "max": max(lags)},
        "rss_mb": {
            "first": rss[0] if rss else None,
            "at_10_percent": warm[0][1] if warm else None,
            "last": rss[-1] if rss else None,
            "max": max(rss) if rss else None,
            "slope_mb_per_100k_tasks_after_10_percent": (
                None if (s := slope_per(warm, 100_000)) is None else round(s, 3)
            ),
        },
        "machine_at_start": at_start,
        "machine_at_end": machine(),
        "samples": samples,
    }
