"""What the gateway knows about the tasks it submitted, in Redis, and how it reads Celery's results.

Per task a JSON string ``mallops:gw:task:<id>`` (owner, task_name, queue, args, kwargs, submitted_at, retry_of)
written before the message is published, kept ``MALLOPS_TASK_META_TTL_SECONDS`` (default 7 days) or, once
the monitor has written the task's final state into ``task_history``, dropped (or kept
``MALLOPS_TASK_META_FINISHED_TTL_SECONDS``): the task view then reads the history (docs/capacity.md).
Sorted sets list recent tasks overall and per owner (score: submission time) and each owner's unfinished
tasks (the quota). Older tasks are found in the monitor's ``task_history`` table instead.

Results are read straight from the result backend's keys (``celery-task-meta-<id>``, JSON), asynchronously,
so that no request blocks the event loop and no result subscription is left behind.
"""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
import json
import time
from collections.abc import Iterable, Sequence
from typing import Any

import redis.asyncio as aioredis
from kombu.utils.json import loads as kombu_loads
from redis.exceptions import NoScriptError

from services.gateway.ratelimit import HIT_FUNCTION
from shared.contracts import RESULT_KEY_PREFIX
from shared.taskmeta import (
    META_KEY,
    RECENT_ALL,
    RECENT_MAX,
    RECENT_OWNER,
    RECENT_OWNER_MAX,
    RECORD_SCRIPT,
    UNFINISHED,
    TaskMeta,
)

# an unfinished task that nothing has been heard of for this long no longer counts against the quota
UNFINISHED_MAX_AGE = 24 * 3600

Pushes = tuple[int, list[tuple[str, str]]]  # the broker's database, and (list key, message) to LPUSH there

# ARGV[1..4] as RECORD_SCRIPT's (which runs as a function of them), then the broker's database, the cache's
# database and a JSON array of [list key, message]. The messages are pushed in the broker's database and the
# script selects the cache's again even when a push fails (before Redis 7 a script's SELECT stays with the
# connection). Returns the number of messages pushed, or the first push's error.
RECORD_AND_PUSH = f"""
local function record(ARGV)
{RECORD_SCRIPT}
end
record({{ARGV[1], ARGV[2], ARGV[3], ARGV[4]}})
local pushes = cjson.decode(ARGV[7])
redis.call('SELECT', ARGV[5])
local failed = nil
for _, push in ipairs(pushes) do
  local answer = redis.pcall('LPUSH', push[1], push[2])
  if type(answer) == 'table' and answer.err then
    failed = answer
    break
  end
end
redis.call('SELECT', ARGV[6])
if failed then return failed end
return #pushes
"""


# Codes of LIMIT_RECORD_AND_PUSH's answer {code, allowed, remaining, wait ms or count, epoch}
PUSHED, HIT_ONLY, QUOTA_FULL = 1, 2, 3

# ``POST /api/v1/tasks`` in one round trip: the token's rate-limit hit (ratelimit.HIT_FUNCTION) and the
# revocation counter first, then the owner's quota (as _RESERVE), then RECORD_AND_PUSH. ARGV[1..7] as
# RECORD_AND_PUSH's; ARGV[8..11] rate_limit_hit's (log, window, limit, member); ARGV[12] the revocation
# counter's key, ARGV[13] its value as this process last saw it, ARGV[14] '1' when it saw none; ARGV[15] the
# owner's unfinished set ('' for no quota), ARGV[16..18] the quota's limit, now and ttl, ARGV[19..] task ids.
# A refused request records nothing but is not counted; when the counter moved (a token was revoked) or the
# limit is reached the script stops after the hit (HIT_ONLY) and the gateway decides as for any request; a
# full quota stops it after the hit too (QUOTA_FULL: the gateway prunes and reserves as before). The epoch is
# last, as Lua's false ends an array.
LIMIT_RECORD_AND_PUSH = (
    HIT_FUNCTION
    + f"""
local function record_and_push(ARGV)
{RECORD_AND_PUSH}
end
local epoch = redis.call('GET', ARGV[12])
local allowed, remaining, wait = rate_limit_hit(ARGV[8], ARGV[9], ARGV[10], ARGV[11])
local changed
if ARGV[14] == '1' then changed = epoch ~= false else changed = epoch ~= ARGV[13] end
if changed or allowed == 0 then return {{{HIT_ONLY}, allowed, remaining, wait, epoch}} end
if ARGV[15] ~= '' then
  local n = redis.call('ZCARD', ARGV[15])
  if n + (#ARGV - 18) > tonumber(ARGV[16]) then return {{{QUOTA_FULL}, allowed, remaining, n, epoch}} end
  for i = 19, #ARGV do redis.call('ZADD', ARGV[15], ARGV[17], ARGV[i]) end
  redis.call('EXPIRE', ARGV[15], ARGV[18])
end
local pushed = record_and_push({{ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6], ARGV[7]}})
if type(pushed) == 'table' then return pushed end
return {{{PUSHED}, allowed, remaining, pushed, epoch}}
"""
)


