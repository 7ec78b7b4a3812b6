"""The beat schedule: named entries for any catalog task, kept in Redis by celery-redbeat, editable at runtime.

An entry has a name of its own (``^[a-z0-9][a-z0-9_.-]{0,63}$``), a catalog task, a timing (``every``
seconds or crontab fields read in ``MALLOPS_TIMEZONE``), arguments validated against the task's schema,
a description and an enabled flag. Its Redis key is ``<redbeat_key_prefix><name>`` (for example
``mallops:redbeat:backup_database``): RedBeat's ``definition`` and ``meta`` fields, plus a ``mallops``
field with what mallops shows (task short name, arguments as given, description, when the clock last
restarted and the last real run before that). The running beat reads the entries on every tick, so
every change here reaches it within ``MALLOPS_BEAT_MAX_INTERVAL`` and survives its restart.

Default entries come from the catalog. :func:`ensure_defaults` seeds each default once and records
its name in the set ``<prefix>:seeded``; a default deleted later is not created again (the name in
that set is its tombstone) until someone creates an entry of that name. Defaults added to the catalog
by a new release are seeded at the next start. Entries whose task left the catalog are deleted.

``day_of_week`` counts from Sunday = 0, as Celery's crontab does.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from celery import Celery
from celery.schedules import crontab
from celery.schedules import schedule as interval_schedule
from redbeat.schedulers import RedBeatSchedulerEntry, ensure_conf, get_redis

from shared.catalog import CATALOG, WORKFLOWS, Schedule, TaskSpec, get_spec
from shared.contracts import OWNER_HEADER

MIN_INTERVAL = 1.0
MAX_INTERVAL = 31 * 24 * 3600.0
CRON_FIELDS = ("minute", "hour", "day_of_week", "day_of_month", "month_of_year")
BEAT_OWNER = "beat"  # the owner header of tasks that beat publishes
FREQUENT = 300.0  # seconds: entries firing at least this often get an expiry (see entry_options)
NAME_PATTERN = r"^[a-z0-9][a-z0-9_.-]{0,63}$"
META_FIELD = "mallops"  # the field of an entry's Redis hash that holds what mallops shows
SEEDED_SUFFIX = ":seeded"  # <prefix>:seeded: the default entries created once (tombstones when deleted)
DESCRIPTION_MAX = 500


class EntryExists(Exception):
    """An entry of that name exists already."""


class UnknownTask(LookupError):
    """The entry names a task that is not in the catalog."""


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
    args: list[Any] = field(default_factory=list)
    kwargs: dict[str, Any] = field(default_factory=dict)
    timezone: dt.tzinfo = dt.UTC

    @property
    def next_run_local(self) -> dt.datetime | None:
        return self.next_run_at.astimezone(self.timezone) if self.next_run_at is not None else None

    def as_dict(self) -> dict[str, Any]:
        """JSON-friendly: ``*_at`` in UTC with ``Z``, ``next_run_local`` in the mall's zone."""
        local = self.next_run_local
        return {
            "name": self.name,
            "task_name": self.task_name,
            "queue": self.queue,
            "enabled": self.enabled,
            "schedule": dict(self.schedule),
            "schedule_text": Schedule(**self.schedule).describe(),
            "args": list(self.args),
            "kwargs": dict(self.kwargs),
            "description": self.description,
            "last_run_at": utc_iso(self.last_run_at),
            "next_run_at": utc_iso(self.next_run_at),
            "next_run_local": local.isoformat() if local is not None else None,
        }


def scheduled_specs() -> dict[str, TaskSpec]:
    """The catalog tasks that have a default beat entry, by short name (the entry's name)."""
    return {name: spec for name, spec in CATALOG.items() if spec.schedule is not None}


# the default entries of named workflows: entry name -> (its schedule, the run_workflow arguments)
def workflow_defaults() -> dict[str, tuple[Schedule, dict[str, Any]]]:
    return {
        name: (spec.schedule, {"name": name, "kwargs": {}})
        for name, spec in WORKFLOWS.items()
        if spec.schedule is not None
    }


