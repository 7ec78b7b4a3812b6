"""The bare Celery app of the baseline scenarios: one no-op task, no mallops code.

``celery -A bench.noop_app worker ...`` imports this module, so it is configured from the environment at
import (``BENCH_BROKER_URL``, ``BENCH_RESULT_BACKEND``) as a minimal standalone Celery project would be.
The task returns the time it started, so the bench can read submit-to-start latency from the result.
"""

from __future__ import annotations

import os
import time

from celery import Celery

QUEUE = "bench"
TASK = "bench.noop"

app = Celery("bench", set_as_current=False)
app.conf.update(
    broker_url=os.environ.get("BENCH_BROKER_URL", "redis://127.0.0.1:6379/0"),
    result_backend=os.environ.get("BENCH_RESULT_BACKEND", "redis://127.0.0.1:6379/1"),
    task_serializer="json",
    result_serializer="json",
    accept_content=["json"],
    task_acks_late=True,
    task_default_queue=QUEUE,
    worker_hijack_root_logger=False,
    broker_connection_retry_on_startup=True,
)


@app.task(name=TASK)  # type: ignore[untyped-decorator]
def noop() -> float:
    return time.time()
