"""``/api/v1/catalog``: every task that can be submitted, with the JSON Schema of its arguments."""

from __future__ import annotations

import datetime as dt
import functools
from typing import Annotated

from fastapi import APIRouter

from services.gateway import authz, workflow_runs
from services.gateway.routes import API_PREFIX
from services.gateway.schemas import Catalog, CatalogEntry
from shared import permissions
from shared.catalog import CATALOG
from shared.tokens import Principal

router = APIRouter(prefix=API_PREFIX, tags=["catalog"])


@functools.cache
def _catalog() -> Catalog:
    entries = [
        CatalogEntry(
            task_name=spec.name,
            celery_name=spec.celery_name,
            service=spec.service,
            queue=spec.queue,
            description=spec.description,
            schedule=spec.schedule.as_dict() if spec.schedule else None,
            schedule_text=spec.schedule.describe() if spec.schedule else None,
            args_schema=spec.json_schema(),
        )
        for spec in CATALOG.values()
    ]
    return Catalog(count=len(entries), results=entries)


@router.get("/catalog", response_model=Catalog, summary="Tasks that can be submitted")
async def catalog(principal: Annotated[Principal, authz.requires(permissions.CATALOG_READ)]) -> Catalog:
    """Each task's name, queue, description, default schedule and the JSON Schema of its arguments; the named
    workflows under `workflows`."""
    # named workflows' steps are shown for their default arguments (the previous month, yesterday), today's
    flows = workflow_runs.catalog_entries(dt.date.today())
    return _catalog().model_copy(update={"workflows": flows})
