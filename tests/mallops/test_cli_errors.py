"""The CLI's error contract without a gateway: one line on stderr, the documented exit code, no traceback.

Exit codes: 0 ok, 1 the task failed, 2 bad usage or input, 3 cannot reach the gateway or not authorised.
"""

from __future__ import annotations

import os

import pytest

from tests.mallops.conftest import CliRunner, run_mallops

READ_COMMANDS = [
    ("tasks", "list"),
    ("tasks", "status", "0b0e3c1a-0000-4000-8000-000000000000"),
    ("tasks", "watch", "0b0e3c1a-0000-4000-8000-000000000000"),
    ("tasks", "revoke", "0b0e3c1a-0000-4000-8000-000000000000"),
    ("tasks", "retry", "0b0e3c1a-0000-4000-8000-000000000000"),
    ("tasks", "send", "test_task", "--kwargs", '{"message": "hi"}'),
    ("workers",),
    ("queues",),
    ("stats",),
    ("history",),
    ("ping",),
    ("catalog",),
    ("schedules", "list"),
    ("schedules", "enable", "check_pending_bills"),
    ("schedules", "disable", "check_pending_bills"),
    ("schedules", "set", "check_pending_bills", "--every", "60"),
    ("schedules", "add", "echo", "--task", "test_task", "--every", "60", "--kwargs", '{"message": "hi"}'),
    ("schedules", "rm", "echo"),
    ("schedules", "run", "echo"),
]


@pytest.mark.parametrize("args", READ_COMMANDS, ids=lambda a: " ".join(a[:2]))
def test_no_gateway_is_exit_3_with_one_line(cli: CliRunner, no_gateway: str, args: tuple[str, ...]) -> None:
    result = cli(*args)
    assert result.code == 3, result
    assert result.err_lines == [f"mallops: cannot reach the gateway at {no_gateway} ([Errno 111] Connection refused)"]
    assert result.out == ""


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("tasks", "send", "test_task", "--kwargs", '{"message": '), "--kwargs is not valid JSON"),
        (("tasks", "send", "test_task", "--kwargs", "[1]"), "--kwargs must be a JSON object"),
        (("tasks", "send", "test_task", "--args", '{"a": 1}'), "--args must be a JSON array"),
        (("tasks", "send", "test_task", "--args", "not json"), "--args is not valid JSON"),
        (("history", "--since", "yesterday"), "--since must be an ISO date/time"),
        (("stats", "--until", "later"), "--until must be an ISO date/time"),
        (("schedules", "set", "check_pending_bills"), "give exactly one of --every"),
        (("schedules", "set", "check_pending_bills", "--cron", "* *"), "--cron needs 5 fields"),
        (("schedules", "add", "echo", "--task", "test_task"), "give exactly one of --every"),
        (("schedules", "add", "echo", "--task", "test_task", "--every", "9", "--kwargs", "[1]"), "--kwargs must be"),
        (("schedules", "set", "echo", "--args", "{}"), "--args must be a JSON array"),
    ],
)
def test_bad_input_is_exit_2_before_anything_is_sent(
    cli: CliRunner, no_gateway: str, args: tuple[str, ...], message: str
) -> None:
    result = cli(*args)
    assert result.code == 2, result
    assert len(result.err_lines) == 1
    assert result.err.startswith("mallops: ")
    assert message in result.err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("tasks", "send"), "Missing argument"),
        (("tasks", "send", "test_task", "--bogus"), "No such option: --bogus"),
        (("tasks", "send", "test_task", "--priority", "12"), "Invalid value for '--priority'"),
        (("history", "--limit", "0"), "Invalid value for '--limit'"),
        (("nonsense",), "No such command 'nonsense'"),
        (("tasks", "explode"), "No such command 'explode'"),
    ],
)
def test_usage_errors_are_exit_2_with_one_line(
    cli: CliRunner, no_gateway: str, args: tuple[str, ...], message: str
) -> None:
    result = cli(*args)
    assert result.code == 2, result
    assert len(result.err_lines) == 1, result.err
    assert result.err.startswith("mallops: ")
    assert message in result.err
    assert "--help" in result.err


def test_the_console_script_keeps_the_contract_in_a_real_process(no_gateway: str) -> None:
    env = dict(os.environ)
    usage = run_mallops("tasks", "send", "--nope", env=env)
    assert usage.code == 2
    assert usage.err.count("\n") == 1
    assert usage.err.startswith("mallops: No such option: --nope")
    unreachable = run_mallops("tasks", "send", "test_task", env=env)
    assert unreachable.code == 3
    assert unreachable.err == f"mallops: cannot reach the gateway at {no_gateway} ([Errno 111] Connection refused)\n"
    assert "Traceback" not in usage.err + unreachable.err


def test_help_lists_every_operator_command(cli: CliRunner) -> None:
    result = cli("--help")
    assert result.code == 0
    for command in (
        "tasks",
        "workflows",
        "workers",
        "queues",
        "stats",
        "history",
        "ping",
        "catalog",
        "schedules",
        "doctor",
        "dev",
        "mail",
        "probe",
        "serve",
        "migrate",
        "demo-data",
    ):
        assert command in result.out
