"""``python -m bench front-door``: the front-door phase of ``python -m bench run`` alone, for before/after checks
of one gateway change (issue 19: ``POST /api/v1/tasks`` against Flower's ``POST /api/task/async-apply/<name>``).

Its own redis-server on a free port, one gateway process and Flower, driven by wrk in alternating rounds
(:meth:`bench.run.Bench.wrk_phase`, the phase ``bench run`` runs), nothing consuming. Per server: requests/s,
p50 and p99, requests per CPU-second of its process tree; the gateway's CPU ms per request and the two
targets' ratios. ``--profile DIR`` records the gateway with py-spy during its own wrk runs (raw stacks, one
file a round).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from bench import wrk
from bench.run import MALLOPS_BODY, Bench, Config, _version, _workdir, _wrk_summary, log, ratio

COMMAND = "front-door"
GATEWAY = "mallops gateway"
GATEWAY_OFF = "mallops gateway (fast submit off)"


def add_front_door_command(sub: Any) -> None:
    p = sub.add_parser(COMMAND, help="POST /api/v1/tasks against Flower's async-apply under wrk, alone")
    p.add_argument("--out", type=Path, default=Path("bench/results/front-door.json"))
    p.add_argument("--rounds", type=int, default=5, help="alternating wrk rounds (default 5)")
    p.add_argument("--seconds", type=float, default=10.0, help="seconds of each wrk run (default 10)")
    p.add_argument("--no-flower", action="store_true", help="the gateway alone")
    p.add_argument(
        "--fast-submit-off",
        action="store_true",
        help="also a gateway with MALLOPS_GATEWAY_FAST_SUBMIT=false, in the same alternating rounds",
    )
    p.add_argument("--profile", type=Path, help="py-spy the gateway during its wrk runs into this directory")
    p.add_argument("--workdir", type=Path, help="keep logs and data here (default: a temporary directory)")


def run_front_door(args: argparse.Namespace) -> dict[str, Any]:
    config = Config(wrk_rounds=args.rounds, wrk_seconds=args.seconds, profile_dir=args.profile and str(args.profile))
    version = None if args.no_flower else _version("flower")
    started = time.time()
    load_at_start = [round(x, 2) for x in os.getloadavg()]
    with _workdir(args.workdir) as path:
        bench = Bench(config, path)
        try:
            bench.setup_mallops()
            servers = [(wrk.Target("gateway", f"{bench.gw}/api/v1/tasks", MALLOPS_BODY, bench.headers), GATEWAY)]
            profiled = {GATEWAY: bench.gateway}
            if args.fast_submit_off:
                _, off_url = bench.start_gateway(GATEWAY_OFF, MALLOPS_GATEWAY_FAST_SUBMIT="false")
                servers.append(
                    (wrk.Target("gateway-off", f"{off_url}/api/v1/tasks", MALLOPS_BODY, bench.headers), GATEWAY_OFF)
                )
            if version is not None:
                _, flower_url = bench.start_flower()
                servers.insert(0, (wrk.Target("flower", flower_url, {}, {}), "flower"))
            runs = bench.wrk_phase(servers, profiled=profiled)
            results: dict[str, Any] = {"gateway": {"what": f"POST /api/v1/tasks, 1 process, {bench.wrk_what()}"}}
            results["gateway"] |= _wrk_summary(runs[GATEWAY])
            if args.fast_submit_off:
                what = f"the same with MALLOPS_GATEWAY_FAST_SUBMIT=false, {bench.wrk_what()}"
                results["gateway_fast_submit_off"] = {"what": what} | _wrk_summary(runs[GATEWAY_OFF])
            if version is not None:
                results["flower"] = bench.flower_summary(version, runs["flower"])
        finally:
            bench.close()
    report = {
        "command": " ".join(["python", "-m", "bench", *sys.argv[1:]]),
        "started_at": dt.datetime.fromtimestamp(started, dt.UTC).isoformat(timespec="seconds"),
        "duration_s": round(time.time() - started, 1),
        "loadavg_at_start": load_at_start,
        "loadavg_at_end": [round(x, 2) for x in os.getloadavg()],
        "results": results,
        "summary": summary(results),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report["summary"], indent=2))
    log(f"wrote {args.out} (load average {load_at_start} at the start, {report['loadavg_at_end']} at the end)")
    return report


def summary(results: dict[str, Any]) -> dict[str, Any]:
    """Medians of each server, the gateway's CPU ms per request, and the ratios issue 19 sets targets for."""
    out: dict[str, Any] = {}
    for name, block in results.items():
        per_cpu = block["req_per_cpu_s"]["median"]
        out[name] = {
            "req_per_s": block["req_per_s"]["median"],
            "p50_ms": block["p50_ms"]["median"],
            "p99_ms": block["p99_ms"]["median"],
            "req_per_cpu_s": per_cpu,
            "cpu_ms_per_request": round(1000 / per_cpu, 3) if per_cpu else None,
            "errors": block["errors"],
        }
    if "flower" in out:
        gateway, flower = out["gateway"], out["flower"]
        out["per_cpu_s_ratio"] = ratio(gateway["req_per_cpu_s"], flower["req_per_cpu_s"])  # target >= 3
        out["p99_ratio"] = ratio(gateway["p99_ms"], flower["p99_ms"])  # target <= 0.4
        if "gateway_fast_submit_off" in out:
            off = out["gateway_fast_submit_off"]
            out["fast_submit_off_per_cpu_s_ratio"] = ratio(off["req_per_cpu_s"], flower["req_per_cpu_s"])
            out["fast_submit_off_p99_ratio"] = ratio(off["p99_ms"], flower["p99_ms"])
    return out
