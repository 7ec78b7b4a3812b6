"""Sales and billing figures for a report period, stored as one ``reports`` row plus CSV and HTML files.

Figures (all money in CNY, as decimal strings in the JSON so nothing is lost to floating point):

- ``sales``: the POS feed's daily sales on the period's local days (``None`` for an hourly report:
  sales are recorded per day);
- ``payments``: payments whose ``paid_at`` falls inside the period, by method and by store category;
- ``bills_issued``: bills issued on the period's local days (``None`` for an hourly report);
- ``overdue_at_end``: bills due before the local day the period ends on and not paid by its end.

Re-running a period replaces its row (unique ``kind`` + ``period_start``, upserted) and its files.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

from sqlalchemy import func, or_, select
from sqlalchemy.orm import Session

from services.reports import rendering
from services.reports.periods import Period
from services.reports.upserts import upsert
from shared import models

CENT = Decimal("0.01")
TOP_STORES = 10
CSV_HEADER = (
    "store_id",
    "store_code",
    "store_name",
    "category",
    "sales_amount",
    "sales_transactions",
    "payments",
    "payments_amount",
    "bills_issued",
    "bills_issued_amount",
    "overdue_bills_at_end",
    "overdue_amount_at_end",
)


def money(value: Any) -> Decimal:
    """A sum from the database (Decimal, float on SQLite, or None) as an exact amount in cents."""
    if value is None:
        return Decimal("0.00")
    return Decimal(str(value)).quantize(CENT)


@dataclass
class StoreLine:
    store_id: int
    code: str
    name: str
    category: str
    sales_amount: Decimal = Decimal("0.00")
    sales_transactions: int = 0
    payments: int = 0
    payments_amount: Decimal = Decimal("0.00")
    bills_issued: int = 0
    bills_issued_amount: Decimal = Decimal("0.00")
    overdue: int = 0
    overdue_amount: Decimal = Decimal("0.00")

    def csv_row(self, whole_days: bool) -> list[Any]:
        return [
            self.store_id,
            self.code,
            self.name,
            self.category,
            self.sales_amount if whole_days else "",
            self.sales_transactions if whole_days else "",
            self.payments,
            self.payments_amount,
            self.bills_issued if whole_days else "",
            self.bills_issued_amount if whole_days else "",
            self.overdue,
            self.overdue_amount,
        ]


@dataclass
class ReportContent:
    data: dict[str, Any]
    lines: list[StoreLine]


@dataclass
class Tally:
    """A running count and amount (sales: transactions and CNY; payments: payments and CNY)."""

    count: int = 0
    amount: Decimal = Decimal("0.00")

    def add(self, count: int, amount: Decimal) -> None:
        self.count += count
        self.amount += amount

    def as_pair(self) -> dict[str, Any]:
        return _pair(self.count, self.amount)

    def as_sales(self) -> dict[str, Any]:
        return {"amount": str(self.amount), "transactions": self.count}


def _pair(count: int, amount: Decimal) -> dict[str, Any]:
    return {"count": count, "amount": str(amount)}


def _total(lines: dict[int, StoreLine], count: str, amount: str) -> dict[str, Any]:
    return _pair(
        sum(getattr(line, count) for line in lines.values()),
        sum((getattr(line, amount) for line in lines.values()), Decimal("0.00")),
    )


def compute(session: Session, period: Period) -> ReportContent:
    """Every figure of ``period``, as the report's JSON data and one line per store."""
    query = select(models.Store.id, models.Store.code, models.Store.name, models.Store.category)
    stores = {
        row.id: StoreLine(row.id, row.code, row.name, row.category)
        for row in session.execute(query.order_by(models.Store.id))
    }
    data: dict[str, Any] = {"period": period.as_dict(), "currency": "CNY"}
    data["sales"] = _sales(session, period, stores) if period.whole_days else None  # the POS feed is daily
    data["payments"] = _payments(session, period, stores)
    data["bills_issued"] = _bills_issued(session, period, stores) if period.whole_days else None
    data["overdue_at_end"] = _overdue_at_end(session, period, stores)
    lines = list(stores.values())
    data["top_stores"] = _top_stores(lines, period)
    data["chart"] = _chart(period, data)
    return ReportContent(data, lines)


