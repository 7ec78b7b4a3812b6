"""The one Celery app factory that every worker, beat and the gateway use.

Building an app connects to nothing; it only configures. Queues and routes come from the catalog.
"""

from __future__ import annotations

from celery import Celery
from kombu import Exchange, Queue  # type: ignore[attr-defined]

from shared.catalog import DEFAULT_QUEUE, QUEUES, task_routes
from shared.settings import Settings, get_settings

HARD_TIME_LIMIT = 30 * 60
SOFT_TIME_LIMIT = 25 * 60
RESULT_EXPIRES = 60 * 60


def create_celery_app(name: str = "mallops", settings: Settings | None = None) -> Celery:
    """A configured Celery app. ``name`` is the service using it (it shows in worker names and logs)."""
    settings = settings or get_settings()
    app = Celery(f"mallops.{name}", set_as_current=False)
    app.conf.update(
        broker_url=settings.celery_broker_url,
        result_backend=settings.celery_result_backend,
        # JSON only: nothing that could execute code on deserialisation
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        result_accept_content=["json"],
        timezone=settings.timezone,
        enable_utc=True,
        task_track_started=True,
        task_time_limit=HARD_TIME_LIMIT,
        task_soft_time_limit=SOFT_TIME_LIMIT,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        result_expires=RESULT_EXPIRES,
        result_extended=True,
        task_queues=[
            Queue(q, Exchange(q, type="direct"), routing_key=q)  # type: ignore[no-untyped-call]
            for q in QUEUES
        ],
        task_default_queue=DEFAULT_QUEUE,
        task_default_exchange=DEFAULT_QUEUE,
        task_default_routing_key=DEFAULT_QUEUE,
        task_routes=task_routes(),
        task_create_missing_queues=False,
        worker_prefetch_multiplier=1,
        worker_hijack_root_logger=False,
        worker_send_task_events=False,
        broker_connection_retry_on_startup=True,
        broker_transport_options={"visibility_timeout": settings.broker_visibility_timeout},
        result_backend_transport_options={"visibility_timeout": settings.broker_visibility_timeout},
        redbeat_redis_url=settings.cache_redis_url,
        redbeat_key_prefix="mallops:redbeat:",
        # explicit, so RedBeat does not fall back to (and warn about) broker_transport_options
        redbeat_redis_options={},
    )
    if settings.events_enabled:
        from shared import events

        events.install(app, settings)  # lifecycle events for the monitor; once per process
    from shared import dead_letters, revocations

    dead_letters.install(app, settings)  # a malformed message is recorded and dropped, never fatal to a worker
    revocations.install(app, settings)  # a task revoked before a worker started is skipped by it too
    return app
