"""Composing and sending one notification e-mail over SMTP (stdlib ``smtplib`` and ``email.message``).

Templates are ``templates/email.<language>.txt|html`` rendered with :class:`string.Template`: four
fixed placeholders do not need a template engine, and every value put into the HTML part is escaped
with :func:`html.escape` here, in one place.

Errors: SMTP 4xx replies and lost connections propagate as they are (the shared task base retries
them); 5xx replies are permanent; TLS or authentication trouble is a configuration problem, reported
as :class:`~shared.errors.PermanentError` with a message that says what to fix.
"""

from __future__ import annotations

import datetime as dt
import functools
import html
import smtplib
import ssl
import string
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid
from importlib import resources
from typing import Literal

from shared.errors import PermanentError
from shared.settings import Settings

Language = Literal["zh_CN", "en"]
LANGUAGES: tuple[Language, ...] = ("zh_CN", "en")
CONTENT_LANGUAGE: dict[Language, str] = {"zh_CN": "zh-CN", "en": "en"}


@functools.cache
def _template(language: Language, kind: Literal["txt", "html"]) -> string.Template:
    text = (
        resources.files("services.notifier")
        .joinpath("templates", f"email.{language}.{kind}")
        .read_text(encoding="utf-8")
    )
    return string.Template(text)


def render(subject: str, message: str, language: Language) -> tuple[str, str]:
    """The plain-text and HTML bodies of a notification in ``language``."""
    if language not in LANGUAGES:
        raise PermanentError(f"unsupported language {language!r}; use one of {', '.join(LANGUAGES)}")
    text = _template(language, "txt").substitute(message=message, subject=subject)
    paragraphs = "".join(
        f"<p>{html.escape(block).replace(chr(10), '<br>')}</p>" for block in message.split("\n\n") if block.strip()
    )
    body_html = _template(language, "html").substitute(subject=html.escape(subject), message_html=paragraphs)
    return text, body_html


def compose(
    settings: Settings,
    to: str,
    subject: str,
    message: str,
    language: Language,
    message_id: str | None = None,
) -> EmailMessage:
    """A multipart/alternative message (text + HTML) from ``settings.mail_from`` to ``to``."""
    text, body_html = render(subject, message, language)
    msg = EmailMessage()
    msg["From"] = settings.mail_from
    msg["To"] = Address(addr_spec=to)
    msg["Subject"] = subject
    msg["Date"] = format_datetime(dt.datetime.now(dt.UTC))  # not shared.models: no SQLAlchemy at start
    msg["Message-ID"] = message_id or make_msgid(domain=settings.mail_from.rpartition("@")[2] or None)
    msg["Auto-Submitted"] = "auto-generated"
    msg.set_content(text, charset="utf-8")
    msg.add_alternative(body_html, subtype="html", charset="utf-8")
    msg["Content-Language"] = CONTENT_LANGUAGE[language]  # after the body: set_content drops Content-*
    return msg


def send(settings: Settings, msg: EmailMessage) -> None:
    """Deliver ``msg`` through the configured SMTP server (STARTTLS and login when configured)."""
    with smtplib.SMTP(settings.smtp_host, settings.smtp_port, timeout=settings.smtp_timeout) as smtp:
        smtp.ehlo()
        if settings.smtp_starttls:
            try:
                smtp.starttls(context=ssl.create_default_context(cafile=settings.smtp_ca_file or None))
            except smtplib.SMTPNotSupportedError as exc:
                raise PermanentError(
                    f"SMTP server {settings.smtp_host}:{settings.smtp_port} does not offer STARTTLS "
                    "(set MALLOPS_SMTP_STARTTLS=false only if the link is trusted)"
                ) from exc
            except ssl.SSLCertVerificationError as exc:
                raise PermanentError(f"SMTP server certificate not trusted: {exc.verify_message}") from exc
            smtp.ehlo()
        if settings.smtp_user:
            try:
                smtp.login(settings.smtp_user, settings.smtp_password.get_secret_value())
            except smtplib.SMTPAuthenticationError as exc:
                raise PermanentError(
                    f"SMTP login as {settings.smtp_user!r} refused ({exc.smtp_code}); check MALLOPS_SMTP_USER "
                    "and MALLOPS_SMTP_PASSWORD"
                ) from exc
            except smtplib.SMTPNotSupportedError as exc:
                raise PermanentError("SMTP server does not offer AUTH; unset MALLOPS_SMTP_USER") from exc
        smtp.send_message(msg)
