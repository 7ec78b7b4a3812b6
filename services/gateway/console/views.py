"""What the console's pages show, read through the functions the API routes use (no query of its own):
statistics, hourly counts, history pages and task records of :mod:`services.gateway.task_history`, workers
and queues of :mod:`shared.workers`, the task as ``detail`` of :mod:`services.gateway.task_view` reads it;
and the small layout the templates need."""

from __future__ import annotations

import datetime as dt
import functools
import json
import time
from collections.abc import Mapping
from dataclasses import dataclass, replace
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import urlencode
from zoneinfo import ZoneInfo

from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool

from services.gateway import authz, workflow_runs
from services.gateway import task_history as history
from services.gateway.console import schema_form
from services.gateway.console.i18n import Translator
from services.gateway.console.permissions import can, task_scope
from services.gateway.problems import ProblemError
from services.gateway.routes import audit as audit_routes
from services.gateway.routes import catalog as catalog_routes
from services.gateway.routes import dead_letters as dead_letter_routes
from services.gateway.routes import files as file_routes
from services.gateway.routes import schedules as schedule_routes
from services.gateway.runtime import Runtime
from services.gateway.schemas import (
    ExportInfo,
    ScheduleInfo,
    ScheduleTiming,
    TaskDetail,
    WorkflowDetail,
    WorkflowStepView,
)
from services.gateway.task_view import TaskView as Visible
from services.gateway.task_view import detail
from shared import audit
from shared import workers as platform
from shared.catalog import CATALOG, WORKFLOWS, get_spec
from shared.contracts import FINAL_STATES as READY_STATES
from shared.contracts import HISTORY_STATES, WORKFLOW_FINAL_STATES, WORKFLOW_STATES, TaskState
from shared.tokens import Principal

PACKAGE_DIR = Path(__file__).parent
STATES: tuple[str, ...] = tuple(str(state) for state in HISTORY_STATES)
PAGE_SIZE = 25
RUNNING_STATES = (TaskState.RECEIVED, TaskState.STARTED, TaskState.PROGRESS)


def task_names() -> list[str]:
    return sorted(spec.name for spec in CATALOG.values())


def short_name(task_name: str) -> str:
    spec = get_spec(task_name)
    return spec.name if spec else task_name


@functools.cache
def _catalog_keys() -> dict[str, str]:
    """Each English description of the catalog (tasks, named workflows) -> its key in the catalog texts."""
    keys = {spec.description: f"task.{name}" for name, spec in CATALOG.items()}
    return keys | {spec.description: f"workflow.{name}" for name, spec in WORKFLOWS.items()}


def described(text: str | None, t: Translator) -> str:
    """A description as the page's language has it: the catalog's own (a schedule's default description,
    a task's, a workflow's) translated; any other text (typed by someone) as it is."""
    if not text:
        return ""
    key = _catalog_keys().get(text)
    return t.catalog_text(key, text) if key else text


# -- the overview ------------------------------------------------------------------------------------


def _block(window: Mapping[str, Any]) -> dict[str, int]:
    counts = window["counts"]
    return {
        "submitted": sum(int(n) for n in counts.values()),
        "succeeded": int(counts[TaskState.SUCCESS]),
        "failed": int(counts[TaskState.FAILURE]),
        "running": sum(int(counts[state]) for state in RUNNING_STATES),
        "retried": int(window["retried"]),
    }


# The overview's counts are kept this long per owner scope (the key is the scope itself, so a scope sees
# only its own counts). Read uncached they are one query over the covering index of migration 0010
# (about 10 ms at 14,000 rows a day, task_history.overview_counts); workers, queues and the monitor's lag
# are read live (a few ms).
OVERVIEW_CACHE_SECONDS = 10.0


async def overview(runtime: Runtime, principal: Principal) -> dict[str, Any]:
    """The last hour and day of the tasks the principal may see; workers, queues and the monitor's lag
    where it may see them."""
    data = dict(await _task_counts(runtime, *task_scope(principal)))
    settings = runtime.settings
    workers = None
    if can(principal, "workers.read") or can(principal, "queues.read"):
        workers = await run_in_threadpool(platform.list_workers, settings)
    if can(principal, "workers.read") and workers is not None:
        data["workers"] = {
            "online": sum(1 for w in workers if w["status"] == "online"),
            "offline": sum(1 for w in workers if w["status"] != "online"),
        }
    if can(principal, "queues.read"):
        data["queues"] = await run_in_threadpool(platform.queue_lengths, settings, workers)
    if can(principal, "monitor.read"):
        data["monitor"] = await run_in_threadpool(platform.monitor_lag, settings)
    return data


