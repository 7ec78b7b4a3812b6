"""Request and response models of the HTTP API (field names follow the replaced system's API)."""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any, Literal, Self

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, JsonValue, StrictBool, StrictInt, model_validator

from shared.catalog import CATALOG, get_spec
from shared.contracts import FINAL_STATES, TaskState
from shared.schedules import NAME_PATTERN as SCHEDULE_NAME

MAX_BATCH = 10_000
MAX_DELAY = 10 * 366 * 86400  # seconds: ten years
TASK_NAMES: list[JsonValue] = [*sorted(CATALOG)]
CRON_FIELD = r"^[0-9*][0-9*,/-]*$"
CRON_DOW = r"^[0-9a-zA-Z*][0-9a-zA-Z*,/-]*$"
STATUS_DESCRIPTION = (
    "SCHEDULED (a one-off run waiting in the database until its eta), PENDING (accepted, nothing heard of "
    "it yet), SENT (published by beat or another task), RECEIVED, STARTED, PROGRESS, RETRY, SUCCESS, FAILURE, "
    "REVOKED or REJECTED (dropped by a worker); REQUEUED is reserved. Final: " + ", ".join(sorted(FINAL_STATES)) + "."
)


def _utc(value: dt.datetime) -> dt.datetime:
    """Every time the API returns is UTC (serialised with ``Z``): a naive time is UTC (SQLite returns
    them so), an aware one is converted (Celery stores ``date_done`` in MALLOPS_TIMEZONE)."""
    return value.replace(tzinfo=dt.UTC) if value.tzinfo is None else value.astimezone(dt.UTC)


UtcDateTime = Annotated[dt.datetime, AfterValidator(_utc)]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class CatalogNamed(BaseModel):
    """One naming in every answer: ``task_name`` the short catalog name, ``celery_name`` the Celery name
    beside it (what Prometheus labels and worker logs use). Either may come in; both go out."""

    task_name: str = Field(description="The catalog name, e.g. generate_daily_report.")
    celery_name: str | None = Field(
        default=None, description="The Celery name, e.g. mallops.reports.generate_daily_report."
    )

    @model_validator(mode="after")
    def _catalog_names(self) -> Self:
        spec = get_spec(self.task_name)
        if spec is not None:
            self.task_name, self.celery_name = spec.name, spec.celery_name
        return self


# -- submission --------------------------------------------------------------------------------


class TaskSubmission(Strict):
    task_name: str = Field(
        min_length=1,
        max_length=200,
        description="A task name from GET /api/v1/catalog (another name is answered 404).",
        examples=["test_task"],
        json_schema_extra={"enum": TASK_NAMES},
    )
    args: list[Any] = Field(
        default_factory=list, max_length=50, description="Positional arguments, mapped in order onto the task's fields."
    )
    kwargs: dict[str, Any] = Field(
        default_factory=dict, description="Keyword arguments (see the catalog schema).", examples=[{"message": "hello"}]
    )
    countdown: float | None = Field(
        default=None,
        ge=0,
        le=MAX_DELAY,
        description="Run no earlier than this many seconds from now. Beyond the broker's visibility timeout "
        "(MALLOPS_BROKER_VISIBILITY_TIMEOUT) the run waits in the database with status SCHEDULED until due.",
    )
    eta: dt.datetime | None = Field(
        default=None,
        description="Run no earlier than this time (ISO 8601 with a timezone); as for countdown, a time "
        "further ahead than the visibility timeout waits in the database (SCHEDULED).",
    )
    priority: StrictInt | None = Field(default=None, ge=0, le=9, description="0 (first) to 9 (last).")


class BatchSubmission(Strict):
    tasks: list[TaskSubmission] = Field(
        min_length=1,
        max_length=MAX_BATCH,
        description="Submissions, validated all together: one bad item "
        "refuses the whole batch and nothing is enqueued.",
    )


class TaskAccepted(CatalogNamed):
    task_id: str
    status: Literal[TaskState.PENDING, TaskState.SCHEDULED] = Field(
        default=TaskState.PENDING,
        description="PENDING: in the broker; SCHEDULED: waiting in the database until its eta.",
    )
    queue: str
    retry_of: str | None = Field(default=None, description="For a retry: the task it repeats.")


class BatchAccepted(BaseModel):
    count: int
    results: list[TaskAccepted]


