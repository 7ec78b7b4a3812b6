"""Starting a service's Celery worker with the options its queue wants."""

from __future__ import annotations

import gc
import logging
import os
import warnings
from typing import Any

from celery import Celery, signals
from celery.exceptions import SecurityWarning

from shared.catalog import SERVICE_QUEUES
from shared.contracts import EVENT_STREAM
from shared.logs import configure_logging
from shared.settings import get_settings

log = logging.getLogger("mallops.worker")


def worker_argv(service: str, extra: list[str]) -> list[str]:
    """The ``celery worker`` arguments for ``service``; ``extra`` may override any of them.

    ``-q`` leaves out Celery's start-up banner: its ``task events: OFF`` is about Celery's own event
    protocol, which mallops does not use (its events go to the stream ``mallops:events``); one log
    line, :func:`_log_worker_started`, says what the worker runs instead.
    """
    settings = get_settings()
    argv = [
        "-q",
        "worker",
        f"--queues={SERVICE_QUEUES[service]}",
        f"--hostname={service}@%h",
        f"--concurrency={settings.worker_concurrency}",
        f"--loglevel={settings.log_level}",
        "--without-mingle",
        "--without-gossip",
    ]
    return argv + extra


def _log_worker_started(sender: Any = None, instance: Any = None, **_: Any) -> None:
    queues = ", ".join(sorted(q.name for q in instance.app.amqp.queues.consume_from.values()))
    pool = getattr(instance.pool_cls, "__module__", str(instance.pool_cls)).rsplit(".", 1)[-1]
    events = f"lifecycle events to the Redis stream {EVENT_STREAM}" if get_settings().events_enabled else "events off"
    log.info("%s: queue %s, pool %s x%s, %s", sender, queues, pool, instance.concurrency, events)


def run_worker(app: Celery, service: str, extra: list[str]) -> None:
    settings = get_settings()
    configure_logging(service, settings.log_level, settings.log_format, task_lines=settings.log_task_lines)
    # Celery warns with a 20-line block when a worker runs as root; one line says the same
    warnings.filterwarnings("ignore", category=SecurityWarning)
    if os.geteuid() == 0:
        log.warning("%s worker runs as root: fine on a development machine, not in production", service)
    signals.celeryd_after_setup.connect(_log_worker_started, weak=False, dispatch_uid="mallops.worker.started")
    signals.worker_init.connect(_freeze_heap, weak=False, dispatch_uid="mallops.worker.freeze")
    app.worker_main(worker_argv(service, extra))


def _freeze_heap(**_: Any) -> None:
    """Before the pool forks: what the imports built moves out of the collector's sight, so a prefork
    child's collections do not write to (and copy) the pages it shares with its parent (PSS)."""
    gc.collect()
    gc.freeze()
