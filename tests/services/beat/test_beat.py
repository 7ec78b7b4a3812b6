"""The beat scheduler: catalog defaults fire at the right local times, and two replicas never double-fire.

Beat publishes to its own broker database here (db 5 of the run's Redis) so that the messages can be
counted without a worker of another test consuming them; the schedule itself is in the cache db as
always.
"""

from __future__ import annotations

import datetime as dt
import json
import zoneinfo
from collections.abc import Iterator
from pathlib import Path

import pytest
from celery import Celery
from redbeat.schedulers import RedBeatScheduler

from services.beat.main import create_app
from shared import schedules
from shared.catalog import CATALOG, QUEUES, Schedule
from shared.settings import Settings
from tests.harness import Process, RedisServer, service_argv, spawn, wait_until

pytestmark = pytest.mark.integration

SHANGHAI = zoneinfo.ZoneInfo("Asia/Shanghai")
BEAT_BROKER_DB = 5
SCHEDULED = sorted(name for name, spec in CATALOG.items() if spec.schedule is not None)


def published(redis_server: RedisServer) -> list[dict[str, str]]:
    """Every task message waiting in the beat test broker: [{task, id, queue}], oldest first."""
    client = redis_server.client(BEAT_BROKER_DB)
    try:
        found = []
        for queue in QUEUES:
            for raw in reversed(client.lrange(queue, 0, -1)):  # kombu LPUSHes, consumers BRPOP
                headers = json.loads(raw)["headers"]
                found.append({"task": headers["task"], "id": headers["id"], "queue": queue})
        return found
    finally:
        client.close()


@pytest.fixture
def beat_broker(redis_server: RedisServer, clean_broker: None) -> Iterator[str]:
    client = redis_server.client(BEAT_BROKER_DB)
    client.flushdb()
    yield f"{redis_server.url_base}/{BEAT_BROKER_DB}"
    client.flushdb()
    client.close()


class Clock:
    def __init__(self, at: dt.datetime) -> None:
        self.at = at

    def now(self) -> dt.datetime:
        return self.at.astimezone(dt.UTC)


@pytest.fixture
def clocked_app(settings: Settings, beat_broker: str) -> Iterator[tuple[Celery, Clock]]:
    app = create_app(settings.model_copy(update={"broker_url": beat_broker}))
    clock = Clock(dt.datetime(2026, 1, 1, tzinfo=SHANGHAI))
    app.now = clock.now  # every schedule RedBeat loads reads the time from its app
    schedules.delete_all(app)
    yield app, clock
    schedules.delete_all(app)
    app.close()


def fired_between(
    app: Celery, clock: Clock, redis_server: RedisServer, start: dt.datetime, end: dt.datetime
) -> set[str]:
    """Install the defaults at ``start``, run one beat tick at ``end``; the short names published."""
    schedules.delete_all(app)
    clock.at = start
    schedules.ensure_defaults(app)
    before = {m["id"] for m in published(redis_server)}
    clock.at = end
    scheduler = RedBeatScheduler(app=app)
    scheduler.lock_key = None  # one scheduler, driven by hand: no lock needed
    try:
        scheduler.tick()
    finally:
        scheduler.close()
    new = [m for m in published(redis_server) if m["id"] not in before]
    names = [m["task"].rsplit(".", 1)[1] for m in new]
    assert len(names) == len(set(names)), f"an entry fired twice in one tick: {names}"
    for message in new:
        assert message["queue"] == CATALOG[message["task"].rsplit(".", 1)[1]].queue
    return set(names)


def test_monday_ten_oclock_fires_the_weekly_report(clocked_app, redis_server: RedisServer) -> None:
    app, clock = clocked_app
    monday = dt.date(2026, 11, 16)
    assert monday.isoweekday() == 1
    fired = fired_between(
        app,
        clock,
        redis_server,
        dt.datetime.combine(monday, dt.time(9, 59, 50), SHANGHAI),
        dt.datetime.combine(monday, dt.time(10, 0, 1), SHANGHAI),
    )
    assert fired == {"check_pending_bills", "generate_hourly_report", "generate_weekly_report"}


def test_sunday_ten_oclock_does_not(clocked_app, redis_server: RedisServer) -> None:
    app, clock = clocked_app
    sunday = dt.date(2026, 11, 15)
    assert sunday.isoweekday() == 7  # Celery's crontab calls it day 0
    fired = fired_between(
        app,
        clock,
        redis_server,
        dt.datetime.combine(sunday, dt.time(9, 59, 50), SHANGHAI),
        dt.datetime.combine(sunday, dt.time(10, 0, 1), SHANGHAI),
    )
    assert fired == {"check_pending_bills", "generate_hourly_report"}


