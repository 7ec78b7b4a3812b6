"""The walking skeleton: a catalog task goes through the real broker to a real worker process."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from shared.catalog import CATALOG
from shared.celery_app import create_celery_app
from shared.settings import Settings
from tests.harness import Process

pytestmark = pytest.mark.integration


def test_test_task_runs_on_a_real_worker(settings: Settings, running_worker: Callable[[str], Process]) -> None:
    worker = running_worker("maintenance")
    app = create_celery_app("test-client", settings)
    spec = CATALOG["test_task"]
    result = app.send_task(spec.celery_name, kwargs={"message": "hello"}, queue=spec.queue)
    try:
        assert result.get(timeout=30) == "Task received: hello"
        assert result.state == "SUCCESS"
        assert str(result.worker).startswith("maintenance-")
    finally:
        result.forget()
        app.close()
    assert worker.alive()


def test_failing_task_reports_its_exception(settings: Settings, running_worker: Callable[[str], Process]) -> None:
    running_worker("maintenance")
    app = create_celery_app("test-client", settings)
    spec = CATALOG["test_task"]
    result = app.send_task(spec.celery_name, args=["boom"], kwargs={"fail": True}, queue=spec.queue)
    try:
        with pytest.raises(Exception, match="failed on request: boom"):
            result.get(timeout=30)
        assert result.state == "FAILURE"
    finally:
        app.close()
