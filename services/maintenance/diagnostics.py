"""Plain functions behind the diagnostic tasks (test_task, long_running_task)."""

from __future__ import annotations

import time
from collections.abc import Callable

from shared.errors import TransientError


class RequestedFailure(RuntimeError):
    """test_task was asked to fail."""


# test_task fails with a transient (retried) error on its first attempt when the message starts with this:
# a way to exercise the retry path end to end without another task or argument.
TRANSIENT_PREFIX = "transient:"


def echo(message: str, fail: bool = False, attempt: int = 0) -> str:
    if message.startswith(TRANSIENT_PREFIX) and attempt == 0:
        raise TransientError(f"test_task transient failure on request: {message}")
    if fail:
        raise RequestedFailure(f"test_task failed on request: {message}")
    return f"Task received: {message}"


def run_steps(
    steps: int,
    step_seconds: float,
    on_progress: Callable[[int, int], None],
    sleep: Callable[[float], None] = time.sleep,
) -> dict[str, int]:
    """Sleep ``steps`` times, calling ``on_progress(current, total)`` after each step."""
    for current in range(1, steps + 1):
        sleep(step_seconds)
        on_progress(current, steps)
    return {"current": steps, "total": steps}
