"""``POST /api/v1/tasks`` below FastAPI (``services/gateway/fast_submit.py``) answers exactly as the FastAPI route.

Each test runs the same requests against a gateway with ``MALLOPS_GATEWAY_FAST_SUBMIT`` on and one with it
off (fresh tokens of the same roles each time, real Redis and database, a broker database nothing consumes so
that the messages can be read) and compares, modulo task ids, token names and times: every answer's status,
body and headers, the messages on the queue, the gateway's task metadata, the audit rows, the metrics, the
access-log line and the access-log entry. ``mallops_gateway_fast_submissions_total`` shows which requests the
fast path answered.
"""

from __future__ import annotations

import base64
import json
import logging
import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from sqlalchemy import select

from services.gateway.app import create_app
from shared.contracts import TOKENS_EPOCH_KEY
from shared.db import session_scope
from shared.models import AuditEntry
from shared.settings import Settings
from shared.taskmeta import META_KEY
from shared.tokens import create_token, revoke_token
from tests.harness import RedisServer
from tests.services.gateway.conftest import GatewayClient, GatewayFactory

pytestmark = pytest.mark.integration

TASKS = "/api/v1/tasks"
IDLE_BROKER_DB = 9  # no worker consumes it: the messages stay for the comparison
CACHE_DB = 2
UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
HEX_ID = re.compile(r"\b[0-9a-f]{32}\b")
TIME = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)?")
DURATION = re.compile(r" \d+\.\d ms$")
BASE_URL = re.compile(r"http://127\.0\.0\.1:\d+")  # each gateway's own port
# headers that differ from one server or moment to the next whatever the code
VOLATILE_HEADERS = {"date", "server"}


@dataclass
class Step:
    """One request: who sends it (a role of :data:`ROLES`, None: no token), the body, extra headers."""

    who: str | None
    body: dict[str, Any] | bytes | None = None
    headers: dict[str, str] = field(default_factory=dict)
    method: str = "POST"
    path: str = TASKS
    revoke_first: bool = False  # revoke the token as another process does (database, then the epoch)


ROLES = ("user", "viewer", "admin", "revoked")
ORIGIN = "https://ops.mall.example"
EMAIL = {"email": "nobody@example.com", "subject": "s", "message": "m"}


@dataclass
class Observed:
    answers: list[Any]
    messages: list[Any]
    metadata: list[Any]
    audit: list[Any]
    metrics: dict[str, float]
    access_lines: list[str]
    access_entries: list[Any]
    fast: float


def _make_tokens(settings: Settings) -> tuple[dict[str, str], dict[str, str]]:
    """A token of each role (secrets by role) and the names to hide (name -> role), of equal lengths."""
    secrets: dict[str, str] = {}
    names: dict[str, str] = {}
    with session_scope(settings) as session:
        for role in ROLES:
            name = f"fast-{role}-{uuid.uuid4().hex[:8]}"
            secrets[role] = create_token(session, name, "user" if role == "revoked" else role)
            names[name] = role
        if "revoked" in secrets:
            revoke_token(session, next(n for n, r in names.items() if r == "revoked"))
    return secrets, names


def _scrub(value: Any, names: dict[str, str]) -> Any:
    """``value`` with token names as their roles and ids and times as placeholders."""
    if isinstance(value, dict):
        return {key: _scrub(item, names) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_scrub(item, names) for item in value]
    if isinstance(value, str):
        for name, role in names.items():
            value = value.replace(name, f"<{role}>")
        value = BASE_URL.sub("<gateway>", value)
        return TIME.sub("<time>", HEX_ID.sub("<hex>", UUID.sub("<uuid>", value)))
    return value


class _Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(f"{DURATION.sub(' <ms>', record.getMessage())} {getattr(record, 'request_id', None)}")


@pytest.fixture
def access_lines() -> Iterator[_Lines]:
    logger = logging.getLogger("mallops.gateway.access")
    handler, level = _Lines(), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def _send(client: GatewayClient, step: Step, secrets: dict[str, str], i: int) -> Any:
    headers = {"X-Request-ID": f"parity-{i}", **step.headers}
    if step.who is not None:
        headers["Authorization"] = f"Bearer {secrets[step.who]}"
    if isinstance(step.body, dict):
        return client.request(step.method, step.path, json=step.body, headers=headers)
    if step.body is not None:
        headers.setdefault("Content-Type", "application/json")
    return client.request(step.method, step.path, content=step.body, headers=headers)


