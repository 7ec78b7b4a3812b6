"""``mallops dev``: the whole platform as local processes, with one command and without Docker.

What it does, in order:

1. Redis: ``MALLOPS_REDIS_URL`` (or ``MALLOPS_BROKER_URL``) when set; otherwise its own ``redis-server``
   with AOF on, on a free loopback port, its data in ``<data_dir>/dev/redis``.
2. The database (embedded SQLite under the data dir unless ``MALLOPS_DATABASE_URL``): ``mallops migrate``,
   and ``mallops demo-data`` on the first start.
3. Every service of :mod:`mallops.services` with exactly its command (``mallops serve <name>``), plus a
   local SMTP catcher (aiosmtpd's ``Mailbox`` handler) that stores every e-mail in a maildir, all under
   honcho's process manager: output multiplexed with a prefix per process; Ctrl-C or SIGTERM stops every
   child (SIGTERM to each process group, SIGKILL after honcho's grace period); a child that dies stops
   the whole stack with a non-zero exit.
4. Ready when every readiness probe of :mod:`mallops.services` passes (gateway ``/readyz`` 200, each
   worker answers a ping, beat holds the RedBeat lock, the monitor's ``/health`` is 200) and the SMTP
   catcher accepts connections. It then waits for the start-up burst of output to settle (the first
   beat run, the workers' start lines) so that its ready banner (the URLs, the admin token, where
   e-mail goes) is the last thing on screen; it keeps the banner in ``<data_dir>/dev/banner.txt``
   (``mallops info`` prints it again) and writes ``<data_dir>/dev/stack.json`` and a sourceable
   ``<data_dir>/dev/env`` (which also puts the ``mallops`` command's folder on ``PATH``).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any, TextIO

from honcho.manager import Manager
from honcho.printer import Message, Printer

from mallops.services import SERVICE_SPECS, ServiceSpec, probe
from shared.files import atomic_write
from shared.settings import Settings

REDIS_MISSING = (
    "redis-server is not installed: install it with `apt-get install redis-server` (Debian/Ubuntu) "
    "or `brew install redis` (macOS), or set MALLOPS_REDIS_URL to a Redis you have"
)
MAIL_PROCESS = "mail"
BANNER_FILE = "banner.txt"
#: the banner waits until no process has printed for this long (seconds) ...
QUIET_FOR = 1.5
#: ... but no longer than this after every service is ready
QUIET_AT_MOST = 20.0


class DevError(Exception):
    """The stack cannot start; the message is one line for the operator."""


@dataclass
class DevPlan:
    """Everything ``mallops dev`` will run, decided before anything starts (and testable as such)."""

    settings: Settings
    data_dir: Path
    dev_dir: Path
    mail_dir: Path
    env: dict[str, str]
    admin_token: str
    token_generated: bool
    redis_url: str | None  # None: start our own
    commands: dict[str, list[str]] = field(default_factory=dict)

    @property
    def gateway_url(self) -> str:
        return SERVICE_SPECS["gateway"].base_url(self.child_settings()) or ""

    @property
    def metrics_url(self) -> str:
        return (SERVICE_SPECS["monitor"].base_url(self.child_settings()) or "") + "/metrics"

    def child_settings(self) -> Settings:
        """The settings the children will read: this process's, with what ``mallops dev`` sets."""
        overrides: dict[str, Any] = {
            "data_dir": self.data_dir,
            "smtp_host": "127.0.0.1",
            "smtp_port": self.settings.smtp_port,
            "smtp_starttls": False,
        }
        if self.env.get("MALLOPS_REDIS_URL"):
            overrides["redis_url"] = self.env["MALLOPS_REDIS_URL"]
        return self.settings.model_copy(update=overrides)


def service_argv(spec: ServiceSpec) -> list[str]:
    """``mallops serve <name> ...`` run with this interpreter (the same command compose runs)."""
    return [sys.executable, "-m", "mallops", *spec.argv[1:]]


def mail_catcher_argv(port: int, mail_dir: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "aiosmtpd",
        "--nosetuid",
        "--smtputf8",
        "--listen",
        f"127.0.0.1:{port}",
        "--class",
        "aiosmtpd.handlers.Mailbox",
        str(mail_dir),
    ]


