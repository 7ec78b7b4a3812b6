"""Security checks of the gateway, against the real app, its Redis and the database.

Tokens are stored only as hashes and looked up by hash; users cannot reach each other's tasks or files;
export downloads stay inside the export folder; filters are not injectable; no token or secret reaches a
log, an error body, Redis or the database in clear; bodies over the limit are 413; the rate limit holds
under a concurrent burst; CORS is closed unless configured. (The authorization matrix of every endpoint is
in tests/services/gateway/test_authorization.py.)
"""

from __future__ import annotations

import concurrent.futures
import datetime as dt
import hashlib
import hmac
import json
import logging
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from pydantic import SecretStr
from sqlalchemy import delete, select

from services.gateway.app import create_app
from shared import tokens as token_module
from shared.db import session_scope
from shared.models import ApiToken, Export
from shared.settings import Settings
from shared.tokens import create_token, ensure_bootstrap_admin, verify_token
from tests.harness import RedisServer
from tests.security.conftest import API, Gateway, gateway_settings, make_tokens
from tests.services.gateway.conftest import serve

pytestmark = pytest.mark.integration

INJECTIONS = [
    "' OR '1'='1",
    "'; DROP TABLE task_history; --",
    '" OR ""="',
    "%",
    "_",
    "*",
    "test_task' --",
    "1) OR (1=1",
    "\\",
    "\x00",
    "${jndi:ldap://x/a}",
    "{{7*7}}",
    "ｔｅｓｔ＿ｔａｓｋ",
    "a" * 199,
]


@pytest.fixture
def exports(migrated: Settings) -> Iterator[Callable[..., str]]:
    """``make(owner, file_name)``: a finished export row, deleted after the test."""
    created: list[str] = []

    def make(owner: str, file_name: str | None) -> str:
        task_id = str(uuid.uuid4())
        with session_scope(migrated) as session:
            session.add(
                Export(
                    task_id=task_id,
                    owner=owner,
                    dataset="stores",
                    format="csv",
                    filters={},
                    status="done",
                    file_name=file_name,
                    rows=1,
                    size_bytes=10,
                    sha256=None,
                    expires_at=dt.datetime.now(dt.UTC) + dt.timedelta(days=1),
                )
            )
        created.append(task_id)
        return task_id

    yield make
    with session_scope(migrated) as session:
        session.execute(delete(Export).where(Export.task_id.in_(created)))


# -- tokens ------------------------------------------------------------------------------------------


