"""Entry point of the maintenance worker (``mallops serve maintenance``).

The pool is ``MALLOPS_MAINTENANCE_POOL``: ``prefork`` by default, because Celery enforces its soft and
hard time limits, ``reject_on_worker_lost`` and ``revoke --terminate`` only there (``long_running_task``,
``backup_database``). Its tasks are I/O-bound, so ``threads`` is a valid choice that idles in one process
of about 90 MB instead of about 250 MB for prefork's parent and two children (docs/performance.md), at
the price of those guarantees. Arguments given to ``mallops serve maintenance`` override these.
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
