"""Migrations and demo data on the run's real database (PostgreSQL or SQLite)."""

from __future__ import annotations

import datetime as dt
import signal

import pytest
from sqlalchemy import func, inspect, select, text
from sqlalchemy.orm import Session

from mallops.demo_data import DemoDataExists, generate
from shared import models
from shared.db import get_engine, session_scope
from shared.settings import Settings


def test_migrations_create_every_model_table(migrated: Settings) -> None:
    tables = set(inspect(get_engine(migrated)).get_table_names())
    assert set(models.Base.metadata.tables) <= tables
    assert "alembic_version" in tables


def test_demo_data_is_deterministic_and_has_arrears(db: Session) -> None:
    day = dt.date(2026, 6, 20)
    bills = select(models.Bill.id, models.Bill.amount, models.Bill.status).order_by(models.Bill.id)
    first = generate(db, stores=15, months=4, seed=3, as_of=day, reset=True)
    bills_first = db.execute(bills).all()
    sales_first = db.scalar(select(func.sum(models.Sale.amount)))
    second = generate(db, stores=15, months=4, seed=3, as_of=day, reset=True)
    assert db.execute(bills).all() == bills_first
    assert db.scalar(select(func.sum(models.Sale.amount))) == sales_first
    assert first == second
    assert first.stores == 15
    assert first.bills == 15 * 4
    assert first.unpaid_past_due > 0
    unpaid = db.scalar(
        select(func.count()).select_from(models.Bill).where(models.Bill.status == "pending", models.Bill.due_date < day)
    )
    assert unpaid == first.unpaid_past_due
    assert db.scalar(select(func.count()).select_from(models.Payment)) == first.payments


def test_the_db_fixture_commits_nothing(db: Session, migrated: Settings) -> None:
    """What a test writes through ``db`` (even "committed" by the code under test) stays in its transaction."""
    db.add(models.TaskRecord(task_id="savepoint-probe", task_name="t", state="SENT", retries=0, last_event_seq=0))
    db.commit()  # the code under test commits: a SAVEPOINT is released, the outer transaction stays open
    assert db.get(models.TaskRecord, "savepoint-probe") is not None
    with session_scope(migrated) as other:
        assert other.get(models.TaskRecord, "savepoint-probe") is None


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


class Interrupted(Exception):
    """What a soft time limit looks like to the code it interrupts: an exception raised by a signal."""


def _interrupt(_signum: int, _frame: object) -> None:
    raise Interrupted


def _drain(settings: Settings, query: str) -> None:
    with session_scope(settings) as session:
        for _ in session.execute(text(query).execution_options(yield_per=10)).partitions():
            pass


def test_a_statement_interrupted_mid_fetch_surfaces_its_own_error_and_leaves_the_pool_usable(
    migrated: Settings,
) -> None:
    # A slow server-side fetch, interrupted by a signal the way Celery's soft time limit interrupts a task.
    # On PostgreSQL the connection is then mid-protocol and cannot roll back; the caller must still see the
    # interruption (not an OperationalError that the task base would retry as transient).
    slow = "SELECT g, pg_sleep(0.005) FROM generate_series(1, 2000) AS g"
    if get_engine(migrated).dialect.name == "sqlite":
        slow = "WITH RECURSIVE g(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM g WHERE n < 50000000) SELECT n FROM g"
    previous = signal.signal(signal.SIGALRM, _interrupt)
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.3)
        with pytest.raises(Interrupted):
            _drain(migrated, slow)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    for _ in range(6):  # more than the pool holds (5): every pooled connection is healthy
        with session_scope(migrated) as session:
            assert session.scalar(text("SELECT 1")) == 1
