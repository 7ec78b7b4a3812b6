"""The task catalog: one declarative registry of every public mallops task.

Workers register their task bodies under ``celery_name``; the gateway validates submissions against
``args_model`` and routes them to ``queue``; beat reads ``schedule``; the CLI and docs list it all.
Nothing here imports Celery task code.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, EmailStr, Field, ValidationError, model_validator

from shared import permissions

QUEUES: tuple[str, ...] = ("finance", "reports", "email", "default")
DEFAULT_QUEUE = "default"


# an argument's JSON Schema key: in a workflow, the argument may be left out and is then taken from this key
# of the previous step's result (e.g. send_report_email's report_id from generate_monthly_report's)
FROM_PREVIOUS = "from_previous"


class TaskArgs(BaseModel):
    """Base of every argument model: unknown fields are refused, values are JSON-friendly."""

    model_config = ConfigDict(extra="forbid", frozen=True)


# -- finance -----------------------------------------------------------------------------------


class CheckPendingBillsArgs(TaskArgs):
    as_of: dt.date | None = Field(default=None, description="Treat this day as today (default: today).")


class SendBillRemindersArgs(TaskArgs):
    bill_ids: list[int] | None = Field(default=None, max_length=10_000, description="Bills to remind.")
    days_overdue: int | None = Field(
        default=None, ge=0, le=3650, description="Remind every overdue bill at least this many days late."
    )

    @model_validator(mode="after")
    def _one_selector(self) -> SendBillRemindersArgs:
        if self.bill_ids is None and self.days_overdue is None:
            return self.model_copy(update={"days_overdue": 0})
        return self


class MonthArgs(TaskArgs):
    year: int | None = Field(default=None, ge=2000, le=2100)
    month: int | None = Field(default=None, ge=1, le=12)

    @model_validator(mode="after")
    def _both_or_neither(self) -> MonthArgs:
        if (self.year is None) != (self.month is None):
            raise ValueError("give both year and month, or neither for the previous month")
        return self


# -- reports -----------------------------------------------------------------------------------


class HourlyReportArgs(TaskArgs):
    hour: dt.datetime | None = Field(default=None, description="Any time inside the hour (default: last hour).")


class DailyReportArgs(TaskArgs):
    date: dt.date | None = Field(default=None, description="The day (default: yesterday).")


class WeeklyReportArgs(TaskArgs):
    week_start: dt.date | None = Field(default=None, description="Any day of the week (default: last week).")


class ExportFilters(TaskArgs):
    date_from: dt.date | None = None
    date_to: dt.date | None = None
    store_id: int | None = Field(default=None, ge=1)
    store_ids: list[Annotated[int, Field(ge=1)]] | None = Field(
        default=None,
        min_length=1,
        max_length=1000,
        description="Only these stores. For a token created with `stores`, the gateway sets it to the token's "
        "stores (or to the one store_id asked for, if it is one of them).",
    )
    status: Literal["pending", "paid", "overdue"] | None = None


class ExportDataArgs(TaskArgs):
    dataset: Literal["bills", "payments", "revenue", "stores", "sales"]
    format: Literal["csv", "xlsx"] = "csv"
    filters: ExportFilters = Field(default_factory=ExportFilters)


class ProcessAccessLogsArgs(TaskArgs):
    batch_size: int = Field(default=1000, ge=1, le=50_000)


class AccessStatisticsArgs(TaskArgs):
    date: dt.date | None = Field(default=None, description="The day (default: yesterday).")


class RetentionArgs(TaskArgs):
    days: int = Field(default=90, ge=1, le=36_500)


class NotificationRetentionArgs(TaskArgs):
    days: int = Field(default=30, ge=1, le=36_500)


# -- notifier ----------------------------------------------------------------------------------


class SendNotificationEmailArgs(TaskArgs):
    email: EmailStr
    subject: str = Field(min_length=1, max_length=200)
    message: str = Field(min_length=1, max_length=20_000)
    language: Literal["zh_CN", "en"] = "zh_CN"
    notification_id: int | None = Field(default=None, ge=1, description="Row to mark sent (set by reminders).")


class SendReportEmailArgs(TaskArgs):
    report_id: int | None = Field(
        default=None,
        ge=1,
        description="The stored report to send. In a workflow, the previous step's report when not given.",
        json_schema_extra={FROM_PREVIOUS: "report_id"},
    )


# -- maintenance -------------------------------------------------------------------------------


class BackupDatabaseArgs(TaskArgs):
    keep: int | None = Field(default=None, ge=1, le=365, description="Backups to keep (default: setting).")


class CleanupCacheArgs(TaskArgs):
    prefix: str = Field(default="mallops:cache:", pattern=r"^mallops:[A-Za-z0-9_:.-]*$", max_length=200)


class RunWorkflowArgs(TaskArgs):
    name: str = Field(description="A named workflow (GET /api/v1/catalog `workflows`).")
    kwargs: dict[str, Any] = Field(default_factory=dict, description="Its arguments.")

    @model_validator(mode="after")
    def _known(self) -> RunWorkflowArgs:
        spec = WORKFLOWS.get(self.name)
        if spec is None:
            raise ValueError(f"there is no workflow named {self.name!r}")
        spec.args_model.model_validate(self.kwargs)
        return self


class NoArgs(TaskArgs):
    pass


class TestTaskArgs(TaskArgs):
    message: str = Field(default="test", max_length=1000)
    fail: bool = False


class LongRunningTaskArgs(TaskArgs):
    steps: int = Field(default=10, ge=1, le=10_000)
    step_seconds: float = Field(default=1.0, ge=0, le=60)


# -- schedules ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Schedule:
    """A default beat entry: either ``every`` seconds or a crontab in the configured timezone."""

    every: float | None = None
    minute: str = "*"
    hour: str = "*"
    day_of_week: str = "*"  # Celery counts from Sunday = 0, so Monday is 1
    day_of_month: str = "*"
    month_of_year: str = "*"

    def describe(self) -> str:
        if self.every is not None:
            return f"every {self.every:g}s"
        return f"{self.minute} {self.hour} {self.day_of_month} {self.month_of_year} {self.day_of_week}"

    def as_dict(self) -> dict[str, Any]:
        if self.every is not None:
            return {"every": self.every}
        return {
            "minute": self.minute,
            "hour": self.hour,
            "day_of_week": self.day_of_week,
            "day_of_month": self.day_of_month,
            "month_of_year": self.month_of_year,
        }


# -- the catalog -------------------------------------------------------------------------------


@dataclass(frozen=True)
class TaskSpec:
    name: str
    service: str
    queue: str
    args_model: type[TaskArgs]
    description: str
    permission: str  # what submitting it needs (shared.permissions); required, so no task is left unguarded
    schedule: Schedule | None = None
    # a failure of a critical task alerts at once (CriticalTaskFailed in deploy/prometheus/alerts.yml)
    critical: bool = False

    @property
    def celery_name(self) -> str:
        return f"mallops.{self.service}.{self.name}"

    def validate(self, args: Sequence[Any] = (), kwargs: Mapping[str, Any] | None = None) -> TaskArgs:
        """Map positional ``args`` onto the model's fields in order, merge ``kwargs`` and validate.

        Raises :class:`pydantic.ValidationError` for bad values and :class:`TaskArgumentError` for
        positional arguments that do not fit.
        """
        return validate_arguments(self.args_model, args, kwargs or {})

    def json_schema(self) -> dict[str, Any]:
        return self.args_model.model_json_schema()


class TaskArgumentError(ValueError):
    """Positional arguments that cannot be mapped onto a task's fields."""


