"""Entry point of the notifier worker (``mallops serve notifier``).

Sending e-mail is I/O-bound: a task spends its time waiting on the SMTP server. The worker therefore
defaults to Celery's ``threads`` pool (``MALLOPS_NOTIFIER_POOL``) with ``MALLOPS_NOTIFIER_CONCURRENCY``
(8) threads in one process, rather than forking a process per concurrent send. Every SMTP call has a
timeout (``MALLOPS_SMTP_TIMEOUT``), which bounds a task where the threads pool cannot enforce Celery's
time limits. Arguments given to ``mallops serve notifier`` override these defaults.

Measured on the 2-core dev machine (48 e-mails to an aiosmtpd server answering DATA after 0.2 s, two
runs): threads x8 13-24 e-mails/s in 96 MiB; prefork x2 (the platform default) 6-7/s in 257 MiB;
prefork x8 12-18/s in 758 MiB. Threads give prefork-x8 throughput at an eighth of the memory.
"""

from __future__ import annotations

from celery import Celery

from services.notifier.tasks import register_all
from shared.celery_app import create_celery_app
from shared.settings import Settings, get_settings
from shared.worker import run_worker

SERVICE = "notifier"


def create_app(settings: Settings | None = None) -> Celery:
    app = create_celery_app(SERVICE, settings)
    register_all(app)
    return app


def worker_defaults(settings: Settings) -> list[str]:
    return [f"--pool={settings.notifier_pool}", f"--concurrency={settings.notifier_concurrency}"]


def main(argv: list[str]) -> None:
    settings = get_settings()
    run_worker(create_app(settings), SERVICE, [*worker_defaults(settings), *argv])
