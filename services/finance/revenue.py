"""Monthly revenue: payments received in a calendar month (local time), by store and by category.

Stored in ``monthly_revenue`` (one row per store with payments; a re-run replaces the month's rows)
and cached in Redis for an hour under :func:`shared.contracts.revenue_cache_key`.
"""

from __future__ import annotations

import datetime as dt
import json
import zoneinfo
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import redis
from sqlalchemy import delete, func, insert, select
from sqlalchemy.orm import Session

from services.finance.periods import month_bounds
from shared.contracts import revenue_cache_key
from shared.models import MonthlyRevenue, Payment, Store, utcnow

CENT = Decimal("0.01")
CACHE_SECONDS = 3600


@dataclass(frozen=True)
class StoreRevenue:
    store_id: int
    category: str
    amount: Decimal
    payments: int


@dataclass(frozen=True)
class MonthlyRevenueResult:
    period: str
    stores: list[StoreRevenue]
    computed_at: dt.datetime

    @property
    def total(self) -> Decimal:
        return sum((s.amount for s in self.stores), Decimal("0"))

    def by_category(self) -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {}
        for s in self.stores:
            entry = out.setdefault(s.category, {"amount": Decimal("0"), "payments": 0, "stores": 0})
            entry["amount"] += s.amount
            entry["payments"] += s.payments
            entry["stores"] += 1
        return {cat: {**v, "amount": str(v["amount"])} for cat, v in sorted(out.items())}

    def summary(self) -> dict[str, Any]:
        """Small JSON: totals and the category breakdown (money as decimal strings)."""
        return {
            "period": self.period,
            "total": str(self.total),
            "payments": sum(s.payments for s in self.stores),
            "stores": len(self.stores),
            "by_category": self.by_category(),
            "computed_at": self.computed_at.isoformat(),
        }

    def full(self) -> dict[str, Any]:
        """The summary plus one entry per store, largest first (what the cache holds)."""
        return self.summary() | {
            "by_store": [
                {"store_id": s.store_id, "category": s.category, "amount": str(s.amount), "payments": s.payments}
                for s in sorted(self.stores, key=lambda s: (-s.amount, s.store_id))
            ]
        }


def calculate(session: Session, year: int, month: int, tz: zoneinfo.ZoneInfo) -> MonthlyRevenueResult:
    """Sum the month's payments per store and replace the month's ``monthly_revenue`` rows."""
    period = f"{year:04d}-{month:02d}"
    start, end = month_bounds(year, month, tz)
    rows = session.execute(
        select(Payment.store_id, Store.category, func.sum(Payment.amount), func.count(Payment.id))
        .join(Store, Store.id == Payment.store_id)
        .where(Payment.paid_at >= start, Payment.paid_at < end)
        .group_by(Payment.store_id, Store.category)
        .order_by(Payment.store_id)
    ).all()
    stores = [
        StoreRevenue(int(store_id), str(category), Decimal(str(amount)).quantize(CENT), int(count))
        for store_id, category, amount, count in rows
    ]
    now = utcnow()
    session.execute(delete(MonthlyRevenue).where(MonthlyRevenue.period == period))
    if stores:
        session.execute(
            insert(MonthlyRevenue),
            [
                {
                    "period": period,
                    "store_id": s.store_id,
                    "category": s.category,
                    "amount": s.amount,
                    "payments": s.payments,
                    "computed_at": now,
                }
                for s in stores
            ],
        )
    return MonthlyRevenueResult(period, stores, now)


def cache(client: redis.Redis[str], result: MonthlyRevenueResult, seconds: int = CACHE_SECONDS) -> str:
    """Store the full result in Redis for ``seconds``; return the key."""
    key = revenue_cache_key(result.period)
    client.set(key, json.dumps(result.full(), ensure_ascii=False), ex=seconds)
    return key
