"""FastAPI dependencies as ``Annotated`` aliases, so that routes stay short."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session

from services.gateway.problems import ProblemError
from services.gateway.ratelimit import Decision
from services.gateway.runtime import Runtime
from services.gateway.taskstore import TaskStore
from shared.contracts import TOKENS_EPOCH_KEY
from shared.tokens import Principal

bearer = HTTPBearer(auto_error=False, description="An API token: `mallops tokens create --name NAME --role ROLE`.")


# Dependencies that do no I/O are ``async def``: FastAPI runs a plain ``def`` one in the thread pool, a
# hop per request that costs more than the function itself.
async def get_runtime(request: Request) -> Runtime:
    runtime: Runtime = request.app.state.runtime
    return runtime


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]


def get_session(runtime: RuntimeDep) -> Iterator[Session]:
    with runtime.sessions() as session, session.begin():
        yield session


SessionDep = Annotated[Session, Depends(get_session)]


async def get_store(runtime: RuntimeDep) -> TaskStore:
    return TaskStore(runtime.cache, runtime.results, runtime.settings.task_meta_ttl_seconds)


StoreDep = Annotated[TaskStore, Depends(get_store)]


def _unauthorized(detail: str) -> ProblemError:
    return ProblemError(401, detail, kind="unauthorized", headers={"WWW-Authenticate": 'Bearer realm="mallops"'})


async def _authenticate(
    request: Request, runtime: Runtime, credentials: HTTPAuthorizationCredentials | None
) -> tuple[Principal, str, bool]:
    """The caller, its token and whether the token came from the cache; 401 (or 429 for a client that keeps
    sending bad tokens) otherwise."""
    token = credentials.credentials if credentials is not None else ""
    known, principal = runtime.tokens.cached(token) if token else (True, None)
    if not known:
        await _refuse_blocked_client(request, runtime, await runtime.auth_failures.peek(_client(request)))
        principal = await runtime.tokens.principal(token)
    if principal is None or principal.expired():
        await _refuse_blocked_client(request, runtime, await runtime.auth_failures.hit(_client(request)))
        if not token:
            raise _unauthorized("send an API token: Authorization: Bearer <token>")
        raise _unauthorized("the API token is unknown, expired or revoked")
    request.state.principal = principal.name
    return principal, token, known


@dataclass
class PendingRateLimit:
    """A request authenticated whose rate-limit hit is still to come: :func:`submitting_principal` leaves it
    to the submission script (one round trip for the limit and the submission, ``services/gateway/taskstore.py``),
    and whatever answers the request otherwise calls :meth:`settle` first, so the answer is 429 whenever the
    limit is reached, before 422, 403 or anything else, and every request is counted as before."""

    runtime: Runtime
    principal: Principal
    token: str
    known: bool
    settled: bool = False

    async def settle(self) -> Principal:
        """The rate-limit hit and revocation check of :func:`current_principal`, once."""
        if self.settled:
            return self.principal
        decision = await self.runtime.limiter.hit(self.principal.name, read=TOKENS_EPOCH_KEY)
        return await self.decided(decision)

    def script_args(self) -> list[Any]:
        """The submission script's rate-limit arguments: the hit's, then the revocation counter's key and the
        value this process last saw ('1' after it when none)."""
        seen = self.runtime.tokens.epoch
        hit = self.runtime.limiter.hit_args(self.principal.name)
        return [*hit, TOKENS_EPOCH_KEY, seen or "", "1" if seen is None else "0"]

    async def decided(self, decision: Decision) -> Principal:
        """Apply a hit's decision (made here or by the submission script): 401 for a token revoked since it was
        verified, 429 beyond the limit."""
        self.settled = True
        self.principal = await _after_hit(self.runtime, self.principal, self.token, self.known, decision)
        return self.principal


async def settle_rate_limit(request: Request) -> None:
    """The rate-limit hit a submission left pending, before anything answers the request (a no-op otherwise)."""
    pending: PendingRateLimit | None = getattr(request.state, "rate_limit_pending", None)
    if pending is not None:
        await pending.settle()


async def current_principal(
    request: Request,
    runtime: RuntimeDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
) -> Principal:
    """The caller, from ``Authorization: Bearer <token>``; also applies the per-token rate limit.

    Requests without a valid token (missing, unknown, expired, revoked) are counted per client address;
    past ``MALLOPS_AUTH_FAILURES_PER_MINUTE`` they are 429 before the database is asked.
    """
    principal, token, known = await _authenticate(request, runtime, credentials)
    decision = await runtime.limiter.hit(principal.name, read=TOKENS_EPOCH_KEY)
    return await _after_hit(runtime, principal, token, known, decision)


async def submitting_principal(
    request: Request, runtime: Runtime, credentials: HTTPAuthorizationCredentials | None
) -> Principal:
    """:func:`current_principal` with the rate-limit hit left pending (``request.state.rate_limit_pending``)
    for ``POST /api/v1/tasks``, whose submission script makes it (:class:`PendingRateLimit`)."""
    principal, token, known = await _authenticate(request, runtime, credentials)
    leave_rate_limit_pending(request, runtime, principal, token, known)
    return principal


def cached_principal(runtime: Runtime, token: str) -> Principal | None:
    """The caller when this process's token cache alone vouches for ``token`` (known, active, not expired):
    no I/O and nothing recorded. None when :func:`submitting_principal` must decide (the database, 401, 429)."""
    known, principal = runtime.tokens.cached(token)
    return principal if known and principal is not None and not principal.expired() else None


def leave_rate_limit_pending(
    request: Request, runtime: Runtime, principal: Principal, token: str, known: bool = True
) -> PendingRateLimit:
    """What :func:`submitting_principal` leaves on the request: the caller's name (audit trail, access log)
    and its rate-limit hit, still to make (:class:`PendingRateLimit`)."""
    request.state.principal = principal.name
    pending = PendingRateLimit(runtime, principal, token, known)
    request.state.rate_limit_pending = pending
    return pending


async def _after_hit(runtime: Runtime, principal: Principal, token: str, known: bool, decision: Decision) -> Principal:
    if runtime.tokens.epoch_changed(decision.read) and known:  # a token was revoked since it was verified
        again = await runtime.tokens.principal(token)
        if again is None or again.expired():
            raise _unauthorized("the API token is unknown, expired or revoked")
        principal = again
    if not decision.allowed:
        raise ProblemError(
            429,
            f"rate limit of {decision.limit} requests per minute exceeded for token {principal.name!r}; "
            f"retry in {decision.retry_after} s",
            kind="rate-limited",
            title="Too Many Requests",
            headers={"Retry-After": str(decision.retry_after), "RateLimit-Limit": str(decision.limit)},
        )
    return principal


def _client(request: Request) -> str:
    return request.client.host if request.client else "unknown"


async def _refuse_blocked_client(request: Request, runtime: Runtime, decision: Decision) -> None:
    if not decision.allowed:
        raise ProblemError(
            429,
            f"too many requests without a valid token from {_client(request)} (MALLOPS_AUTH_FAILURES_PER_MINUTE "
            f"is {decision.limit}); retry in {decision.retry_after} s",
            kind="auth-failures",
            title="Too Many Requests",
            headers={"Retry-After": str(decision.retry_after)},
        )


CurrentPrincipal = Annotated[Principal, Depends(current_principal)]
