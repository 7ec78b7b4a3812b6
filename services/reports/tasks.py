"""Thin Celery task bodies of the reports service: build the period or the arguments, call the plain
function in a session, return a small JSON summary.

The modules that need SQLAlchemy (sales reports, exports, access logs, the database session) are imported
by the task that uses them, not when the worker starts: an idle worker and its prefork children hold no
SQLAlchemy until they run a task (docs/performance.md, idle memory)."""

from __future__ import annotations

import datetime as dt
from typing import Any
from zoneinfo import ZoneInfo

from celery import Celery

from services.reports import periods
from shared.cache import redis_client
from shared.celery_extensions.task_base import MallopsTask, register
from shared.contracts import OWNER_HEADER, TaskState


def _report(task: MallopsTask, period: periods.Period) -> dict[str, Any]:
    from services.reports import sales_reports
    from shared.db import session_scope

    settings = task.settings
    with session_scope(settings) as session:
        return sales_reports.generate(session, period, settings.reports_dir, task.request.id, settings.report_language)


def _zone(task: MallopsTask) -> ZoneInfo:
    return ZoneInfo(task.settings.timezone)


def generate_hourly_report(task: MallopsTask, hour: dt.datetime | None) -> dict[str, Any]:
    return _report(task, periods.hourly(_zone(task), hour))


def generate_daily_report(task: MallopsTask, date: dt.date | None) -> dict[str, Any]:
    return _report(task, periods.daily(_zone(task), date))


def generate_weekly_report(task: MallopsTask, week_start: dt.date | None) -> dict[str, Any]:
    return _report(task, periods.weekly(_zone(task), week_start))


def generate_monthly_report(task: MallopsTask, year: int | None, month: int | None) -> dict[str, Any]:
    return _report(task, periods.monthly(_zone(task), year, month))


def export_data(task: MallopsTask, dataset: str, format: str, filters: dict[str, Any]) -> dict[str, Any]:
    from services.reports import exports

    def progress(current: int, total: int) -> None:
        task.update_state(state=TaskState.PROGRESS, meta={"current": current, "total": total})

    return exports.run_export(
        task.settings,
        task_id=task.request.id,
        owner=task.request.get(OWNER_HEADER),
        dataset=dataset,
        fmt=format,
        filters=filters,
        progress=progress,
    )


def process_access_logs(task: MallopsTask, batch_size: int) -> dict[str, Any]:
    from services.reports import access_logs

    settings = task.settings
    return access_logs.drain(settings, redis_client(settings), batch_size).as_dict()


def generate_access_statistics(task: MallopsTask, date: dt.date | None) -> dict[str, Any]:
    from services.reports import access_logs
    from shared.db import session_scope

    zone = _zone(task)
    day = date or (dt.datetime.now(zone).date() - dt.timedelta(days=1))
    with session_scope(task.settings) as session:
        return access_logs.access_statistics(session, day, zone)


def cleanup_old_access_records(task: MallopsTask, days: int) -> dict[str, Any]:
    from services.reports import access_logs
    from shared.db import session_factory

    with session_factory(task.settings)() as session:
        return access_logs.cleanup_old_records(session, days)


def register_all(app: Celery) -> None:
    register(app, "generate_hourly_report", generate_hourly_report)
    register(app, "generate_daily_report", generate_daily_report)
    register(app, "generate_weekly_report", generate_weekly_report)
    register(app, "generate_monthly_report", generate_monthly_report)
    register(app, "export_data", export_data)
    register(app, "process_access_logs", process_access_logs)
    register(app, "generate_access_statistics", generate_access_statistics)
    register(app, "cleanup_old_access_records", cleanup_old_access_records)
