"""A workflow step that fails while the database is unreachable: its failure cannot be recorded, so the step
is run again (a Celery retry, same task id) instead of its message being acknowledged with the workflow
left at SENT or STARTED for good; once the database is back, the workflow reads FAILURE at that step.

PostgreSQL only: the outage is made with ``ALLOW_CONNECTIONS false`` (SQLite has no server to stop). The
worker runs on a redis-server of the test's own, so no other test's worker takes the step.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy.engine import make_url

from shared import workflows
from shared.celery_app import create_celery_app
from shared.celery_extensions import workflow_steps
from shared.contracts import TaskState
from shared.db import session_scope
from shared.models import Workflow
from shared.settings import Settings
from tests.conftest import DEFAULT_PG
from tests.harness import Process, RedisServer, connections_refused, redis_env, start_redis, wait_until

pytestmark = pytest.mark.integration

RETRIED = "could not be recorded; the step runs again"


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    server = start_redis(tmp_path / "redis")
    yield server
    server.stop()


def _workflow_state(settings: Settings, workflow_id: str) -> tuple[str, str | None, list[str]]:
    with session_scope(settings) as session:
        workflow = session.get(Workflow, workflow_id)
        assert workflow is not None
        return workflow.status, workflow.reason, [step.state for step in workflow.steps]


def test_a_step_failing_while_the_database_is_down_is_recorded_once_it_is_back(
    migrated: Settings,
    service_env: dict[str, str],
    own_redis: RedisServer,
    worker_factory: Callable[..., Process],
) -> None:
    url = make_url(migrated.sqlalchemy_url)
    if url.get_backend_name() != "postgresql":
        pytest.skip("the database outage is made with PostgreSQL's ALLOW_CONNECTIONS; SQLite has no server to stop")
    env = service_env | redis_env(own_redis) | {"MALLOPS_TASK_MAX_RETRIES": "0", "MALLOPS_TASK_RETRY_BACKOFF": "1"}
    settings = migrated.model_copy(
        update={"redis_url": own_redis.url_base, "broker_url": f"{own_redis.url_base}/0"}
        | {"result_backend": f"{own_redis.url_base}/1"}
    )
    with session_scope(settings) as session:
        workflow, outgoing = workflows.create(
            session,
            workflows.plan([{"name": "only", "task_name": "test_task", "kwargs": {"message": "x", "fail": True}}]),
            owner="outage-test",
        )
        workflow_id = workflow.id
    app = create_celery_app("test-outage", settings)
    workflow_steps.publish(app, settings, outgoing)  # in the queue; no worker yet
    app.close()

    admin_url = make_url(os.environ.get("MALLOPS_TEST_POSTGRES_URL", DEFAULT_PG)).set(drivername="postgresql+psycopg")
    assert url.database is not None
    worker: Process | None = None
    try:
        with connections_refused(admin_url, url.database):
            worker = worker_factory("maintenance", env=env)
            log = worker.log
            wait_until(lambda: RETRIED in log(), timeout=60, message="the step retried, its failure unrecorded")

        def failed() -> bool:
            return _workflow_state(migrated, workflow_id)[0] == TaskState.FAILURE

        wait_until(failed, timeout=90, message="the workflow's failure recorded once the database is back")
    finally:
        if worker is not None:
            worker.stop()
    _, reason, states = _workflow_state(migrated, workflow_id)
    assert states == [TaskState.FAILURE]
    assert reason is not None
    assert "test_task" in reason
