"""mallops/services.py: the one list of the platform's processes and their readiness checks."""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from mallops.cli import RUNNABLE
from mallops.services import SERVICE_NAMES, SERVICE_SPECS, WORKER_SERVICES, get_service, probe, redbeat_lock_key
from shared.settings import Settings
from tests.harness import ROOT, Process, RedisServer, free_port

EXPECTED = ("gateway", "finance", "reports", "notifier", "maintenance", "beat", "monitor")


def test_every_platform_process_is_listed_once_in_start_order() -> None:
    assert SERVICE_NAMES == EXPECTED
    assert WORKER_SERVICES == ("finance", "reports", "notifier", "maintenance")
    assert RUNNABLE == SERVICE_NAMES  # `mallops serve` accepts exactly these


def test_each_service_runs_as_mallops_serve_name() -> None:
    for name, spec in SERVICE_SPECS.items():
        assert spec.argv[:3] == ("mallops", "serve", name)
        assert spec.command.startswith(f"mallops serve {name}")
        assert spec.probe_argv == ("mallops", "probe", name)


def test_workers_consume_their_catalog_queue() -> None:
    queues = {name: SERVICE_SPECS[name].queue for name in WORKER_SERVICES}
    assert queues == {"finance": "finance", "reports": "reports", "notifier": "email", "maintenance": "default"}
    assert get_service("finance").node_name("box") == "finance@box"


def test_ports_and_urls_come_from_settings() -> None:
    settings = Settings(gateway_port=18000, monitor_port=19808, gateway_host="0.0.0.0")  # noqa: S104
    assert get_service("gateway").ports(settings) == (18000,)
    assert get_service("gateway").ready_url(settings) == "http://127.0.0.1:18000/readyz"
    assert get_service("monitor").ready_url(settings) == "http://127.0.0.1:19808/health"
    assert get_service("finance").ports(settings) == ()
    assert get_service("beat").ready_url(settings) is None


def test_an_unknown_service_names_the_valid_ones() -> None:
    with pytest.raises(KeyError, match="choose one of gateway, finance"):
        get_service("web")


def test_http_probe_of_a_closed_port_is_not_ready_and_does_not_raise() -> None:
    settings = Settings(gateway_port=free_port())
    result = probe(get_service("gateway"), settings, timeout=1)
    assert not result.ready
    assert "ConnectError" in result.detail


@pytest.mark.integration
def test_beat_probe_reads_the_redbeat_lock(settings: Settings, redis_server: RedisServer, clean_broker: None) -> None:
    spec = get_service("beat")
    assert redbeat_lock_key(settings) == "mallops:redbeat::lock"
    assert not probe(spec, settings).ready
    redis_server.client(2).set(redbeat_lock_key(settings), "token", ex=60)
    result = probe(spec, settings)
    assert result.ready, result.detail


@pytest.mark.integration
def test_probe_command_exits_0_for_a_ready_worker_and_1_for_a_missing_one(
    service_env: dict[str, str], worker_factory: Callable[..., Process], tmp_path: Path
) -> None:
    host = f"probe-{free_port()}.{socket.gethostname()}"
    worker = worker_factory("maintenance", hostname=f"maintenance@{host}")
    try:
        check_probe_command(service_env, host)
    finally:
        worker.stop()  # it consumes the shared default queue: later tests must not meet it


def check_probe_command(service_env: dict[str, str], host: str) -> None:

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "mallops", "probe", *args],
            env=service_env,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=120,
        )

    ready = run("maintenance", f"--hostname={host}")
    assert ready.returncode == 0, ready.stdout + ready.stderr
    assert f"maintenance: ready (maintenance@{host}: pong)" in ready.stdout
    missing = run("finance", f"--hostname={host}", "--timeout=1")
    assert missing.returncode == 1
    assert "NOT ready" in missing.stdout
    unknown = run("web")
    assert unknown.returncode == 2
    assert unknown.stderr.strip() == (
        "mallops: unknown service 'web'; choose one of gateway, finance, reports, notifier, maintenance, beat, monitor"
    )
