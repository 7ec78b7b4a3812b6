"""Thin Celery task bodies of the finance service.

Follow-up work is enqueued by task name after the database commit (``send_task``), never by importing
another service's code. The modules that need SQLAlchemy (billing, reminders, revenue, the database
session) are imported by the task that uses them, not when the worker starts: an idle worker and its
prefork children hold no SQLAlchemy until they run a task (docs/performance.md, idle memory).
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from celery import Celery

from services.finance.periods import local_today, local_zone, previous_month
from shared.cache import redis_client
from shared.catalog import CATALOG
from shared.celery_extensions.task_base import MallopsTask, register
from shared.contracts import OWNER_HEADER
from shared.errors import TransientError

REMINDER_BATCH = 500  # bill ids per send_bill_reminders message
REMINDER_GRACE = dt.timedelta(minutes=5)  # an overdue bill with no reminder row after this was left behind
ORPHAN_LOOKBACK = dt.timedelta(days=2)  # how far back check_pending_bills looks for bills left behind


def _owner_headers(task: MallopsTask) -> dict[str, str]:
    """Follow-up tasks keep the owner of the task that caused them."""
    owner = task.request.get(OWNER_HEADER)
    return {OWNER_HEADER: str(owner)} if owner else {}


def _enqueue(task: MallopsTask, name: str, kwargs: dict[str, Any]) -> None:
    spec = CATALOG[name]
    task.app.send_task(spec.celery_name, kwargs=kwargs, queue=spec.queue, headers=_owner_headers(task))


def check_pending_bills(task: MallopsTask, as_of: dt.date | None) -> dict[str, object]:
    from services.finance import billing
    from shared.db import session_scope

    settings = task.settings
    day = as_of or local_today(local_zone(settings.timezone))
    now = dt.datetime.now(dt.UTC)
    with session_scope(settings) as session:
        check = billing.mark_overdue(session, day)
        orphans = billing.unreminded_overdue(
            session, moved_before=now - REMINDER_GRACE, moved_after=now - ORPHAN_LOOKBACK
        )
    batches = billing.chunks(check.newly_overdue, REMINDER_BATCH)
    for done, bill_ids in enumerate(batches):
        try:
            _enqueue(task, "send_bill_reminders", {"bill_ids": bill_ids})
        except Exception as exc:  # the broker is unreachable: undo what cannot be reminded, then retry
            unsent = [bill_id for batch in batches[done:] for bill_id in batch]
            with session_scope(settings) as session:
                billing.revert_overdue(session, unsent)
            raise TransientError(
                f"could not enqueue reminders for {len(unsent)} newly overdue bill(s) "
                f"({type(exc).__name__}: {exc}); they are pending again for the retry"
            ) from exc
    orphan_batches = billing.chunks(orphans, REMINDER_BATCH)
    for bill_ids in orphan_batches:  # an earlier run died after its commit: remind them now
        _enqueue(task, "send_bill_reminders", {"bill_ids": bill_ids})
    return check.counts() | {"reminder_tasks": len(batches) + len(orphan_batches), "unreminded": len(orphans)}


def send_bill_reminders(task: MallopsTask, bill_ids: list[int] | None, days_overdue: int | None) -> dict[str, object]:
    from services.finance import reminders
    from shared.db import session_scope

    settings = task.settings
    today = local_today(local_zone(settings.timezone))
    with session_scope(settings) as session:
        run = reminders.prepare(
            session, today=today, bill_ids=bill_ids, days_overdue=None if bill_ids is not None else days_overdue
        )
    for reminder in run.to_send:
        _enqueue(task, "send_notification_email", reminder.email_kwargs())
    return run.counts()


def calculate_monthly_revenue(task: MallopsTask, year: int | None, month: int | None) -> dict[str, object]:
    from sqlalchemy.exc import IntegrityError

    from services.finance import revenue
    from shared.db import session_scope

    settings = task.settings
    tz = local_zone(settings.timezone)
    if year is None or month is None:
        year, month = previous_month(local_today(tz))
    try:
        with session_scope(settings) as session:
            result = revenue.calculate(session, year, month, tz)
    except IntegrityError as exc:  # another run replaced the same month at the same moment
        raise TransientError(f"concurrent revenue run for {year:04d}-{month:02d}: {exc.orig}") from exc
    key = revenue.cache(redis_client(settings), result)
    return result.summary() | {"cache_key": key}


def register_all(app: Celery) -> None:
    register(app, "check_pending_bills", check_pending_bills)
    register(app, "send_bill_reminders", send_bill_reminders)
    register(app, "calculate_monthly_revenue", calculate_monthly_revenue)