def _sales(session: Session, period: Period, stores: dict[int, StoreLine]) -> dict[str, Any]:
    """The POS feed's daily sales on the period's local days, by day and by store category."""
    rows = session.execute(
        select(models.Sale.store_id, models.Sale.day, models.Sale.transactions, models.Sale.amount).where(
            models.Sale.day >= period.first_day, models.Sale.day < period.end_day
        )
    )
    by_day, by_category = _add_up(stores, rows, "sales_transactions", "sales_amount")
    return {
        "amount": str(sum((line.sales_amount for line in stores.values()), Decimal("0.00"))),
        "transactions": sum(line.sales_transactions for line in stores.values()),
        "by_category": {category: tally.as_sales() for category, tally in sorted(by_category.items())},
        "by_day": [{"day": day.isoformat(), **tally.as_sales()} for day, tally in sorted(by_day.items())],
    }


def _payments(session: Session, period: Period, stores: dict[int, StoreLine]) -> dict[str, Any]:
    """Payments received in the period, by method and by store category."""
    rows = session.execute(
        select(models.Payment.store_id, models.Payment.method, func.count(), func.sum(models.Payment.amount))
        .where(models.Payment.paid_at >= period.start, models.Payment.paid_at < period.end)
        .group_by(models.Payment.store_id, models.Payment.method)
    )
    by_method, by_category = _add_up(stores, rows, "payments", "payments_amount")
    return {
        **_total(stores, "payments", "payments_amount"),
        "by_method": {method: tally.as_pair() for method, tally in sorted(by_method.items())},
        "by_category": {category: tally.as_pair() for category, tally in sorted(by_category.items())},
    }


def _add_up(
    stores: dict[int, StoreLine], rows: Iterable[Any], count: str, amount: str
) -> tuple[dict[Any, Tally], dict[str, Tally]]:
    """Add each ``(store_id, key, count, amount)`` row to its store's line (attributes ``count`` and
    ``amount``) and to the tallies by key and by the store's category."""
    by_key: dict[Any, Tally] = defaultdict(Tally)
    by_category: dict[str, Tally] = defaultdict(Tally)
    for store_id, key, n, total in rows:
        value = money(total)
        line = stores[store_id]
        setattr(line, count, getattr(line, count) + n)
        setattr(line, amount, getattr(line, amount) + value)
        by_key[key].add(n, value)
        by_category[line.category].add(n, value)
    return by_key, by_category


def _bills_issued(session: Session, period: Period, stores: dict[int, StoreLine]) -> dict[str, Any]:
    """Bills issued on the period's local days."""
    issued = models.Bill.issued_on >= period.first_day, models.Bill.issued_on < period.end_day
    return _per_store(session, stores, issued, "bills_issued", "bills_issued_amount")


def _overdue_at_end(session: Session, period: Period, stores: dict[int, StoreLine]) -> dict[str, Any]:
    """Bills due before the local day the period ends on and not paid by its end."""
    unpaid = or_(models.Bill.paid_at.is_(None), models.Bill.paid_at >= period.end)
    return _per_store(session, stores, (models.Bill.due_date < period.end_day, unpaid), "overdue", "overdue_amount")


def _per_store(
    session: Session, stores: dict[int, StoreLine], where: tuple[Any, ...], count: str, amount: str
) -> dict[str, Any]:
    """Count and sum the bills matching ``where`` per store into each line's ``count`` and ``amount``."""
    for store_id, bills, total in session.execute(
        select(models.Bill.store_id, func.count(), func.sum(models.Bill.amount))
        .where(*where)
        .group_by(models.Bill.store_id)
    ):
        setattr(stores[store_id], count, bills)
        setattr(stores[store_id], amount, money(total))
    return _total(stores, count, amount)