def _answer(response: Any, names: dict[str, str]) -> Any:
    headers = {k: v for k, v in response.headers.items() if k not in VOLATILE_HEADERS}
    try:
        body: Any = response.json()
    except ValueError:
        body = response.text
    if isinstance(body, dict) and "task_id" in body:
        assert UUID.fullmatch(body["task_id"]), body
    # the length depends on the ids' and names' lengths, equal in both runs
    # the text too: the same bytes, members in the same order
    return _scrub({"status": response.status_code, "headers": headers, "body": body, "text": response.text}, names)


def _redis_state(redis_server: RedisServer, names: dict[str, str]) -> tuple[list[Any], list[Any]]:
    broker, cache = redis_server.client(IDLE_BROKER_DB), redis_server.client(CACHE_DB)
    try:
        messages = []
        for key in sorted(broker.keys("*")):
            for raw in reversed(broker.lrange(key, 0, -1)):
                envelope = json.loads(raw)
                envelope["body"] = json.loads(base64.b64decode(envelope["body"]))
                envelope["headers"].pop("origin", None)  # the host name and this test process's id, each run
                messages.append({"list": key, **envelope})
        metadata = [json.loads(cache.get(key) or "null") for key in sorted(cache.keys(META_KEY + "*"))]
    finally:
        broker.close()
        cache.close()
    return _scrub(messages, names), sorted(_scrub(metadata, names), key=json.dumps)


def _audit_rows(settings: Settings, names: dict[str, str]) -> list[Any]:
    with session_scope(settings) as session:
        rows = session.scalars(select(AuditEntry).where(AuditEntry.actor.in_(names)).order_by(AuditEntry.id)).all()
        found: list[dict[str, Any]] = [
            {"actor": r.actor, "action": r.action, "target": r.target, "outcome": r.outcome}
            | {"request_id": r.request_id, "client": r.client, "details": r.details}
            for r in rows
        ]
    scrubbed: list[Any] = _scrub(found, names)
    return scrubbed


def _metrics(client: GatewayClient) -> tuple[dict[str, float], float]:
    """The gateway's counters (the fast path's apart) and the fast path's count."""
    samples: dict[str, float] = {}
    fast = 0.0
    for metric in client.app.state.runtime.metrics.registry.collect():
        for sample in metric.samples:
            if sample.name.endswith("_created"):
                continue
            if sample.name == "mallops_gateway_fast_submissions_total":
                fast = sample.value
            elif not sample.name.startswith("mallops_gateway_request_duration_seconds_") or sample.name.endswith(
                "_count"
            ):
                samples[f"{sample.name}{sorted(sample.labels.items())}"] = sample.value
    return samples, fast


def _run(
    gateway: GatewayFactory,
    settings: Settings,
    redis_server: RedisServer,
    lines: _Lines,
    steps: list[Step],
    fast: bool,
    **overrides: Any,
) -> Observed:
    for db in (IDLE_BROKER_DB, CACHE_DB):
        redis_client = redis_server.client(db)
        redis_client.flushdb()
        redis_client.close()
    lines.lines.clear()
    secrets, names = _make_tokens(settings)
    entries: list[dict[str, Any]] = []
    broker = f"{redis_server.url_base}/{IDLE_BROKER_DB}"
    limits = {"task_max_per_user": 1000, "rate_limit_per_minute": 100_000} | overrides
    with gateway(broker_url=broker, gateway_fast_submit=fast, **limits) as client:
        buffer = client.app.state.runtime.access_log
        append = buffer.append

        def observed(entry: dict[str, Any]) -> None:
            entries.append(dict(entry))
            append(entry)

        buffer.append = observed
        for who in ("user", "viewer", "admin"):  # each token verified once: in this process's token cache
            assert client.get("/api/v1/catalog", headers={"Authorization": f"Bearer {secrets[who]}"}).is_success
        answers = []
        for i, step in enumerate(steps):
            if step.revoke_first:
                _revoke_elsewhere(settings, redis_server, next(n for n, r in names.items() if r == step.who))
            answers.append(_answer(_send(client, step, secrets, i), names))
    counters, fast_count = _metrics(client)  # once the server stopped: each request accounted after its answer
    messages, metadata = _redis_state(redis_server, names)
    for entry in entries:
        entry.pop("request_id"), entry.pop("ts"), entry.pop("duration_ms")  # the gateway's own id, times
    return Observed(
        answers,
        messages,
        metadata,
        _audit_rows(settings, names),
        counters,
        _scrub(lines.lines, names),
        _scrub(entries, names),
        fast_count,
    )