# -- reading tasks -----------------------------------------------------------------------------


class Progress(BaseModel):
    current: int
    total: int


class TaskErrorInfo(BaseModel):
    type: str = Field(description="The exception's type, e.g. RequestedFailure.")
    message: str


class TaskSummary(CatalogNamed):
    task_id: str
    status: TaskState = Field(description=STATUS_DESCRIPTION)
    queue: str | None = None
    owner: str | None = None
    sent_at: UtcDateTime | None = None
    finished_at: UtcDateTime | None = None
    eta: UtcDateTime | None = Field(default=None, description="For a SCHEDULED task: when it is to run.")


class TaskList(BaseModel):
    count: int = Field(description="How many tasks match (among the recent tasks the gateway keeps).")
    results: list[TaskSummary]


class TaskDetail(CatalogNamed, Strict):
    task_id: str
    status: TaskState = Field(description=STATUS_DESCRIPTION)
    result: Any = Field(default=None, description="The return value, once SUCCESS.")
    error: TaskErrorInfo | None = Field(default=None, description="Why it failed, for FAILURE or REJECTED (or RETRY).")
    traceback: str | None = Field(default=None, description="Where it failed, for FAILURE (the end, capped).")
    progress: Progress | None = Field(default=None, description="While running, if the task reports it.")
    queue: str | None = None
    worker: str | None = None
    retries: int = 0
    args: list[Any] = Field(default_factory=list)
    kwargs: dict[str, Any] = Field(default_factory=dict)
    owner: str | None = None
    retry_of: str | None = None
    workflow_id: str | None = Field(default=None, description="The workflow the task is a step of.")
    workflow_step: str | None = Field(default=None, description="Its step in that workflow.")
    sent_at: UtcDateTime | None = None
    started_at: UtcDateTime | None = None
    finished_at: UtcDateTime | None = None
    duration: float | None = Field(default=None, description="Run time in seconds, once finished.")
    eta: UtcDateTime | None = Field(default=None, description="For a deferred one-off run: when it is to run.")


class RevokeRequest(Strict):
    terminate: StrictBool = Field(default=False, description="Also kill the task if it is running (SIGTERM).")


class RevokeAccepted(BaseModel):
    task_id: str
    revoked: bool = True
    terminate: bool


# -- catalog -----------------------------------------------------------------------------------


class CatalogEntry(BaseModel):
    task_name: str
    celery_name: str
    service: str
    queue: str
    description: str
    schedule: dict[str, Any] | None = Field(default=None, description="Default beat schedule, if any.")
    schedule_text: str | None = None
    args_schema: dict[str, Any] = Field(description="JSON Schema of the task's arguments.")


class Catalog(BaseModel):
    count: int
    results: list[CatalogEntry]
    workflows: list[WorkflowCatalogEntry] = Field(default_factory=list, description="The named workflows.")


# -- health ------------------------------------------------------------------------------------


class Health(BaseModel):
    status: Literal["ok"] = "ok"


class Readiness(BaseModel):
    status: Literal["ok", "unavailable"]
    checks: dict[str, str] = Field(description="Each dependency: 'ok' or why it is not reachable.")


# -- history and statistics --------------------------------------------------------------------


class HistoryItem(CatalogNamed):
    task_id: str
    queue: str | None = None
    status: TaskState | None = Field(
        default=None, description="The task's state; `state` is the same, kept as an alias."
    )
    state: TaskState = Field(description="The task's state in the history (never PENDING: a row starts at SENT).")
    request_id: str | None = Field(default=None, description="X-Request-ID of the request that submitted it.")
    args_summary: str | None = Field(default=None, description="The arguments as JSON (when the message had them).")
    arguments: dict[str, Any] | None = Field(
        default=None, description='{"args": [...], "kwargs": {...}} as sent (capped: "truncated": true).'
    )
    retry_of: str | None = Field(default=None, description="For a retry: the task it repeats.")
    workflow_id: str | None = Field(default=None, description="The workflow the task is a step of.")
    workflow_step: str | None = Field(default=None, description="Its step in that workflow.")
    owner: str | None = None
    worker: str | None = None
    retries: int = 0
    exception: str | None = None
    error: str | None = None
    traceback: str | None = Field(default=None, description="The final failure's traceback (its end, capped).")
    result_summary: str | None = None
    sent_at: UtcDateTime | None = None
    received_at: UtcDateTime | None = None
    started_at: UtcDateTime | None = None
    finished_at: UtcDateTime | None = None
    runtime: float | None = None
    queue_wait: float | None = None

    @model_validator(mode="after")
    def _status_beside_state(self) -> Self:
        self.status = self.status or self.state
        return self


