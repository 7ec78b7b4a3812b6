"""Deleting what is past its retention, in committed batches, with the files that belonged to it.

- exports past ``expires_at`` (or, without one, older than ``MALLOPS_EXPORT_TTL_DAYS``), rows and files;
- reports whose period ended more than ``MALLOPS_REPORT_TTL_DAYS`` ago, rows and files;
- task history older than ``MALLOPS_HISTORY_TTL_DAYS``;
- notifications older than ``MALLOPS_NOTIFICATION_TTL_DAYS``, access logs older than
  ``MALLOPS_ACCESS_LOG_TTL_DAYS``;
- deferred one-off runs published or revoked more than ``MALLOPS_HISTORY_TTL_DAYS`` ago (never a waiting one);
- workflows that finished more than ``MALLOPS_WORKFLOW_TTL_DAYS`` ago, with their steps (never an unfinished
  one); what they counted goes to ``workflow_totals`` first, so the monitor's counters do not go down;
- temporary ``.part`` files older than a day that a killed process left in the file stores.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sqlalchemy import and_, or_
from sqlalchemy.orm import Session

from shared import deferred, models, workflows
from shared.files import resolve_under
from shared.retention import DEFAULT_BATCH, cutoff_days, delete_in_batches
from shared.settings import Settings

log = logging.getLogger("mallops.maintenance.expired_data")
PARTIAL_FILE_AGE = dt.timedelta(days=1)


def _unlink_under(directory: Path, names: Sequence[str | None]) -> None:
    """Delete files named relative to ``directory``, refusing names that point outside it."""
    for name in names:
        if not name:
            continue
        try:
            path = resolve_under(directory, name)
        except ValueError:
            log.warning("not deleting %r: not a file under %s", name, directory)
            continue
        path.unlink(missing_ok=True)


def _report_files(names: Sequence[str | None]) -> list[str | None]:
    """A report's stored file names plus its HTML page in each language (``<stem>.<lang>.html``)."""
    result = list(names)
    for name in names:
        if name and name.endswith(".html"):
            stem = re.sub(r"(\.(zh_CN|en))?\.html$", "", name)
            result += [f"{stem}.zh_CN.html", f"{stem}.en.html"]
    return result


def remove_partial_files(directories: Sequence[Path], now: dt.datetime) -> int:
    """Delete ``.part`` files (unfinished atomic writes) older than a day."""
    removed = 0
    for directory in directories:
        if not directory.is_dir():
            continue
        for path in directory.rglob(".*.part"):
            with contextlib.suppress(FileNotFoundError):
                modified = dt.datetime.fromtimestamp(path.stat().st_mtime, dt.UTC)
                if now - modified > PARTIAL_FILE_AGE:
                    path.unlink()
                    removed += 1
    return removed


def cleanup_expired_data(
    session: Session, settings: Settings, now: dt.datetime | None = None, batch_size: int = DEFAULT_BATCH
) -> dict[str, Any]:
    """Delete everything past retention; returns the number deleted per kind."""
    now = now or models.utcnow()
    counts: dict[str, Any] = _expire_files(session, settings, now, batch_size)
    for kind, model, expired in _expired_rows(settings, now):
        counts[kind] = delete_in_batches(session, model, expired, batch_size=batch_size)
    counts["workflows"] = _retire_workflows(session, settings, now, batch_size)
    counts["partial_files"] = remove_partial_files(
        [settings.exports_dir, settings.reports_dir, settings.backups_dir], now
    )
    return counts


def _retire_workflows(session: Session, settings: Settings, now: dt.datetime, batch_size: int) -> int:
    """Finished workflows past retention, ``batch_size`` per committed transaction."""
    before = cutoff_days(settings.workflow_ttl_days, now)
    deleted = 0
    while True:
        done = workflows.retire_finished(session, before, settings.runtime_buckets, limit=batch_size)
        session.commit()
        deleted += done
        if done < batch_size:
            return deleted


def _expire_files(session: Session, settings: Settings, now: dt.datetime, batch_size: int) -> dict[str, Any]:
    """Exports and reports past retention: their rows, then (after commit) their files."""
    export_expired = or_(
        models.Export.expires_at < now,
        and_(models.Export.expires_at.is_(None), models.Export.created_at < cutoff_days(settings.export_ttl_days, now)),
    )
    counts: dict[str, Any] = {}
    counts["exports"] = delete_in_batches(
        session,
        models.Export,
        export_expired,
        batch_size=batch_size,
        extra_columns=[models.Export.file_name],
        after_commit=lambda rows: _unlink_under(settings.exports_dir, [row[1] for row in rows]),
    )
    counts["reports"] = delete_in_batches(
        session,
        models.Report,
        models.Report.period_end < cutoff_days(settings.report_ttl_days, now),
        batch_size=batch_size,
        extra_columns=[models.Report.csv_path, models.Report.html_path],
        after_commit=lambda rows: _unlink_under(
            settings.reports_dir, _report_files([n for row in rows for n in row[1:]])
        ),
    )
    return counts


def _expired_rows(settings: Settings, now: dt.datetime) -> list[tuple[str, Any, Any]]:
    """(kind, model, what has expired) of the rows that have no files."""
    return [
        ("task_history", models.TaskRecord, models.TaskRecord.updated_at < cutoff_days(settings.history_ttl_days, now)),
        (
            "notifications",
            models.Notification,
            models.Notification.created_at < cutoff_days(settings.notification_ttl_days, now),
        ),
        ("access_logs", models.AccessLog, models.AccessLog.ts < cutoff_days(settings.access_log_ttl_days, now)),
        # one-off runs that were published or revoked (a waiting run is never past retention)
        (
            "deferred_tasks",
            models.DeferredTask,
            and_(
                models.DeferredTask.state != deferred.SCHEDULED,
                models.DeferredTask.created_at < cutoff_days(settings.history_ttl_days, now),
            ),
        ),
        ("audit_log", models.AuditEntry, models.AuditEntry.at < cutoff_days(settings.audit_ttl_days, now)),
    ]
