"""The beat schedule, kept in Redis by celery-redbeat and editable at runtime.

Every catalog task with a default ``schedule`` has one RedBeat entry named by its catalog short name
(Redis key ``<redbeat_key_prefix><name>``, e.g. ``mallops:redbeat:check_pending_bills``). The running
beat process reads the entries from Redis on every tick, so enabling, disabling or re-timing an entry
here takes effect within one beat loop interval, without restarting beat.

- :func:`ensure_defaults` creates the catalog's entries that are missing (beat calls it at start); it
  never overwrites an entry that exists, so runtime edits survive a beat restart.
- :func:`list_entries` and :func:`update_entry` are what the gateway (``/schedules``) and the CLI use.

Crontab fields are read in the app's timezone (``MALLOPS_TIMEZONE``, Asia/Shanghai by default) and
``day_of_week`` counts from Sunday = 0, as Celery's crontab does.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from celery import Celery
from celery.schedules import crontab
from celery.schedules import schedule as interval_schedule
from redbeat.schedulers import RedBeatSchedulerEntry, ensure_conf, get_redis

from shared.catalog import CATALOG, Schedule, TaskSpec

MIN_INTERVAL = 1.0
MAX_INTERVAL = 31 * 24 * 3600.0
CRON_FIELDS = ("minute", "hour", "day_of_week", "day_of_month", "month_of_year")
BEAT_OWNER = "beat"  # the ``mallops_owner`` header of tasks that beat publishes
FREQUENT = 300.0  # seconds: entries firing at least this often get an expiry (see entry_options)


@dataclass(frozen=True)
class ScheduleEntry:
    """One beat entry as the gateway and the CLI show it."""

    name: str
    task_name: str
    enabled: bool
    schedule: dict[str, Any]
    description: str
    last_run_at: dt.datetime | None
    next_run_at: dt.datetime | None
    queue: str = field(default="")

    def as_dict(self) -> dict[str, Any]:
        """JSON-friendly: datetimes as ISO 8601 in UTC."""
        return {
            "name": self.name,
            "task_name": self.task_name,
            "queue": self.queue,
            "enabled": self.enabled,
            "schedule": dict(self.schedule),
            "schedule_text": Schedule(**self.schedule).describe(),
            "description": self.description,
            "last_run_at": _iso(self.last_run_at),
            "next_run_at": _iso(self.next_run_at),
        }


def scheduled_specs() -> dict[str, TaskSpec]:
    """The catalog tasks that have a beat entry, by short name."""
    return {name: spec for name, spec in CATALOG.items() if spec.schedule is not None}


# -- validation and conversion ----------------------------------------------------------------


def schedule_from_dict(data: Mapping[str, Any]) -> Schedule:
    """A :class:`Schedule` from ``{"every": seconds}`` or crontab fields; ValueError if it is not valid.

    Crontab fields left out default to ``"*"``; ``every`` cannot be combined with crontab fields.
    """
    if not isinstance(data, Mapping):
        raise ValueError("a schedule is an object: {'every': seconds} or crontab fields")
    unknown = sorted(set(data) - {"every", *CRON_FIELDS})
    if unknown:
        raise ValueError(f"unknown schedule field(s): {', '.join(unknown)}")
    if "every" in data and data["every"] is not None:
        if set(data) - {"every"}:
            raise ValueError("give either 'every' or crontab fields, not both")
        return validate_schedule(Schedule(every=data["every"]))
    values: dict[str, str] = {}
    for name in CRON_FIELDS:
        value = data.get(name, "*")
        if isinstance(value, int) and not isinstance(value, bool):
            value = str(value)
        if not isinstance(value, str):
            raise ValueError(f"crontab field {name!r} must be a string such as '*', '0' or '*/5'")
        values[name] = value
    return validate_schedule(
        Schedule(
            minute=values["minute"],
            hour=values["hour"],
            day_of_week=values["day_of_week"],
            day_of_month=values["day_of_month"],
            month_of_year=values["month_of_year"],
        )
    )


def validate_schedule(schedule: Schedule) -> Schedule:
    """``schedule`` itself if Celery can run it, else ValueError naming the bad field."""
    if schedule.every is not None:
        every = schedule.every
        if isinstance(every, bool) or not isinstance(every, int | float) or not math.isfinite(every):
            raise ValueError("'every' must be a number of seconds")
        if not MIN_INTERVAL <= every <= MAX_INTERVAL:
            raise ValueError(f"'every' must be between {MIN_INTERVAL:g} and {MAX_INTERVAL:g} seconds")
        return Schedule(every=float(every))
    for name in CRON_FIELDS:
        value = getattr(schedule, name)
        if not isinstance(value, str) or not value.strip() or len(value) > 100:
            raise ValueError(f"crontab field {name!r} must be a non-empty string of at most 100 characters")
        try:
            crontab(**{name: value})
        except Exception as exc:  # celery raises ValueError or its own ParseException
            raise ValueError(f"bad crontab {name} {value!r}: {exc}") from exc
    return schedule


def celery_schedule(schedule: Schedule, app: Celery) -> interval_schedule | crontab:
    """The Celery schedule object for ``schedule``, evaluated in ``app``'s timezone."""
    schedule = validate_schedule(schedule)
    if schedule.every is not None:
        return interval_schedule(run_every=dt.timedelta(seconds=schedule.every), app=app)
    return crontab(
        minute=schedule.minute,
        hour=schedule.hour,
        day_of_week=schedule.day_of_week,
        day_of_month=schedule.day_of_month,
        month_of_year=schedule.month_of_year,
        app=app,
    )


