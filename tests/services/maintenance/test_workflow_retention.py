"""The retention of workflows: cleanup_expired_data deletes the workflows that finished more than
MALLOPS_WORKFLOW_TTL_DAYS ago with their steps, keeps unfinished and recent ones, and the monitor's
workflow metrics read the same before and after (what the deleted ones counted is kept in workflow_totals).

Inside one rolled-back transaction (``db``): the deletes of other kinds that cleanup makes are undone."""

from __future__ import annotations

import datetime as dt

from prometheus_client import CollectorRegistry
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from services.maintenance.expired_data import cleanup_expired_data
from services.monitor.workflow_metrics import WorkflowCollector
from shared import workflows
from shared.models import Workflow, WorkflowStep
from shared.settings import Settings

STEPS: list[dict[str, object]] = [{"task_name": "test_task"}, {"name": "second", "task_name": "test_task"}]
BUCKETS = (1.0, 60.0, 3600.0)


def samples(db: Session) -> dict[tuple[str, str], float]:
    registry = CollectorRegistry()
    registry.register(WorkflowCollector(lambda: workflows.totals(db), BUCKETS))
    return {
        (sample.name + sample.labels.get("le", ""), sample.labels["name"]): sample.value
        for family in registry.collect()
        for sample in family.samples
    }


def finished(db: Session, *, name: str | None, fail: bool, seconds: float, days_ago: float) -> str:
    """A workflow that succeeded in ``seconds`` (or failed at its first step) ``days_ago`` days ago."""
    workflow, (first,) = workflows.create(db, workflows.plan(STEPS), owner="retention", name=name)
    workflows.step_started(db, workflow.id, first.step, first.task_id)
    if fail:
        assert workflows.step_failed(db, workflow.id, first.step, first.task_id, "boom")
    else:
        (second,) = workflows.step_succeeded(db, workflow.id, first.step, first.task_id, None)
        workflows.step_succeeded(db, workflow.id, second.step, second.task_id, None)
    end = dt.datetime.now(dt.UTC) - dt.timedelta(days=days_ago)
    db.execute(
        update(Workflow)
        .where(Workflow.id == workflow.id)
        .values(created_at=end - dt.timedelta(seconds=seconds), finished_at=end)
    )
    db.flush()
    assert db.get(Workflow, workflow.id).status == ("FAILURE" if fail else "SUCCESS")  # type: ignore[union-attr]
    return workflow.id


def test_old_finished_workflows_go_with_their_steps_and_the_counters_stay(db: Session, settings: Settings) -> None:
    old_ok = finished(db, name="nightly_reports", fail=False, seconds=30, days_ago=100)
    old_slow = finished(db, name=None, fail=False, seconds=7200, days_ago=95)
    old_failed = finished(db, name="nightly_reports", fail=True, seconds=5, days_ago=91)
    recent = finished(db, name="nightly_reports", fail=True, seconds=5, days_ago=89)
    unfinished, _ = workflows.create(db, workflows.plan(STEPS), owner="retention")
    db.execute(
        update(Workflow).where(Workflow.id == unfinished.id).values(created_at=dt.datetime(2020, 1, 1, tzinfo=dt.UTC))
    )
    db.commit()
    before = samples(db)

    counts = cleanup_expired_data(db, settings.model_copy(update={"workflow_ttl_days": 90}), batch_size=2)

    assert counts["workflows"] >= 3  # ours, and any other test's that finished 90 days ago (none write such)
    left = set(db.scalars(select(Workflow.id).where(Workflow.owner == "retention")))
    assert left == {recent, unfinished.id}
    gone = [old_ok, old_slow, old_failed]
    assert db.scalar(select(func.count()).where(WorkflowStep.workflow_id.in_(gone))) == 0
    assert db.scalar(select(func.count()).where(WorkflowStep.workflow_id == recent)) == 2
    after = samples(db)
    assert after == before  # every counter and bucket, for every name: nothing went down
    assert after[("mallops_workflows_failed_total", "nightly_reports")] >= 2
    # the deleted ones' durations are kept in the bucket of MALLOPS_RUNTIME_BUCKETS they fall in (the
    # collector above, with other buckets, still counts them where they belong: after == before)
    bucket_of_30s = str(min(b for b in settings.runtime_buckets if b >= 30))
    assert max(settings.runtime_buckets) < 7200
    assert workflows.totals(db)["nightly_reports"].retired_buckets.get(bucket_of_30s, 0) >= 1
    assert workflows.totals(db)["ad_hoc"].retired_buckets.get("+Inf", 0) >= 1

    # a second run finds nothing more; the unfinished one is never deleted, however old
    again = cleanup_expired_data(db, settings.model_copy(update={"workflow_ttl_days": 90}))
    assert again["workflows"] == 0
    assert db.get(Workflow, unfinished.id) is not None
    assert samples(db) == before