def make_plan(settings: Settings, environ: Mapping[str, str]) -> DevPlan:
    data_dir = settings.data_dir.expanduser().resolve()
    dev_dir = data_dir / "dev"
    mail_dir = data_dir / "mail"
    token = settings.bootstrap_admin_token.get_secret_value()
    generated = False
    if not token:
        token, generated = _stored_token(dev_dir / "admin-token")
    explicit_redis = bool(environ.get("MALLOPS_REDIS_URL") or environ.get("MALLOPS_BROKER_URL")) or bool(
        {"redis_url", "broker_url"} & settings.model_fields_set
    )
    env = dict(environ)
    env.update(
        {
            "MALLOPS_DATA_DIR": str(data_dir),
            "MALLOPS_BOOTSTRAP_ADMIN_TOKEN": token,
            "MALLOPS_SMTP_HOST": "127.0.0.1",
            "MALLOPS_SMTP_PORT": str(settings.smtp_port),
            "MALLOPS_SMTP_STARTTLS": "false",
            "MALLOPS_GATEWAY_PORT": str(settings.gateway_port),
            "MALLOPS_MONITOR_PORT": str(settings.monitor_port),
            "PYTHONUNBUFFERED": "1",
        }
    )
    # a line per task would scroll the ready banner away at the first burst (beat's reminders, 150+ e-mails)
    env.setdefault("MALLOPS_LOG_TASK_LINES", "false")
    if explicit_redis:
        env.setdefault("MALLOPS_REDIS_URL", settings.redis_url)
    plan = DevPlan(
        settings, data_dir, dev_dir, mail_dir, env, token, generated, settings.redis_url if explicit_redis else None
    )
    plan.commands = {name: service_argv(spec) for name, spec in SERVICE_SPECS.items()}
    plan.commands[MAIL_PROCESS] = mail_catcher_argv(settings.smtp_port, mail_dir)
    return plan


def _stored_token(path: Path) -> tuple[str, bool]:
    """The dev admin token kept in ``path`` (0600), made on the first start."""
    with contextlib.suppress(FileNotFoundError):
        stored = path.read_text().strip()
        if stored:
            return stored, False
    from shared.tokens import generate_token

    token = generate_token()
    write_private(path, token + "\n")
    return token, True


def write_private(path: Path, text: str) -> None:
    """Replace ``path`` atomically with ``text``, readable by its owner only."""
    with atomic_write(path) as handle:
        handle.write(text)
    path.chmod(0o600)


