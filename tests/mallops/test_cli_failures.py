"""The failure commands against a real gateway process: a failure's traceback in `tasks status`, the bulk
`tasks retry|revoke` selections, `history` by several states and argument values, `dead-letters`."""

from __future__ import annotations

import json
import re
from collections.abc import Callable

import pytest

from shared import dead_letter_store
from shared.settings import Settings
from tests.harness import Process, RedisServer
from tests.mallops.conftest import CliRunner, LiveGateway
from tests.security.test_malformed_messages import task_body, task_headers

pytestmark = [pytest.mark.integration]


def test_status_shows_a_failures_traceback(
    cli: CliRunner, gateway_env: LiveGateway, running_worker: Callable[[str], Process]
) -> None:
    running_worker("maintenance")
    failed = cli("tasks", "send", "test_task", "--kwargs", '{"fail": true, "message": "tb"}', "--wait", "--json")
    assert failed.code == 1, failed
    task_id = json.loads(failed.out)["task_id"]
    status = cli("tasks", "status", task_id)
    assert status.code == 0, status
    assert re.search(r"^traceback:\nTraceback \(most recent call last\):\n", status.out, re.M), status.out
    assert status.out.rstrip().endswith("RequestedFailure: test_task failed on request: tb")
    assert "traceback" in json.loads(cli("tasks", "status", task_id, "--json").out)


def test_bulk_selections_and_history_filters(cli: CliRunner, gateway_env: LiveGateway) -> None:
    nothing = cli("tasks", "retry")
    assert nothing.code == 2
    assert nothing.err_lines == [
        "mallops: give a task id, or select tasks with --failed, --status, --task, --since, --until or --where"
    ]
    bad_where = cli("tasks", "retry", "--failed", "--where", "message=x")
    assert bad_where.code == 2
    assert "--where takes kwargs.<field>=<value>" in bad_where.err
    dry = cli("tasks", "retry", "--failed", "--since", "1h", "--where", "kwargs.message=no such message", "--dry-run")
    assert dry.code == 0, dry
    assert dry.out == "0 task(s) match; nothing retried (--dry-run)\n"
    done = cli("tasks", "revoke", "--task", "test_task", "--where", "kwargs.message=no such message", "--json")
    assert done.code == 0, done
    assert json.loads(done.out)["count"] == 0
    wrong = cli("tasks", "revoke", "--status", "FAILURE")
    assert wrong.code == 2
    assert "only SENT, RECEIVED, STARTED, PROGRESS, RETRY tasks qualify" in wrong.err
    history = cli("history", "--status", "FAILURE,REVOKED", "--where", "kwargs.filters.store_id=12", "--json")
    assert history.code == 0, history
    assert json.loads(history.out)["results"] == []
    user = cli("tasks", "retry", "--failed", env={"MALLOPS_TOKEN": gateway_env.user})
    assert user.code == 3


def test_dead_letter_commands(
    cli: CliRunner, gateway_env: LiveGateway, migrated: Settings, redis_server: RedisServer
) -> None:
    cache = redis_server.client(2)
    letter, message = dead_letter_store.build(
        "unknown task 'mallops.maintenance.gone'",
        exception="NotRegistered",
        queue="nowhere-queue",
        headers=task_headers("mallops.maintenance.gone", "cli-dead-letter-1"),
        body=task_body({"store_id": 12}),
        content_type="application/json",
        content_encoding="utf-8",
        max_body_bytes=migrated.max_body_bytes,
    )
    dead_letter_store.add(cache, letter, message)
    listed = cli("dead-letters", "list", "--task", "mallops.maintenance.gone", "--json")
    assert listed.code == 0, listed
    assert [x["id"] for x in json.loads(listed.out)["results"]] == [letter.id]
    table = cli("dead-letters", "list", "--queue", "nowhere-queue")
    assert letter.id in table.out
    assert "NotRegistered" in table.out
    shown = cli("dead-letters", "show", letter.id, "--json")
    assert json.loads(shown.out)["headers"]["id"] == "cli-dead-letter-1"
    assert cli("dead-letters", "drop").code == 2
    assert cli("dead-letters", "replay", "0" * 32).code == 2

    replayed = cli("dead-letters", "replay", letter.id)
    assert replayed.code == 0, replayed
    assert re.fullmatch(rf"replayed {letter.id} onto nowhere-queue as task [0-9a-f-]{{36}}\n", replayed.out)
    broker = redis_server.client(0)
    raw = broker.rpop("nowhere-queue")
    assert raw is not None
    assert json.loads(raw)["headers"]["task"] == "mallops.maintenance.gone"

    dead_letter_store.add(
        cache,
        *dead_letter_store.build(
            "x", exception="NotRegistered", queue="nowhere-queue", headers={}, body=b"{}", max_body_bytes=100
        ),
    )
    dry = cli("dead-letters", "drop", "--queue", "nowhere-queue", "--dry-run")
    assert dry.out == "1 dead letter(s) match; nothing dropped (--dry-run)\n"
    dropped = cli("dead-letters", "drop", "--queue", "nowhere-queue")
    assert dropped.code == 0, dropped
    assert dropped.out == "dropped 1 dead letter(s)\n"
    assert cli("dead-letters", "list", env={"MALLOPS_TOKEN": gateway_env.user}).code == 3  # admin only
    for client in (broker, cache):
        client.close()