def _revoke_elsewhere(settings: Settings, redis_server: RedisServer, name: str) -> None:
    """What ``mallops tokens revoke`` does with Redis reachable: this gateway's cache still holds the token."""
    with session_scope(settings) as session:
        assert revoke_token(session, name)
    cache = redis_server.client(CACHE_DB)
    try:
        cache.incr(TOKENS_EPOCH_KEY)
    finally:
        cache.close()


def _compare(
    gateway: GatewayFactory,
    settings: Settings,
    redis_server: RedisServer,
    lines: _Lines,
    steps: list[Step],
    **overrides: Any,
) -> tuple[Observed, Observed]:
    on = _run(gateway, settings, redis_server, lines, steps, True, **overrides)
    off = _run(gateway, settings, redis_server, lines, steps, False, **overrides)
    assert on.answers == off.answers
    assert on.messages == off.messages
    assert on.metadata == off.metadata
    assert on.audit == off.audit
    assert on.metrics == off.metrics
    assert on.access_lines == off.access_lines
    assert on.access_entries == off.access_entries
    assert off.fast == 0
    return on, off


def test_accepted_submissions_are_answered_below_fastapi_as_by_the_route(
    gateway: GatewayFactory, migrated: Settings, redis_server: RedisServer, access_lines: _Lines
) -> None:
    steps = [
        Step("user", {"task_name": "test_task", "kwargs": {"message": "hello"}}),
        Step("user", {"task_name": "test_task", "args": ["positional"], "priority": 3, "countdown": 5}),
        Step("user", {"task_name": "test_task", "eta": "2026-01-01T00:00:00Z"}, headers={"X-Request-ID": "bad id!"}),
        Step("admin", {"task_name": "export_data", "kwargs": {"dataset": "stores", "format": "csv"}}),
        Step("admin", {"task_name": "generate_daily_report", "kwargs": {"date": "2026-11-14"}}),
        Step("user", {"task_name": "test_task"}, headers={"Origin": ORIGIN}),  # CORS headers: the middleware's
    ]
    on, _ = _compare(gateway, migrated, redis_server, access_lines, steps, cors_origins=[ORIGIN])
    assert on.fast == len(steps)
    assert [a["status"] for a in on.answers] == [202] * len(steps)
    assert on.answers[0]["headers"]["content-type"] == "application/json"
    assert on.answers[0]["headers"]["x-request-id"] == "parity-0"
    assert on.answers[2]["headers"]["x-request-id"] == "<hex>"  # the gateway's own, for an implausible one
    assert len(on.messages) == len(on.metadata) == 6
    assert on.answers[-1]["headers"]["access-control-allow-origin"] == ORIGIN
    assert on.messages[0]["headers"]["mallops_request_id"] == "parity-0"
    assert [row["action"] for row in on.audit] == ["task.submit"]  # the export's
    assert on.access_lines[-1].startswith("POST /api/v1/tasks 202 <ms>")
    assert on.access_entries[-2]["principal"] == "<admin>"
    accepted = "mallops_gateway_requests_total[('method', 'POST'), ('route', '/api/v1/tasks'), ('status', '202')]"
    assert on.metrics[accepted] == len(steps)


