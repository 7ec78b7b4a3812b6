"""The one Celery app factory that every worker, beat and the gateway use.

Building an app connects to nothing; it only configures. Queues and routes come from the catalog.

Delivery guarantees (docs/reliability.md): messages are acknowledged after the task ran (acks_late) and
put back when the worker process running them dies (reject_on_worker_lost). On Redis, a message whose
whole worker died is delivered again after ``MALLOPS_BROKER_VISIBILITY_TIMEOUT`` seconds, found by a
sweep every ``MALLOPS_BROKER_RESTORE_INTERVAL`` seconds. On RabbitMQ (an ``amqp://`` broker URL) the
queues are quorum queues and publishing waits for the broker's confirm.
"""

from __future__ import annotations

from celery import Celery
from kombu import Exchange, Queue  # type: ignore[attr-defined]

from shared.catalog import DEFAULT_QUEUE, QUEUES, task_routes
from shared.celery_extensions.result_store import backend_url
from shared.contracts import REDBEAT_KEY_PREFIX
from shared.settings import Settings, get_settings

HARD_TIME_LIMIT = 30 * 60
SOFT_TIME_LIMIT = 25 * 60
RESULT_STORE_RETRIES = 30


def task_queues(settings: Settings) -> list[Queue]:
    """The catalog's queues; quorum queues (replicated, durable) when the broker is RabbitMQ."""
    arguments = {"x-queue-type": "quorum"} if settings.broker_is_amqp else None
    return [
        Queue(q, Exchange(q, type="direct"), routing_key=q, queue_arguments=arguments)  # type: ignore[no-untyped-call]
        for q in QUEUES
    ]


def broker_transport_options(settings: Settings) -> dict[str, object]:
    if settings.broker_is_amqp:
        # a publish returns only once RabbitMQ has the message (publisher confirms)
        return {"confirm_publish": True}
    return {
        "visibility_timeout": settings.broker_visibility_timeout,
        # kombu sweeps every interval * throttle seconds (10 * 10 by default): make the interval the only knob
        "unacked_restore_interval": settings.broker_restore_interval,
        "unacked_restore_throttle": 1,
    }


def create_celery_app(name: str = "mallops", settings: Settings | None = None) -> Celery:
    """A configured Celery app. ``name`` is the service using it (it shows in worker names and logs)."""
    settings = settings or get_settings()
    app = Celery(f"mallops.{name}", set_as_current=False)
    app.conf.update(
        broker_url=settings.celery_broker_url,
        # a Redis backend whose state writes take one round trip and carry the buffered events (result_store.py)
        result_backend=backend_url(settings.celery_result_backend),
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
        result_expires=settings.result_expires_seconds,
        # a result that cannot be stored (Redis restarting) is retried with backoff (10 ms doubling to
        # 10 s, about 3 minutes in all) instead of failing a task whose work is done
        result_backend_always_retry=True,
        result_backend_max_retries=RESULT_STORE_RETRIES,
        result_extended=True,
        task_queues=task_queues(settings),
        task_default_queue=DEFAULT_QUEUE,
        task_default_exchange=DEFAULT_QUEUE,
        task_default_routing_key=DEFAULT_QUEUE,
        task_routes=task_routes(),
        task_create_missing_queues=False,
        worker_prefetch_multiplier=1,
        worker_hijack_root_logger=False,
        worker_send_task_events=False,
        broker_connection_retry_on_startup=True,
        broker_transport_options=broker_transport_options(settings),
        result_backend_transport_options={"visibility_timeout": settings.broker_visibility_timeout},
        redbeat_redis_url=settings.cache_redis_url,
        redbeat_key_prefix=REDBEAT_KEY_PREFIX,
        # explicit, so RedBeat does not fall back to (and warn about) broker_transport_options
        redbeat_redis_options={},
    )
    from shared import celery_extensions

    celery_extensions.install(app, settings)  # events, dead letters, revocations, redelivery
    return app
