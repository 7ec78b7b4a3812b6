"""The notifier worker against a real SMTP server (aiosmtpd), a real broker and a real database."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterator

import pytest
from celery import Celery
from sqlalchemy import func, select

from shared.catalog import CATALOG
from shared.celery_app import create_celery_app
from shared.db import session_scope
from shared.models import Notification, utcnow
from shared.settings import Settings
from tests.harness import Process, RedisServer, free_port, wait_until
from tests.plugins.smtp import SMTPServer

pytestmark = pytest.mark.integration

SEND = CATALOG["send_notification_email"]
CLEANUP = CATALOG["cleanup_old_notifications"]


@pytest.fixture
def client(settings: Settings) -> Iterator[Celery]:
    app = create_celery_app("test-client", settings)
    yield app
    app.close()


@pytest.fixture
def notifier(running_worker: Callable[[str], Process], migrated: Settings) -> Process:
    return running_worker("notifier")


def new_notification(
    settings: Settings,
    email: str,
    subject: str,
    message: str,
    language: str = "en",
    created_at: dt.datetime | None = None,
    status: str = "queued",
) -> int:
    with session_scope(settings) as session:
        row = Notification(
            kind="manual",
            email=email,
            subject=subject,
            message=message,
            language=language,
            status=status,
            created_at=created_at or utcnow(),
        )
        session.add(row)
        session.flush()
        return int(row.id)


def notification(settings: Settings, notification_id: int) -> Notification:
    with session_scope(settings) as session:
        row = session.get(Notification, notification_id)
        assert row is not None
        session.expunge(row)
        return row


def parts(received) -> tuple[str, str]:
    text = received.message.get_body(preferencelist=("plain",)).get_content()
    html = received.message.get_body(preferencelist=("html",)).get_content()
    return text, html


def test_english_e_mail_arrives_with_english_templates(client, notifier, smtp: SMTPServer, settings) -> None:
    result = client.send_task(
        SEND.celery_name,
        queue=SEND.queue,
        kwargs={
            "email": "alice@example.com",
            "subject": "Your report is ready",
            "message": "Hello <Alice> & co.",
            "language": "en",
        },
    )
    outcome = result.get(timeout=60)
    assert outcome["status"] == "sent"
    [mail] = smtp.wait_for(1, where=lambda m: "alice@example.com" in m.rcpt_tos)
    assert mail.message["Subject"] == "Your report is ready"
    assert mail.message["Content-Language"] == "en"
    assert mail.mail_from == settings.mail_from
    text, html = parts(mail)
    assert "Hello <Alice> & co." in text
    assert "Mall Operations" in text
    assert "商场运营中心" not in text
    assert '<html lang="en">' in html
    assert "Hello &lt;Alice&gt; &amp; co." in html  # values are escaped in the HTML part
    row = notification(settings, outcome["notification_id"])
    assert (row.status, row.kind, row.email) == ("sent", "manual", "alice@example.com")
    assert row.sent_at is not None
    # the same on every attempt, so a copy re-sent after a worker died mid-send is recognisably the same
    assert mail.message["Message-ID"] == f"<notification-{row.id}@{settings.mail_from.rpartition('@')[2]}>"


def test_chinese_e_mail_arrives_with_chinese_templates(client, notifier, smtp: SMTPServer) -> None:
    result = client.send_task(
        SEND.celery_name,
        queue=SEND.queue,
        kwargs={"email": "wang@example.com", "subject": "账单提醒", "message": "您好，您的账单已逾期。"},
    )
    assert result.get(timeout=60)["status"] == "sent"
    [mail] = smtp.wait_for(1, where=lambda m: "wang@example.com" in m.rcpt_tos)
    assert mail.message["Subject"] == "账单提醒"
    assert mail.message["Content-Language"] == "zh-CN"
    text, html = parts(mail)
    assert "您好，您的账单已逾期。" in text
    assert "商场运营中心" in text
    assert '<html lang="zh-CN">' in html


def test_a_notification_already_sent_is_not_sent_again(client, notifier, smtp: SMTPServer, settings) -> None:
    nid = new_notification(settings, "bob@example.com", "Once", "Only once, please.")
    kwargs = {
        "email": "bob@example.com",
        "subject": "Once",
        "message": "Only once, please.",
        "language": "en",
        "notification_id": nid,
    }
    first = client.send_task(SEND.celery_name, queue=SEND.queue, kwargs=kwargs)
    assert first.get(timeout=60) == {"notification_id": nid, "status": "sent", "sent": True, "language": "en"}
    second = client.send_task(SEND.celery_name, queue=SEND.queue, kwargs=kwargs)
    assert second.get(timeout=60) == {"notification_id": nid, "status": "already_sent", "sent": False}
    assert len(smtp.to("bob@example.com")) == 1
    assert notification(settings, nid).status == "sent"


def test_the_same_message_delivered_twice_sends_one_e_mail(client, notifier, smtp: SMTPServer, settings) -> None:
    """Two copies of one task message (same task id), as after a redelivery, concurrently."""
    kwargs = {"email": "twice@example.com", "subject": "Twice", "message": "Delivered twice.", "language": "en"}
    task_id = "redelivered-0001"
    a = client.send_task(SEND.celery_name, queue=SEND.queue, kwargs=kwargs, task_id=task_id)
    b = client.send_task(SEND.celery_name, queue=SEND.queue, kwargs=kwargs, task_id=task_id)
    a.get(timeout=60)  # one result id for both: the first copy to finish answers
    b.get(timeout=60)

    def rows() -> list[tuple[str, str | None]]:
        with session_scope(settings) as session:
            found = session.scalars(select(Notification).where(Notification.email == "twice@example.com")).all()
            return [(r.status, r.dedupe_key) for r in found]

    wait_until(lambda: rows() == [("sent", f"email-task:{task_id}")], timeout=60, message="the row to be sent")
    # both copies have run: the one that claimed the row sent it, the other found it taken
    wait_until(lambda: notifier.log().count(f"[{task_id}] succeeded") == 2, timeout=60, message="both copies")
    assert len(smtp.to("twice@example.com")) == 1


def test_invalid_address_fails_at_once(client, notifier, smtp: SMTPServer) -> None:
    result = client.send_task(
        SEND.celery_name, queue=SEND.queue, kwargs={"email": "not-an-address", "subject": "x", "message": "y"}
    )
    with pytest.raises(
        Exception, match="invalid arguments for send_notification_email: email: value is not a valid email address"
    ) as failure:
        result.get(timeout=60)
    assert type(failure.value).__name__ == "InvalidTaskArguments"
    assert result.state == "FAILURE"
    assert smtp.attempts == 0


def test_permanent_smtp_refusal_fails_at_once_and_marks_the_row(client, notifier, smtp: SMTPServer, settings) -> None:
    smtp.refuse(1, "550 5.1.1 Mailbox does not exist")
    nid = new_notification(settings, "gone@example.com", "Gone", "Nobody home.")
    result = client.send_task(
        SEND.celery_name,
        queue=SEND.queue,
        kwargs={"email": "gone@example.com", "subject": "Gone", "message": "Nobody home.", "notification_id": nid},
    )
    with pytest.raises(Exception, match="Mailbox does not exist"):
        result.get(timeout=60)
    assert result.state == "FAILURE"
    assert smtp.attempts == 1  # no retry
    row = notification(settings, nid)
    assert row.status == "failed"
    assert row.error is not None
    assert "550" in row.error


def test_unknown_notification_fails_clearly(client, notifier) -> None:
    result = client.send_task(
        SEND.celery_name,
        queue=SEND.queue,
        kwargs={"email": "x@example.com", "subject": "x", "message": "y", "notification_id": 999_999_999},
    )
    with pytest.raises(Exception, match="notification 999999999 does not exist"):
        result.get(timeout=60)


def test_notifier_runs_a_thread_pool(client, notifier) -> None:
    stats = client.control.inspect(timeout=5).stats() or {}
    pools = [s["pool"] for name, s in stats.items() if name.startswith("notifier-")]
    assert pools, stats.keys()
    assert all("thread" in p["implementation"] for p in pools)
    assert all(p["max-concurrency"] == 8 for p in pools)


# -- transient refusals: retried, then delivered --------------------------------------------------

RETRY_BROKER_DB = 6


@pytest.fixture
def retry_worker(
    worker_factory: Callable[..., Process], service_env: dict[str, str], redis_server: RedisServer, migrated: Settings
) -> Iterator[tuple[Process, str]]:
    """A notifier of its own (own broker database, so no other notifier takes the message), quick backoff."""
    broker = f"{redis_server.url_base}/{RETRY_BROKER_DB}"
    redis_server.client(RETRY_BROKER_DB).flushdb()
    env = service_env | {"MALLOPS_BROKER_URL": broker, "MALLOPS_TASK_RETRY_BACKOFF": "0.2"}
    worker = worker_factory("notifier", env=env)
    yield worker, broker
    worker.stop()


def test_smtp_that_refuses_at_first_gets_the_e_mail_after_a_retry(retry_worker, smtp: SMTPServer, settings) -> None:
    _, broker = retry_worker
    app = create_celery_app("test-client", settings.model_copy(update={"broker_url": broker}))
    try:
        smtp.refuse(2, "451 4.7.1 Greylisted, try again later")
        nid = new_notification(settings, "later@example.com", "Retry", "Try, try again.")
        result = app.send_task(
            SEND.celery_name,
            queue=SEND.queue,
            kwargs={
                "email": "later@example.com",
                "subject": "Retry",
                "message": "Try, try again.",
                "notification_id": nid,
            },
        )
        assert result.get(timeout=90)["status"] == "sent"
        [mail] = smtp.wait_for(1, where=lambda m: "later@example.com" in m.rcpt_tos)
        assert mail.message["Subject"] == "Retry"
        assert smtp.attempts == 3  # two refusals, then accepted
        row = notification(settings, nid)
        assert row.status == "sent"
        assert row.error is None
    finally:
        app.close()


def test_smtp_refusing_every_time_fails_after_the_retries(retry_worker, smtp: SMTPServer, settings) -> None:
    _, broker = retry_worker
    app = create_celery_app("test-client", settings.model_copy(update={"broker_url": broker}))
    try:
        smtp.refuse(10, "421 4.3.2 Service not available")
        nid = new_notification(settings, "never@example.com", "Never", "Never arrives.")
        result = app.send_task(
            SEND.celery_name,
            queue=SEND.queue,
            kwargs={
                "email": "never@example.com",
                "subject": "Never",
                "message": "Never arrives.",
                "notification_id": nid,
            },
        )
        with pytest.raises(Exception, match="Service not available"):
            result.get(timeout=90)
        assert smtp.attempts == 1 + settings.task_max_retries
        row = notification(settings, nid)
        assert row.status == "failed"
        assert row.error is not None
        assert "421" in row.error
    finally:
        app.close()


# -- retention ------------------------------------------------------------------------------------


def test_cleanup_old_notifications_deletes_past_retention_in_batches(client, notifier, settings) -> None:
    now = utcnow()
    with session_scope(settings) as session:
        session.query(Notification).delete()
    old = [
        new_notification(settings, f"old{i}@example.com", "old", "old", created_at=now - dt.timedelta(days=40))
        for i in range(5)
    ]
    recent = [
        new_notification(settings, f"new{i}@example.com", "new", "new", created_at=now - dt.timedelta(days=3))
        for i in range(3)
    ]
    result = client.send_task(CLEANUP.celery_name, queue=CLEANUP.queue, kwargs={"days": 30})
    outcome = result.get(timeout=60)
    assert outcome["deleted"] == 5
    assert outcome["batches"] == 1
    with session_scope(settings) as session:
        left = set(session.scalars(select(Notification.id)))
        assert left == set(recent)
        assert not left & set(old)
        # a second run finds nothing more
    again = client.send_task(CLEANUP.celery_name, queue=CLEANUP.queue, kwargs={"days": 30}).get(timeout=60)
    assert again["deleted"] == 0
    with session_scope(settings) as session:
        assert session.scalar(select(func.count()).select_from(Notification)) == 3


# -- STARTTLS and login ---------------------------------------------------------------------------

TLS_BROKER_DB = 7


def test_starttls_and_login_from_settings(
    worker_factory: Callable[..., Process],
    service_env: dict[str, str],
    redis_server: RedisServer,
    smtp_tls_server: SMTPServer,
    settings: Settings,
    migrated: Settings,
) -> None:
    """A server that requires STARTTLS and a login gets the e-mail; a wrong password fails at once."""
    smtp_tls_server.clear()
    broker = f"{redis_server.url_base}/{TLS_BROKER_DB}"
    redis_server.client(TLS_BROKER_DB).flushdb()
    worker = worker_factory("notifier", env=service_env | smtp_tls_server.env | {"MALLOPS_BROKER_URL": broker})
    app = create_celery_app("test-client", settings.model_copy(update={"broker_url": broker}))
    try:
        result = app.send_task(
            SEND.celery_name,
            queue=SEND.queue,
            kwargs={
                "email": "secure@example.com",
                "subject": "Over TLS",
                "message": "Encrypted on the way.",
                "language": "en",
            },
        )
        assert result.get(timeout=60)["status"] == "sent"
        [mail] = smtp_tls_server.wait_for(1)
        assert mail.authenticated_as == "mallops"
        assert mail.rcpt_tos == ["secure@example.com"]
    finally:
        worker.stop()
        app.close()

    wrong = service_env | smtp_tls_server.env | {"MALLOPS_BROKER_URL": broker, "MALLOPS_SMTP_PASSWORD": "wrong"}
    worker = worker_factory("notifier", env=wrong)
    app = create_celery_app("test-client", settings.model_copy(update={"broker_url": broker}))
    try:
        attempts = smtp_tls_server.attempts
        result = app.send_task(
            SEND.celery_name,
            queue=SEND.queue,
            kwargs={
                "email": "secure@example.com",
                "subject": "Wrong password",
                "message": "Refused.",
                "language": "en",
            },
        )
        with pytest.raises(Exception, match="SMTP login as 'mallops' refused"):
            result.get(timeout=60)
        assert smtp_tls_server.attempts == attempts  # never got as far as sending
    finally:
        worker.stop()
        app.close()


def test_a_sent_e_mail_that_cannot_be_recorded_is_not_retried(settings: Settings) -> None:
    """After the SMTP server took the message, a database outage must not lead to a second send."""
    from services.notifier import tasks
    from shared.celery_extensions.task_base import is_transient
    from shared.errors import PermanentError

    unreachable = settings.model_copy(update={"database_url": f"postgresql://mallops@127.0.0.1:{free_port()}/x"})
    with pytest.raises(PermanentError, match="was sent but could not be recorded") as failure:
        tasks._record_sent(unreachable, 1, attempts=2)
    assert not is_transient(failure.value)


def test_cleanup_works_in_batches(migrated: Settings) -> None:
    from services.notifier import notifications

    with session_scope(migrated) as session:
        session.query(Notification).delete()
    old = utcnow() - dt.timedelta(days=31)
    for i in range(5):
        new_notification(migrated, f"b{i}@example.com", "s", "m", created_at=old)
    keep = new_notification(migrated, "keep@example.com", "s", "m")
    result = notifications.cleanup_old(migrated, days=30, batch_size=2)
    assert (result.deleted, result.batches) == (5, 3)
    with session_scope(migrated) as session:
        assert list(session.scalars(select(Notification.id))) == [keep]
