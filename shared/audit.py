"""The audit trail: one ``audit_log`` row per security-relevant action, allowed or refused.

Recorded by the gateway (``services.gateway.audit``) and by ``mallops tokens`` when it works on the
database directly. ``details`` never holds a secret: keys that name one (token, secret, password,
authorization) are dropped before anything is written, whatever the caller passed. Rows older than
``MALLOPS_AUDIT_TTL_DAYS`` are deleted by ``cleanup_expired_data``.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import and_, or_, select
from sqlalchemy.orm import Session

from shared.cursors import decode_cursor, encode_cursor
from shared.models import AuditEntry, utcnow

MAX_PAGE = 500
OUTCOMES = ("ok", "denied", "failed")
SECRET_WORDS = ("token", "secret", "password", "authorization", "cookie")
# the actions recorded, as they appear in the `action` column
TOKEN_CREATE = "token.create"  # noqa: S105 - an action name
TOKEN_REVOKE = "token.revoke"  # noqa: S105 - an action name
SCHEDULE_CREATE = "schedule.create"
SCHEDULE_UPDATE = "schedule.update"
SCHEDULE_DELETE = "schedule.delete"
SCHEDULE_RUN = "schedule.run"
TASK_SUBMIT = "task.submit"  # refused submissions, and every export_data (allowed or not)
TASK_REVOKE = "task.revoke"
TASK_RETRY = "task.retry"
TASKS_BULK = "tasks.bulk"  # a batch submission, or any bulk retry/revoke
DEAD_LETTER_REPLAY = "dead_letter.replay"
DEAD_LETTER_DROP = "dead_letter.drop"
EXPORT_DOWNLOAD = "export.download"
REPORT_DOWNLOAD = "report.download"
WORKFLOW_SUBMIT = "workflow.submit"
WORKFLOW_REVOKE = "workflow.revoke"
WORKFLOW_RETRY = "workflow.retry"
PERMISSION_DENIED = "permission.denied"  # a 403 on an endpoint that is not one of the actions above


@dataclass(frozen=True)
class AuditPage:
    items: list[dict[str, Any]]
    next_cursor: str | None


def clean_details(details: Mapping[str, Any] | None) -> dict[str, Any]:
    """``details`` without any key that names a secret (at any depth)."""

    def clean(value: Any) -> Any:
        if isinstance(value, Mapping):
            return {
                str(k): clean(v) for k, v in value.items() if not any(word in str(k).lower() for word in SECRET_WORDS)
            }
        if isinstance(value, list | tuple):
            return [clean(v) for v in value]
        if isinstance(value, str | int | float | bool) or value is None:
            return value
        return str(value)

    return clean(dict(details or {}))  # type: ignore[no-any-return]


def record(
    session: Session,
    *,
    actor: str | None,
    action: str,
    outcome: str = "ok",
    target: str | None = None,
    request_id: str | None = None,
    client: str | None = None,
    details: Mapping[str, Any] | None = None,
    at: dt.datetime | None = None,
) -> None:
    """Add one audit row to ``session`` (committed with it)."""
    if outcome not in OUTCOMES:
        raise ValueError(f"outcome must be one of {', '.join(OUTCOMES)}")
    session.add(
        AuditEntry(
            at=at or utcnow(),
            actor=actor[:100] if actor else None,
            action=action[:64],
            target=target[:300] if target else None,
            outcome=outcome,
            request_id=request_id,
            client=client[:100] if client else None,
            details=clean_details(details),
        )
    )


def entry_dict(row: AuditEntry) -> dict[str, Any]:
    return {
        "id": row.id,
        "at": row.at,
        "actor": row.actor,
        "action": row.action,
        "target": row.target,
        "outcome": row.outcome,
        "request_id": row.request_id,
        "client": row.client,
        "details": row.details or {},
    }


def query(
    session: Session,
    *,
    actor: str | None = None,
    action: str | None = None,
    since: dt.datetime | None = None,
    until: dt.datetime | None = None,
    cursor: str | None = None,
    limit: int = 50,
) -> AuditPage:
    """Entries newest first (``at``, then id); ``since`` inclusive, ``until`` exclusive; ``next_cursor``
    continues. ValueError for a bad cursor or limit."""
    if not 1 <= limit <= MAX_PAGE:
        raise ValueError(f"limit must be between 1 and {MAX_PAGE}")
    clauses = []
    if actor:
        clauses.append(AuditEntry.actor == actor)
    if action:
        clauses.append(AuditEntry.action == action)
    if since is not None:
        clauses.append(AuditEntry.at >= since)
    if until is not None:
        clauses.append(AuditEntry.at < until)
    if cursor:
        after_at, after_id = decode_cursor(cursor)
        if after_at is None or not after_id.isdigit():
            raise ValueError("invalid cursor")
        clauses.append(or_(AuditEntry.at < after_at, and_(AuditEntry.at == after_at, AuditEntry.id < int(after_id))))
    rows = list(
        session.scalars(
            select(AuditEntry).where(*clauses).order_by(AuditEntry.at.desc(), AuditEntry.id.desc()).limit(limit + 1)
        )
    )
    more = len(rows) > limit
    rows = rows[:limit]
    next_cursor = encode_cursor(rows[-1].at, str(rows[-1].id)) if more and rows else None
    return AuditPage([entry_dict(row) for row in rows], next_cursor)
