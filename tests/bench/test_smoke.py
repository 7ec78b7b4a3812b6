"""The bench's smoke run: every scenario once on a few hundred tasks. It checks that the harness works and
writes a complete report; it asserts nothing about speed (that is docs/performance.md's business).

It runs the bench as a fresh clone with only ``pip install -e ".[bench]"`` would: ``python -m bench run``
from the repository's root, with the test package and every package only the ``test`` extra brings made
unimportable (``sys.modules[name] = None``), so an import of either fails the run as it would there."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.harness import ROOT

pytestmark = pytest.mark.integration

# what `pip install -e ".[test]"` adds to `.[bench]` (pyproject.toml), and the test package itself
TEST_ONLY = (
    "tests",
    "pytest",
    "_pytest",
    "pytest_timeout",
    "testcontainers",
    "hypothesis",
    "schemathesis",
    "playwright",
)
AS_BENCH_INSTALL = (
    "import runpy, sys\n"
    f"for name in {TEST_ONLY!r}:\n"
    "    sys.modules[name] = None\n"
    "runpy.run_module('bench', run_name='__main__', alter_sys=True)\n"
)


def test_a_quick_bench_run_writes_a_complete_report(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOPS_")} | {"PYTHONPATH": str(ROOT)}
    argv = [
        sys.executable,
        "-c",
        AS_BENCH_INSTALL,
        "run",
        "--quick",
        "--out",
        str(out),
        "--workdir",
        str(tmp_path / "work"),
    ]
    charted = importlib.util.find_spec("matplotlib") is not None
    if not charted:
        argv.append("--no-chart")
    run = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=240, check=False)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]

    report = json.loads(out.read_text())
    results = report["results"]
    for scenario in ("raw", "events"):
        assert results[scenario]["tasks_per_s"]["median"] > 0
        assert results[scenario]["paced"]["submit_to_start_ms"]["n"] == results[scenario]["paced"]["tasks"]
    mallops = results["mallops"]
    for form in ("batch", "single"):
        assert mallops[form]["tasks_per_s"]["median"] > 0
    assert mallops["single"]["runs"][0]["errors"] == 0
    assert mallops["paced"]["submit_to_finish_ms"]["n"] == mallops["paced"]["tasks"]
    assert mallops["worker_events_on"]["tasks_per_s"]["median"] > 0
    assert mallops["worker_events_off"]["tasks_per_s"]["median"] > 0
    assert mallops["idle_worker_memory"]["rss_mb"] > 0
    assert results["monitor"]["capacity_events_per_s"] > 0
    assert set(report["ratios_to_raw"]) == {"raw", "events", "mallops_batch", "mallops_single"}
    assert mallops["front_door_alone"]["batch"]["submit_per_s"]["median"] > 0
    assert len(report["targets"]) >= 10
    assert all(set(t) == {"target", "wanted", "value", "unit", "met"} for t in report["targets"])
    assert all(t["met"] in (True, False, None) for t in report["targets"])
    if charted:
        assert out.with_suffix(".png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_worker_scenarios_run_alone(tmp_path: Path) -> None:
    """``python -m bench idle-memory``, ``events-cost`` and ``worker-memory``, the worker scenarios alone,
    as the bench install runs them."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOPS_")} | {"PYTHONPATH": str(ROOT)}
    memory, cost, loaded = tmp_path / "idle.json", tmp_path / "cost.json", tmp_path / "loaded.json"
    for command in (
        ["idle-memory", "--out", str(memory)],
        ["events-cost", "--tasks", "50", "--repeats", "1", "--no-prefork", "--out", str(cost)],
        ["worker-memory", "--minutes", "0.5", "--rate", "20", "--out", str(loaded)],
    ):
        argv = [sys.executable, "-c", AS_BENCH_INSTALL, *command, "--workdir", str(tmp_path / command[0])]
        run = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=240, check=False)
        assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    idle = json.loads(memory.read_text())
    assert set(idle["services"]) == {"maintenance", "finance", "reports", "notifier"}
    assert all(row["rss_mb"] > 0 and row["pss_mb"] > 0 for row in idle["services"].values())
    assert not any(row["sqlalchemy_loaded"] for row in idle["services"].values())
    assert json.loads(cost.read_text())["rounds"]["events on"]["tasks_per_s"]["median"] > 0
    samples = json.loads(loaded.read_text())["samples"]
    assert samples[-1]["sent"] >= 500  # 20 a second for 30 s, paced
    assert all(row["parent_rss_mb"] > 0 and len(row["children_rss_mb"]) == 2 for row in samples)


def test_the_front_door_scenario_runs_alone(tmp_path: Path) -> None:
    """``python -m bench front-door``, the wrk phase of ``bench run`` alone (the gateway, no Flower, one short
    round), as the bench install runs it: every figure of the summary is there and no request failed."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOPS_")} | {"PYTHONPATH": str(ROOT)}
    out = tmp_path / "front-door.json"
    argv = [sys.executable, "-c", AS_BENCH_INSTALL, "front-door", "--rounds", "1", "--seconds", "1", "--no-flower"]
    argv += ["--out", str(out), "--workdir", str(tmp_path / "work")]
    run = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=240, check=False)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    gateway = json.loads(out.read_text())["summary"]["gateway"]
    assert gateway["errors"] == 0
    assert all(gateway[figure] > 0 for figure in ("req_per_s", "req_per_cpu_s", "cpu_ms_per_request"))
    assert 0 < gateway["p50_ms"] <= gateway["p99_ms"]
