"""`docker compose up` without Docker: every mallops service of compose.yaml started with exactly its
compose command and environment, and declared healthy by exactly its compose healthcheck.

What a container would have that this machine has not is mapped onto local stand-ins: the host names
``redis`` and ``postgres`` become a redis-server of the test's own (AOF on, like compose's) and a fresh
SQLite file, ``mailpit`` the run's SMTP server, ``/data`` a temporary directory, and the HTTP ports
free ones (MALLOPS_GATEWAY_PORT / MALLOPS_MONITOR_PORT, read by the service and its probe alike).
The one-shot ``migrate`` runs first and must exit 0, as ``service_completed_successfully`` requires.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.deploy.conftest import REQUIRED_SECRETS, Interpolated, load_compose
from tests.harness import Process, free_port, spawn, start_redis, wait_until
from tests.plugins.smtp import SMTPServer

pytestmark = pytest.mark.integration

LONG_RUNNING = (
    "gateway",
    "finance-worker",
    "reports-worker",
    "notifier-worker",
    "maintenance-worker",
    "beat",
    "monitor",
)


@pytest.fixture
def compose_env(smtp_server: SMTPServer, tmp_path: Path) -> Iterator[tuple[Interpolated, dict[str, str]]]:
    """compose.yaml with its secrets filled in, and the local stand-ins for the compose network."""
    redis = start_redis(tmp_path / "redis", appendonly=True)
    secrets = {name: f"compose-test-{uuid.uuid4().hex}" for name in REQUIRED_SECRETS}
    base = {key: value for key, value in os.environ.items() if not key.startswith("MALLOPS_")}
    base["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{base.get('PATH', '')}"  # `mallops` as in the image
    local = {
        "MALLOPS_REDIS_URL": redis.url_base,
        "MALLOPS_DATABASE_URL": f"sqlite:///{tmp_path / 'mallops.db'}",
        "MALLOPS_DATA_DIR": str(tmp_path / "data"),
        "MALLOPS_GATEWAY_PORT": str(free_port()),
        "MALLOPS_MONITOR_PORT": str(free_port()),
        "MALLOPS_LOG_LEVEL": "WARNING",
        **smtp_server.env,
    }
    try:
        yield load_compose(secrets), base | local
    finally:
        redis.stop()


def service_env(compose: Interpolated, name: str, local: dict[str, str]) -> dict[str, str]:
    env = {key: str(value) for key, value in compose.services[name]["environment"].items()}
    for key in local.keys() & env.keys():
        assert env[key] != "", key  # only values compose sets are replaced
    return env | local


def test_compose_commands_start_and_their_healthchecks_pass(
    compose_env: tuple[Interpolated, dict[str, str]], tmp_path: Path
) -> None:
    compose, local = compose_env
    migrate = compose.services["migrate"]
    done = subprocess.run(
        migrate["command"],
        env=service_env(compose, "migrate", local),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr

    processes: dict[str, Process] = {}
    try:
        for name in LONG_RUNNING:
            processes[name] = spawn(
                name,
                compose.services[name]["command"],
                service_env(compose, name, local),
                tmp_path / "logs",
                cwd=tmp_path,
            )
        for name in LONG_RUNNING:
            check = compose.services[name]["healthcheck"]["test"]
            assert check[0] == "CMD"
            process = processes[name]

            def healthy(name: str = name, check: list[str] = check, process: Process = process) -> bool:
                if not process.alive():
                    pytest.fail(f"{name} exited with {process.popen.returncode}:\n{process.log()[-3000:]}")
                probe = subprocess.run(
                    check[1:],
                    env=service_env(compose, name, local),
                    cwd=tmp_path,
                    capture_output=True,
                    text=True,
                    timeout=30,
                    check=False,
                )
                return probe.returncode == 0

            wait_until(healthy, timeout=120, interval=0.5, message=f"{name}'s healthcheck {check[1:]}")
    finally:
        for process in processes.values():
            process.stop()
