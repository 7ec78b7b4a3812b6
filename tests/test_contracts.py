"""The contracts live in ``shared/contracts.py`` only: no task state or event type is written out as a string
anywhere else in production code (where copies drift apart, as READY_STATES once lacked REJECTED)."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest

from shared.contracts import EventType, TaskState, WorkerRecord, priority_keys, priority_queue_key

ROOT = Path(__file__).resolve().parent.parent
PRODUCTION = ("shared", "services", "mallops")
CONTRACTS = Path("shared") / "contracts.py"
MIGRATIONS = Path("shared") / "migrations"
RESERVED = frozenset(TaskState) | frozenset(EventType)


def contract_literals(root: Path) -> list[str]:
    """``path:line: 'LITERAL'`` for every string constant equal to a state or an event type outside the
    contracts module (migrations, which are history, excepted)."""
    found: list[str] = []
    for package in PRODUCTION:
        for path in sorted((root / package).rglob("*.py")):
            relative = path.relative_to(root)
            if relative == CONTRACTS or MIGRATIONS in relative.parents:
                continue
            tree = ast.parse(path.read_text(), filename=str(path))
            found.extend(
                f"{relative}:{node.lineno}: {node.value!r}"
                for node in ast.walk(tree)
                if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in RESERVED
            )
    return found


def test_no_state_or_event_type_literal_outside_the_contracts() -> None:
    assert contract_literals(ROOT) == []


@pytest.mark.parametrize(
    "source",
    [
        'READY = frozenset({"SUCCESS", "FAILURE"})\n',
        "def f(state: str) -> bool:\n    return state == 'REJECTED'\n",
        'emit("task-revoked", id="x")\n',
        'State = Literal["PENDING", "SENT"]\n',
    ],
)
def test_the_scan_finds_a_literal(tmp_path: Path, source: str) -> None:
    for package in PRODUCTION:
        (tmp_path / package).mkdir()
    (tmp_path / "services" / "gateway.py").write_text(source)
    (tmp_path / "shared" / "contracts.py").write_text('SUCCESS = "SUCCESS"\n')  # the one allowed place
    (tmp_path / "shared" / "migrations").mkdir()
    (tmp_path / "shared" / "migrations" / "0001.py").write_text('DEFAULT = "SENT"\n')
    assert contract_literals(tmp_path) != []
    assert all(line.startswith("services/gateway.py:") for line in contract_literals(tmp_path))


def test_final_states_include_rejected_and_revoked() -> None:
    from shared.contracts import FINAL_STATES

    assert {TaskState.REJECTED, TaskState.REVOKED, TaskState.SUCCESS, TaskState.FAILURE} == FINAL_STATES


def test_a_worker_record_survives_its_json_round_trip() -> None:
    record = WorkerRecord("finance@h", 1_700_000_000.5, "finance", 42, ["finance"], 4, 1, 17, "offline")
    assert WorkerRecord.from_json("finance@h", record.to_json()) == record
    assert json.loads(record.to_json())["last_heartbeat"] == 1_700_000_000.5
    assert WorkerRecord.from_json("x", "not json") is None
    assert WorkerRecord.from_json("x", '{"service": "finance"}') is None  # no heartbeat time


def test_kombu_priority_lists() -> None:
    assert priority_keys("q") == ["q", "q\x06\x163", "q\x06\x166", "q\x06\x169"]
    assert [priority_queue_key("q", p) for p in (None, 0, 2, 3, 5, 9)] == [
        "q",
        "q",
        "q",
        *["q\x06\x163"] * 2,
        "q\x06\x169",
    ]