def test_monday_ten_oclock_utc_is_not_monday_ten_in_shanghai(clocked_app, redis_server: RedisServer) -> None:
    app, clock = clocked_app
    utc = dt.UTC
    fired = fired_between(
        app,
        clock,
        redis_server,
        dt.datetime(2026, 11, 16, 9, 59, 50, tzinfo=utc),
        dt.datetime(2026, 11, 16, 10, 0, 1, tzinfo=utc),
    )
    assert "generate_weekly_report" not in fired  # 10:00 UTC is 18:00 in Shanghai


@pytest.mark.parametrize(
    ("start", "end", "expected"),
    [
        # the first of the month at midnight: hourly report, every-minute check (the monthly work waits)
        (
            (2026, 11, 30, 23, 59, 50),
            (2026, 12, 1, 0, 0, 1),
            {"check_pending_bills", "generate_hourly_report"},
        ),
        # ... and at 00:30 month_end_close: revenue, then the monthly report, then the e-mail
        ((2026, 12, 1, 0, 29, 50), (2026, 12, 1, 0, 30, 1), {"check_pending_bills", "run_workflow"}),
        ((2026, 12, 2, 0, 29, 50), (2026, 12, 2, 0, 30, 1), {"check_pending_bills"}),
        (
            (2026, 11, 17, 0, 59, 50),
            (2026, 11, 17, 1, 0, 1),
            {"check_pending_bills", "generate_hourly_report", "generate_access_statistics"},
        ),
        (
            (2026, 11, 17, 1, 59, 50),
            (2026, 11, 17, 2, 0, 1),
            {
                "check_pending_bills",
                "generate_hourly_report",
                "cleanup_old_notifications",
                "cleanup_old_access_records",
            },
        ),
        # the backup at 03:00, retention at 04:00, yesterday's report at 06:00 (Shanghai)
        (
            (2026, 11, 17, 2, 59, 50),
            (2026, 11, 17, 3, 0, 1),
            {"check_pending_bills", "generate_hourly_report", "backup_database"},
        ),
        (
            (2026, 11, 17, 3, 59, 50),
            (2026, 11, 17, 4, 0, 1),
            {"check_pending_bills", "generate_hourly_report", "cleanup_expired_data"},
        ),
        (
            (2026, 11, 17, 5, 59, 50),
            (2026, 11, 17, 6, 0, 1),
            {"check_pending_bills", "generate_hourly_report", "generate_daily_report"},
        ),
        # mid-hour: only the every-minute check and, 30 s on, the access-log drain
        ((2026, 11, 17, 14, 29, 50), (2026, 11, 17, 14, 30, 21), {"check_pending_bills", "process_access_logs"}),
        ((2026, 11, 17, 14, 30, 1), (2026, 11, 17, 14, 30, 20), set()),
    ],
)
def test_default_entries_fire_at_their_local_times(
    clocked_app, redis_server: RedisServer, start, end, expected
) -> None:
    app, clock = clocked_app
    fired = fired_between(
        app,
        clock,
        redis_server,
        dt.datetime(*start).replace(tzinfo=SHANGHAI),
        dt.datetime(*end).replace(tzinfo=SHANGHAI),
    )
    assert fired == expected


def test_a_disabled_entry_does_not_fire_and_a_retimed_one_fires_at_its_new_time(
    clocked_app, redis_server: RedisServer
) -> None:
    app, clock = clocked_app
    clock.at = dt.datetime(2026, 11, 16, 9, 58, 0, tzinfo=SHANGHAI)
    schedules.ensure_defaults(app)
    schedules.update_entry(app, "generate_weekly_report", enabled=False)
    schedules.update_entry(app, "generate_hourly_report", schedule=Schedule(minute="15"))

    def tick_at(at: dt.datetime) -> set[str]:
        before = {m["id"] for m in published(redis_server)}
        clock.at = at
        scheduler = RedBeatScheduler(app=app)
        scheduler.lock_key = None
        try:
            scheduler.tick()
        finally:
            scheduler.close()
        return {m["task"].rsplit(".", 1)[1] for m in published(redis_server) if m["id"] not in before}

    assert tick_at(dt.datetime(2026, 11, 16, 10, 0, 1, tzinfo=SHANGHAI)) >= {"check_pending_bills"}
    fired_at_ten = {m["task"] for m in published(redis_server)}
    assert CATALOG["generate_weekly_report"].celery_name not in fired_at_ten
    assert CATALOG["generate_hourly_report"].celery_name not in fired_at_ten
    assert "generate_hourly_report" in tick_at(dt.datetime(2026, 11, 16, 10, 15, 1, tzinfo=SHANGHAI))