def _schedule_of(entry: RedBeatSchedulerEntry) -> Schedule:
    sched = entry.schedule
    if isinstance(sched, crontab):
        return Schedule(
            minute=str(sched._orig_minute),
            hour=str(sched._orig_hour),
            day_of_week=str(sched._orig_day_of_week),
            day_of_month=str(sched._orig_day_of_month),
            month_of_year=str(sched._orig_month_of_year),
        )
    if isinstance(sched, interval_schedule):
        return Schedule(every=float(sched.run_every.total_seconds()))
    raise ValueError(f"beat entry {entry.name!r} has a schedule mallops does not manage: {sched!r}")


# -- reading and writing entries ----------------------------------------------------------------


def _key(app: Celery, name: str) -> str:
    ensure_conf(app)
    return str(RedBeatSchedulerEntry.generate_key(app, name))


def _load(app: Celery, name: str) -> RedBeatSchedulerEntry | None:
    try:
        return RedBeatSchedulerEntry.from_key(_key(app, name), app=app)
    except KeyError:
        return None


def entry_options(spec: TaskSpec, schedule: Schedule) -> dict[str, Any]:
    """How beat publishes the entry: its queue, the ``beat`` owner and, for entries that fire every few
    minutes or more often, an expiry of two periods: when workers are down, a backlog of stale runs
    is skipped (the next run does the same work) instead of being run one after another."""
    options: dict[str, Any] = {"queue": spec.queue, "headers": {"mallops_owner": BEAT_OWNER}}
    if schedule.every is not None and schedule.every <= FREQUENT:
        options["expires"] = 2 * schedule.every
    elif schedule.every is None and schedule.minute == "*" and schedule.hour == "*":
        options["expires"] = 120.0  # every minute
    return options


def _new_entry(app: Celery, spec: TaskSpec, schedule: Schedule, enabled: bool) -> RedBeatSchedulerEntry:
    entry = RedBeatSchedulerEntry(
        name=spec.name,
        task=spec.celery_name,
        schedule=celery_schedule(schedule, app),
        args=(),
        kwargs={},
        options=entry_options(spec, schedule),
        enabled=enabled,
        app=app,
    )
    # counted from now: a new entry fires at its next scheduled time, not at once
    entry.last_run_at = app.now()
    return entry


def _next_run_at(app: Celery, entry: RedBeatSchedulerEntry) -> dt.datetime | None:
    """When beat will next send the entry (RedBeat's own ``due_at`` is an early estimate)."""
    now = app.now()
    if entry.last_run_at is None:
        return _utc(now)
    remaining = entry.schedule.remaining_estimate(entry.last_run_at)
    if remaining is None:
        return None
    at = now + max(remaining, dt.timedelta(0))
    # Celery works in whole seconds and drops microseconds on the way: round to the nearest second
    return _utc((at + dt.timedelta(microseconds=500_000)).replace(microsecond=0))


def _to_public(app: Celery, spec: TaskSpec, entry: RedBeatSchedulerEntry) -> ScheduleEntry:
    next_run_at = _next_run_at(app, entry) if entry.enabled else None
    return ScheduleEntry(
        name=spec.name,
        task_name=spec.celery_name,
        queue=spec.queue,
        enabled=bool(entry.enabled),
        schedule=_schedule_of(entry).as_dict(),
        description=spec.description,
        last_run_at=_utc(entry.last_run_at),
        next_run_at=_utc(next_run_at),
    )


def ensure_defaults(app: Celery) -> list[str]:
    """Create the catalog's beat entries that are missing from Redis; return the names created.

    Entries that exist keep their runtime state (enabled, schedule, last run). An entry whose task name
    no longer matches the catalog is corrected, and entries the catalog no longer schedules are
    deleted. Safe to call from several processes at once.
    """
    created: list[str] = []
    _remove_strays(app)
    for name, spec in scheduled_specs().items():
        assert spec.schedule is not None
        existing = _load(app, name)
        if existing is None:
            _new_entry(app, spec, spec.schedule, enabled=True).save()
            created.append(name)
        elif existing.task != spec.celery_name:
            existing.task = spec.celery_name
            existing.save()
    return created


