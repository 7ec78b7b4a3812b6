"""The mall's calendar: "today" and month boundaries in the configured timezone (Asia/Shanghai)."""

from __future__ import annotations

import datetime as dt
import zoneinfo


def local_zone(name: str) -> zoneinfo.ZoneInfo:
    return zoneinfo.ZoneInfo(name)


def local_today(tz: zoneinfo.ZoneInfo, now: dt.datetime | None = None) -> dt.date:
    return (now or dt.datetime.now(dt.UTC)).astimezone(tz).date()


def previous_month(today: dt.date) -> tuple[int, int]:
    return (today.year, today.month - 1) if today.month > 1 else (today.year - 1, 12)


def month_bounds(year: int, month: int, tz: zoneinfo.ZoneInfo) -> tuple[dt.datetime, dt.datetime]:
    """The first instant of the month and of the next one, local midnight, as UTC datetimes."""
    start = dt.datetime(year, month, 1, tzinfo=tz)
    end = dt.datetime(year + 1, 1, 1, tzinfo=tz) if month == 12 else dt.datetime(year, month + 1, 1, tzinfo=tz)
    return start.astimezone(dt.UTC), end.astimezone(dt.UTC)
