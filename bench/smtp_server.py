"""A real SMTP server that records what it accepts (aiosmtpd in a thread on a free loopback port), for the
soak and the tests (``tests/plugins/smtp.py`` makes fixtures of it). ``clear()``, ``wait_for(n)`` to wait
for messages, ``refuse(n, code)`` to make the next ``n`` deliveries fail with an SMTP error (``451``
transient, ``550`` permanent); with a certificate and key it requires STARTTLS and a login.
"""

from __future__ import annotations

import asyncio
import email
import email.policy
import ssl
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from email.message import EmailMessage
from pathlib import Path
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

from bench.processes import free_port, wait_until

SMTP_USER = "mallops"
SMTP_PASSWORD = "smtp-test-password"  # noqa: S105 (the test server's own login, 127.0.0.1 only)


@dataclass
class Received:
    mail_from: str
    rcpt_tos: list[str]
    message: EmailMessage
    authenticated_as: str | None


@dataclass
class RecordingHandler:
    received: list[Received] = field(default_factory=list)
    refusals: list[str] = field(default_factory=list)  # SMTP replies to give before accepting
    attempts: int = 0
    delay: float = 0.0  # seconds to wait before answering DATA: a slow server
    rcpt_delay: float = 0.0  # seconds to wait before accepting a recipient: a message in flight, not yet taken
    lock: threading.Lock = field(default_factory=threading.Lock)

    async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str, rcpt_options: list[str]) -> str:
        if self.rcpt_delay:
            await asyncio.sleep(self.rcpt_delay)
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        if self.delay:
            await asyncio.sleep(self.delay)
        with self.lock:
            self.attempts += 1
            if self.refusals:
                return self.refusals.pop(0)
            raw = envelope.original_content or envelope.content
            parsed = email.message_from_bytes(raw, policy=email.policy.default)
            assert isinstance(parsed, EmailMessage)
            user = session.auth_data if isinstance(session.auth_data, str) else None
            self.received.append(Received(envelope.mail_from, list(envelope.rcpt_tos), parsed, user))
        return "250 Message accepted for delivery"


def _authenticate(server: Any, session: Any, envelope: Any, mechanism: str, auth_data: Any) -> AuthResult:
    ok = (
        isinstance(auth_data, LoginPassword)
        and auth_data.login == SMTP_USER.encode()
        and auth_data.password == SMTP_PASSWORD.encode()
    )
    # handled=False: aiosmtpd answers 535 itself (the default, True, means "already answered")
    return AuthResult(success=ok, handled=False, auth_data=SMTP_USER if ok else None)


class SMTPServer:
    """The running server: what it received, and knobs to make it refuse."""

    def __init__(self, cert: Path | None = None, key: Path | None = None) -> None:
        self.handler = RecordingHandler()
        self.port = free_port()
        self.host = "127.0.0.1"
        self.cert = cert
        security: dict[str, Any] = {"auth_require_tls": False, "auth_required": False}
        if cert is not None and key is not None:
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            context.load_cert_chain(cert, key)
            security = {"tls_context": context, "require_starttls": True, "auth_required": True}
        self.controller = Controller(
            self.handler, hostname=self.host, port=self.port, authenticator=_authenticate, **security
        )

    @property
    def env(self) -> dict[str, str]:
        """MALLOPS_* settings that point a notifier at this server."""
        env = {"MALLOPS_SMTP_HOST": self.host, "MALLOPS_SMTP_PORT": str(self.port), "MALLOPS_SMTP_STARTTLS": "false"}
        if self.cert is not None:
            env |= {
                "MALLOPS_SMTP_STARTTLS": "true",
                "MALLOPS_SMTP_CA_FILE": str(self.cert),
                "MALLOPS_SMTP_USER": SMTP_USER,
                "MALLOPS_SMTP_PASSWORD": SMTP_PASSWORD,
            }
        return env

    def start(self) -> None:
        self.controller.start()

    def stop(self) -> None:
        self.controller.stop()

    @property
    def messages(self) -> list[Received]:
        with self.handler.lock:
            return list(self.handler.received)

    @property
    def attempts(self) -> int:
        with self.handler.lock:
            return self.handler.attempts

    def clear(self) -> None:
        with self.handler.lock:
            self.handler.received.clear()
            self.handler.refusals.clear()
            self.handler.attempts = 0

    def refuse(self, count: int, reply: str = "451 4.3.0 Try again later") -> None:
        """Answer the next ``count`` DATA commands with ``reply`` instead of accepting."""
        with self.handler.lock:
            self.handler.refusals.extend([reply] * count)

    def to(self, address: str) -> list[Received]:
        return [m for m in self.messages if address in m.rcpt_tos]

    def wait_for(
        self, count: int, timeout: float = 60.0, where: Callable[[Received], bool] | None = None
    ) -> list[Received]:
        """Wait until at least ``count`` (matching) messages arrived; return them."""

        def enough() -> list[Received] | None:
            found = [m for m in self.messages if where is None or where(m)]
            return found if len(found) >= count else None

        if count <= 0:
            return [m for m in self.messages if where is None or where(m)]
        return wait_until(enough, timeout=timeout, interval=0.1, message=f"{count} e-mail(s)")