def test_refusals_and_unusual_requests_are_answered_as_by_the_route(
    gateway: GatewayFactory, migrated: Settings, redis_server: RedisServer, access_lines: _Lines
) -> None:
    idempotent = {"Idempotency-Key": "parity-key"}
    steps = [
        Step("user", b'{"task_name": "test_task",'),  # bad JSON
        Step("user", {"task_name": "test_task", "kwargs": {"fail": "not a boolean"}}),  # 422 arguments
        Step("user", {"task_name": "test_task", "surprise": 1}),  # 422 body
        Step("user", {"task_name": "test_task", "priority": 1.5}),  # 422 body
        Step("user", b"[]"),
        Step("user", b""),
        Step("user", {"task_name": "no_such_task"}),  # 404
        Step("user", {"task_name": "mallops.maintenance.test_task"}),  # 404: the Celery name
        Step("viewer", {"task_name": "test_task"}),  # 403 and its audit row
        Step("user", {"task_name": "cleanup_old_access_records"}),  # 403: a maintenance task
        Step(
            "user",
            {
                "task_name": "send_notification_email",
                "kwargs": {"email": "x@example.com", "subject": "s", "message": "m"},
            },
        ),
        Step("revoked", {"task_name": "test_task"}),  # 401 (never in the cache)
        Step(None, {"task_name": "test_task"}),  # 401
        Step("user", b'{"task_name": "test_task"}', headers={"Content-Type": "text/plain"}),
        Step("user", {"task_name": "test_task"}, headers=idempotent),  # the route's: claimed
        Step("user", {"task_name": "test_task"}, headers=idempotent),  # replayed
        Step("user", {"task_name": "test_task", "countdown": 86_400}),  # deferred to the database: SCHEDULED
        Step("user", b'{"task_name": "test_task", "kwargs": {"message": "' + b"x" * 2000 + b'"}}'),  # 413
        Step("user", {"task_name": "test_task"}, method="PUT"),  # 405
        Step("user", {"task_name": "test_task"}, path=TASKS + "/"),
        Step("user", {"task_name": "test_task"}),  # fast: accepted
        Step("user", {"task_name": "test_task"}, revoke_first=True),  # fast until the script: 401
    ]
    on, _ = _compare(gateway, migrated, redis_server, access_lines, steps, max_body_bytes=1024)
    statuses = [a["status"] for a in on.answers]
    assert statuses[:13] == [422, 422, 422, 422, 422, 422, 404, 404, 403, 403, 403, 401, 401]
    assert statuses[14:18] == [202, 202, 202, 413]
    assert statuses[-2:] == [202, 401]
    assert on.answers[15]["headers"]["idempotent-replayed"] == "true"
    assert on.answers[15]["body"] == on.answers[14]["body"]
    assert on.answers[16]["body"]["status"] == "SCHEDULED"
    assert on.answers[-1]["headers"]["www-authenticate"] == 'Bearer realm="mallops"'
    assert [row["outcome"] for row in on.audit] == ["denied"] * 3
    assert on.fast == 2  # the last two; every other request was the route's


def test_over_the_rate_limit_the_fast_path_answers_429_first_as_the_route(
    gateway: GatewayFactory, migrated: Settings, redis_server: RedisServer, access_lines: _Lines
) -> None:
    """The limit's 429 comes before any other refusal (test_submission.py), on both paths; the warm-up
    request counts (a limit of 4: the catalog, two accepted, one refused, then 429 whatever the body)."""
    bad_arguments = {"task_name": "test_task", "kwargs": {"fail": "not a boolean"}}
    steps = [
        Step("user", {"task_name": "test_task"}),
        Step("user", bad_arguments),
        Step("user", {"task_name": "test_task"}),
        *(
            Step("user", body)
            for body in ({"task_name": "test_task"}, bad_arguments, {"task_name": "cleanup_old_access_records"}, {})
        ),
    ]
    on, _ = _compare(gateway, migrated, redis_server, access_lines, steps, rate_limit_per_minute=4)
    assert [a["status"] for a in on.answers] == [202, 422, 202, 429, 429, 429, 429]
    assert on.answers[3]["body"]["type"] == "urn:mallops:problem:rate-limited"
    assert {"retry-after", "ratelimit-limit"} <= set(on.answers[3]["headers"])
    assert on.fast == 3  # both accepted, and the first refused by the script
    assert on.audit == []  # the 403's row is not written over the limit


def test_the_openapi_document_is_the_same_with_the_fast_path(migrated: Settings) -> None:
    """The FastAPI route stays registered and documented: the fast path only answers some of its requests."""
    on = create_app(migrated.model_copy(update={"gateway_fast_submit": True})).openapi()
    off = create_app(migrated.model_copy(update={"gateway_fast_submit": False})).openapi()
    assert on == off
    assert "post" in on["paths"]["/api/v1/tasks"]


def test_a_full_quota_found_by_the_script_is_answered_as_by_the_route(
    gateway: GatewayFactory, migrated: Settings, redis_server: RedisServer, access_lines: _Lines
) -> None:
    """The script stops at a full quota; the gateway prunes and reserves as the route does, then 429."""
    steps = [Step(who, {"task_name": "test_task"}) for who in ("user", "user", "admin")]  # admin: no quota
    on, _ = _compare(gateway, migrated, redis_server, access_lines, steps, task_max_per_user=1)
    assert [a["status"] for a in on.answers] == [202, 429, 202]
    assert on.answers[1]["body"]["type"] == "urn:mallops:problem:quota-exceeded"
    assert on.answers[1]["headers"]["retry-after"] == "10"
    assert on.fast == 3