def default_names() -> list[str]:
    """Every default entry: the catalog tasks' and the named workflows'."""
    return [*scheduled_specs(), *workflow_defaults()]


def _default_entry(app: Celery, name: str) -> tuple[RedBeatSchedulerEntry, _Meta]:
    """The default entry ``name`` as the catalog declares it (a named workflow's runs ``run_workflow``)."""
    flows = workflow_defaults()
    if name in flows:
        schedule, kwargs = flows[name]
        description = WORKFLOWS[name].description
        return _new_entry(app, name, CATALOG["run_workflow"], schedule, True, kwargs=kwargs, description=description)
    spec = scheduled_specs()[name]
    assert spec.schedule is not None
    return _new_entry(app, name, spec, spec.schedule, enabled=True)


# defaults of earlier releases that a workflow replaced: removed at beat's start when still as seeded
# (generate_monthly_report at 00:00 and calculate_monthly_revenue at 00:30 on the 1st are month_end_close now)
RETIRED_DEFAULTS: Mapping[str, Schedule] = {
    "generate_monthly_report": Schedule(minute="0", hour="0", day_of_month="1"),
    "calculate_monthly_revenue": Schedule(minute="30", hour="0", day_of_month="1"),
}


def validate_name(name: str) -> str:
    if not isinstance(name, str) or not re.fullmatch(NAME_PATTERN, name):
        raise ValueError(f"an entry name matches {NAME_PATTERN} (lower-case letters, digits, '_', '.', '-')")
    return name


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


@dataclass
class _Meta:
    """The ``mallops`` field of an entry: what RedBeat does not keep."""

    task: str
    args: list[Any]
    kwargs: dict[str, Any]
    description: str
    counted_from: dt.datetime | None = None  # the run clock restarted here (creation, re-timing, enabling)
    ran_at: dt.datetime | None = None  # the last real run before that restart

    def to_json(self) -> str:
        data = {
            "task": self.task,
            "args": self.args,
            "kwargs": self.kwargs,
            "description": self.description,
            "counted_from": _iso(self.counted_from),
            "ran_at": _iso(self.ran_at),
        }
        return json.dumps(data, separators=(",", ":"))

    @classmethod
    def from_json(cls, raw: str | None, entry: RedBeatSchedulerEntry) -> _Meta:
        """The stored field, or (an entry written before mallops kept one) what the definition says."""
        spec = get_spec(str(entry.task))
        data: dict[str, Any] = {}
        if raw:
            try:
                loaded = json.loads(raw)
                data = loaded if isinstance(loaded, dict) else {}
            except ValueError:
                data = {}
        return cls(
            task=str(data.get("task") or (spec.name if spec else entry.task)),
            args=list(data.get("args") or []),
            kwargs=dict(data.get("kwargs") or {}),
            description=str(data.get("description") or (spec.description if spec else "")),
            counted_from=_parse(data.get("counted_from")),
            ran_at=_parse(data.get("ran_at")),
        )


def _conf_prefix(app: Celery) -> str:
    return str(ensure_conf(app).key_prefix)


def _key(app: Celery, name: str) -> str:
    ensure_conf(app)
    return str(RedBeatSchedulerEntry.generate_key(app, name))


def _seeded_key(app: Celery) -> str:
    return _conf_prefix(app) + SEEDED_SUFFIX


def _load(app: Celery, name: str) -> tuple[RedBeatSchedulerEntry, _Meta] | None:
    key = _key(app, name)
    try:
        entry = RedBeatSchedulerEntry.from_key(key, app=app)
    except KeyError:
        return None
    return entry, _Meta.from_json(get_redis(app).hget(key, META_FIELD), entry)


def _entry_names(app: Celery) -> list[str]:
    """Every entry name under the mallops prefix (disabled entries stay in RedBeat's sorted set)."""
    conf = ensure_conf(app)
    prefix = conf.key_prefix
    keys = get_redis(app).zrange(conf.schedule_key, 0, -1)
    return sorted(k[len(prefix) :] for k in keys if k.startswith(prefix) and not k.startswith(prefix + ":"))


