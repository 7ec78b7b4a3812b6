"""The finance worker with demo data: overdue bills, reminders that reach the SMTP server, monthly revenue."""

from __future__ import annotations

import ast
import datetime as dt
import json
import re
import zoneinfo
from collections import defaultdict
from collections.abc import Callable, Iterator
from decimal import Decimal
from typing import Any

import pytest
from celery import Celery
from sqlalchemy import select, update

from services.finance import billing
from services.finance.periods import local_today
from shared.catalog import CATALOG
from shared.celery_app import create_celery_app
from shared.contracts import revenue_cache_key
from shared.db import session_scope
from shared.models import Bill, MonthlyRevenue, Notification, Payment, Store, Tenant
from shared.settings import Settings
from tests.conftest import DEMO_AS_OF
from tests.harness import Process, RedisServer, wait_until
from tests.plugins.smtp import SMTPServer

pytestmark = pytest.mark.integration

CHECK = CATALOG["check_pending_bills"]
REMIND = CATALOG["send_bill_reminders"]
REVENUE = CATALOG["calculate_monthly_revenue"]
SHANGHAI = zoneinfo.ZoneInfo("Asia/Shanghai")


@pytest.fixture
def client(settings: Settings) -> Iterator[Celery]:
    app = create_celery_app("test-client", settings)
    yield app
    app.close()


@pytest.fixture
def workers(running_worker: Callable[[str], Process]) -> dict[str, Process]:
    return {"finance": running_worker("finance"), "notifier": running_worker("notifier")}


def run(client: Celery, spec, **kwargs) -> dict[str, Any]:
    result = client.send_task(spec.celery_name, kwargs=kwargs, queue=spec.queue)
    try:
        outcome: dict[str, Any] = result.get(timeout=90)
        return outcome
    finally:
        result.forget()


def unpaid_past_due(settings: Settings, as_of: dt.date) -> set[int]:
    with session_scope(settings) as session:
        return set(session.scalars(select(Bill.id).where(Bill.status == "pending", Bill.due_date < as_of)))


def tenants_of(settings: Settings, bill_ids: set[int]) -> dict[int, Tenant]:
    with session_scope(settings) as session:
        rows = session.execute(
            select(Bill.id, Tenant).join(Tenant, Tenant.id == Bill.tenant_id).where(Bill.id.in_(bill_ids))
        ).all()
        session.expunge_all()
        return dict(rows)


def reminder_rows(settings: Settings) -> list[Notification]:
    with session_scope(settings) as session:
        rows = list(
            session.scalars(
                select(Notification).where(Notification.kind == "bill_reminder").order_by(Notification.bill_id)
            )
        )
        for row in rows:
            session.expunge(row)
        return rows


def wait_reminders_sent(settings: Settings, count: int) -> None:
    def done() -> bool:
        rows = reminder_rows(settings)
        return len(rows) == count and all(r.status == "sent" for r in rows)

    wait_until(done, timeout=120, message=f"{count} reminder rows to be sent")


def test_check_pending_bills_marks_overdue_once_and_reminds_each_tenant_in_their_language(
    client, workers, demo_db: Settings, smtp: SMTPServer
) -> None:
    settings = demo_db
    expected = unpaid_past_due(settings, DEMO_AS_OF)
    assert len(expected) >= 3, "the demo data should have arrears"
    tenants = tenants_of(settings, expected)
    assert {t.language for t in tenants.values()} == {"zh_CN", "en"}, "want both languages among the late payers"

    counts = run(client, CHECK, as_of=DEMO_AS_OF.isoformat())
    assert counts["newly_overdue"] == len(expected)
    assert counts["overdue"] == len(expected)
    assert counts["reminder_tasks"] == 1
    with session_scope(settings) as session:
        overdue = {b.id: b for b in session.scalars(select(Bill).where(Bill.status == "overdue"))}
        assert set(overdue) == expected
        assert all(b.overdue_since is not None for b in overdue.values())
        # bills due on the day itself are not overdue yet
        assert session.scalar(select(Bill.id).where(Bill.due_date == DEMO_AS_OF, Bill.status == "overdue")) is None

    mails = smtp.wait_for(len(expected), timeout=120)
    assert len(mails) == len(expected)
    by_address = {m.rcpt_tos[0]: m for m in mails}
    for bill_id, tenant in tenants.items():
        mail = by_address[tenant.email]
        body = mail.message.get_body(preferencelist=("plain",))
        assert body is not None
        text = body.get_content()
        assert f"{bill_id}" in text
        if tenant.language == "en":
            assert mail.message["Content-Language"] == "en"
            assert mail.message["Subject"].startswith("Payment reminder:")
            assert "days overdue" in text or "day(s) overdue" in text
        else:
            assert mail.message["Content-Language"] == "zh-CN"
            assert mail.message["Subject"].startswith("【缴费提醒】")
            assert "已逾期" in text
    today = local_today(SHANGHAI)
    wait_reminders_sent(settings, len(expected))
    rows = reminder_rows(settings)
    assert {r.bill_id for r in rows} == expected
    assert {r.dedupe_key for r in rows} == {f"bill-reminder:{b}:{today.isoformat()}" for b in expected}
    assert {r.language for r in rows} == {t.language for t in tenants.values()}

    # idempotent: a second run finds nothing new and enqueues nothing
    again = run(client, CHECK, as_of=DEMO_AS_OF.isoformat())
    assert again["newly_overdue"] == 0
    assert again["overdue"] == len(expected)
    assert again["reminder_tasks"] == 0
    assert len(reminder_rows(settings)) == len(expected)


