"""The platform's processes, in ONE place: how each service is started, what it listens on and how to
tell that it is ready.

``mallops dev`` runs exactly these commands as local processes, and the compose file runs the same
commands in containers (a test compares them). ``mallops probe <service>`` runs a service's readiness
check and exits 0 when it is ready, so it can serve as a container healthcheck too.

Nothing here starts anything at import; probes connect only when called.
"""

from __future__ import annotations

import shlex
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from shared.catalog import SERVICE_QUEUES
from shared.settings import Settings

ServiceKind = Literal["api", "worker", "scheduler", "monitor"]

#: How a service shows it is ready:
#: ``http``: its ``ready_path`` on its first port answers 200;
#: ``celery-ping``: the worker node ``<service>@<hostname>`` answers a Celery control ping;
#: ``redbeat-lock``: the RedBeat lock key exists (one beat holds the schedule).
ReadinessKind = Literal["http", "celery-ping", "redbeat-lock"]

PROGRAM = "mallops"


@dataclass(frozen=True)
class ServiceSpec:
    """One deployable process of the platform."""

    name: str
    kind: ServiceKind
    description: str
    readiness: ReadinessKind
    options: tuple[str, ...] = ()
    #: names of :class:`~shared.settings.Settings` fields holding the ports the service listens on
    port_settings: tuple[str, ...] = ()
    #: for ``http`` readiness: the path that answers 200 when the service is ready
    ready_path: str | None = None
    #: for workers: the Celery queue it consumes
    queue: str | None = None

    @property
    def argv(self) -> tuple[str, ...]:
        """The command line, as compose runs it: ``mallops serve <name> [fixed options]``."""
        return (PROGRAM, "serve", self.name, *self.options)

    @property
    def command(self) -> str:
        """:attr:`argv` as one shell-quoted string."""
        return shlex.join(self.argv)

    @property
    def probe_argv(self) -> tuple[str, ...]:
        """A command that exits 0 when the service is ready (usable as a container healthcheck)."""
        return (PROGRAM, "probe", self.name)

    def ports(self, settings: Settings) -> tuple[int, ...]:
        return tuple(int(getattr(settings, field)) for field in self.port_settings)

    def host(self, settings: Settings) -> str:
        """The host the service binds, as configured (``<name>_host`` setting), for HTTP services."""
        value = getattr(settings, f"{self.name}_host", "127.0.0.1")
        return str(value)

    def base_url(self, settings: Settings) -> str | None:
        """``http://host:port`` of an HTTP service, with a wildcard bind address made connectable."""
        if not self.port_settings:
            return None
        host = self.host(settings)
        if host in ("0.0.0.0", "::", ""):  # noqa: S104 - a bind-all address, turned into one to connect to
            host = "127.0.0.1"
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{self.ports(settings)[0]}"

    def ready_url(self, settings: Settings) -> str | None:
        base = self.base_url(settings)
        if base is None or self.ready_path is None:
            return None
        return base + self.ready_path

    def node_name(self, hostname: str | None = None) -> str:
        """The Celery node name of a worker service: ``<service>@<hostname>`` (see ``shared.worker``)."""
        return f"{self.name}@{hostname or socket.gethostname()}"


SERVICE_SPECS: Mapping[str, ServiceSpec] = {
    spec.name: spec
    for spec in (
        ServiceSpec(
            "gateway",
            "api",
            "The HTTP API (FastAPI/uvicorn): submit, follow and manage tasks.",
            readiness="http",
            port_settings=("gateway_port",),
            ready_path="/readyz",
        ),
        *(
            ServiceSpec(
                service,
                "worker",
                f"Celery worker for the {queue!r} queue.",
                readiness="celery-ping",
                queue=queue,
            )
            for service, queue in SERVICE_QUEUES.items()
        ),
        ServiceSpec(
            "beat",
            "scheduler",
            "The scheduler (celery-redbeat): enqueues the periodic tasks and the deferred one-off runs when due.",
            readiness="redbeat-lock",
        ),
        ServiceSpec(
            "monitor",
            "monitor",
            "Task lifecycle events to Prometheus metrics and SQL task history.",
            readiness="http",
            port_settings=("monitor_port",),
            ready_path="/health",
        ),
    )
}

