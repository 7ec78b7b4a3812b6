"""Entry point of the monitor (``mallops serve monitor``): lifecycle stream -> task history + /metrics."""

from __future__ import annotations

import argparse
import logging
import signal
import threading
from types import FrameType

from sqlalchemy import text

from services.monitor.consumer import StreamConsumer
from services.monitor.failure_metrics import FailureCollector
from services.monitor.http import make_app, serve
from services.monitor.metrics import Health, MetricStore, build_registry
from services.monitor.redis_memory import RedisMemoryCollector
from services.monitor.state import histogram_buckets
from services.monitor.workflow_metrics import WorkflowCollector
from shared import dead_letter_store, workflows
from shared.cache import redis_client
from shared.celery_app import create_celery_app
from shared.db import session_scope
from shared.logs import configure_logging
from shared.schedules import entry_timings
from shared.settings import Settings, get_settings
from shared.workers import list_workers, queue_lengths

log = logging.getLogger("mallops.monitor")


def live_state(settings: Settings) -> tuple[list[dict[str, object]], dict[str, dict[str, int]]]:
    workers = list_workers(settings)
    return workers, queue_lengths(settings, workers)


def _workflow_totals(settings: Settings) -> dict[str, workflows.Totals]:
    with session_scope(settings) as session:
        return workflows.totals(session)


def health_check(settings: Settings) -> dict[str, str]:
    checks = {}
    try:
        redis_client(settings).ping()
        checks["redis"] = "ok"
    except Exception as exc:
        checks["redis"] = f"error: {type(exc).__name__}"
    try:
        with session_scope(settings) as session:
            session.execute(text("SELECT 1"))
        checks["database"] = "ok"
    except Exception as exc:
        checks["database"] = f"error: {type(exc).__name__}"
    return checks


def main(argv: list[str]) -> None:
    settings = get_settings()
    parser = argparse.ArgumentParser(prog="mallops serve monitor", description=__doc__)
    parser.add_argument("--host", default=settings.monitor_host)
    parser.add_argument("--port", type=int, default=settings.monitor_port)
    parser.add_argument("--name", default=None, help="consumer name in the group (default monitor@<hostname>)")
    args = parser.parse_args(argv)
    configure_logging("monitor", settings.log_level, settings.log_format)

    store, health = MetricStore(histogram_buckets(settings)), Health()
    registry = build_registry(store, health, lambda: live_state(settings))
    schedule_app = create_celery_app("monitor", settings)  # only to read the beat entries from Redis
    registry.register(
        FailureCollector(
            store,
            dead_letters=lambda: dead_letter_store.count(redis_client(settings)),
            schedules=lambda: entry_timings(schedule_app),
            workers=lambda: list_workers(settings),
        )
    )
    registry.register(WorkflowCollector(lambda: _workflow_totals(settings), settings.runtime_buckets))
    registry.register(RedisMemoryCollector(settings))
    server = serve(make_app(registry, health, lambda: health_check(settings)), args.host, args.port)
    log.info("monitor serving /metrics and /health on http://%s:%d", args.host, args.port)

    stop = threading.Event()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        log.info("monitor stopping (signal %d)", signum)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        StreamConsumer(settings, store, health, args.name).run(stop)
    finally:
        server.shutdown()
        server.server_close()
