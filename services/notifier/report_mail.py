"""The month's report e-mailed to the management: a stored report's CSV and HTML page attached, sent to
the addresses in ``MALLOPS_MANAGEMENT_EMAILS`` (settings only: a request never names them)."""

from __future__ import annotations

import mimetypes
from dataclasses import dataclass
from email.message import EmailMessage
from pathlib import Path

from sqlalchemy.orm import Session

from services.notifier import mailer
from shared.errors import PermanentError
from shared.files import resolve_under
from shared.models import Report
from shared.settings import Settings


@dataclass(frozen=True)
class ReportMail:
    report_id: int
    subject: str
    message: str
    attachments: tuple[Path, ...]


def recipients(settings: Settings) -> tuple[str, ...]:
    if not settings.management_emails:
        raise PermanentError("MALLOPS_MANAGEMENT_EMAILS is empty: nobody to send the report to")
    return settings.management_emails


def load(session: Session, settings: Settings, report_id: int) -> ReportMail:
    """What to send for report ``report_id``; PermanentError when the report or its files are missing."""
    report = session.get(Report, report_id)
    if report is None:
        raise PermanentError(f"report {report_id} does not exist")
    files = [resolve_under(settings.reports_dir, name) for name in (report.csv_path, report.html_path) if name]
    missing = [str(path) for path in files if not path.is_file()]
    if not files or missing:
        raise PermanentError(f"report {report_id} has no files to attach (missing: {', '.join(missing) or 'all'})")
    period = report.period_start.date().isoformat()
    subject = f"mallops {report.kind} report {period}"
    message = (
        f"The {report.kind} report for the period starting {period} is attached "
        f"({', '.join(path.name for path in files)})."
    )
    return ReportMail(report.id, subject, message, tuple(files))


def compose(settings: Settings, mail: ReportMail, to: tuple[str, ...], message_id: str) -> EmailMessage:
    """A multipart/mixed e-mail: the text and HTML body, then each report file attached."""
    msg = mailer.compose(settings, to[0], mail.subject, mail.message, settings.report_language, message_id)
    del msg["To"]
    msg["To"] = ", ".join(to)
    for path in mail.attachments:
        kind, _ = mimetypes.guess_type(path.name)
        maintype, _, subtype = (kind or "application/octet-stream").partition("/")
        msg.add_attachment(path.read_bytes(), maintype=maintype, subtype=subtype, filename=path.name)
    return msg