def test_bills_left_behind_by_a_run_that_died_after_its_commit_are_reminded_by_the_next_run(
    client, workers, demo_db: Settings, smtp: SMTPServer
) -> None:
    settings = demo_db
    expected = unpaid_past_due(settings, DEMO_AS_OF)
    # what a check_pending_bills killed between its commit and its enqueue leaves: bills overdue for a few
    # minutes with no reminder row, and no message to remind them (its redelivery finds nothing to move)
    died_at = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=6)
    with session_scope(settings) as session:
        assert billing.mark_overdue(session, DEMO_AS_OF, now=died_at).newly_overdue == sorted(expected)

    counts = run(client, CHECK, as_of=DEMO_AS_OF.isoformat())
    assert (counts["newly_overdue"], counts["unreminded"], counts["reminder_tasks"]) == (0, len(expected), 1)
    mails = smtp.wait_for(len(expected), timeout=120)
    assert sorted(m.rcpt_tos[0] for m in mails) == sorted(t.email for t in tenants_of(settings, expected).values())
    wait_reminders_sent(settings, len(expected))

    # once reminded they are not swept again, and nothing more is sent
    again = run(client, CHECK, as_of=DEMO_AS_OF.isoformat())
    assert (again["unreminded"], again["reminder_tasks"]) == (0, 0)
    assert len(reminder_rows(settings)) == len(expected)
    assert len(smtp.messages) == len(expected)


def _succeeded_results(log: str, task_name: str, task_id: str | None = None) -> list[dict[str, Any]]:
    pattern = re.compile(
        rf"Task {re.escape(task_name)}\[(?P<id>[^\]]+)\] succeeded in [0-9.e-]+s: (?P<result>.*)$", re.MULTILINE
    )
    return [ast.literal_eval(m["result"]) for m in pattern.finditer(log) if task_id is None or m["id"] == task_id]


def test_a_reminder_message_delivered_twice_sends_one_e_mail(
    client, workers, demo_db: Settings, smtp: SMTPServer
) -> None:
    settings = demo_db
    checked = run(client, CHECK, as_of=DEMO_AS_OF.isoformat())
    bills = sorted(_overdue(settings))[:3]
    # let the check's own reminders go out, then move them aside so that today's keys are free again
    wait_reminders_sent(settings, checked["newly_overdue"])
    with session_scope(settings) as session:
        session.execute(
            update(Notification)
            .where(Notification.kind == "bill_reminder")
            .values(dedupe_key=Notification.dedupe_key + ":earlier")
        )
    smtp.clear()
    finance, notifier = workers["finance"], workers["notifier"]
    # only this test's e-mail results count: an earlier test's rolled-back notification ids come again
    notifier_from = len(notifier.log())

    # the same message twice (one task id), as a broker redelivers it after a worker died
    task_id = f"reminders-{bills[0]}-twice"
    for _ in range(2):
        client.send_task(REMIND.celery_name, kwargs={"bill_ids": bills}, queue=REMIND.queue, task_id=task_id)

    def both_runs() -> list[dict[str, Any]] | None:
        found = _succeeded_results(finance.log(), REMIND.celery_name, task_id)
        return found if len(found) == 2 else None

    runs = wait_until(both_runs, timeout=90, message="both deliveries of the reminder message")
    assert sum(r["created"] for r in runs) == len(bills)  # the second delivery created nothing
    assert all(r["bills"] == len(bills) for r in runs)
    enqueued = sum(r["enqueued"] for r in runs)

    def email_results() -> list[dict[str, Any]] | None:
        ids = {
            r.id
            for r in reminder_rows(settings)
            if r.bill_id in bills and not (r.dedupe_key or "").endswith(":earlier")
        }
        found = [
            r
            for r in _succeeded_results(notifier.log()[notifier_from:], CATALOG["send_notification_email"].celery_name)
            if r.get("notification_id") in ids
        ]
        return found if len(found) >= enqueued else None

    done = wait_until(email_results, timeout=90, message="every enqueued e-mail task to finish")
    assert sum(1 for r in done if r["status"] == "sent") == len(bills)
    mails = smtp.messages
    assert len(mails) == len(bills)  # one e-mail per bill, not two
    tenants = tenants_of(settings, set(bills))
    assert sorted(m.rcpt_tos[0] for m in mails) == sorted(t.email for t in tenants.values())


