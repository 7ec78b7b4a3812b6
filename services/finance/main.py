"""Entry point of the finance worker (``mallops serve finance``).

Finance tasks are short database jobs; the default prefork pool with ``MALLOPS_WORKER_CONCURRENCY``
processes suits them (Celery's time limits are enforced there). Arguments given to
``mallops serve finance`` are passed on to the worker.
"""

from __future__ import annotations

from celery import Celery

from services.finance.tasks import register_all
from shared.celery_app import create_celery_app
from shared.settings import Settings
from shared.worker import run_worker

SERVICE = "finance"


def create_app(settings: Settings | None = None) -> Celery:
    app = create_celery_app(SERVICE, settings)
    register_all(app)
    return app


def main(argv: list[str]) -> None:
    run_worker(create_app(), SERVICE, argv)
