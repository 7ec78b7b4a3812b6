"""``/api/v1/audit``: the audit trail, newest first, in cursor pages (``audit.read``, admin)."""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any

from fastapi import APIRouter, Query
from pydantic import BaseModel, Field

from services.gateway import authz
from services.gateway.deps import SessionDep
from services.gateway.problems import ProblemError
from services.gateway.routes import API_PREFIX
from shared import audit, permissions
from shared.tokens import Principal

router = APIRouter(prefix=API_PREFIX, tags=["audit"])
Auditor = Annotated[Principal, authz.requires(permissions.AUDIT_READ)]


class AuditItem(BaseModel):
    id: int
    at: dt.datetime
    actor: str | None = Field(description="The token's name (None: no valid token).")
    action: str = Field(description="token.create, task.revoke, export.download, ... (docs/security.md)")
    target: str | None
    outcome: str = Field(description="ok, denied or failed")
    request_id: str | None
    client: str | None = Field(description="The client's address.")
    details: dict[str, Any]


class AuditPage(BaseModel):
    count: int
    results: list[AuditItem]
    next_cursor: str | None = Field(description="Pass as `cursor` for the next page; None on the last.")


def _invalid(name: str, message: str) -> ProblemError:
    return ProblemError(
        422,
        f"invalid audit query: {message}",
        kind="validation-error",
        errors=[{"loc": ["query", name], "msg": message, "type": "value_error"}],
    )


@router.get("/audit", response_model=AuditPage, summary="The audit trail")
def audit_trail(
    principal: Auditor,
    session: SessionDep,
    actor: Annotated[str | None, Query(max_length=100, description="Only this token's actions.")] = None,
    action: Annotated[str | None, Query(max_length=64, description="Only this action.")] = None,
    since: Annotated[dt.datetime | None, Query(description="At or after (ISO 8601 with timezone).")] = None,
    until: Annotated[dt.datetime | None, Query(description="Before (ISO 8601 with timezone).")] = None,
    cursor: Annotated[str | None, Query(max_length=500)] = None,
    limit: Annotated[int, Query(ge=1, le=audit.MAX_PAGE)] = 50,
) -> AuditPage:
    """Who did what: token changes, schedule changes, revokes, retries, bulk actions, dead-letter replays,
    export and report downloads, and every refusal; kept ``MALLOPS_AUDIT_TTL_DAYS``."""
    for name, value in (("since", since), ("until", until)):
        if value is not None and value.tzinfo is None:
            raise _invalid(name, "a timezone is required, e.g. 2026-12-01T00:00:00Z")
    try:
        page = audit.query(session, actor=actor, action=action, since=since, until=until, cursor=cursor, limit=limit)
    except ValueError as exc:
        raise _invalid("cursor", str(exc)) from exc
    items = [AuditItem.model_validate(item) for item in page.items]
    return AuditPage(count=len(items), results=items, next_cursor=page.next_cursor)
