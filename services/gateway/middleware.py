"""Pure ASGI middleware: request body limit, and request accounting (metrics, access log, request id)."""

from __future__ import annotations

import collections
import datetime as dt
import json
import logging
import re
import time
import uuid
from typing import TYPE_CHECKING, Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from services.gateway.metrics import UNMATCHED
from services.gateway.problems import PROBLEM_MEDIA_TYPE
from shared.logs import request_id_var

if TYPE_CHECKING:
    from services.gateway.runtime import Runtime

REQUEST_ID_HEADER = b"x-request-id"
#: a client's X-Request-ID is kept when it looks like an id (else the gateway makes one)
CLIENT_REQUEST_ID = re.compile(rb"[A-Za-z0-9._:/+=-]{1,64}")
access = logging.getLogger("mallops.gateway.access")


class BodyLimitMiddleware:
    """Refuse request bodies over ``max_bytes`` with a 413 problem before the app sees them.

    A declared ``Content-Length`` over the limit is refused at once, without reading. Otherwise the body
    is read here, counting the bytes actually received (a chunked or lying client cannot get past the
    limit), and replayed to the app. Bodies are small by design (JSON submissions), so buffering is fine.
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared: int | None = None
        chunked = False
        for name, value in scope["headers"]:
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    await _send_problem(scope, send, 400, "the Content-Length header is not a number")
                    return
            elif name == b"transfer-encoding" and b"chunked" in value.lower():
                chunked = True
        if declared is not None and declared > self.max_bytes:
            await _send_too_large(scope, send, self.max_bytes)
            return
        if not declared and not chunked:
            await self.app(scope, receive, send)
            return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body = message.get("body", b"")
            size += len(body)
            if size > self.max_bytes:
                await _send_too_large(scope, send, self.max_bytes)
                return
            chunks.append(body)
            if not message.get("more_body", False):
                break
        whole = {"type": "http.request", "body": b"".join(chunks), "more_body": False}
        await self.app(scope, replaying([whole], receive), send)


def replaying(messages: list[Message], receive: Receive) -> Receive:
    """``receive`` with ``messages``, already read from it, given back first and in order."""
    pending = collections.deque(messages)

    async def replay() -> Message:
        if pending:
            return pending.popleft()
        return await receive()

    return replay


async def _send_too_large(scope: Scope, send: Send, limit: int) -> None:
    await _send_problem(
        scope,
        send,
        413,
        f"the request body is larger than {limit} bytes",
        title="Content Too Large",
        kind="body-too-large",
    )


async def _send_problem(
    scope: Scope, send: Send, status: int, detail: str, *, title: str = "Bad Request", kind: str | None = None
) -> None:
    body = json.dumps(
        {
            "type": f"urn:mallops:problem:{kind}" if kind else "about:blank",
            "title": title,
            "status": status,
            "detail": detail,
            "instance": scope.get("path"),
        }
    ).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", PROBLEM_MEDIA_TYPE.encode()),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


class AccountingMiddleware:
    """Give every request an id, count it in the gateway's metrics, append it to the access log and log
    one line for it (logger ``mallops.gateway.access``, INFO).

    The request id is the client's ``X-Request-ID`` when it sent a plausible one, else a new one; it is
    answered in ``X-Request-ID``, set in :data:`shared.logs.request_id_var` for the request's log lines
    and carried in the messages of the tasks it submits. The access-log buffer keys entries by an id
    of the gateway's own (its ``request_id``, unique), the same one unless the client sent an id.
    The route label is the matched route's template, never the raw path (bounded label values).
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        own_id = uuid.uuid4().hex  # access_logs.request_id is unique: the buffer's key is always ours
        request_id = own_id
        for name, value in scope["headers"]:
            if name == REQUEST_ID_HEADER:
                if CLIENT_REQUEST_ID.fullmatch(value):
                    request_id = value.decode()
                break
        token = request_id_var.set(request_id)
        status = 500
        header = (REQUEST_ID_HEADER, request_id.encode())
        scope.setdefault("state", {})["request_id"] = request_id  # request.state.request_id (the audit trail)

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", []), header]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            request_id_var.reset(token)
            duration = time.perf_counter() - started
            runtime: Runtime | None = getattr(scope["app"].state, "runtime", None) if "app" in scope else None
            route = scope.get("route")
            template = getattr(route, "path", None) or UNMATCHED
            method = scope.get("method", "GET")
            if runtime is not None:  # None: not started (no lifespan), nothing to account to
                _account(runtime, scope, own_id, method, template, status, duration)
            if access.isEnabledFor(logging.INFO):
                access.info(
                    "%s %s %d %.1f ms",
                    method,
                    scope.get("path", ""),
                    status,
                    duration * 1000,
                    extra={"request_id": request_id},
                )


def _account(
    runtime: Runtime, scope: Scope, request_id: str, method: str, template: str, status: int, duration: float
) -> None:
    runtime.metrics.observe(method, template, status, duration)
    state: dict[str, Any] = scope.get("state") or {}
    client = scope.get("client")
    runtime.access_log.append(
        {
            "request_id": request_id,
            "ts": dt.datetime.now(dt.UTC).isoformat(),
            "method": method,
            "path": scope.get("path", "")[:300],
            "status": status,
            "duration_ms": round(duration * 1000, 3),
            "principal": state.get("principal"),
            "client_ip": client[0] if client else None,
        }
    )
