"""One-off runs at any future time: what the broker cannot hold safely waits in the database.

A Redis broker redelivers a message that a worker has held unacknowledged for
``MALLOPS_BROKER_VISIBILITY_TIMEOUT`` seconds, so a task whose ``eta``/``countdown`` lies further ahead
would run twice. Such a submission is stored instead as a ``deferred_tasks`` row with state
``SCHEDULED`` (the gateway, :func:`store`) and published by beat when due (:func:`publish_due`):

- once, even with two beats: a row is claimed by a conditional UPDATE (SCHEDULED -> PUBLISHED) in the
  same transaction that publishes it; a second beat's UPDATE waits for that transaction and then finds
  nothing to claim;
- never lost: the transaction commits only after the broker accepted the message, so a beat, Redis or
  broker failure before that leaves the row SCHEDULED for the next tick. (A beat killed in the instant
  between the broker's acceptance and the commit publishes it again at its next start: at least once,
  as everywhere in mallops.)
- on publishing, beat records it as the gateway records its own submissions (``shared/taskmeta.py``),
  so from then on it is an ordinary task that counts against its owner's unfinished-task quota.

While it waits it is listed by ``GET /api/v1/tasks?status=SCHEDULED`` and revoked by the usual revoke
(:func:`revoke`); an owner may hold at most ``MALLOPS_SCHEDULED_MAX_PER_USER`` waiting runs.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable, Sequence
from typing import Any

import redis
from celery import Celery
from sqlalchemy import delete, func, select, update
from sqlalchemy.orm import Session, sessionmaker

from shared.catalog import get_spec
from shared.contracts import OWNER_HEADER, DeferredState
from shared.models import DeferredTask
from shared.settings import Settings
from shared.taskmeta import TaskMeta, record_published

log = logging.getLogger("mallops.deferred")

SCHEDULED, PUBLISHED, REVOKED = DeferredState.SCHEDULED, DeferredState.PUBLISHED, DeferredState.REVOKED
BATCH = 100  # rows published per beat tick at most
PUBLISH_RETRY_POLICY = {"max_retries": 1, "interval_start": 0, "interval_step": 0.5, "interval_max": 1}


class TooManyWaiting(Exception):
    """The owner already holds ``limit`` waiting runs."""

    def __init__(self, owner: str, limit: int, waiting: int) -> None:
        super().__init__(owner, limit, waiting)
        self.owner, self.limit, self.waiting = owner, limit, waiting


def horizon(settings: Settings) -> float:
    """Seconds ahead that a message may safely wait in the broker; anything further waits here."""
    return float(settings.broker_visibility_timeout)


def run_at(eta: dt.datetime | None, countdown: float | None, now: dt.datetime) -> dt.datetime | None:
    """When a submission asks to run (``eta`` wins over ``countdown``), or None for at once."""
    if eta is not None:
        return eta.astimezone(dt.UTC)
    if countdown is not None:
        return now + dt.timedelta(seconds=countdown)
    return None


def is_deferred(at: dt.datetime | None, now: dt.datetime, settings: Settings) -> bool:
    return at is not None and (at - now).total_seconds() > horizon(settings)


def waiting_count(session: Session, owner: str) -> int:
    query = select(func.count()).select_from(DeferredTask).where(DeferredTask.owner == owner)
    return int(session.scalar(query.where(DeferredTask.state == SCHEDULED)) or 0)


def store(session: Session, rows: Sequence[DeferredTask], limit: int | None) -> None:
    """Add waiting runs (all of one owner); :class:`TooManyWaiting` beyond ``limit`` (None: no cap)."""
    if not rows:
        return
    owner = rows[0].owner
    if limit is not None:
        waiting = waiting_count(session, owner)
        if waiting + len(rows) > limit:
            raise TooManyWaiting(owner, limit, waiting)
    for row in rows:
        row.state = SCHEDULED
        session.add(row)


def forget(session: Session, task_ids: Sequence[str]) -> None:
    """Undo :func:`store` (the rest of a batch could not be published)."""
    if task_ids:
        session.execute(delete(DeferredTask).where(DeferredTask.task_id.in_(task_ids)))


def find(session: Session, task_id: str) -> DeferredTask | None:
    return session.get(DeferredTask, task_id)


def waiting(
    session: Session, owner: str | None, limit: int, offset: int, task_name: str | None = None
) -> tuple[int, list[DeferredTask]]:
    """Waiting runs (an owner's, or everyone's; of one task), soonest first, and how many in all."""
    where = [DeferredTask.state == SCHEDULED]
    if owner is not None:
        where.append(DeferredTask.owner == owner)
    if task_name is not None:
        where.append(DeferredTask.task_name == task_name)
    total = int(session.scalar(select(func.count()).select_from(DeferredTask).where(*where)) or 0)
    query = select(DeferredTask).where(*where).order_by(DeferredTask.eta, DeferredTask.task_id)
    return total, list(session.scalars(query.offset(offset).limit(limit)))


def revoke(session: Session, task_id: str) -> bool:
    """Cancel a waiting run; False when it is no longer waiting (published already, or revoked)."""
    result = session.execute(
        update(DeferredTask)
        .where(DeferredTask.task_id == task_id, DeferredTask.state == SCHEDULED)
        .values(state=REVOKED)
    )
    return bool(getattr(result, "rowcount", 0) == 1)


def publish_due(
    sessions: sessionmaker[Session],
    app: Celery,
    cache: redis.Redis[str],
    settings: Settings,
    now: dt.datetime,
    limit: int = BATCH,
) -> list[str]:
    """Publish the waiting runs due at ``now``, each claimed and published in one transaction; the ids.

    An error while publishing one (broker or Redis down) rolls its claim back and stops this round: the
    run stays SCHEDULED for the next call.
    """
    with sessions() as session:
        due = list(
            session.scalars(
                select(DeferredTask.task_id)
                .where(DeferredTask.state == SCHEDULED, DeferredTask.eta <= now)
                .order_by(DeferredTask.eta)
                .limit(limit)
            )
        )
    published: list[str] = []
    for task_id in due:
        with sessions() as session, session.begin():
            if not _claim(session, task_id):
                continue  # another beat published it, or it was revoked meanwhile
            row = session.get(DeferredTask, task_id)
            assert row is not None
            sent = _publish(app, cache, settings, row)
        if sent:
            published.append(task_id)
            log.info("deferred: published %s (%s, owner %s, due %s)", task_id, row.task_name, row.owner, row.eta)
    return published


def _claim(session: Session, task_id: str) -> bool:
    """Claim a waiting run for publishing (SCHEDULED -> PUBLISHED); the row stays locked until commit."""
    result = session.execute(
        update(DeferredTask)
        .where(DeferredTask.task_id == task_id, DeferredTask.state == SCHEDULED)
        .values(state=PUBLISHED, published_at=dt.datetime.now(dt.UTC))
    )
    return bool(getattr(result, "rowcount", 0) == 1)


def _publish(app: Celery, cache: redis.Redis[str], settings: Settings, row: DeferredTask) -> bool:
    """Record and publish a claimed run; False (and REVOKED) for a task no longer in the catalog."""
    spec = get_spec(row.task_name)
    if spec is None:  # the task left the catalog while the run waited: publishing it would only dead-letter
        log.warning("deferred: %s names %r, no longer in the catalog; revoked", row.task_id, row.task_name)
        row.state = REVOKED
        return False
    meta = TaskMeta(row.task_id, spec.name, row.queue, row.owner, list(row.args), dict(row.kwargs), row.created_at)
    record_published(cache, meta, settings.task_meta_ttl_seconds)
    options: dict[str, Any] = {"queue": row.queue, "headers": {OWNER_HEADER: row.owner}}
    if row.priority is not None:
        options["priority"] = row.priority
    app.send_task(
        spec.celery_name,
        kwargs=dict(row.payload),
        task_id=row.task_id,
        retry=True,
        retry_policy=PUBLISH_RETRY_POLICY,
        **options,
    )
    return True


Clock = Callable[[], dt.datetime]


def settings_clock(settings: Settings) -> Clock:
    """The wall clock in UTC, shifted by ``MALLOPS_CLOCK_OFFSET_SECONDS`` (0 outside tests and drills)."""
    offset = dt.timedelta(seconds=settings.clock_offset_seconds)
    return lambda: dt.datetime.now(dt.UTC) + offset
