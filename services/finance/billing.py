"""Overdue bills: a pending bill whose due date has passed becomes overdue, once."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from shared.models import Bill, Notification, utcnow


@dataclass(frozen=True)
class OverdueCheck:
    as_of: dt.date
    newly_overdue: list[int]  # bills this run moved from pending to overdue
    overdue: int  # all overdue bills after the run
    pending: int  # bills still pending (not yet due)

    def counts(self) -> dict[str, object]:
        return {
            "as_of": self.as_of.isoformat(),
            "newly_overdue": len(self.newly_overdue),
            "overdue": self.overdue,
            "pending": self.pending,
        }


def mark_overdue(session: Session, as_of: dt.date, now: dt.datetime | None = None) -> OverdueCheck:
    """Mark every pending bill due before ``as_of`` as overdue.

    Idempotent: one conditional UPDATE, so a bill is moved (and reported in ``newly_overdue``) by exactly
    one run, even when two runs overlap; a second run the same day finds nothing new.
    """
    moved = session.execute(
        update(Bill)
        .where(Bill.status == "pending", Bill.due_date < as_of)
        .values(status="overdue", overdue_since=now or utcnow())
        .returning(Bill.id)
        .execution_options(synchronize_session=False)
    )
    newly = sorted(int(bill_id) for bill_id in moved.scalars())
    counts = dict(
        session.execute(
            select(Bill.status, func.count()).where(Bill.status.in_(("pending", "overdue"))).group_by(Bill.status)
        ).all()
    )
    return OverdueCheck(as_of, newly, int(counts.get("overdue", 0)), int(counts.get("pending", 0)))


def unreminded_overdue(session: Session, moved_before: dt.datetime, moved_after: dt.datetime) -> list[int]:
    """Bills moved to overdue between ``moved_after`` and ``moved_before`` that have no reminder row at all.

    The run that moved them commits before it enqueues their reminders; a worker killed in between
    leaves them overdue and never reminded (a redelivered run finds nothing new to move). The next run
    finds them here and enqueues them again. ``moved_before`` leaves the normal path a grace period, so
    a reminder still in a queue is not asked for twice (and if it is, its dedupe key makes that harmless).
    """
    reminded = select(Notification.id).where(Notification.bill_id == Bill.id, Notification.kind == "bill_reminder")
    return sorted(
        int(bill_id)
        for bill_id in session.scalars(
            select(Bill.id).where(
                Bill.status == "overdue",
                Bill.overdue_since < moved_before,
                Bill.overdue_since >= moved_after,
                ~reminded.exists(),
            )
        )
    )


def revert_overdue(session: Session, bill_ids: list[int]) -> int:
    """Put bills this run just marked overdue back to pending (their reminders could not be enqueued),
    so that the retry moves them, and reminds them, again. Returns the number reverted."""
    reverted = 0
    for batch in chunks(sorted(set(bill_ids)), 500):
        result = session.execute(
            update(Bill)
            .where(Bill.id.in_(batch), Bill.status == "overdue")
            .values(status="pending", overdue_since=None)
            .execution_options(synchronize_session=False)
        )
        reverted += int(result.rowcount)  # type: ignore[attr-defined]
    return reverted


def chunks(ids: list[int], size: int) -> list[list[int]]:
    return [ids[i : i + size] for i in range(0, len(ids), size)]
