"""Writing the audit trail from a request: who (the token's name), the request id, the client address."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from fastapi import Request
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from shared import audit


def request_context(request: Request) -> dict[str, Any]:
    """The actor, request id and client address of ``request`` (set by the token check and the middleware)."""
    return {
        "actor": getattr(request.state, "principal", None),
        "request_id": getattr(request.state, "request_id", None),
        "client": request.client.host if request.client else None,
    }


def record_in(
    session: Session,
    request: Request,
    action: str,
    *,
    outcome: str = "ok",
    target: str | None = None,
    details: Mapping[str, Any] | None = None,
) -> None:
    """Add the entry to ``session`` (a route's own transaction)."""
    audit.record(session, action=action, outcome=outcome, target=target, details=details, **request_context(request))


async def record(request: Request, action: str, **fields: Any) -> None:
    """:func:`record_in` in a transaction of its own (from an async route); ``fields`` as there."""
    sessions = request.app.state.runtime.sessions

    def write() -> None:
        with sessions() as session, session.begin():
            record_in(session, request, action, **fields)

    await run_in_threadpool(write)
