"""Period reports through a real reports worker: the row, its figures (checked against SQL written
independently here), its CSV and HTML files, and a re-run that replaces instead of duplicating."""

from __future__ import annotations

import csv
import datetime as dt
import io
from collections.abc import Callable
from decimal import Decimal
from typing import Any
from xml.etree import ElementTree
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import Date, bindparam, delete, select, text
from sqlalchemy.orm import Session

from shared import models
from shared.db import session_scope
from shared.models import UTCDateTime
from shared.settings import Settings
from tests.harness import Process
from tests.plugins.catalog_tasks import Submit

pytestmark = pytest.mark.integration

SHANGHAI = ZoneInfo("Asia/Shanghai")
CENT = Decimal("0.01")


def dec(value: Any) -> Decimal:
    return Decimal(str(value or 0)).quantize(CENT)


def sql(session: Session, statement: str, **params: Any) -> list[Any]:
    """Run hand-written SQL; datetimes and dates are bound with the types the tables use."""
    binds = [
        bindparam(name, type_=UTCDateTime() if isinstance(value, dt.datetime) else Date())
        for name, value in params.items()
        if isinstance(value, dt.date)
    ]
    return list(session.execute(text(statement).bindparams(*binds), params).all())


def expected_figures(session: Session, start: dt.datetime, end: dt.datetime, whole_days: bool) -> dict[str, Any]:
    first_day = start.astimezone(SHANGHAI).date()
    end_day = end.astimezone(SHANGHAI).date()
    figures: dict[str, Any] = {}
    if whole_days:
        amount, transactions = sql(
            session,
            "SELECT SUM(amount), SUM(transactions) FROM sales WHERE day >= :a AND day < :b",
            a=first_day,
            b=end_day,
        )[0]
        figures["sales"] = (dec(amount), int(transactions or 0))
        count, amount = sql(
            session,
            "SELECT COUNT(*), SUM(amount) FROM bills WHERE issued_on >= :a AND issued_on < :b",
            a=first_day,
            b=end_day,
        )[0]
        figures["bills_issued"] = (count, dec(amount))
    count, amount = sql(
        session, "SELECT COUNT(*), SUM(amount) FROM payments WHERE paid_at >= :s AND paid_at < :e", s=start, e=end
    )[0]
    figures["payments"] = (count, dec(amount))
    figures["by_method"] = {
        method: (n, dec(a))
        for method, n, a in sql(
            session,
            "SELECT method, COUNT(*), SUM(amount) FROM payments WHERE paid_at >= :s AND paid_at < :e GROUP BY method",
            s=start,
            e=end,
        )
    }
    count, amount = sql(
        session,
        "SELECT COUNT(*), SUM(amount) FROM bills WHERE due_date < :b AND (paid_at IS NULL OR paid_at >= :e)",
        b=end_day,
        e=end,
    )[0]
    figures["overdue_at_end"] = (count, dec(amount))
    return figures


def assert_figures(data: dict[str, Any], figures: dict[str, Any]) -> None:
    if "sales" in figures:
        assert (Decimal(data["sales"]["amount"]), data["sales"]["transactions"]) == figures["sales"]
        assert (data["bills_issued"]["count"], Decimal(data["bills_issued"]["amount"])) == figures["bills_issued"]
    else:
        assert data["sales"] is None
        assert data["bills_issued"] is None
    assert (data["payments"]["count"], Decimal(data["payments"]["amount"])) == figures["payments"]
    assert {m: (v["count"], Decimal(v["amount"])) for m, v in data["payments"]["by_method"].items()} == figures[
        "by_method"
    ]
    assert (data["overdue_at_end"]["count"], Decimal(data["overdue_at_end"]["amount"])) == figures["overdue_at_end"]


def read_csv(settings: Settings, name: str) -> list[dict[str, str]]:
    raw = (settings.reports_dir / name).read_bytes()
    assert raw.startswith(b"\xef\xbb\xbf")  # a UTF-8 byte-order mark, for Excel
    return list(csv.DictReader(io.StringIO(raw.decode("utf-8-sig"))))


