"""Bill reminders: at most one per overdue bill per day, each a notification row, in the tenant's language.

The row's unique ``dedupe_key`` (``bill-reminder:<bill_id>:<YYYY-MM-DD>``, the mall's local date) is
what makes a second run, or a second delivery of the same message, harmless: the insert does nothing
for a key that exists. Rows still ``queued`` are handed back for sending (again) so that a run that died
between its commit and its enqueue is completed by the next delivery; the notifier claims each row
before sending, so that cannot send an e-mail twice.
"""

from __future__ import annotations

import datetime as dt
import string
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from email_validator import EmailNotValidError, validate_email
from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from shared.models import Bill, Notification, Store, Tenant, utcnow

LANGUAGES = ("zh_CN", "en")
KIND = "bill_reminder"
INSERT_BATCH = 500

_KIND_NAMES = {
    "zh_CN": {"rent": "租金", "management": "物业管理费", "utilities": "水电费"},
    "en": {"rent": "rent", "management": "management fee", "utilities": "utilities"},
}
_SUBJECT = {
    "zh_CN": string.Template("【缴费提醒】$store $period $kind账单已逾期"),
    "en": string.Template("Payment reminder: $store, $kind for $period is overdue"),
}
_MESSAGE = {
    "zh_CN": string.Template(
        "尊敬的$contact：\n\n"
        "您的店铺「$store」（$code）$period 的$kind账单（编号 $bill_id）金额 ¥$amount，"
        "已于 $due_date 到期，至今已逾期 $days 天。\n\n"
        "请尽快完成缴费。如您已缴费，请忽略此提醒。如有疑问，请联系商场财务部。"
    ),
    "en": string.Template(
        "Dear $contact,\n\n"
        'The $kind bill for $period of your store "$store" ($code), bill no. $bill_id, '
        "amount CNY $amount, was due on $due_date and is now $days day(s) overdue.\n\n"
        "Please pay it as soon as possible. If you have already paid, please ignore this reminder. "
        "For questions, contact the mall's finance office."
    ),
}


def dedupe_key(bill_id: int, day: dt.date) -> str:
    return f"bill-reminder:{bill_id}:{day.isoformat()}"


def language_of(tenant: Tenant) -> str:
    return tenant.language if tenant.language in LANGUAGES else "zh_CN"


def render(bill: Bill, tenant: Tenant, store: Store, today: dt.date) -> tuple[str, str, str]:
    """(language, subject, message) of the reminder for ``bill``."""
    language = language_of(tenant)
    values = {
        "contact": tenant.contact_name,
        "store": store.name,
        "code": store.code,
        "period": bill.period,
        "kind": _KIND_NAMES[language].get(bill.kind, bill.kind),
        "bill_id": bill.id,
        "amount": f"{Decimal(bill.amount):,.2f}",
        "due_date": bill.due_date.isoformat(),
        "days": (today - bill.due_date).days,
    }
    return language, _SUBJECT[language].substitute(values)[:200], _MESSAGE[language].substitute(values)


@dataclass(frozen=True)
class Reminder:
    """A notification row ready to be sent as a send_notification_email task."""

    notification_id: int
    email: str
    subject: str
    message: str
    language: str

    def email_kwargs(self) -> dict[str, object]:
        return {
            "email": self.email,
            "subject": self.subject,
            "message": self.message,
            "language": self.language,
            "notification_id": self.notification_id,
        }


@dataclass
class ReminderRun:
    day: dt.date
    bills: int = 0  # overdue bills selected
    created: int = 0  # new notification rows
    already_reminded: int = 0  # today's reminder was sent or attempted before
    invalid_address: int = 0  # rows recorded as failed, not sent
    not_overdue: int = 0  # requested ids that are unknown, paid or not yet overdue
    to_send: list[Reminder] = field(default_factory=list)

    def counts(self) -> dict[str, object]:
        return {
            "date": self.day.isoformat(),
            "bills": self.bills,
            "created": self.created,
            "already_reminded": self.already_reminded,
            "invalid_address": self.invalid_address,
            "not_overdue": self.not_overdue,
            "enqueued": len(self.to_send),
        }