def entry_options(spec: TaskSpec, schedule: Schedule) -> dict[str, Any]:
    """How beat publishes the entry: its queue, the ``beat`` owner and, for entries that fire every few
    minutes or more often, an expiry of two periods: when workers are down, a backlog of stale runs
    is skipped (the next run does the same work) instead of being run one after another."""
    options: dict[str, Any] = {"queue": spec.queue, "headers": {OWNER_HEADER: BEAT_OWNER}}
    if schedule.every is not None and schedule.every <= FREQUENT:
        options["expires"] = 2 * schedule.every
    elif schedule.every is None and schedule.minute == "*" and schedule.hour == "*":
        options["expires"] = 120.0  # every minute
    return options


def task_payload(spec: TaskSpec, args: Sequence[Any], kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """The keyword arguments beat publishes: ``args`` and ``kwargs`` validated against the task's schema
    (pydantic's ValidationError, a ValueError, or TaskArgumentError when they do not fit)."""
    return spec.validate(list(args), dict(kwargs)).model_dump(mode="json")


def _new_entry(
    app: Celery,
    name: str,
    spec: TaskSpec,
    schedule: Schedule,
    enabled: bool,
    args: Sequence[Any] = (),
    kwargs: Mapping[str, Any] | None = None,
    description: str | None = None,
) -> tuple[RedBeatSchedulerEntry, _Meta]:
    kwargs = dict(kwargs or {})
    entry = RedBeatSchedulerEntry(
        name=name,
        task=spec.celery_name,
        schedule=celery_schedule(schedule, app),
        args=(),
        kwargs=task_payload(spec, args, kwargs),
        options=entry_options(spec, schedule),
        enabled=enabled,
        app=app,
    )
    # counted from now: a new entry fires at its next scheduled time, not at once; it has not run yet
    entry.last_run_at = app.now()
    meta = _Meta(spec.name, list(args), kwargs, description or spec.description, counted_from=entry.last_run_at)
    return entry, meta


def _last_run(entry: RedBeatSchedulerEntry, meta: _Meta) -> dt.datetime | None:
    """When the entry really last ran: RedBeat's last_run_at unless that is only the restarted clock."""
    last = _utc(entry.last_run_at)
    counted_from = _utc(meta.counted_from)
    if last is not None and (counted_from is None or last > counted_from):
        return last
    return _utc(meta.ran_at)


def _restart_clock(app: Celery, entry: RedBeatSchedulerEntry, meta: _Meta) -> None:
    meta.ran_at = _last_run(entry, meta)
    entry.last_run_at = app.now()
    meta.counted_from = entry.last_run_at


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


def _to_public(app: Celery, entry: RedBeatSchedulerEntry, meta: _Meta) -> ScheduleEntry:
    spec = get_spec(meta.task)
    return ScheduleEntry(
        name=str(entry.name),
        task_name=spec.name if spec else meta.task,
        queue=spec.queue if spec else "",
        enabled=bool(entry.enabled),
        schedule=_schedule_of(entry).as_dict(),
        description=meta.description,
        args=list(meta.args),
        kwargs=dict(meta.kwargs),
        last_run_at=_last_run(entry, meta),
        next_run_at=_next_run_at(app, entry) if entry.enabled else None,
        timezone=app.timezone,
    )


def _save(app: Celery, entry: RedBeatSchedulerEntry, meta: _Meta) -> None:
    """Write definition, mallops' field, last run and score (RedBeat's ``save`` keeps an existing meta)."""
    entry.save()
    get_redis(app).hset(entry.key, META_FIELD, meta.to_json())
    entry.reschedule(entry.last_run_at)


def ensure_defaults(app: Celery) -> list[str]:
    """Seed the catalog's default entries that were never seeded; return the names created.

    A default is created once: its name then stays in ``<prefix>:seeded``, so one deleted later is not
    created again. Entries that exist keep their runtime state; an entry whose task left the catalog is
    deleted (it would fire a task no worker knows). Safe to call from several processes at once.
    """
    _remove_strays(app)
    client = get_redis(app)
    seeded_key = _seeded_key(app)
    seeded = set(client.smembers(seeded_key))
    created: list[str] = []
    for name in default_names():
        if name in seeded:
            continue
        if _load(app, name) is None:
            _save(app, *_default_entry(app, name))
            created.append(name)
        client.sadd(seeded_key, name)
    _retire(app, seeded)
    return created


def _retire(app: Celery, seeded: set[str]) -> None:
    """Delete the retired defaults that are still as they were seeded (same task, schedule, no arguments)."""
    for name, schedule in RETIRED_DEFAULTS.items():
        loaded = _load(app, name) if name in seeded else None
        if loaded is None:
            continue
        entry, meta = loaded
        if meta.task == name and not meta.args and not meta.kwargs and _schedule_of(entry) == schedule:
            delete_entry(app, name)


def _remove_strays(app: Celery) -> list[str]:
    """Delete entries under the mallops prefix whose task is not in the catalog (or that are broken)."""
    conf = ensure_conf(app)
    client = get_redis(app)
    removed = []
    for name in _entry_names(app):
        key = _key(app, name)
        definition = client.hget(key, "definition")
        task = None
        if definition:
            try:
                task = json.loads(definition).get("task")
            except (ValueError, AttributeError):
                task = None
        if task is None or get_spec(str(task)) is None:
            with client.pipeline() as pipe:
                pipe.zrem(conf.schedule_key, key)
                pipe.delete(key)
                pipe.execute()
            removed.append(name)
    return removed


def _seed_if_new(app: Celery) -> None:
    """Seed the defaults on a Redis that never had them (before beat's first start, or after data loss)."""
    if not get_redis(app).exists(_seeded_key(app)):
        ensure_defaults(app)


def list_entries(app: Celery) -> list[ScheduleEntry]:
    """Every entry with its current state, by name (the defaults are seeded first on a new Redis)."""
    _seed_if_new(app)
    entries = []
    for name in _entry_names(app):
        loaded = _load(app, name)
        if loaded is not None:
            entries.append(_to_public(app, *loaded))
    return entries


def get_entry(app: Celery, name: str) -> ScheduleEntry:
    """One entry by name; KeyError if there is none."""
    _seed_if_new(app)
    loaded = _load(app, name)
    if loaded is None:
        raise KeyError(name)
    return _to_public(app, *loaded)


def create_entry(
    app: Celery,
    name: str,
    task_name: str,
    schedule: Schedule,
    *,
    args: Sequence[Any] = (),
    kwargs: Mapping[str, Any] | None = None,
    enabled: bool = True,
    description: str | None = None,
) -> ScheduleEntry:
    """A new entry; beat fires it at its next scheduled time (within ``MALLOPS_BEAT_MAX_INTERVAL``).

    ValueError for a bad name, schedule or arguments (pydantic's ValidationError is one),
    :class:`UnknownTask` for a task not in the catalog, :class:`EntryExists` for a name in use.
    """
    validate_name(name)
    _seed_if_new(app)  # else a default of that name would be seeded over it later
    spec = get_spec(task_name)
    if spec is None:
        raise UnknownTask(task_name)
    schedule = validate_schedule(schedule)
    entry, meta = _new_entry(app, name, spec, schedule, enabled, args, kwargs, _description(description))
    # claim the name: the first writer of the mallops field wins, a second create is refused
    if not get_redis(app).hsetnx(entry.key, META_FIELD, meta.to_json()) and _load(app, name) is not None:
        raise EntryExists(name)
    _save(app, entry, meta)
    return _to_public(app, entry, meta)


def update_entry(
    app: Celery,
    name: str,
    *,
    enabled: bool | None = None,
    schedule: Schedule | None = None,
    args: Sequence[Any] | None = None,
    kwargs: Mapping[str, Any] | None = None,
    description: str | None = None,
) -> ScheduleEntry:
    """Change the entry ``name``; the running beat picks it up on its next tick.

    KeyError for a name that has no entry, ValueError for a bad schedule or arguments. ``args`` and
    ``kwargs`` each replace what the entry had. Enabling a disabled entry or changing its schedule
    counts the next run from now, so neither makes beat fire a missed run at once.
    """
    if schedule is not None:
        schedule = validate_schedule(schedule)
    _seed_if_new(app)
    loaded = _load(app, name)
    if loaded is None:
        raise KeyError(name)
    entry, meta = loaded
    spec = get_spec(meta.task)
    if spec is None:
        raise KeyError(name)
    if args is not None or kwargs is not None:
        new_args = list(args) if args is not None else meta.args
        new_kwargs = dict(kwargs) if kwargs is not None else meta.kwargs
        entry.kwargs = task_payload(spec, new_args, new_kwargs)
        entry.args = ()
        meta.args, meta.kwargs = new_args, new_kwargs
    if description is not None:
        meta.description = _description(description) or spec.description
    restart_clock = False
    current = _schedule_of(entry)
    if schedule is not None and schedule != current:
        entry.schedule = celery_schedule(schedule, app)
        restart_clock = True
    entry.options = entry_options(spec, schedule or current)
    if enabled is not None:
        restart_clock = restart_clock or (enabled and not entry.enabled)
        entry.enabled = enabled
    if restart_clock:
        _restart_clock(app, entry, meta)
    _save(app, entry, meta)
    return _to_public(app, entry, meta)


def delete_entry(app: Celery, name: str) -> None:
    """Delete the entry ``name`` (KeyError if there is none). A deleted default stays deleted."""
    _seed_if_new(app)
    if _load(app, name) is None:
        raise KeyError(name)
    RedBeatSchedulerEntry(name=name, app=app).delete()


def reset_entry(app: Celery, name: str) -> ScheduleEntry:
    """Put the default entry ``name`` back to its catalog state (enabled, default schedule, no arguments)."""
    if name not in default_names():
        raise KeyError(name)
    entry, meta = _default_entry(app, name)
    _save(app, entry, meta)
    return _to_public(app, entry, meta)


def delete_all(app: Celery) -> None:
    """Remove every mallops beat entry and the seeding record (tests, or a reset with beat stopped)."""
    client = get_redis(app)
    conf = ensure_conf(app)
    for name in _entry_names(app):
        RedBeatSchedulerEntry(name=name, app=app).delete()
    client.delete(conf.statics_key, _seeded_key(app))


def _description(value: str | None) -> str | None:
    if value is None:
        return None
    value = value.strip()
    if len(value) > DESCRIPTION_MAX:
        raise ValueError(f"a description has at most {DESCRIPTION_MAX} characters")
    return value


def utc_iso(value: dt.datetime | None) -> str | None:
    """ISO 8601 in UTC with ``Z`` (``2026-12-07T19:00:00Z``), or None."""
    value = _utc(value)
    return value.isoformat().replace("+00:00", "Z") if value is not None else None


@dataclass(frozen=True)
class EntryTiming:
    """An enabled entry's last run and its period: seconds from that run to the next one due."""

    name: str
    last_run_at: dt.datetime
    period: float


def entry_timings(app: Celery) -> list[EntryTiming]:
    """Every enabled entry with its last run and period (reads only; the monitor's ``mallops_schedule_*``
    metrics). The last run is RedBeat's clock: the last send, or when the clock restarted (creation,
    re-timing, enabling), which is what the next run is counted from. For a crontab the period is the gap
    from there to the next run due."""
    timings = []
    for name in _entry_names(app):
        loaded = _load(app, name)
        if loaded is None or not loaded[0].enabled or loaded[0].last_run_at is None:
            continue
        entry = loaded[0]
        last = _utc(entry.last_run_at)
        due = _utc(app.now() + entry.schedule.remaining_estimate(entry.last_run_at))
        assert last is not None
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


def _parse(value: Any) -> dt.datetime | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        return _utc(dt.datetime.fromisoformat(value))
    except ValueError:
        return None


__all__ = [
    "EntryExists",
    "EntryTiming",
    "ScheduleEntry",
    "UnknownTask",
    "celery_schedule",
    "create_entry",
    "delete_entry",
    "ensure_defaults",
    "entry_timings",
    "get_entry",
    "list_entries",
    "reset_entry",
    "schedule_from_dict",
    "scheduled_specs",
    "update_entry",
    "utc_iso",
    "validate_name",
    "validate_schedule",
]
