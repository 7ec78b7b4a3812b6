"""Report periods in Asia/Shanghai: explicit ones, and defaults = the last complete period."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from services.reports import periods
from shared.files import resolve_under

SH = ZoneInfo("Asia/Shanghai")
UTC = dt.UTC


def test_hourly_takes_naive_times_as_local_and_aware_ones_as_given() -> None:
    naive = periods.hourly(SH, dt.datetime(2026, 11, 14, 9, 45))
    aware = periods.hourly(SH, dt.datetime(2026, 11, 14, 1, 45, tzinfo=UTC))  # 09:45 in Shanghai
    assert naive == aware
    assert naive.start == dt.datetime(2026, 11, 14, 1, tzinfo=UTC)
    assert naive.end == dt.datetime(2026, 11, 14, 2, tzinfo=UTC)
    assert naive.label == "2026-11-14T09"
    assert not naive.whole_days


def test_defaults_are_the_last_complete_periods() -> None:
    now = dt.datetime(2026, 1, 1, 0, 30, tzinfo=SH)  # just after midnight on New Year's Day in Shanghai
    assert periods.hourly(SH, now=now).label == "2025-12-31T23"
    assert periods.daily(SH, now=now).label == "2025-12-31"
    assert periods.monthly(SH, now=now).label == "2025-12"
    assert periods.monthly(SH, now=now).local_end == dt.datetime(2026, 1, 1, tzinfo=SH)
    # Thursday 2026-01-01: last week is Monday 2025-12-22 .. Sunday 2025-12-28
    week = periods.weekly(SH, now=now)
    assert (week.first_day, week.end_day) == (dt.date(2025, 12, 22), dt.date(2025, 12, 29))
    assert week.label == "2025-W52"


@pytest.mark.parametrize("today", [dt.date(2026, 11, 16), dt.date(2026, 11, 22)])  # a Monday and a Sunday
def test_default_week_is_the_complete_week_before(today: dt.date) -> None:
    week = periods.weekly(SH, now=dt.datetime.combine(today, dt.time(10), SH))
    assert (week.first_day, week.end_day) == (dt.date(2026, 11, 9), dt.date(2026, 11, 16))


def test_any_day_names_its_monday_to_sunday_week() -> None:
    assert periods.weekly(SH, dt.date(2026, 11, 15)).first_day == dt.date(2026, 11, 9)
    assert periods.weekly(SH, dt.date(2026, 11, 9)).first_day == dt.date(2026, 11, 9)


def test_period_instants_are_shanghai_midnights_in_utc() -> None:
    day = periods.daily(SH, dt.date(2026, 11, 14))
    assert day.start == dt.datetime(2026, 11, 13, 16, tzinfo=UTC)
    assert day.end == dt.datetime(2026, 11, 14, 16, tzinfo=UTC)
    dec = periods.monthly(SH, 2026, 12)
    assert (dec.first_day, dec.end_day) == (dt.date(2026, 12, 1), dt.date(2027, 1, 1))


def test_resolve_under_refuses_names_outside_the_store(tmp_path: Path) -> None:
    assert resolve_under(tmp_path, "daily/daily-2026-11-14.csv") == tmp_path.resolve() / "daily/daily-2026-11-14.csv"
    for bad in ("../secret", "/etc/passwd", "a/../../b", "."):
        with pytest.raises(ValueError, match="not a file under"):
            resolve_under(tmp_path, bad)