class HistoryPage(BaseModel):
    count: int = Field(description="Items on this page.")
    results: list[HistoryItem]
    next_cursor: str | None = Field(default=None, description="Pass as `cursor` for the next (older) page.")


class Percentiles(BaseModel):
    p50: float | None = None
    p95: float | None = None
    p99: float | None = None


class StatsBlock(BaseModel):
    celery_name: str | None = Field(default=None, description="Per task: its Celery name.")
    total: int
    counts: dict[str, int]
    succeeded: int
    failed: int
    retried: int = Field(description="Tasks retried at least once.")
    success_rate: float | None
    throughput_per_second: float
    throughput_per_minute: float
    runtime: Percentiles
    queue_wait: Percentiles


class TaskStats(BaseModel):
    since: UtcDateTime
    until: UtcDateTime
    window_seconds: float
    overall: StatsBlock
    tasks: dict[str, StatsBlock]


# -- workers, queues, schedules ----------------------------------------------------------------


class WorkerInfo(BaseModel):
    hostname: str
    status: Literal["online", "offline"]
    service: str | None = None
    pid: int | None = None
    queues: list[str] = Field(default_factory=list)
    concurrency: int | None = None
    active: int = 0
    processed: int = 0
    last_heartbeat: UtcDateTime | None = None
    seconds_since_heartbeat: float | None = None


class WorkerList(BaseModel):
    count: int
    online: int
    results: list[WorkerInfo]


class QueueInfo(BaseModel):
    name: str
    pending: int = Field(description="Messages waiting in the broker (priority sub-queues included).")
    consumers: int = Field(description="Online workers consuming the queue.")


class QueueList(BaseModel):
    count: int
    results: list[QueueInfo]


class ScheduleInfo(CatalogNamed, Strict):
    name: str
    queue: str
    enabled: bool
    schedule: dict[str, Any]
    schedule_text: str
    args: list[Any] = Field(default_factory=list)
    kwargs: dict[str, Any] = Field(default_factory=dict)
    description: str
    last_run_at: UtcDateTime | None = Field(
        default=None, description="UTC, e.g. 2026-12-07T19:00:00Z; null if it never ran."
    )
    next_run_at: UtcDateTime | None = Field(default=None, description="UTC with Z; null when disabled.")
    next_run_local: str | None = Field(default=None, description="next_run_at in MALLOPS_TIMEZONE, with its offset.")


class ScheduleList(BaseModel):
    count: int
    results: list[ScheduleInfo]


class ScheduleTiming(Strict):
    every: float | None = Field(
        default=None, ge=1, le=31 * 24 * 3600, description="Seconds between runs (instead of crontab fields)."
    )
    minute: str | None = Field(default=None, max_length=100, pattern=CRON_FIELD)
    hour: str | None = Field(default=None, max_length=100, pattern=CRON_FIELD)
    day_of_week: str | None = Field(default=None, max_length=100, pattern=CRON_DOW, description="Sunday = 0.")
    day_of_month: str | None = Field(default=None, max_length=100, pattern=CRON_FIELD)
    month_of_year: str | None = Field(default=None, max_length=100, pattern=CRON_FIELD)


class SchedulePatch(Strict):
    enabled: StrictBool | None = Field(default=None, description="Turn the entry on or off.")
    schedule: ScheduleTiming | None = Field(
        default=None,
        description="New timing: `every` seconds or crontab fields (in MALLOPS_TIMEZONE; omitted fields are '*').",
    )
    args: list[Any] | None = Field(default=None, max_length=50, description="New positional arguments.")
    kwargs: dict[str, Any] | None = Field(default=None, description="New keyword arguments (see the catalog schema).")
    description: str | None = Field(default=None, max_length=500)


