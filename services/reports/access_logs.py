"""The gateway's access log: from its Redis buffer into ``access_logs``, daily statistics, retention.

Draining never loses an entry. One drainer at a time (a Redis lock) moves a batch from the buffer
(``shared.contracts.ACCESS_LOG_BUFFER``) to a processing list in one MULTI transaction, inserts it, commits,
and only then deletes the processing list. If the insert fails or the worker dies, the entries stay in
the processing list and the next run inserts them first; ``request_id`` is unique, so entries already
committed are skipped, never inserted twice. Entries that are not valid JSON of the documented shape are
skipped and counted.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any
from zoneinfo import ZoneInfo

import redis
import redis.exceptions
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from services.reports.upserts import insert_ignoring, upsert
from shared import models
from shared.contracts import ACCESS_LOG_BUFFER
from shared.db import session_scope
from shared.retention import cutoff_days, delete_in_batches
from shared.settings import Settings

log = logging.getLogger("mallops.reports.access_logs")

PROCESSING_LIST = f"{ACCESS_LOG_BUFFER}:processing"
DRAIN_LOCK = f"{ACCESS_LOG_BUFFER}:lock"
LOCK_SECONDS = 300
MAX_BATCHES_PER_RUN = 200
PATH_LENGTH = 300
ANONYMOUS = "anonymous"


class AccessLogEntry(BaseModel):
    """One buffered request, as the gateway writes it."""

    model_config = ConfigDict(extra="ignore")

    request_id: str = Field(min_length=1, max_length=64)
    ts: dt.datetime
    method: str = Field(min_length=1, max_length=10)
    path: str = Field(min_length=1)
    status: int = Field(ge=100, le=599)
    duration_ms: float = Field(ge=0)
    principal: str | None = Field(default=None, max_length=100)
    client_ip: str | None = Field(default=None, max_length=64)

    @field_validator("path")
    @classmethod
    def _fit_column(cls, value: str) -> str:
        return value[:PATH_LENGTH]

    @field_validator("ts")
    @classmethod
    def _utc(cls, value: dt.datetime) -> dt.datetime:
        return value.replace(tzinfo=dt.UTC) if value.tzinfo is None else value.astimezone(dt.UTC)


@dataclass
class DrainResult:
    inserted: int = 0
    duplicates: int = 0
    malformed: int = 0
    batches: int = 0
    remaining: int = 0
    skipped: bool = False  # another drain held the lock

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def parse_entries(raw: Sequence[str]) -> tuple[list[AccessLogEntry], int]:
    """The valid entries of a batch and the number of malformed ones."""
    entries: list[AccessLogEntry] = []
    malformed = 0
    for item in raw:
        try:
            entries.append(AccessLogEntry.model_validate(json.loads(item)))
        except (ValueError, TypeError, ValidationError) as exc:
            malformed += 1
            log.warning("skipping malformed access-log entry %.200r: %s", item, str(exc).splitlines()[0])
    return entries, malformed


def store_entries(session: Session, entries: Sequence[AccessLogEntry]) -> tuple[int, int]:
    """Insert entries whose request_id is new; returns (inserted, duplicates)."""
    unique: dict[str, AccessLogEntry] = {}
    for entry in entries:
        unique.setdefault(entry.request_id, entry)
    existing: set[str] = set()
    ids = list(unique)
    for i in range(0, len(ids), 500):
        existing.update(
            session.scalars(
                select(models.AccessLog.request_id).where(models.AccessLog.request_id.in_(ids[i : i + 500]))
            )
        )
    rows = [entry.model_dump() for rid, entry in unique.items() if rid not in existing]
    insert_ignoring(session, models.AccessLog, rows, keys=["request_id"])
    return len(rows), len(entries) - len(rows)


def _claim(client: redis.Redis[str], batch_size: int) -> list[str]:
    """Move up to ``batch_size`` entries from the buffer's head to the processing list, atomically."""
    count = min(batch_size, client.llen(ACCESS_LOG_BUFFER))
    if count == 0:
        return []
    pipe = client.pipeline(transaction=True)
    for _ in range(count):
        pipe.lmove(ACCESS_LOG_BUFFER, PROCESSING_LIST, "LEFT", "RIGHT")
    return [item for item in pipe.execute() if item is not None]


def drain(
    settings: Settings, client: redis.Redis[str], batch_size: int = 1000, max_batches: int = MAX_BATCHES_PER_RUN
) -> DrainResult:
    """Move buffered access-log entries into ``access_logs``, ``batch_size`` per transaction."""
    result = DrainResult()
    lock = client.lock(DRAIN_LOCK, timeout=LOCK_SECONDS, blocking=False)
    if not lock.acquire():
        result.skipped = True
        result.remaining = client.llen(ACCESS_LOG_BUFFER)
        return result
    try:
        for _ in range(max_batches):
            # entries left by a run that failed before its commit was confirmed go first
            raw = client.lrange(PROCESSING_LIST, 0, -1) or _claim(client, batch_size)
            if not raw:
                break
            entries, malformed = parse_entries(raw)
            with session_scope(settings) as session:
                inserted, duplicates = store_entries(session, entries)
            client.delete(PROCESSING_LIST)  # only after the commit
            result.inserted += inserted
            result.duplicates += duplicates
            result.malformed += malformed
            result.batches += 1
            lock.reacquire()
    finally:
        with contextlib.suppress(redis.exceptions.LockError):
            lock.release()
    result.remaining = client.llen(ACCESS_LOG_BUFFER)
    return result


def day_bounds(day: dt.date, zone: ZoneInfo) -> tuple[dt.datetime, dt.datetime]:
    start = dt.datetime.combine(day, dt.time(), zone)
    end = dt.datetime.combine(day + dt.timedelta(days=1), dt.time(), zone)
    return start.astimezone(dt.UTC), end.astimezone(dt.UTC)


def access_statistics(session: Session, day: dt.date, zone: ZoneInfo) -> dict[str, Any]:
    """Requests per path, principal (``anonymous`` when none) and status on local day ``day``, upserted
    into ``access_statistics``."""
    start, end = day_bounds(day, zone)
    log_ = models.AccessLog
    principal = func.coalesce(log_.principal, ANONYMOUS)
    groups = session.execute(
        select(log_.path, principal, log_.status, func.count(), func.avg(log_.duration_ms), func.max(log_.duration_ms))
        .where(log_.ts >= start, log_.ts < end)
        .group_by(log_.path, principal, log_.status)
    ).all()
    rows = [
        {
            "day": day,
            "path": path,
            "principal": who,
            "status": status,
            "requests": count,
            "avg_ms": round(float(avg), 3),
            "max_ms": float(peak),
        }
        for path, who, status, count, avg, peak in groups
    ]
    for i in range(0, len(rows), 1000):
        upsert(session, models.AccessStatistic, rows[i : i + 1000], keys=("day", "path", "principal", "status"))
    return {"date": day.isoformat(), "groups": len(rows), "requests": sum(r["requests"] for r in rows)}


def cleanup_old_records(
    session: Session, days: int, batch_size: int = 1000, now: dt.datetime | None = None
) -> dict[str, Any]:
    """Delete access-log rows older than ``days`` days, in committed batches."""
    cutoff = cutoff_days(days, now)
    deleted = delete_in_batches(session, models.AccessLog, models.AccessLog.ts < cutoff, batch_size=batch_size)
    return {"access_logs": deleted, "cutoff": cutoff.isoformat()}