def _overdue(settings: Settings) -> set[int]:
    with session_scope(settings) as session:
        return set(session.scalars(select(Bill.id).where(Bill.status == "overdue")))


def test_reminders_by_days_overdue_and_bad_addresses(client, workers, demo_db: Settings, smtp: SMTPServer) -> None:
    settings = demo_db
    checked = run(client, CHECK, as_of=DEMO_AS_OF.isoformat())
    wait_reminders_sent(settings, checked["newly_overdue"])
    today = local_today(SHANGHAI)
    with session_scope(settings) as session:
        session.execute(update(Notification).values(dedupe_key=Notification.dedupe_key + ":earlier"))
        overdue = {b.id: b.due_date for b in session.scalars(select(Bill).where(Bill.status == "overdue"))}
        ages = sorted({(today - due).days for due in overdue.values()})
        days = ages[1] if len(ages) > 1 else ages[0]  # leave the most recent arrears out when there are older ones
        selected = {b for b, due in overdue.items() if (today - due).days >= days}
        broken = min(selected) if len(selected) > 1 else min(set(overdue) - selected, default=min(selected))
        tenant_id = session.scalar(select(Bill.tenant_id).where(Bill.id == broken))
        session.execute(update(Tenant).where(Tenant.id == tenant_id).values(email="not an address"))
        # the same tenant may have other selected bills: they share the bad address
        bad_bills = set(session.scalars(select(Bill.id).where(Bill.tenant_id == tenant_id))) & selected
    smtp.clear()
    assert selected
    counts = run(client, REMIND, days_overdue=days)
    assert counts["bills"] == len(selected)
    assert counts["created"] == len(selected)
    bad = len(bad_bills)
    assert counts["invalid_address"] == bad
    assert counts["enqueued"] == len(selected) - bad
    smtp.wait_for(len(selected) - bad, timeout=120)
    current = [r for r in reminder_rows(settings) if not (r.dedupe_key or "").endswith(":earlier")]
    assert {r.bill_id for r in current} == selected
    for row in current:
        if row.bill_id in bad_bills:
            assert row.status == "failed"
            assert row.error is not None
            assert "invalid e-mail address" in row.error
    assert not any(m.rcpt_tos == ["not an address"] for m in smtp.messages)
    # paid bills are never reminded, however they are asked for
    with session_scope(settings) as session:
        paid = session.scalar(select(Bill.id).where(Bill.status == "paid").limit(1))
    assert run(client, REMIND, bill_ids=[paid, 987_654])["not_overdue"] == 2


def _expected_revenue(settings: Settings, year: int, month: int) -> dict[int, tuple[str, Decimal, int]]:
    start = dt.datetime(year, month, 1, tzinfo=SHANGHAI)
    end = dt.datetime(year + (month == 12), month % 12 + 1, 1, tzinfo=SHANGHAI)
    out: dict[int, list[Any]] = defaultdict(lambda: ["", Decimal("0"), 0])
    with session_scope(settings) as session:
        for payment, category in session.execute(select(Payment, Store.category).join(Store)):
            if start <= payment.paid_at < end:
                entry = out[payment.store_id]
                entry[0] = category
                entry[1] += Decimal(payment.amount)
                entry[2] += 1
    return {k: (v[0], v[1].quantize(Decimal("0.01")), v[2]) for k, v in out.items()}


