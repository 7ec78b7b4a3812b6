"""Real processes for the bench and the tests: redis-server, mallops services, any Celery worker. Every
process is stopped by its PID.

No sleeps as synchronisation: :func:`wait_until` polls a condition against a deadline. Nothing here needs
pytest (the bench runs with only the ``bench`` extra installed); a deadline or a missing binary raises
:class:`Failed`, which ``tests/harness.py`` turns into a test failure.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import redis
from sqlalchemy import create_engine, text
from sqlalchemy.engine import URL

ROOT = Path(__file__).resolve().parent.parent
T = TypeVar("T")


class Failed(BaseException):
    """A process did not come up, a condition did not hold by its deadline, or a binary is missing.

    A BaseException, as pytest's failure is: raised inside the condition of an outer :func:`wait_until`, it
    ends the wait at once instead of being retried as a condition's transient error."""


def fail(message: str) -> NoReturn:
    raise Failed(message)


REDIS_MISSING = (
    "redis-server is not installed and no Docker engine answers (for a Redis container). Install it with "
    "`apt-get install redis-server` (Debian/Ubuntu) or `brew install redis` (macOS), "
    "or run ./scripts/test, which installs it when run as root."
)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def wait_until(
    check: Callable[[], T | None],
    timeout: float = 20.0,
    interval: float = 0.05,
    message: str = "condition",
) -> T:
    """Poll ``check`` until it returns a truthy value; :class:`Failed` at the deadline."""
    deadline = time.monotonic() + timeout
    last_error: BaseException | None = None
    while True:
        try:
            value = check()
            if value:
                return value
        except Exception as exc:  # the condition may raise until the system is up
            last_error = exc
        if time.monotonic() > deadline:
            detail = f" (last error: {last_error!r})" if last_error else ""
            fail(f"timed out after {timeout}s waiting for {message}{detail}")
        time.sleep(interval)


@dataclass
class Process:
    """A child process with its log file; ``stop`` ends it (and its group) by PID."""

    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def signal(self, sig: int) -> None:
        if self.alive():
            os.killpg(self.popen.pid, sig)

    def stop(self, timeout: float = 15.0) -> int | None:
        if self.alive():
            try:
                os.killpg(self.popen.pid, signal.SIGTERM)
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.popen.pid, signal.SIGKILL)
                self.popen.wait(5)
            except ProcessLookupError:
                pass
        else:
            # the leader is gone; make sure no child of its group survives
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.popen.pid, signal.SIGKILL)
        return self.popen.returncode


