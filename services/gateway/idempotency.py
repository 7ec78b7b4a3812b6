"""``Idempotency-Key``: a repeated submission with the same key and body gets the first answer again and
enqueues nothing; the same key with another body is 409.

Per caller, the key is claimed with ``SET NX`` (expiring after ``MALLOPS_IDEMPOTENCY_TTL_SECONDS``, default
a day) before anything is enqueued, holding a fingerprint of the body; once the submission succeeded, the
answer is stored under the key. A submission that failed releases the key, so it can be retried with it.
A request arriving while the first one with its key is still being processed gets 409 as well.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import redis.asyncio as aioredis
from pydantic import BaseModel

from services.gateway.problems import ProblemError
from shared.contracts import GATEWAY_KEY_PREFIX

KEY = f"{GATEWAY_KEY_PREFIX}idem:"
Answer = TypeVar("Answer", bound=BaseModel)


@dataclass(frozen=True)
class Replay:
    status: int
    body: Any


def fingerprint(body: Any) -> str:
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


class IdempotencyClaim:
    def __init__(self, client: aioredis.Redis[str], owner: str, key: str, body: Any, ttl: int) -> None:
        self.client = client
        self.redis_key = KEY + hashlib.sha256(f"{owner}\0{key}".encode()).hexdigest()
        self.fp = fingerprint(body)
        self.ttl = ttl

    async def claim(self) -> Replay | None:
        """None when this request owns the key now; a :class:`Replay` of the first answer otherwise."""
        pending = json.dumps({"fp": self.fp, "state": "pending"})
        for _ in range(3):
            if await self.client.set(self.redis_key, pending, nx=True, ex=self.ttl):
                return None
            raw = await self.client.get(self.redis_key)
            if raw is None:
                continue  # expired or released between SET and GET: try again
            stored = json.loads(raw)
            if stored.get("fp") != self.fp:
                raise ProblemError(
                    409,
                    "this Idempotency-Key was already used with a different request body",
                    kind="idempotency-conflict",
                )
            if stored.get("state") != "done":
                raise ProblemError(
                    409,
                    "a request with this Idempotency-Key is still being processed",
                    kind="idempotency-in-progress",
                    headers={"Retry-After": "1"},
                )
            return Replay(int(stored["status"]), stored["body"])
        raise ProblemError(409, "this Idempotency-Key is changing state too fast; retry", kind="idempotency-conflict")

    async def complete(self, status: int, body: Any) -> None:
        value = json.dumps({"fp": self.fp, "state": "done", "status": status, "body": body}, default=str)
        await self.client.set(self.redis_key, value, ex=self.ttl)

    async def release(self) -> None:
        await self.client.delete(self.redis_key)


async def submit_once(claim: IdempotencyClaim | None, submit: Callable[[], Awaitable[Answer]]) -> Answer | Replay:
    """Run ``submit`` once per claimed key: the first request's answer (202) is stored and replayed to the
    repeats; a submission that fails releases the key. Without a claim, just run it."""
    if claim is not None:
        replay = await claim.claim()
        if replay is not None:
            return replay
    try:
        answer = await submit()
    except BaseException:
        if claim is not None:
            with contextlib.suppress(Exception):
                await claim.release()
        raise
    if claim is not None:
        await claim.complete(202, answer.model_dump(mode="json"))
    return answer