def test_tokens_are_stored_only_as_hashes_and_looked_up_by_hash(
    migrated: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    chosen = "0123456789abcdef"  # a 16-character bootstrap token, the shortest allowed
    name = f"sec-stored-{uuid.uuid4().hex[:8]}"
    with session_scope(migrated) as session:
        generated = create_token(session, name, "user")
        session.execute(delete(ApiToken).where(ApiToken.name == token_module.BOOTSTRAP_TOKEN_NAME))
        ensure_bootstrap_admin(session, chosen)
    with session_scope(migrated) as session:
        for secret, row_name in ((generated, name), (chosen, token_module.BOOTSTRAP_TOKEN_NAME)):
            row = session.scalar(select(ApiToken).where(ApiToken.name == row_name))
            assert row is not None
            stored = [str(getattr(row, column.key)) for column in ApiToken.__table__.columns]
            assert not any(secret in value for value in stored)
            assert row.token_hash == hashlib.sha256(secret.encode()).hexdigest()
            # the clear prefix shows at most a quarter of the secret: the rest is not guessable from it
            assert secret.startswith(row.prefix)
            assert len(row.prefix) <= len(secret) // 4
        session.execute(delete(ApiToken).where(ApiToken.name == token_module.BOOTSTRAP_TOKEN_NAME))

        compared: list[tuple[str, str]] = []
        original = hmac.compare_digest

        def spy(a: str, b: str) -> bool:
            compared.append((a, b))
            return original(a, b)

        monkeypatch.setattr(hmac, "compare_digest", spy)  # the module shared.tokens calls
        assert verify_token(session, generated) is not None
        assert verify_token(session, generated[:-1] + "x") is None
    # the comparison is constant-time and between digests: the secret itself is never compared
    assert compared == [(hashlib.sha256(generated.encode()).hexdigest(),) * 2]


def test_the_gateway_keeps_only_digests_of_tokens_in_memory(migrated: Settings, module_redis: RedisServer) -> None:
    secrets = make_tokens(migrated)
    guessed = "mlp_guessing-a-token-" + uuid.uuid4().hex
    app = create_app(gateway_settings(migrated, module_redis))
    with serve(app) as url:
        assert (
            httpx.get(f"{url}{API}/catalog", headers={"Authorization": f"Bearer {secrets['alice']}"}).status_code == 200
        )
        assert httpx.get(f"{url}{API}/catalog", headers={"Authorization": f"Bearer {guessed}"}).status_code == 401
        cached = set(app.state.runtime.tokens._entries)
    assert cached == {hashlib.sha256(secret.encode()).hexdigest() for secret in (secrets["alice"], guessed)}


# -- one user against another ------------------------------------------------------------------------


def fail_task(gateway: Gateway, task_id: str) -> None:
    """Store a FAILURE result for ``task_id`` as a worker would."""
    results = gateway.redis.client(1)
    results.set(
        f"celery-task-meta-{task_id}",
        json.dumps(
            {
                "status": "FAILURE",
                "task_id": task_id,
                "result": {"exc_type": "RequestedFailure", "exc_message": "no"},
                "traceback": None,
                "date_done": dt.datetime.now(dt.UTC).isoformat(),
            }
        ),
    )
    results.close()


def test_a_user_cannot_read_revoke_retry_or_download_what_is_not_theirs(
    secure_gateway: Gateway,
    api: httpx.Client,
    migrated: Settings,
    exports: Callable[..., str],
) -> None:
    alice, bob, admin = (secure_gateway.auth(who) for who in ("alice", "bob", "admin"))
    submitted = api.post(
        f"{API}/tasks", json={"task_name": "test_task", "kwargs": {"message": "alice's"}}, headers=alice
    )
    assert submitted.status_code == 202
    task_id = submitted.json()["task_id"]
    fail_task(secure_gateway, task_id)
    migrated.exports_dir.mkdir(parents=True, exist_ok=True)
    file_name = f"stores-{uuid.uuid4()}.csv"
    (migrated.exports_dir / file_name).write_text("id,name\n1,Alice's shop\n")
    export_id = exports(secure_gateway.alice_name, file_name)
    queued = secure_gateway.queue_length("default")

    for method, path in [
        ("GET", f"/tasks/{task_id}"),
        ("GET", f"/tasks/{task_id}/events"),
        ("POST", f"/tasks/{task_id}/retry"),
        ("GET", f"/exports/{export_id}"),
        ("GET", f"/exports/{export_id}/download"),
    ]:
        response = api.request(method, f"{API}{path}", headers=bob)
        assert response.status_code == 404, (method, path)
        assert "alice" not in response.text.lower(), (method, path)
    assert api.post(f"{API}/tasks/{task_id}/revoke", headers=bob).status_code == 403
    assert task_id not in api.get(f"{API}/tasks", headers=bob).text
    for path in ("/tasks/history", "/tasks/stats"):  # the owner filter is ignored for users
        response = api.get(f"{API}{path}", params={"owner": secure_gateway.alice_name}, headers=bob)
        assert response.status_code == 200
        assert secure_gateway.alice_name not in response.text
    assert secure_gateway.queue_length("default") == queued  # bob's refused retry enqueued nothing

    # the owner and an admin can
    assert api.get(f"{API}/tasks/{task_id}", headers=alice).json()["status"] == "FAILURE"
    assert api.get(f"{API}/exports/{export_id}/download", headers=alice).text == "id,name\n1,Alice's shop\n"
    assert api.get(f"{API}/exports/{export_id}/download", headers=admin).status_code == 200
    retried = api.post(f"{API}/tasks/{task_id}/retry", headers=alice)
    assert retried.status_code == 202
    assert retried.json()["retry_of"] == task_id
    assert api.get(f"{API}/tasks/{retried.json()['task_id']}", headers=bob).status_code == 404
    assert secure_gateway.queue_length("default") == queued + 1


# -- files -------------------------------------------------------------------------------------------


def test_export_downloads_cannot_escape_the_export_folder(
    secure_gateway: Gateway,
    api: httpx.Client,
    migrated: Settings,
    exports: Callable[..., str],
) -> None:
    alice = secure_gateway.auth("alice")
    exports_dir = migrated.exports_dir
    exports_dir.mkdir(parents=True, exist_ok=True)
    secret = migrated.data_dir / f"outside-{uuid.uuid4().hex}.csv"
    secret.write_text("TOP SECRET")
    (exports_dir / f"{secret.stem}-link.csv").symlink_to(secret)
    linked_dir = exports_dir / f"dir-{uuid.uuid4().hex}"
    linked_dir.symlink_to(migrated.data_dir, target_is_directory=True)
    stored_names = [
        f"../{secret.name}",
        str(secret),
        f"sub/../../{secret.name}",
        f"{secret.stem}-link.csv",
        f"{linked_dir.name}/{secret.name}",
        "..",
        ".",
        "",
        f"..%2F{secret.name}",
        f"./../{secret.name}",
        f"{exports_dir.name}/../../{secret.name}",
    ]
    for stored in stored_names:
        export_id = exports(secure_gateway.alice_name, stored)
        response = api.get(f"{API}/exports/{export_id}/download", headers=alice)
        assert response.status_code == 404, stored
        assert "TOP SECRET" not in response.text
    # and in the URL: encoded separators and dots never reach the file system
    for raw in (
        f"..%2F..%2F{secret.name}",
        "%2e%2e",
        "%2e%2e%2f%2e%2e%2fetc%2fpasswd",
        "..",
        "%00",
        "..%5c..%5cwindows",
    ):
        response = api.get(f"{API}/exports/{raw}/download", headers=alice)
        assert response.status_code in (404, 422), raw
        assert "TOP SECRET" not in response.text


# -- filters -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("who", ["admin", "alice"])
def test_filters_are_not_injectable(secure_gateway: Gateway, api: httpx.Client, who: str) -> None:
    headers = secure_gateway.auth(who)
    queries: list[tuple[str, str, set[int]]] = [
        ("/tasks", "task_name", {200}),
        ("/tasks", "status", {422}),
        ("/tasks/history", "task_name", {404}),
        ("/tasks/history", "status", {422}),
        ("/tasks/history", "owner", {200}),
        ("/tasks/history", "cursor", {422}),
        ("/tasks/history", "since", {422}),
        ("/tasks/stats", "task_name", {404}),
        ("/tasks/stats", "owner", {200}),
        ("/reports", "kind", {422}),
    ]
    for path, name, allowed in queries:
        for value in INJECTIONS:
            response = api.get(f"{API}{path}", params={name: value}, headers=headers)
            label = f"{path}?{name}={value!r} as {who}"
            # a value over a field's max_length is refused by validation whatever the field
            assert response.status_code in allowed | {422}, label
            body = response.json()
            if response.status_code != 200:
                assert response.headers["content-type"] == "application/problem+json", label
                continue
            if who == "admin":  # nothing matches a hostile value: the filter was not widened
                assert (body["overall"]["total"] if path == "/tasks/stats" else body["count"]) == 0, label
            else:  # and a user sees only their own tasks whatever the filter (owner= is ignored)
                assert all(row["owner"] == secure_gateway.alice_name for row in body.get("results", [])), label


# -- secrets in logs, bodies, Redis ------------------------------------------------------------------


def redis_dump(server: RedisServer) -> bytes:
    """Every key and value of databases 0-2, concatenated."""
    parts: list[bytes] = []
    for db in (0, 1, 2):
        client = server.client(db)
        for key in client.scan_iter():
            kind = client.type(key)
            parts.append(key)
            if kind == b"string":
                parts.append(client.get(key) or b"")
            elif kind == b"list":
                parts.extend(client.lrange(key, 0, -1))
            elif kind == b"hash":
                for field, value in client.hgetall(key).items():
                    parts += [field, value]
            elif kind == b"set":
                parts.extend(client.smembers(key))
            elif kind == b"zset":
                parts.extend(client.zrange(key, 0, -1))
            elif kind == b"stream":
                for _, fields in client.xrange(key):
                    for field, value in fields.items():
                        parts += [field, value]
        client.close()
    return b"\n".join(parts)


def test_no_token_or_secret_in_logs_error_bodies_or_redis(
    migrated: Settings,
    module_redis: RedisServer,
    caplog: pytest.LogCaptureFixture,
) -> None:
    bootstrap = "mlp_bootstrap_" + uuid.uuid4().hex
    smtp_password = "smtp-" + uuid.uuid4().hex
    settings = gateway_settings(
        migrated,
        module_redis,
        bootstrap_admin_token=SecretStr(bootstrap),
        smtp_password=SecretStr(smtp_password),
        rate_limit_per_minute=3,
        max_body_bytes=2048,
        log_level="DEBUG",
    )
    user = make_tokens(migrated)["alice"]
    guessed = "mlp_" + uuid.uuid4().hex  # a token that does not exist
    secrets = [bootstrap, smtp_password, user, guessed]
    caplog.set_level(logging.DEBUG)
    bodies: list[str] = []
    with serve(create_app(settings)) as url, httpx.Client(base_url=url, timeout=30) as client:
        for secret in (bootstrap, user, guessed):
            auth = {"Authorization": f"Bearer {secret}"}
            requests: list[tuple[str, str, Any]] = [
                ("GET", f"{API}/catalog", None),
                ("POST", f"{API}/tasks", {"task_name": "test_task", "kwargs": {"message": 7, "token": secret}}),
                ("POST", f"{API}/tasks", {"task_name": "nope", "kwargs": {}}),
                ("POST", f"{API}/tasks", {"task_name": "test_task", "kwargs": {"message": "x" * 5000}}),
                ("GET", f"{API}/tasks/{uuid.uuid4()}", None),
                ("GET", f"{API}/tasks/history", None),
                ("GET", f"{API}/nowhere", None),
                ("GET", f"{API}/catalog", None),  # over the rate limit by now for valid tokens
            ]
            for method, path, body in requests:
                response = client.request(method, path, json=body, headers=auth)
                assert response.status_code < 500, (method, path, response.text)
                bodies.append(f"{response.headers}\n{response.text}")
        metrics = client.get("/metrics").text
        ready = client.get("/readyz").text
    everything = "\n".join([caplog.text, metrics, ready, *bodies])
    stored = redis_dump(module_redis)  # task records, access log, rate limits, idempotency, messages
    for secret in secrets:
        assert secret not in everything
        assert secret.encode() not in stored
    assert "bootstrap admin token installed" in caplog.text  # the log was captured at all


# -- limits ------------------------------------------------------------------------------------------


def test_bodies_over_the_limit_are_413_on_every_endpoint_with_a_body(
    migrated: Settings, module_redis: RedisServer
) -> None:
    settings = gateway_settings(migrated, module_redis, max_body_bytes=2048)
    secrets = make_tokens(migrated)
    admin = {"Authorization": f"Bearer {secrets['admin']}"}
    broker = module_redis.client(0)
    before = broker.llen("default")
    big = "x" * 3000
    with serve(create_app(settings)) as url, httpx.Client(base_url=url, timeout=30) as client:
        for path, body in [
            (f"{API}/tasks", {"task_name": "test_task", "kwargs": {"message": big}}),
            (f"{API}/tasks/batch", {"tasks": [{"task_name": "test_task", "kwargs": {"message": big}}]}),
            (f"{API}/tasks/{uuid.uuid4()}/revoke", {"terminate": False, "pad": big}),
            (f"{API}/schedules/cleanup_old_notifications", {"enabled": True, "pad": big}),
        ]:
            method = "PATCH" if "schedules" in path else "POST"
            response = client.request(method, path, json=body, headers=admin)
            assert response.status_code == 413, path
            assert response.json()["type"] == "urn:mallops:problem:body-too-large"
            # a body that declares no length is counted as it streams in
            streamed = client.request(
                method,
                path,
                content=iter([json.dumps(body).encode()[i : i + 256] for i in range(0, 3200, 256)]),
                headers={**admin, "Content-Type": "application/json"},
            )
            assert streamed.status_code == 413, path
    assert broker.llen("default") == before
    broker.close()


def test_the_rate_limit_holds_under_a_concurrent_burst(migrated: Settings, module_redis: RedisServer) -> None:
    limit, burst = 20, 80
    settings = gateway_settings(migrated, module_redis, rate_limit_per_minute=limit)
    secrets = make_tokens(migrated)
    auth = {"Authorization": f"Bearer {secrets['alice']}"}
    with (
        serve(create_app(settings)) as url,
        httpx.Client(base_url=url, timeout=30, limits=httpx.Limits(max_connections=40)) as client,
    ):
        with concurrent.futures.ThreadPoolExecutor(max_workers=40) as pool:
            responses = list(pool.map(lambda _: client.get(f"{API}/catalog", headers=auth), range(burst)))
        statuses = sorted(response.status_code for response in responses)
        assert statuses == [200] * limit + [429] * (burst - limit)
        for response in responses:
            if response.status_code == 429:
                assert 1 <= int(response.headers["retry-after"]) <= 60
                assert response.headers["content-type"] == "application/problem+json"
        # another token has its own budget
        other = {"Authorization": f"Bearer {secrets['bob']}"}
        assert client.get(f"{API}/catalog", headers=other).status_code == 200


def test_cors_is_closed_unless_configured(
    migrated: Settings, module_redis: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    foreign = "https://evil.example"
    allowed = "https://shop.example"
    preflight = {"Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "authorization"}
    with serve(create_app(gateway_settings(migrated, module_redis))) as url:
        for origin in (foreign, allowed):
            simple = httpx.get(f"{url}/healthz", headers={"Origin": origin})
            assert "access-control-allow-origin" not in simple.headers
            options = httpx.options(f"{url}{API}/tasks", headers={"Origin": origin, **preflight})
            assert "access-control-allow-origin" not in options.headers
            assert options.status_code >= 400
    # configured the way an operator does: MALLOPS_CORS_ORIGINS, a JSON list
    monkeypatch.setenv("MALLOPS_CORS_ORIGINS", json.dumps([allowed]))
    configured = Settings().cors_origins
    assert configured == [allowed]
    with serve(create_app(gateway_settings(migrated, module_redis, cors_origins=configured))) as url:
        ok = httpx.options(f"{url}{API}/tasks", headers={"Origin": allowed, **preflight})
        assert ok.status_code == 200
        assert ok.headers["access-control-allow-origin"] == allowed
        assert "access-control-allow-credentials" not in ok.headers
        refused = httpx.options(f"{url}{API}/tasks", headers={"Origin": foreign, **preflight})
        assert "access-control-allow-origin" not in refused.headers
        simple = httpx.get(f"{url}/healthz", headers={"Origin": foreign})
        assert "access-control-allow-origin" not in simple.headers
