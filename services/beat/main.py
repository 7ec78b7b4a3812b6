"""Entry point of the beat scheduler (``mallops serve beat``).

RedBeat keeps the schedule in Redis (cache database, keys under ``mallops:redbeat:``) and holds a Redis
lock while it runs, so a second beat replica waits as a standby instead of firing the same entries
again; it takes over when the lock is released (clean stop) or expires (``MALLOPS_BEAT_LOCK_TIMEOUT``).
Default entries come from the catalog and are seeded once (:func:`shared.schedules.ensure_defaults`, at
every start: a deleted default is not seeded again); entries added or changed through
:mod:`shared.schedules` are read on every tick, at most ``MALLOPS_BEAT_MAX_INTERVAL`` apart. Every tick
also publishes the deferred one-off runs that are due (:mod:`shared.deferred`, from the database).
"""

from __future__ import annotations

from celery import Celery

from shared.celery_app import create_celery_app
from shared.logs import configure_logging
from shared.schedules import ensure_defaults
from shared.settings import Settings, get_settings

SERVICE = "beat"
SCHEDULER = "services.beat.scheduler.MallopsScheduler"  # RedBeat, riding out Redis outages


def create_app(settings: Settings | None = None) -> Celery:
    settings = settings or get_settings()
    if settings.beat_lock_timeout < 2 * settings.beat_max_interval:
        raise ValueError("MALLOPS_BEAT_LOCK_TIMEOUT must be at least twice MALLOPS_BEAT_MAX_INTERVAL")
    app = create_celery_app(SERVICE, settings)
    app.conf.update(
        beat_scheduler=SCHEDULER,
        beat_max_loop_interval=settings.beat_max_interval,
        # the schedule lives in Redis only: a static beat_schedule would overwrite runtime edits
        beat_schedule={},
        redbeat_lock_timeout=settings.beat_lock_timeout,
        # ride out a short Redis restart instead of exiting (RedBeat retries with backoff)
        redbeat_redis_options={"retry_period": 120},
    )
    return app


def beat_argv(settings: Settings, extra: list[str]) -> list[str]:
    # -q: without Celery's start-up banner; beat logs "Starting..." and the lock it holds
    return ["-q", "beat", f"--scheduler={SCHEDULER}", f"--loglevel={settings.log_level}", *extra]


def main(argv: list[str]) -> None:
    settings = get_settings()
    configure_logging(SERVICE, settings.log_level, settings.log_format)
    app = create_app(settings)
    ensure_defaults(app)
    app.start(beat_argv(settings, argv))