def validate_arguments(model: type[TaskArgs], args: Sequence[Any], kwargs: Mapping[str, Any]) -> TaskArgs:
    fields = list(model.model_fields)
    if len(args) > len(fields):
        raise TaskArgumentError(f"takes at most {len(fields)} positional arguments ({len(args)} given)")
    data: dict[str, Any] = dict(zip(fields, args, strict=False))
    for key, value in kwargs.items():
        if key in data:
            raise TaskArgumentError(f"got multiple values for argument {key!r}")
        data[key] = value
    return model.model_validate(data)


def _spec(
    name: str,
    service: str,
    queue: str,
    model: type[TaskArgs],
    description: str,
    permission: str,
    schedule: Schedule | None = None,
    critical: bool = False,
) -> TaskSpec:
    if permission not in permissions.PERMISSIONS:
        raise ValueError(f"task {name!r} declares an unknown permission {permission!r}")
    return TaskSpec(name, service, queue, model, description, permission, schedule, critical)


CATALOG: Mapping[str, TaskSpec] = {
    spec.name: spec
    for spec in (
        # finance
        _spec(
            "check_pending_bills",
            "finance",
            "finance",
            CheckPendingBillsArgs,
            "Mark bills past their due date as overdue and enqueue reminders for them.",
            permissions.SUBMIT_FINANCE,
            Schedule(minute="*"),
        ),
        _spec(
            "send_bill_reminders",
            "finance",
            "finance",
            SendBillRemindersArgs,
            "Send at most one reminder e-mail per overdue bill per day.",
            permissions.SUBMIT_FINANCE,
        ),
        _spec(
            "calculate_monthly_revenue",
            "finance",
            "finance",
            MonthArgs,
            "Revenue by store and by category for a month, from payments; stored and cached.",
            permissions.SUBMIT_FINANCE,
            None,  # scheduled as the first step of month_end_close (WORKFLOWS), on the 1st at 00:30
            critical=True,
        ),
        # reports
        _spec(
            "generate_hourly_report",
            "reports",
            "reports",
            HourlyReportArgs,
            "Sales and billing figures for one hour, stored as a report with CSV and HTML.",
            permissions.SUBMIT_REPORTS,
            Schedule(minute="0"),
        ),
        _spec(
            "generate_daily_report",
            "reports",
            "reports",
            DailyReportArgs,
            "Sales and billing figures for one day, stored as a report with CSV and HTML.",
            permissions.SUBMIT_REPORTS,
            Schedule(minute="0", hour="6"),  # yesterday
        ),
        _spec(
            "generate_weekly_report",
            "reports",
            "reports",
            WeeklyReportArgs,
            "Sales and billing figures for one week (Monday to Sunday).",
            permissions.SUBMIT_REPORTS,
            Schedule(minute="0", hour="10", day_of_week="1"),
        ),
        _spec(
            "generate_monthly_report",
            "reports",
            "reports",
            MonthArgs,
            "Sales and billing figures for one calendar month.",
            permissions.SUBMIT_REPORTS,
            None,  # scheduled as the second step of month_end_close (WORKFLOWS)
            critical=True,
        ),
        _spec(
            "export_data",
            "reports",
            "reports",
            ExportDataArgs,
            "Export a dataset to CSV or XLSX in the export store, for download through the gateway.",
            permissions.SUBMIT_EXPORTS,
        ),
        _spec(
            "process_access_logs",
            "reports",
            "reports",
            ProcessAccessLogsArgs,
            "Move the gateway's buffered access log into the access_logs table.",
            permissions.SUBMIT_ACCESS_LOGS,
            Schedule(every=30.0),
        ),
        _spec(
            "generate_access_statistics",
            "reports",
            "reports",
            AccessStatisticsArgs,
            "Daily request statistics per path, user and status.",
            permissions.SUBMIT_ACCESS_LOGS,
            Schedule(minute="0", hour="1"),
        ),
        _spec(
            "cleanup_old_access_records",
            "reports",
            "reports",
            RetentionArgs,
            "Delete access records older than the retention period.",
            permissions.SUBMIT_MAINTENANCE,
            Schedule(minute="0", hour="2"),  # 90 days, as the replaced system kept them
        ),
        # notifier
        _spec(
            "send_notification_email",
            "notifier",
            "email",
            SendNotificationEmailArgs,
            "Send one notification e-mail over SMTP, in Chinese or English.",
            permissions.SUBMIT_EMAIL,
        ),
        _spec(
            "send_report_email",
            "notifier",
            "email",
            SendReportEmailArgs,
            "E-mail a stored report, its CSV and HTML attached, to the addresses in MALLOPS_MANAGEMENT_EMAILS.",
            permissions.SUBMIT_REPORTS,
        ),
        _spec(
            "cleanup_old_notifications",
            "notifier",
            "email",
            NotificationRetentionArgs,
            "Delete notifications older than the retention period.",
            permissions.SUBMIT_MAINTENANCE,
            Schedule(minute="0", hour="2"),
        ),
        # maintenance
        _spec(
            "backup_database",
            "maintenance",
            "default",
            BackupDatabaseArgs,
            "Back up the database (pg_dump or SQLite online backup), keeping the last N.",
            permissions.SUBMIT_MAINTENANCE,
            Schedule(minute="0", hour="3"),
            critical=True,
        ),
        _spec(
            "cleanup_cache",
            "maintenance",
            "default",
            CleanupCacheArgs,
            "Delete mallops cache keys by prefix, with SCAN.",
            permissions.SUBMIT_MAINTENANCE,
        ),
        _spec(
            "cleanup_expired_data",
            "maintenance",
            "default",
            NoArgs,
            "Delete expired exports, reports and old task history, in batches.",
            permissions.SUBMIT_MAINTENANCE,
            Schedule(minute="0", hour="4"),
        ),
        _spec(
            "run_workflow",
            "maintenance",
            "default",
            RunWorkflowArgs,
            "Start a named workflow (how beat schedules one: the entry month_end_close runs this task).",
            permissions.SUBMIT_MAINTENANCE,
        ),
        _spec(
            "test_task",
            "maintenance",
            "default",
            TestTaskArgs,
            "Echo a message: 'Task received: <message>'. Fails on request.",
            permissions.SUBMIT_DIAGNOSTICS,
        ),
        _spec(
            "long_running_task",
            "maintenance",
            "default",
            LongRunningTaskArgs,
            "Sleep in steps, reporting PROGRESS {current, total} after each.",
            permissions.SUBMIT_DIAGNOSTICS,
        ),
    )
}


