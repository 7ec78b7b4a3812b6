"""Two worker scenarios of ``python -m bench run``, runnable alone in a minute or two (issue 19's levers):

``python -m bench idle-memory``: every mallops worker service on its default pool beside a bare Celery
worker of the same pool and concurrency, each idle 2 s after it answers a ping: RSS and PSS of the whole
process tree, and whether SQLAlchemy is loaded in it (its compiled extensions in ``/proc/<pid>/maps``).

``python -m bench events-cost``: the maintenance worker with lifecycle events on and off (threads x 2 and
prefork -c 2), fed no-op tasks by a plain publisher in alternating rounds: tasks/s and worker CPU per task,
and the CPU the events add in % (the target: <= 5 %). ``--profile DIR`` records the workers with py-spy.

``python -m bench worker-memory``: the maintenance worker on prefork -c 2 fed no-op tasks at a steady rate
for a few minutes: RSS of its main process and of each child every 30 s, and the main process's growth per
1,000 tasks once warm (docs/reliability.md: the time-limit timers of finished tasks it used to keep).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import psutil

from bench.measure import tree, tree_memory
from bench.noop_app import QUEUE
from bench.processes import start_celery_worker, wait_until
from bench.run import MALLOPS_TASK, NOOP_CELERY, Bench, Config, _lifecycle_cpu, _workdir, log, ratio
from shared.db import migrate

WORKER_COMMANDS = ("idle-memory", "events-cost", "worker-memory")
# each mallops worker's default pool and concurrency with MALLOPS_WORKER_CONCURRENCY=2 (as the bench sets)
DEFAULT_POOLS: dict[str, tuple[str, int]] = {
    "maintenance": ("prefork", 2),
    "finance": ("prefork", 2),
    "reports": ("prefork", 2),
    "notifier": ("threads", 8),
}


def add_worker_commands(sub: Any) -> None:
    p = sub.add_parser("idle-memory", help="idle memory of every worker service against bare Celery of its pool")
    p.add_argument("--out", type=Path, default=Path("bench/results/idle-memory.json"))
    p.add_argument("--workdir", type=Path, help="keep logs and data here (default: a temporary directory)")
    p = sub.add_parser("events-cost", help="worker CPU per task with lifecycle events on and off")
    p.add_argument("--out", type=Path, default=Path("bench/results/events-cost.json"))
    p.add_argument("--tasks", type=int, default=1000, help="tasks per run (default 1000)")
    p.add_argument("--repeats", type=int, default=5, help="alternating rounds (default 5)")
    p.add_argument("--no-prefork", action="store_true", help="threads only")
    p.add_argument("--profile", type=Path, help="py-spy the workers into this directory (raw stacks)")
    p.add_argument("--workdir", type=Path, help="keep logs and data here (default: a temporary directory)")
    p = sub.add_parser("worker-memory", help="a prefork worker's RSS, parent and children, under steady load")
    p.add_argument("--out", type=Path, default=Path("bench/results/worker-memory.json"))
    p.add_argument("--minutes", type=float, default=4.0, help="how long the load lasts (default 4)")
    p.add_argument("--rate", type=float, default=80.0, help="tasks a second (default 80)")
    p.add_argument("--workdir", type=Path, help="keep logs and data here (default: a temporary directory)")


def run_worker_command(args: argparse.Namespace) -> None:
    config = Config(repeats=getattr(args, "repeats", 1), tasks=getattr(args, "tasks", 0))
    if getattr(args, "profile", None):
        config.profile_dir = str(args.profile)
    with _workdir(args.workdir) as path:
        bench = Bench(config, path)
        try:
            bench.settings = bench.mallops_settings()
            bench.settings.data_dir.mkdir(parents=True, exist_ok=True)
            migrate(bench.settings)
            if args.command == "idle-memory":
                result = idle_memory(bench)
            elif args.command == "worker-memory":
                result = worker_memory(bench, args.minutes, args.rate)
            else:
                result = events_cost(bench, prefork=not args.no_prefork)
        finally:
            bench.close()
    result["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    result["command"] = " ".join(["python", "-m", "bench", *sys.argv[1:]])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    log(f"wrote {args.out}")


def sqlalchemy_loaded(pid: int) -> bool:
    """Whether any process of the tree has SQLAlchemy's compiled extensions mapped (imported)."""
    for proc in tree(pid):
        try:
            if any("/sqlalchemy/" in m.path for m in proc.memory_maps(grouped=True)):
                return True
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return False


def _idle(pid: int) -> dict[str, Any]:
    time.sleep(2)  # settle: memory of a freshly started, idle worker, not a synchronisation
    memory = tree_memory(pid, pss=True)
    return {
        "rss_mb": memory["rss_mb"],
        "pss_mb": memory["pss_mb"],
        "processes": len(memory["processes"]),
        "sqlalchemy_loaded": sqlalchemy_loaded(pid),
    }


