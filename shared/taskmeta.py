"""What the gateway records about a task it submitted, in the cache Redis: shared with beat, which
publishes deferred one-off runs (``shared/deferred.py``) and records them exactly as the gateway does.

Per task a JSON string ``mallops:gw:task:<id>`` (owner, task_name, queue, args, kwargs, submitted_at,
retry_of) kept ``MALLOPS_TASK_META_TTL_SECONDS``, dropped by the monitor once the task's history row is
final (``MALLOPS_TASK_META_FINISHED_TTL_SECONDS``); sorted sets list recent tasks overall and per owner
(score: submission time) and each owner's unfinished tasks (the quota).
"""

from __future__ import annotations

import datetime as dt
import json
import time
from dataclasses import dataclass, field
from typing import Any

import redis

from shared.contracts import GATEWAY_KEY_PREFIX

META_KEY = f"{GATEWAY_KEY_PREFIX}task:"
RECENT_ALL = f"{GATEWAY_KEY_PREFIX}recent"
RECENT_OWNER = f"{GATEWAY_KEY_PREFIX}recent:"
UNFINISHED = f"{GATEWAY_KEY_PREFIX}unfinished:"
RECENT_MAX = 100_000
RECENT_OWNER_MAX = 20_000


@dataclass
class TaskMeta:
    task_id: str
    task_name: str
    queue: str
    owner: str
    args: list[Any] = field(default_factory=list)
    kwargs: dict[str, Any] = field(default_factory=dict)
    submitted_at: dt.datetime | None = None
    retry_of: str | None = None

    def to_json(self) -> str:
        data: dict[str, Any] = {
            "task_name": self.task_name,
            "queue": self.queue,
            "owner": self.owner,
            "args": self.args,
            "kwargs": self.kwargs,
            "submitted_at": (self.submitted_at or dt.datetime.now(dt.UTC)).isoformat(),
        }
        if self.retry_of:
            data["retry_of"] = self.retry_of
        return json.dumps(data, separators=(",", ":"))

    @classmethod
    def from_json(cls, task_id: str, raw: str | None) -> TaskMeta | None:
        if not raw:
            return None
        try:
            data = json.loads(raw)
        except ValueError:
            return None
        if not isinstance(data, dict) or "task_name" not in data:
            return None
        submitted = data.get("submitted_at")
        return cls(
            task_id=task_id,
            task_name=str(data["task_name"]),
            queue=str(data.get("queue") or ""),
            owner=str(data.get("owner") or ""),
            args=list(data.get("args") or []),
            kwargs=dict(data.get("kwargs") or {}),
            submitted_at=dt.datetime.fromisoformat(submitted) if submitted else None,
            retry_of=data.get("retry_of"),
        )


# ARGV: ttl, now, the all-tasks sorted set, a JSON array of [meta key, meta JSON, task id, owner's sorted set]
# (every key is built by the gateway, all in the cache db)
RECORD_SCRIPT = """
local ttl, now, recent = ARGV[1], ARGV[2], ARGV[3]
local rows = cjson.decode(ARGV[4])
for _, row in ipairs(rows) do
  redis.call('SET', row[1], row[2], 'EX', ttl)
  redis.call('ZADD', recent, now, row[3])
  redis.call('ZADD', row[4], now, row[3])
end
return #rows
"""


def record_published(client: redis.Redis[str], meta: TaskMeta, ttl: int, now: float | None = None) -> None:
    """Record a task published by another process than the gateway (beat publishing a deferred run) as
    the gateway records its own: metadata, recent lists and, from now on, the owner's unfinished tasks."""
    now = time.time() if now is None else now
    row = [META_KEY + meta.task_id, meta.to_json(), meta.task_id, RECENT_OWNER + meta.owner]
    with client.pipeline(transaction=True) as pipe:
        pipe.eval(RECORD_SCRIPT, 0, ttl, now, RECENT_ALL, json.dumps([row], separators=(",", ":")))
        pipe.expire(RECENT_OWNER + meta.owner, ttl)
        pipe.zadd(UNFINISHED + meta.owner, {meta.task_id: now})
        pipe.expire(UNFINISHED + meta.owner, ttl)
        pipe.execute()
