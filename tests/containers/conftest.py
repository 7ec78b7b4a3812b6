"""compose.yaml run as containers: the stack of tests/containers (marker ``containers``).

``./scripts/containers`` builds the images (project image ``localhost/mallops:$IMAGE_TAG``, stand-ins
``localhost/mallops-standin-<name>:ci``) and runs these tests once; the default pytest run deselects
them. The stack is compose.yaml, unchanged, plus deploy/podman/compose.standins.yaml (which only swaps
``image:``), run by podman-compose with deploy/podman/podman as its podman: that wrapper runs
``podman healthcheck run`` where compose waits on ``service_healthy`` (no systemd timers here).

Host ports are free ones chosen per run through compose.yaml's own variables, and the compose project
has its own name, so the run collides neither with a local stack nor with other tests.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.harness import ROOT, Process, free_port, spawn, wait_until

PROJECT = "mallops-containers"
COMPOSE_FILES = [ROOT / "compose.yaml", ROOT / "deploy" / "podman" / "compose.standins.yaml"]
PODMAN_WRAPPER = ROOT / "deploy" / "podman" / "podman"
CONTAINERS_CONF = ROOT / "deploy" / "podman" / "containers.conf"
# compose.yaml's host-port variables -> the service whose port it publishes
PORT_VARIABLES = {
    "MALLOPS_GATEWAY_PORT": "gateway",
    "MALLOPS_MONITOR_PORT": "monitor",
    "MAILPIT_UI_PORT": "mailpit",
    "PROMETHEUS_PORT": "prometheus",
    "ALERTMANAGER_PORT": "alertmanager",
    "GRAFANA_PORT": "grafana",
}
# prefixes of the variables compose.yaml reads from the environment: none leaks in from the caller's
COMPOSE_VARIABLE_PREFIXES = (
    "MALLOPS_",
    "POSTGRES_",
    "GRAFANA_",
    "PROMETHEUS_",
    "ALERTMANAGER_",
    "MAILPIT_",
    "RABBITMQ_",
)
UP_TIMEOUT = float(os.environ.get("MALLOPS_CONTAINERS_UP_TIMEOUT", "420"))


def podman(
    *args: str, check: bool = True, timeout: float = 120, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, CONTAINERS_CONF=str(CONTAINERS_CONF))
    return subprocess.run(
        ["podman", *args], env=env, input=stdin, capture_output=True, text=True, check=check, timeout=timeout
    )


@dataclass
class Container:
    name: str
    service: str

    def inspect(self) -> dict[str, Any]:
        data: list[dict[str, Any]] = json.loads(podman("inspect", self.name).stdout)
        return data[0]

    def healthcheck(self) -> bool:
        """Run the container's compose healthcheck once (what podman's systemd timer would do)."""
        return podman("healthcheck", "run", self.name, check=False, timeout=60).returncode == 0

    def logs(self, tail: int = 60) -> str:
        result = podman("logs", "--tail", str(tail), self.name, check=False)
        return result.stdout + result.stderr


@dataclass
class Stack:
    env: dict[str, str]
    ports: dict[str, int]
    admin_token: str
    log_dir: Path
    up: Process | None = None
    services: dict[str, dict[str, Any]] = field(default_factory=dict)

    def compose(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self.compose_argv(*args), cwd=ROOT, env=self.env, capture_output=True, text=True, timeout=timeout
        )

    def compose_argv(self, *args: str) -> list[str]:
        files = [arg for path in COMPOSE_FILES for arg in ("-f", str(path))]
        return [
            str(Path(sys.executable).parent / "podman-compose"),
            "--podman-path",
            str(PODMAN_WRAPPER),
            "--in-pod",
            "false",
            "--env-file",
            str(self.log_dir / "empty.env"),
            "-p",
            PROJECT,
            *files,
            *args,
        ]

    def containers(self, service: str | None = None) -> list[Container]:
        listing = json.loads(
            podman("ps", "-a", "--filter", f"label=io.podman.compose.project={PROJECT}", "--format", "json").stdout
        )
        found = [Container(item["Names"][0], item["Labels"]["com.docker.compose.service"]) for item in listing]
        return [c for c in found if service is None or c.service == service]

    def container(self, service: str) -> Container:
        matches = self.containers(service)
        assert len(matches) == 1, f"expected one {service} container, found {matches}"
        return matches[0]

    def url(self, service: str) -> str:
        return f"http://127.0.0.1:{self.ports[service]}"

    def gateway(self) -> httpx.Client:
        return httpx.Client(
            base_url=self.url("gateway"), headers={"Authorization": f"Bearer {self.admin_token}"}, timeout=30
        )

    def diagnostics(self) -> str:
        """What to read when the stack does not come up: compose's output and each container's state."""
        lines = ["--- podman-compose up (last lines) ---", *(self.up.log().splitlines()[-40:] if self.up else [])]
        for container in self.containers():
            data = container.inspect()
            state = data["State"]
            lines.append(
                f"--- {container.name}: {state['Status']} (exit {state['ExitCode']}, restarts"
                f" {data['RestartCount']}, health {health_status(state) or '-'}) ---"
            )
            lines.extend(container.logs(15).splitlines())
        return "\n".join(lines)


def self_referencing_defaults() -> dict[str, str]:
    """compose.yaml's defaults of the ``environment:`` entries that read a variable of their own name
    (``MALLOPS_LOG_LEVEL: ${MALLOPS_LOG_LEVEL:-INFO}``). podman-compose 1.3.0 substitutes such an entry
    with itself when the variable is not set (fixed in 1.4, which no longer waits on service_healthy
    with podman < 4.6), so the run sets them, to compose.yaml's own defaults."""
    services: dict[str, dict[str, Any]] = yaml.safe_load((ROOT / "compose.yaml").read_text())["services"]
    defaults: dict[str, str] = {}
    for service in services.values():
        for key, value in (service.get("environment") or {}).items():
            match = re.fullmatch(r"\$\{(?P<name>\w+):?-(?P<default>[^}]*)\}", str(value))
            if match and match["name"] == key:
                defaults[key] = match["default"]
    return defaults


