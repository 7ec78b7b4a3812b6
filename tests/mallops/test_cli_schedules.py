"""``mallops schedules`` against a real gateway process: add, list, set, run, disable, enable, rm, with
the documented exit codes (0 ok, 2 bad input or unknown entry, 3 not authorised)."""

from __future__ import annotations

import json

import pytest

from tests.mallops.conftest import CliRunner, LiveGateway

pytestmark = [pytest.mark.integration]


def test_add_list_set_run_disable_enable_rm(cli: CliRunner, gateway_env: LiveGateway) -> None:
    name = "cli-echo"
    cli("schedules", "rm", name)  # left over from an earlier run on the same Redis
    added = cli("schedules", "add", name, "--task", "test_task", "--cron", "0 9 * * 1", "--kwargs", '{"message": "hi"}')
    assert added.code == 0, added
    assert added.out.startswith(f'{name}: test_task {{"message":"hi"}}, enabled, 0 9 * * 1 (next run ')
    assert "+08:00" in added.out  # the next run in the mall's time

    listed = cli("schedules", "list", "--json")
    assert listed.code == 0, listed
    entry = {row["name"]: row for row in json.loads(listed.out)}[name]
    assert entry["kwargs"] == {"message": "hi"}
    assert entry["last_run_at"] is None
    for default in ("backup_database", "cleanup_expired_data", "cleanup_old_access_records"):
        assert default in {row["name"] for row in json.loads(listed.out)}
    table = cli("schedules", "list")
    assert name in table.out
    assert "never" in table.out

    changed = cli("schedules", "set", name, "--every", "3600", "--kwargs", '{"message": "bye"}', "--json")
    assert changed.code == 0, changed
    assert json.loads(changed.out)["schedule"] == {"every": 3600.0}
    assert json.loads(changed.out)["kwargs"] == {"message": "bye"}

    ran = cli("schedules", "run", name)
    assert ran.code == 0, ran
    assert len(ran.out.strip()) == 36  # the task id

    assert "disabled" in cli("schedules", "disable", name).out
    assert "enabled" in cli("schedules", "enable", name).out
    assert cli("schedules", "rm", name).out.strip() == f"{name}: deleted"

    missing = cli("schedules", "rm", name)
    assert missing.code == 2
    assert missing.err_lines == [f"mallops: there is no beat entry named {name!r}; GET /api/v1/schedules lists them"]
    bad = cli("schedules", "add", "x1", "--task", "test_task", "--every", "60", "--kwargs", '{"message": 5}')
    assert bad.code == 2
    assert len(bad.err_lines) == 1


def test_changes_need_an_admin_token(cli: CliRunner, gateway_env: LiveGateway) -> None:
    env = {"MALLOPS_TOKEN": gateway_env.user}
    assert cli("schedules", "list", env=env).code == 0  # reading is for every token
    refused = cli("schedules", "add", "mine", "--task", "test_task", "--every", "60", env=env)
    assert refused.code == 3
    assert refused.err_lines == [
        "mallops: forbidden: this needs the permission 'schedules.write', which a user token does not have"
    ]
