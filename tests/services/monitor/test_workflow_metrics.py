"""The monitor's workflow metrics (read from the workflows table) and the history's link from a task to its
workflow and step (from the events' ``workflow_id`` and ``workflow_step``)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry
from sqlalchemy.orm import Session

from services.monitor.state import Deltas, apply_event, new_row
from services.monitor.workflow_metrics import WorkflowCollector
from shared import workflows

STEPS = [{"task_name": "test_task"}, {"name": "second", "task_name": "test_task"}]


def _run(db: Session, item: workflows.Outgoing) -> list[workflows.Outgoing]:
    workflows.step_started(db, item.workflow_id, item.step, item.task_id)
    return workflows.step_succeeded(db, item.workflow_id, item.step, item.task_id, None)


def _samples(db: Session) -> dict[tuple[str, str], float]:
    """Every sample by (metric, name label) -- the table may hold other tests' committed workflows: compare."""
    registry = CollectorRegistry()
    registry.register(WorkflowCollector(lambda: workflows.totals(db), [1.0, 60.0]))
    return {
        (sample.name + sample.labels.get("le", ""), sample.labels["name"]): sample.value
        for family in registry.collect()
        for sample in family.samples
    }


def test_started_succeeded_failed_and_duration_per_workflow_name(db: Session) -> None:
    before = _samples(db)
    _, (first,) = workflows.create(db, workflows.plan(STEPS), owner="alice")
    (second,) = _run(db, first)
    _run(db, second)  # one ad-hoc workflow succeeded
    failing, (step,) = workflows.create(db, workflows.plan(STEPS), owner="alice", name="nightly_reports")
    workflows.step_started(db, failing.id, step.step, step.task_id)
    workflows.step_failed(db, failing.id, step.step, step.task_id, "boom")
    (again,) = workflows.retry(db, failing.id) or []
    workflows.step_started(db, failing.id, again.step, again.task_id)
    workflows.step_failed(db, failing.id, again.step, again.task_id, "boom again")

    after = _samples(db)

    def grew(metric: str, name: str) -> float:
        return after[(metric, name)] - before.get((metric, name), 0.0)

    assert grew("mallops_workflows_started_total", "ad_hoc") == 1
    assert grew("mallops_workflows_succeeded_total", "ad_hoc") == 1
    assert grew("mallops_workflows_failed_total", "nightly_reports") == 2  # failed, retried, failed
    assert grew("mallops_workflows_succeeded_total", "nightly_reports") == 0
    assert ("mallops_workflows_started_total", "month_end_close") in after  # present from the start
    assert grew("mallops_workflow_duration_seconds_count", "ad_hoc") == 1
    assert grew("mallops_workflow_duration_seconds_bucket60.0", "ad_hoc") == 1


def test_a_scrape_answers_when_the_database_is_down() -> None:
    def down() -> dict[str, workflows.Totals]:
        raise OSError("connection refused")

    registry = CollectorRegistry()
    registry.register(WorkflowCollector(down, [1.0]))
    assert registry.get_sample_value("mallops_workflows_started_total", {"name": "ad_hoc"}) is None


def test_the_history_row_names_its_workflow_and_step() -> None:
    row = new_row("t1")
    event = {
        "type": "task-sent",
        "ts": 1_800_000_000.0,
        "id": "t1",
        "name": "mallops.maintenance.test_task",
        "queue": "default",
        "retries": 0,
        "workflow_id": "wf-1",
        "workflow_step": "1.3",
    }
    assert apply_event(row, event, Deltas())
    assert (row["workflow_id"], row["workflow_step"]) == ("wf-1", "1.3")
