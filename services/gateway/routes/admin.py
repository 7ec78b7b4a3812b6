"""Admin views: ``/api/v1/workers`` and ``/api/v1/queues`` (the beat schedule is in ``routes/schedules``)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter
from starlette.concurrency import run_in_threadpool

from services.gateway import authz
from services.gateway.deps import RuntimeDep
from services.gateway.openapi import admin_only
from services.gateway.routes import API_PREFIX
from services.gateway.schemas import QueueInfo, QueueList, WorkerInfo, WorkerList
from shared import permissions
from shared.tokens import Principal
from shared.workers import list_workers, queue_lengths

router = APIRouter(prefix=API_PREFIX, tags=["admin"])
WorkersReader = Annotated[Principal, authz.requires(permissions.WORKERS_READ)]
QueuesReader = Annotated[Principal, authz.requires(permissions.QUEUES_READ)]


@router.get("/workers", response_model=WorkerList, summary="Workers online and offline", openapi_extra=admin_only())
async def workers(principal: WorkersReader, runtime: RuntimeDep) -> WorkerList:
    """Every worker seen recently (from their heartbeats): status, queues, active and processed tasks."""
    rows = await run_in_threadpool(list_workers, runtime.settings)
    items = [WorkerInfo.model_validate(row) for row in rows]
    return WorkerList(count=len(items), online=sum(1 for w in items if w.status == "online"), results=items)


@router.get("/queues", response_model=QueueList, summary="Queue lengths and consumers", openapi_extra=admin_only())
async def queues(principal: QueuesReader, runtime: RuntimeDep) -> QueueList:
    """Each queue's pending messages in the broker (priority sub-queues included) and its online consumers."""
    lengths = await run_in_threadpool(queue_lengths, runtime.settings)
    items = [
        QueueInfo(name=name, pending=value["pending"], consumers=value["consumers"]) for name, value in lengths.items()
    ]
    return QueueList(count=len(items), results=items)