async def _task_counts(runtime: Runtime, owner: str | None, or_queue: str | None) -> dict[str, Any]:
    cache: dict[tuple[str | None, str | None], tuple[float, dict[str, Any]]]
    cache = runtime.console.setdefault("console_overview", {})
    hit = cache.get((owner, or_queue))
    if hit is not None and hit[0] > time.monotonic():
        return hit[1]
    now = dt.datetime.now(dt.UTC)

    def read_history() -> dict[str, Any]:
        with runtime.sessions() as session:
            return history.overview_counts(session, now=now, owner=owner, or_queue=or_queue)

    found = await run_in_threadpool(read_history)
    counts = {"hour": _block(found["hour"]), "day": _block(found["day"]), "hours": found["hours"]}
    if len(cache) > 1000:
        cache.clear()
    cache[(owner, or_queue)] = (time.monotonic() + OVERVIEW_CACHE_SECONDS, counts)
    return counts


@dataclass(frozen=True)
class Bar:
    x: float
    sent_y: float
    sent_height: float
    failed_y: float
    failed_height: float
    labelled: bool
    hour: dt.datetime
    sent: int
    failed: int


CHART_WIDTH, CHART_HEIGHT, CHART_TOP = 720.0, 160.0, 10.0


def chart(hours: list[dict[str, Any]]) -> dict[str, Any]:
    """Bars of the tasks sent (and failed) per hour, laid out for an inline SVG."""
    highest = max((h["sent"] for h in hours), default=0)
    peak = highest or 1
    step = CHART_WIDTH / max(len(hours), 1)
    usable = CHART_HEIGHT - CHART_TOP
    bars = []
    for i, h in enumerate(hours):
        sent_height = usable * h["sent"] / peak
        failed_height = usable * h["failed"] / peak
        bars.append(
            Bar(
                x=round(i * step + 2, 1),
                sent_y=round(CHART_HEIGHT - sent_height, 1),
                sent_height=round(sent_height, 1),
                failed_y=round(CHART_HEIGHT - failed_height, 1),
                failed_height=round(failed_height, 1),
                labelled=i % 3 == 0,
                hour=h["hour"],
                sent=h["sent"],
                failed=h["failed"],
            )
        )
    return {
        "bars": bars,
        "bar_width": round(max(step - 4, 1), 1),
        "width": CHART_WIDTH,
        "height": CHART_HEIGHT,
        "peak": highest,
        "total": sum(h["sent"] for h in hours),
    }


# -- the tasks ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TaskFilters:
    """The history's filters (``GET /api/v1/tasks/history``), from the page's query string."""

    task_name: str | None = None
    status: str | None = None
    owner: str | None = None
    since: dt.datetime | None = None
    until: dt.datetime | None = None
    cursor: str | None = None
    since_text: str = ""
    until_text: str = ""
    error: str | None = None

    @classmethod
    def from_query(cls, query: Mapping[str, str], t: Translator, principal: Principal) -> TaskFilters:
        errors = []
        name = (query.get("task_name") or "").strip() or None
        if name is not None and get_spec(name) is None:
            errors.append(t("tasks.unknown_task", name=name))
            name = None
        status = (query.get("status") or "").strip().upper() or None
        if status is not None and status not in STATES:
            errors.append(t("tasks.unknown_status", status=status))
            status = None
        owner = ((query.get("owner") or "").strip()[:100] or None) if can(principal, "tasks.read_all") else None
        since_text, until_text = (query.get("since") or "").strip(), (query.get("until") or "").strip()
        since, until = _local(since_text, t.tz), _local(until_text, t.tz)
        if since_text and since is None:
            errors.append(t("tasks.bad_time", value=since_text))
        if until_text and until is None:
            errors.append(t("tasks.bad_time", value=until_text))
        cursor = (query.get("cursor") or "").strip()[:500] or None
        return cls(name, status, owner, since, until, cursor, since_text, until_text, "; ".join(errors) or None)

    def query(self, **changes: str | None) -> str:
        """The query string of these filters (without the cursor unless given)."""
        values = {
            "task_name": self.task_name,
            "status": self.status,
            "owner": self.owner,
            "since": self.since_text or None,
            "until": self.until_text or None,
        } | changes
        return urlencode({key: value for key, value in values.items() if value})


