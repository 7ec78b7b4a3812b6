"""Errors as ``application/problem+json`` (RFC 9457) for every failure, with no stack traces.

Routes raise :class:`ProblemError`; the handlers installed by :func:`install_handlers` turn it, Starlette's
HTTP errors (unknown route 404, 405), request validation errors (422) and anything unexpected (500)
into a problem document: ``type``, ``title``, ``status``, ``detail``, ``instance`` and, for 422, ``errors``.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from http import HTTPStatus
from typing import Any, cast

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, Field
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from sqlalchemy.exc import DataError as SQLAlchemyDataError
from sqlalchemy.exc import OperationalError as SQLAlchemyOperationalError
from starlette.applications import Starlette
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import JSONResponse, Response
from starlette.routing import Match

log = logging.getLogger("mallops.gateway")

PROBLEM_MEDIA_TYPE = "application/problem+json"
ExceptionHandler = Callable[[Request, Exception], Awaitable[Response]]
TYPE_BASE = "urn:mallops:problem:"


class FieldError(BaseModel):
    """One invalid field: where it is (``loc``), what is wrong (``msg``) and the error kind."""

    loc: list[str | int] = Field(description="Path to the field, e.g. ['body', 'kwargs', 'message'].")
    msg: str
    type: str


class Problem(BaseModel):
    """An RFC 9457 problem document."""

    type: str = Field(default="about:blank", description="A URI that identifies the kind of problem.")
    title: str = Field(description="Short summary of the kind of problem.")
    status: int = Field(ge=100, le=599, description="The HTTP status code.")
    detail: str = Field(description="What went wrong with this request, for a human.")
    instance: str | None = Field(default=None, description="The request path this problem is about.")
    permission: str | None = Field(
        default=None, description="On a 403: the permission the token is missing (docs/security.md lists them)."
    )


class ValidationProblem(Problem):
    """A 422 problem with the list of field errors."""

    errors: list[FieldError] = Field(default_factory=list)


class ProblemError(Exception):
    """Raise to answer with a problem document."""

    def __init__(
        self,
        status: int,
        detail: str,
        *,
        kind: str | None = None,
        title: str | None = None,
        headers: Mapping[str, str] | None = None,
        errors: Sequence[Mapping[str, Any]] | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.kind = kind
        self.title = title or _phrase(status)
        self.headers = dict(headers or {})
        self.errors = list(errors) if errors is not None else None
        self.extra = dict(extra or {})


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


def problem_response(
    request: Request | None,
    status: int,
    detail: str,
    *,
    kind: str | None = None,
    title: str | None = None,
    headers: Mapping[str, str] | None = None,
    errors: Sequence[Mapping[str, Any]] | None = None,
    extra: Mapping[str, Any] | None = None,
    instance: str | None = None,
) -> JSONResponse:
    body: dict[str, Any] = {
        "type": f"{TYPE_BASE}{kind}" if kind else "about:blank",
        "title": title or _phrase(status),
        "status": status,
        "detail": detail,
        "instance": instance if instance is not None else (request.url.path if request is not None else None),
    }
    if errors is not None:
        body["errors"] = list(errors)
    for key, value in (extra or {}).items():
        body.setdefault(key, value)
    return JSONResponse(
        jsonable_encoder(body), status_code=status, headers=dict(headers or {}), media_type=PROBLEM_MEDIA_TYPE
    )


def field_errors(raw: Sequence[Any]) -> list[dict[str, Any]]:
    """Pydantic/FastAPI error dicts reduced to loc, msg and type (no echo of the input values)."""
    result: list[dict[str, Any]] = []
    for error in raw:
        loc = [part if isinstance(part, int) else str(part) for part in error.get("loc", ())]
        result.append({"loc": loc, "msg": str(error.get("msg", "invalid value")), "type": str(error.get("type", ""))})
    return result


def describe_errors(errors: Sequence[Mapping[str, Any]], limit: int = 3) -> str:
    parts = [f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in errors[:limit]]
    more = f" (and {len(errors) - limit} more)" if len(errors) > limit else ""
    return "invalid request: " + "; ".join(parts) + more


async def _rate_limit_first(request: Request) -> Response | None:
    """A submission leaves its rate-limit hit to its script (``services.gateway.deps.PendingRateLimit``); a
    request answered otherwise makes it now, so that the limit's 429 comes before any other refusal."""
    pending = getattr(request.state, "rate_limit_pending", None)
    if pending is None or pending.settled:
        return None
    try:
        await pending.settle()
    except ProblemError as refused:
        return await _problem_error(request, refused)
    except (RedisConnectionError, RedisTimeoutError) as exc:
        return await _redis_error(request, exc)
    return None


