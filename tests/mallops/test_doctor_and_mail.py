"""``mallops doctor`` against the run's real Redis, database, SMTP server and a worker; ``mallops mail``
on a maildir like the one ``mallops dev``'s SMTP catcher writes."""

from __future__ import annotations

import json
import mailbox
import uuid
from collections.abc import Callable
from email.message import EmailMessage
from pathlib import Path

import pytest

from mallops.commands.doctor import describe_lock_token
from mallops.services import redbeat_lock_key
from shared.settings import Settings
from tests.harness import Process, RedisServer, free_port, wait_until
from tests.mallops.conftest import CliRunner


def test_the_redbeat_lock_token_tells_where_and_since_when() -> None:
    token = uuid.uuid1().hex
    assert describe_lock_token(token).startswith("a beat on this machine since ")
    other = uuid.UUID(fields=(0x1, 0x2, 0x1003, 0x80, 0x1, 0x0000DEADBEEF)).hex
    assert describe_lock_token(other).startswith("a beat on node 0000deadbeef since ")
    assert describe_lock_token("not-a-uuid") == "token not-a-uuid"


@pytest.mark.integration
def test_doctor_says_what_is_wrong_and_what_is_fine(
    cli: CliRunner,
    no_gateway: str,
    migrated: Settings,
    redis_server: RedisServer,
    running_worker: Callable[[str], Process],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    running_worker("maintenance")
    monkeypatch.setenv("MALLOPS_MONITOR_PORT", str(free_port()))
    redis_server.client(2).set(redbeat_lock_key(migrated), uuid.uuid1().hex, ex=120)

    def report() -> dict[str, dict[str, str]]:
        result = cli("doctor", "--json")
        assert result.code == 3, result  # the gateway is down, so something is wrong
        data = json.loads(result.out)
        assert data["ok"] is False
        checks = {c["area"]: c for c in data["checks"]}
        return checks if checks["workers maintenance"]["status"] == "ok" else {}

    checks = wait_until(report, timeout=60, interval=0.5, message="the maintenance worker's heartbeat")
    assert checks["gateway"]["status"] == "problem"
    assert no_gateway in checks["gateway"]["detail"]
    for area in ("redis broker", "redis result backend", "redis cache", "database", "smtp", "beat"):
        assert checks[area]["status"] == "ok", checks[area]
    assert checks["dead letters"]["status"] in ("ok", "warning")  # other tests of the run may have left some
    assert "(revision " in checks["database"]["detail"]
    assert checks["beat"]["detail"].startswith("lock mallops:redbeat::lock held by a beat on this machine since ")
    assert checks["queue default"]["status"] == "ok"
    assert {"workers finance", "workers reports", "workers notifier", "workers maintenance"} <= set(checks)
    assert checks["monitor"]["status"] in ("problem", "warning")

    table = cli("doctor")
    assert table.code == 3
    assert table.out.splitlines()[0] == "check\tstatus\tdetail"
    assert len(table.err_lines) == 1
    assert table.err.startswith("mallops: ")
    assert "problem(s): gateway" in table.err


@pytest.mark.integration
def test_doctor_reports_redis_down_without_a_traceback(
    cli: CliRunner, no_gateway: str, migrated: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    dead = f"redis://127.0.0.1:{free_port()}"
    for name in ("MALLOPS_REDIS_URL", "MALLOPS_BROKER_URL", "MALLOPS_RESULT_BACKEND"):
        monkeypatch.setenv(name, dead)
    result = cli("doctor", "--json")
    assert result.code == 3
    checks = {c["area"]: c for c in json.loads(result.out)["checks"]}
    assert checks["redis broker"]["status"] == "problem"
    assert checks["queues, workers, beat, monitor"]["detail"] == "not checked: Redis cannot be reached"
    assert checks["database"]["status"] == "ok"
    assert "Traceback" not in result.err


@pytest.mark.usefixtures("clean_env")
def test_mail_lists_and_shows_the_caught_messages(cli: CliRunner, tmp_path: Path) -> None:
    missing = cli("mail", env={"MALLOPS_DATA_DIR": str(tmp_path / "nowhere")})
    assert missing.code == 2
    assert missing.err_lines == [
        f"mallops: no maildir at {(tmp_path / 'nowhere' / 'mail').resolve()}: start `mallops dev` first"
    ]
    (tmp_path / "data").mkdir()
    box = mailbox.Maildir(tmp_path / "data" / "mail", create=True)
    message = EmailMessage()
    message["From"], message["To"], message["Subject"] = "mallops@mall.example", "tenant@example.com", "账单提醒"
    message.set_content("您的账单已逾期。", cte="base64")
    message.add_alternative("<p>您的账单<b>已逾期</b>。</p>", subtype="html", cte="base64")
    box.add(message)
    listed = cli("mail", "--json", env={"MALLOPS_DATA_DIR": str(tmp_path / "data")})
    assert listed.code == 0, listed
    rows = json.loads(listed.out)
    assert [(r["n"], r["to"], r["subject"]) for r in rows] == [(1, "tenant@example.com", "账单提醒")]
    shown = cli("mail", "--show", "1")
    assert shown.code == 0
    assert shown.out.endswith("Subject: 账单提醒\n\n您的账单已逾期。\n")  # decoded, not base64 MIME
    as_html = cli("mail", "--show", "1", "--html")
    assert as_html.out.endswith("\n\n<p>您的账单<b>已逾期</b>。</p>\n")
    assert "Content-Transfer-Encoding: base64" in cli("mail", "--show", "1", "--raw").out
    assert cli("mail", "--show", "2").code == 2
