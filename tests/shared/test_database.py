"""Migrations and demo data on the run's real database (PostgreSQL or SQLite)."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import func, inspect, select

from shared import models
from shared.db import get_engine, session_scope
from shared.demo_data import DemoDataExists, generate
from shared.settings import Settings


def test_migrations_create_every_model_table(migrated: Settings) -> None:
    tables = set(inspect(get_engine(migrated)).get_table_names())
    assert set(models.Base.metadata.tables) <= tables
    assert "alembic_version" in tables


def test_demo_data_is_deterministic_and_has_arrears(migrated: Settings) -> None:
    day = dt.date(2026, 6, 20)
    with session_scope(migrated) as session:
        first = generate(session, stores=15, months=4, seed=3, as_of=day, reset=True)
        bills_first = session.execute(
            select(models.Bill.id, models.Bill.amount, models.Bill.status).order_by(models.Bill.id)
        ).all()
        sales_first = session.scalar(select(func.sum(models.Sale.amount)))
    with session_scope(migrated) as session:
        second = generate(session, stores=15, months=4, seed=3, as_of=day, reset=True)
        bills_second = session.execute(
            select(models.Bill.id, models.Bill.amount, models.Bill.status).order_by(models.Bill.id)
        ).all()
        assert session.scalar(select(func.sum(models.Sale.amount))) == sales_first
    assert first == second
    assert bills_first == bills_second
    assert first.stores == 15
    assert first.bills == 15 * 4
    assert first.unpaid_past_due > 0
    with session_scope(migrated) as session:
        unpaid = session.scalar(
            select(func.count()).select_from(models.Bill)
            .where(models.Bill.status == "pending", models.Bill.due_date < day)
        )
        assert unpaid == first.unpaid_past_due
        payments = session.scalar(select(func.count()).select_from(models.Payment))
        assert payments == first.payments


def test_demo_data_refuses_to_overwrite_without_reset(demo_db: Settings) -> None:
    with session_scope(demo_db) as session:
        try:
            generate(session, stores=2, months=1)
        except DemoDataExists:
            pass
        else:
            raise AssertionError("generate() overwrote existing data")


def test_timestamps_come_back_as_utc(demo_db: Settings) -> None:
    with session_scope(demo_db) as session:
        paid_at = session.scalar(select(models.Payment.paid_at).limit(1))
    assert paid_at is not None
    assert paid_at.tzinfo is not None
    assert paid_at.utcoffset() == dt.timedelta(0)