def idle_memory(bench: Bench) -> dict[str, Any]:
    """Each service's worker on its default pool, then bare Celery of that pool, one at a time."""
    log(f"idle memory, load average {os.getloadavg()[0]:.1f} (2 cores)")
    bare: dict[str, dict[str, Any]] = {}
    services: dict[str, dict[str, Any]] = {}
    for pool, concurrency in sorted(set(DEFAULT_POOLS.values())):
        hostname = f"bare-{pool}@bench"
        argv = [*NOOP_CELERY, "worker", "-P", pool, "-c", str(concurrency), "-Q", QUEUE, "-n", hostname]
        argv += ["-l", "WARNING", "--without-mingle", "--without-gossip"]
        process = start_celery_worker(
            f"bare-{pool}", argv, bench.bare_env(), bench.log_dir, f"{bench.base}/0", hostname
        )
        try:
            bare[f"{pool} -c {concurrency}"] = _idle(process.pid)
        finally:
            process.stop()
    for service, (pool, concurrency) in DEFAULT_POOLS.items():
        hostname = f"{service}-idle@bench"
        argv = [sys.executable, "-m", "mallops", "serve", service, f"--hostname={hostname}"]
        env = bench.mallops_env()
        env.pop("MALLOPS_MAINTENANCE_POOL", None)  # the shipped default, not the bench's threads
        process = start_celery_worker(service, argv, env, bench.log_dir, f"{bench.base}/0", hostname)
        try:
            base, row = bare[f"{pool} -c {concurrency}"], _idle(process.pid)
            services[service] = row | {
                "pool": f"{pool} -c {concurrency}",
                "rss_ratio": ratio(row["rss_mb"], base["rss_mb"]),
                "pss_ratio": ratio(row["pss_mb"], base["pss_mb"]),
            }
        finally:
            process.stop()
    for name, row in bare.items():
        log(f"  bare Celery {name}: {row['rss_mb']} MB RSS, {row['pss_mb']} MB PSS")
    for name, row in services.items():
        log(
            f"  {name} ({row['pool']}): {row['rss_mb']} MB RSS ({row['rss_ratio']} x), {row['pss_mb']} MB PSS "
            f"({row['pss_ratio']} x), SQLAlchemy loaded: {row['sqlalchemy_loaded']}"
        )
    return {"bare": bare, "services": services}


def _redis_counts(bench: Bench) -> dict[str, int]:
    info = bench.db[0].info("all")
    counts = {k.removeprefix("cmdstat_"): int(v["calls"]) for k, v in info.items() if k.startswith("cmdstat_")}
    return counts | {"reads": int(info["total_reads_processed"])}


def redis_per_task(bench: Bench, db: int) -> dict[str, Any]:
    """Redis round trips and commands per task of one worker (a run of ``tasks`` no-op tasks): Redis's own
    counters (``INFO``) around the run, less the publisher's LPUSH and the bench's DBSIZE polls; the other
    workers are idle meanwhile (their heartbeats and sweeps add a little). Unlike CPU time, this does not
    depend on the machine's load."""
    tasks = bench.config.tasks
    app = bench.publisher(db=db)
    try:
        before = _redis_counts(bench)
        bench.publish_drain(app, MALLOPS_TASK, "default", tasks)
        after = _redis_counts(bench)
    finally:
        app.close()
    delta = {k: after.get(k, 0) - before.get(k, 0) for k in after}
    polls = delta.pop("dbsize", 0) + delta.pop("info", 0)
    delta["lpush"] = delta.get("lpush", 0) - tasks
    reads = delta.pop("reads") - tasks - polls
    commands = sum(delta.values())
    return {
        "round_trips": round(reads / tasks, 2),
        "commands": round(commands / tasks, 2),
        "by_command": {k: round(v / tasks, 2) for k, v in sorted(delta.items()) if v > 0},
    }


