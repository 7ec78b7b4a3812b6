"""Running the ``mallops`` CLI in tests: in-process through the same entry point as the console script
(``run_app``: exit codes, one-line errors), or as a real subprocess where the process boundary matters."""

from __future__ import annotations

import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from mallops.cli import app
from mallops.output import run_app
from shared.settings import Settings, get_settings
from tests.harness import ROOT, Process, free_port, service_argv, spawn, wait_until


@dataclass
class CliResult:
    code: int
    out: str
    err: str

    @property
    def err_lines(self) -> list[str]:
        return [line for line in self.err.splitlines() if line.strip()]


CliRunner = Callable[..., CliResult]


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> Iterator[CliRunner]:
    """``cli("tasks", "list", env={...})``: run the CLI in this process; exit code, stdout, stderr.

    Settings built under the test's environment are dropped afterwards, so they never leak into a
    later test that reads :func:`get_settings`."""

    def run(*args: str, env: Mapping[str, str] | None = None) -> CliResult:
        for key, value in (env or {}).items():
            monkeypatch.setenv(key, value)
        get_settings.cache_clear()
        capsys.readouterr()
        with pytest.raises(SystemExit) as exited:
            run_app(app, list(args))
        out, err = capsys.readouterr()
        code = exited.value.code
        return CliResult(code if isinstance(code, int) else 0, out, err)

    yield run
    get_settings.cache_clear()


def run_mallops(*args: str, env: Mapping[str, str], cwd: Path = ROOT, timeout: float = 120) -> CliResult:
    """The CLI as a real process (``python -m mallops``)."""
    done = subprocess.run(
        [sys.executable, "-m", "mallops", *args],
        env=dict(env),
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    return CliResult(done.returncode, done.stdout, done.stderr)


@pytest.fixture
def no_gateway(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> str:
    """MALLOPS_URL pointing at a port where nothing listens; no config file."""
    url = f"http://127.0.0.1:{free_port()}"
    monkeypatch.setenv("MALLOPS_URL", url)
    monkeypatch.setenv("MALLOPS_TOKEN", "mlp_whatever")
    monkeypatch.setenv("MALLOPS_CONFIG", str(tmp_path / "absent.toml"))
    return url


# -- a real gateway process -------------------------------------------------------------------------


@dataclass
class LiveGateway:
    url: str
    admin: str
    user: str
    user_name: str
    process: Process


@pytest.fixture(scope="session")
def live_gateway(
    service_env: dict[str, str], migrated: Settings, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LiveGateway]:
    """``mallops serve gateway`` as a process on a free port, on this run's Redis and database, with an
    admin and a user token."""
    from shared.db import session_scope
    from shared.tokens import create_token

    suffix = uuid.uuid4().hex[:8]
    with session_scope(migrated) as session:
        admin = create_token(session, f"cli-admin-{suffix}", "admin")
        user = create_token(session, f"cli-user-{suffix}", "user")
    port = free_port()
    env = {**service_env, "MALLOPS_GATEWAY_PORT": str(port)}
    process = spawn("gateway", service_argv("gateway"), env, tmp_path_factory.mktemp("gateway-logs"))
    url = f"http://127.0.0.1:{port}"

    def ready() -> bool:
        if not process.alive():
            pytest.fail(f"the gateway exited with {process.popen.returncode}:\n{process.log()[-3000:]}")
        return httpx.get(f"{url}/readyz", timeout=2).status_code == 200

    try:
        wait_until(ready, timeout=90, interval=0.2, message="the gateway's /readyz")
        yield LiveGateway(url, admin, user, f"cli-user-{suffix}", process)
    finally:
        process.stop()


@pytest.fixture
def gateway_env(live_gateway: LiveGateway, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> LiveGateway:
    """The CLI configured for the live gateway with the admin token (MALLOPS_URL / MALLOPS_TOKEN)."""
    monkeypatch.setenv("MALLOPS_URL", live_gateway.url)
    monkeypatch.setenv("MALLOPS_TOKEN", live_gateway.admin)
    monkeypatch.setenv("MALLOPS_CONFIG", str(tmp_path / "absent.toml"))
    return live_gateway
