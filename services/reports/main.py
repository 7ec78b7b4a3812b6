"""Entry point of the reports worker (``mallops serve reports``)."""

from __future__ import annotations

from celery import Celery

from services.reports.tasks import register_all
from shared.celery_app import create_celery_app
from shared.settings import Settings
from shared.worker import run_worker

SERVICE = "reports"


def create_app(settings: Settings | None = None) -> Celery:
    app = create_celery_app(SERVICE, settings)
    register_all(app)
    return app


def main(argv: list[str]) -> None:
    run_worker(create_app(), SERVICE, argv)
