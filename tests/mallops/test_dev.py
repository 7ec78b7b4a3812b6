"""``mallops dev``: what it plans to run, how it refuses to start, and that it leaves no process behind."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from mallops.devstack import MAIL_PROCESS, make_plan
from mallops.services import SERVICE_SPECS
from shared.settings import Settings
from tests.harness import ROOT, free_port, wait_until
from tests.mallops.conftest import CliRunner
from tests.mallops.processes import ProcId, alive, descendants, stop_all


@pytest.mark.usefixtures("clean_env")
def test_dev_runs_exactly_the_service_commands_of_mallops_services(tmp_path: Path) -> None:
    plan = make_plan(Settings(data_dir=tmp_path), {})
    assert set(plan.commands) == {*SERVICE_SPECS, MAIL_PROCESS}
    for name, spec in SERVICE_SPECS.items():
        # `python -m mallops` is the `mallops` console script: the same command line compose runs
        assert plan.commands[name] == [sys.executable, "-m", "mallops", *spec.argv[1:]]
        assert spec.argv == ("mallops", "serve", name)
    assert plan.commands[MAIL_PROCESS][1:3] == ["-m", "aiosmtpd"]
    assert plan.redis_url is None  # nothing configured: dev starts its own redis-server


def test_dev_points_every_child_at_its_smtp_catcher_and_ports(tmp_path: Path) -> None:
    settings = Settings(
        data_dir=tmp_path,
        smtp_port=2525,
        gateway_port=18080,
        monitor_port=19090,
        smtp_host="mail.example.com",
        redis_url="redis://127.0.0.1:7777",
    )
    plan = make_plan(settings, {"MALLOPS_REDIS_URL": "redis://127.0.0.1:7777"})
    assert plan.env["MALLOPS_SMTP_HOST"] == "127.0.0.1"
    assert plan.env["MALLOPS_SMTP_PORT"] == "2525"
    assert plan.env["MALLOPS_GATEWAY_PORT"] == "18080"
    assert plan.env["MALLOPS_MONITOR_PORT"] == "19090"
    assert plan.env["MALLOPS_DATA_DIR"] == str(tmp_path.resolve())
    assert plan.redis_url == "redis://127.0.0.1:7777"
    assert plan.gateway_url == "http://127.0.0.1:18080"
    assert plan.metrics_url == "http://127.0.0.1:19090/metrics"
    assert "127.0.0.1:2525" in plan.commands[MAIL_PROCESS]


@pytest.mark.usefixtures("clean_env")
def test_the_admin_token_is_generated_once_then_reused_unless_one_is_given(tmp_path: Path) -> None:
    first = make_plan(Settings(data_dir=tmp_path), {})
    assert first.token_generated
    assert first.admin_token.startswith("mlp_")
    assert len(first.admin_token) > 40
    assert (tmp_path / "dev" / "admin-token").stat().st_mode & 0o777 == 0o600
    again = make_plan(Settings(data_dir=tmp_path), {})
    assert (again.admin_token, again.token_generated) == (first.admin_token, False)
    given = make_plan(Settings(data_dir=tmp_path, bootstrap_admin_token="mlp_given_token"), {})
    assert given.admin_token == "mlp_given_token"
    assert given.env["MALLOPS_BOOTSTRAP_ADMIN_TOKEN"] == "mlp_given_token"


@pytest.mark.usefixtures("clean_env")
def test_a_port_in_use_stops_dev_before_it_starts_anything(cli: CliRunner, tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = cli("dev", env={"MALLOPS_DATA_DIR": str(tmp_path), "MALLOPS_GATEWAY_PORT": str(port)})
    assert result.code == 2
    assert result.err_lines == [
        f"mallops: port {port} (MALLOPS_GATEWAY_PORT) is already in use; set MALLOPS_GATEWAY_PORT to a free port"
    ]


@pytest.mark.usefixtures("clean_env")
def test_without_redis_server_dev_says_how_to_install_it(cli: CliRunner, tmp_path: Path) -> None:
    ports = {
        "MALLOPS_GATEWAY_PORT": str(free_port()),
        "MALLOPS_MONITOR_PORT": str(free_port()),
        "MALLOPS_SMTP_PORT": str(free_port()),
    }
    result = cli("dev", env={"MALLOPS_DATA_DIR": str(tmp_path), "PATH": str(tmp_path), **ports})
    assert result.code == 2
    assert result.err_lines == [
        "mallops: redis-server is not installed: install it with `apt-get install "
        "redis-server` (Debian/Ubuntu) or `brew install redis` (macOS), or set "
        "MALLOPS_REDIS_URL to a Redis you have"
    ]


def dev_env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOPS_")}
    env.update(
        {
            "MALLOPS_DATA_DIR": str(tmp_path / "data"),
            "MALLOPS_GATEWAY_PORT": str(free_port()),
            "MALLOPS_MONITOR_PORT": str(free_port()),
            "MALLOPS_SMTP_PORT": str(free_port()),
            "MALLOPS_LOG_LEVEL": "INFO",
            "PYTHONPATH": str(ROOT),
        }
    )
    return env


@pytest.mark.integration
def test_a_child_that_dies_stops_the_whole_stack_with_exit_1_and_no_orphans(tmp_path: Path) -> None:
    log_path = tmp_path / "dev.log"
    with log_path.open("wb") as log:
        dev = subprocess.Popen(
            [sys.executable, "-m", "mallops", "dev", "--no-demo-data"],
            env=dev_env(tmp_path),
            cwd=tmp_path,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    seen: set[ProcId] = set()
    try:

        def mail_pid() -> int | None:
            seen.update(descendants(dev.pid))
            assert dev.poll() is None, log_path.read_text()
            found = re.search(r"mail started \(pid=(\d+)\)", log_path.read_text())
            return int(found.group(1)) if found else None

        pid = wait_until(mail_pid, timeout=120, interval=0.1, message="the SMTP catcher to start")
        seen.update(descendants(dev.pid))
        os.killpg(pid, signal.SIGKILL)  # the catcher "crashes"

        def exited() -> bool:
            seen.update(descendants(dev.pid))
            return dev.poll() is not None

        wait_until(exited, timeout=90, interval=0.1, message="mallops dev to stop")
        output = log_path.read_text()
        assert dev.returncode == 1, output
        assert re.search(r"dev +\| stopped the stack: \w+ exited with code -?\d+", output), output
        assert "redis-server stopped" in output
        assert len(seen) >= 9  # redis, the catcher, 7 services (and their helpers)
        wait_until(lambda: not alive(seen), timeout=20, message="every child of mallops dev to be gone")
    finally:
        stop_all(dev, seen)
