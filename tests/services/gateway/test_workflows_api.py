"""The workflows API without workers: idempotency, ownership, validation before anything is stored, revoke
of steps not yet run (against the run's Redis and database)."""

from __future__ import annotations

from typing import Any

import pytest

from tests.services.gateway.conftest import GatewayClient, Tokens

pytestmark = pytest.mark.integration
API = "/api/v1"
BODY: dict[str, Any] = {
    "steps": [{"task_name": "test_task", "kwargs": {"message": "x"}}, {"name": "two", "task_name": "test_task"}]
}


def test_the_same_idempotency_key_starts_one_workflow(client: GatewayClient, tokens: Tokens) -> None:
    headers = {**tokens.auth("alice"), "Idempotency-Key": "close-2026-10"}
    first = client.post(f"{API}/workflows", json=BODY, headers=headers)
    assert first.status_code == 202, first.text
    again = client.post(f"{API}/workflows", json=BODY, headers=headers)
    assert again.status_code == 202
    assert again.headers["Idempotent-Replayed"] == "true"
    assert again.json()["workflow_id"] == first.json()["workflow_id"]
    other = client.post(f"{API}/workflows", json={"steps": [{"task_name": "test_task"}]}, headers=headers)
    assert other.status_code == 409


# The run's shared workers may be up (tests before this one start them): the first step takes 5 s, so the
# second is still waiting for it whatever a worker does meanwhile.
SLOW_FIRST: dict[str, Any] = {
    "steps": [
        {"task_name": "long_running_task", "kwargs": {"steps": 10, "step_seconds": 0.5}},
        {"name": "two", "task_name": "test_task", "kwargs": {"message": "x"}},
    ]
}


def test_owners_see_their_own_and_revoke_stops_the_rest(client: GatewayClient, tokens: Tokens) -> None:
    started = client.post(f"{API}/workflows", json=SLOW_FIRST, headers=tokens.auth("alice")).json()
    workflow_id = started["workflow_id"]
    assert started["status"] in {"PENDING", "STARTED"}
    assert started["steps"][1]["state"] == "PENDING"
    assert started["steps"][0]["state"] in {"SENT", "STARTED"}
    assert client.get(f"{API}/workflows/{workflow_id}", headers=tokens.auth("bob")).status_code == 404
    assert client.get(f"{API}/workflows/{workflow_id}", headers=tokens.auth("admin")).status_code == 200
    listed = client.get(f"{API}/workflows", headers=tokens.auth("bob")).json()["results"]
    assert workflow_id not in {row["workflow_id"] for row in listed}
    assert client.post(f"{API}/workflows/{workflow_id}/revoke", headers=tokens.auth("bob")).status_code == 404
    revoked = client.post(f"{API}/workflows/{workflow_id}/revoke", headers=tokens.auth("alice")).json()
    assert revoked["status"] == "REVOKED"
    # a step a worker already runs finishes (docs/workflows.md); one not yet started never runs
    assert revoked["steps"][0]["state"] in {"REVOKED", "STARTED"}
    assert revoked["steps"][1]["state"] == "REVOKED"
    assert revoked["reason"] == f"revoked by {tokens.alice_name}"
    mine = client.get(f"{API}/workflows", params={"status": "REVOKED"}, headers=tokens.auth("alice")).json()
    assert workflow_id in {row["workflow_id"] for row in mine["results"]}


def test_nothing_is_stored_for_a_workflow_that_does_not_fit(client: GatewayClient, tokens: Tokens) -> None:
    before = client.get(f"{API}/workflows", headers=tokens.auth("alice")).json()["total"]
    bad = {"steps": [{"task_name": "test_task"}, {"parallel": [{"task_name": "test_task", "kwargs": {"x": 1}}]}]}
    answer = client.post(f"{API}/workflows", json=bad, headers=tokens.auth("alice"))
    assert answer.status_code == 422
    assert answer.json()["errors"][0]["loc"] == ["body", "steps", 1, "parallel", 0, "kwargs", "x"]
    both = client.post(f"{API}/workflows", json={"name": "month_end_close", **BODY}, headers=tokens.auth("alice"))
    assert both.status_code == 422
    maintenance = {"steps": [{"task_name": "backup_database"}]}
    refused = client.post(f"{API}/workflows", json=maintenance, headers=tokens.auth("alice"))
    assert refused.status_code == 403
    assert refused.json()["permission"] == "tasks.submit.maintenance"
    assert client.get(f"{API}/workflows", headers=tokens.auth("alice")).json()["total"] == before


def test_the_listing_counts_every_match_and_the_page_apart(client: GatewayClient, tokens: Tokens) -> None:
    """``total``: the workflows that match on every page; ``count``: those on this page."""
    for _ in range(3):
        assert client.post(f"{API}/workflows", json=BODY, headers=tokens.auth("bob")).status_code == 202
    everything = client.get(f"{API}/workflows", params={"limit": 500}, headers=tokens.auth("bob")).json()
    assert everything["total"] == everything["count"] == len(everything["results"]) >= 3
    page = client.get(f"{API}/workflows", params={"limit": 2, "offset": 1}, headers=tokens.auth("bob")).json()
    assert page["count"] == len(page["results"]) == 2
    assert page["total"] == everything["total"]
    assert [row["workflow_id"] for row in page["results"]] == [row["workflow_id"] for row in everything["results"][1:3]]
    none = client.get(f"{API}/workflows", params={"name": "month_end_close"}, headers=tokens.auth("bob")).json()
    assert none == {"count": 0, "total": 0, "results": []}
