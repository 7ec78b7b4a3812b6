"""A small platform for the capacity scenarios (``bench/capacity.py``, ``bench/monitor_scale.py``): its own
``redis-server`` on a free port, a database (SQLite in the work directory unless a URL is given), and
``mallops serve <service>`` processes, each started in a session of its own and stopped by its PID.
Nothing here imports the test package.
"""

from __future__ import annotations

import os
import shutil
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import httpx
import redis

from bench.processes import Process as Proc
from bench.processes import free_port, spawn, wait_until
from shared.contracts import WORKERS_KEY
from shared.db import migrate, reset_engines, session_scope
from shared.settings import Settings
from shared.tokens import create_token

ROOT = Path(__file__).resolve().parent.parent
T = TypeVar("T")


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


@dataclass
class Stack:
    workdir: Path
    env_overrides: dict[str, str] = field(default_factory=dict)
    database_url: str | None = None
    processes: list[Proc] = field(default_factory=list)
    port: int = 0
    token_name: str = ""

    # -- processes ----------------------------------------------------------------------------------

    def spawn(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> Proc:
        proc = spawn(name, argv, env or self.env(), self.workdir / "logs")
        self.processes.append(proc)
        return proc

    def start_redis(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise SystemExit("redis-server is needed (apt-get install redis-server)")
        self.port = free_port()
        data = self.workdir / "redis"
        data.mkdir(parents=True, exist_ok=True)
        argv = [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(data), "--save", ""]
        argv += ["--appendonly", "no", "--maxmemory-policy", "noeviction", "--daemonize", "no"]
        self.spawn("redis", argv, dict(os.environ))
        wait_until(lambda: self.redis(0).ping(), 15, message="redis-server")

    @property
    def base(self) -> str:
        return f"redis://127.0.0.1:{self.port}"

    def redis(self, db: int) -> redis.Redis[bytes]:
        return redis.Redis(host="127.0.0.1", port=self.port, db=db)

    def env(self) -> dict[str, str]:
        data = self.workdir / "data"
        env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOPS_")}
        env |= {
            "MALLOPS_ENVIRONMENT": "development",
            "MALLOPS_DATA_DIR": str(data),
            "MALLOPS_DATABASE_URL": self.database_url or f"sqlite:///{data / 'mallops.db'}",
            "MALLOPS_REDIS_URL": self.base,
            "MALLOPS_LOG_LEVEL": "WARNING",
            "MALLOPS_RATE_LIMIT_PER_MINUTE": "100000000",
            "MALLOPS_MAINTENANCE_POOL": "threads",
            "PYTHONPATH": str(ROOT),
        }
        return env | self.env_overrides

    def settings(self) -> Settings:
        env = self.env()
        return Settings(
            environment="development",
            data_dir=Path(env["MALLOPS_DATA_DIR"]),
            database_url=env["MALLOPS_DATABASE_URL"],
            redis_url=self.base,
        )

    def prepare_database(self) -> dict[str, str]:
        """Migrate; an admin token's Authorization header."""
        settings = self.settings()
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        migrate(settings)
        self.token_name = f"bench-{uuid.uuid4().hex[:6]}"
        with session_scope(settings) as session:
            token = create_token(session, self.token_name, "admin")
        return {"Authorization": f"Bearer {token}"}

    def serve(self, service: str, *extra: str) -> Proc:
        return self.spawn(service, [sys.executable, "-m", "mallops", "serve", service, *extra])

    def gateway(self) -> str:
        port = free_port()
        proc = self.serve("gateway", f"--port={port}")
        url = f"http://127.0.0.1:{port}"
        self._http_ready(proc, f"{url}/readyz")
        return url

    def monitor(self) -> tuple[Proc, str]:
        port = free_port()
        proc = self.serve("monitor", f"--port={port}", "--name=monitor-bench")
        url = f"http://127.0.0.1:{port}"
        self._http_ready(proc, f"{url}/health")
        return proc, url

    def worker(self) -> Proc:
        before = self.redis(2).hlen(WORKERS_KEY)
        proc = self.serve("maintenance", "--hostname=maintenance-capacity@bench")
        wait_until(
            lambda: self.redis(2).hlen(WORKERS_KEY) > before or not proc.alive(), 90, message="the worker's heartbeat"
        )
        if not proc.alive():
            raise RuntimeError(f"the worker exited; see {proc.log_path}")
        return proc

    def _http_ready(self, proc: Proc, url: str) -> None:
        def ready() -> bool:
            if not proc.alive():
                raise SystemExit(f"{proc.name} exited; see {proc.log_path}")
            return httpx.get(url, timeout=2).status_code == 200

        wait_until(ready, 90, interval=0.2, message=url)

    def close(self) -> None:
        for proc in reversed(self.processes):
            proc.stop()
        reset_engines()


def machine() -> dict[str, Any]:
    load = os.getloadavg()
    return {"cpus": os.cpu_count(), "load_average": [round(x, 2) for x in load], "at": time.strftime("%H:%M:%S")}
