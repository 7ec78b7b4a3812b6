"""Deleting mallops cache keys by prefix, with SCAN (never KEYS, which blocks Redis on a big keyspace).

Only keys under ``mallops:`` are touched, and never the platform's own state that shares the database:
the beat schedule, the event stream, worker heartbeats, the access-log buffer and the gateway's task store.
"""

from __future__ import annotations

import re
from typing import Any

import redis

from shared.contracts import (
    ACCESS_LOG_BUFFER,
    EVENT_STREAM,
    GATEWAY_KEY_PREFIX,
    KEY_PREFIX,
    REDBEAT_KEY_PREFIX,
    WORKERS_KEY,
)
from shared.errors import PermanentError

# state, not cache: deleting it would lose schedules, events, access-log entries or task ownership
PROTECTED_PREFIXES: tuple[str, ...] = (
    REDBEAT_KEY_PREFIX,
    EVENT_STREAM,
    WORKERS_KEY,
    ACCESS_LOG_BUFFER,
    GATEWAY_KEY_PREFIX,
)
SCAN_COUNT = 500
_GLOB_SPECIAL = re.compile(r"([*?\[\]\\])")


def delete_by_prefix(client: redis.Redis[str], prefix: str, batch: int = SCAN_COUNT) -> dict[str, Any]:
    """UNLINK every key starting with ``prefix`` (which must start with ``mallops:``) except protected ones."""
    if not prefix.startswith(KEY_PREFIX):
        raise PermanentError(f"refusing to delete keys outside {KEY_PREFIX!r} (prefix {prefix!r})")
    pattern = _GLOB_SPECIAL.sub(r"\\\1", prefix) + "*"
    deleted = protected = 0
    pending: list[str] = []
    for key in client.scan_iter(match=pattern, count=batch):
        if key.startswith(PROTECTED_PREFIXES):
            protected += 1
            continue
        pending.append(key)
        if len(pending) >= batch:
            deleted += int(client.unlink(*pending))
            pending.clear()
    if pending:
        deleted += int(client.unlink(*pending))
    return {"prefix": prefix, "deleted": deleted, "protected": protected}