@pytest.fixture
def no_reports(demo_db: Settings) -> Settings:
    with session_scope(demo_db) as session:
        session.execute(delete(models.Report))
    return demo_db


def report_rows(settings: Settings, kind: str) -> list[models.Report]:
    with session_scope(settings) as session:
        return list(session.scalars(select(models.Report).where(models.Report.kind == kind)))


def test_monthly_report_has_the_months_figures_and_a_rerun_replaces_it(
    no_reports: Settings, running_worker: Callable[[str], Process], submit_task: Submit
) -> None:
    settings = no_reports
    running_worker("reports")
    summary = submit_task("generate_monthly_report", {"year": 2026, "month": 10}).get(timeout=120)

    start = dt.datetime(2026, 10, 1, tzinfo=SHANGHAI).astimezone(dt.UTC)
    end = dt.datetime(2026, 11, 1, tzinfo=SHANGHAI).astimezone(dt.UTC)
    (report,) = report_rows(settings, "monthly")
    assert summary["report_id"] == report.id
    assert (report.period_start, report.period_end) == (start, end)
    assert report.period_start == dt.datetime(2026, 9, 30, 16, tzinfo=dt.UTC)
    with session_scope(settings) as session:
        figures = expected_figures(session, start, end, whole_days=True)
    assert figures["payments"][0] > 10  # the demo mall paid most of October's rent
    assert_figures(report.data, figures)
    assert len(report.data["sales"]["by_day"]) == 31

    # the CSV: one line per store plus a total that matches the figures
    rows = read_csv(settings, str(report.csv_path))
    stores, total = rows[:-1], rows[-1]
    assert len(stores) == 20
    assert total["store_code"] == "TOTAL"
    assert dec(total["sales_amount"]) == figures["sales"][0]
    assert sum(dec(r["sales_amount"]) for r in stores) == figures["sales"][0]
    assert sum(int(r["payments"]) for r in stores) == figures["payments"][0]
    assert dec(total["overdue_amount_at_end"]) == figures["overdue_at_end"][1]
    with session_scope(settings) as session:
        (store_7_sales,) = sql(
            session,
            "SELECT SUM(amount) FROM sales WHERE store_id = 7 AND day >= :a AND day < :b",
            a=dt.date(2026, 10, 1),
            b=dt.date(2026, 11, 1),
        )[0]
    assert dec(next(r for r in stores if r["store_id"] == "7")["sales_amount"]) == dec(store_7_sales)

    # the HTML page: a chart with one bar per day
    page = (settings.reports_dir / str(report.html_path)).read_text()
    svg = ElementTree.fromstring(page[page.index("<svg") : page.index("</svg>") + len("</svg>")])  # noqa: S314 - our own file
    bars = [r for r in svg.iter("{http://www.w3.org/2000/svg}rect") if "reactive" in r.get("class", "")]
    assert len(bars) == 31
    heights = [float(bar.get("height", "0")) for bar in bars]
    assert max(heights) > min(heights) > 0  # bars scaled to the day's sales
    assert "<h1>月报 2026-10</h1>" in page  # MALLOPS_REPORT_LANGUAGE: zh_CN
    assert str(report.html_path).endswith(".zh_CN.html")
    assert (
        "<h1>Monthly report 2026-10</h1>"
        in (settings.reports_dir / str(report.html_path)).with_name("monthly-2026-10.en.html").read_text()
    )

    # a re-run of the same month after the data changed: same row, new figures, no duplicate
    with session_scope(settings) as session:
        session.execute(
            text("UPDATE sales SET amount = amount + 100 WHERE store_id = 3 AND day = :d").bindparams(
                bindparam("d", type_=Date())
            ),
            {"d": dt.date(2026, 10, 9)},
        )
    submit_task("generate_monthly_report", {"year": 2026, "month": 10}).get(timeout=120)
    (again,) = report_rows(settings, "monthly")
    assert again.id == report.id
    assert Decimal(again.data["sales"]["amount"]) == figures["sales"][0] + 100
    assert dec(read_csv(settings, str(again.csv_path))[-1]["sales_amount"]) == figures["sales"][0] + 100
    assert not list(settings.reports_dir.rglob("*.part"))


