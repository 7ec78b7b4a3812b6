"""Report periods: an hour, a day, a week (Monday to Sunday) or a calendar month of the mall's local
time (``MALLOPS_TIMEZONE``, Asia/Shanghai), as half-open UTC instants ``[start, end)``.

Defaults are the last *complete* period before ``now``.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Literal
from zoneinfo import ZoneInfo

Kind = Literal["hourly", "daily", "weekly", "monthly"]


@dataclass(frozen=True)
class Period:
    kind: Kind
    local_start: dt.datetime  # aware, in the mall's zone
    local_end: dt.datetime  # exclusive

    @property
    def start(self) -> dt.datetime:
        return self.local_start.astimezone(dt.UTC)

    @property
    def end(self) -> dt.datetime:
        return self.local_end.astimezone(dt.UTC)

    @property
    def first_day(self) -> dt.date:
        return self.local_start.date()

    @property
    def end_day(self) -> dt.date:
        """The local day the period ends on (exclusive for whole-day periods)."""
        return self.local_end.date()

    @property
    def whole_days(self) -> bool:
        return self.kind != "hourly"

    @property
    def label(self) -> str:
        """A stable, file-name-safe name of the period: 2026-11-14T09, 2026-11-14, 2026-W46, 2026-11."""
        start = self.local_start
        if self.kind == "hourly":
            return f"{start:%Y-%m-%dT%H}"
        if self.kind == "daily":
            return f"{start:%Y-%m-%d}"
        if self.kind == "weekly":
            year, week, _ = start.isocalendar()
            return f"{year}-W{week:02d}"
        return f"{start:%Y-%m}"

    def as_dict(self) -> dict[str, str]:
        return {
            "kind": self.kind,
            "label": self.label,
            "timezone": str(self.local_start.tzinfo),
            "local_start": self.local_start.isoformat(),
            "local_end": self.local_end.isoformat(),
            "start_utc": self.start.isoformat(),
            "end_utc": self.end.isoformat(),
        }


def _midnight(day: dt.date, zone: ZoneInfo) -> dt.datetime:
    return dt.datetime.combine(day, dt.time(), zone)


def _local_now(zone: ZoneInfo, now: dt.datetime | None) -> dt.datetime:
    return (now or dt.datetime.now(dt.UTC)).astimezone(zone)


def hourly(zone: ZoneInfo, hour: dt.datetime | None = None, now: dt.datetime | None = None) -> Period:
    """The hour containing ``hour`` (naive values are local time); default: the last complete hour."""
    if hour is None:
        local = _local_now(zone, now) - dt.timedelta(hours=1)
    elif hour.tzinfo is None:
        local = hour.replace(tzinfo=zone)
    else:
        local = hour.astimezone(zone)
    start = local.replace(minute=0, second=0, microsecond=0)
    # Shanghai has no DST; arithmetic in UTC keeps this right for zones that do
    end = (start.astimezone(dt.UTC) + dt.timedelta(hours=1)).astimezone(zone)
    return Period("hourly", start, end)


def daily(zone: ZoneInfo, day: dt.date | None = None, now: dt.datetime | None = None) -> Period:
    """The local day ``day``; default: yesterday."""
    day = day or (_local_now(zone, now).date() - dt.timedelta(days=1))
    return Period("daily", _midnight(day, zone), _midnight(day + dt.timedelta(days=1), zone))


def weekly(zone: ZoneInfo, week_start: dt.date | None = None, now: dt.datetime | None = None) -> Period:
    """The Monday-to-Sunday week containing ``week_start``; default: last week."""
    if week_start is None:
        week_start = _local_now(zone, now).date() - dt.timedelta(days=7)
    monday = week_start - dt.timedelta(days=week_start.weekday())
    return Period("weekly", _midnight(monday, zone), _midnight(monday + dt.timedelta(days=7), zone))


def monthly(
    zone: ZoneInfo, year: int | None = None, month: int | None = None, now: dt.datetime | None = None
) -> Period:
    """The calendar month ``year``-``month``; default: last month."""
    if year is None or month is None:
        first_of_this = _local_now(zone, now).date().replace(day=1)
        previous = first_of_this - dt.timedelta(days=1)
        year, month = previous.year, previous.month
    first = dt.date(year, month, 1)
    following = dt.date(year + 1, 1, 1) if month == 12 else dt.date(year, month + 1, 1)
    return Period("monthly", _midnight(first, zone), _midnight(following, zone))
