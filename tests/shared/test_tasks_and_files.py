from __future__ import annotations

import random
import smtplib
from pathlib import Path

import pytest
import sqlalchemy.exc
from celery.exceptions import SoftTimeLimitExceeded
from pydantic import ValidationError

from shared.celery_extensions.task_base import is_transient, retry_delay
from shared.errors import PermanentError, TransientError
from shared.files import atomic_path, atomic_write, sha256_of


@pytest.mark.parametrize(
    "exc",
    [
        TransientError("later"),
        ConnectionRefusedError(111, "refused"),
        TimeoutError("slow"),
        smtplib.SMTPServerDisconnected("gone"),
        smtplib.SMTPResponseException(451, b"try again"),
        smtplib.SMTPRecipientsRefused({"a@example.com": (450, b"mailbox busy")}),
        sqlalchemy.exc.OperationalError("SELECT 1", {}, Exception("server closed the connection")),
    ],
)
def test_transient_errors_are_retried(exc: BaseException) -> None:
    assert is_transient(exc)


@pytest.mark.parametrize(
    "exc",
    [
        PermanentError("bad data"),
        ValueError("nope"),
        KeyError("missing"),
        SoftTimeLimitExceeded(),
        smtplib.SMTPResponseException(550, b"no such user"),
        smtplib.SMTPRecipientsRefused({"a@example.com": (550, b"unknown")}),
        FileNotFoundError("x"),
    ],
)
def test_permanent_errors_fail_at_once(exc: BaseException) -> None:
    assert not is_transient(exc)


def test_validation_errors_are_permanent() -> None:
    from shared.catalog import CATALOG

    with pytest.raises(ValidationError) as info:
        CATALOG["long_running_task"].validate([], {"steps": -1})
    assert not is_transient(info.value)


def test_backoff_doubles_from_the_base_with_bounded_jitter() -> None:
    rng = random.Random(1)
    delays = [retry_delay(n, 30.0, rng) for n in range(3)]
    for n, delay in enumerate(delays):
        assert 30 * 2**n * 0.75 <= delay <= 30 * 2**n * 1.25


def test_atomic_write_leaves_nothing_on_failure(tmp_path: Path) -> None:
    target = tmp_path / "out" / "report.csv"

    def write_then_time_out() -> None:
        with atomic_write(target) as handle:
            handle.write("partial,row\n")
            raise SoftTimeLimitExceeded()

    with pytest.raises(SoftTimeLimitExceeded):
        write_then_time_out()
    assert not target.exists()
    assert list(target.parent.iterdir()) == []


def test_atomic_write_replaces_on_success(tmp_path: Path) -> None:
    target = tmp_path / "report.csv"
    target.write_text("old\n")
    with atomic_write(target) as handle:
        handle.write("new\n")
    assert target.read_text() == "new\n"
    with atomic_path(tmp_path / "blob.bin") as tmp:
        tmp.write_bytes(b"abc")
    assert sha256_of(tmp_path / "blob.bin") == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
