"""``mallops.client``: the Python API that replaces TaskManager.send_task() and TaskMonitor, against a
real gateway process and a real worker."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from mallops.client import (
    Client,
    InvalidRequest,
    NotFound,
    Task,
    TaskFailed,
    Unauthorized,
    Unreachable,
    WaitTimeout,
)
from tests.harness import Process, free_port
from tests.mallops.conftest import LiveGateway

pytestmark = [pytest.mark.integration]


@pytest.fixture
def mallops(live_gateway: LiveGateway, running_worker: Callable[[str], Process]) -> Client:
    running_worker("maintenance")
    return Client(live_gateway.url, live_gateway.admin, timeout=10)


def test_submit_and_wait_with_progress(mallops: Client) -> None:
    seen: list[Task] = []
    task = mallops.submit("long_running_task", kwargs={"steps": 3, "step_seconds": 0.3})
    assert (task.task_name, task.status, task.queue) == ("long_running_task", "PENDING", "default")
    done = mallops.wait(task.task_id, timeout=60, poll_interval=0.1, on_progress=seen.append)
    assert done.successful
    assert done.result == {"current": 3, "total": 3}
    progress = [t.progress for t in seen if t.progress is not None]
    assert progress
    assert progress[-1].current <= 3
    assert progress[-1].total == 3
    assert seen[-1].status == "SUCCESS"


def test_a_failed_task_raises_task_failed_with_its_error(mallops: Client) -> None:
    task = mallops.submit("test_task", kwargs={"fail": True})
    with pytest.raises(TaskFailed) as failed:
        mallops.wait(task.task_id, timeout=60)
    assert failed.value.task.status == "FAILURE"
    assert failed.value.task.error == "RequestedFailure: test_task failed on request: test"
    assert failed.value.exit_code == 1
    retried = mallops.retry(task.task_id)
    assert retried.task_id != task.task_id


def test_wait_gives_up_after_its_timeout(mallops: Client) -> None:
    task = mallops.submit("test_task", countdown=600)
    with pytest.raises(WaitTimeout, match=r"is still PENDING after 0\.3s"):
        mallops.wait(task.task_id, timeout=0.3, poll_interval=0.1)
    assert mallops.revoke(task.task_id)["task_id"] == task.task_id


def test_submit_batch(mallops: Client) -> None:
    tasks = mallops.submit_batch([{"task_name": "test_task", "kwargs": {"message": str(i)}} for i in range(3)])
    assert len({t.task_id for t in tasks}) == 3
    results = [mallops.wait(t.task_id, timeout=60).result for t in tasks]
    assert results == ["Task received: 0", "Task received: 1", "Task received: 2"]


def test_errors_carry_what_the_gateway_said(mallops: Client, live_gateway: LiveGateway) -> None:
    with pytest.raises(NotFound) as unknown:
        mallops.submit("no_such_task")
    assert unknown.value.status == 404
    assert unknown.value.problem["status"] == 404
    with pytest.raises(InvalidRequest) as invalid:
        mallops.submit("long_running_task", kwargs={"steps": "many"})
    assert invalid.value.status == 422
    assert any(error["loc"][-1] == "steps" for error in invalid.value.errors)
    with pytest.raises(Unauthorized), Client(live_gateway.url, "mlp_wrong_token_00000000000000000") as bad:
        bad.list_tasks()
    with (
        pytest.raises(Unreachable, match="cannot reach the gateway"),
        Client(f"http://127.0.0.1:{free_port()}", "t") as nowhere,
    ):
        nowhere.get("x")