def _stored_revenue(settings: Settings, period: str) -> dict[int, tuple[str, Decimal, int]]:
    with session_scope(settings) as session:
        return {
            r.store_id: (r.category, Decimal(r.amount).quantize(Decimal("0.01")), r.payments)
            for r in session.scalars(select(MonthlyRevenue).where(MonthlyRevenue.period == period))
        }


def test_monthly_revenue_is_stored_by_store_and_category_and_cached(
    client, workers, demo_db: Settings, redis_server: RedisServer
) -> None:
    settings = demo_db
    expected = _expected_revenue(settings, 2026, 10)
    assert expected
    summary = run(client, REVENUE, year=2026, month=10)
    assert summary["period"] == "2026-10"
    assert _stored_revenue(settings, "2026-10") == expected
    total = sum(v[1] for v in expected.values())
    assert Decimal(summary["total"]) == total
    assert summary["stores"] == len(expected)
    assert summary["payments"] == sum(v[2] for v in expected.values())
    categories: dict[str, Decimal] = defaultdict(Decimal)
    for category, amount, _ in expected.values():
        categories[category] += amount
    assert {c: Decimal(v["amount"]) for c, v in summary["by_category"].items()} == dict(categories)

    cache = redis_server.client(2)
    try:
        key = revenue_cache_key("2026-10")
        assert summary["cache_key"] == key
        raw = cache.get(key)
        assert raw is not None
        cached = json.loads(raw)
        assert Decimal(cached["total"]) == total
        assert len(cached["by_store"]) == len(expected)
        assert 3500 < cache.ttl(key) <= 3600
    finally:
        cache.close()

    # a re-run replaces the month (a changed payment shows, nothing is duplicated)
    with session_scope(settings) as session:
        payment = session.scalars(
            select(Payment)
            .where(
                Payment.paid_at >= dt.datetime(2026, 10, 5, tzinfo=dt.UTC),
                Payment.paid_at < dt.datetime(2026, 10, 25, tzinfo=dt.UTC),
            )
            .limit(1)
        ).one()
        payment.amount = Decimal(payment.amount) + Decimal("100.00")
    again = run(client, REVENUE, year=2026, month=10)
    assert Decimal(again["total"]) == total + Decimal("100.00")
    assert _stored_revenue(settings, "2026-10") == _expected_revenue(settings, 2026, 10)


def test_monthly_revenue_defaults_to_the_previous_month(client, workers, demo_db: Settings) -> None:
    today = local_today(SHANGHAI)
    year, month = (today.year, today.month - 1) if today.month > 1 else (today.year - 1, 12)
    summary = run(client, REVENUE)
    assert summary["period"] == f"{year:04d}-{month:02d}"
    assert _stored_revenue(demo_db, summary["period"]) == _expected_revenue(demo_db, year, month)


def test_revenue_month_boundaries_are_local_midnight(client, workers, demo_db: Settings) -> None:
    """A payment at 23:30 UTC on 31 October is 07:30 on 1 November in Shanghai: November's revenue."""
    settings = demo_db
    with session_scope(settings) as session:
        payment = session.scalars(select(Payment).limit(1)).one()
        payment.paid_at = dt.datetime(2026, 10, 31, 23, 30, tzinfo=dt.UTC)
        store_id = payment.store_id
    november = run(client, REVENUE, year=2026, month=11)
    october = run(client, REVENUE, year=2026, month=10)
    assert november["payments"] + october["payments"] == sum(
        v[2] for m in (10, 11) for v in _expected_revenue(settings, 2026, m).values()
    )
    assert _stored_revenue(settings, "2026-11")[store_id][2] >= 1
    assert _stored_revenue(settings, "2026-11") == _expected_revenue(settings, 2026, 11)


def test_bad_arguments_fail_at_once(client, workers) -> None:
    result = client.send_task(REVENUE.celery_name, kwargs={"year": 2026}, queue=REVENUE.queue)
    with pytest.raises(Exception, match="give both year and month"):
        result.get(timeout=60)
    result = client.send_task(REVENUE.celery_name, kwargs={"year": 2026, "month": 13}, queue=REVENUE.queue)
    with pytest.raises(Exception, match="month"):
        result.get(timeout=60)
