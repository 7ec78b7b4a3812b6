"""`mallops workflows run|status|list|retry|revoke` against a real gateway process and a maintenance worker:
output, one-line errors and the documented exit codes."""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest

from tests.harness import Process
from tests.mallops.conftest import CliRunner, LiveGateway

pytestmark = [pytest.mark.integration]

TWO_THEN_ONE = json.dumps(
    [
        {"parallel": [{"task_name": "test_task", "kwargs": {"message": "a"}}, {"task_name": "test_task"}]},
        {"name": "last", "task_name": "test_task", "kwargs": {"message": "done"}},
    ]
)
FAILING = json.dumps(
    [{"name": "first", "task_name": "test_task"}, {"name": "boom", "task_name": "test_task", "kwargs": {"fail": True}}]
)


def test_run_status_list_retry_revoke(
    cli: CliRunner, gateway_env: LiveGateway, running_worker: Callable[[str], Process]
) -> None:
    running_worker("maintenance")
    done = cli("workflows", "run", "--steps", TWO_THEN_ONE, "--wait", "--json", "--timeout", "60")
    assert done.code == 0, done
    workflow = json.loads(done.out)
    assert workflow["status"] == "SUCCESS"
    assert workflow["progress"] == {"done": 3, "total": 3}

    status = cli("workflows", "status", workflow["workflow_id"][:8])
    assert status.code == 0, status
    assert "SUCCESS" in status.out
    assert "last" in status.out
    listed = cli("workflows", "list", "--status", "SUCCESS", "--json")
    assert workflow["workflow_id"] in {row["workflow_id"] for row in json.loads(listed.out)["results"]}

    failed = cli("workflows", "run", "--steps", FAILING, "--wait", "--timeout", "60")
    assert failed.code == 1, failed
    # piped: "started ...", a line per change of state or progress, then the reason in one line
    assert failed.err_lines[0].startswith("started workflow as ")
    assert "FAILURE at step 'boom'" in failed.err_lines[-1]
    assert "RequestedFailure" in failed.err_lines[-1]
    failed_id = failed.err_lines[0].split()[-1]
    again = cli("workflows", "retry", failed_id, "--wait", "--json", "--timeout", "60")
    assert again.code == 1, again
    retried = json.loads(again.out)
    assert retried["retries"] == 1
    assert {s["name"]: s["attempts"] for s in retried["steps"]} == {"first": 1, "boom": 2}  # first kept
    revoked = cli("workflows", "revoke", failed_id)
    assert revoked.code == 0, revoked
    assert revoked.out.startswith(f"revoked {failed_id} (FAILURE")  # a finished workflow stays as it was


def test_errors_are_one_line_with_their_exit_code(cli: CliRunner, gateway_env: LiveGateway) -> None:
    neither = cli("workflows", "run")
    assert (neither.code, neither.err_lines) == (2, ["mallops: give a workflow name or --steps (not both)"])
    unknown = cli("workflows", "run", "no_such_workflow")
    assert unknown.code == 2
    assert len(unknown.err_lines) == 1
    bad = cli("workflows", "run", "month_end_close", "--kwargs", '{"year": 2026}')
    assert bad.code == 2
    missing = cli("workflows", "status", "ffffffff")
    assert missing.code == 2
    assert missing.err_lines == ["mallops: no recent workflow id starts with 'ffffffff'"]
