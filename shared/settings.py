"""Runtime settings for every mallops process, read from ``MALLOPS_*`` environment variables.

Nothing is read at import: call :func:`get_settings` (cached) or build :class:`Settings` directly.
"""

from __future__ import annotations

import functools
import math
from pathlib import Path
from typing import Annotated, Any, Literal, Self

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

DEFAULT_DATA_DIR = Path(".mallops")
# Histogram buckets (seconds, +Inf added): from milliseconds to the 30-minute hard time limit; the queue
# wait goes on to the broker's 2-hour visibility timeout, the longest a message can wait unnoticed.
RUNTIME_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 900, 1200, 1800)
QUEUE_WAIT_BUCKETS = (*RUNTIME_BUCKETS, 3600, 7200)
MAX_BUCKETS = 40


class Settings(BaseSettings):
    """Every setting a mallops service reads. Defaults make an embedded, single-machine setup work."""

    model_config = SettingsConfigDict(
        env_prefix="MALLOPS_",
        env_file=".env",
        env_ignore_empty=True,
        extra="ignore",
    )

    environment: Literal["development", "test", "production"] = "development"
    timezone: str = "Asia/Shanghai"
    log_level: str = "INFO"  # any case: info, INFO, Warning
    log_format: Literal["text", "json"] = "text"  # json: one JSON object per line (shared/logs.py)
    # workers log a line when each task is received and when it succeeds (failures always); `mallops dev` turns
    # these off so that a burst of tasks does not scroll its ready banner away
    log_task_lines: bool = True
    # the language of a report's HTML page when the download names none (?lang=zh_CN|en)
    report_language: Literal["zh_CN", "en"] = "zh_CN"

    data_dir: Path = DEFAULT_DATA_DIR
    database_url: str = ""  # empty: SQLite file under data_dir

    redis_url: str = "redis://127.0.0.1:6379"
    broker_url: str = ""  # empty: redis_url, db 0; amqp://user:password@host:5672/vhost for RabbitMQ (quorum queues)
    result_backend: str = ""  # empty: redis_url, db 1
    # Redis broker: a message not acknowledged within this many seconds (its worker died) is delivered
    # again; keep it above the longest task plus its wait in a worker's prefetch, or it runs twice
    broker_visibility_timeout: int = Field(default=7200, ge=1)
    # Redis broker: seconds between a worker's sweeps that put such messages back on their queue
    broker_restore_interval: float = Field(default=10.0, gt=0, le=3600)

    smtp_host: str = "127.0.0.1"
    smtp_port: int = Field(default=1025, ge=1, le=65535)
    smtp_starttls: bool = False
    smtp_user: str = ""
    smtp_password: SecretStr = SecretStr("")
    smtp_timeout: float = Field(default=10.0, gt=0)
    smtp_ca_file: str = ""  # CA bundle that signs the SMTP server certificate (empty: the system CAs)
    mail_from: str = "mallops@mall.example"
    # who gets the month's report from the month_end_close workflow (send_report_email): comma-separated;
    # taken from here only, never from a request
    management_emails: Annotated[tuple[str, ...], NoDecode] = ()
    notifier_pool: Literal["threads", "prefork", "solo"] = "threads"  # e-mail is I/O-bound
    notifier_concurrency: int = Field(default=8, ge=1, le=200)
    # prefork: Celery's soft/hard time limits, reject_on_worker_lost and revoke --terminate need it (long_running_task,
    # backup_database); `threads` idles in one ~90 MB process instead of ~250 MB (docs/performance.md)
    maintenance_pool: Literal["threads", "prefork", "solo"] = "prefork"

    gateway_host: str = "127.0.0.1"
    gateway_port: int = Field(default=8000, ge=1, le=65535)
    # gateway: uvicorn worker processes on the one port (/metrics sums them: prometheus_client's multiprocess mode)
    gateway_workers: int = Field(default=1, ge=1, le=64)
    # gateway: POST /api/v1/tasks answered below FastAPI in the common case (services/gateway/fast_submit.py)
    gateway_fast_submit: bool = True
    monitor_host: str = "127.0.0.1"
    monitor_port: int = Field(default=9808, ge=1, le=65535)

    bootstrap_admin_token: SecretStr = SecretStr("")
    task_max_per_user: int = Field(default=5, ge=1)
    rate_limit_per_minute: int = Field(default=600, ge=1)
    max_body_bytes: int = Field(default=1_048_576, ge=1024)
    cors_origins: list[str] = Field(default_factory=list)
    # gateway: requests with a missing, unknown, expired or revoked token per client address and minute
    auth_failures_per_minute: int = Field(default=60, ge=1)
    # gateway: how long a verified token is trusted before the database is asked again (revocation delay)
    token_cache_seconds: float = Field(default=5.0, ge=0, le=60)
    # gateway: how long the owner and arguments of a submitted task are kept in Redis (beyond result_expires)
    task_meta_ttl_seconds: int = Field(default=7 * 86400, ge=3600)
    # ...and once the monitor has written the task's final state into task_history, which then answers
    # for it: 0 deletes the metadata at once, N shortens its TTL to N seconds (docs/capacity.md)
    task_meta_finished_ttl_seconds: int = Field(default=0, ge=0)
    # Celery's result_expires: how long a task's result stays in the result backend (docs/capacity.md)
    result_expires_seconds: int = Field(default=3600, ge=10)
    idempotency_ttl_seconds: int = Field(default=86400, ge=60)
    # the operator console (/console/): a signed-in browser session lasts this many hours
    console_session_hours: float = Field(default=8.0, gt=0, le=24 * 30)
    # signs the console's CSRF tokens; empty: a random key kept in Redis, shared by every gateway process
    console_secret: SecretStr = SecretStr("")

    worker_concurrency: int = Field(default=2, ge=1)
    task_max_retries: int = Field(default=3, ge=0)
    task_retry_backoff: float = Field(default=30.0, ge=0)
    # a message whose worker died while running it (SIGKILL, OOM, a crash) is run at most this many times;
    # the next delivery is dead-lettered (celery_extensions.task_base, shared.dead_letter_store) and fails the task
    task_max_deliveries: int = Field(default=5, ge=1, le=1000)
    beat_max_interval: float = Field(default=5.0, gt=0, le=300)  # beat loop: runtime edits apply within it
    beat_lock_timeout: int = Field(default=30, ge=5)  # a dead beat's lock frees after this many seconds
    # one-off runs further ahead than the broker's visibility timeout wait in the database (state SCHEDULED);
    # one owner may have at most this many waiting (they count against MALLOPS_TASK_MAX_PER_USER once published)
    scheduled_max_per_user: int = Field(default=100, ge=0)
    # tests and drills only (refused in production): beat publishes deferred runs as if it were this many
    # seconds later, so that a run hours ahead can be driven without waiting
    clock_offset_seconds: float = Field(default=0.0, ge=0, le=10 * 366 * 86400)
    backup_keep: int = Field(default=7, ge=1)
    export_ttl_days: int = Field(default=7, ge=1)
    report_ttl_days: int = Field(default=365, ge=1)
    history_ttl_days: int = Field(default=30, ge=1)
    # finished workflows (and their steps), deleted by cleanup_expired_data this long after they finished
    workflow_ttl_days: int = Field(default=90, ge=1)
    notification_ttl_days: int = Field(default=30, ge=1)
    access_log_ttl_days: int = Field(default=90, ge=1)
    audit_ttl_days: int = Field(default=365, ge=1)  # audit_log rows, deleted by cleanup_expired_data
    pg_dump_command: str = "pg_dump"  # for backup_database on PostgreSQL (client major >= server's)
    # `mallops migrate` also loads the demo mall when the database has none (compose's one-shot migrate)
    demo_data: bool = False

    # lifecycle events (shared/celery_extensions/events.py) and the monitor (services/monitor)
    events_enabled: bool = True
    events_stream_maxlen: int = Field(default=500_000, ge=1000)  # approximate (XADD MAXLEN ~)
    # the monitor trims entries every consumer group has acknowledged once they are this old; 0 keeps them
    # until MAXLEN pushes them out (docs/capacity.md)
    events_stream_retention_seconds: int = Field(default=60, ge=0)
    events_flush_interval: float = Field(default=0.1, gt=0, le=10)  # seconds a buffered event may wait
    events_flush_size: int = Field(default=200, ge=1, le=10_000)  # events that trigger a flush at once
    worker_heartbeat_interval: float = Field(default=2.0, gt=0, le=300)
    worker_offline_after: float = Field(default=10.0, gt=0)  # seconds of silence before offline
    worker_purge_after: float = Field(default=600.0, gt=0)  # seconds offline before labels are dropped
    monitor_batch_size: int = Field(default=1000, ge=1, le=50_000)
    monitor_claim_idle: float = Field(default=30.0, gt=0)  # seconds before another consumer's entry is taken
    # seconds a batch smaller than MALLOPS_MONITOR_BATCH_SIZE waits, from its oldest entry, for more
    # entries before it is stored: fewer, fuller transactions under load; 0 stores what each read returns
    monitor_linger_seconds: float = Field(default=0.1, ge=0, le=5)
    # the monitor's celery_task_runtime and celery_task_queue_wait_time buckets: seconds, comma-separated
    # (MALLOPS_RUNTIME_BUCKETS=0.1,1,10,60); a change starts that histogram afresh (services/monitor/store.py)
    runtime_buckets: Annotated[tuple[float, ...], NoDecode] = RUNTIME_BUCKETS
    queue_wait_buckets: Annotated[tuple[float, ...], NoDecode] = QUEUE_WAIT_BUCKETS

    @field_validator("runtime_buckets", "queue_wait_buckets", mode="before")
    @classmethod
    def _bucket_list(cls, value: Any) -> Any:
        """``"0.1, 1, 10"`` -> (0.1, 1.0, 10.0): finite, positive, increasing, at most MAX_BUCKETS."""
        if isinstance(value, str):
            try:
                value = tuple(float(part) for part in value.split(",") if part.strip())
            except ValueError as exc:
                raise ValueError("buckets are seconds separated by commas, e.g. 0.1,1,10,60") from exc
        bounds = tuple(float(bound) for bound in value)
        if not bounds or len(bounds) > MAX_BUCKETS:
            raise ValueError(f"give between 1 and {MAX_BUCKETS} buckets")
        if not all(math.isfinite(b) and b > 0 for b in bounds) or list(bounds) != sorted(set(bounds)):
            raise ValueError("buckets must be positive finite seconds in increasing order (+Inf is added)")
        return bounds

    @field_validator("management_emails", mode="before")
    @classmethod
    def _addresses(cls, value: Any) -> Any:
        if isinstance(value, str):
            return tuple(part.strip() for part in value.split(",") if part.strip())
        return value

    @field_validator("log_level")
    @classmethod
    def _any_case_log_level(cls, value: str) -> str:
        from shared.logs import normalize_level

        return normalize_level(value)

    @field_validator("log_format", mode="before")
    @classmethod
    def _any_case_log_format(cls, value: object) -> object:
        return value.strip().lower() if isinstance(value, str) else value

    @model_validator(mode="after")
    def _refuse_default_secrets_in_production(self) -> Self:
        if self.environment == "production" and not self.database_url:
            raise ValueError("MALLOPS_DATABASE_URL must be set when MALLOPS_ENVIRONMENT=production")
        if self.environment == "production" and self.clock_offset_seconds:
            raise ValueError("MALLOPS_CLOCK_OFFSET_SECONDS is for tests and drills, not MALLOPS_ENVIRONMENT=production")
        return self

    # -- derived values ------------------------------------------------------------------------

    @property
    def sqlalchemy_url(self) -> str:
        """The database URL, with the embedded SQLite default and psycopg 3 as PostgreSQL driver."""
        url = self.database_url or f"sqlite:///{self.data_dir / 'mallops.db'}"
        for prefix in ("postgresql://", "postgres://"):
            if url.startswith(prefix):
                return "postgresql+psycopg://" + url[len(prefix) :]
        return url

    @property
    def celery_broker_url(self) -> str:
        return self.broker_url or _redis_db(self.redis_url, 0)

    @property
    def broker_is_amqp(self) -> bool:
        """Whether the broker is RabbitMQ (AMQP), whose queues mallops declares as quorum queues."""
        return self.celery_broker_url.startswith(("amqp://", "amqps://", "pyamqp://"))

    @property
    def celery_result_backend(self) -> str:
        return self.result_backend or _redis_db(self.redis_url, 1)

    @property
    def cache_redis_url(self) -> str:
        """Redis for the cache, the event stream, quotas and the access-log buffer (db 2)."""
        return _redis_db(self.redis_url, 2)

    @property
    def exports_dir(self) -> Path:
        return self.data_dir / "exports"

    @property
    def reports_dir(self) -> Path:
        return self.data_dir / "reports"

    @property
    def backups_dir(self) -> Path:
        return self.data_dir / "backups"


def _redis_db(url: str, db: int) -> str:
    """``redis://host:port`` plus a database number, replacing one that is already there."""
    base, _, query = url.partition("?")
    scheme, _, rest = base.partition("://")
    hostpart = rest.split("/", 1)[0]
    result = f"{scheme}://{hostpart}/{db}"
    return f"{result}?{query}" if query else result


@functools.lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process's settings, read once from the environment."""
    return Settings()
