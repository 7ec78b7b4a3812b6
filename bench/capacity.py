"""Redis capacity (issue 19, docs/capacity.md).

``python -m bench capacity``: bytes per task in every Redis structure and how long each lives, measured on a
platform of its own (redis-server, gateway, maintenance worker on threads, monitor, SQLite):

1. with no worker running, ``--tasks`` tasks are submitted over HTTP in batches (and ``--keyed`` single
   requests with an ``Idempotency-Key``): what a *queued* task holds (the message in the queue, the gateway's
   metadata, the sorted sets, its task-sent event);
2. the worker starts; while it drains the queue, the broker's ``unacked`` hash is sampled (what a *running*
   task holds); once task_history holds every task as SUCCESS, what a *finished* task still holds (its
   result, its events, the sorted sets; the metadata the monitor dropped).

Each time every key of databases 0-2 is read (``MEMORY USAGE``, ``TTL``) and grouped by pattern (ids
replaced by ``<id>``); the differences divided by the tasks are the bytes per task.

3. ``--sustain-seconds``: tasks submitted over HTTP at ``--rate`` tasks/s (default 80 % of the drain rate
   measured in 2) for that long, with lifetimes scaled down so that the steady state comes within minutes
   (``MALLOPS_RESULT_EXPIRES_SECONDS`` ``--result-expires``, ``MALLOPS_EVENTS_STREAM_MAXLEN``
   ``--stream-maxlen``); Redis ``used_memory`` sampled every 2 s, reported as start / end / slope over the
   steady part (after the longest lifetime has passed once).

``python -m bench monitor-scale``: the monitor over 1,000,000 tasks (``bench/monitor_scale.py``).
"""

from __future__ import annotations

import argparse
import json
import re
import signal
import sys
import tempfile
import threading
import time
import uuid
from collections import defaultdict
from pathlib import Path
from typing import Any

import httpx
import redis
from sqlalchemy import func, select

from bench import http_load
from bench.monitor_scale import slope_per
from bench.processes import wait_until
from bench.stack import Stack, log, machine
from shared.db import session_scope
from shared.models import TaskRecord
from shared.taskmeta import RECENT_ALL, RECENT_MAX, RECENT_OWNER, RECENT_OWNER_MAX

CAPACITY_COMMANDS = ("capacity", "monitor-scale")
BODY = {"task_name": "test_task", "kwargs": {"message": "capacity"}}
DBS = {0: "broker", 1: "results", 2: "cache"}
ID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}|[0-9a-f]{32,64}")


def add_capacity_commands(sub: Any) -> None:
    c = sub.add_parser("capacity", help="Redis bytes per task per structure, and a sustained run (docs/capacity.md)")
    c.add_argument("--out", type=Path, default=Path("bench/results/capacity.json"))
    c.add_argument("--tasks", type=int, default=10_000, help="tasks of the inventory (default 10000)")
    c.add_argument("--keyed", type=int, default=200, help="single requests with an Idempotency-Key (default 200)")
    c.add_argument("--sustain-seconds", type=float, default=240.0, help="sustained run; 0 skips it (default 240)")
    c.add_argument("--rate", type=float, help="tasks/s of the sustained run (default 80 %% of the drain rate)")
    c.add_argument("--result-expires", type=int, default=60, help="result lifetime in the sustained run (s)")
    c.add_argument("--stream-maxlen", type=int, help="MALLOPS_EVENTS_STREAM_MAXLEN in the sustained run")
    c.add_argument("--workdir", type=Path)
    m = sub.add_parser("monitor-scale", help="the monitor over 1,000,000 synthetic tasks: RSS and lag")
    m.add_argument("--out", type=Path, default=Path("bench/results/monitor-scale.json"))
    m.add_argument("--tasks", type=int, default=1_000_000)
    m.add_argument("--rate", type=float, default=10_000.0, help="events/s pushed (4 per task; default 10000)")
    m.add_argument("--database-url", help="history database (default SQLite in the work directory)")
    m.add_argument("--workdir", type=Path)


