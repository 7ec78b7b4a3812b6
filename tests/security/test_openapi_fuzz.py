"""schemathesis against the gateway's own OpenAPI document, with an admin and with a viewer token: no 5xx,
and every response (status, content type, headers, body) is one the document describes."""

from __future__ import annotations

from collections import Counter, defaultdict
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from services.gateway.app import create_app
from shared.settings import Settings
from tests.security.conftest import Gateway

pytestmark = pytest.mark.integration

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]
MAX_EXAMPLES = 25
VIEWER_EXAMPLES = 10
COVERAGE_PHASE = False
SEEN: defaultdict[str, Counter[int]] = defaultdict(Counter)  # operation -> status -> responses
SEEN_BY_VIEWER: defaultdict[str, Counter[int]] = defaultdict(Counter)


# The document the served app publishes at /openapi.json (building the app connects to nothing). It is
# loaded at collection, not from the running gateway: schemathesis' fixture-based loader does not work with
# pytest 9. test_the_served_document_is_the_fuzzed_one checks that the two are the same.
schema = schemathesis.openapi.from_dict(create_app(Settings(environment="test")).openapi())
schema.config.phases.coverage.enabled = COVERAGE_PHASE


@schema.parametrize()
@settings(max_examples=MAX_EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
def test_every_response_conforms_to_the_document(case: Any, secure_gateway: Gateway) -> None:
    response = case.call_and_validate(base_url=secure_gateway.url, headers=secure_gateway.auth("admin"), checks=CHECKS)
    SEEN[f"{case.method} {case.path}"][response.status_code] += 1


@schema.parametrize()
@settings(max_examples=VIEWER_EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
def test_every_response_to_a_viewer_conforms_to_the_document(case: Any, secure_gateway: Gateway) -> None:
    """The same with a viewer token: what it may not do is a documented 403, never a 5xx."""
    response = case.call_and_validate(base_url=secure_gateway.url, headers=secure_gateway.auth("viewer"), checks=CHECKS)
    SEEN_BY_VIEWER[f"{case.method} {case.path}"][response.status_code] += 1


def test_the_fuzzer_got_past_validation_to_the_broker(secure_gateway: Gateway) -> None:
    """The per-task document lets generated submissions be accepted: they reached the queues."""
    if not SEEN:
        pytest.skip("the fuzz test did not run in this session")
    print({operation: dict(statuses) for operation, statuses in sorted(SEEN.items())})
    assert SEEN["POST /api/v1/tasks"][202] > 0
    assert SEEN["POST /api/v1/tasks/batch"][202] > 0
    if SEEN_BY_VIEWER:  # a viewer submits nothing, and reads
        print({operation: dict(statuses) for operation, statuses in sorted(SEEN_BY_VIEWER.items())})
        assert SEEN_BY_VIEWER["POST /api/v1/tasks"][202] == 0
        assert SEEN_BY_VIEWER["POST /api/v1/tasks"][403] > 0
        assert SEEN_BY_VIEWER["GET /api/v1/tasks/history"][200] > 0


def test_the_served_document_is_the_fuzzed_one(api: Any) -> None:
    assert api.get("/openapi.json").json() == schema.raw_schema