def port_in_use(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.5)
        return s.connect_ex((host, port)) == 0


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class QuietWatchingPrinter(Printer):  # type: ignore[misc]  # honcho has no type hints
    """honcho's Printer, remembering when it last printed a line (for the banner to wait for quiet)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.last_line_at = time.monotonic()

    def write(self, message: Message) -> None:
        if message.type == "line":
            self.last_line_at = time.monotonic()
        super().write(message)


def cli_bin_dir() -> Path | None:
    """The folder of the ``mallops`` command next to this interpreter (``.venv/bin``), if there is one."""
    folder = Path(sys.executable).parent
    return folder if (folder / "mallops").exists() else None


# -- the process manager -------------------------------------------------------------------------


class StackManager(Manager):  # type: ignore[misc]  # honcho has no type hints
    """honcho's Manager, told apart: a stop we asked for (signal) from a child that died on its own.

    Reads honcho 2.x's ``_processes`` (name -> {pid, returncode}) to name the child that died first.
    """

    def __init__(self, printer: Printer, on_started: Callable[[], None]) -> None:
        super().__init__(printer)
        self.failure: str | None = None
        self.stop_requested = False
        self.stopping = threading.Event()
        self._on_started = on_started

    def _start(self) -> None:
        super()._start()  # forks the readers first: the readiness thread starts after, never before a fork
        self._on_started()

    def terminate(self) -> None:
        if not self.stopping.is_set() and self.failure is None and not self.stop_requested:
            died = [
                (name, p.get("returncode")) for name, p in self._processes.items() if p.get("returncode") is not None
            ]
            if died:
                self.failure = f"{died[0][0]} exited with code {died[0][1]}"
            else:
                self.stop_requested = True
        self.stopping.set()
        super().terminate()

    def fail(self, reason: str) -> None:
        if self.failure is None and not self.stop_requested:
            self.failure = reason
        self.terminate()

    def pids(self) -> dict[str, int]:
        return {name: int(p["pid"]) for name, p in self._processes.items() if p.get("pid")}


# -- running the stack ---------------------------------------------------------------------------


@dataclass
class DevStack:
    plan: DevPlan
    ready_timeout: float = 180.0
    load_demo_data: bool = True
    out: TextIO = field(default_factory=lambda: sys.stdout)
    redis: subprocess.Popen[bytes] | None = None
    printer: QuietWatchingPrinter = field(init=False)

    def __post_init__(self) -> None:
        self.printer = QuietWatchingPrinter(self.out)
        self.printer.width = max(len(n) for n in [*self.plan.commands, "system"])

    def say(self, text: str, name: str = "dev") -> None:
        self.printer.write(Message(type="line", data=text + "\n", time=dt.datetime.now(), name=name, colour=None))

    def run(self) -> int:
        """Start everything, block until stopped; the exit code (0 after a requested stop)."""
        plan = self.plan
        self._check_ports()
        plan.dev_dir.mkdir(parents=True, exist_ok=True)
        plan.mail_dir.mkdir(parents=True, exist_ok=True)
        for sub in ("cur", "new", "tmp"):
            (plan.mail_dir / sub).mkdir(exist_ok=True)
        previous = signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
        try:
            if plan.redis_url is None:
                plan.env["MALLOPS_REDIS_URL"] = self._start_redis()
            self._prepare_database()
            return self._run_services()
        except KeyboardInterrupt:
            self.say("stopped before the services started")
            return 0
        finally:
            signal.signal(signal.SIGTERM, previous)
            self._stop_redis()
            with contextlib.suppress(FileNotFoundError):
                (plan.dev_dir / "stack.json").unlink()

    def _check_ports(self) -> None:
        s = self.plan.child_settings()
        for setting, port in (
            ("MALLOPS_GATEWAY_PORT", s.gateway_port),
            ("MALLOPS_MONITOR_PORT", s.monitor_port),
            ("MALLOPS_SMTP_PORT", s.smtp_port),
        ):
            if port_in_use(port):
                raise DevError(f"port {port} ({setting}) is already in use; set {setting} to a free port")

    def _start_redis(self) -> str:
        binary = shutil.which("redis-server")
        if binary is None:
            raise DevError(REDIS_MISSING)
        workdir = self.plan.dev_dir / "redis"
        workdir.mkdir(parents=True, exist_ok=True)
        port = free_port()
        argv = [
            binary,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(workdir),
            "--appendonly",
            "yes",
            "--save",
            "",
            "--maxmemory-policy",
            "noeviction",
            "--daemonize",
            "no",
            "--logfile",
            str(workdir / "redis.log"),
        ]
        self.redis = subprocess.Popen(  # noqa: S603
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        url = f"redis://127.0.0.1:{port}"
        deadline = time.monotonic() + 20
        import redis as redis_lib

        while True:
            if self.redis.poll() is not None:
                log = (
                    (workdir / "redis.log").read_text(errors="replace")[-500:]
                    if (workdir / "redis.log").exists()
                    else ""
                )
                raise DevError(f"redis-server exited with code {self.redis.returncode}: {' '.join(log.split())}")
            try:
                client = redis_lib.Redis(host="127.0.0.1", port=port, socket_connect_timeout=0.5)
                try:
                    if client.ping():
                        break
                finally:
                    client.close()
            except redis_lib.RedisError:
                pass
            if time.monotonic() > deadline:
                raise DevError(f"redis-server on port {port} did not answer within 20s (see {workdir / 'redis.log'})")
            time.sleep(0.1)
        self.say(f"redis-server {url} (AOF in {workdir}, pid {self.redis.pid})", "redis")
        return url

    def _stop_redis(self) -> None:
        if self.redis is None or self.redis.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.redis.pid, signal.SIGTERM)
        try:
            self.redis.wait(15)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.redis.pid, signal.SIGKILL)
            self.redis.wait(5)
        self.say(f"redis-server stopped (code {self.redis.returncode})", "redis")

    def _run_step(self, name: str, argv: list[str]) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(argv, env=self.plan.env, capture_output=True, text=True, check=False)  # noqa: S603
        for line in (result.stdout + result.stderr).splitlines():
            self.say(line, name)
        return result

    def _prepare_database(self) -> None:
        py = [sys.executable, "-m", "mallops"]
        if self._run_step("migrate", [*py, "migrate"]).returncode != 0:
            raise DevError("the database migration failed (see the lines above)")
        marker = self.plan.dev_dir / "demo-data.done"
        if self.load_demo_data and not marker.exists():
            result = self._run_step("demo", [*py, "demo-data"])
            if result.returncode not in (0, 2):  # 2: demo data is already there
                raise DevError("loading the demo data failed (see the lines above)")
            write_private(marker, dt.datetime.now(dt.UTC).isoformat() + "\n")

    def _run_services(self) -> int:
        manager = StackManager(self.printer, on_started=lambda: self._start_readiness(manager))
        for name, argv in self.plan.commands.items():
            manager.add_process(name, shlex.join(argv), env=self.plan.env)
        self._manager = manager
        manager.loop()
        if manager.failure is not None:
            self.say(f"stopped the stack: {manager.failure}")
            return 1
        self.say("stopped")
        return 0

    # -- readiness ---------------------------------------------------------------------------------

    def _start_readiness(self, manager: StackManager) -> None:
        threading.Thread(target=self._await_ready, args=(manager,), name="readiness", daemon=True).start()

    def _await_ready(self, manager: StackManager) -> None:
        started = time.monotonic()
        settings = self.plan.child_settings()
        pending: dict[str, str] = dict.fromkeys([*SERVICE_SPECS, MAIL_PROCESS], "not checked yet")
        while pending:
            for name in list(pending):
                if manager.stopping.is_set():
                    return
                if name == MAIL_PROCESS:
                    ok, detail = port_in_use(settings.smtp_port), f"SMTP on port {settings.smtp_port}"
                else:
                    result = probe(SERVICE_SPECS[name], settings, timeout=1.0)
                    ok, detail = result.ready, result.detail
                if ok:
                    del pending[name]
                else:
                    pending[name] = detail
            if not pending:
                break
            if time.monotonic() - started > self.ready_timeout:
                waiting = "; ".join(f"{name}: {detail}" for name, detail in pending.items())
                self.say(f"not ready after {self.ready_timeout:g}s: {waiting}")
                manager.fail(f"not ready after {self.ready_timeout:g}s ({', '.join(pending)})")
                return
            if manager.stopping.wait(0.5):
                return
        took = time.monotonic() - started
        settle_until = time.monotonic() + QUIET_AT_MOST
        while time.monotonic() - self.printer.last_line_at < QUIET_FOR and time.monotonic() < settle_until:
            if manager.stopping.wait(0.2):
                return
        self._announce(manager, took)

    def _write_env(self, settings: Settings) -> Path:
        """``.dev/env``: the exports that point the CLI (and a fresh shell) at this stack."""
        plan = self.plan
        env_file = plan.dev_dir / "env"
        exports = {
            "MALLOPS_URL": plan.gateway_url,
            "MALLOPS_TOKEN": plan.admin_token,
            # so that `mallops doctor`, `mallops mail` and `mallops tokens` look at this stack too
            "MALLOPS_DATA_DIR": str(plan.data_dir),
            "MALLOPS_REDIS_URL": plan.env["MALLOPS_REDIS_URL"],
            "MALLOPS_GATEWAY_PORT": str(settings.gateway_port),
            "MALLOPS_MONITOR_PORT": str(settings.monitor_port),
            "MALLOPS_SMTP_HOST": "127.0.0.1",
            "MALLOPS_SMTP_PORT": str(settings.smtp_port),
        }
        if plan.env.get("MALLOPS_DATABASE_URL"):
            exports["MALLOPS_DATABASE_URL"] = plan.env["MALLOPS_DATABASE_URL"]
        lines_out = [f"export {key}={shlex.quote(value)}\n" for key, value in exports.items()]
        bin_dir = cli_bin_dir()
        if bin_dir is not None:  # `mallops ping` works in a fresh shell, without activating the venv
            lines_out.append(f'export PATH={shlex.quote(str(bin_dir))}:"$PATH"\n')
        write_private(env_file, "".join(lines_out))
        return env_file

    def _announce(self, manager: StackManager, took: float) -> None:
        plan = self.plan
        settings = plan.child_settings()
        info: dict[str, Any] = {
            "ready": True,
            "pid": os.getpid(),
            "gateway_url": plan.gateway_url,
            "docs_url": plan.gateway_url + "/docs",
            "metrics_url": plan.metrics_url,
            "admin_token": plan.admin_token,
            "mail_dir": str(plan.mail_dir),
            "smtp": f"127.0.0.1:{settings.smtp_port}",
            "redis_url": plan.env["MALLOPS_REDIS_URL"],
            "database_url": settings.sqlalchemy_url,
            "data_dir": str(plan.data_dir),
            "processes": manager.pids(),
        }
        env_file = self._write_env(settings)
        write_private(plan.dev_dir / "stack.json", json.dumps(info, indent=2) + "\n")
        token_note = (
            " (generated; kept in " + str(plan.dev_dir / "admin-token") + ")"
            if not plan.settings.bootstrap_admin_token.get_secret_value()
            else " (MALLOPS_BOOTSTRAP_ADMIN_TOKEN)"
        )
        lines = [
            "=" * 78,
            f"mallops dev is ready ({took:.1f}s): every service answers",
            f"  gateway      {info['gateway_url']}",
            f"  API docs     {info['docs_url']}",
            f"  metrics      {info['metrics_url']}",
            f"  admin token  {plan.admin_token}{token_note}",
            f"  e-mail       caught on {info['smtp']}, stored in the maildir {plan.mail_dir}/new "
            "(`mallops mail` lists it)",
            f"  redis        {info['redis_url']}",
            f"  database     {info['database_url']}",
            f"  CLI          source {env_file}",
            "               (sets MALLOPS_URL, MALLOPS_TOKEN and PATH); then: mallops ping",
            "  this banner  mallops info",
            "  Ctrl-C stops everything.",
            "=" * 78,
        ]
        write_private(plan.dev_dir / BANNER_FILE, "\n".join(lines) + "\n")
        for line in lines:
            self.say(line)


def _raise_keyboard_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def run_dev(settings: Settings, *, ready_timeout: float, demo_data: bool) -> int:
    plan = make_plan(settings, os.environ)
    return DevStack(plan, ready_timeout=ready_timeout, load_demo_data=demo_data).run()