def _top_stores(lines: list[StoreLine], period: Period) -> list[dict[str, Any]]:
    def rank(line: StoreLine) -> Decimal:
        return line.sales_amount if period.whole_days else line.payments_amount

    return [
        {
            "store_id": ln.store_id,
            "code": ln.code,
            "name": ln.name,
            "category": ln.category,
            "sales_amount": str(ln.sales_amount),
            "payments_amount": str(ln.payments_amount),
        }
        for ln in sorted(lines, key=lambda ln: (-rank(ln), ln.store_id))[:TOP_STORES]
    ]


def _chart(period: Period, data: dict[str, Any]) -> dict[str, Any]:
    """What the HTML page plots: sales per day, sales per category for one day, payments for an hour."""
    if period.kind == "hourly":
        by_cat = data["payments"]["by_category"]
        return {
            "key": "payments_by_category",
            "title": "Payments received by store category (CNY)",
            "labels": list(by_cat),
            "values": [by_cat[c]["amount"] for c in by_cat],
        }
    sales = data["sales"]
    if period.kind == "daily":
        return {
            "key": "sales_by_category",
            "title": "Sales by store category (CNY)",
            "labels": list(sales["by_category"]),
            "values": [v["amount"] for v in sales["by_category"].values()],
        }
    return {
        "key": "sales_by_day",
        "title": "Sales per day (CNY)",
        "labels": [d["day"][5:] for d in sales["by_day"]],
        "values": [d["amount"] for d in sales["by_day"]],
    }


def totals_line(content: ReportContent) -> list[Any]:
    data = content.data
    whole = data["sales"] is not None
    return [
        "",
        "TOTAL",
        "",
        "",
        data["sales"]["amount"] if whole else "",
        data["sales"]["transactions"] if whole else "",
        data["payments"]["count"],
        data["payments"]["amount"],
        data["bills_issued"]["count"] if whole else "",
        data["bills_issued"]["amount"] if whole else "",
        data["overdue_at_end"]["count"],
        data["overdue_at_end"]["amount"],
    ]


def file_names(period: Period, language: rendering.Language = "zh_CN") -> tuple[str, str]:
    """The CSV and HTML names of a period's files, relative to ``settings.reports_dir``; the HTML page
    in ``language`` (each language has its page: ``<stem>.zh_CN.html``, ``<stem>.en.html``)."""
    stem = f"{period.kind}/{period.kind}-{period.label}"
    return f"{stem}.csv", rendering.html_name(f"{stem}.html", language)


def generate(
    session: Session,
    period: Period,
    reports_dir: Path,
    task_id: str | None = None,
    language: rendering.Language = "zh_CN",
) -> dict[str, Any]:
    """Compute ``period``'s figures, (re)write its files and upsert its ``reports`` row.

    Files are written atomically before the row, so a row never points at a half-written file; a
    re-run replaces both. The row's ``html_path`` is the page in ``language`` (MALLOPS_REPORT_LANGUAGE);
    the page in the other language lies beside it. Returns a small summary for the task result.
    """
    content = compute(session, period)
    csv_name, html_name = file_names(period, language)
    rows = [line.csv_row(period.whole_days) for line in content.lines] + [totals_line(content)]
    rendering.write_csv(reports_dir / csv_name, CSV_HEADER, rows)
    for other in rendering.LANGUAGES:
        rendering.write_html(
            reports_dir / file_names(period, other)[1],
            language=other,
            data=content.data,
            header=CSV_HEADER,
            rows=rows,
        )
    values = {
        "kind": period.kind,
        "period_start": period.start,
        "period_end": period.end,
        "data": content.data,
        "csv_path": csv_name,
        "html_path": html_name,
        "task_id": task_id,
        "created_at": models.utcnow(),
    }
    upsert(session, models.Report, values, keys=("kind", "period_start"))
    report_id = session.scalar(
        select(models.Report.id).where(models.Report.kind == period.kind, models.Report.period_start == period.start)
    )
    return {
        "report_id": report_id,
        "kind": period.kind,
        "label": period.label,
        "period_start": period.start.isoformat(),
        "period_end": period.end.isoformat(),
        "csv_path": csv_name,
        "html_path": html_name,
        "sales_amount": content.data["sales"]["amount"] if content.data["sales"] else None,
        "payments_amount": content.data["payments"]["amount"],
    }
