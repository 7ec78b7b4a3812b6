"""The maintenance worker plus one test-only task, ``poison_pill``, that SIGKILLs the process running it.

A message of it is a poison message: it kills its worker every time it runs (as the kernel's OOM killer
or a crashing C extension would). The production catalog has no such task on purpose; the fault tests
start this worker with ``python -m tests.reliability.poison_worker <worker options>``.
"""

from __future__ import annotations

import os
import signal
import sys

from services.maintenance.main import SERVICE, create_app
from shared.catalog import NoArgs, TaskSpec
from shared.celery_extensions.task_base import MallopsTask
from shared.worker import run_worker

POISON_TASK = "mallops.tests.poison_pill"
POISON_SPEC = TaskSpec(
    "poison_pill", "tests", "default", NoArgs, "SIGKILLs the worker process running it.", "tasks.submit.maintenance"
)
COMMAND = [sys.executable, "-m", "tests.reliability.poison_worker"]


def poison_pill(task: MallopsTask) -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def main(argv: list[str]) -> None:
    app = create_app()
    app.task(name=POISON_TASK, base=MallopsTask, bind=True, queue="default", spec=POISON_SPEC, typing=False)(
        poison_pill
    )
    run_worker(app, SERVICE, argv)


if __name__ == "__main__":
    main(sys.argv[1:])