def _remove_strays(app: Celery) -> list[str]:
    """Delete entries under the mallops prefix that the catalog no longer schedules (they would fire)."""
    conf = ensure_conf(app)
    client = get_redis(app)
    wanted = {_key(app, name) for name in scheduled_specs()}
    removed = []
    for key in client.zrange(conf.schedule_key, 0, -1):
        if key.startswith(conf.key_prefix) and key not in wanted:
            with client.pipeline() as pipe:
                pipe.zrem(conf.schedule_key, key)
                pipe.delete(key)
                pipe.execute()
            removed.append(key[len(conf.key_prefix) :])
    return removed


def list_entries(app: Celery) -> list[ScheduleEntry]:
    """Every catalog beat entry with its current state, in catalog order (defaults created if missing)."""
    specs = scheduled_specs()
    entries: list[ScheduleEntry] = []
    missing = False
    for name, spec in specs.items():
        entry = _load(app, name)
        if entry is None:
            missing = True
            break
        entries.append(_to_public(app, spec, entry))
    if missing:
        ensure_defaults(app)
        return list_entries(app)
    return entries


def get_entry(app: Celery, name: str) -> ScheduleEntry:
    """One entry by catalog short name; KeyError if the catalog has no beat entry of that name."""
    spec = scheduled_specs().get(name)
    if spec is None:
        raise KeyError(name)
    entry = _load(app, name)
    if entry is None:
        ensure_defaults(app)
        entry = _load(app, name)
        assert entry is not None
    return _to_public(app, spec, entry)


def update_entry(
    app: Celery, name: str, *, enabled: bool | None = None, schedule: Schedule | None = None
) -> ScheduleEntry:
    """Enable, disable or re-time the entry ``name``; the running beat picks it up on its next tick.

    KeyError for a name that has no beat entry in the catalog, ValueError for a bad schedule.
    Enabling a disabled entry or changing its schedule counts the next run from now, so neither
    makes beat fire a missed run at once.
    """
    spec = scheduled_specs().get(name)
    if spec is None:
        raise KeyError(name)
    if schedule is not None:
        schedule = validate_schedule(schedule)
    entry = _load(app, name)
    if entry is None:
        assert spec.schedule is not None
        entry = _new_entry(app, spec, spec.schedule, enabled=True)
    restart_clock = False
    if schedule is not None and schedule != _schedule_of(entry):
        entry.schedule = celery_schedule(schedule, app)
        entry.options = entry_options(spec, schedule)
        restart_clock = True
    if enabled is not None:
        restart_clock = restart_clock or (enabled and not entry.enabled)
        entry.enabled = enabled
    if restart_clock:
        entry.last_run_at = app.now()
    _save(app, entry)
    return _to_public(app, spec, entry)


def _save(app: Celery, entry: RedBeatSchedulerEntry) -> None:
    """Write definition, last run and score together (RedBeat's ``save`` keeps an existing meta)."""
    entry.save()
    entry.reschedule(entry.last_run_at)


def reset_entry(app: Celery, name: str) -> ScheduleEntry:
    """Put the entry ``name`` back to its catalog default (enabled, default schedule)."""
    spec = scheduled_specs().get(name)
    if spec is None:
        raise KeyError(name)
    assert spec.schedule is not None
    entry = _new_entry(app, spec, spec.schedule, enabled=True)
    _save(app, entry)
    return _to_public(app, spec, entry)


def delete_all(app: Celery) -> None:
    """Remove every mallops beat entry (tests, or a reset to defaults with beat stopped)."""
    client = get_redis(app)
    conf = ensure_conf(app)
    for name in scheduled_specs():
        RedBeatSchedulerEntry(name=name, app=app).delete()
    client.delete(conf.statics_key)


@dataclass(frozen=True)
class EntryTiming:
    """An enabled entry's last run and its period: seconds from that run to the next one due."""

    name: str
    last_run_at: dt.datetime
    period: float


def entry_timings(app: Celery) -> list[EntryTiming]:
    """The enabled catalog entries that beat keeps, with their last run and period (reads only; the
    monitor's ``mallops_schedule_*`` metrics). For a crontab the period is the gap after the last run."""
    timings = []
    for name in scheduled_specs():
        entry = _load(app, name)
        last = _utc(entry.last_run_at) if entry is not None and entry.enabled else None
        if entry is None or last is None:
            continue
        remaining = entry.schedule.remaining_estimate(entry.last_run_at)
        due = _utc(app.now() + remaining)
        assert due is not None
        timings.append(EntryTiming(name, last, max((due - last).total_seconds(), 0.0)))
    return timings


def _utc(value: dt.datetime | None) -> dt.datetime | None:
    if value is None:
        return None
    if value.tzinfo is None:
        return value.replace(tzinfo=dt.UTC)
    return value.astimezone(dt.UTC)


def _iso(value: dt.datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


__all__ = [
    "EntryTiming",
    "ScheduleEntry",
    "celery_schedule",
    "ensure_defaults",
    "entry_timings",
    "get_entry",
    "list_entries",
    "reset_entry",
    "schedule_from_dict",
    "scheduled_specs",
    "update_entry",
    "validate_schedule",
]