# -- two real beat processes -----------------------------------------------------------------


def start_beat(name: str, env: dict[str, str], log_dir: Path) -> Process:
    return spawn(name, service_argv("beat"), env, log_dir)


def only_access_logs_every_second(settings: Settings) -> Celery:
    """The default schedule with every entry disabled but process_access_logs, every second."""
    app = create_app(settings)
    schedules.delete_all(app)
    schedules.ensure_defaults(app)
    for name in SCHEDULED:
        schedules.update_entry(app, name, enabled=False)
    schedules.update_entry(app, "process_access_logs", enabled=True, schedule=Schedule(every=1))
    return app


def sends(process: Process) -> int:
    return process.log().count("Scheduler: Sending due task")


def test_a_second_beat_waits_for_the_lock_and_takes_over(
    settings: Settings,
    service_env: dict[str, str],
    beat_broker: str,
    redis_server: RedisServer,
    tmp_path: Path,
) -> None:
    app = only_access_logs_every_second(settings)

    env = service_env | {
        "MALLOPS_BROKER_URL": beat_broker,
        "MALLOPS_BEAT_MAX_INTERVAL": "1",
        "MALLOPS_BEAT_LOCK_TIMEOUT": "60",
    }
    first = start_beat("beat-a", env, tmp_path)
    second: Process | None = None
    try:
        wait_until(lambda: "Acquired lock" in first.log(), timeout=60, message="the first beat to take the lock")
        second = start_beat("beat-b", env, tmp_path)
        wait_until(lambda: "beat: Starting" in second.log(), timeout=60, message="the second beat to start")
        wait_until(lambda: len(published(redis_server)) >= 5, timeout=90, message="five sends of the first beat")

        # while the first holds the lock the second sends nothing, and every message is one of the first's
        assert second.alive()
        assert "Acquired lock" not in second.log()
        assert sends(second) == 0
        messages = published(redis_server)
        assert len({m["id"] for m in messages}) == len(messages)
        assert {m["task"] for m in messages} == {CATALOG["process_access_logs"].celery_name}
        assert len(messages) in (sends(first), sends(first) - 1)  # a send may be logged before it lands

        # a clean stop releases the lock; the standby takes over within a loop or two
        first.stop()
        stopped_at = len(published(redis_server))
        wait_until(lambda: "Acquired lock" in second.log(), timeout=60, message="the standby to take the lock")
        wait_until(lambda: len(published(redis_server)) >= stopped_at + 3, timeout=60, message="the standby to send")
        assert sends(second) >= 3
    finally:
        first.stop()
        if second is not None:
            second.stop()
        schedules.delete_all(app)
        app.close()


def test_a_running_beat_follows_runtime_changes_without_a_restart(
    settings: Settings,
    service_env: dict[str, str],
    beat_broker: str,
    redis_server: RedisServer,
    tmp_path: Path,
) -> None:
    app = only_access_logs_every_second(settings)
    access, bills = CATALOG["process_access_logs"].celery_name, CATALOG["check_pending_bills"].celery_name

    def count(task: str) -> int:
        return sum(1 for m in published(redis_server) if m["task"] == task)

    env = service_env | {"MALLOPS_BROKER_URL": beat_broker, "MALLOPS_BEAT_MAX_INTERVAL": "1"}
    beat = start_beat("beat", env, tmp_path)
    try:
        wait_until(lambda: count(access) >= 2, timeout=90, message="the enabled entry to fire")
        assert count(bills) == 0

        # enable a disabled entry and re-time it: the running beat picks both up
        schedules.update_entry(app, "check_pending_bills", enabled=True, schedule=Schedule(every=1))
        wait_until(lambda: count(bills) >= 2, timeout=60, message="the newly enabled entry to fire")

        # disable the first: it stops while the other keeps going (at most one send already under way)
        schedules.update_entry(app, "process_access_logs", enabled=False)
        stopped_at = count(access)
        bills_then = count(bills)
        wait_until(lambda: count(bills) >= bills_then + 4, timeout=60, message="four more sends of the other")
        assert count(access) <= stopped_at + 1
        assert beat.alive()
        assert beat.log().count("beat: Starting") == 1  # never restarted
    finally:
        beat.stop()
        schedules.delete_all(app)
        app.close()