def from_previous_fields(spec: TaskSpec) -> dict[str, str]:
    """The arguments of ``spec`` that a workflow step may take from the previous step's result: argument ->
    key of that result (the fields marked :data:`FROM_PREVIOUS` in the model's JSON Schema)."""
    found: dict[str, str] = {}
    for name, info in spec.args_model.model_fields.items():
        extra = info.json_schema_extra
        if isinstance(extra, dict) and isinstance(extra.get(FROM_PREVIOUS), str):
            found[name] = str(extra[FROM_PREVIOUS])
    return found


# -- named workflows ---------------------------------------------------------------------------


class MonthEndCloseArgs(MonthArgs):
    """year and month of the close (both, or neither for the previous month in the mall's timezone)."""


class NightlyReportsArgs(TaskArgs):
    date: dt.date | None = Field(default=None, description="The day (default: yesterday in the mall's timezone).")


def _previous_month(today: dt.date) -> tuple[int, int]:
    first = today.replace(day=1) - dt.timedelta(days=1)
    return first.year, first.month


def _month_end_close(args: TaskArgs, today: dt.date) -> list[dict[str, Any]]:
    assert isinstance(args, MonthEndCloseArgs)
    year, month = (args.year, args.month) if args.year and args.month else _previous_month(today)
    period = {"year": year, "month": month}
    return [
        {"name": "revenue", "task_name": "calculate_monthly_revenue", "kwargs": period},
        {"name": "report", "task_name": "generate_monthly_report", "kwargs": period},
        {"name": "email", "task_name": "send_report_email", "kwargs": {}},
    ]


