"""``POST /api/v1/tasks`` below FastAPI: the common single submission without FastAPI's per-request machinery.

Profiled under wrk, most of the gateway's CPU per submission was FastAPI's and Starlette's own work (about
2,350 Python calls a request: routing, dependency solving, the inner middlewares, the response model's
validation and serialization), not the submission's (docs/performance.md). :class:`FastSubmitMiddleware` sits
inside the accounting, body-limit and CORS middlewares (metrics, access log, request id, the body limit and
CORS headers are theirs, as for any request) and answers the usual case itself, with the route's own steps and
functions: the token from the same cache and its rate-limit hit left pending (``deps``), the body validated
as FastAPI validates it, ``prepare``, ``authz.submission_refusal``, ``Submitter.submit`` (its one script),
``authz.audit_submissions``, and the 202 serialized as the route's response model is.

Everything else goes to the FastAPI route, with the body given back, **before anything is recorded**: a
header the route treats apart (Idempotency-Key), a body that is not ``application/json``, a token this process
has not verified in the last ``MALLOPS_TOKEN_CACHE_SECONDS`` (or unknown, expired, revoked), a body that does
not validate, an unknown task or arguments that do not fit, a run deferred to the database, a refusal (403 and
its audit row are the route's). What can only be known once the submission's script ran (429 over the rate
limit or the quota, 401 for a token revoked meanwhile, 503) is answered by the app's own exception handlers
(``problems.exception_handler``), as the route's raise would be. ``MALLOPS_GATEWAY_FAST_SUBMIT=false`` leaves
every request to FastAPI; ``mallops_gateway_fast_submissions_total`` counts the requests answered here.
"""

from __future__ import annotations

import json

from fastapi.security.utils import get_authorization_scheme_param
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from services.gateway import authz
from services.gateway.deps import cached_principal, get_store, leave_rate_limit_pending
from services.gateway.middleware import replaying
from services.gateway.problems import exception_handler
from services.gateway.routes import API_PREFIX
from services.gateway.routes.tasks import submit_task
from services.gateway.runtime import Runtime
from services.gateway.schemas import TaskAccepted, TaskSubmission
from services.gateway.submission import Prepared, Submitter, prepare
from shared.tokens import Principal

PATH = API_PREFIX + "/tasks"
JSON_MEDIA_TYPE = b"application/json"
# request headers the FastAPI route reads: the fast path takes a request only with one of each (Starlette and
# FastAPI read the first of several), and with no Idempotency-Key (a claim, a replay: the route's)
READ_HEADERS = frozenset({b"authorization", b"content-type"})
ROUTE_ONLY_HEADERS = frozenset({b"idempotency-key"})


class FastSubmitMiddleware:
    """Answer ``POST /api/v1/tasks`` as the FastAPI route does, without FastAPI, when nothing about it is
    unusual; pass every other request, and every unusual submission, to ``app`` (module docstring)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self._route: BaseRoute | None = None  # the route the router matches for POST PATH: the access log's

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        token = _bearer_token(scope) if scope["type"] == "http" else None
        if token is None or (route := self._submit_route(scope)) is None:
            await self.app(scope, receive, send)
            return
        received = await _receive_body(receive)
        replay = replaying(received, receive)
        request = Request(scope, replay)
        item = await _acceptable(request, token, received)
        if item is None:
            await self.app(scope, replay, send)
            return
        principal, prepared = item
        scope["route"] = route
        response = await _submit(request, principal, token, prepared)
        await response(scope, replay, send)

    def _submit_route(self, scope: Scope) -> BaseRoute | None:
        """The route FastAPI's router would match for this request, when it is ``submit_task``'s (else None):
        the first of every route, in order (``app.state.flat_routes``: FastAPI nests included routers)."""
        if self._route is None:
            app: Starlette = scope["app"]
            routes: list[BaseRoute] = getattr(app.state, "flat_routes", [])
            matched = next((r for r in routes if r.matches(scope)[0] is Match.FULL), None)
            if matched is None or getattr(matched, "endpoint", None) is not submit_task:
                return None
            self._route = matched
        return self._route


def _bearer_token(scope: Scope) -> str | None:
    """The bearer token of a ``POST /api/v1/tasks`` with a JSON body that may take the fast path, else None."""
    if scope["path"] != PATH or scope["method"] != "POST" or scope.get("root_path"):
        return None
    seen: dict[bytes, bytes] = {}
    for name, value in scope["headers"]:
        if name in ROUTE_ONLY_HEADERS or name in seen:
            return None
        if name in READ_HEADERS:
            seen[name] = value
    if seen.get(b"content-type", b"").lower() != JSON_MEDIA_TYPE or b"authorization" not in seen:
        return None
    # HTTPBearer's own parsing (deps.bearer), on the header as Starlette decodes it
    scheme, credentials = get_authorization_scheme_param(seen[b"authorization"].decode("latin-1"))
    return credentials if scheme.lower() == "bearer" and credentials else None


async def _receive_body(receive: Receive) -> list[Message]:
    """The request's messages up to its whole body (or the client's disconnect), to read and give back."""
    received: list[Message] = []
    while True:
        message = await receive()
        received.append(message)
        if message["type"] != "http.request" or not message.get("more_body", False):
            return received


async def _acceptable(request: Request, token: str, received: list[Message]) -> tuple[Principal, Prepared] | None:
    """The caller and its prepared submission when the fast path may answer it, or None for the route: nothing
    has been recorded then, and the route does everything again, refusals and their answers included."""
    body = b"".join(message.get("body", b"") for message in received)
    if received[-1]["type"] != "http.request" or not body:
        return None
    try:
        runtime: Runtime = request.app.state.runtime
        principal = cached_principal(runtime, token)
        if principal is None:
            return None
        # as the route gets it: Starlette's Request.json(), then the model in Python mode (FastAPI's body field)
        submission = TaskSubmission.model_validate(json.loads(body), from_attributes=True)
        item = prepare(submission, max_delay=runtime.settings.broker_visibility_timeout)
        if item.deferred_until is not None or await authz.submission_refusal(request, principal, [item]):
            return None
    except Exception:  # invalid, unknown, not to be published now, or a failure: the route answers it as it does
        return None
    return principal, item


async def _submit(request: Request, principal: Principal, token: str, item: Prepared) -> Response:
    """The route's submission from its authentication on: the 202, or what the app answers the route's error."""
    runtime: Runtime = request.app.state.runtime
    runtime.metrics.fast_submissions.inc()
    pending = leave_rate_limit_pending(request, runtime, principal, token)
    try:
        store = await get_store(runtime)
        [answer] = await Submitter(runtime, store).submit(principal, [item], rate_limit=pending)
        await authz.audit_submissions(request, [item], answer)
    except Exception as exc:
        handler = exception_handler(request.app, exc)
        if handler is None:
            raise  # to ServerErrorMiddleware, as from the route
        return await handler(request, exc)
    return Response(_accepted_json(answer), status_code=202, media_type="application/json")


def _accepted_json(answer: TaskAccepted) -> bytes:
    """The 202's body as FastAPI writes the route's response model (``serialize_json``, by alias)."""
    return TaskAccepted.__pydantic_serializer__.to_json(answer, by_alias=True)