def events_cost(bench: Bench, prefork: bool = True) -> dict[str, Any]:
    """The maintenance worker with events on and off, each on a broker database of its own, in rounds."""
    log(f"events cost, load average {os.getloadavg()[0]:.1f} (2 cores): {bench.config.repeats} rounds")
    started = {
        "events on": bench.mallops_worker("events on"),
        "events off": bench.mallops_worker(
            "events off", MALLOPS_EVENTS_ENABLED="false", MALLOPS_BROKER_URL=f"{bench.base}/4"
        ),
    }
    workers = {"events on": 0, "events off": 4}
    if prefork:
        started["prefork"] = bench.mallops_worker("prefork", "--pool=prefork", MALLOPS_BROKER_URL=f"{bench.base}/5")
        started["prefork events off"] = bench.mallops_worker(
            "prefork events off", "--pool=prefork", MALLOPS_EVENTS_ENABLED="false", MALLOPS_BROKER_URL=f"{bench.base}/6"
        )
        workers |= {"prefork": 5, "prefork events off": 6}
    for label, process in started.items():  # one profile file per worker
        process.name = f"maintenance-{label.replace(' ', '-')}"
    with bench.profiled("events-cost", *started.values()):
        rounds = bench.worker_rounds(workers)
    result: dict[str, Any] = {"rounds": rounds, "tasks": bench.config.tasks, "repeats": bench.config.repeats}
    result["redis_per_task"] = {label: redis_per_task(bench, db) for label, db in workers.items()}
    keyed = {"worker_events_on": rounds["events on"], "worker_events_off": rounds["events off"]}
    if prefork:
        keyed |= {
            "prefork_worker_events_on": rounds["prefork"],
            "prefork_worker_events_off": rounds["prefork events off"],
        }
    result["lifecycle_cpu_pct_threads"] = _lifecycle_cpu(keyed, "worker_events_on", "worker_events_off")
    result["lifecycle_cpu_pct_prefork"] = _lifecycle_cpu(keyed, "prefork_worker_events_on", "prefork_worker_events_off")
    for label, row in rounds.items():
        cpu = row["cpu_ms_per_task"].get(f"mallops worker ({label})")
        redis_cost = result["redis_per_task"][label]
        log(
            f"  {label}: {row['tasks_per_s']['median']:.0f} tasks/s (median), worker CPU {cpu} ms per task; "
            f"Redis per task: {redis_cost['round_trips']} round trips, {redis_cost['commands']} commands"
        )
    log(
        f"  events add {result['lifecycle_cpu_pct_threads']} % worker CPU per task on threads, "
        f"{result['lifecycle_cpu_pct_prefork']} % on prefork -c 2"
    )
    return result


def worker_memory(bench: Bench, minutes: float, rate: float, every: float = 30.0) -> dict[str, Any]:
    """The prefork maintenance worker fed ``rate`` no-op tasks a second for ``minutes``: RSS of its main
    process and children every ``every`` seconds, and the main process's growth per 1,000 tasks after the
    first sample past the warm-up (the first ``every`` seconds)."""
    log(f"worker memory, load average {os.getloadavg()[0]:.1f} (2 cores): {rate:.0f} tasks/s for {minutes} min")
    worker = bench.mallops_worker("prefork", "--pool=prefork")
    parent = psutil.Process(worker.pid)
    app = bench.publisher()
    samples: list[dict[str, Any]] = []

    def sample(sent: int, started: float) -> None:
        children = [child.memory_info().rss / 2**20 for child in parent.children(recursive=True)]
        row = {
            "seconds": round(time.perf_counter() - started),
            "sent": sent,
            "parent_rss_mb": round(parent.memory_info().rss / 2**20, 1),
            "children_rss_mb": [round(c, 1) for c in children],
        }
        samples.append(row)
        children_text = ", ".join(f"{c} MB" for c in row["children_rss_mb"])
        log(f"  {row['seconds']:>4} s, {sent:>6} sent: parent {row['parent_rss_mb']} MB, children {children_text}")

    started = time.perf_counter()
    sent, due, next_sample = 0, started, started
    while (now := time.perf_counter()) - started < minutes * 60:
        if now >= next_sample:
            sample(sent, started)
            next_sample += every
        app.send_task(MALLOPS_TASK, kwargs={"message": "bench"}, queue="default")
        sent += 1
        due += 1 / rate
        if (wait := due - time.perf_counter()) > 0:
            time.sleep(wait)  # pacing the publisher, not a synchronisation
    wait_until(lambda: not bench.db[0].llen("default"), timeout=120, interval=0.2, message="the queue drained")
    sample(sent, started)
    app.close()
    warm = [row for row in samples if row["seconds"] >= every]
    growth = None
    if len(warm) >= 2 and warm[-1]["sent"] > warm[0]["sent"]:
        growth = round(
            (warm[-1]["parent_rss_mb"] - warm[0]["parent_rss_mb"]) * 1000 / (warm[-1]["sent"] - warm[0]["sent"]), 3
        )
    if growth is None:
        log(f"  too short to say how the main process grows: --minutes {2 * every / 60:g} or more")
    else:
        log(f"  the main process grew {growth} MB per 1,000 tasks once warm")
    return {"rate": rate, "minutes": minutes, "samples": samples, "parent_mb_per_1000_tasks": growth}
