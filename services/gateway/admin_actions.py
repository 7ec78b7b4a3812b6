"""The one place where the gateway records an admin action on many tasks or on dead letters.

Bulk retries and revokes (:mod:`services.gateway.bulk`) and dead-letter replays and drops
(:mod:`services.gateway.routes.dead_letters`) all call :func:`record_admin_action` once per request, with
who did it, what and on which ids. Today that is a structured log line (logger ``mallops.audit``).
"""

from __future__ import annotations

import json
import logging
from typing import Any

from shared.tokens import Principal

log = logging.getLogger("mallops.audit")


def record_admin_action(principal: Principal, action: str, **details: Any) -> None:
    """Record ``action`` (``tasks.retry``, ``tasks.revoke``, ``dead_letters.replay``, ``dead_letters.drop``).

    TODO(issue 14, audit trail): also call its ``record_audit(...)`` here, with the same fields, so that
    every bulk action and replay is a row of ``audit_log``.
    """
    log.info(
        "admin action %s by %s (%s): %s",
        action,
        principal.name,
        principal.role,
        json.dumps(details, default=str, separators=(",", ":")),
    )
