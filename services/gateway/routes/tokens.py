"""``/api/v1/tokens``: create, list and revoke API tokens (``tokens.manage``, admin).

The secret is in the answer to ``POST`` only; the database keeps its sha256. Revoking is final and keeps
the row, so that the audit trail's actor names stay meaningful.
"""

from __future__ import annotations

import datetime as dt
import logging
from typing import Annotated

from fastapi import APIRouter, Path, Request
from pydantic import BaseModel, Field
from redis.exceptions import RedisError
from starlette.concurrency import run_in_threadpool

from services.gateway import audit as gateway_audit
from services.gateway import authz
from services.gateway.deps import RuntimeDep, SessionDep
from services.gateway.problems import ProblemError
from services.gateway.routes import API_PREFIX
from services.gateway.runtime import Runtime
from shared import audit, permissions, tokens
from shared.contracts import TOKENS_EPOCH_KEY
from shared.permissions import Role
from shared.tokens import Principal, TokenInfo

log = logging.getLogger("mallops.gateway")

router = APIRouter(prefix=API_PREFIX, tags=["tokens"])
Manager = Annotated[Principal, authz.requires(permissions.TOKENS_MANAGE)]
TokenName = Annotated[str, Path(pattern=tokens.NAME_PATTERN.pattern, description="The token's name.")]


class TokenRequest(BaseModel):
    name: str = Field(pattern=tokens.NAME_PATTERN.pattern, description="Who the token is for; owns its tasks.")
    role: Role
    stores: list[Annotated[int, Field(ge=1, le=2**31 - 1)]] | None = Field(
        default=None, min_length=1, max_length=1000, description="Only these stores' data (store_manager: required)."
    )
    expires_at: dt.datetime | None = Field(default=None, description="When it stops working (with a timezone).")


class TokenOut(BaseModel):
    name: str
    role: str
    prefix: str = Field(description="The first characters of the secret, to recognise it.")
    active: bool
    stores: list[int] | None
    created_at: dt.datetime
    expires_at: dt.datetime | None
    revoked_at: dt.datetime | None
    last_used_at: dt.datetime | None


class TokenCreated(TokenOut):
    token: str = Field(description="The secret: shown this once, never again.")


class TokenList(BaseModel):
    count: int
    results: list[TokenOut]


def _out(info: TokenInfo) -> TokenOut:
    return TokenOut.model_validate(info.as_dict())


def _problem(exc: tokens.TokenError) -> ProblemError:
    status = 409 if "already exists" in str(exc) else 422
    return ProblemError(
        status,
        str(exc),
        kind="invalid-token-request",
        errors=[{"loc": ["body"], "msg": str(exc), "type": "value_error"}] if status == 422 else None,
    )


@router.post(
    "/tokens",
    status_code=201,
    response_model=TokenCreated,
    summary="Create a token",
    responses={409: {"description": "A token with this name exists (revoked ones too)."}},
)
def create_token(body: TokenRequest, principal: Manager, runtime: RuntimeDep, request: Request) -> TokenCreated:
    """Create a token; the answer holds its secret, which is never shown again."""
    # committed before the answer (not when SessionDep closes), so that the token works at once
    with runtime.sessions() as session, session.begin():
        try:
            secret = tokens.create_token(session, body.name, body.role, stores=body.stores, expires_at=body.expires_at)
        except tokens.TokenError as exc:
            raise _problem(exc) from exc
        info = tokens.get_token(session, body.name)
        assert info is not None
        details = {"role": body.role, "stores": info.stores, "expires_at": body.expires_at}
        gateway_audit.record_in(session, request, audit.TOKEN_CREATE, target=body.name, details=details)
    return TokenCreated(**_out(info).model_dump(), token=secret)


@router.get("/tokens", response_model=TokenList, summary="List tokens")
def list_tokens(principal: Manager, session: SessionDep) -> TokenList:
    """Every token, revoked ones included; never a secret."""
    rows = [_out(info) for info in tokens.list_tokens(session)]
    return TokenList(count=len(rows), results=rows)


@router.delete("/tokens/{name}", response_model=TokenOut, summary="Revoke a token")
async def revoke_token(name: TokenName, principal: Manager, runtime: RuntimeDep, request: Request) -> TokenOut:
    """Revoke for good (the row stays); every gateway process refuses it from the next request on."""
    info = await run_in_threadpool(_revoke, name, runtime, request)
    try:
        await runtime.cache.incr(TOKENS_EPOCH_KEY)  # the other processes forget the tokens they verified
    except RedisError as exc:  # they refuse it within MALLOPS_TOKEN_CACHE_SECONDS
        log.warning("token %s revoked, but the other gateway processes were not told: %s", name, exc)
    runtime.tokens.clear()
    return _out(info)


def _revoke(name: str, runtime: Runtime, request: Request) -> TokenInfo:
    with runtime.sessions() as session, session.begin():  # committed before the answer
        try:
            changed = tokens.revoke_token(session, name)
        except tokens.TokenError as exc:
            raise ProblemError(404, str(exc), kind="unknown-token") from exc
        session.flush()
        info = tokens.get_token(session, name)
        assert info is not None
        details = {"already_revoked": not changed}
        gateway_audit.record_in(session, request, audit.TOKEN_REVOKE, target=name, details=details)
    return info
