"""Smoke runs of ``python -m bench capacity`` and ``python -m bench monitor-scale`` on a few hundred tasks:
the scenarios work and their reports hold every structure and figure docs/capacity.md quotes. Nothing is
asserted about speed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.harness import ROOT

pytestmark = pytest.mark.integration


def bench(tmp_path: Path, *argv: str) -> dict:  # type: ignore[type-arg]
    out = tmp_path / f"{argv[0]}.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOPS_")} | {"PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-m", "bench", *argv, "--out", str(out), "--workdir", str(tmp_path / argv[0])]
    run = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    report: dict = json.loads(out.read_text())  # type: ignore[type-arg]
    return report


def test_the_capacity_inventory_and_a_short_sustained_run(tmp_path: Path) -> None:
    report = bench(tmp_path, "capacity", "--tasks", "500", "--keyed", "5", "--sustain-seconds", "20")
    inventory = report["inventory"]
    assert inventory["tasks"] == 505
    queued, finished = inventory["queued_per_task"], inventory["finished_per_task"]
    assert queued["broker:default"]["bytes_per_task"] > 500  # the message itself
    assert queued["cache:mallops:gw:task:<id>"]["keys"] == 505
    assert "cache:mallops:gw:task:<id>" not in finished  # dropped once the history holds the task
    assert finished["results:celery-task-meta-<id>"]["keys"] == 505
    assert finished["cache:mallops:events"]["bytes_per_task"] > 0
    assert inventory["idempotency_keys"]["cache:mallops:gw:idem:<id>"]["keys"] == 5
    sustained = report["sustained"]
    assert sustained["tasks"] > 0
    assert sustained["samples"]
    assert sustained["used_memory_mb"]["max"] > 0


def test_the_monitor_scale_scenario(tmp_path: Path) -> None:
    report = bench(tmp_path, "monitor-scale", "--tasks", "2000", "--rate", "4000")
    assert report["history_rows_of_the_run"] == 2000
    assert report["rss_mb"]["max"] > 0
    assert report["lag_s"]["max"] >= 0
