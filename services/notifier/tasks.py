"""Thin Celery task bodies of the notifier service.

The modules that need SQLAlchemy (the notification rows, the stored reports, the database session) are
imported by the task that uses them, not when the worker starts: an idle worker holds no SQLAlchemy
(docs/performance.md, idle memory)."""

from __future__ import annotations

import time
from typing import Any

from celery import Celery

from services.notifier import mailer
from shared.celery_extensions.task_base import MallopsTask, is_transient, register
from shared.errors import PermanentError
from shared.settings import Settings


def send_notification_email(
    task: MallopsTask,
    email: str,
    subject: str,
    message: str,
    language: mailer.Language,
    notification_id: int | None,
) -> dict[str, Any]:
    from services.notifier import notifications
    from shared.db import session_scope

    settings = task.settings
    if notification_id is None:  # a direct send: its row is keyed by the task id, so redelivery finds it
        with session_scope(settings) as session:
            notification_id = notifications.record_manual(
                session,
                dedupe_key=f"email-task:{task.request.id}",
                email=email,
                subject=subject,
                message=message,
                language=language,
            )
    with session_scope(settings) as session:
        # a redelivered message takes over its own claim: its previous run's worker died mid-send
        redelivered = bool((task.request.delivery_info or {}).get("redelivered"))
        state, _ = notifications.claim(session, notification_id, take_over=redelivered)
    if state == "missing":
        raise PermanentError(f"notification {notification_id} does not exist")
    if state != "claimed":
        return {"notification_id": notification_id, "status": state, "sent": False}

    # One Message-ID per notification, the same on every attempt: if a worker dies after the server took
    # the message but before the row says sent, the redelivered copy is recognisably the same e-mail
    # (mail stores and clients drop a second message with a Message-ID they already have).
    domain = settings.mail_from.rpartition("@")[2] or "mallops.invalid"
    msg = mailer.compose(
        settings, email, subject, message, language, message_id=f"<notification-{notification_id}@{domain}>"
    )
    try:
        mailer.send(settings, msg)
    except Exception as exc:
        retry_follows = is_transient(exc) and task.request.retries < settings.task_max_retries
        with session_scope(settings) as session:
            notifications.release(session, notification_id, f"{type(exc).__name__}: {exc}", final=not retry_follows)
        raise
    _record_sent(settings, notification_id)
    return {"notification_id": notification_id, "status": "sent", "sent": True, "language": language}


def _record_sent(settings: Settings, notification_id: int, attempts: int = 4) -> None:
    """Mark the row sent, retrying here on a database blip: the e-mail is out, so a task retry (which
    would find the row still claimed) must not be the way to record it."""
    from services.notifier import notifications
    from shared.db import session_scope

    for attempt in range(attempts):
        try:
            with session_scope(settings) as session:
                notifications.mark_sent(session, notification_id)
            return
        except Exception as exc:
            if attempt == attempts - 1 or not is_transient(exc):
                raise PermanentError(
                    f"e-mail for notification {notification_id} was sent but could not be "
                    f"recorded ({type(exc).__name__}: {exc}); not retried, to avoid a duplicate"
                ) from exc
            time.sleep(0.5 * 2**attempt)


def send_report_email(task: MallopsTask, report_id: int | None) -> dict[str, Any]:
    """E-mail a stored report to MALLOPS_MANAGEMENT_EMAILS, once per task (its notification row is keyed
    by the task id, so a redelivered message finds the e-mail already sent)."""
    from services.notifier import notifications, report_mail
    from shared.db import session_scope

    settings = task.settings
    if report_id is None:
        raise PermanentError("report_id is required (in a workflow, the previous step's result gives it)")
    to = report_mail.recipients(settings)
    with session_scope(settings) as session:
        mail = report_mail.load(session, settings, report_id)
        notification_id = notifications.record_manual(
            session,
            dedupe_key=f"report-email:{task.request.id}",
            email=", ".join(to)[:254],
            subject=mail.subject,
            message=mail.message,
            language=settings.report_language,
        )
    with session_scope(settings) as session:
        redelivered = bool((task.request.delivery_info or {}).get("redelivered"))
        state, _ = notifications.claim(session, notification_id, take_over=redelivered)
    if state != "claimed":
        return {"report_id": report_id, "notification_id": notification_id, "status": state, "sent": False}
    domain = settings.mail_from.rpartition("@")[2] or "mallops.invalid"
    msg = report_mail.compose(settings, mail, to, f"<notification-{notification_id}@{domain}>")
    try:
        mailer.send(settings, msg)
    except Exception as exc:
        retry_follows = is_transient(exc) and task.request.retries < settings.task_max_retries
        with session_scope(settings) as session:
            notifications.release(session, notification_id, f"{type(exc).__name__}: {exc}", final=not retry_follows)
        raise
    _record_sent(settings, notification_id)
    return {"report_id": report_id, "notification_id": notification_id, "status": "sent", "sent": True, "to": len(to)}


def cleanup_old_notifications(task: MallopsTask, days: int) -> dict[str, object]:
    from services.notifier import notifications

    return notifications.cleanup_old(task.settings, days).as_dict()


def register_all(app: Celery) -> None:
    register(app, "send_notification_email", send_notification_email)
    register(app, "send_report_email", send_report_email)
    register(app, "cleanup_old_notifications", cleanup_old_notifications)
