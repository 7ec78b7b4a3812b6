"""Workflow orchestration as plain functions on a database session (shared/workflows.py): planning against
the catalog, claiming each step once, failure, revoke and retry from the failed step."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from sqlalchemy.orm import Session

from shared import workflows
from shared.catalog import WORKFLOWS
from shared.contracts import TaskState
from shared.models import Workflow

SEQUENCE: list[dict[str, Any]] = [
    {"name": "revenue", "task_name": "calculate_monthly_revenue", "kwargs": {"year": 2026, "month": 10}},
    {"name": "report", "task_name": "generate_monthly_report", "kwargs": {"year": 2026, "month": 10}},
    {"name": "email", "task_name": "send_report_email"},
]


def fan_in(width: int) -> list[dict[str, Any]]:
    group = [{"task_name": "test_task", "kwargs": {"message": f"part {i}"}} for i in range(width)]
    return [{"parallel": group}, {"name": "last", "task_name": "test_task", "kwargs": {"message": "after"}}]


def start(db: Session, definition: list[dict[str, Any]]) -> tuple[Workflow, list[workflows.Outgoing]]:
    return workflows.create(db, workflows.plan(definition), owner="alice")


def run(db: Session, item: workflows.Outgoing, result: Any = None) -> list[workflows.Outgoing]:
    workflows.step_started(db, item.workflow_id, item.step, item.task_id)
    return workflows.step_succeeded(db, item.workflow_id, item.step, item.task_id, result)


def test_plan_validates_every_step_before_anything_is_stored() -> None:
    with pytest.raises(workflows.DefinitionError) as caught:
        workflows.plan(
            [
                {"task_name": "no_such_task"},
                {"parallel": [{"task_name": "calculate_monthly_revenue", "kwargs": {"year": 1999, "month": 1}}]},
            ]
        )
    locs = [error["loc"] for error in caught.value.errors]
    assert ["body", "steps", 0, "task_name"] in locs
    assert ["body", "steps", 1, "parallel", 0, "kwargs", "year"] in locs
    with pytest.raises(workflows.DefinitionError):
        workflows.plan([])


def test_plan_orders_steps_and_takes_the_previous_result_where_the_schema_says() -> None:
    steps = workflows.plan(SEQUENCE)
    assert [(s.name, s.after) for s in steps] == [("revenue", ()), ("report", ("revenue",)), ("email", ("report",))]
    assert dict(steps[2].from_previous) == {"report_id": "report_id"}
    wide = workflows.plan(fan_in(3))
    assert [s.name for s in wide] == ["1.1", "1.2", "1.3", "last"]
    assert wide[3].after == ("1.1", "1.2", "1.3")


def test_a_sequence_runs_in_order_and_passes_the_report_id(db: Session) -> None:
    workflow, first = start(db, SEQUENCE)
    assert [item.step for item in first] == ["revenue"]
    (report,) = run(db, first[0], {"rows": 3})
    assert report.step == "report"
    (email,) = run(db, report, {"report_id": 42})
    assert email.kwargs == {"report_id": 42}
    assert run(db, email, {"sent": True}) == []
    db.refresh(workflow)
    assert workflow.status == TaskState.SUCCESS
    assert workflows.progress(workflow) == {"done": 3, "total": 3}


def test_the_step_after_a_group_is_claimed_once_after_all_succeed(db: Session) -> None:
    _workflow, group = start(db, fan_in(20))
    assert len(group) == 20
    claimed: list[workflows.Outgoing] = []
    for item in group[:-1]:
        claimed += run(db, item)
    assert claimed == []
    claimed += run(db, group[-1])
    assert [item.step for item in claimed] == ["last"]
    # the last part's message delivered again: recorded already, the claimed step is not claimed again
    workflows.published(db, claimed)
    assert run(db, group[-1]) == []


def test_a_claimed_step_never_published_is_published_by_the_redelivered_step(db: Session) -> None:
    _, first = start(db, SEQUENCE)
    (report,) = run(db, first[0])
    # the worker died before publishing `report`: its `revenue` message runs again
    assert [item.task_id for item in run(db, first[0])] == [report.task_id]
    workflows.published(db, [report])
    assert run(db, first[0]) == []


def test_failure_stops_the_rest_and_retry_resumes_at_the_failed_step(db: Session) -> None:
    workflow, first = start(db, SEQUENCE)
    (report,) = run(db, first[0])
    workflows.step_started(db, report.workflow_id, report.step, report.task_id)
    assert workflows.step_failed(db, report.workflow_id, "report", report.task_id, "OSError: disk full")
    db.refresh(workflow)
    assert workflow.status == TaskState.FAILURE
    assert workflow.failed_step == "report"
    assert "disk full" in (workflow.reason or "")
    assert [s.state for s in workflow.steps] == [TaskState.SUCCESS, TaskState.FAILURE, TaskState.PENDING]
    # the old attempt's late success changes nothing after the retry
    (again,) = workflows.retry(db, workflow.id) or []
    assert again.step == "report"
    assert again.task_id != report.task_id
    assert workflows.step_succeeded(db, report.workflow_id, "report", report.task_id, {}) == []
    (email,) = run(db, again, {"report_id": 7})
    run(db, email)
    db.refresh(workflow)
    assert workflow.status == TaskState.SUCCESS
    assert workflow.retries == 1
    assert workflow.steps[0].attempts == 1  # revenue was not computed again


def test_revoke_stops_steps_not_yet_run(db: Session) -> None:
    workflow, first = start(db, SEQUENCE)
    assert workflows.revoke(db, workflow.id, "revoked by alice") == [first[0].task_id]
    assert run(db, first[0]) == []  # the running step finishes; nothing follows it
    db.refresh(workflow)
    assert workflow.status == TaskState.REVOKED
    assert [s.state for s in workflow.steps] == [TaskState.SUCCESS, TaskState.REVOKED, TaskState.REVOKED]
    with pytest.raises(workflows.NotRetryable):
        workflows.retry(db, start(db, SEQUENCE)[0].id)
    (report,) = workflows.retry(db, workflow.id) or []
    assert report.step == "report"


def test_named_workflows_resolve_their_defaults_when_submitted() -> None:
    _, steps = WORKFLOWS["month_end_close"].steps({}, dt.date(2026, 1, 5))
    assert steps[0]["kwargs"] == {"year": 2025, "month": 12}
    _, nightly = WORKFLOWS["nightly_reports"].steps({}, dt.date(2026, 1, 5))
    assert [s["name"] for s in nightly[0]["parallel"]] == ["daily_report", "access_statistics"]
    assert nightly[0]["parallel"][0]["kwargs"] == {"date": "2026-01-04"}
    assert [s.name for s in workflows.plan(nightly)] == ["daily_report", "access_statistics", "cleanup"]
