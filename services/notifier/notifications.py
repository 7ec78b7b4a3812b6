"""The notification rows behind e-mails: claiming one for sending, recording the outcome, retention.

Sending is at-most-once per row in normal operation: a worker first *claims* the row with one
conditional UPDATE (``queued``/``failed`` -> ``sending``), so a message delivered twice, or two workers
holding copies of it, send one e-mail; a row already ``sent`` is never sent again. While a row is
``sending``, ``sent_at`` holds the claim time; a claim older than :data:`STALE_CLAIM` (a worker that
died mid-send) may be taken over.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Literal

from sqlalchemy import ColumnElement, delete, or_, select, true, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from shared.db import session_scope
from shared.models import Notification, utcnow
from shared.settings import Settings

STALE_CLAIM = dt.timedelta(minutes=10)
CLEANUP_BATCH = 1000
ERROR_MAX = 2000

Claim = Literal["claimed", "already_sent", "in_progress", "missing"]


@dataclass(frozen=True)
class Outgoing:
    """What the mailer needs to send one claimed notification."""

    id: int
    email: str
    subject: str
    message: str
    language: str


def record_manual(session: Session, *, dedupe_key: str, email: str, subject: str, message: str, language: str) -> int:
    """The id of the notification row for a send that did not come with one (created once per key)."""
    values = {
        "dedupe_key": dedupe_key,
        "kind": "manual",
        "email": email,
        "subject": subject,
        "message": message,
        "language": language,
        "status": "queued",
        "created_at": utcnow(),
    }
    dialect = session.get_bind().dialect.name
    insert = pg_insert if dialect == "postgresql" else sqlite_insert
    session.execute(insert(Notification).values(**values).on_conflict_do_nothing(index_elements=["dedupe_key"]))
    found = session.scalar(select(Notification.id).where(Notification.dedupe_key == dedupe_key))
    assert found is not None
    return int(found)


def claim(
    session: Session, notification_id: int, now: dt.datetime | None = None, *, take_over: bool = False
) -> tuple[Claim, Outgoing | None]:
    """Take the row for sending. Only one caller gets ``claimed`` for a row until it is released.

    ``take_over``: the caller runs a *redelivered* message, which the broker hands out again only when the
    worker of its previous delivery died or lost its connection; a ``sending`` claim is then taken over at
    once instead of after :data:`STALE_CLAIM`, else an e-mail whose worker died mid-send would never go
    out (tests/reliability). The e-mail goes out twice only if that worker died in the moment between the
    SMTP server's acceptance and marking the row sent.
    """
    now = now or utcnow()
    stale: ColumnElement[bool] = true() if take_over else Notification.sent_at < now - STALE_CLAIM
    claimed = session.execute(
        update(Notification)
        .where(
            Notification.id == notification_id,
            or_(
                Notification.status.in_(("queued", "failed")),
                (Notification.status == "sending") & stale,
            ),
        )
        .values(status="sending", sent_at=now)
        .execution_options(synchronize_session=False)
    )
    row = session.get(Notification, notification_id, populate_existing=True)
    if row is None:
        return "missing", None
    if claimed.rowcount == 1:  # type: ignore[attr-defined]
        return "claimed", Outgoing(row.id, row.email, row.subject, row.message, row.language)
    return ("already_sent" if row.status == "sent" else "in_progress"), None


def mark_sent(session: Session, notification_id: int) -> None:
    session.execute(
        update(Notification)
        .where(Notification.id == notification_id)
        .values(status="sent", sent_at=utcnow(), error=None)
        .execution_options(synchronize_session=False)
    )


def release(session: Session, notification_id: int, error: str, *, final: bool) -> None:
    """Record a failed attempt: ``failed`` if no retry follows, else back to ``queued`` for the retry."""
    session.execute(
        update(Notification)
        .where(Notification.id == notification_id, Notification.status == "sending")
        .values(status="failed" if final else "queued", sent_at=None, error=error[:ERROR_MAX])
        .execution_options(synchronize_session=False)
    )


@dataclass(frozen=True)
class CleanupResult:
    deleted: int
    batches: int
    cutoff: dt.datetime

    def as_dict(self) -> dict[str, object]:
        return {"deleted": self.deleted, "batches": self.batches, "cutoff": self.cutoff.isoformat()}


def cleanup_batch(session: Session, cutoff: dt.datetime, batch_size: int = CLEANUP_BATCH) -> int:
    """Delete up to ``batch_size`` notifications created before ``cutoff``; the number deleted."""
    ids = list(
        session.scalars(
            select(Notification.id).where(Notification.created_at < cutoff).order_by(Notification.id).limit(batch_size)
        )
    )
    if ids:
        session.execute(
            delete(Notification).where(Notification.id.in_(ids)).execution_options(synchronize_session=False)
        )
    return len(ids)


def retention_cutoff(days: int, now: dt.datetime | None = None) -> dt.datetime:
    return (now or utcnow()) - dt.timedelta(days=days)


def cleanup_old(settings: Settings, days: int, batch_size: int = CLEANUP_BATCH) -> CleanupResult:
    """Delete notifications older than ``days`` in batches, one transaction per batch."""
    cutoff = retention_cutoff(days)
    deleted = batches = 0
    while True:
        with session_scope(settings) as session:
            count = cleanup_batch(session, cutoff, batch_size)
        if count:
            deleted += count
            batches += 1
        if count < batch_size:
            return CleanupResult(deleted, batches, cutoff)
