"""A deterministic demo mall: stores, tenants, leases, monthly bills, payments and daily sales.

The same ``seed`` and ``as_of`` always give the same rows, so tests and demos can rely on figures.
Some past bills are left unpaid (arrears) so that the finance tasks have real work to do.
"""

from __future__ import annotations

import datetime as dt
import random
from dataclasses import asdict, dataclass
from decimal import Decimal
from typing import Any

from sqlalchemy import delete, func, insert, select
from sqlalchemy.orm import Session

from shared import models

CATEGORIES = ("dining", "fashion", "electronics", "grocery", "entertainment", "beauty", "sports", "kids")
_ZH_BRANDS = ("悦享", "时光", "优品", "星河", "鲜果", "锦绣", "乐活", "云裳", "小熊", "潮玩")
_EN_BRANDS = ("Urban", "Nova", "Harbor", "Maple", "Lumen", "Cedar", "Orbit", "Pebble", "Atlas", "Sunny")
_KIND_WORDS = {
    "dining": ("餐厅", "Kitchen"),
    "fashion": ("服饰", "Apparel"),
    "electronics": ("数码", "Electronics"),
    "grocery": ("超市", "Market"),
    "entertainment": ("影城", "Cinema"),
    "beauty": ("美妆", "Beauty"),
    "sports": ("运动", "Sports"),
    "kids": ("童装", "Kids"),
}
BATCH = 5000


@dataclass(frozen=True)
class DemoSummary:
    stores: int
    tenants: int
    leases: int
    bills: int
    payments: int
    sales: int
    unpaid_past_due: int

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


class DemoDataExists(RuntimeError):
    """The database already holds stores; pass ``reset=True`` to replace them."""


def _month_starts(as_of: dt.date, months: int) -> list[dt.date]:
    first = as_of.replace(day=1)
    starts = []
    year, month = first.year, first.month
    for _ in range(months):
        starts.append(dt.date(year, month, 1))
        year, month = (year, month - 1) if month > 1 else (year - 1, 12)
    return sorted(starts)


def _insert(session: Session, model: type[models.Base], rows: list[dict[str, Any]]) -> None:
    for i in range(0, len(rows), BATCH):
        session.execute(insert(model), rows[i : i + BATCH])


def clear(session: Session) -> None:
    """Delete every domain row (not tokens or task history)."""
    for model in (
        models.Notification,
        models.MonthlyRevenue,
        models.Payment,
        models.Bill,
        models.Sale,
        models.Lease,
        models.Tenant,
        models.Store,
    ):
        session.execute(delete(model))


def generate(
    session: Session,
    *,
    stores: int = 200,
    months: int = 12,
    seed: int = 42,
    as_of: dt.date | None = None,
    reset: bool = False,
) -> DemoSummary:
    """Fill the database with a demo mall. ``as_of`` is "today" for the generated history."""
    if stores < 1 or months < 1:
        raise ValueError("stores and months must be at least 1")
    if session.scalar(select(func.count()).select_from(models.Store)):
        if not reset:
            raise DemoDataExists("demo data already present (use reset to replace it)")
        clear(session)
    rng = random.Random(seed)
    as_of = as_of or dt.date.today()
    month_starts = _month_starts(as_of, months)
    history_start = month_starts[0]

    store_rows, tenant_rows, lease_rows = _stores(rng, stores, history_start, as_of)
    bill_rows, payment_rows, unpaid_past_due = _bills(rng, lease_rows, month_starts, as_of)
    sale_rows = _sales(rng, store_rows, history_start, as_of)

    _insert(session, models.Store, store_rows)
    _insert(session, models.Tenant, tenant_rows)
    _insert(session, models.Lease, lease_rows)
    _insert(session, models.Bill, bill_rows)
    _insert(session, models.Payment, payment_rows)
    _insert(session, models.Sale, sale_rows)
    _resync_sequences(session)
    return DemoSummary(
        len(store_rows),
        len(tenant_rows),
        len(lease_rows),
        len(bill_rows),
        len(payment_rows),
        len(sale_rows),
        unpaid_past_due,
    )


Rows = list[dict[str, Any]]


