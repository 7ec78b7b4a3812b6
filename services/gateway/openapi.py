"""The OpenAPI document, with every error response documented as ``application/problem+json``.

FastAPI documents what routes declare; this adds what the cross-cutting parts answer (401 and 429 from
the token check, 403 for admin routes, 400 and 413 for unreadable or oversized bodies, 503 when Redis is
down, 500) and moves every error response to the problem media type with the :class:`Problem` schema, so that
a fuzzer that checks responses against the document finds them all described.

A submission's body is documented per task: ``TaskSubmission`` is a ``oneOf`` over the catalog, one variant
per ``task_name`` whose ``kwargs`` is that task's argument model (the same JSON Schema as ``GET /catalog``)
and whose ``args`` are the same fields by position. What JSON Schema cannot say (``year`` and ``month``
together, an ``eta`` at most two hours ahead, a field given both by position and by name) is answered 422.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from services.gateway.problems import PROBLEM_MEDIA_TYPE, Problem, ValidationProblem
from shared.catalog import CATALOG, TaskSpec

ADMIN = "x-mallops-admin"
DESCRIPTIONS = {
    400: "The request is malformed.",
    401: "No token, an unknown token or a revoked token.",
    403: "The token's role (or store scope) lacks the permission named in `permission`.",
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
RETRY_AFTER = {"Retry-After": {"description": "Seconds to wait before trying again.", "schema": {"type": "integer"}}}


def admin_only() -> dict[str, Any]:
    """``openapi_extra`` for routes that need an admin token (documents the 403)."""
    return {ADMIN: True}


def install_openapi(app: FastAPI) -> None:
    def build() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        schema = get_openapi(
            title=app.title, version=app.version, description=app.description, routes=app.routes, tags=app.openapi_tags
        )
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
    if "TaskSubmission" in components:
        components["TaskSubmission"] = _submission_per_task(components)
    for path, operations in schema.get("paths", {}).items():
        for method, operation in operations.items():
            if not isinstance(operation, dict) or "responses" not in operation:
                continue
            _add_errors(path, method, operation)


def _add_errors(path: str, method: str, operation: dict[str, Any]) -> None:
    responses: dict[str, Any] = operation["responses"]
    statuses = {500}
    if operation.get("security"):
        statuses |= {401, 403, 429, 503}
    if operation.pop(ADMIN, False):
        statuses.add(403)
    if operation.get("requestBody") or method in ("post", "put", "patch"):
        statuses |= {400, 413, 422}  # 400: a body that is not JSON at all
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


def _submission_per_task(components: dict[str, Any]) -> dict[str, Any]:
    """``TaskSubmission`` as one variant per catalog task, discriminated by ``task_name``."""
    generic: dict[str, Any] = components["TaskSubmission"]
    common = {key: value for key, value in generic["properties"].items() if key not in ("task_name", "args", "kwargs")}
    variants: dict[str, str] = {}
    for spec in sorted(CATALOG.values(), key=lambda s: s.name):
        model = _arguments_component(spec, components)
        variant = f"Submit_{spec.name}"
        arguments = components[model]
        fields = list(arguments.get("properties", {}))
        components[variant] = {
            "title": f"Submit {spec.name}",
            "type": "object",
            "additionalProperties": False,
            "required": ["task_name"],
            "properties": {
                "task_name": {"type": "string", "const": spec.name, "description": spec.description},
                "args": {
                    "type": "array",
                    "maxItems": len(fields),
                    "items": False,
                    "prefixItems": [arguments["properties"][field] for field in fields],
                    "description": f"Positional arguments, in order: {', '.join(fields) or 'none'} (each "
                    "field at most once, by position or in kwargs).",
                },
                "kwargs": {"$ref": f"#/components/schemas/{model}"},
                **common,
            },
        }
        variants[spec.name] = f"#/components/schemas/{variant}"
    return {
        "title": "TaskSubmission",
        "description": generic.get("description", "A task to submit: its name and the arguments of its schema."),
        "oneOf": [{"$ref": ref} for ref in variants.values()],
        "discriminator": {"propertyName": "task_name", "mapping": variants},
    }


def _arguments_component(spec: TaskSpec, components: dict[str, Any]) -> str:
    """Put the task's argument model (and the models it uses) into the components; returns its name."""
    definition = spec.args_model.model_json_schema(ref_template="#/components/schemas/{model}")
    for name, sub in definition.pop("$defs", {}).items():
        components.setdefault(name, sub)
    name = spec.args_model.__name__
    components.setdefault(name, definition)
    return name