def compose_environment(log_dir: Path) -> tuple[dict[str, str], dict[str, int], str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith(COMPOSE_VARIABLE_PREFIXES)}
    env.update(self_referencing_defaults())
    ports = {service: free_port() for service in PORT_VARIABLES.values()}
    admin_token = secrets.token_hex(16)
    env.update(
        {variable: str(ports[service]) for variable, service in PORT_VARIABLES.items()},
        CONTAINERS_CONF=str(CONTAINERS_CONF),
        IMAGE_TAG=os.environ.get("IMAGE_TAG", "containers-test"),
        POSTGRES_PASSWORD=secrets.token_hex(12),
        MALLOPS_BOOTSTRAP_ADMIN_TOKEN=admin_token,
        GRAFANA_ADMIN_PASSWORD=secrets.token_hex(12),
        MALLOPS_DEMO_DATA="1",
    )
    (log_dir / "empty.env").write_text("")  # no developer's .env is read
    return env, ports, admin_token


def require_images(env: dict[str, str]) -> None:
    if shutil.which("podman") is None:
        pytest.fail("podman is not installed: run ./scripts/containers, which installs it and builds the images")
    wanted = [f"localhost/mallops:{env['IMAGE_TAG']}"] + [
        f"localhost/mallops-standin-{name}:ci"
        for name in ("redis", "postgres", "mailpit", "prometheus", "alertmanager", "grafana")
    ]
    missing = [image for image in wanted if podman("image", "exists", image, check=False).returncode != 0]
    if missing:
        pytest.fail(f"images not built: {', '.join(missing)}; run ./scripts/containers")


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """compose.yaml up (foreground podman-compose, stopped by its PID), every healthcheck passing;
    ``down -v`` at the end whatever happened."""
    log_dir = tmp_path_factory.mktemp("containers")
    env, ports, admin_token = compose_environment(log_dir)
    require_images(env)
    stack = Stack(env, ports, admin_token, log_dir)
    config = stack.compose("config")
    assert config.returncode == 0, config.stderr
    stack.compose("down", "-v")  # a run killed before its teardown left it behind
    stack.up = spawn("podman-compose-up", stack.compose_argv("up"), env, log_dir)
    try:
        yield stack
    finally:
        # down first: stopping the foreground podman-compose would proxy its signal into the containers
        stack.compose("down", "-v", timeout=300)
        stack.up.stop(timeout=30)


def healthchecked_services() -> set[str]:
    services: dict[str, dict[str, Any]] = yaml.safe_load((ROOT / "compose.yaml").read_text())["services"]
    return {name for name, service in services.items() if "healthcheck" in service}


CRASH_LOOP = 3  # restarts after which a container that is still not up is a failure, not a slow start


def health_status(state: dict[str, Any]) -> str:
    health: dict[str, Any] = state.get("Health") or state.get("Healthcheck") or {}
    return str(health.get("Status", ""))


def wait_healthy(stack: Stack, services: set[str], timeout: float = UP_TIMEOUT) -> None:
    """Run ``podman healthcheck run`` on every container of ``services`` until each passes (podman's
    systemd timers would do it elsewhere). Fails at once, with each container's state and logs, when
    one turns ``unhealthy`` (its start period over and its retries spent, as compose counts them), keeps
    crashing (restarted CRASH_LOOP times and down), or podman-compose itself has exited."""
    passed: set[str] = set()

    def all_healthy() -> bool:
        if stack.up is not None and not stack.up.alive():
            pytest.fail(f"podman-compose up exited {stack.up.popen.returncode}:\n{stack.diagnostics()}")
        for container in stack.containers():
            if container.service not in services:
                data = container.inspect()  # a one-shot (migrate) that failed for good?
                state = data["State"]
                if state["Status"] == "exited" and state["ExitCode"] != 0 and data["RestartCount"] >= CRASH_LOOP:
                    pytest.fail(f"{container.name} failed:\n{stack.diagnostics()}")
                continue
            if container.name in passed:
                continue
            if container.healthcheck():
                passed.add(container.name)
                continue
            data = container.inspect()
            if health_status(data["State"]) == "unhealthy":
                pytest.fail(f"{container.name} is unhealthy:\n{stack.diagnostics()}")
            if data["RestartCount"] >= CRASH_LOOP and data["State"]["Status"] != "running":
                pytest.fail(f"{container.name} keeps crashing:\n{stack.diagnostics()}")
        return {c.service for c in stack.containers() if c.name in passed} >= services

    started = time.monotonic()
    try:
        wait_until(all_healthy, timeout=timeout, interval=2, message=f"healthchecks of {sorted(services)}")
    except pytest.fail.Exception as failure:
        if "timed out" in str(failure):
            print(stack.diagnostics())
        raise
    print(f"healthchecks of {len(services)} services passed after {time.monotonic() - started:.0f} s")
