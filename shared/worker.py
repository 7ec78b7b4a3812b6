"""Starting a service's Celery worker with the options its queue wants."""

from __future__ import annotations

from celery import Celery

from shared.catalog import SERVICE_QUEUES
from shared.settings import get_settings


def worker_argv(service: str, extra: list[str]) -> list[str]:
    """The ``celery worker`` arguments for ``service``; ``extra`` may override any of them."""
    settings = get_settings()
    argv = [
        "worker",
        f"--queues={SERVICE_QUEUES[service]}",
        f"--hostname={service}@%h",
        f"--concurrency={settings.worker_concurrency}",
        f"--loglevel={settings.log_level}",
        "--without-mingle",
        "--without-gossip",
    ]
    return argv + extra


def run_worker(app: Celery, service: str, extra: list[str]) -> None:
    app.worker_main(worker_argv(service, extra))
