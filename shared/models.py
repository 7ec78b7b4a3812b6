"""SQLAlchemy 2.0 models of the mall's domain and of mallops' own records.

The schema is created by the Alembic migrations in ``shared/migrations``; the same migrations run on
SQLite and PostgreSQL, so only portable types are used (JSON, Numeric, timezone-aware DateTime).
"""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from typing import Any, ClassVar

from sqlalchemy import (
    JSON,
    BigInteger,
    Date,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    Numeric,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship
from sqlalchemy.types import TypeDecorator

from shared.contracts import DeferredState, TaskState

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

Money = Numeric(14, 2)
# SQLite only auto-increments INTEGER PRIMARY KEY; PostgreSQL gets BIGINT for the big tables.
BigId = BigInteger().with_variant(Integer(), "sqlite")


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class UTCDateTime(TypeDecorator[dt.datetime]):
    """A timestamp that is always timezone-aware UTC in Python, on SQLite (which stores it naive)
    as on PostgreSQL. Naive values given to it are taken as UTC."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: dt.datetime | None, dialect: Dialect) -> dt.datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=dt.UTC)
        return value.astimezone(dt.UTC)

    def process_result_value(self, value: dt.datetime | None, dialect: Dialect) -> dt.datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=dt.UTC)
        return value.astimezone(dt.UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map: ClassVar[dict[Any, Any]] = {dt.datetime: UTCDateTime(), dict[str, Any]: JSON}


# -- the mall ----------------------------------------------------------------------------------


class Store(Base):
    __tablename__ = "stores"

    id: Mapped[int] = mapped_column(primary_key=True)
    code: Mapped[str] = mapped_column(String(16), unique=True)
    name: Mapped[str] = mapped_column(String(200))
    category: Mapped[str] = mapped_column(String(50), index=True)
    floor: Mapped[int] = mapped_column(Integer)
    area_sqm: Mapped[Decimal] = mapped_column(Numeric(10, 2))
    opened_on: Mapped[dt.date] = mapped_column(Date)

    leases: Mapped[list[Lease]] = relationship(back_populates="store")


class Tenant(Base):
    __tablename__ = "tenants"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    contact_name: Mapped[str] = mapped_column(String(100))
    email: Mapped[str] = mapped_column(String(254))
    phone: Mapped[str] = mapped_column(String(32))
    language: Mapped[str] = mapped_column(String(8), default="zh_CN")  # zh_CN | en

    leases: Mapped[list[Lease]] = relationship(back_populates="tenant")


class Lease(Base):
    __tablename__ = "leases"

    id: Mapped[int] = mapped_column(primary_key=True)
    store_id: Mapped[int] = mapped_column(ForeignKey("stores.id"), index=True)
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id"), index=True)
    start_date: Mapped[dt.date] = mapped_column(Date)
    end_date: Mapped[dt.date] = mapped_column(Date)
    monthly_rent: Mapped[Decimal] = mapped_column(Money)

    store: Mapped[Store] = relationship(back_populates="leases")
    tenant: Mapped[Tenant] = relationship(back_populates="leases")


class Bill(Base):
    __tablename__ = "bills"
    __table_args__ = (
        UniqueConstraint("lease_id", "period", "kind", name="uq_bills_lease_period_kind"),
        Index("ix_bills_status_due", "status", "due_date"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    lease_id: Mapped[int] = mapped_column(ForeignKey("leases.id"), index=True)
    store_id: Mapped[int] = mapped_column(ForeignKey("stores.id"), index=True)
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id"), index=True)
    period: Mapped[str] = mapped_column(String(7))  # YYYY-MM
    kind: Mapped[str] = mapped_column(String(20), default="rent")  # rent | management | utilities
    amount: Mapped[Decimal] = mapped_column(Money)
    issued_on: Mapped[dt.date] = mapped_column(Date)
    due_date: Mapped[dt.date] = mapped_column(Date)
    status: Mapped[str] = mapped_column(String(10), default="pending")  # pending | paid | overdue
    overdue_since: Mapped[dt.datetime | None]
    paid_at: Mapped[dt.datetime | None]


class Payment(Base):
    __tablename__ = "payments"

    id: Mapped[int] = mapped_column(primary_key=True)
    bill_id: Mapped[int] = mapped_column(ForeignKey("bills.id"), index=True)
    store_id: Mapped[int] = mapped_column(ForeignKey("stores.id"), index=True)
    amount: Mapped[Decimal] = mapped_column(Money)
    paid_at: Mapped[dt.datetime] = mapped_column(index=True)
    method: Mapped[str] = mapped_column(String(20))  # bank_transfer | card | cash


class Sale(Base):
    """Daily sales of one store (the mall's POS feed, summed per day)."""

    __tablename__ = "sales"
    __table_args__ = (UniqueConstraint("store_id", "day", name="uq_sales_store_day"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    store_id: Mapped[int] = mapped_column(ForeignKey("stores.id"))
    day: Mapped[dt.date] = mapped_column(Date, index=True)
    amount: Mapped[Decimal] = mapped_column(Money)
    transactions: Mapped[int] = mapped_column(Integer)


# -- what the platform produces -----------------------------------------------------------------


class Notification(Base):
    __tablename__ = "notifications"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    dedupe_key: Mapped[str | None] = mapped_column(String(200), unique=True)
    kind: Mapped[str] = mapped_column(String(30), default="manual")  # bill_reminder | manual | ...
    tenant_id: Mapped[int | None] = mapped_column(ForeignKey("tenants.id"), index=True)
    bill_id: Mapped[int | None] = mapped_column(ForeignKey("bills.id"), index=True)
    email: Mapped[str] = mapped_column(String(254))
    subject: Mapped[str] = mapped_column(String(200))
    message: Mapped[str] = mapped_column(Text)
    language: Mapped[str] = mapped_column(String(8), default="zh_CN")
    status: Mapped[str] = mapped_column(String(10), default="queued")  # queued | sent | failed
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow, index=True)
    sent_at: Mapped[dt.datetime | None]


class MonthlyRevenue(Base):
    __tablename__ = "monthly_revenue"
    __table_args__ = (UniqueConstraint("period", "store_id", name="uq_monthly_revenue_period_store"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    period: Mapped[str] = mapped_column(String(7), index=True)  # YYYY-MM
    store_id: Mapped[int] = mapped_column(ForeignKey("stores.id"))
    category: Mapped[str] = mapped_column(String(50))
    amount: Mapped[Decimal] = mapped_column(Money)
    payments: Mapped[int] = mapped_column(Integer)
    computed_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class Report(Base):
    __tablename__ = "reports"
    __table_args__ = (UniqueConstraint("kind", "period_start", name="uq_reports_kind_period_start"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    kind: Mapped[str] = mapped_column(String(20))  # hourly | daily | weekly | monthly | access
    period_start: Mapped[dt.datetime]
    period_end: Mapped[dt.datetime]
    data: Mapped[dict[str, Any]]
    # relative to settings.reports_dir (shared.files.resolve_under), e.g. "daily/daily-2026-11-14.csv"
    csv_path: Mapped[str | None] = mapped_column(String(500))
    html_path: Mapped[str | None] = mapped_column(String(500))
    task_id: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow, index=True)


class Export(Base):
    __tablename__ = "exports"

    id: Mapped[int] = mapped_column(primary_key=True)
    task_id: Mapped[str] = mapped_column(String(64), unique=True)
    owner: Mapped[str | None] = mapped_column(String(100), index=True)
    dataset: Mapped[str] = mapped_column(String(20))
    format: Mapped[str] = mapped_column(String(8))
    filters: Mapped[dict[str, Any]]
    status: Mapped[str] = mapped_column(String(10), default="running")  # running | done | failed
    file_name: Mapped[str | None] = mapped_column(String(200))  # under settings.exports_dir; set when done
    rows: Mapped[int | None] = mapped_column(Integer)
    size_bytes: Mapped[int | None] = mapped_column(BigInteger)
    sha256: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[dt.datetime | None] = mapped_column(index=True)


class AccessLog(Base):
    __tablename__ = "access_logs"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    request_id: Mapped[str] = mapped_column(String(64), unique=True)
    ts: Mapped[dt.datetime] = mapped_column(index=True)
    method: Mapped[str] = mapped_column(String(10))
    path: Mapped[str] = mapped_column(String(300))
    status: Mapped[int] = mapped_column(Integer)
    duration_ms: Mapped[float] = mapped_column(Float)
    principal: Mapped[str | None] = mapped_column(String(100))
    client_ip: Mapped[str | None] = mapped_column(String(64))


class AccessStatistic(Base):
    __tablename__ = "access_statistics"
    __table_args__ = (UniqueConstraint("day", "path", "principal", "status", name="uq_access_statistics_key"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    day: Mapped[dt.date] = mapped_column(Date, index=True)
    path: Mapped[str] = mapped_column(String(300))
    principal: Mapped[str] = mapped_column(String(100))
    status: Mapped[int] = mapped_column(Integer)
    requests: Mapped[int] = mapped_column(Integer)
    avg_ms: Mapped[float] = mapped_column(Float)
    max_ms: Mapped[float] = mapped_column(Float)


class ApiToken(Base):
    __tablename__ = "api_tokens"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    role: Mapped[str] = mapped_column(String(20))  # shared.permissions.ROLES
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)  # sha256 hex of the token
    prefix: Mapped[str] = mapped_column(String(12))  # first characters, to recognise a token in lists
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    revoked_at: Mapped[dt.datetime | None]
    last_used_at: Mapped[dt.datetime | None]
    stores: Mapped[list[int] | None] = mapped_column(JSON, nullable=True)  # store scope; None: every store
    expires_at: Mapped[dt.datetime | None]


class AuditEntry(Base):
    """Who did what, when, from where, and how it ended; never a secret or a token (shared.audit)."""

    __tablename__ = "audit_log"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    at: Mapped[dt.datetime] = mapped_column(default=utcnow, index=True)
    actor: Mapped[str | None] = mapped_column(String(100), index=True)  # a token's name
    action: Mapped[str] = mapped_column(String(64), index=True)
    target: Mapped[str | None] = mapped_column(String(300))
    outcome: Mapped[str] = mapped_column(String(20))  # ok | denied | failed
    request_id: Mapped[str | None] = mapped_column(String(64))
    client: Mapped[str | None] = mapped_column(String(100))  # the client's address
    details: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)


class TaskRecord(Base):
    """One row per task: the monitor's durable history, built from lifecycle events."""

    __tablename__ = "task_history"
    __table_args__ = (
        Index("ix_task_history_name_sent", "task_name", "sent_at"),
        Index("ix_task_history_state_sent", "state", "sent_at"),
        Index("ix_task_history_owner_sent", "owner", "sent_at"),
        # the console overview's counts read from the index alone, no table row (migration 0010)
        Index("ix_task_history_sent_counts", "sent_at", "state", "retries", "owner", "queue"),
        # newest first as the history reads it (migration 0008; PostgreSQL only: SQLite has no NULLS LAST
        # in CREATE INDEX and serves the order from the indexes above)
        Index("ix_task_history_newest", text("sent_at DESC NULLS LAST"), text("task_id DESC")).ddl_if(
            dialect="postgresql"
        ),
        *(
            Index(
                f"ix_task_history_{name}_newest", column, text("sent_at DESC NULLS LAST"), text("task_id DESC")
            ).ddl_if(dialect="postgresql")
            for name, column in (("owner", "owner"), ("state", "state"), ("name", "task_name"))
        ),
    )

    task_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    task_name: Mapped[str] = mapped_column(String(100))
    queue: Mapped[str | None] = mapped_column(String(50))
    state: Mapped[str] = mapped_column(String(12))
    args_summary: Mapped[str | None] = mapped_column(String(500))
    # {"args": [...], "kwargs": {...}} as the message carried them, capped (celery_extensions.events.capped_arguments);
    # the history filters on it (kwargs.<field>=<value>) and bulk retries re-send it
    arguments: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    retry_of: Mapped[str | None] = mapped_column(String(64), index=True)  # the task this one retries
    owner: Mapped[str | None] = mapped_column(String(100))
    # X-Request-ID of the HTTP request that submitted the task (migration 0003)
    request_id: Mapped[str | None] = mapped_column(String(64))
    worker: Mapped[str | None] = mapped_column(String(200))
    retries: Mapped[int] = mapped_column(Integer, default=0)
    exception: Mapped[str | None] = mapped_column(String(200))
    error: Mapped[str | None] = mapped_column(Text)
    traceback: Mapped[str | None] = mapped_column(
        Text
    )  # the final failure's, capped (celery_extensions.events.TRACEBACK_CHARS)
    result_summary: Mapped[str | None] = mapped_column(String(500))
    sent_at: Mapped[dt.datetime | None] = mapped_column(index=True)
    received_at: Mapped[dt.datetime | None]
    started_at: Mapped[dt.datetime | None]
    finished_at: Mapped[dt.datetime | None] = mapped_column(index=True)
    runtime: Mapped[float | None] = mapped_column(Float)
    queue_wait: Mapped[float | None] = mapped_column(Float)
    last_event_seq: Mapped[int] = mapped_column(BigInteger, default=0)
    updated_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    # which counted events of this task the monitor has applied (bits, see services/monitor/state.py):
    # a redelivered event finds its bit set and changes nothing
    event_mask: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    progress_current: Mapped[int | None] = mapped_column(Integer)
    progress_total: Mapped[int | None] = mapped_column(Integer)
    # how often the message of the task's current state had been put back by a requeuer
    # (shared/celery_extensions/redelivery.py)
    requeues: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    # the workflow the task is a step of, and the step's name (WORKFLOW_ID_HEADER, migration 0008)
    workflow_id: Mapped[str | None] = mapped_column(String(64), index=True)
    workflow_step: Mapped[str | None] = mapped_column(String(100))


class MonitorMetric(Base):
    """The monitor's Prometheus counters and histogram buckets, committed with the history rows they
    count, so that a restarted monitor neither loses nor double-counts (one row per series field)."""

    __tablename__ = "monitor_metrics"

    key: Mapped[str] = mapped_column(String(1000), primary_key=True)
    hostname: Mapped[str | None] = mapped_column(String(200), index=True)
    value: Mapped[float] = mapped_column(Float, default=0.0)


class DeferredTask(Base):
    """A one-off run further ahead than the broker holds a message safely (``shared/deferred.py``): kept
    here with state SCHEDULED until beat publishes it when due (then PUBLISHED), or REVOKED."""

    __tablename__ = "deferred_tasks"
    __table_args__ = (
        Index("ix_deferred_tasks_state_eta", "state", "eta"),
        Index("ix_deferred_tasks_owner_state", "owner", "state"),
    )

    task_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    task_name: Mapped[str] = mapped_column(String(100))  # the catalog short name
    queue: Mapped[str] = mapped_column(String(50))
    owner: Mapped[str] = mapped_column(String(100))
    args: Mapped[list[Any]] = mapped_column(JSON, default=list)  # as submitted, for display and retry
    kwargs: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    payload: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)  # validated keyword arguments to publish
    priority: Mapped[int | None] = mapped_column(Integer)
    eta: Mapped[dt.datetime]
    state: Mapped[str] = mapped_column(String(12), default=DeferredState.SCHEDULED.value)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    published_at: Mapped[dt.datetime | None]


class Workflow(Base):
    """A workflow (``shared/workflows.py``): steps of catalog tasks run in order and in parallel, submitted,
    counted against the quota and retried as one. ``status`` is a task state (contracts.WORKFLOW_STATES)."""

    __tablename__ = "workflows"
    __table_args__ = (
        Index("ix_workflows_owner_created", "owner", "created_at"),
        Index("ix_workflows_status_created", "status", "created_at"),
        Index("ix_workflows_created", "created_at"),  # the listing, newest first
    )

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str | None] = mapped_column(String(100), index=True)  # a named workflow's, else None (ad hoc)
    owner: Mapped[str] = mapped_column(String(100))
    kwargs: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)  # a named workflow's arguments
    status: Mapped[str] = mapped_column(String(12), default=TaskState.PENDING.value)
    failed_step: Mapped[str | None] = mapped_column(String(100))
    reason: Mapped[str | None] = mapped_column(Text)
    request_id: Mapped[str | None] = mapped_column(String(64))
    retries: Mapped[int] = mapped_column(Integer, default=0)
    failures: Mapped[int] = mapped_column(Integer, default=0)  # how often it went FAILURE (the monitor counts them)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    started_at: Mapped[dt.datetime | None]
    finished_at: Mapped[dt.datetime | None]
    steps: Mapped[list[WorkflowStep]] = relationship(
        back_populates="workflow", order_by="WorkflowStep.position", cascade="all, delete-orphan"
    )


class WorkflowStep(Base):
    """One step of a workflow: a catalog task with its validated arguments and the steps it waits for."""

    __tablename__ = "workflow_steps"
    __table_args__ = (UniqueConstraint("workflow_id", "name", name="uq_workflow_steps_workflow_name"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    workflow_id: Mapped[str] = mapped_column(ForeignKey("workflows.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(100))
    position: Mapped[int] = mapped_column(Integer)
    task_name: Mapped[str] = mapped_column(String(100))  # the catalog short name
    kwargs: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)  # validated; filled from results when sent
    after: Mapped[list[str]] = mapped_column(JSON, default=list)  # names of the steps it waits for
    # argument -> key of the previous step's result (catalog fields marked ``from_previous``)
    from_previous: Mapped[dict[str, str]] = mapped_column(JSON, default=dict)
    state: Mapped[str] = mapped_column(String(12), default=TaskState.PENDING.value)
    task_id: Mapped[str | None] = mapped_column(String(64), index=True)  # the current attempt's task
    published_at: Mapped[dt.datetime | None]  # set once the current attempt's message is in the broker
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    result: Mapped[Any | None] = mapped_column(JSON)
    error: Mapped[str | None] = mapped_column(Text)
    started_at: Mapped[dt.datetime | None]
    finished_at: Mapped[dt.datetime | None]
    workflow: Mapped[Workflow] = relationship(back_populates="steps")


class WorkflowTotals(Base):
    """What the monitor's workflow counters had counted of the workflows the retention deleted
    (``cleanup_expired_data``), per workflow name (``ad_hoc`` for unnamed ones): added to what the
    ``workflows`` table still holds, so that the counters never go down when old rows go."""

    __tablename__ = "workflow_totals"

    name: Mapped[str] = mapped_column(String(100), primary_key=True)
    started: Mapped[int] = mapped_column(BigInteger, default=0)
    succeeded: Mapped[int] = mapped_column(BigInteger, default=0)
    failed: Mapped[int] = mapped_column(BigInteger, default=0)
    duration_sum: Mapped[float] = mapped_column(Float, default=0.0)  # seconds, of the succeeded ones
    # the succeeded ones' durations per bucket: upper bound (MALLOPS_RUNTIME_BUCKETS when deleted, or "+Inf")
    # -> how many fell in it (not cumulative)
    duration_buckets: Mapped[dict[str, int]] = mapped_column(JSON, default=dict)
    updated_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