def _valid_address(address: str) -> str | None:
    try:
        return str(validate_email(address, check_deliverability=False).normalized)
    except EmailNotValidError:
        return None


def prepare(
    session: Session, *, today: dt.date, bill_ids: list[int] | None = None, days_overdue: int | None = None
) -> ReminderRun:
    """Record today's reminder rows for the selected overdue bills; return those that still need sending.

    Selection: ``bill_ids`` (only those that are overdue), else every overdue bill at least
    ``days_overdue`` days past its due date.
    """
    run = ReminderRun(today)
    rows = _overdue_rows(session, run, today, bill_ids, days_overdue)
    run.bills = len(rows)
    now = utcnow()
    values = [_reminder_row(bill, tenant, store, today, now) for bill, tenant, store in rows]
    insert = pg_insert if session.get_bind().dialect.name == "postgresql" else sqlite_insert
    for i in range(0, len(values), INSERT_BATCH):
        created = session.execute(
            insert(Notification)
            .values(values[i : i + INSERT_BATCH])
            .on_conflict_do_nothing(index_elements=["dedupe_key"])
            .returning(Notification.id)
        )
        run.created += len(created.all())
    _sort_out(session, run, [v["dedupe_key"] for v in values])
    return run


def _overdue_rows(
    session: Session, run: ReminderRun, today: dt.date, bill_ids: list[int] | None, days_overdue: int | None
) -> list[tuple[Bill, Tenant, Store]]:
    """The selected overdue bills with their tenant and store (counting the requested ids that are not)."""
    query = (
        select(Bill, Tenant, Store)
        .join(Tenant, Tenant.id == Bill.tenant_id)
        .join(Store, Store.id == Bill.store_id)
        .where(Bill.status == "overdue")
        .order_by(Bill.id)
    )
    if bill_ids is None:
        cutoff = today - dt.timedelta(days=days_overdue or 0)
        return [(bill, tenant, store) for bill, tenant, store in session.execute(query.where(Bill.due_date <= cutoff))]
    wanted = sorted(set(bill_ids))
    rows: list[tuple[Bill, Tenant, Store]] = []
    for i in range(0, len(wanted), INSERT_BATCH):
        batch = session.execute(query.where(Bill.id.in_(wanted[i : i + INSERT_BATCH])))
        rows.extend((bill, tenant, store) for bill, tenant, store in batch)
    run.not_overdue = len(wanted) - len(rows)
    return rows


def _reminder_row(bill: Bill, tenant: Tenant, store: Store, today: dt.date, now: dt.datetime) -> dict[str, Any]:
    """Today's notification row for an overdue bill (failed at once when the address is invalid)."""
    language, subject, message = render(bill, tenant, store, today)
    address = _valid_address(tenant.email)
    return {
        "dedupe_key": dedupe_key(bill.id, today),
        "kind": KIND,
        "tenant_id": tenant.id,
        "bill_id": bill.id,
        "email": address or tenant.email,
        "subject": subject,
        "message": message,
        "language": language,
        "status": "queued" if address else "failed",
        "error": None if address else f"invalid e-mail address {tenant.email!r}",
        "created_at": now,
    }


def _sort_out(session: Session, run: ReminderRun, keys: list[str]) -> None:
    """Today's rows of the selected bills: queued ones are to send; the others were dealt with before."""
    for i in range(0, len(keys), INSERT_BATCH):
        for row in session.scalars(
            select(Notification)
            .where(Notification.dedupe_key.in_(keys[i : i + INSERT_BATCH]))
            .order_by(Notification.id)
        ):
            if row.status == "queued":
                run.to_send.append(Reminder(row.id, row.email, row.subject, row.message, row.language))
            elif row.status == "failed" and row.error and row.error.startswith("invalid e-mail address"):
                run.invalid_address += 1
            else:  # sent, being sent, or failed at the SMTP server: not again today
                run.already_reminded += 1