def _local(text: str, tz: ZoneInfo) -> dt.datetime | None:
    """``2026-12-07T09:30`` (a datetime-local field) in the mall's timezone, as an aware datetime."""
    if not text:
        return None
    try:
        value = dt.datetime.fromisoformat(text)
    except ValueError:
        return None
    return value if value.tzinfo else value.replace(tzinfo=tz)


async def task_list(runtime: Runtime, principal: Principal, filters: TaskFilters) -> dict[str, Any]:
    """A page of the history, newest first, as ``GET /api/v1/tasks/history`` reads it."""

    owner, or_queue = task_scope(principal, filters.owner)

    def read() -> history.HistoryPage:
        with runtime.sessions() as session:
            return history.query_history(
                session,
                task_name=filters.task_name,
                status=filters.status,
                owner=owner,
                or_queue=or_queue,
                since=filters.since,
                until=filters.until,
                cursor=filters.cursor,
                limit=PAGE_SIZE,
            )

    try:
        page = await run_in_threadpool(read)
    except ValueError as exc:  # a cursor this page did not make
        return {"rows": [], "next_cursor": None, "error": str(exc)}
    rows = [row | {"short_name": short_name(row["task_name"])} for row in page.items]
    return {"rows": rows, "next_cursor": page.next_cursor, "error": None}


# -- a task ------------------------------------------------------------------------------------------


async def task_page(runtime: Runtime, task: Visible) -> dict[str, Any]:
    """The task as ``GET /api/v1/tasks/{id}`` shows it, with its history row's timeline."""
    info: TaskDetail = detail(task)

    def read_record() -> dict[str, Any] | None:
        with runtime.sessions() as session:
            return history.get_task_record(session, task.task_id)

    record = await run_in_threadpool(read_record) or {}
    traceback = (task.result or {}).get("traceback") if info.status == TaskState.FAILURE else None
    timeline = [
        ("sent", info.sent_at or record.get("sent_at")),
        ("received", record.get("received_at")),
        ("started", info.started_at or record.get("started_at")),
        ("finished", info.finished_at or record.get("finished_at")),
    ]
    return {
        "detail": info,
        "record": record,
        "timeline": timeline,
        "traceback": traceback,
        "finished": info.status in READY_STATES,
        "retryable": info.status in (TaskState.FAILURE, TaskState.REVOKED),
        "short_name": short_name(info.task_name),
    }


# -- failures and dead letters -----------------------------------------------------------------------

FAILED_STATES = ",".join((TaskState.FAILURE, TaskState.REVOKED))


def failure_filters(query: Mapping[str, str], t: Translator, principal: Principal) -> TaskFilters:
    """The tasks page's filters without the status: failures are FAILURE or REVOKED."""
    return replace(TaskFilters.from_query({**query, "status": ""}, t, principal), status=FAILED_STATES)


async def dead_letters(runtime: Runtime, principal: Principal) -> dict[str, Any]:
    """The newest dead letters, as ``GET /api/v1/dead-letters`` lists them (its caller may see them)."""
    try:
        page = await dead_letter_routes.list_dead_letters(principal, runtime, limit=PAGE_SIZE)
    except ProblemError as exc:
        return {"count": 0, "rows": [], "error": exc.detail}
    return {"count": page.count, "rows": page.results, "error": None}


# -- schedules ---------------------------------------------------------------------------------------

CRON_FIELDS = ("minute", "hour", "day_of_month", "month_of_year", "day_of_week")  # crontab's order


def timing_text(schedule: Mapping[str, Any], t: Translator) -> str:
    """``every 5 minutes`` in the page's language, or the crontab line (``0 3 * * *``, mall time)."""
    if schedule.get("every") is not None:
        return t("schedules.every", period=t.period(float(schedule["every"])))
    return " ".join(str(schedule.get(name, "*")) for name in CRON_FIELDS)


