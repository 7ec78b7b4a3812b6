"""Entry point of the maintenance worker (``mallops serve maintenance``).

Maintenance tasks are I/O-bound: backups wait on pg_dump or SQLite's online backup, clean-ups on the
database and Redis, the diagnostics on a timer. The worker therefore defaults to Celery's ``threads``
pool (``MALLOPS_MAINTENANCE_POOL``) with ``MALLOPS_WORKER_CONCURRENCY`` threads in one process: no
pool children to fork, no parent-to-child hand-off per task. pg_dump runs with its own timeout, which
bounds a backup where the threads pool cannot enforce Celery's time limits; ``revoke --terminate`` needs
``MALLOPS_MAINTENANCE_POOL=prefork``. Arguments given to ``mallops serve maintenance`` override these.
The bench (docs/performance.md) measures both: for short tasks threads use less CPU per task and about a
third of the memory of prefork's parent and two children.
"""

from __future__ import annotations

from celery import Celery

from services.maintenance.tasks import register_all
from shared.celery_app import create_celery_app
from shared.settings import Settings, get_settings
from shared.worker import run_worker

SERVICE = "maintenance"


def create_app(settings: Settings | None = None) -> Celery:
    app = create_celery_app(SERVICE, settings)
    register_all(app)
    return app


def worker_defaults(settings: Settings) -> list[str]:
    return [f"--pool={settings.maintenance_pool}"]


def main(argv: list[str]) -> None:
    settings = get_settings()
    run_worker(create_app(settings), SERVICE, [*worker_defaults(settings), *argv])