def spawn(name: str, argv: list[str], env: Mapping[str, str], log_dir: Path, cwd: Path = ROOT) -> Process:
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"{name}-{time.monotonic_ns()}.log"
    with log_path.open("wb") as log:
        popen = subprocess.Popen(
            argv, env=dict(env), cwd=cwd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    return Process(name, popen, log_path)


@dataclass
class RedisServer:
    port: int
    process: Process | None
    host: str = "127.0.0.1"
    container: Any = None  # a testcontainers RedisContainer when there was no redis-server binary
    url_base: str = field(init=False)

    def __post_init__(self) -> None:
        self.url_base = f"redis://{self.host}:{self.port}"

    def client(self, db: int = 0) -> redis.Redis[bytes]:
        return redis.Redis(host=self.host, port=self.port, db=db)

    def stop(self) -> None:
        if self.process:
            self.process.stop()
        if self.container is not None:
            self.container.stop()


def redis_env(server: RedisServer) -> dict[str, str]:
    """The MALLOPS_ variables that put the cache, the broker and the results on ``server``."""
    base = server.url_base
    return {"MALLOPS_REDIS_URL": base, "MALLOPS_BROKER_URL": f"{base}/0", "MALLOPS_RESULT_BACKEND": f"{base}/1"}


def redis_container(appendonly: bool = False) -> RedisServer | None:
    """Redis in a Docker container (testcontainers), or None when no Docker engine answers."""
    try:
        from testcontainers.redis import RedisContainer

        container = RedisContainer("redis:7-alpine").with_command(
            f"redis-server --save '' --appendonly {'yes' if appendonly else 'no'}"
        )
        container.start()
    except Exception:  # no docker engine, no image: the caller says how to install redis-server
        return None
    server = RedisServer(
        int(container.get_exposed_port(6379)), None, host=container.get_container_host_ip(), container=container
    )
    wait_until(lambda: server.client().ping(), timeout=30, message="redis in a container")
    return server


def start_redis(
    workdir: Path, port: int | None = None, appendonly: bool = False, appendfsync: str | None = None
) -> RedisServer:
    """A redis-server of the test's own on a free loopback port; without the binary, Redis in a Docker
    container when an engine answers (``port`` is then the container's); otherwise :class:`Failed` says
    how to install redis-server. ``appendfsync`` (``always``, ``everysec``, ``no``) with ``appendonly``."""
    binary = shutil.which("redis-server")
    if binary is None:
        server = redis_container(appendonly) if port is None else None
        if server is None:
            fail(REDIS_MISSING)
        return server
    port = port or free_port()
    workdir.mkdir(parents=True, exist_ok=True)
    options = {"port": port, "bind": "127.0.0.1", "dir": workdir, "save": "", "daemonize": "no"}
    options["appendonly"] = "yes" if appendonly else "no"
    argv = [binary, *(arg for name, value in options.items() for arg in (f"--{name}", str(value)))]
    if appendfsync:
        argv += ["--appendfsync", appendfsync]
    process = spawn(f"redis-{port}", argv, os.environ, workdir)
    server = RedisServer(port, process)
    wait_until(lambda: server.client().ping(), timeout=15, message=f"redis-server on port {port}")
    return server


def wait_http_ready(process: Process, url: str, timeout: float = 60.0) -> None:
    """Poll ``url`` until it answers 200; fail at once, with the process's log, if ``process`` exits.
    On failure the process is stopped."""
    import httpx

    def ready() -> bool:
        if not process.alive():
            fail(f"{process.name} exited with {process.popen.returncode}:\n{process.log()[-3000:]}")
        return httpx.get(url, timeout=2).status_code == 200

    try:
        wait_until(ready, timeout=timeout, interval=0.1, message=f"{process.name}: {url}")
    except BaseException:
        process.stop()
        raise


def service_argv(service: str, *extra: str) -> list[str]:
    return [sys.executable, "-m", "mallops", "serve", service, *extra]


def start_worker(
    service: str,
    env: Mapping[str, str],
    log_dir: Path,
    *extra: str,
    hostname: str | None = None,
    command: list[str] | None = None,
) -> Process:
    """Start ``mallops serve <service>`` (or ``command`` plus the worker options) and wait until its
    worker answers a ping."""
    hostname = hostname or f"{service}-{time.monotonic_ns()}@127.0.0.1"
    argv = (
        [*command, f"--hostname={hostname}", *extra]
        if command
        else service_argv(service, f"--hostname={hostname}", *extra)
    )
    return start_celery_worker(service, argv, env, log_dir, env["MALLOPS_BROKER_URL"], hostname)


def start_celery_worker(
    name: str,
    argv: list[str],
    env: Mapping[str, str],
    log_dir: Path,
    broker_url: str,
    hostname: str,
    timeout: float = 60,
) -> Process:
    """Start any Celery worker command line (its node name ``hostname``) and wait until it answers a ping."""
    from celery import Celery

    process = spawn(name, argv, env, log_dir)
    probe = Celery(broker=broker_url, set_as_current=False)
    try:

        def pinged() -> bool:
            if not process.alive():
                fail(f"{name} worker exited with {process.popen.returncode}:\n{process.log()[-3000:]}")
            replies = probe.control.ping(destination=[hostname], timeout=0.5)
            return any(hostname in reply for reply in replies)

        wait_until(pinged, timeout=timeout, interval=0.2, message=f"{name} worker {hostname}")
    except BaseException:
        process.stop()
        raise
    finally:
        probe.close()
    return process


@contextlib.contextmanager
def connections_refused(admin_url: str | URL, database: str) -> Iterator[None]:
    """PostgreSQL's ``database`` unreachable for the block: new connections refused (``ALLOW_CONNECTIONS
    false``) and its sessions ended; allowed again when the block exits, however it exits. ``admin_url``
    connects to another database of the server."""
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS false'))
            drop_sessions(conn, database)
        yield
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS true'))
        admin.dispose()


def drop_sessions(conn: Any, database: str | None) -> None:
    """End every session on ``database`` but ``conn``'s own (PostgreSQL; ``conn`` in autocommit)."""
    conn.execute(
        text(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = :name AND pid <> pg_backend_pid()"
        ),
        {"name": database},
    )
