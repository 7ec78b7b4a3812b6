"""The README's first run, as a new user types it: ``.venv/bin/mallops dev``, then in ANOTHER, fresh
shell (no activated venv, nothing on PATH but the system's) ``source .mallops/dev/env`` and
``mallops ping``. Also what the start-up output says: the ready banner last, kept for ``mallops info``,
and none of the misleading lines of a first start."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

from tests.harness import ROOT, free_port, wait_until
from tests.mallops.processes import ProcId, descendants, stop_all

README = (ROOT / "README.md").read_text()
FRESH_SHELL_ENV = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": os.environ.get("HOME", "/root"), "LANG": "C.UTF-8"}


def fresh_shell(script: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """``bash -c script`` with no profile, no rc file and no MALLOPS_* or venv in its environment."""
    return subprocess.run(
        ["/bin/bash", "--noprofile", "--norc", "-c", script],
        cwd=cwd,
        env=FRESH_SHELL_ENV,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_the_readme_gives_these_first_run_commands() -> None:
    assert ".venv/bin/mallops dev" in README
    assert "source .mallops/dev/env      # MALLOPS_URL, MALLOPS_TOKEN, the ports and PATH" in README
    assert "\nmallops ping\n" in README


@pytest.mark.integration
def test_readme_first_run_in_a_fresh_shell_reaches_mallops_ping(tmp_path: Path) -> None:
    (tmp_path / ".venv").symlink_to(ROOT / ".venv")  # the checkout's venv, as `python3 -m venv .venv` made it
    ports = {
        "MALLOPS_GATEWAY_PORT": str(free_port()),
        "MALLOPS_MONITOR_PORT": str(free_port()),
        "MALLOPS_SMTP_PORT": str(free_port()),
    }
    env = {**FRESH_SHELL_ENV, **ports}
    log_path = tmp_path / "dev.log"
    with log_path.open("wb") as log:
        dev = subprocess.Popen(
            [".venv/bin/mallops", "dev"],
            cwd=tmp_path,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    banner = tmp_path / ".mallops" / "dev" / "banner.txt"
    seen: set[ProcId] = set()
    try:

        def ready() -> bool:
            seen.update(descendants(dev.pid))
            assert dev.poll() is None, log_path.read_text()
            return banner.exists()

        wait_until(ready, timeout=180, interval=0.2, message="mallops dev's ready banner")
        output = log_path.read_text()
        banner_lines = banner.read_text().splitlines()
        token = re.search(r"admin token  (mlp_\S+)", banner.read_text())
        assert token, banner.read_text()
        # the banner comes after the start-up burst: nothing printed between its lines
        printed = [
            line.split("| ", 1)[-1] for line in output.splitlines() if line.split("| ", 1)[0].strip().endswith("dev")
        ]
        assert printed[-len(banner_lines) :] == banner_lines, output[-3000:]

        pinged = fresh_shell("source .mallops/dev/env && mallops ping", tmp_path)
        assert pinged.returncode == 0, pinged.stderr
        assert re.fullmatch(r"pong from \w+@\S+ in \d+ ms: .*\n", pinged.stdout), pinged.stdout

        info = fresh_shell("source .mallops/dev/env && mallops info", tmp_path)
        assert info.returncode == 0, info.stderr
        assert info.stdout.splitlines() == banner_lines

        # none of the misleading lines of a first start
        assert re.search(r"migrate +\| created the database schema \(revision \w+\)", output), output[:3000]
        assert "database schema is up to date" not in output
        assert "task events: OFF" not in output
        assert "SecurityWarning" not in output
        assert "absolutely not recommended" not in output
        for worker in ("finance", "reports", "notifier", "maintenance"):
            assert re.search(rf"{worker}@\S+: queue \w+, pool \w+ x\d+, lifecycle events to the Redis stream", output)
    finally:
        stop_all(dev, seen, grace=60)  # SIGTERM, as Ctrl-C
    assert dev.returncode == 0, log_path.read_text()[-3000:]
    stopped = fresh_shell("source .mallops/dev/env && mallops info", tmp_path)
    assert stopped.returncode == 3
    assert stopped.stderr == "mallops: that `mallops dev` is not running now (the banner is from its last start)\n"