def _nightly_reports(args: TaskArgs, today: dt.date) -> list[dict[str, Any]]:
    assert isinstance(args, NightlyReportsArgs)
    day = (args.date or today - dt.timedelta(days=1)).isoformat()
    return [
        {
            "parallel": [
                {"name": "daily_report", "task_name": "generate_daily_report", "kwargs": {"date": day}},
                {"name": "access_statistics", "task_name": "generate_access_statistics", "kwargs": {"date": day}},
            ]
        },
        {"name": "cleanup", "task_name": "cleanup_expired_data", "kwargs": {}},
    ]


@dataclass(frozen=True)
class WorkflowSpec:
    """A named workflow: its arguments' model, and the steps it runs for them (the same shape as an ad-hoc
    workflow's ``steps``: a step ``{name, task_name, kwargs}`` or ``{"parallel": [step, ...]}``, in order).
    ``build`` resolves defaults (the previous month, yesterday) once, when the workflow is submitted, so a
    retry days later runs for the same period."""

    name: str
    args_model: type[TaskArgs]
    description: str
    permission: str  # what running it needs besides workflows.run (the steps' own are not asked for)
    build: Callable[[TaskArgs, dt.date], list[dict[str, Any]]]
    schedule: Schedule | None = None

    def json_schema(self) -> dict[str, Any]:
        return self.args_model.model_json_schema()

    def steps(self, kwargs: Mapping[str, Any], today: dt.date) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """The validated arguments (defaults resolved) and the step definitions; ValidationError if they
        do not fit."""
        validated = self.args_model.model_validate(dict(kwargs))
        return validated.model_dump(mode="json"), self.build(validated, today)


