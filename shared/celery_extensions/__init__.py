"""mallops' extensions to Celery, installed on every app that :func:`shared.celery_app.create_celery_app`
builds (workers, beat, the gateway):

- :mod:`~shared.celery_extensions.events`: task and worker lifecycle events into the Redis stream that the
  monitor reads, and worker heartbeats;
- :mod:`~shared.celery_extensions.dead_letters`: a worker transport and consumer that record and drop a
  malformed message instead of dying or looping on it; its channel pops with
  :mod:`~shared.celery_extensions.reliable_pop` (the message recorded as unacknowledged by the pop itself);
- :mod:`~shared.celery_extensions.revocations`: revocations kept in Redis, so a worker started later skips
  a revoked task too;
- :mod:`~shared.celery_extensions.redelivery`: a sweeper that puts back a dead worker's messages in workers
  without an event loop;
- :mod:`~shared.celery_extensions.timer_compaction`: cancelled time-limit timers dropped from a prefork
  worker's event loop (else its main process holds every task of the last soft time limit);
- :mod:`~shared.celery_extensions.task_base`: the base class of every task (argument validation, retry
  classification, poison-message cap, progress events) and :func:`~shared.celery_extensions.task_base.register`.

They are configured by one :class:`~shared.celery_extensions.config.CeleryExtensions` object built from the
settings and attached to the app.
"""

from __future__ import annotations

from celery import Celery

from shared.celery_extensions import dead_letters, events, redelivery, revocations, timer_compaction
from shared.celery_extensions.config import ATTRIBUTE, CeleryExtensions
from shared.settings import Settings


def install(app: Celery, settings: Settings) -> CeleryExtensions:
    """Build the app's extensions from ``settings``, attach them to the app and connect their signal
    handlers (the handlers once per process; they find each app's extensions through the sender)."""
    extensions = CeleryExtensions(
        settings=settings,
        revoked=revocations.RevokedIds(settings.cache_redis_url),
        events=events.build(app, settings) if settings.events_enabled else None,
    )
    setattr(app, ATTRIBUTE, extensions)
    redelivery.connect()  # workers without an event loop also put back a dead worker's messages
    dead_letters.configure(app, settings)  # a malformed message is recorded and dropped, never fatal to a worker
    revocations.connect()  # a task revoked before a worker started is skipped by it too
    timer_compaction.install(app)  # a prefork worker's cancelled time-limit timers do not pile up
    return extensions
