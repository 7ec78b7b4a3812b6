"""FastAPI dependencies as ``Annotated`` aliases, so that routes stay short."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

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


async def current_principal(
    request: Request,
    runtime: RuntimeDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
) -> Principal:
    """The caller, from ``Authorization: Bearer <token>``; also applies the per-token rate limit.

    Requests without a valid token (missing, unknown, expired, revoked) are counted per client address;
    past ``MALLOPS_AUTH_FAILURES_PER_MINUTE`` they are 429 before the database is asked.
    """
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
    decision = await runtime.limiter.hit(principal.name, read=TOKENS_EPOCH_KEY)
    if runtime.tokens.epoch_changed(decision.read) and known:  # a token was revoked since it was verified
        principal = await runtime.tokens.principal(token)
        if principal is None or principal.expired():
            raise _unauthorized("the API token is unknown, expired or revoked")
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
