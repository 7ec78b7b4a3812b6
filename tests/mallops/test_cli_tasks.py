"""The task commands against a real gateway process and a real maintenance worker.

Each command's success path and its error paths: unknown task, bad arguments, bad token, missing role,
a task that fails, with the documented exit code and one line on stderr.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable

import pytest

from tests.harness import Process
from tests.mallops.conftest import CliRunner, LiveGateway

pytestmark = [pytest.mark.integration]

UUID = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"


@pytest.fixture
def worker(running_worker: Callable[[str], Process]) -> Process:
    return running_worker("maintenance")


@pytest.mark.usefixtures("worker")
def test_send_wait_prints_the_result(cli: CliRunner, gateway_env: LiveGateway) -> None:
    result = cli("tasks", "send", "test_task", "--kwargs", '{"message": "hello mall"}', "--wait")
    assert result.code == 0, result
    assert result.out.splitlines()[-1] == "Task received: hello mall"
    assert re.match(rf"submitted test_task as {UUID}", result.err)


@pytest.mark.usefixtures("worker")
def test_send_without_wait_prints_the_id_and_positional_args_work(cli: CliRunner, gateway_env: LiveGateway) -> None:
    quiet = cli("tasks", "send", "test_task", "--args", '["positional"]', "-q")
    assert quiet.code == 0, quiet
    task_id = quiet.out.strip()
    assert re.fullmatch(UUID, task_id)
    watched = cli("tasks", "watch", task_id, "--json")
    assert watched.code == 0, watched
    assert json.loads(watched.out)["result"] == "Task received: positional"
    plain = cli("tasks", "send", "test_task")
    assert plain.code == 0
    assert re.fullmatch(rf"submitted test_task as {UUID} \(queue default, PENDING\)\n", plain.out)


@pytest.mark.usefixtures("worker")
def test_send_wait_reports_progress_then_the_result(cli: CliRunner, gateway_env: LiveGateway) -> None:
    result = cli("tasks", "send", "long_running_task", "--kwargs", '{"steps": 3, "step_seconds": 0.3}', "--wait")
    assert result.code == 0, result
    # stderr is not a terminal here, so the live bar becomes one line per change
    assert re.search(r" PROGRESS 1/3\n", result.err), result.err
    assert re.search(r" SUCCESS\n", result.err)
    assert json.loads(result.out.split("\n", 1)[1]) == {"current": 3, "total": 3}


@pytest.mark.usefixtures("worker")
def test_a_failed_task_is_exit_1_and_retry_resubmits_it(cli: CliRunner, gateway_env: LiveGateway) -> None:
    failed = cli("tasks", "send", "test_task", "--kwargs", '{"fail": true}', "--wait", "--json")
    assert failed.code == 1, failed
    body = json.loads(failed.out)
    assert body["status"] == "FAILURE"
    assert failed.err_lines[-1] == (
        f"mallops: task {body['task_id']} (test_task) FAILURE: RequestedFailure: test_task failed on request: test"
    )
    status = cli("tasks", "status", body["task_id"])
    assert status.code == 0
    assert re.search(r"^status\s+FAILURE$", status.out, re.M)
    retried = cli("tasks", "retry", body["task_id"], "--wait")
    assert retried.code == 1
    assert "FAILURE: RequestedFailure" in retried.err_lines[-1]
    new = cli("tasks", "retry", body["task_id"])
    assert new.code == 0
    assert re.fullmatch(rf"retried {body['task_id']} as {UUID}\n", new.out)


@pytest.mark.usefixtures("worker")
def test_status_and_list(cli: CliRunner, gateway_env: LiveGateway) -> None:
    task_id = cli("tasks", "send", "test_task", "-q").out.strip()
    assert cli("tasks", "watch", task_id).code == 0
    status = cli("tasks", "status", task_id, "--json")
    assert status.code == 0
    detail = json.loads(status.out)
    assert (detail["task_id"], detail["status"], detail["result"]) == (task_id, "SUCCESS", "Task received: test")
    listed = cli("tasks", "list", "--json")
    assert listed.code == 0
    assert task_id in [t["task_id"] for t in json.loads(listed.out)["results"]]
    table = cli("tasks", "list", "--task", "test_task", "--status", "SUCCESS")
    assert table.code == 0
    lines = table.out.splitlines()
    assert lines[0] == "task_id\ttask\tstatus\tqueue\towner\tsent"  # plain, tab-separated when piped
    assert any(line.startswith(f"{task_id}\ttest_task\tSUCCESS\tdefault\t") for line in lines[1:])


def test_revoke_a_waiting_task(cli: CliRunner, gateway_env: LiveGateway) -> None:
    task_id = cli("tasks", "send", "test_task", "--countdown", "600", "-q").out.strip()
    revoked = cli("tasks", "revoke", task_id, "--terminate")
    assert revoked.code == 0, revoked
    assert revoked.out == f"revoked {task_id} (terminating it if running)\n"
    as_json = cli("tasks", "revoke", task_id, "--json")
    assert json.loads(as_json.out)["task_id"] == task_id


def test_an_unknown_task_is_exit_2(cli: CliRunner, gateway_env: LiveGateway) -> None:
    result = cli("tasks", "send", "no_such_task")
    assert result.code == 2
    assert len(result.err_lines) == 1
    assert result.err.startswith("mallops: ")
    assert "no_such_task" in result.err
    unknown_id = cli("tasks", "status", "0b0e3c1a-0000-4000-8000-000000000000")
    assert unknown_id.code == 2
    assert len(unknown_id.err_lines) == 1


def test_arguments_that_do_not_fit_the_schema_are_exit_2_with_the_field(
    cli: CliRunner, gateway_env: LiveGateway
) -> None:
    result = cli("tasks", "send", "long_running_task", "--kwargs", '{"steps": 0, "colour": "red"}')
    assert result.code == 2
    assert len(result.err_lines) == 1
    assert "steps" in result.err
    assert "colour" in result.err


@pytest.mark.parametrize("args", [("tasks", "list"), ("tasks", "send", "test_task"), ("ping",), ("catalog",)])
def test_a_bad_token_is_exit_3(cli: CliRunner, gateway_env: LiveGateway, args: tuple[str, ...]) -> None:
    result = cli(*args, env={"MALLOPS_TOKEN": "mlp_not_a_real_token_000000000000"})
    assert result.code == 3
    assert result.err_lines == [
        f"mallops: not authorised by {gateway_env.url}: the API token is unknown, expired or revoked"
    ]


def test_no_token_says_how_to_give_one(
    cli: CliRunner, gateway_env: LiveGateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MALLOPS_TOKEN")
    result = cli("tasks", "list")
    assert result.code == 3
    assert len(result.err_lines) == 1
    assert "no token: set MALLOPS_TOKEN or the config file's token" in result.err


def test_a_user_may_not_revoke(cli: CliRunner, gateway_env: LiveGateway) -> None:
    task_id = cli("tasks", "send", "test_task", "--countdown", "600", "-q").out.strip()
    result = cli("tasks", "revoke", task_id, env={"MALLOPS_TOKEN": gateway_env.user})
    assert result.code == 3
    assert len(result.err_lines) == 1
    assert result.err.startswith("mallops: forbidden: ")
    cli("tasks", "revoke", task_id)


@pytest.mark.usefixtures("worker")
def test_ping_times_the_round_trip(cli: CliRunner, gateway_env: LiveGateway) -> None:
    result = cli("ping")
    assert result.code == 0, result
    assert re.fullmatch(r"pong from \S+@\S+ in \d+ ms: Task received: ping\n", result.out)
    as_json = json.loads(cli("ping", "--json", "--message", "hi").out)
    assert as_json["result"] == "Task received: hi"
    assert as_json["round_trip_ms"] > 0


def test_catalog_lists_every_task_and_shows_arguments(cli: CliRunner, gateway_env: LiveGateway) -> None:
    from shared.catalog import CATALOG

    table = cli("catalog")
    assert table.code == 0
    names = [line.split("\t")[0] for line in table.out.splitlines()[1:]]
    assert names == list(CATALOG)
    schema = cli("catalog", "long_running_task")
    assert schema.code == 0
    assert re.search(r"^steps\tinteger\tno\t10\t", schema.out, re.M)
    data = json.loads(cli("catalog", "--json").out)
    assert {t["task_name"] for t in data} == set(CATALOG)
    missing = cli("catalog", "nope")
    assert missing.code == 2
    assert missing.err_lines == ["mallops: unknown task 'nope'; `mallops catalog` lists them"]


def test_catalog_lists_the_workflows_as_the_api_does(cli: CliRunner, gateway_env: LiveGateway) -> None:
    from shared.catalog import WORKFLOWS

    table = cli("catalog", "--workflows")
    assert table.code == 0, table
    lines = table.out.splitlines()
    assert lines[0] == "workflow\tsteps\tschedule\tdescription"
    rows = {line.split("\t")[0]: line.split("\t") for line in lines[1:]}
    assert set(rows) == set(WORKFLOWS)
    assert rows["month_end_close"][1] == "calculate_monthly_revenue -> generate_monthly_report -> send_report_email"
    assert rows["nightly_reports"][1] == (
        "(generate_daily_report | generate_access_statistics) -> cleanup_expired_data"
    )
    data = json.loads(cli("catalog", "--workflows", "--json").out)
    assert [w["name"] for w in data] == list(WORKFLOWS)
    assert {"args_schema", "steps", "schedule", "description"} <= set(data[0])
    one = cli("catalog", "month_end_close")
    assert one.code == 0, one
    assert one.out.startswith("month_end_close (workflow): ")
    assert re.search(r"^year\tinteger \| null\tno\t", one.out, re.M), one.out
    assert one.out.splitlines()[-1].startswith("steps: calculate_monthly_revenue -> ")
