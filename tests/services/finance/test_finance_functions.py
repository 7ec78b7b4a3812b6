"""The finance business functions on their own: a session and arguments, no Celery, no broker."""

from __future__ import annotations

import datetime as dt
import zoneinfo
from types import SimpleNamespace
from typing import Any, cast

import pytest
from kombu.exceptions import OperationalError
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from services.finance import billing, reminders, tasks
from services.finance.periods import month_bounds, previous_month
from shared.db import session_scope
from shared.errors import TransientError
from shared.models import Bill, Notification, Store, Tenant
from shared.settings import Settings
from tests.conftest import DEMO_AS_OF

pytestmark = pytest.mark.integration  # a real database

SHANGHAI = zoneinfo.ZoneInfo("Asia/Shanghai")


def test_mark_overdue_moves_each_bill_once(demo: Session) -> None:
    session = demo
    with session.begin_nested():
        expected = set(session.scalars(select(Bill.id).where(Bill.status == "pending", Bill.due_date < DEMO_AS_OF)))
        first = billing.mark_overdue(session, DEMO_AS_OF)
    assert set(first.newly_overdue) == expected
    assert first.overdue == len(expected)
    with session.begin_nested():
        second = billing.mark_overdue(session, DEMO_AS_OF)
    assert second.newly_overdue == []
    assert second.overdue == first.overdue
    assert second.pending == first.pending
    # the next day, bills due today become overdue too
    with session.begin_nested():
        due_today = set(session.scalars(select(Bill.id).where(Bill.status == "pending", Bill.due_date == DEMO_AS_OF)))
        third = billing.mark_overdue(session, DEMO_AS_OF + dt.timedelta(days=1))
    assert set(third.newly_overdue) == due_today


def test_revert_overdue_gives_the_bills_back_to_the_next_run(demo: Session) -> None:
    session = demo
    with session.begin_nested():
        moved = billing.mark_overdue(session, DEMO_AS_OF).newly_overdue
        assert billing.revert_overdue(session, moved) == len(moved)
    with session.begin_nested():
        assert billing.mark_overdue(session, DEMO_AS_OF).newly_overdue == moved


def test_unreachable_broker_leaves_the_bills_pending_for_the_retry(demo_db: Settings) -> None:
    """check_pending_bills commits, then cannot enqueue: it undoes the move and asks for a retry."""

    def send_task(*args: Any, **kwargs: Any) -> None:
        raise OperationalError("Error 111 connecting to 127.0.0.1:1. Connection refused.")

    task = SimpleNamespace(
        app=SimpleNamespace(send_task=send_task), request=SimpleNamespace(get=lambda key: None), settings=demo_db
    )
    with session_scope(demo_db) as session:
        pending = set(session.scalars(select(Bill.id).where(Bill.status == "pending", Bill.due_date < DEMO_AS_OF)))
    with pytest.raises(TransientError, match=f"{len(pending)} newly overdue"):
        tasks.check_pending_bills(cast(Any, task), as_of=DEMO_AS_OF)
    with session_scope(demo_db) as session:
        assert set(session.scalars(select(Bill.id).where(Bill.status == "overdue"))) == set()
        assert billing.mark_overdue(session, DEMO_AS_OF).newly_overdue == sorted(pending)


def test_reminders_are_recorded_once_per_bill_per_day(demo: Session) -> None:
    session = demo
    today = dt.date(2026, 11, 20)
    with session.begin_nested():
        moved = billing.mark_overdue(session, DEMO_AS_OF).newly_overdue
        first = reminders.prepare(session, today=today, bill_ids=moved)
    assert first.created == len(moved)
    assert len(first.to_send) == len(moved)
    with session.begin_nested():
        again = reminders.prepare(session, today=today, bill_ids=moved)
    assert again.created == 0
    # not sent yet: handed out again (the notifier's claim makes a second send impossible)
    assert [r.notification_id for r in again.to_send] == [r.notification_id for r in first.to_send]
    with session.begin_nested():
        session.execute(update(Notification).values(status="sent"))
        sent = reminders.prepare(session, today=today, bill_ids=moved)
        tomorrow = reminders.prepare(session, today=today + dt.timedelta(days=1), bill_ids=moved)
    assert (sent.created, len(sent.to_send), sent.already_reminded) == (0, 0, len(moved))
    assert tomorrow.created == len(moved)  # a new day, a new reminder


@pytest.mark.parametrize("language", ["zh_CN", "en"])
def test_reminder_text_is_in_the_tenant_language(language: str) -> None:
    bill = Bill(id=42, period="2026-10", kind="rent", amount=12345.5, due_date=dt.date(2026, 10, 15))
    tenant = Tenant(contact_name="Li Lei", language=language, email="li@example.com")
    store = Store(name="Nova Kitchen 001", code="S0001")
    got_language, subject, message = reminders.render(bill, tenant, store, dt.date(2026, 11, 20))
    assert got_language == language
    assert "12,345.50" in message
    assert "2026-10-15" in message
    assert "36" in message  # days overdue
    if language == "en":
        assert subject == "Payment reminder: Nova Kitchen 001, rent for 2026-10 is overdue"
        assert message.startswith("Dear Li Lei,")
    else:
        assert subject == "【缴费提醒】Nova Kitchen 001 2026-10 租金账单已逾期"
        assert message.startswith("尊敬的Li Lei：")


def test_unknown_language_falls_back_to_chinese() -> None:
    assert reminders.language_of(Tenant(language="fr")) == "zh_CN"


def test_month_bounds_are_local_midnights() -> None:
    start, end = month_bounds(2026, 12, SHANGHAI)
    assert start == dt.datetime(2026, 11, 30, 16, 0, tzinfo=dt.UTC)
    assert end == dt.datetime(2026, 12, 31, 16, 0, tzinfo=dt.UTC)
    assert previous_month(dt.date(2026, 1, 10)) == (2025, 12)
    assert previous_month(dt.date(2026, 11, 22)) == (2026, 10)
