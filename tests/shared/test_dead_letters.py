"""The message checks of shared.celery_extensions.dead_letters, without a broker (the worker-level test is
tests/security/test_malformed_messages.py)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import pytest

from shared.celery_extensions.dead_letters import body_problem, header_problem

GOOD = {
    "lang": "py",
    "task": "mallops.maintenance.test_task",
    "id": "a1",
    "retries": 0,
    "timelimit": [None, 60],
    "eta": None,
    "expires": None,
    "root_id": "a1",
    "parent_id": None,
    "group": None,
    "argsrepr": "()",
    "kwargsrepr": "{}",
    "origin": "gw",
    "mallops_owner": "alice",
}


@dataclass
class Message:
    headers: Any
    body: bytes
    content_type: str = "application/json"


def test_well_formed_headers_and_messages_that_are_not_protocol_2_pass() -> None:
    assert header_problem(GOOD) is None
    assert header_problem({**GOOD, "timelimit": [1.5, 3]}) is None
    assert header_problem({}) is None  # no task header: Celery's own unknown-message path
    assert header_problem(None) is None


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        ({"id": None}, "id header"),
        ({"id": 7}, "id header"),
        ({"id": ""}, "id header"),
        ({"task": ["x"]}, "task header"),
        ({"task": ""}, "task header"),
        ({"task": "celery.accumulate"}, "built-in"),
        ({"task": "celery.chord_unlock"}, "built-in"),
        ({"retries": "many"}, "retries"),
        ({"retries": -1}, "retries"),
        ({"retries": True}, "retries"),
        ({"timelimit": "x"}, "timelimit"),
        ({"timelimit": [1, 2, 3]}, "timelimit"),
        ({"timelimit": [0, "a"]}, "timelimit"),
        ({"eta": 5}, "eta"),
        ({"root_id": {}}, "root_id"),
        ({"mallops_owner": ["x"]}, "mallops_owner"),
    ],
)
def test_malformed_headers_are_named(change: dict[str, Any], problem: str) -> None:
    found = header_problem({**GOOD, **change})
    assert found is not None
    assert problem in found


@pytest.mark.parametrize(
    ("body", "ok"),
    [
        ([[], {"message": "m"}, {"callbacks": None}], True),
        ([[], {}, {"callbacks": None, "errbacks": None, "chain": None, "chord": None}], True),
        # canvas: a chain, a callback or a chord behind a valid task is never run (workflows are mallops' own)
        ([[], {}, {"chain": [{"task": "mallops.maintenance.cleanup_cache", "kwargs": {}}]}], False),
        ([[], {}, {"callbacks": [{"task": "mallops.maintenance.backup_database"}]}], False),
        ([[], {}, {"chord": {"task": "mallops.maintenance.test_task"}}], False),
        ([[1], {}, None], True),
        ([[], ["message"], {}], False),
        ([{"message": "m"}, {}, {}], False),
        ([[]], False),
        ({"args": []}, False),
        ("[]", False),
    ],
)
def test_the_body_must_be_args_kwargs_options(body: Any, ok: bool) -> None:
    assert (body_problem(Message(GOOD, json.dumps(body).encode())) is None) is ok


def test_bodies_left_to_celery() -> None:
    assert body_problem(Message(GOOD, b"\x00 not json")) is None  # on_decode_error records it
    assert body_problem(Message(GOOD, b"\x80\x04.", "application/x-python-serialize")) is None  # refused by Celery
    assert body_problem(Message({}, b"[]")) is None  # not a protocol-2 task message