WORKFLOWS: Mapping[str, WorkflowSpec] = {
    spec.name: spec
    for spec in (
        WorkflowSpec(
            "month_end_close",
            MonthEndCloseArgs,
            "A month's close: calculate_monthly_revenue, then generate_monthly_report for the same month, then "
            "send_report_email to MALLOPS_MANAGEMENT_EMAILS.",
            permissions.SUBMIT_FINANCE,
            _month_end_close,
            Schedule(minute="30", hour="0", day_of_month="1"),  # last month, on the 1st at 00:30
        ),
        WorkflowSpec(
            "nightly_reports",
            NightlyReportsArgs,
            "The daily report and the access statistics of a day in parallel, then cleanup_expired_data.",
            permissions.SUBMIT_MAINTENANCE,
            _nightly_reports,
        ),
    )
}


SERVICES: tuple[str, ...] = ("finance", "reports", "notifier", "maintenance")
SERVICE_QUEUES: Mapping[str, str] = {
    "finance": "finance",
    "reports": "reports",
    "notifier": "email",
    "maintenance": "default",
}
BY_CELERY_NAME: Mapping[str, TaskSpec] = {spec.celery_name: spec for spec in CATALOG.values()}


def get_spec(name: str) -> TaskSpec | None:
    """The spec for a short name or a Celery task name, or None."""
    return CATALOG.get(name) or BY_CELERY_NAME.get(name)


def tasks_for_service(service: str) -> list[TaskSpec]:
    return [spec for spec in CATALOG.values() if spec.service == service]


def task_routes() -> dict[str, dict[str, str]]:
    """Celery ``task_routes``: every catalog task to its queue."""
    return {spec.celery_name: {"queue": spec.queue} for spec in CATALOG.values()}


__all__ = [
    "CATALOG",
    "DEFAULT_QUEUE",
    "QUEUES",
    "WORKFLOWS",
    "Schedule",
    "TaskArgs",
    "TaskArgumentError",
    "TaskSpec",
    "ValidationError",
    "WorkflowSpec",
    "get_spec",
    "task_routes",
    "tasks_for_service",
]
