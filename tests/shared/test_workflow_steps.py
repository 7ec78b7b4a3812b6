"""The worker's side of workflows (shared/celery_extensions/workflow_steps.py) on the run's database: a
step's final failure is recorded, and a database that refuses the record is said, not swallowed, so that the
task runs the step again instead of leaving the workflow at STARTED for good."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from shared import workflows
from shared.celery_extensions import workflow_steps
from shared.contracts import TaskState
from shared.db import session_scope
from shared.models import Workflow
from shared.settings import Settings

pytestmark = pytest.mark.integration

STEPS = [{"name": "only", "task_name": "test_task", "kwargs": {"message": "x"}}]


def started_workflow(settings: Settings) -> tuple[str, str]:
    """A one-step workflow whose step is STARTED, committed: (workflow id, the step's task id)."""
    with session_scope(settings) as session:
        workflow, outgoing = workflows.create(session, workflows.plan(STEPS), owner="steps-test")
        workflows.published(session, outgoing)
        workflows.step_started(session, workflow.id, "only", outgoing[0].task_id)
        return workflow.id, outgoing[0].task_id


def test_a_final_failure_is_recorded_with_its_reason(migrated: Settings) -> None:
    workflow_id, task_id = started_workflow(migrated)
    assert workflow_steps.failed(migrated, (workflow_id, "only"), task_id, FileExistsError(17, "File exists"))
    with session_scope(migrated) as session:
        workflow = session.get(Workflow, workflow_id)
        assert workflow is not None
        assert workflow.status == TaskState.FAILURE
        assert workflow.failed_step == "only"
        assert workflow.reason is not None
        assert "FileExistsError" in workflow.reason
        assert [step.state for step in workflow.steps] == [TaskState.FAILURE]


def test_a_failure_the_database_refuses_is_reported_not_swallowed(
    migrated: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    workflow_id, task_id = started_workflow(migrated)
    blocked = tmp_path / "not-a-folder"
    blocked.write_text("")  # the database file would go inside a file: every connection fails
    unreachable = migrated.model_copy(update={"database_url": f"sqlite:///{blocked / 'mallops.db'}"})
    monkeypatch.setattr(workflow_steps, "FAILURE_RECORD_PAUSES", (0.0,))
    with caplog.at_level(logging.ERROR, logger="mallops.workflows"):
        recorded = workflow_steps.failed(unreachable, (workflow_id, "only"), task_id, RuntimeError("boom"))
    assert recorded is False
    assert len([r for r in caplog.records if "could not record the failure" in r.getMessage()]) == 2  # two tries
    with session_scope(migrated) as session:  # untouched: the step runs again and records it then
        workflow = session.get(Workflow, workflow_id)
        assert workflow is not None
        assert workflow.status == TaskState.STARTED