@functools.cache
def _digest(script: str) -> str:
    """The SHA-1 Redis knows ``script`` by (``EVALSHA``)."""
    return hashlib.sha1(script.encode(), usedforsecurity=False).hexdigest()


class TaskStore:
    def __init__(self, cache: aioredis.Redis[str], results: aioredis.Redis[str], ttl: int) -> None:
        self.cache = cache
        self.results = results
        self.ttl = ttl

    # -- metadata ----------------------------------------------------------------------------

    async def record(
        self, metas: Sequence[TaskMeta], then_push: Pushes | None = None, limited: Sequence[Any] = ()
    ) -> Any:
        """Store the metadata of tasks about to be published: one round trip (a script that SETs every
        task's JSON with its TTL, and the sorted-set additions) however many tasks there are.

        With ``then_push`` (the broker's database on this Redis server, and its LPUSHes) the same script then
        publishes the messages: metadata and messages in one round trip (docs/performance.md). With
        ``limited`` too (LIMIT_RECORD_AND_PUSH's ARGV from the 8th on: rate limit, revocation counter, quota)
        the script checks those first; returns its answer."""
        now = time.time()
        owners = sorted({m.owner for m in metas})
        rows = [[META_KEY + m.task_id, m.to_json(), m.task_id, RECENT_OWNER + m.owner] for m in metas]
        # one argument for all tasks: packing thousands of separate arguments costs more than the work
        record = [self.ttl, now, RECENT_ALL, json.dumps(rows, separators=(",", ":"))]
        script, arguments = RECORD_SCRIPT, record
        if then_push is not None:
            db, pushes = then_push
            cache_db = int(self.cache.connection_pool.connection_kwargs.get("db", 0) or 0)
            script = LIMIT_RECORD_AND_PUSH if limited else RECORD_AND_PUSH
            arguments = [*record, db, cache_db, json.dumps(pushes, separators=(",", ":")), *limited]
        for _ in range(2):
            async with self.cache.pipeline(transaction=False) as pipe:
                # by its digest: the scripts are kilobytes, sent and hashed by Redis on every EVAL
                pipe.evalsha(_digest(script), 0, *arguments)
                # keep the lists bounded (cheap unless a set has grown past its bound)
                pipe.zremrangebyrank(RECENT_ALL, 0, -RECENT_MAX - 1)
                pipe.zremrangebyscore(RECENT_ALL, "-inf", now - self.ttl)
                for owner in owners:
                    pipe.expire(RECENT_OWNER + owner, self.ttl)
                    pipe.zremrangebyrank(RECENT_OWNER + owner, 0, -RECENT_OWNER_MAX - 1)
                try:
                    return (await pipe.execute())[0]
                except NoScriptError:  # a restarted or flushed server: nothing ran; load it and go again
                    await self.cache.script_load(script)  # type: ignore[no-untyped-call]
        raise NoScriptError("the submission script could not be loaded")

    async def forget(self, metas: Sequence[TaskMeta]) -> None:
        """Undo :meth:`record` for tasks that could not be published."""
        async with self.cache.pipeline(transaction=False) as pipe:
            for meta in metas:
                pipe.delete(META_KEY + meta.task_id)
                pipe.zrem(RECENT_ALL, meta.task_id)
                pipe.zrem(RECENT_OWNER + meta.owner, meta.task_id)
            await pipe.execute()

    async def load(self, task_id: str) -> TaskMeta | None:
        return TaskMeta.from_json(task_id, await self.cache.get(META_KEY + task_id))

    async def load_many(self, task_ids: Sequence[str]) -> list[TaskMeta | None]:
        if not task_ids:
            return []
        rows = await self.cache.mget([META_KEY + task_id for task_id in task_ids])
        return [TaskMeta.from_json(task_id, row) for task_id, row in zip(task_ids, rows, strict=True)]

    async def recent_ids(self, owner: str | None, start: int, stop: int) -> list[str]:
        key = RECENT_ALL if owner is None else RECENT_OWNER + owner
        return await self.cache.zrevrange(key, start, stop)

    async def recent_count(self, owner: str | None) -> int:
        key = RECENT_ALL if owner is None else RECENT_OWNER + owner
        count: int = await self.cache.zcard(key)
        return count

    # -- results -----------------------------------------------------------------------------

    async def result(self, task_id: str) -> dict[str, Any] | None:
        return decode_result(await self.results.get(RESULT_KEY_PREFIX + task_id))

    async def results_many(self, task_ids: Sequence[str]) -> list[dict[str, Any] | None]:
        if not task_ids:
            return []
        raw = await self.results.mget([RESULT_KEY_PREFIX + task_id for task_id in task_ids])
        return [decode_result(value) for value in raw]

    # -- quota -------------------------------------------------------------------------------

    async def reserve(self, owner: str, task_ids: Sequence[str], limit: int) -> int | None:
        """Atomically count ``task_ids`` as unfinished tasks of ``owner`` if that keeps them within
        ``limit``; None when reserved, else the number of unfinished tasks the owner already has."""
        result: int = await self.cache.eval(  # type: ignore[no-untyped-call]
            _RESERVE, 1, UNFINISHED + owner, limit, time.time(), self.ttl, *task_ids
        )
        return None if result < 0 else result

    async def release(self, owner: str, task_ids: Sequence[str]) -> None:
        if task_ids:
            await self.cache.zrem(UNFINISHED + owner, *task_ids)

    async def unfinished(self, owner: str) -> list[tuple[str, float]]:
        return await self.cache.zrange(UNFINISHED + owner, 0, -1, withscores=True)

    async def prune_unfinished(self, owner: str, finished: Iterable[str]) -> None:
        """Drop tasks that have finished and entries too old to be trusted."""
        async with self.cache.pipeline(transaction=False) as pipe:
            done = list(finished)
            if done:
                pipe.zrem(UNFINISHED + owner, *done)
            pipe.zremrangebyscore(UNFINISHED + owner, "-inf", time.time() - UNFINISHED_MAX_AGE)
            await pipe.execute()


# KEYS[1]: the owner's unfinished set; ARGV: limit, now, ttl, task ids...
_RESERVE = """
local n = redis.call('ZCARD', KEYS[1])
local wanted = #ARGV - 3
if n + wanted > tonumber(ARGV[1]) then return n end
for i = 4, #ARGV do redis.call('ZADD', KEYS[1], ARGV[2], ARGV[i]) end
redis.call('EXPIRE', KEYS[1], ARGV[3])
return -1
"""


def decode_result(raw: str | None) -> dict[str, Any] | None:
    """A result backend value (Celery's JSON meta) as a dict, or None."""
    if not raw:
        return None
    try:
        value = kombu_loads(raw)  # type: ignore[no-untyped-call]
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def parse_time(value: Any) -> dt.datetime | None:
    if isinstance(value, dt.datetime):
        return value if value.tzinfo else value.replace(tzinfo=dt.UTC)
    if isinstance(value, str) and value:
        try:
            parsed = dt.datetime.fromisoformat(value)
        except ValueError:
            return None
        return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC)
    return None