def run_capacity_command(args: argparse.Namespace) -> None:
    # SIGTERM (and SIGINT, which a background job ignores otherwise) stop the run and every process it started
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda number, _frame: sys.exit(128 + number))
    if args.command == "monitor-scale":
        from bench.monitor_scale import run as monitor_scale

        result = monitor_scale(args.tasks, args.rate, args.database_url, args.workdir)
    else:
        result = capacity(args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    log(f"wrote {args.out}")
    print(json.dumps({k: v for k, v in result.items() if k not in ("samples", "inventory")}, indent=1))


# -- what is in Redis -------------------------------------------------------------------------------------


def pattern(key: str) -> str:
    return ID.sub("<id>", key)


def inventory(stack: Stack) -> dict[str, dict[str, Any]]:
    """``<db>:<pattern>`` -> keys, bytes (MEMORY USAGE, exact for streams and sets), type, TTL range."""
    out: dict[str, dict[str, Any]] = defaultdict(lambda: {"keys": 0, "bytes": 0, "ttl": [], "type": ""})
    for db, role in DBS.items():
        client = stack.redis(db)
        keys = list(client.scan_iter(count=5000))
        for start in range(0, len(keys), 2000):
            chunk = keys[start : start + 2000]
            pipe = client.pipeline(transaction=False)
            for key in chunk:
                pipe.memory_usage(key, samples=0)
                pipe.ttl(key)
                pipe.type(key)
            values = pipe.execute()
            for i, key in enumerate(chunk):
                size, ttl, kind = values[3 * i : 3 * i + 3]
                row = out[f"{role}:{pattern(key.decode())}"]
                row["keys"] += 1
                row["bytes"] += int(size or 0)
                row["type"] = kind.decode()
                if ttl is not None and ttl >= 0:
                    row["ttl"].append(int(ttl))
        client.close()
    for row in out.values():
        ttls = row.pop("ttl")
        row["ttl_s"] = [min(ttls), max(ttls)] if ttls else None
    return dict(out)


def used_memory(stack: Stack) -> int:
    return int(stack.redis(0).info("memory")["used_memory"])


def per_task(before: dict[str, dict[str, Any]], after: dict[str, dict[str, Any]], tasks: int) -> dict[str, Any]:
    rows = {}
    for name in sorted(set(before) | set(after)):
        b, a = before.get(name, {"keys": 0, "bytes": 0}), after.get(name, {"keys": 0, "bytes": 0})
        delta = a["bytes"] - b["bytes"]
        if abs(delta) < 64:
            continue
        rows[name] = {
            "bytes_per_task": round(delta / tasks, 1),
            "keys": a["keys"],
            "type": after.get(name, before.get(name, {})).get("type"),
            "ttl_s": after.get(name, {}).get("ttl_s"),
        }
    return rows


def stream_facts(stack: Stack) -> dict[str, Any]:
    client = stack.redis(2)
    length = client.xlen("mallops:events")
    size = client.memory_usage("mallops:events", samples=0) or 0
    return {"entries": length, "bytes": size, "bytes_per_entry": round(size / length, 1) if length else None}


def history_done(stack: Stack) -> int:
    with session_scope(stack.settings()) as session:
        count = session.scalar(select(func.count()).select_from(TaskRecord).where(TaskRecord.state == "SUCCESS"))
        return int(count or 0)


# -- the scenarios --------------------------------------------------------------------------------------


def submit_batches(url: str, headers: dict[str, str], tasks: int, size: int = 500) -> float:
    body = {"tasks": [BODY] * size}
    load = http_load.run(http_load.closed_loop(f"{url}/api/v1/tasks/batch", headers, lambda _i: body, tasks // size, 2))
    if load.errors:
        raise RuntimeError(f"{load.errors} batch requests failed")
    return tasks // size * size / load.seconds


def submit_keyed(url: str, headers: dict[str, str], count: int) -> None:
    with httpx.Client(base_url=url, headers=headers, timeout=30) as client:
        for i in range(count):
            answer = client.post("/api/v1/tasks", json=BODY, headers={"Idempotency-Key": f"capacity-{i}"})
            answer.raise_for_status()


def sample_unacked(stack: Stack, stop: threading.Event, seen: dict[str, float]) -> None:
    client = stack.redis(0)
    while not stop.is_set():
        with client.pipeline(transaction=False) as pipe:
            pipe.hlen("unacked")
            pipe.memory_usage("unacked", samples=0)
            pipe.zcard("unacked_index")
            pipe.memory_usage("unacked_index", samples=0)
            n, size, m, index_size = pipe.execute()
        if n and n >= seen.get("entries", 0) and size:
            seen |= {"entries": n, "bytes": size, "index_entries": m, "index_bytes": index_size or 0}
        stop.wait(0.05)
    client.close()


# long: one scenario, in order
def capacity(args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="mallops-capacity-") as tmp:
        stack = Stack(args.workdir or Path(tmp))
        result: dict[str, Any] = {"command": "python -m bench capacity", "machine_at_start": machine()}
        try:
            stack.start_redis()
            headers = stack.prepare_database()
            url = stack.gateway()
            stack.monitor()
            time.sleep(2)  # the services' first heartbeats and registrations
            empty, empty_used = inventory(stack), used_memory(stack)
            n = args.tasks // 500 * 500
            log(f"inventory: {n:,} tasks in batches of 500 and {args.keyed} keyed single requests, no worker yet")
            submit_batches(url, headers, n)
            submit_keyed(url, headers, args.keyed)
            total = n + args.keyed
            wait_until(lambda: stack.redis(2).xlen("mallops:events") >= total, 60, message="every task-sent event")
            queued, queued_used = inventory(stack), used_memory(stack)

            unacked: dict[str, float] = {}
            stop = threading.Event()
            sampler = threading.Thread(target=sample_unacked, args=(stack, stop, unacked), daemon=True)
            sampler.start()
            started = time.perf_counter()
            stack.worker()
            wait_until(lambda: history_done(stack) >= total, 60 + total / 20, message=f"{total} tasks in task_history")
            drain_rate = total / (time.perf_counter() - started)
            stop.set()
            sampler.join()
            wait_until(
                lambda: not any(stack.redis(2).scan_iter("mallops:gw:task:*", count=5000)), 60, message="meta dropped"
            )
            finished, finished_used = inventory(stack), used_memory(stack)
            result["inventory"] = {
                "tasks": total,
                "used_memory": {"empty": empty_used, "queued": queued_used, "finished": finished_used},
                "used_memory_per_task": {
                    "queued": round((queued_used - empty_used) / total, 1),
                    "finished": round((finished_used - empty_used) / total, 1),
                },
                "queued_per_task": per_task(empty, queued, total),
                "finished_per_task": per_task(empty, finished, total),
                "idempotency_keys": {k: v for k, v in finished.items() if ":idem:" in k},
                "stream": stream_facts(stack),
                "unacked_peak": unacked,
                "drain_tasks_per_s": round(drain_rate, 1),
                "raw": {"empty": empty, "queued": queued, "finished": finished},
            }
            log(
                f"  drained at {drain_rate:.0f} tasks/s; used_memory {empty_used:,}, {queued_used:,}, {finished_used:,}"
            )
        finally:
            stack.close()
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1) + "\n")  # the inventory, whatever happens next
        if args.sustain_seconds > 0:
            rate = args.rate or round(0.8 * result["inventory"]["drain_tasks_per_s"])
            result["sustained"] = sustained(args, rate)
        result["machine_at_end"] = machine()
        return result


# long: one scenario, in order
def sustained(args: argparse.Namespace, rate: float) -> dict[str, Any]:
    overrides = {"MALLOPS_RESULT_EXPIRES_SECONDS": str(args.result_expires)}
    if args.stream_maxlen:
        overrides["MALLOPS_EVENTS_STREAM_MAXLEN"] = str(args.stream_maxlen)
    with tempfile.TemporaryDirectory(prefix="mallops-sustained-") as tmp:
        stack = Stack((args.workdir / "sustained") if args.workdir else Path(tmp), env_overrides=overrides)
        try:
            stack.start_redis()
            headers = stack.prepare_database()
            url = stack.gateway()
            stack.monitor()
            stack.worker()
            prefill_recent(stack)
            at_start = machine()
            log(f"sustained: {rate:.0f} tasks/s for {args.sustain_seconds:.0f} s, {overrides}")
            log(f"  load average {at_start['load_average']}")
            size = 20 if rate < 400 else 50
            samples: list[dict[str, float]] = []
            stop = threading.Event()
            thread = threading.Thread(target=_sample_memory, args=(stack, stop, samples), daemon=True)
            thread.start()
            load = paced_batches(url, headers, size, rate / size, args.sustain_seconds)
            sent_at = time.perf_counter()
            expected = (load["requests"] - load["errors"]) * size
            wait_until(
                lambda: history_done(stack) >= expected,
                120 + expected / 50,
                message="the sustained tasks in the history",
            )
            catch_up = time.perf_counter() - sent_at
            stop.set()
            thread.join()
            return _sustained_report(args, rate, samples, load, expected, catch_up, at_start)
        finally:
            stack.close()


def paced_batches(url: str, headers: dict[str, str], size: int, per_second: float, seconds: float) -> dict[str, Any]:
    """One batch of ``size`` tasks every 1/``per_second`` s for ``seconds`` (a few requests a second: one
    client that reconnects when the server closed an idle keep-alive connection)."""
    body = {"tasks": [BODY] * size}
    count = max(1, int(per_second * seconds))
    errors = 0
    latencies = []
    with httpx.Client(base_url=url, headers=headers, timeout=30) as client:
        start = time.perf_counter()
        for i in range(count):
            delay = start + i / per_second - time.perf_counter()
            if delay > 0:
                time.sleep(delay)  # pacing the load
            sent = time.perf_counter()
            try:
                ok = client.post("/api/v1/tasks/batch", json=body).status_code == 202
            except httpx.HTTPError:
                ok = False
            latencies.append(time.perf_counter() - sent)
            errors += not ok
        elapsed = time.perf_counter() - start
    latencies.sort()
    return {
        "requests": count,
        "errors": errors,
        "seconds": round(elapsed, 1),
        "batch_size": size,
        "latency_ms": {"p50": round(latencies[len(latencies) // 2] * 1000, 1), "max": round(latencies[-1] * 1000, 1)},
    }


def prefill_recent(stack: Stack) -> None:
    """Fill the gateway's two capped lists of recent tasks (all, and the bench owner's) to their caps with
    ids older than any real one, as in any deployment that has run more than RECENT_MAX tasks: each new task
    then pushes the oldest out, so the sustained run starts at their steady state instead of their growth."""
    cache = stack.redis(2)
    now = time.time() - 3600
    for key, cap in ((RECENT_ALL, RECENT_MAX), (RECENT_OWNER + stack.token_name, RECENT_OWNER_MAX)):
        for start in range(0, cap, 10_000):
            ids: dict[str | bytes, float] = {
                f"{uuid.UUID(int=start + i + 1)}": now - start - i for i in range(min(10_000, cap - start))
            }
            cache.zadd(key, ids)
    cache.close()


def _sample_memory(stack: Stack, stop: threading.Event, samples: list[dict[str, float]]) -> None:
    client, cache = stack.redis(0), stack.redis(2)
    start = time.perf_counter()
    while not stop.is_set():
        with client.pipeline(transaction=False) as pipe:
            pipe.info("memory")
            pipe.llen("default")
            info, queue = pipe.execute()
        samples.append(
            {
                "t": round(time.perf_counter() - start, 1),
                "used_memory": int(info["used_memory"]),
                "queue": int(queue),
                "results": int(stack.redis(1).dbsize()),
                "meta": _count(cache, "mallops:gw:task:*"),
                "stream": int(cache.xlen("mallops:events")),
            }
        )
        stop.wait(2.0)


def _count(client: redis.Redis[bytes], match: str) -> int:
    return sum(1 for _ in client.scan_iter(match, count=10_000))


def _sustained_report(
    args: argparse.Namespace,
    rate: float,
    samples: list[dict[str, float]],
    load: dict[str, Any],
    tasks: int,
    catch_up: float,
    at_start: dict[str, Any],
) -> dict[str, Any]:
    steady_from = max(args.result_expires * 1.5, 60.0)
    steady = [(s["t"], s["used_memory"] / 2**20) for s in samples if steady_from <= s["t"] <= args.sustain_seconds]
    start_mb = steady[0][1] if steady else None
    end_mb = steady[-1][1] if steady else None
    return {
        "rate_tasks_per_s": rate,
        "seconds": args.sustain_seconds,
        "tasks": tasks,
        "submission": load,
        "history_caught_up_after_s": round(catch_up, 1),
        "settings": {"result_expires_s": args.result_expires, "stream_maxlen": args.stream_maxlen or "default"},
        "recent_lists": "filled to their caps before the run (prefill_recent)",
        "steady_from_s": steady_from,
        "used_memory_mb": {
            "start": None if start_mb is None else round(start_mb, 2),
            "end": None if end_mb is None else round(end_mb, 2),
            "max": round(max(s["used_memory"] for s in samples) / 2**20, 2) if samples else None,
            "slope_mb_per_min": None if (s := slope_per(steady, 60)) is None else round(s, 3),
            "first_sample": round(samples[0]["used_memory"] / 2**20, 2) if samples else None,
        },
        "queue_max": max((s["queue"] for s in samples), default=None),
        "machine_at_start": at_start,
        "machine_at_end": machine(),
        "samples": samples,
    }
