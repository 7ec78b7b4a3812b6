"""The dead-letter store on a real Redis: ids, the cap (the oldest go, their messages with them), pages and
filters, a take that only one of two replays gets, a body cut at the limit."""

from __future__ import annotations

import pytest

from shared import dead_letter_store as store
from tests.harness import RedisServer

pytestmark = pytest.mark.usefixtures("clean_broker")


def letter(
    n: int, *, task: str = "mallops.maintenance.test_task", queue: str = "default", body: bytes = b"[[], {}, {}]"
) -> tuple[store.DeadLetter, store.StoredMessage]:
    return store.build(
        f"reason {n}",
        exception="NotRegistered" if n % 2 else "InvalidTaskHeaders",
        queue=queue,
        headers={"task": task, "id": f"task-{n}", "mallops_owner": "ops"},
        body=body,
        content_type="application/json",
        content_encoding="utf-8",
        max_body_bytes=100,
    )


def test_ids_cap_pages_filters_and_take(redis_server: RedisServer) -> None:
    client = redis_server.client(2)
    made = [letter(n, queue="reports" if n == 4 else "default") for n in range(5)]
    for item, message in made:
        store.add(client, item, message, keep=4)
    assert store.count(client) == 4
    oldest = made[0][0].id
    assert store.get(client, oldest) is None
    assert store.get_message(client, oldest) is None  # its message went with it
    assert client.hlen(store.MESSAGES_KEY) == 4

    total, page = store.find(client, store.LetterFilter(), offset=0, limit=2)
    assert total == 4
    assert [x.id for x in page] == [made[4][0].id, made[3][0].id]  # newest first
    total, page = store.find(client, store.LetterFilter(), offset=2, limit=2)
    assert [x.id for x in page] == [made[2][0].id, made[1][0].id]
    assert store.find(client, store.LetterFilter(queue="reports"))[0] == 1
    assert store.find(client, store.LetterFilter(exception="NotRegistered"))[0] == 2
    assert store.find(client, store.LetterFilter(tasks=frozenset({"other"})))[0] == 0
    assert store.find(client, store.LetterFilter(ids=frozenset({made[2][0].id, "nope"})))[0] == 1

    first = store.take(client, made[1][0].id)
    assert first is not None
    assert first[1].body == "[[], {}, {}]"
    assert first[0].arguments is None  # none given to build()
    assert store.take(client, made[1][0].id) is None  # a second replay finds it gone
    store.put_back(client, first[0])
    assert store.count(client) == 4
    assert store.forget(client, [made[1][0].id, "nope"]) == 1
    assert store.count(client) == 3
    client.close()


def test_a_body_over_the_limit_is_cut_and_not_replayable() -> None:
    big, message = letter(1, body=b"x" * 150)
    assert big.size == 150
    assert big.truncated
    assert not big.replayable
    assert message.body == "x" * 100
    binary, message = letter(2, body=b"\xff\xfe\x00")
    assert binary.replayable
    assert message.body_encoding == "base64"
    assert message.body_bytes() == b"\xff\xfe\x00"
    assert binary.task_id == "task-2"
    assert binary.owner == "ops"
