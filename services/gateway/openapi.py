"""The OpenAPI document, with every error response documented as ``application/problem+json``.

FastAPI documents what routes declare; this adds what the cross-cutting parts answer (401 and 429 from
the token check, 403 for admin routes, 413 from the body limit, 503 when Redis is down, 500) and moves
every error response to the problem media type with the :class:`Problem` schema, so that a fuzzer that
checks responses against the document finds them all described.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from services.gateway.problems import PROBLEM_MEDIA_TYPE, Problem, ValidationProblem

ADMIN = "x-mallops-admin"
DESCRIPTIONS = {
    400: "The request is malformed.",
    401: "No token, an unknown token or a revoked token.",
    403: "The token is not an admin token.",
    404: "No such resource (or it belongs to someone else).",
    405: "Method not allowed.",
    410: "Gone: it has expired.",
    409: "Conflicts with the current state (or an Idempotency-Key reused with another body).",
    413: "The request body is over MALLOPS_MAX_BODY_BYTES.",
    422: "The request does not validate; `errors` lists each field.",
    429: "Rate limit or quota exceeded; see Retry-After.",
    500: "The server failed; the detail says nothing more, the log has it.",
    503: "A dependency (broker, Redis or database) cannot be reached; see Retry-After.",
}
RETRY_AFTER = {"Retry-After": {"description": "Seconds to wait before trying again.",
                               "schema": {"type": "integer"}}}


def admin_only() -> dict[str, Any]:
    """``openapi_extra`` for routes that need an admin token (documents the 403)."""
    return {ADMIN: True}


def install_openapi(app: FastAPI) -> None:
    def build() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        schema = get_openapi(title=app.title, version=app.version, description=app.description,
                             routes=app.routes, tags=app.openapi_tags)
        _decorate(schema)
        app.openapi_schema = schema
        return schema

    app.openapi = build  # type: ignore[method-assign]


def _decorate(schema: dict[str, Any]) -> None:
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    for model in (Problem, ValidationProblem):
        definition = model.model_json_schema(ref_template="#/components/schemas/{model}")
        for name, sub in definition.pop("$defs", {}).items():
            components.setdefault(name, sub)
        components[model.__name__] = definition
    for name in ("HTTPValidationError", "ValidationError"):
        components.pop(name, None)
    for path, operations in schema.get("paths", {}).items():
        for method, operation in operations.items():
            if not isinstance(operation, dict) or "responses" not in operation:
                continue
            _add_errors(path, method, operation)


def _add_errors(path: str, method: str, operation: dict[str, Any]) -> None:
    responses: dict[str, Any] = operation["responses"]
    statuses = {500}
    if operation.get("security"):
        statuses |= {401, 429, 503}
    if operation.pop(ADMIN, False):
        statuses.add(403)
    if operation.get("requestBody") or method in ("post", "put", "patch"):
        statuses |= {413, 422}
        if method == "post":
            statuses.add(400)
    if operation.get("parameters"):
        statuses.add(422)
    if "{" in path:
        statuses.add(404)
    for status in statuses:
        responses.setdefault(str(status), {"description": DESCRIPTIONS[status]})
    for code, response in responses.items():
        if not code.isdigit() or int(code) < 400:
            continue
        model = "ValidationProblem" if code == "422" else "Problem"
        response["content"] = {PROBLEM_MEDIA_TYPE: {"schema": {"$ref": f"#/components/schemas/{model}"}}}
        if response.get("description") in (None, "", "Validation Error", "Successful Response"):
            response["description"] = DESCRIPTIONS.get(int(code), "Error")
        if code in ("429", "503"):
            response["headers"] = RETRY_AFTER
