"""End to end through the monitor: a workflow's steps, run by a real worker, are history rows that name the
workflow and the step, and the monitor's /metrics counts the workflow."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from shared import workflows
from shared.celery_app import create_celery_app
from shared.celery_extensions import workflow_steps
from shared.db import session_scope
from shared.models import TaskRecord
from tests.harness import wait_until
from tests.services.monitor.conftest import MonitorStack

pytestmark = pytest.mark.integration


def test_history_rows_name_their_workflow_and_step(monitor_stack: MonitorStack) -> None:
    stack = monitor_stack
    stack.worker()
    stack.monitor()
    before = stack.total("mallops_workflows_succeeded_total", name="ad_hoc")
    steps = [
        {"parallel": [{"task_name": "test_task"}, {"task_name": "test_task"}]},
        {"name": "z", "task_name": "test_task"},
    ]
    with session_scope(stack.settings) as session:
        workflow, first = workflows.create(session, workflows.plan(steps), owner="history-test")
        workflow_id = workflow.id
    app = create_celery_app("workflow-history-test", stack.settings)
    try:
        workflow_steps.publish(app, stack.settings, first)

        def rows() -> dict[str, str] | None:
            with session_scope(stack.settings) as session:
                found = session.execute(
                    select(TaskRecord.workflow_step, TaskRecord.state).where(TaskRecord.workflow_id == workflow_id)
                ).all()
            states = {str(step): str(state) for step, state in found}
            return states if len(states) == 3 and set(states.values()) == {"SUCCESS"} else None

        assert wait_until(rows, timeout=60, interval=0.2, message="three history rows") == {
            "1.1": "SUCCESS",
            "1.2": "SUCCESS",
            "z": "SUCCESS",
        }
        wait_until(
            lambda: stack.total("mallops_workflows_succeeded_total", name="ad_hoc") == before + 1,
            timeout=20,
            message="the workflow counted",
        )
    finally:
        app.close()
