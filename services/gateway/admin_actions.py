"""The one place where the gateway records an action on many tasks or on dead letters in the audit trail.

Bulk retries and revokes (``routes/bulk``) and dead-letter replays and drops (``routes/dead_letters``) call
:func:`record_admin_action` once per request: the audit trail (``shared.audit``, ``GET /api/v1/audit``)
gets a row with who did it (the token), the action, the target and what was selected and done.
"""

from __future__ import annotations

from typing import Any

from fastapi import Request

from services.gateway import audit as gateway_audit


async def record_admin_action(request: Request, action: str, target: str, **details: Any) -> None:
    """Record ``action`` (``shared.audit``: ``tasks.bulk``, ``dead_letter.replay``, ``dead_letter.drop``)."""
    await gateway_audit.record(request, action, target=target, details=details)
