"""Bearer-token authentication with a short in-process cache.

A verified token is trusted for ``MALLOPS_TOKEN_CACHE_SECONDS`` (default 5 s) before the database is asked
again. A revocation raises a counter in Redis (``TOKENS_EPOCH_KEY``) that every request reads with its
rate-limit round trip; a process that sees it change forgets every token it verified, so a revoked token
is refused by every gateway process from the next request on (within the delay at most when Redis missed
the raise, as from ``mallops tokens revoke`` with no Redis). Unknown tokens are cached as well
(bounded), so that a client hammering with a bad token does not hammer the database. Only the sha256 of
a token is kept in memory.
"""

from __future__ import annotations

import time

from sqlalchemy.orm import Session, sessionmaker
from starlette.concurrency import run_in_threadpool

from shared import tokens
from shared.tokens import Principal

MAX_ENTRIES = 10_000


class TokenCache:
    def __init__(self, sessions: sessionmaker[Session], ttl: float) -> None:
        self._sessions = sessions
        self._ttl = ttl
        self._entries: dict[str, tuple[float, Principal | None]] = {}
        self._epoch: str | None = None  # the last TOKENS_EPOCH_KEY this process saw

    @property
    def epoch(self) -> str | None:
        """The revocation counter as this process last saw it (None: not seen, or not set in Redis)."""
        return self._epoch

    def epoch_changed(self, epoch: str | None) -> bool:
        """Note the revocation counter read from Redis; when it moved, forget every verified token."""
        if epoch == self._epoch:
            return False
        self._epoch = epoch
        self._entries.clear()
        return True

    def cached(self, token: str) -> tuple[bool, Principal | None]:
        """(known, principal) from the cache alone: (False, None) when the database must be asked."""
        hit = self._entries.get(tokens.hash_token(token))
        if hit is not None and hit[0] > time.monotonic():
            return True, hit[1]
        return False, None

    async def principal(self, token: str) -> Principal | None:
        """The principal of an active token, or None."""
        if not token or len(token) > 512:
            return None
        return await self.principal_for_digest(tokens.hash_token(token))

    async def principal_for_digest(self, key: str) -> Principal | None:
        """The principal of the active token whose sha256 is ``key`` (a console session keeps only that)."""
        now = time.monotonic()
        hit = self._entries.get(key)
        if hit is not None and hit[0] > now:
            return hit[1]
        principal = await run_in_threadpool(self._lookup, key)
        if self._ttl > 0:
            if len(self._entries) >= MAX_ENTRIES:
                self._entries.clear()
            self._entries[key] = (now + self._ttl, principal)
        return principal

    def _lookup(self, digest: str) -> Principal | None:
        with self._sessions() as session, session.begin():
            principal = tokens.verify_digest(session, digest)
            if principal is not None:
                tokens.touch_last_used(session, principal.name)
            return principal

    def clear(self) -> None:
        self._entries.clear()