async def _problem_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ProblemError)
    if (refused := await _rate_limit_first(request)) is not None:
        return refused
    return problem_response(
        request,
        exc.status,
        exc.detail,
        kind=exc.kind,
        title=exc.title,
        headers=exc.headers,
        errors=exc.errors,
        extra=exc.extra,
    )


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    status = exc.status_code
    if status == 404 and exc.detail in (None, "Not Found"):
        detail = f"there is no resource at {request.url.path}"
    elif status == 405:
        detail = f"{request.method} is not allowed on {request.url.path}"
        allowed = _allowed_methods(request)
        if allowed:
            headers = dict(exc.headers or {})
            headers["Allow"] = ", ".join(allowed)
            return problem_response(request, status, detail, headers=headers)
    elif status == 413:
        detail = "the request body is too large"
    else:
        detail = str(exc.detail) if exc.detail else _phrase(status)
    return problem_response(request, status, detail, headers=exc.headers)


def _allowed_methods(request: Request) -> list[str]:
    """Every method some route serves at this path (Starlette names only the first route that matched)."""
    methods: set[str] = set()
    scope = {**request.scope, "method": "GET"}
    for route in getattr(request.app.state, "flat_routes", request.app.routes):
        match, _ = route.matches(scope)
        if match != Match.NONE:
            methods |= set(getattr(route, "methods", None) or ())
    return sorted(methods)


async def _validation_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    if (refused := await _rate_limit_first(request)) is not None:
        return refused
    errors = field_errors(exc.errors())
    return problem_response(
        request,
        422,
        describe_errors(errors),
        kind="validation-error",
        title="Your request parameters didn't validate",
        errors=errors,
    )


async def _redis_error(request: Request, exc: Exception) -> Response:
    log.warning("Redis failed on %s %s: %s", request.method, request.url.path, exc)
    return problem_response(
        request,
        503,
        f"the gateway's Redis cannot be reached ({type(exc).__name__})",
        kind="redis-unavailable",
        headers={"Retry-After": "5"},
    )


async def _database_error(request: Request, exc: Exception) -> Response:
    log.warning("database failed on %s %s: %s", request.method, request.url.path, exc)
    return problem_response(
        request,
        503,
        f"the database cannot be reached ({type(exc).__name__})",
        kind="database-unavailable",
        headers={"Retry-After": "5"},
    )


async def _data_error(request: Request, exc: Exception) -> Response:
    """A value the database refuses to compare or store (e.g. a NUL character in a PostgreSQL filter)."""
    log.info("database refused a value on %s %s: %s", request.method, request.url.path, type(exc).__name__)
    return problem_response(
        request,
        422,
        "a value in this request cannot be used by the database (for example a NUL character)",
        kind="validation-error",
        title="Your request parameters didn't validate",
        errors=[],
    )


async def _unexpected_error(request: Request, exc: Exception) -> Response:
    log.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return problem_response(
        request, 500, "the server failed to handle this request; it has been logged", kind="internal-error"
    )


def exception_handler(app: Starlette, exc: Exception) -> ExceptionHandler | None:
    """The handler Starlette's ExceptionMiddleware would give ``exc`` (the first of its classes, in method
    resolution order, with one), for a layer outside it that answers as the app would (``fast_submit.py``).
    None for what only the handler of ``Exception`` answers: that one is Starlette's ServerErrorMiddleware's,
    outside every middleware, which answers 500 and raises again; such an exception is to be raised."""
    for cls in type(exc).__mro__:
        if cls is Exception:
            return None
        handler = app.exception_handlers.get(cls)
        if handler is not None:
            return cast(ExceptionHandler, handler)
    return None


def install_handlers(app: FastAPI) -> None:
    app.add_exception_handler(ProblemError, _problem_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(RedisConnectionError, _redis_error)
    app.add_exception_handler(RedisTimeoutError, _redis_error)
    app.add_exception_handler(SQLAlchemyOperationalError, _database_error)
    app.add_exception_handler(SQLAlchemyDataError, _data_error)
    app.add_exception_handler(Exception, _unexpected_error)