def _stores(rng: random.Random, count: int, history_start: dt.date, as_of: dt.date) -> tuple[Rows, Rows, Rows]:
    """Stores, their tenants (70 % Chinese-speaking) and one lease each."""
    store_rows: list[dict[str, Any]] = []
    tenant_rows: list[dict[str, Any]] = []
    lease_rows: list[dict[str, Any]] = []
    for i in range(1, count + 1):
        category = CATEGORIES[rng.randrange(len(CATEGORIES))]
        zh = rng.random() < 0.7
        brand = (_ZH_BRANDS if zh else _EN_BRANDS)[rng.randrange(10)]
        word = _KIND_WORDS[category][0 if zh else 1]
        name = f"{brand}{word}" if zh else f"{brand} {word}"
        area = Decimal(rng.randrange(40, 800))
        store_rows.append(
            {
                "id": i,
                "code": f"S{i:04d}",
                "name": f"{name} {i:03d}",
                "category": category,
                "floor": rng.randrange(-1, 6),
                "area_sqm": area,
                "opened_on": history_start - dt.timedelta(days=rng.randrange(30, 2000)),
            }
        )
        tenant_rows.append(
            {
                "id": i,
                "name": f"{name}{'有限公司' if zh else ' Ltd.'}",
                "contact_name": f"Contact {i:04d}",
                "email": f"tenant{i:04d}@example.com",
                "phone": f"+86 21 {rng.randrange(10_000_000, 99_999_999)}",
                "language": "zh_CN" if zh else "en",
            }
        )
        rate = Decimal(rng.randrange(180, 650))
        lease_rows.append(
            {
                "id": i,
                "store_id": i,
                "tenant_id": i,
                "start_date": store_rows[-1]["opened_on"],
                "end_date": as_of.replace(year=as_of.year + 3, day=1),
                "monthly_rent": area * rate,
            }
        )

    return store_rows, tenant_rows, lease_rows


def _bills(rng: random.Random, lease_rows: Rows, month_starts: list[dt.date], as_of: dt.date) -> tuple[Rows, Rows, int]:
    """A rent bill per lease and month, paid or not, with its payment; and how many are unpaid past due."""
    bill_rows: list[dict[str, Any]] = []
    payment_rows: list[dict[str, Any]] = []
    unpaid_past_due = 0
    bill_id = 0
    for lease in lease_rows:
        for start in month_starts:
            bill_id += 1
            due = start + dt.timedelta(days=14)
            # a few tenants are late payers; the current month is mostly still open
            paid = due < as_of and rng.random() > 0.08
            if start == month_starts[-1]:
                paid = rng.random() < 0.3 and as_of.day > 10
            bill_rows.append(
                {
                    "id": bill_id,
                    "lease_id": lease["id"],
                    "store_id": lease["store_id"],
                    "tenant_id": lease["tenant_id"],
                    "period": f"{start:%Y-%m}",
                    "kind": "rent",
                    "amount": lease["monthly_rent"],
                    "issued_on": start,
                    "due_date": due,
                    "status": "paid" if paid else "pending",
                    "overdue_since": None,
                    "paid_at": None,
                }
            )
            if paid:
                day = start + dt.timedelta(days=rng.randrange(1, 20))
                day = min(day, as_of)
                paid_at = dt.datetime.combine(day, dt.time(rng.randrange(8, 20), rng.randrange(60)), dt.UTC)
                bill_rows[-1]["paid_at"] = paid_at
                payment_rows.append(
                    {
                        "id": len(payment_rows) + 1,
                        "bill_id": bill_id,
                        "store_id": lease["store_id"],
                        "amount": lease["monthly_rent"],
                        "paid_at": paid_at,
                        "method": ("bank_transfer", "card", "cash")[rng.randrange(3)],
                    }
                )
            elif due < as_of:
                unpaid_past_due += 1

    return bill_rows, payment_rows, unpaid_past_due


def _sales(rng: random.Random, store_rows: Rows, history_start: dt.date, as_of: dt.date) -> Rows:
    """The POS feed: one line per store and day (busier at weekends)."""
    sale_rows: list[dict[str, Any]] = []
    day = history_start
    base = {s["id"]: rng.randrange(2_000, 60_000) for s in store_rows}
    while day <= as_of:
        weekend = 1.4 if day.weekday() >= 5 else 1.0
        for s in store_rows:
            amount = Decimal(int(base[s["id"]] * weekend * rng.uniform(0.6, 1.4)))
            sale_rows.append(
                {
                    "store_id": s["id"],
                    "day": day,
                    "amount": amount,
                    "transactions": max(1, int(amount / rng.randrange(60, 300))),
                }
            )
        day += dt.timedelta(days=1)
    return sale_rows


def _resync_sequences(session: Session) -> None:
    """Explicit ids leave PostgreSQL's sequences behind; move them past the rows just inserted."""
    if session.get_bind().dialect.name != "postgresql":
        return
    from sqlalchemy import text

    for table in ("stores", "tenants", "leases", "bills", "payments"):
        session.execute(
            text(
                f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), "  # noqa: S608 - fixed table names
                f"COALESCE((SELECT MAX(id) FROM {table}), 1))"
            )
        )
