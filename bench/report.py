"""A bench report (JSON) as the Markdown tables of docs/performance.md: ``python -m bench report FILE``."""

from __future__ import annotations

from typing import Any


def _n(value: Any, digits: int = 0) -> str:
    if value is None:
        return "–"
    if isinstance(value, float | int):
        return f"{value:,.{digits}f}"
    return str(value)


def _spread(block: dict[str, Any] | None) -> str:
    if not block or block.get("median") is None:
        return "–"
    if len(block.get("runs", [])) < 2:
        return _n(block["median"])
    return f"{_n(block['median'])} ({_n(block['min'])}–{_n(block['max'])}, ±{block['spread_pct'] / 2:.0f} %)"


def _cpu(block: dict[str, float] | None, role_part: str) -> str:
    if not block:
        return "–"
    values = [v for role, v in block.items() if role_part in role]
    return _n(sum(values), 2) if values else "–"


def _pct(block: dict[str, Any] | None, key: str) -> str:
    if not block:
        return "–"
    return f"{_n(block.get('p50'), 1)} / {_n(block.get('p95'), 1)} / {_n(block.get('p99'), 1)}"


def markdown(report: dict[str, Any]) -> str:
    r = report["results"]
    raw, events, mallops = r["raw"], r["events"], r["mallops"]
    flower = r.get("flower", {})
    alone = mallops["front_door_alone"]
    ratios = report["ratios_to_raw"]
    m = report["machine"]
    lines = [
        f"- Machine: {m['nproc']} cores ({m['cpu_model']}), {m['platform']}; load average "
        f"{', '.join(str(x) for x in m['loadavg_at_start'])} at the start and "
        f"{', '.join(str(x) for x in m.get('loadavg_at_end', []))} at the end (the machine is shared: "
        "other processes used the same 2 cores during the run).",
        f"- Python {m['python']}, Celery {m['celery']}, kombu {m['kombu']}, redis-py {m['redis_py']} (hiredis "
        f"{m['hiredis']}), uvicorn {m['uvicorn']}, Flower {m['flower']}; {m['redis_server'].split(' sha=')[0]}.",
        f"- Command: `{report['command']}`",
        "",
        f"Run of {report['started_at']} ({report['duration_s']:.0f} s), config: "
        f"{report['config']['tasks']} tasks per throughput run, {report['config']['http_tasks']} single HTTP "
        f"requests per run, {report['config']['repeats']} runs each (median, min–max, ± half the spread).",
        "",
        "| scenario | tasks/s end to end | ratio to raw | submitted/s | submit→start p50 / p95 / p99 ms "
        "| submit→finish p50 / p95 / p99 ms | CPU ms per task (all processes) |",
        "|---|---|---|---|---|---|---|",
    ]

    def total_cpu(block: dict[str, float] | None) -> str:
        return _n(sum(block.values()), 2) if block else "–"

    lines.append(
        f"| (1) raw Celery (prefork -c 2, no events) | {_spread(raw['tasks_per_s'])} | 1.00 "
        f"| {_spread(raw['publish_per_s'])} | {_pct(raw['paced']['submit_to_start_ms'], '')} "
        f"| {_pct(raw['paced']['submit_to_finish_ms'], '')} | {total_cpu(raw.get('cpu_ms_per_task'))} |"
    )
    lines.append(
        f"| (2) Celery events stack (-E, sent events, EventReceiver) | {_spread(events['tasks_per_s'])} "
        f"| {_n(ratios['events'], 2)} | {_spread(events['publish_per_s'])} "
        f"| {_pct(events['paced']['submit_to_start_ms'], '')} "
        f"| {_pct(events['paced']['submit_to_finish_ms'], '')} | {total_cpu(events.get('cpu_ms_per_task'))} |"
    )
    lines.append(
        f"| (3) mallops, HTTP batch of {mallops['batch']['batch_size']} → worker → monitor → history "
        f"| {_spread(mallops['batch']['tasks_per_s'])} | {_n(ratios['mallops_batch'], 2)} "
        f"| {_spread(mallops['batch']['submit_per_s'])} | (paced run below) | | "
        f"{total_cpu(mallops['batch'].get('cpu_ms_per_task'))} |"
    )
    lines.append(
        f"| (3) mallops, HTTP single requests, {mallops['single']['concurrency']} clients "
        f"| {_spread(mallops['single']['tasks_per_s'])} | {_n(ratios['mallops_single'], 2)} "
        f"| {_spread(mallops['single']['req_per_s'])} | {_pct(mallops['paced']['submit_to_start_ms'], '')} "
        f"| {_pct(mallops['paced']['submit_to_finish_ms'], '')} "
        f"| {total_cpu(mallops['single'].get('cpu_ms_per_task'))} |"
    )
    lines += [
        "",
        f"Latency columns: a paced {mallops['paced']['rate']:g} tasks/s for "
        f"{report['config']['paced_seconds']:g} s; mallops' are over HTTP (the client's send time to the "
        "worker's task-started / task-succeeded events, read from task_history).",
        "",
        "| other measurements | value |",
        "|---|---|",
        *(
            f"| {name}, wrk {mallops['single']['concurrency']} connections, the server alone | "
            f"{_spread(block.get('req_per_s'))} req/s, p50 {_spread(block.get('p50_ms'))} ms, "
            f"p99 {_spread(block.get('p99_ms'))} ms, {_spread(block.get('req_per_cpu_s'))} requests per CPU-second "
            "of the server's process tree |"
            for name, block in (
                (f"Flower {flower.get('version', '')} `POST /api/task/async-apply/<name>`", flower),
                ("mallops `POST /api/v1/tasks`, 1 gateway process", alone["single"]),
                ("mallops `POST /api/v1/tasks`, `MALLOPS_GATEWAY_WORKERS=2`", alone.get("single_2_processes", {})),
            )
        ),
        f"| mallops `POST /api/v1/tasks/batch` ({mallops['batch']['batch_size']} a request), gateway alone | "
        f"{_spread(alone['batch']['submit_per_s'])} tasks/s, "
        f"{_cpu(alone['batch'].get('cpu_ms_per_task'), 'gateway')} ms gateway CPU per task |",
        f"| the same while the worker and monitor run (end-to-end runs) | single "
        f"{_spread(mallops['single']['req_per_s'])} req/s (p50 / p99 "
        f"{_n(mallops['single']['latency_ms'].get('p50'), 1)} / {_n(mallops['single']['latency_ms'].get('p99'), 1)}"
        f" ms); batch {_spread(mallops['batch']['submit_per_s'])} tasks/s |",
        f"| Celery event lag (EventReceiver, task-succeeded) p50 / p95 / p99 ms | {_pct(events['event_lag_ms'], '')} |",
        f"| mallops monitor lag (`mallops_monitor_event_lag_seconds`, sampled every 50 ms) at "
        f"{mallops['paced']['rate']:g} tasks/s, p50 / p95 / p99 ms | {_pct(mallops['paced']['monitor_lag_ms'], '')} |",
        f"| task finished → its task_history row complete (incl. the worker's 0.1 s buffering of task-received), "
        f"p50 / p95 / p99 ms | {_pct(mallops['paced'].get('row_complete_after_finish_ms'), '')} |",
        f"| mallops worker alone, events on / off (tasks/s) | {_spread(mallops['worker_events_on']['tasks_per_s'])} / "
        f"{_spread(mallops['worker_events_off']['tasks_per_s'])} |",
        f"| mallops worker alone, events on / off (worker CPU ms per task) | "
        f"{_cpu(mallops['worker_events_on'].get('cpu_ms_per_task'), 'worker')} / "
        f"{_cpu(mallops['worker_events_off'].get('cpu_ms_per_task'), 'worker')} |",
    ]
    if "prefork_worker_events_on" in mallops:
        lines.append(
            f"| mallops worker alone on prefork -c 2, events on / off (tasks/s) | "
            f"{_spread(mallops['prefork_worker_events_on']['tasks_per_s'])} / "
            f"{_spread(mallops.get('prefork_worker_events_off', {}).get('tasks_per_s'))} |"
        )
        lines.append(
            f"| mallops worker alone on prefork -c 2, events on / off (worker CPU ms per task) | "
            f"{_cpu(mallops['prefork_worker_events_on'].get('cpu_ms_per_task'), 'worker')} / "
            f"{_cpu(mallops.get('prefork_worker_events_off', {}).get('cpu_ms_per_task'), 'worker')} |"
        )
    lines.append(
        f"| bare Celery worker alone, prefork -c 2 (worker CPU ms per task) | "
        f"{_cpu(raw.get('cpu_ms_per_task'), 'worker')} |"
    )
    monitor = r.get("monitor", {})
    sustained = monitor.get("sustained", {})
    lag, rss = sustained.get("lag_s") or {}, sustained.get("rss_mb") or {}
    lines += [
        f"| monitor capacity (backlog of {_n(monitor.get('backlog_events'))} synthetic events) | "
        f"{_n(monitor.get('capacity_events_per_s'))} events/s |",
        f"| monitor sustained: {_n(sustained.get('target_events_per_s'))} events/s for "
        f"{_n(sustained.get('seconds'))} s ({_n(sustained.get('tasks'))} tasks) | lag max "
        f"{_n(lag.get('max'), 2)} s, RSS {_n(rss.get('first'), 1)} → {_n(rss.get('last'), 1)} MB "
        f"(max {_n(rss.get('max'), 1)}) |",
        f"| idle worker RSS / PSS, all processes: bare Celery prefork -c 2 | "
        f"{_n(raw['idle_worker_memory']['rss_mb'], 1)} / {_n(raw['idle_worker_memory'].get('pss_mb'), 1)} MB |",
        f"| idle worker RSS / PSS: mallops maintenance (threads, the default) | "
        f"{_n(mallops['idle_worker_memory']['rss_mb'], 1)} / {_n(mallops['idle_worker_memory'].get('pss_mb'), 1)} MB |",
    ]
    if "prefork_idle_worker_memory" in mallops:
        lines.append(
            f"| idle worker RSS / PSS: mallops maintenance on prefork -c 2 | "
            f"{_n(mallops['prefork_idle_worker_memory']['rss_mb'], 1)} / "
            f"{_n(mallops['prefork_idle_worker_memory'].get('pss_mb'), 1)} MB |"
        )
    lines += ["", "Peak RSS during the run (MB, whole process tree; each process's own peak in brackets):", ""]
    blocks = [
        raw.get("peak_rss", {}),
        events.get("peak_rss", {}),
        flower.get("peak_rss", {}),
        mallops.get("peak_rss", {}),
        r.get("rss_redis_and_bench", {}),
    ]
    lines += ["| process | peak RSS MB |", "|---|---|"]
    for block in blocks:
        for role, value in block.items():
            each = ", ".join(_n(p["peak_rss_mb"], 0) for p in value["processes"])
            lines.append(f"| {role} | {_n(value['peak_total_mb'], 1)} [{each}] |")
    lines += ["", "| target (issue 19) | wanted | this run | met |", "|---|---|---|---|"]
    for t in report["targets"]:
        met = {True: "met", False: "**missed**", None: "not measured"}[t["met"]]
        lines.append(f"| {t['target']} | {t['wanted']} {t['unit']} | {_n(t['value'], 2)} {t['unit']} | {met} |")
    return "\n".join(lines) + "\n"
