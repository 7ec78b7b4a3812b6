"""Console sign-in sessions (kept in Redis) and CSRF tokens (signed with itsdangerous).

A session is a random id in an HttpOnly, SameSite=Strict cookie (``Secure`` behind HTTPS); Redis keeps,
under the sha256 of that id, the sha256 of the API token that signed in (never the token) for
``MALLOPS_CONSOLE_SESSION_HOURS``. Every request looks the token up again (through the gateway's token
cache), so a revoked token ends its console sessions within ``MALLOPS_TOKEN_CACHE_SECONDS``; signing out
deletes the key.

CSRF: every form carries a token that itsdangerous signs (HMAC-SHA1 over a key derivation, with a
timestamp) around a value bound to the session (the sha256 of ``csrf:`` + session id): the signed
double-submit pattern. A forged request cannot make one without the key, and one taken from another
session does not match. The sign-in form, before any session, binds its token to a random value kept in a
short-lived cookie of its own. The key is ``MALLOPS_CONSOLE_SECRET``, or a random one created once in Redis,
so that every gateway process signs and checks alike.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import time
from dataclasses import dataclass

import redis.asyncio as aioredis
from fastapi import Request
from fastapi.responses import Response
from itsdangerous import BadSignature, URLSafeTimedSerializer

from shared.settings import Settings

SESSION_COOKIE = "mallops_console"
LOGIN_COOKIE = "mallops_console_login"
SESSION_KEY = "mallops:console:session:"
SECRET_KEY = "mallops:console:secret"  # noqa: S105 - the Redis key's name, not a secret
CSRF_FIELD = "csrf_token"
LOGIN_FORM_SECONDS = 3600


def _digest(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


@dataclass(frozen=True)
class ConsoleSession:
    session_id: str
    token_digest: str
    created_at: float

    @property
    def csrf_binding(self) -> str:
        return _digest("csrf:" + self.session_id)


def is_https(request: Request) -> bool:
    """Behind HTTPS: the request's own scheme, or the proxy's ``X-Forwarded-Proto``."""
    forwarded = request.headers.get("x-forwarded-proto", "").split(",")[0].strip().lower()
    return request.url.scheme == "https" or forwarded == "https"


class ConsoleSessions:
    def __init__(self, cache: aioredis.Redis[str], settings: Settings) -> None:
        self._cache = cache
        self._settings = settings
        self.ttl = int(settings.console_session_hours * 3600)
        self._serializer: URLSafeTimedSerializer | None = None

    # -- sessions --------------------------------------------------------------------------------

    async def create(self, token_digest: str) -> ConsoleSession:
        session = ConsoleSession(secrets.token_urlsafe(32), token_digest, time.time())
        value = json.dumps({"token": token_digest, "created": session.created_at})
        await self._cache.set(SESSION_KEY + _digest(session.session_id), value, ex=self.ttl)
        return session

    async def load(self, session_id: str | None) -> ConsoleSession | None:
        if not session_id or len(session_id) > 100:
            return None
        raw = await self._cache.get(SESSION_KEY + _digest(session_id))
        if raw is None:
            return None
        data = json.loads(raw)
        return ConsoleSession(session_id, str(data["token"]), float(data["created"]))

    async def delete(self, session_id: str) -> None:
        await self._cache.delete(SESSION_KEY + _digest(session_id))

    def set_cookie(self, response: Response, request: Request, session: ConsoleSession) -> None:
        response.set_cookie(
            SESSION_COOKIE,
            session.session_id,
            max_age=self.ttl,
            path="/",
            httponly=True,
            secure=is_https(request),
            samesite="strict",
        )

    # -- CSRF ------------------------------------------------------------------------------------

    async def _signer(self) -> URLSafeTimedSerializer:
        if self._serializer is None:
            key = self._settings.console_secret.get_secret_value()
            if not key:
                await self._cache.set(SECRET_KEY, secrets.token_urlsafe(32), nx=True)
                key = str(await self._cache.get(SECRET_KEY))
            self._serializer = URLSafeTimedSerializer(key, salt="mallops-console-csrf")
        return self._serializer

    async def csrf_token(self, binding: str) -> str:
        return str((await self._signer()).dumps(binding))

    async def csrf_valid(self, token: str | None, binding: str, max_age: int) -> bool:
        if not token or len(token) > 500:
            return False
        try:
            value = (await self._signer()).loads(token, max_age=max_age)
        except BadSignature:  # also SignatureExpired
            return False
        return isinstance(value, str) and hmac.compare_digest(value, binding)
