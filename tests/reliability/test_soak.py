"""The soak's two-minute version (``scripts/soak`` runs it for an hour; docs/reliability.md): the whole
platform under load with a fault every 20 s, then every accepted task checked. It picks its own database
(PostgreSQL when it answers), so it runs once per suite: in the PostgreSQL pass."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.harness import ROOT

pytestmark = pytest.mark.integration


@pytest.mark.database  # picks PostgreSQL itself: runs in the PostgreSQL pass, skipped in the SQLite one
@pytest.mark.timeout(600)
def test_two_minute_soak_loses_nothing_and_explains_every_duplicate(tmp_path: Path) -> None:
    if os.environ.get("MALLOPS_TEST_DB", "sqlite") == "sqlite":
        pytest.skip("runs once, in the PostgreSQL pass (the soak brings its own database)")
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOPS_")} | {"PYTHONPATH": str(ROOT)}
    if "MALLOPS_TEST_POSTGRES_URL" in os.environ:
        env["MALLOPS_TEST_POSTGRES_URL"] = os.environ["MALLOPS_TEST_POSTGRES_URL"]
    argv = [sys.executable, "-m", "bench.soak", "--minutes", "2", "--rate", "10", "--fault-every", "20"]
    argv += ["--capacity-tasks", "300", "--drain-seconds", "240", "--seed", "7", "--out", str(tmp_path)]
    run = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=560, check=False)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert summary["lost"] == 0, summary["lost_ids"]
    assert summary["duplicates_explained"] == summary["duplicated"], summary["duplicates"]
    assert len(summary["faults"]) >= 5
    assert {"gateway", "monitor", "worker maintenance", "redis-server"} <= set(summary["rss"])
    assert (tmp_path / "rss.csv").stat().st_size > 0