class ScheduleCreate(Strict):
    name: str = Field(pattern=SCHEDULE_NAME, description="The entry's own name.", examples=["remind-tenants"])
    task_name: str = Field(
        min_length=1, max_length=200, description="A task name from GET /api/v1/catalog.", examples=["test_task"]
    )
    schedule: ScheduleTiming = Field(
        description="`every` seconds or crontab fields (in MALLOPS_TIMEZONE; omitted fields are '*')."
    )
    args: list[Any] = Field(default_factory=list, max_length=50, description="Positional arguments.")
    kwargs: dict[str, Any] = Field(default_factory=dict, description="Keyword arguments (see the catalog schema).")
    enabled: StrictBool = True
    description: str | None = Field(default=None, max_length=500, description="Default: the task's description.")


# -- reports and exports -----------------------------------------------------------------------


class ReportSummary(BaseModel):
    id: int
    kind: str
    period_start: UtcDateTime
    period_end: UtcDateTime
    task_id: str | None = None
    created_at: UtcDateTime
    formats: list[Literal["csv", "html"]] = Field(description="Files available at /reports/{id}/file.")


class ReportList(BaseModel):
    count: int = Field(description="Reports matching the filter.")
    results: list[ReportSummary]


class ReportDetail(ReportSummary):
    data: dict[str, Any]


class ExportInfo(BaseModel):
    task_id: str
    owner: str | None = None
    dataset: str
    format: str
    filters: dict[str, Any]
    status: str = Field(description="running, done or failed.")
    file_name: str | None = None
    rows: int | None = None
    size_bytes: int | None = None
    sha256: str | None = None
    created_at: UtcDateTime
    expires_at: UtcDateTime | None = None
    download_url: str | None = Field(default=None, description="Where to fetch the file once done.")


# -- workflows ---------------------------------------------------------------------------------


class WorkflowSubmission(BaseModel):
    """A named workflow (``name`` and its ``kwargs``) or an ad-hoc one (``steps``)."""

    model_config = ConfigDict(extra="forbid")

    name: str | None = Field(default=None, description="A named workflow from GET /api/v1/catalog `workflows`.")
    kwargs: dict[str, Any] = Field(default_factory=dict, description="The named workflow's arguments.")
    steps: list[dict[str, Any]] | None = Field(
        default=None,
        max_length=100,
        description="Ad hoc, in order: a step `{task_name, kwargs, name?}` or `{parallel: [step, ...]}`; each item "
        "starts when every step of the item before it succeeded. An argument whose schema has `from_previous` "
        "may be left out and is taken from the previous step's result.",
    )


class WorkflowStepView(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    task_name: str
    kwargs: dict[str, Any]
    after: list[str] = Field(description="The steps it waits for.")
    state: str = Field(description="PENDING (not yet sent), SENT, STARTED, SUCCESS, FAILURE or REVOKED.")
    task_id: str | None = Field(description="The task of its current attempt.")
    attempts: int
    error: str | None = None
    result: Any = None
    started_at: dt.datetime | None = None
    finished_at: dt.datetime | None = None


class WorkflowProgress(BaseModel):
    done: int = Field(description="Steps succeeded.")
    total: int


class WorkflowSummary(BaseModel):
    workflow_id: str
    name: str | None = Field(description="The named workflow, or null for an ad-hoc one.")
    owner: str
    status: str = Field(description="PENDING, STARTED, SUCCESS, FAILURE or REVOKED.")
    progress: WorkflowProgress
    failed_step: str | None = None
    reason: str | None = None
    retries: int = 0
    created_at: dt.datetime
    started_at: dt.datetime | None = None
    finished_at: dt.datetime | None = None
    duration: float | None = Field(default=None, description="Seconds from submission to the end.")


class WorkflowDetail(WorkflowSummary):
    model_config = ConfigDict(extra="forbid")

    kwargs: dict[str, Any]
    steps: list[WorkflowStepView]


class WorkflowList(BaseModel):
    count: int = Field(description="Workflows on this page (at most `limit`).")
    total: int = Field(default=0, description="Workflows that match the filters, on every page.")
    results: list[WorkflowSummary]


class WorkflowCatalogEntry(BaseModel):
    name: str
    description: str
    args_schema: dict[str, Any]
    steps: list[dict[str, Any]] = Field(description="The steps it runs (for its default arguments).")
    schedule: dict[str, Any] | None = None
    schedule_text: str | None = None


class ExportList(BaseModel):
    count: int = Field(description="Exports the token may read.")
    results: list[ExportInfo]
