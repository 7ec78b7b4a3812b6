"""Every error is application/problem+json (RFC 9457) without stack traces; metrics and the access log."""

from __future__ import annotations

import json
from typing import Any

import pytest
from fastapi import FastAPI

from services.gateway.app import create_app
from shared.contracts import ACCESS_LOG_BUFFER
from shared.settings import Settings
from tests.harness import RedisServer, wait_until
from tests.services.gateway.conftest import GatewayClient, Tokens, serve

pytestmark = pytest.mark.integration

PROBLEM_KEYS = {"type", "title", "status", "detail", "instance"}


def assert_problem(response: object, status: int) -> dict[str, Any]:
    import httpx

    assert isinstance(response, httpx.Response)
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body: dict[str, Any] = response.json()
    assert body.keys() >= PROBLEM_KEYS
    assert body["status"] == status
    assert isinstance(body["title"], str)
    assert body["detail"]
    assert "Traceback" not in response.text
    assert 'File "' not in response.text
    return body


def test_every_kind_of_error_is_a_problem_document(client: GatewayClient, tokens: Tokens) -> None:
    assert_problem(client.get("/no/such/route"), 404)
    assert_problem(client.get("/api/v1/tasks/not-a-task", headers=tokens.auth("alice")), 404)
    assert_problem(client.delete("/api/v1/tasks", headers=tokens.auth("alice")), 405)
    assert_problem(client.get("/api/v1/tasks"), 401)
    invalid = assert_problem(client.get("/api/v1/tasks?limit=0", headers=tokens.auth("alice")), 422)
    assert invalid["errors"][0]["loc"] == ["query", "limit"]
    broken_json = client.post(
        "/api/v1/tasks", content=b"{not json", headers={**tokens.auth("alice"), "Content-Type": "application/json"}
    )
    assert "errors" in assert_problem(broken_json, 422)
    assert assert_problem(client.get("/api/v1/tasks/bad%20id", headers=tokens.auth("alice")), 422)["instance"]


def test_an_unexpected_error_is_a_500_problem_without_a_trace(migrated: Settings) -> None:
    import httpx

    app: FastAPI = create_app(migrated)

    @app.get("/boom")
    async def boom() -> None:
        raise RuntimeError("secret internals: /etc/passwd")

    with serve(app) as url, httpx.Client(base_url=url) as client:
        body = assert_problem(client.get("/boom"), 500)
        assert "secret internals" not in json.dumps(body)


def test_metrics_count_requests_by_route_template(client: GatewayClient, tokens: Tokens) -> None:
    for task_id in ("a1", "b2", "c3"):
        client.get(f"/api/v1/tasks/{task_id}", headers=tokens.auth("alice"))
    client.get("/not/a/route/1")
    client.get("/not/a/route/2")
    text = client.get("/metrics").text
    registry = client.app.state.runtime.metrics.registry
    labels = {"method": "GET", "route": "/api/v1/tasks/{task_id}", "status": "404"}
    assert registry.get_sample_value("mallops_gateway_requests_total", labels) == 3
    assert (
        registry.get_sample_value(
            "mallops_gateway_requests_total", {"method": "GET", "route": "<unmatched>", "status": "404"}
        )
        == 2
    )
    assert (
        registry.get_sample_value(
            "mallops_gateway_request_duration_seconds_count", {"method": "GET", "route": "/api/v1/tasks/{task_id}"}
        )
        == 3
    )
    assert "a1" not in text
    assert "/not/a/route" not in text


def test_every_request_goes_to_the_access_log_buffer(
    client: GatewayClient, tokens: Tokens, redis_server: RedisServer
) -> None:
    cache = redis_server.client(2)
    client.get("/healthz")
    client.get("/api/v1/catalog", headers=tokens.auth("alice"))
    client.get("/api/v1/nothing-here")

    def entries() -> list[dict[str, Any]]:
        rows = [json.loads(raw) for raw in cache.lrange(ACCESS_LOG_BUFFER, 0, -1)]
        return rows if len(rows) >= 3 else []

    rows = wait_until(entries, timeout=15, message="access-log entries in Redis")
    cache.close()
    by_path = {row["path"]: row for row in rows}
    catalog = by_path["/api/v1/catalog"]
    assert catalog["method"] == "GET"
    assert catalog["status"] == 200
    assert catalog["principal"] == tokens.alice_name
    assert catalog["client_ip"] == "127.0.0.1"
    assert catalog["duration_ms"] >= 0
    assert len(catalog["request_id"]) == 32
    assert catalog["ts"].endswith("+00:00")
    assert by_path["/api/v1/nothing-here"]["status"] == 404
    assert by_path["/healthz"]["principal"] is None
    assert len({row["request_id"] for row in rows}) == len(rows)


def test_cors_is_closed_unless_origins_are_configured(gateway, tokens: Tokens) -> None:
    preflight = {"Origin": "https://shop.example", "Access-Control-Request-Method": "GET"}
    with gateway() as closed:
        response = closed.get("/healthz", headers={"Origin": "https://shop.example"})
        assert "access-control-allow-origin" not in response.headers
    with gateway(cors_origins=["https://shop.example"]) as opened:
        response = opened.options("/api/v1/catalog", headers=preflight)
        assert response.headers["access-control-allow-origin"] == "https://shop.example"


def test_readiness_checks_redis_broker_and_database(gateway, redis_server: RedisServer) -> None:
    with gateway() as client:
        ready = client.get("/readyz")
        assert ready.status_code == 200
        assert ready.json()["checks"] == {"redis": "ok", "result_backend": "ok", "broker": "ok", "database": "ok"}
    from tests.harness import free_port

    with gateway(broker_url=f"redis://127.0.0.1:{free_port()}/0") as client:
        body = assert_problem(client.get("/readyz"), 503)
        assert body["checks"]["broker"] != "ok"
        assert body["checks"]["database"] == "ok"
    with gateway(database_url="postgresql://nobody@127.0.0.1:1/none") as client:
        body = assert_problem(client.get("/readyz"), 503)
        assert body["checks"]["database"] != "ok"


def test_405_names_every_method_of_the_path(client: GatewayClient, tokens: Tokens) -> None:
    response = client.request("OPTIONS", "/api/v1/tasks", headers=tokens.auth("alice"))
    assert response.status_code == 405
    assert response.headers["allow"] == "GET, POST"


def test_openapi_documents_every_error_as_a_problem(client: GatewayClient) -> None:
    schema = client.get("/openapi.json").json()
    for path, operations in schema["paths"].items():
        for method, operation in operations.items():
            for status, response in operation["responses"].items():
                if int(status) >= 400:
                    assert list(response["content"]) == ["application/problem+json"], (method, path, status)
            if operation.get("security"):
                assert {"401", "429"} <= operation["responses"].keys(), (method, path)
    submit = schema["paths"]["/api/v1/tasks"]["post"]["responses"]
    assert {"202", "404", "409", "413", "422", "503"} <= submit.keys()
    assert "403" in schema["paths"]["/api/v1/workers"]["get"]["responses"]