async def schedule_list(runtime: Runtime, principal: Principal) -> list[ScheduleInfo]:
    """Every beat entry, as ``GET /api/v1/schedules`` lists them, the next run first."""
    answer = await schedule_routes.list_schedules(principal, runtime)
    far = dt.datetime.max.replace(tzinfo=dt.UTC)
    return sorted(answer.results, key=lambda entry: (entry.next_run_at or far, entry.name))


@dataclass(frozen=True)
class ScheduleForm:
    """The add and edit form of a beat entry, as text (what was typed comes back when it is refused)."""

    name: str = ""
    task_name: str = ""
    every: str = ""
    minute: str = ""
    hour: str = ""
    day_of_month: str = ""
    month_of_year: str = ""
    day_of_week: str = ""
    kwargs: str = "{}"
    description: str = ""
    enabled: bool = True

    @classmethod
    def from_form(cls, form: Mapping[str, str], name: str | None = None) -> ScheduleForm:
        texts = {key: (form.get(key) or "").strip() for key in ("name", "task_name", "every", *CRON_FIELDS)}
        return cls(
            **(texts | ({"name": name} if name else {})),
            kwargs=(form.get("kwargs") or "").strip() or "{}",
            description=(form.get("description") or "").strip(),
            enabled=form.get("enabled") == "on",
        )

    @classmethod
    def from_entry(cls, entry: ScheduleInfo) -> ScheduleForm:
        every = entry.schedule.get("every")
        cron = {name: str(entry.schedule.get(name, "*")) for name in CRON_FIELDS} if every is None else {}
        return cls(
            name=entry.name,
            task_name=entry.task_name,
            every=f"{every:g}" if every is not None else "",
            kwargs=json.dumps(entry.kwargs, ensure_ascii=False),
            description=entry.description,
            enabled=entry.enabled,
            **cron,
        )

    def timing(self) -> ScheduleTiming:
        """``every`` seconds, else the crontab fields given (left empty: ``*``). ValueError if not valid."""
        if self.every:
            return ScheduleTiming(every=float(self.every))
        return ScheduleTiming(**{name: getattr(self, name) for name in CRON_FIELDS if getattr(self, name)})

    def kwargs_value(self) -> dict[str, Any]:
        value = json.loads(self.kwargs)
        if not isinstance(value, dict):
            raise ValueError('the arguments are a JSON object, e.g. {"message": "hello"}')
        return value


def refusal(exc: Exception) -> str:
    """A short reason for a refused form: pydantic's errors by field, the API's problem detail, or the text."""
    if isinstance(exc, ValidationError):
        return "; ".join(f"{'.'.join(str(part) for part in error['loc'])}: {error['msg']}" for error in exc.errors())
    if isinstance(exc, ProblemError):
        return exc.detail
    return str(exc)


# -- workers and queues ------------------------------------------------------------------------------


async def platform_state(runtime: Runtime, principal: Principal) -> dict[str, Any]:
    """Workers (online first), queue lengths and the monitor's lag, each where the principal may see it;
    as ``GET /api/v1/workers`` and ``GET /api/v1/queues`` read them."""
    settings = runtime.settings
    workers = await run_in_threadpool(platform.list_workers, settings)
    data: dict[str, Any] = {}
    if can(principal, "workers.read"):
        data["workers"] = sorted(workers, key=lambda w: (w["status"] != "online", w["service"] or "", w["hostname"]))
    if can(principal, "queues.read"):
        data["queues"] = await run_in_threadpool(platform.queue_lengths, settings, workers)
    if can(principal, "monitor.read"):
        data["monitor"] = await run_in_threadpool(platform.monitor_lag, settings)
    return data


# -- reports and exports -----------------------------------------------------------------------------

EXPORT_TASK = "export_data"


def export_form() -> list[schema_form.SchemaField]:
    """The export request's fields, from the catalog's JSON Schema of export_data's arguments."""
    entry = next(item for item in catalog_routes._catalog().results if item.task_name == EXPORT_TASK)
    return schema_form.fields(entry.args_schema)


