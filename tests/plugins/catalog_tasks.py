"""``submit_task``: publish catalog tasks by short name to real workers, the way the gateway does."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from celery.result import AsyncResult

from shared.catalog import CATALOG
from shared.celery_app import create_celery_app
from shared.settings import Settings

Submit = Callable[..., AsyncResult]


@pytest.fixture
def submit_task(settings: Settings) -> Iterator[Submit]:
    """Publish a catalog task by short name, as the gateway does (queue from the catalog, owner header)."""
    app = create_celery_app("test-client", settings)
    results: list[AsyncResult] = []

    def send(name: str, kwargs: dict[str, Any] | None = None, owner: str | None = None, **options: Any) -> AsyncResult:
        spec = CATALOG[name]
        headers = {"mallops_owner": owner} if owner else None
        result = app.send_task(spec.celery_name, kwargs=kwargs or {}, queue=spec.queue, headers=headers, **options)
        results.append(result)
        return result

    yield send
    for result in results:
        result.forget()
    app.close()
