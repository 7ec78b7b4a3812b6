"""Real processes for tests: redis-server, mallops services. Every process is stopped by its PID.

The helpers are the bench's own (:mod:`bench.processes`, which needs no pytest); here a missing binary or
a deadline (:class:`bench.processes.Failed`) becomes a test failure (``pytest.fail``), which tests may catch
as ``pytest.fail.Exception`` to add what they know.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import ParamSpec, TypeVar

import pytest

from bench import processes
from bench.processes import (
    REDIS_MISSING,
    ROOT,
    Process,
    RedisServer,
    connections_refused,
    drop_sessions,
    free_port,
    redis_env,
    service_argv,
    spawn,
)

P = ParamSpec("P")
T = TypeVar("T")

__all__ = [
    "REDIS_MISSING",
    "ROOT",
    "Process",
    "RedisServer",
    "connections_refused",
    "drop_sessions",
    "free_port",
    "redis_container",
    "redis_env",
    "service_argv",
    "spawn",
    "start_celery_worker",
    "start_redis",
    "start_worker",
    "wait_http_ready",
    "wait_until",
]


def _test_failure(helper: Callable[P, T]) -> Callable[P, T]:
    @functools.wraps(helper)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
        try:
            return helper(*args, **kwargs)
        except processes.Failed as failed:
            pytest.fail(str(failed))

    return wrapper


wait_until = _test_failure(processes.wait_until)
redis_container = _test_failure(processes.redis_container)
start_redis = _test_failure(processes.start_redis)
wait_http_ready = _test_failure(processes.wait_http_ready)
start_worker = _test_failure(processes.start_worker)
start_celery_worker = _test_failure(processes.start_celery_worker)