def report_access(principal: Principal) -> authz.ReportAccess | None:
    """Which reports the principal reads, as the API decides (None: none)."""
    if can(principal, "reports.read"):
        return authz.ReportAccess(principal, None)
    if can(principal, "reports.read_finance"):
        return authz.ReportAccess(principal, authz.REPORT_KINDS_FINANCE)
    return None


async def files_page(runtime: Runtime, principal: Principal) -> dict[str, Any]:
    """The principal's exports and the reports it may read, as ``GET /api/v1/exports`` and
    ``GET /api/v1/reports`` list them."""
    access = report_access(principal)

    def read() -> dict[str, Any]:
        with runtime.sessions() as session:
            exports = file_routes.list_exports(principal, session, limit=PAGE_SIZE)
            reports = file_routes.list_reports(access, session, limit=PAGE_SIZE) if access else None
            sales = (
                {r.id: _sales(file_routes.get_report(r.id, access, session).data) for r in reports.results}
                if access and reports
                else {}
            )
        return {"exports": exports, "reports": reports, "sales": sales}

    return await run_in_threadpool(read)


def _sales(data: Mapping[str, Any]) -> Decimal | None:
    """A report's sales amount (CNY), shown as money in the page's language."""
    sales = data.get("sales")
    amount = sales.get("amount") if isinstance(sales, Mapping) else None
    return Decimal(str(amount)) if isinstance(amount, int | float | str) and str(amount) else None


async def export_state(runtime: Runtime, principal: Principal, task_id: str) -> ExportInfo | None:
    """The export row of a task (None until its worker created it, or if it is not the principal's)."""

    def read() -> ExportInfo | None:
        with runtime.sessions() as session:
            try:
                return file_routes.get_export(task_id, principal, session)
            except ProblemError:
                return None

    return await run_in_threadpool(read)


# -- the audit trail ---------------------------------------------------------------------------------

AUDIT_ACTIONS: tuple[str, ...] = tuple(
    sorted(value for name, value in vars(audit).items() if name.isupper() and isinstance(value, str) and "." in value)
)


@dataclass(frozen=True)
class AuditFilters:
    """``GET /api/v1/audit``'s filters, from the page's query string (times typed in the mall's zone)."""

    actor: str | None = None
    action: str | None = None
    since: dt.datetime | None = None
    until: dt.datetime | None = None
    cursor: str | None = None
    since_text: str = ""
    until_text: str = ""
    error: str | None = None

    @classmethod
    def from_query(cls, query: Mapping[str, str], t: Translator) -> AuditFilters:
        errors = []
        action = (query.get("action") or "").strip() or None
        if action is not None and action not in AUDIT_ACTIONS:
            errors.append(t("audit.unknown_action", action=action))
            action = None
        since_text, until_text = (query.get("since") or "").strip(), (query.get("until") or "").strip()
        since, until = _local(since_text, t.tz), _local(until_text, t.tz)
        for text, value in ((since_text, since), (until_text, until)):
            if text and value is None:
                errors.append(t("tasks.bad_time", value=text))
        return cls(
            actor=(query.get("actor") or "").strip()[:100] or None,
            action=action,
            since=since,
            until=until,
            cursor=(query.get("cursor") or "").strip()[:500] or None,
            since_text=since_text,
            until_text=until_text,
            error="; ".join(errors) or None,
        )

    def query(self, **changes: str | None) -> str:
        values = {
            "actor": self.actor,
            "action": self.action,
            "since": self.since_text or None,
            "until": self.until_text or None,
        } | changes
        return urlencode({key: value for key, value in values.items() if value})


async def audit_page(runtime: Runtime, principal: Principal, filters: AuditFilters) -> dict[str, Any]:
    """A page of the audit trail, newest first, as ``GET /api/v1/audit`` reads it."""

    def read() -> audit_routes.AuditPage:
        with runtime.sessions() as session:
            return audit_routes.audit_trail(
                principal,
                session,
                actor=filters.actor,
                action=filters.action,
                since=filters.since,
                until=filters.until,
                cursor=filters.cursor,
                limit=PAGE_SIZE,
            )

    try:
        page = await run_in_threadpool(read)
    except ProblemError as exc:  # a cursor this page did not make
        return {"rows": [], "next_cursor": None, "error": exc.detail}
    return {"rows": page.results, "next_cursor": page.next_cursor, "error": None}


