"""Deleting rows past their retention in small batches, each its own transaction.

Large deletes in one statement hold locks (and, on SQLite, the one writer slot) for as long as they run;
batches keep every transaction short so that workers and the gateway keep writing meanwhile.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Sequence
from typing import Any

from sqlalchemy import ColumnElement, delete, select
from sqlalchemy.orm import InstrumentedAttribute, Session

from shared import models

DEFAULT_BATCH = 1000


def cutoff_days(days: int, now: dt.datetime | None = None) -> dt.datetime:
    """The instant ``days`` days before ``now`` (UTC)."""
    return (now or models.utcnow()) - dt.timedelta(days=days)


def delete_in_batches(
    session: Session,
    model: type[models.Base],
    condition: ColumnElement[bool],
    *,
    batch_size: int = DEFAULT_BATCH,
    extra_columns: Sequence[InstrumentedAttribute[Any]] = (),
    after_commit: Callable[[Sequence[Any]], None] | None = None,
) -> int:
    """Delete every ``model`` row matching ``condition``, ``batch_size`` rows per committed transaction.

    ``extra_columns`` are read for each batch and handed, as rows, to ``after_commit`` once the batch's
    delete is committed (e.g. to remove the files the rows pointed at). Returns the number of rows deleted.
    """
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    pk = model.__mapper__.primary_key[0]
    deleted = 0
    while True:
        rows = session.execute(select(pk, *extra_columns).where(condition).order_by(pk).limit(batch_size)).all()
        if not rows:
            session.commit()
            return deleted
        session.execute(delete(model).where(pk.in_([row[0] for row in rows])))
        session.commit()
        deleted += len(rows)
        if after_commit is not None:
            after_commit(rows)
        if len(rows) < batch_size:
            return deleted