def test_daily_and_weekly_reports_use_shanghai_days(
    no_reports: Settings, running_worker: Callable[[str], Process], submit_task: Submit
) -> None:
    settings = no_reports
    running_worker("reports")
    daily = submit_task("generate_daily_report", {"date": "2026-11-14"})
    weekly = submit_task("generate_weekly_report", {"week_start": "2026-11-11"})  # a Wednesday: the week of Monday 9th
    assert daily.get(timeout=120)["label"] == "2026-11-14"
    assert weekly.get(timeout=120)["label"] == "2026-W46"

    (day,) = report_rows(settings, "daily")
    assert day.period_start == dt.datetime(2026, 11, 13, 16, tzinfo=dt.UTC)
    assert day.period_end == dt.datetime(2026, 11, 14, 16, tzinfo=dt.UTC)
    (week,) = report_rows(settings, "weekly")
    assert week.period_start == dt.datetime(2026, 11, 8, 16, tzinfo=dt.UTC)
    assert week.period_end == dt.datetime(2026, 11, 15, 16, tzinfo=dt.UTC)
    with session_scope(settings) as session:
        assert_figures(day.data, expected_figures(session, day.period_start, day.period_end, whole_days=True))
        assert_figures(week.data, expected_figures(session, week.period_start, week.period_end, whole_days=True))
    assert [d["day"] for d in week.data["sales"]["by_day"]] == [f"2026-11-{d:02d}" for d in range(9, 16)]
    assert (settings.reports_dir / "daily" / "daily-2026-11-14.csv").is_file()
    assert (settings.reports_dir / "weekly" / "weekly-2026-W46.zh_CN.html").is_file()
    assert (settings.reports_dir / "weekly" / "weekly-2026-W46.en.html").is_file()


def test_hourly_report_counts_the_payments_of_that_hour(
    no_reports: Settings, running_worker: Callable[[str], Process], submit_task: Submit
) -> None:
    settings = no_reports
    running_worker("reports")
    with session_scope(settings) as session:
        paid_at = session.scalar(select(models.Payment.paid_at).order_by(models.Payment.id).limit(1))
    assert paid_at is not None
    summary = submit_task("generate_hourly_report", {"hour": paid_at.isoformat()}).get(timeout=120)

    (report,) = report_rows(settings, "hourly")
    assert report.period_start == paid_at.replace(minute=0, second=0, microsecond=0)
    assert report.period_end - report.period_start == dt.timedelta(hours=1)
    assert summary["label"] == f"{paid_at.astimezone(SHANGHAI):%Y-%m-%dT%H}"
    with session_scope(settings) as session:
        figures = expected_figures(session, report.period_start, report.period_end, whole_days=False)
    assert figures["payments"][0] >= 1
    assert_figures(report.data, figures)
    total = read_csv(settings, str(report.csv_path))[-1]
    assert total["sales_amount"] == ""  # sales are recorded per day, not per hour
    assert int(total["payments"]) == figures["payments"][0]


def test_default_periods_are_the_last_complete_ones(
    no_reports: Settings, running_worker: Callable[[str], Process], submit_task: Submit
) -> None:
    running_worker("reports")
    before = dt.datetime.now(SHANGHAI)
    daily = submit_task("generate_daily_report").get(timeout=120)
    monthly = submit_task("generate_monthly_report").get(timeout=120)
    after = dt.datetime.now(SHANGHAI)
    yesterdays = {f"{t.date() - dt.timedelta(days=1)}" for t in (before, after)}
    assert daily["label"] in yesterdays
    last_months = {f"{t.replace(day=1) - dt.timedelta(days=1):%Y-%m}" for t in (before, after)}
    assert monthly["label"] in last_months
    assert {r.kind for r in report_rows(no_reports, "daily") + report_rows(no_reports, "monthly")} == {
        "daily",
        "monthly",
    }