# -- workflows ---------------------------------------------------------------------------------------

WORKFLOW_STATUSES: tuple[str, ...] = tuple(str(state) for state in WORKFLOW_STATES)


@dataclass(frozen=True)
class WorkflowFilters:
    """``GET /api/v1/workflows``'s filters, from the page's query string (times typed in the mall's zone)."""

    name: str | None = None
    status: str | None = None
    owner: str | None = None
    since: dt.datetime | None = None
    until: dt.datetime | None = None
    offset: int = 0
    since_text: str = ""
    until_text: str = ""
    error: str | None = None

    @classmethod
    def from_query(cls, query: Mapping[str, str], t: Translator, principal: Principal) -> WorkflowFilters:
        errors = []
        name = (query.get("name") or "").strip() or None
        if name is not None and name not in WORKFLOWS:
            errors.append(t("workflows.unknown_workflow", name=name))
            name = None
        status = (query.get("status") or "").strip().upper() or None
        if status is not None and status not in WORKFLOW_STATUSES:
            errors.append(t("tasks.unknown_status", status=status))
            status = None
        owner = ((query.get("owner") or "").strip()[:100] or None) if can(principal, "tasks.read_all") else None
        since_text, until_text = (query.get("since") or "").strip(), (query.get("until") or "").strip()
        since, until = _local(since_text, t.tz), _local(until_text, t.tz)
        for text, value in ((since_text, since), (until_text, until)):
            if text and value is None:
                errors.append(t("tasks.bad_time", value=text))
        offset_text = (query.get("offset") or "").strip()
        offset = min(int(offset_text), 10**6) if offset_text.isdigit() else 0
        return cls(name, status, owner, since, until, offset, since_text, until_text, "; ".join(errors) or None)

    def query(self, **changes: str | None) -> str:
        values = {
            "name": self.name,
            "status": self.status,
            "owner": self.owner,
            "since": self.since_text or None,
            "until": self.until_text or None,
        } | changes
        return urlencode({key: value for key, value in values.items() if value})


async def workflow_list(runtime: Runtime, principal: Principal, filters: WorkflowFilters) -> dict[str, Any]:
    """A page of workflows, newest first, as ``GET /api/v1/workflows`` reads it (with its total)."""
    total, rows = await run_in_threadpool(
        functools.partial(
            workflow_runs.listing,
            runtime,
            principal,
            statuses=[filters.status] if filters.status else None,
            name=filters.name,
            owner=filters.owner,
            since=filters.since,
            until=filters.until,
            limit=PAGE_SIZE,
            offset=filters.offset,
        )
    )
    newer = max(filters.offset - PAGE_SIZE, 0) if filters.offset else None
    older = filters.offset + PAGE_SIZE if filters.offset + PAGE_SIZE < total else None
    first = filters.offset + 1 if rows else 0
    return {
        "rows": rows,
        "total": total,
        "first": first,
        "last": filters.offset + len(rows),
        "newer": newer,
        "older": older,
    }


def workflow_stages(steps: list[WorkflowStepView]) -> list[list[WorkflowStepView]]:
    """The steps as they run: one stage per item of the definition, a parallel group being the steps that
    wait for the same steps (``after``), in order."""
    stages: list[list[WorkflowStepView]] = []
    for step in steps:
        if stages and stages[-1][0].after == step.after:
            stages[-1].append(step)
        else:
            stages.append([step])
    return stages


def workflow_page(principal: Principal, info: WorkflowDetail) -> dict[str, Any]:
    """The workflow as ``GET /api/v1/workflows/{id}`` shows it, its steps in stages, and what the principal
    may do with it (retry needs the named workflow's own permission too, as the API decides)."""
    needed = workflow_runs.permission_of(info.name)
    retryable = info.status in (TaskState.FAILURE, TaskState.REVOKED)
    finished = info.status in WORKFLOW_FINAL_STATES
    return {
        "detail": info,
        "stages": workflow_stages(info.steps),
        "finished": finished,
        "may_retry": retryable and can(principal, "workflow.retry") and (needed is None or principal.has(needed)),
        "may_revoke": not finished and can(principal, "workflow.revoke"),
    }