#: Every service name, in start order (gateway first, monitor last).
SERVICE_NAMES: tuple[str, ...] = tuple(SERVICE_SPECS)
WORKER_SERVICES: tuple[str, ...] = tuple(s.name for s in SERVICE_SPECS.values() if s.kind == "worker")


def get_service(name: str) -> ServiceSpec:
    """The spec of ``name``; KeyError with the valid names when there is none."""
    try:
        return SERVICE_SPECS[name]
    except KeyError:
        raise KeyError(f"unknown service {name!r}; choose one of {', '.join(SERVICE_NAMES)}") from None


# -- readiness probes --------------------------------------------------------------------------


@dataclass(frozen=True)
class ProbeResult:
    service: str
    ready: bool
    detail: str


def redbeat_lock_key(settings: Settings) -> str:
    """The Redis key (cache database) of the RedBeat lock, as RedBeat derives it from the app's config."""
    from shared.celery_app import create_celery_app

    conf = create_celery_app("probe", settings).conf
    prefix = str(conf.get("redbeat_key_prefix") or "redbeat:")
    lock_key = conf.get("redbeat_lock_key") or f"{prefix}:lock"
    lock = str(lock_key)
    return lock if lock.startswith(prefix) else prefix + lock


def probe(spec: ServiceSpec, settings: Settings, *, timeout: float = 2.0, hostname: str | None = None) -> ProbeResult:
    """Run ``spec``'s readiness check once. Never raises for an unreachable service: ``ready`` is False."""
    try:
        if spec.readiness == "http":
            return _probe_http(spec, settings, timeout)
        if spec.readiness == "celery-ping":
            return _probe_worker(spec, settings, timeout, hostname)
        return _probe_beat(spec, settings, timeout)
    except Exception as exc:  # a probe reports, it does not crash its caller
        return ProbeResult(spec.name, False, f"{type(exc).__name__}: {exc}")


def _probe_http(spec: ServiceSpec, settings: Settings, timeout: float) -> ProbeResult:
    import httpx

    url = spec.ready_url(settings)
    assert url is not None, f"{spec.name} has http readiness but no port or path"
    try:
        response = httpx.get(url, timeout=timeout)
    except httpx.HTTPError as exc:
        return ProbeResult(spec.name, False, f"{url}: {type(exc).__name__}")
    return ProbeResult(spec.name, response.status_code == 200, f"{url}: HTTP {response.status_code}")


def _probe_worker(spec: ServiceSpec, settings: Settings, timeout: float, hostname: str | None) -> ProbeResult:
    from celery import Celery

    node = spec.node_name(hostname)
    app = Celery(broker=settings.celery_broker_url, set_as_current=False)
    app.conf.broker_connection_retry_on_startup = False
    app.conf.broker_connection_max_retries = 0
    try:
        replies = app.control.ping(destination=[node], timeout=timeout)
    finally:
        app.close()
    ok = any(node in reply for reply in replies or [])
    return ProbeResult(spec.name, ok, f"{node}: {'pong' if ok else 'no answer to ping'}")


def _probe_beat(spec: ServiceSpec, settings: Settings, timeout: float) -> ProbeResult:
    import redis

    key = redbeat_lock_key(settings)
    client = redis.Redis.from_url(settings.cache_redis_url, socket_timeout=timeout, socket_connect_timeout=timeout)
    try:
        held = bool(client.exists(key))
    finally:
        client.close()
    return ProbeResult(spec.name, held, f"{key}: {'held' if held else 'not held'}")


__all__ = [
    "SERVICE_NAMES",
    "SERVICE_SPECS",
    "WORKER_SERVICES",
    "ProbeResult",
    "ServiceSpec",
    "get_service",
    "probe",
    "redbeat_lock_key",
]
