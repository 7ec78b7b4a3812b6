"""Logging of every mallops process: one format for all (``MALLOPS_LOG_FORMAT=text``, or ``json`` for
one JSON object per line), on stdout, at ``MALLOPS_LOG_LEVEL`` (any case).

Every line carries its context: the service, and when there is one the Celery task being run (its id
and name) and the request id of the HTTP request that submitted it (``X-Request-ID``, taken or made by
the gateway, carried in the task message's header :data:`REQUEST_ID_HEADER`). Nothing happens at import:
each service's entry point calls :func:`configure_logging` once.
"""

from __future__ import annotations

import datetime as dt
import logging
import sys
from contextvars import ContextVar
from typing import Any

from shared.contracts import REQUEST_ID_HEADER

#: the request id of the HTTP request being handled (set by the gateway's middleware)
request_id_var: ContextVar[str | None] = ContextVar("mallops_request_id", default=None)

LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
FORMATS = ("text", "json")
JSON_FIELDS = ("time", "level", "service", "logger", "message", "task_id", "task_name", "request_id")


def normalize_level(value: str) -> str:
    """``info`` -> ``INFO`` (``warn`` -> ``WARNING``); ValueError naming the choices otherwise."""
    level = str(value).strip().upper()
    level = {"WARN": "WARNING", "FATAL": "CRITICAL"}.get(level, level)
    if level not in LEVELS:
        raise ValueError(f"unknown log level {value!r}; choose one of {', '.join(LEVELS)} (any case)")
    return level


def _current_task() -> Any:
    state = sys.modules.get("celery._state")  # only where Celery is loaded at all
    if state is None:
        return None
    task = state.get_current_task()
    return task if task is not None and getattr(task.request, "id", None) else None


class ContextFilter(logging.Filter):
    """Adds ``service``, ``task_id``, ``task_name`` and ``request_id`` to every record."""

    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def filter(self, record: logging.LogRecord) -> bool:
        record.service = self.service
        request_id = getattr(record, "request_id", None) or request_id_var.get()
        task = _current_task()
        record.task_id = task.request.id if task is not None else None
        record.task_name = task.name if task is not None else None
        if request_id is None and task is not None:
            request_id = task.request.get(REQUEST_ID_HEADER)
        record.request_id = request_id
        return True


def _utc_time(record: logging.LogRecord) -> str:
    return dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(timespec="milliseconds")


class TextFormatter(logging.Formatter):
    """``2026-12-07T07:38:00.128+00:00 INFO    finance mallops.finance [task-name 6ed5dc75 req=ab12]: message``"""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(service)s %(name)s%(context)s: %(message)s")

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        return _utc_time(record)

    def format(self, record: logging.LogRecord) -> str:
        parts = []
        task_id, request_id = getattr(record, "task_id", None), getattr(record, "request_id", None)
        if task_id:
            parts.append(f"{getattr(record, 'task_name', None)} {task_id}")
        if request_id:
            parts.append(f"req={request_id}")
        record.context = f" [{' '.join(parts)}]" if parts else ""
        return super().format(record)


def json_formatter() -> logging.Formatter:
    """python-json-logger's formatter: the fields of :data:`JSON_FIELDS`, times in UTC ISO 8601."""
    from pythonjsonlogger.json import JsonFormatter

    class _Formatter(JsonFormatter):
        def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
            return _utc_time(record)

    return _Formatter(
        ["asctime", "levelname", "service", "name", "message", "task_id", "task_name", "request_id"],
        rename_fields={"asctime": "time", "levelname": "level", "name": "logger"},
        json_ensure_ascii=False,
    )


#: Celery's loggers of a line per task received and per task succeeded (failures are logged as errors)
TASK_LINE_LOGGERS = ("celery.worker.strategy", "celery.app.trace")


def configure_logging(service: str, level: str, log_format: str = "text", *, task_lines: bool = True) -> None:
    """Send every log record of this process (Celery's, uvicorn's, ours) to stdout in one format.

    Also tells Celery (worker, beat) to leave logging alone: its ``setup_logging`` signal has a receiver.
    Without ``task_lines``, Celery's INFO lines for each task received and succeeded are left out.
    """
    handler = logging.StreamHandler(sys.stdout)
    handler.addFilter(ContextFilter(service))
    handler.setFormatter(json_formatter() if log_format == "json" else TextFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(normalize_level(level))
    for name in TASK_LINE_LOGGERS:
        logging.getLogger(name).setLevel(logging.NOTSET if task_lines else logging.WARNING)
    logging.captureWarnings(True)

    from celery import signals

    signals.setup_logging.connect(_keep_ours, weak=False, dispatch_uid="mallops.logs")


def _keep_ours(**_: Any) -> None:
    """Celery's ``setup_logging`` receiver: having one makes Celery skip its own logging setup."""


__all__ = ["REQUEST_ID_HEADER", "ContextFilter", "configure_logging", "normalize_level", "request_id_var"]
