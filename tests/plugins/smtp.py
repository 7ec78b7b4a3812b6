"""A real SMTP server for tests (:class:`bench.smtp_server.SMTPServer`: aiosmtpd in a thread on a free
loopback port).

``smtp_server`` (session) records every message it accepts; ``service_env`` points MALLOPS_SMTP_HOST/PORT
at it, so every notifier worker a test starts delivers here. Use ``smtp_server.clear()`` at the start of
a test, ``smtp_server.wait_for(n)`` to wait for messages, and ``smtp_server.refuse(n, code)`` to make
the next ``n`` deliveries fail with an SMTP error (``451`` transient, ``550`` permanent).

``smtp_tls_server`` (session) is a second server that requires STARTTLS (a self-signed certificate made
with ``openssl`` for 127.0.0.1) and a login; its ``env`` carries the CA file, user and password.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.smtp_server import SMTP_PASSWORD, SMTP_USER, Received, SMTPServer

__all__ = ["SMTP_PASSWORD", "SMTP_USER", "Received", "SMTPServer", "self_signed_certificate"]


@pytest.fixture(scope="session")
def smtp_server() -> Iterator[SMTPServer]:
    server = SMTPServer()
    server.start()
    yield server
    server.stop()


def self_signed_certificate(directory: Path) -> tuple[Path, Path]:
    """A certificate and key for 127.0.0.1, valid for a day (openssl)."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("openssl is not installed: cannot make a certificate for the STARTTLS server")
    cert, key = directory / "smtp-cert.pem", directory / "smtp-key.pem"
    subprocess.run(
        [
            openssl,
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return cert, key


@pytest.fixture(scope="session")
def smtp_tls_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SMTPServer]:
    cert, key = self_signed_certificate(tmp_path_factory.mktemp("smtp-tls"))
    server = SMTPServer(cert, key)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def smtp(smtp_server: SMTPServer) -> SMTPServer:
    """The session's SMTP server, emptied for this test."""
    smtp_server.clear()
    return smtp_server
