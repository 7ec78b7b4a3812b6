from __future__ import annotations

import pytest
from pydantic import ValidationError

from shared.catalog import CATALOG, QUEUES, WORKFLOWS, TaskArgumentError, get_spec, task_routes
from shared.celery_app import create_celery_app
from shared.settings import Settings

EXPECTED = {
    "finance": {"check_pending_bills", "send_bill_reminders", "calculate_monthly_revenue"},
    "reports": {
        "generate_hourly_report",
        "generate_daily_report",
        "generate_weekly_report",
        "generate_monthly_report",
        "export_data",
        "process_access_logs",
        "generate_access_statistics",
        "cleanup_old_access_records",
    },
    "email": {"send_notification_email", "cleanup_old_notifications", "send_report_email"},  # + the workflows issue
    "default": {
        "backup_database",
        "cleanup_cache",
        "cleanup_expired_data",
        "test_task",
        "long_running_task",
        "run_workflow",  # the workflows issue: how beat starts a named workflow
    },
}


def test_catalog_holds_every_task_of_the_replaced_system_on_its_queue() -> None:
    by_queue: dict[str, set[str]] = {q: set() for q in QUEUES}
    for spec in CATALOG.values():
        by_queue[spec.queue].add(spec.name)
    assert by_queue == EXPECTED


def test_routes_come_from_the_catalog() -> None:
    routes = task_routes()
    assert routes["mallops.finance.check_pending_bills"] == {"queue": "finance"}
    assert routes["mallops.notifier.send_notification_email"] == {"queue": "email"}
    assert len(routes) == len(CATALOG)


@pytest.mark.usefixtures("clean_env")
def test_celery_app_configuration() -> None:
    app = create_celery_app("test", Settings(redis_url="redis://127.0.0.1:1"))
    conf = app.conf
    assert conf.accept_content == ["json"]
    assert conf.task_serializer == "json"
    assert conf.timezone == "Asia/Shanghai"
    assert conf.task_track_started is True
    assert (conf.task_time_limit, conf.task_soft_time_limit) == (1800, 1500)
    assert conf.task_acks_late is True
    assert conf.task_reject_on_worker_lost is True
    assert conf.result_expires == 3600
    assert [q.name for q in conf.task_queues] == ["finance", "reports", "email", "default"]
    assert conf.task_default_queue == "default"
    assert conf.broker_url == "redis://127.0.0.1:1/0"
    app.close()


def test_positional_and_keyword_arguments_are_validated() -> None:
    spec = CATALOG["test_task"]
    assert spec.validate(["hello"]).model_dump() == {"message": "hello", "fail": False}
    with pytest.raises(TaskArgumentError, match="multiple values"):
        spec.validate(["a"], {"message": "b"})
    with pytest.raises(TaskArgumentError, match="at most 2"):
        spec.validate(["a", False, 3])
    with pytest.raises(ValidationError, match="extra"):
        spec.validate([], {"nope": 1})


@pytest.mark.parametrize(
    ("name", "kwargs"),
    [
        ("send_notification_email", {"email": "not-an-address", "subject": "s", "message": "m"}),
        ("send_notification_email", {"email": "a@example.com", "subject": "s", "message": "m", "language": "fr"}),
        ("export_data", {"dataset": "passwords"}),
        ("calculate_monthly_revenue", {"year": 2026}),
        ("long_running_task", {"steps": 0}),
        ("cleanup_cache", {"prefix": "*"}),
    ],
)
def test_bad_arguments_are_refused(name: str, kwargs: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        CATALOG[name].validate([], kwargs)


def test_default_schedules() -> None:
    schedules = {name: spec.schedule for name, spec in CATALOG.items() if spec.schedule}
    assert set(schedules) == {
        "check_pending_bills",
        "generate_hourly_report",
        "cleanup_old_notifications",
        "generate_weekly_report",
        "process_access_logs",
        "generate_access_statistics",
        "backup_database",
        "cleanup_expired_data",
        "cleanup_old_access_records",
        "generate_daily_report",
    }
    # the month's revenue and report are the workflow month_end_close now, on the 1st at 00:30
    close = WORKFLOWS["month_end_close"].schedule
    assert close is not None
    assert (close.minute, close.hour, close.day_of_month) == ("30", "0", "1")
    weekly = schedules["generate_weekly_report"]
    assert (weekly.minute, weekly.hour, weekly.day_of_week) == ("0", "10", "1")
    assert schedules["process_access_logs"].every == 30.0


def test_lookup_by_either_name() -> None:
    assert get_spec("test_task") is get_spec("mallops.maintenance.test_task")
    assert get_spec("celery.backend_cleanup") is None
