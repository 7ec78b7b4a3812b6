"""shared.schedules against a real Redis: default entries, runtime edits, validation."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from typing import Any

import pytest
from celery import Celery
from redbeat.schedulers import get_redis

from shared import schedules
from shared.catalog import CATALOG, WORKFLOWS, Schedule
from shared.celery_app import create_celery_app
from shared.settings import Settings

pytestmark = pytest.mark.integration

EXPECTED_DEFAULTS = {
    "check_pending_bills": {"minute": "*", "hour": "*", "day_of_week": "*", "day_of_month": "*", "month_of_year": "*"},
    "generate_hourly_report": {
        "minute": "0",
        "hour": "*",
        "day_of_week": "*",
        "day_of_month": "*",
        "month_of_year": "*",
    },
    "generate_weekly_report": {
        "minute": "0",
        "hour": "10",
        "day_of_week": "1",
        "day_of_month": "*",
        "month_of_year": "*",
    },
    "process_access_logs": {"every": 30.0},
    "generate_access_statistics": {
        "minute": "0",
        "hour": "1",
        "day_of_week": "*",
        "day_of_month": "*",
        "month_of_year": "*",
    },
    "cleanup_old_notifications": {
        "minute": "0",
        "hour": "2",
        "day_of_week": "*",
        "day_of_month": "*",
        "month_of_year": "*",
    },
    # added by issue 15: backups and retention without cron on the host
    "backup_database": {
        "minute": "0",
        "hour": "3",
        "day_of_week": "*",
        "day_of_month": "*",
        "month_of_year": "*",
    },
    "cleanup_expired_data": {
        "minute": "0",
        "hour": "4",
        "day_of_week": "*",
        "day_of_month": "*",
        "month_of_year": "*",
    },
    "cleanup_old_access_records": {
        "minute": "0",
        "hour": "2",
        "day_of_week": "*",
        "day_of_month": "*",
        "month_of_year": "*",
    },
    "generate_daily_report": {
        "minute": "0",
        "hour": "6",
        "day_of_week": "*",
        "day_of_month": "*",
        "month_of_year": "*",
    },
    # the workflows issue: revenue, then the monthly report, then the e-mail, as one workflow on the 1st at 00:30
    "month_end_close": {
        "minute": "30",
        "hour": "0",
        "day_of_week": "*",
        "day_of_month": "1",
        "month_of_year": "*",
    },
}
WORKFLOW_DEFAULTS = {"month_end_close"}


@pytest.fixture
def app(settings: Settings, clean_broker: None) -> Iterator[Celery]:
    app = create_celery_app("test-schedules", settings)
    yield app
    app.close()


def test_defaults_come_from_the_catalog(app: Celery, redis_client) -> None:
    created = schedules.ensure_defaults(app)
    assert sorted(created) == sorted(EXPECTED_DEFAULTS)
    entries = {e.name: e for e in schedules.list_entries(app)}
    assert {name: e.schedule for name, e in entries.items()} == EXPECTED_DEFAULTS
    for name, entry in entries.items():
        assert entry.enabled
        assert entry.last_run_at is None  # never ran
        assert entry.next_run_at is not None
        assert entry.next_run_at > dt.datetime.now(dt.UTC)
        if name in WORKFLOW_DEFAULTS:  # a named workflow, started by run_workflow
            assert entry.task_name == "run_workflow"
            assert entry.description == WORKFLOWS[name].description
            assert (entry.args, entry.kwargs) == ([], {"name": name, "kwargs": {}})
            continue
        assert entry.task_name == name
        assert entry.queue == CATALOG[name].queue
        assert entry.description == CATALOG[name].description
        assert (entry.args, entry.kwargs) == ([], {})
    assert schedules.ensure_defaults(app) == []  # idempotent


def test_the_retired_monthly_defaults_give_way_to_month_end_close(app: Celery) -> None:
    """A Redis seeded by an earlier release: its two monthly entries, untouched, are removed; a changed one stays."""
    client = get_redis(app)
    seeded = schedules._seeded_key(app)
    for name, when in schedules.RETIRED_DEFAULTS.items():
        schedules._save(app, *schedules._new_entry(app, name, CATALOG[name], when, True))
        client.sadd(seeded, name)
    schedules.update_entry(app, "generate_monthly_report", kwargs={"year": 2026, "month": 1})
    schedules.ensure_defaults(app)
    names = {entry.name for entry in schedules.list_entries(app)}
    assert "calculate_monthly_revenue" not in names
    assert {"generate_monthly_report", "month_end_close"} <= names


def test_keys_are_redbeat_entries_under_the_mallops_prefix(app: Celery, redis_server) -> None:
    schedules.ensure_defaults(app)
    cache = redis_server.client(2)
    try:
        assert cache.exists("mallops:redbeat:generate_weekly_report")
        assert cache.zscore("mallops:redbeat::schedule", "mallops:redbeat:generate_weekly_report") is not None
        assert cache.hget("mallops:redbeat:generate_weekly_report", "definition")
    finally:
        cache.close()


def test_disable_enable_and_retime_at_runtime(app: Celery) -> None:
    schedules.ensure_defaults(app)
    off = schedules.update_entry(app, "check_pending_bills", enabled=False)
    assert off.enabled is False
    assert off.next_run_at is None
    assert {e.name: e.enabled for e in schedules.list_entries(app)}["check_pending_bills"] is False

    on = schedules.update_entry(app, "check_pending_bills", enabled=True)
    assert on.enabled is True
    assert on.next_run_at is not None

    retimed = schedules.update_entry(
        app, "generate_weekly_report", schedule=Schedule(minute="30", hour="9", day_of_week="2")
    )
    assert retimed.schedule["day_of_week"] == "2"
    assert retimed.schedule["hour"] == "9"
    assert retimed.next_run_at is not None
    local = retimed.next_run_at.astimezone(app.timezone)
    assert (local.isoweekday(), local.hour, local.minute) == (2, 9, 30)  # Tuesday 09:30 Shanghai

    every = schedules.update_entry(app, "process_access_logs", schedule=Schedule(every=10))
    assert every.schedule == {"every": 10.0}
    assert every.last_run_at is None
    assert every.next_run_at is not None
    assert abs((every.next_run_at - dt.datetime.now(dt.UTC)).total_seconds() - 10) < 2

    # a restart of beat (ensure_defaults again) keeps the runtime edits
    assert schedules.ensure_defaults(app) == []
    state = {e.name: e for e in schedules.list_entries(app)}
    assert state["generate_weekly_report"].schedule["day_of_week"] == "2"
    assert state["process_access_logs"].schedule == {"every": 10.0}

    default = schedules.reset_entry(app, "generate_weekly_report")
    assert default.schedule == EXPECTED_DEFAULTS["generate_weekly_report"]


def test_next_run_of_the_weekly_report_is_a_monday_at_ten_in_shanghai(app: Celery) -> None:
    schedules.ensure_defaults(app)
    entry = schedules.get_entry(app, "generate_weekly_report")
    assert entry.next_run_at is not None
    local = entry.next_run_at.astimezone(dt.timezone(dt.timedelta(hours=8)))
    assert (local.isoweekday(), local.hour, local.minute) == (1, 10, 0)


def test_unknown_entry_is_a_key_error(app: Celery) -> None:
    with pytest.raises(KeyError):
        schedules.update_entry(app, "no_such_task", enabled=False)
    with pytest.raises(KeyError):
        schedules.update_entry(app, "send_bill_reminders", enabled=False)  # in the catalog, not scheduled
    with pytest.raises(KeyError):
        schedules.get_entry(app, "no_such_task")


@pytest.mark.parametrize(
    ("schedule", "message"),
    [
        (Schedule(minute="61"), "minute"),
        (Schedule(hour="25"), "hour"),
        (Schedule(day_of_week="8"), "day_of_week"),
        (Schedule(minute="*/0"), "minute"),
        (Schedule(minute=""), "minute"),
        (Schedule(every=0), "every"),
        (Schedule(every=-5), "every"),
        (Schedule(every=float("nan")), "every"),
    ],
)
def test_bad_schedule_is_a_value_error(app: Celery, schedule: Schedule, message: str) -> None:
    schedules.ensure_defaults(app)
    before = schedules.get_entry(app, "generate_weekly_report")
    with pytest.raises(ValueError, match=message):
        schedules.update_entry(app, "generate_weekly_report", schedule=schedule)
    assert schedules.get_entry(app, "generate_weekly_report").schedule == before.schedule


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"every": 5, "minute": "0"}, "not both"),
        ({"mnute": "0"}, "unknown"),
        ({"hour": ["1"]}, "string"),
        ({"every": "soon"}, "number"),
        ([1, 2], "object"),
    ],
)
def test_schedule_from_dict_refuses_bad_input(data, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        schedules.schedule_from_dict(data)


def test_schedule_from_dict_fills_crontab_defaults() -> None:
    assert schedules.schedule_from_dict({"minute": "0", "hour": 10, "day_of_week": "mon"}) == Schedule(
        minute="0", hour="10", day_of_week="mon"
    )
    assert schedules.schedule_from_dict({"every": 45}) == Schedule(every=45.0)


def test_entries_serialise_to_json(app: Celery) -> None:
    import json

    schedules.ensure_defaults(app)
    data = [e.as_dict() for e in schedules.list_entries(app)]
    text = json.dumps(data)
    assert "generate_weekly_report" in text
    weekly = next(d for d in data if d["name"] == "generate_weekly_report")
    assert weekly["schedule_text"] == "0 10 * * 1"
    assert weekly["next_run_at"].endswith("Z")
    assert weekly["last_run_at"] is None
    local = dt.datetime.fromisoformat(weekly["next_run_local"])
    assert local.utcoffset() == dt.timedelta(hours=8)  # Asia/Shanghai
    assert local == dt.datetime.fromisoformat(weekly["next_run_at"])
    assert (local.hour, local.minute, local.isoweekday()) == (10, 0, 1)


def test_entries_the_catalog_no_longer_schedules_are_removed(app: Celery, redis_server) -> None:
    from redbeat.schedulers import RedBeatSchedulerEntry

    schedules.ensure_defaults(app)
    stray = RedBeatSchedulerEntry(
        name="retired_task",
        task="mallops.finance.retired_task",
        schedule=schedules.celery_schedule(Schedule(every=60), app),
        app=app,
    )
    stray.save()
    cache = redis_server.client(2)
    try:
        assert cache.exists("mallops:redbeat:retired_task")
        assert schedules.ensure_defaults(app) == []
        assert not cache.exists("mallops:redbeat:retired_task")
        assert cache.zscore("mallops:redbeat::schedule", "mallops:redbeat:retired_task") is None
        assert len(schedules.list_entries(app)) == len(EXPECTED_DEFAULTS)
    finally:
        cache.close()


def test_the_new_defaults_publish_their_documented_arguments(app: Celery) -> None:
    from redbeat.schedulers import RedBeatSchedulerEntry

    def kwargs(name: str) -> dict[str, Any]:
        return dict(RedBeatSchedulerEntry.from_key(f"mallops:redbeat:{name}", app=app).kwargs)

    schedules.ensure_defaults(app)
    assert kwargs("cleanup_old_access_records") == {"days": 90}
    assert kwargs("generate_daily_report") == {"date": None}  # yesterday
    assert kwargs("month_end_close") == {"name": "month_end_close", "kwargs": {}}  # last month, when it runs
    assert kwargs("backup_database") == {"keep": None}  # MALLOPS_BACKUP_KEEP
    assert kwargs("cleanup_expired_data") == {}


def test_frequent_entries_expire_so_a_backlog_is_skipped(app: Celery) -> None:
    from redbeat.schedulers import RedBeatSchedulerEntry

    def options(name: str) -> dict[str, Any]:
        return dict(RedBeatSchedulerEntry.from_key(f"mallops:redbeat:{name}", app=app).options)

    schedules.ensure_defaults(app)
    assert options("process_access_logs") == {"queue": "reports", "headers": {"mallops_owner": "beat"}, "expires": 60.0}
    assert options("check_pending_bills")["expires"] == 120.0
    assert "expires" not in options("generate_weekly_report")
    schedules.update_entry(app, "process_access_logs", schedule=Schedule(every=3600))
    assert "expires" not in options("process_access_logs")
    schedules.update_entry(app, "generate_weekly_report", schedule=Schedule(every=10))
    assert options("generate_weekly_report")["expires"] == 20.0


# -- entries of one's own, deletion, last runs (issue 15) --------------------------------------


def test_an_entry_of_ones_own_with_arguments(app: Celery) -> None:
    from redbeat.schedulers import RedBeatSchedulerEntry

    schedules.ensure_defaults(app)
    entry = schedules.create_entry(
        app,
        "remind.tenants-9",
        "send_notification_email",
        Schedule(minute="0", hour="9"),
        kwargs={"email": "shop@mall.example", "subject": "Rent", "message": "Rent is due"},
        description="Monday rent reminder",
    )
    assert entry.task_name == "send_notification_email"
    assert entry.queue == "email"
    assert entry.kwargs == {"email": "shop@mall.example", "subject": "Rent", "message": "Rent is due"}
    assert entry.description == "Monday rent reminder"
    assert entry.last_run_at is None
    # beat publishes the validated arguments, with the task's defaults filled in
    stored = RedBeatSchedulerEntry.from_key("mallops:redbeat:remind.tenants-9", app=app)
    assert stored.task == "mallops.notifier.send_notification_email"
    assert stored.kwargs["language"] == "zh_CN"
    assert stored.kwargs["subject"] == "Rent"
    assert stored.options["queue"] == "email"
    # a second entry for the same task, under another name
    schedules.create_entry(app, "remind-again", "send_notification_email", Schedule(every=3600), kwargs=entry.kwargs)
    names = {e.name for e in schedules.list_entries(app)}
    assert {"remind.tenants-9", "remind-again"} <= names

    with pytest.raises(schedules.EntryExists):
        schedules.create_entry(app, "remind-again", "test_task", Schedule(every=60))
    with pytest.raises(schedules.UnknownTask):
        schedules.create_entry(app, "nope", "no_such_task", Schedule(every=60))
    with pytest.raises(ValueError, match="name"):
        schedules.create_entry(app, "Bad Name", "test_task", Schedule(every=60))
    with pytest.raises(ValueError, match="email"):
        schedules.create_entry(app, "bad-args", "send_notification_email", Schedule(every=60), kwargs={"email": 1})
    assert "bad-args" not in {e.name for e in schedules.list_entries(app)}

    changed = schedules.update_entry(app, "remind-again", kwargs={**entry.kwargs, "language": "en"}, description="x")
    assert changed.kwargs["language"] == "en"
    assert changed.description == "x"
    assert RedBeatSchedulerEntry.from_key("mallops:redbeat:remind-again", app=app).kwargs["language"] == "en"
    with pytest.raises(ValueError, match="subject"):
        schedules.update_entry(app, "remind-again", kwargs={"subject": ""})


def test_a_deleted_default_stays_deleted_until_created_again(app: Celery, redis_server) -> None:
    schedules.ensure_defaults(app)
    schedules.delete_entry(app, "backup_database")
    with pytest.raises(KeyError):
        schedules.delete_entry(app, "backup_database")
    assert schedules.ensure_defaults(app) == []  # what beat does at every start
    assert "backup_database" not in {e.name for e in schedules.list_entries(app)}
    cache = redis_server.client(2)
    try:
        assert not cache.exists("mallops:redbeat:backup_database")
        # created again by hand: an ordinary entry, kept from then on
        schedules.create_entry(app, "backup_database", "backup_database", Schedule(minute="0", hour="5"))
        assert schedules.ensure_defaults(app) == []
        assert schedules.get_entry(app, "backup_database").schedule["hour"] == "5"
        # a default new to this release (never seeded) is created at the next start
        cache.srem("mallops:redbeat::seeded", "cleanup_expired_data")
        schedules.delete_entry(app, "cleanup_expired_data")
        assert schedules.ensure_defaults(app) == ["cleanup_expired_data"]
    finally:
        cache.close()


def test_last_run_is_shown_once_it_ran_and_kept_across_a_retime(app: Celery) -> None:
    from redbeat.schedulers import RedBeatSchedulerEntry

    schedules.ensure_defaults(app)
    schedules.create_entry(app, "echo", "test_task", Schedule(every=60), kwargs={"message": "hi"})
    assert schedules.get_entry(app, "echo").last_run_at is None
    # what beat does when it sends the entry
    stored = RedBeatSchedulerEntry.from_key("mallops:redbeat:echo", app=app)
    ran = next(stored)
    ran_at = schedules.get_entry(app, "echo").last_run_at
    assert ran_at is not None
    assert abs((ran_at - ran.last_run_at.astimezone(dt.UTC)).total_seconds()) < 1
    retimed = schedules.update_entry(app, "echo", schedule=Schedule(every=120))
    assert retimed.last_run_at == ran_at  # the clock restarted, the last run is still the real one
