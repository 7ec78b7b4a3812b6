"""Dead letters kept whole, each with a stable id: what a worker could not run, to look at, replay or drop.

Workers record them (:mod:`shared.celery_extensions.dead_letters`,
:meth:`shared.celery_extensions.task_base.MallopsTask.dead_letter`); the gateway
lists, replays and drops them (``/api/v1/dead-letters``); the monitor counts them (``mallops_dead_letters``).
Three keys of the cache Redis (db 2), changed together by one script or transaction:

- :data:`INDEX_KEY`: a sorted set, id -> when it was recorded (epoch seconds), newest last;
- :data:`ENTRIES_KEY`: a hash, id -> the summary as JSON (:class:`DeadLetter`);
- :data:`MESSAGES_KEY`: a hash, id -> the message as JSON (:class:`StoredMessage`): headers, body,
  content type and encoding, properties, as the broker handed them over, up to ``MALLOPS_MAX_BODY_BYTES``
  of body (the gateway's body limit); a longer body is cut and that letter cannot be replayed.

At most :data:`MAX_DEAD_LETTERS` are kept; the oldest go first.
"""

from __future__ import annotations

import base64
import binascii
import json
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import redis

from shared.contracts import DEAD_LETTER_ENTRIES_KEY, DEAD_LETTER_INDEX_KEY, DEAD_LETTER_MESSAGES_KEY

INDEX_KEY = DEAD_LETTER_INDEX_KEY
ENTRIES_KEY = DEAD_LETTER_ENTRIES_KEY
MESSAGES_KEY = DEAD_LETTER_MESSAGES_KEY

MAX_DEAD_LETTERS = 10_000
REASON_CHARS = 2000
POISON = "PoisonMessage"  # the exception of a message whose worker died in each of its runs

_ADD = """
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
redis.call('HSET', KEYS[2], ARGV[1], ARGV[3])
redis.call('HSET', KEYS[3], ARGV[1], ARGV[4])
local excess = redis.call('ZCARD', KEYS[1]) - tonumber(ARGV[5])
if excess > 0 then
  local old = redis.call('ZPOPMIN', KEYS[1], excess)
  for i = 1, #old, 2 do
    redis.call('HDEL', KEYS[2], old[i])
    redis.call('HDEL', KEYS[3], old[i])
  end
end
return excess
"""


@dataclass(frozen=True)
class StoredMessage:
    """A dead-lettered message as the broker handed it over. ``body`` is text (``body_encoding`` utf-8)
    or base64; ``envelope`` is False when it was not even a message envelope (only ``body`` is known)."""

    body: str
    body_encoding: str = "utf-8"
    headers: dict[str, Any] = field(default_factory=dict)
    content_type: str | None = None
    content_encoding: str | None = None
    properties: dict[str, Any] = field(default_factory=dict)
    envelope: bool = True
    truncated: bool = False

    def body_bytes(self) -> bytes:
        if self.body_encoding == "base64":
            return base64.b64decode(self.body)
        return self.body.encode("utf-8")

    @classmethod
    def from_json(cls, raw: str | bytes) -> StoredMessage:
        return cls(**json.loads(raw))


@dataclass(frozen=True)
class DeadLetter:
    """One dead letter's summary, as ``GET /api/v1/dead-letters`` shows it."""

    id: str
    at: float  # epoch seconds
    reason: str
    exception: str
    queue: str | None
    task: str | None  # the task name the message gave, if any
    task_id: str | None
    owner: str | None
    arguments: dict[str, Any] | None
    size: int  # bytes of body
    truncated: bool
    envelope: bool

    @property
    def poison(self) -> bool:
        return self.exception == POISON

    @property
    def replayable(self) -> bool:
        return self.envelope and not self.truncated and bool(self.queue)

    @classmethod
    def from_json(cls, raw: str | bytes) -> DeadLetter:
        return cls(**json.loads(raw))


def as_bytes(value: Any) -> bytes | None:
    if value is None:
        return None
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value)
    if isinstance(value, str):
        return value.encode("utf-8", errors="surrogateescape")
    return json.dumps(value, default=repr).encode("utf-8")


def build(
    reason: str,
    *,
    exception: str,
    queue: str | None,
    headers: Any,
    body: Any,
    content_type: str | None = None,
    content_encoding: str | None = None,
    properties: Mapping[str, Any] | None = None,
    envelope: bool = True,
    max_body_bytes: int,
    arguments: dict[str, Any] | None = None,
) -> tuple[DeadLetter, StoredMessage]:
    """A new dead letter (a fresh id) and its message, the body cut at ``max_body_bytes``."""
    data = as_bytes(body) or b""
    truncated = len(data) > max_body_bytes
    kept = data[:max_body_bytes]
    try:
        text, encoding = kept.decode("utf-8"), "utf-8"
    except UnicodeDecodeError:
        text, encoding = base64.b64encode(kept).decode("ascii"), "base64"
    header_map = {str(k): v for k, v in headers.items()} if isinstance(headers, dict) else {}
    clean_headers = json.loads(json.dumps(header_map, default=repr))
    message = StoredMessage(
        body=text,
        body_encoding=encoding,
        headers=clean_headers,
        content_type=content_type,
        content_encoding=content_encoding,
        properties=json.loads(json.dumps(dict(properties or {}), default=repr)),
        envelope=envelope,
        truncated=truncated,
    )

    def text_header(name: str) -> str | None:
        value = clean_headers.get(name)
        return value if isinstance(value, str) else None

    letter = DeadLetter(
        id=uuid.uuid4().hex,
        at=time.time(),
        reason=reason if len(reason) <= REASON_CHARS else reason[: REASON_CHARS - 1] + "…",
        exception=exception,
        queue=queue,
        task=text_header("task"),
        task_id=text_header("id"),
        owner=text_header("mallops_owner"),
        arguments=arguments,
        size=len(data),
        truncated=truncated,
        envelope=envelope,
    )
    return letter, message


def add(client: redis.Redis[Any], letter: DeadLetter, message: StoredMessage, keep: int = MAX_DEAD_LETTERS) -> None:
    """Keep a dead letter (and drop the oldest beyond ``keep``) in one atomic script."""
    client.eval(  # type: ignore[no-untyped-call]
        _ADD,
        3,
        INDEX_KEY,
        ENTRIES_KEY,
        MESSAGES_KEY,
        letter.id,
        letter.at,
        json.dumps(asdict(letter), separators=(",", ":")),
        json.dumps(asdict(message), separators=(",", ":")),
        keep,
    )


def count(client: redis.Redis[Any]) -> int:
    return int(client.zcard(INDEX_KEY))


@dataclass(frozen=True)
class LetterFilter:
    """Which dead letters: by task name (short or Celery name), queue, exception, time, or ids."""

    tasks: frozenset[str] = frozenset()
    queue: str | None = None
    exception: str | None = None
    since: float | None = None
    until: float | None = None
    ids: frozenset[str] = frozenset()

    @property
    def empty(self) -> bool:
        return (
            not (self.tasks or self.queue or self.exception or self.ids) and self.since is None and self.until is None
        )

    def matches(self, letter: DeadLetter) -> bool:
        return (
            (not self.tasks or letter.task in self.tasks)
            and (self.queue is None or letter.queue == self.queue)
            and (self.exception is None or letter.exception == self.exception)
            and (not self.ids or letter.id in self.ids)
        )


def _decode(raw: Iterable[Any]) -> list[DeadLetter]:
    return [DeadLetter.from_json(item) for item in raw if item is not None]


def find(
    client: redis.Redis[Any], where: LetterFilter, offset: int = 0, limit: int = 50
) -> tuple[int, list[DeadLetter]]:
    """(how many match, the page ``offset``..``offset + limit``), newest first."""
    low = "-inf" if where.since is None else where.since
    high = "+inf" if where.until is None else f"({where.until}"
    if where.ids:
        ids = [i for i in where.ids if client.zscore(INDEX_KEY, i) is not None]
        letters = sorted(_decode(client.hmget(ENTRIES_KEY, ids)) if ids else [], key=lambda x: -x.at)
        letters = [letter for letter in letters if where.matches(letter)]
        return len(letters), letters[offset : offset + limit]
    if not (where.tasks or where.queue or where.exception):
        total = int(client.zcount(INDEX_KEY, low, high))
        ids = client.zrevrangebyscore(INDEX_KEY, high, low, start=offset, num=limit)
        return total, _decode(client.hmget(ENTRIES_KEY, ids)) if ids else []
    ids = client.zrevrangebyscore(INDEX_KEY, high, low)
    matching: list[DeadLetter] = []
    for start in range(0, len(ids), 500):
        matching.extend(x for x in _decode(client.hmget(ENTRIES_KEY, ids[start : start + 500])) if where.matches(x))
    return len(matching), matching[offset : offset + limit]


def get(client: redis.Redis[Any], letter_id: str) -> DeadLetter | None:
    raw = client.hget(ENTRIES_KEY, letter_id)
    return DeadLetter.from_json(raw) if raw is not None else None


def get_message(client: redis.Redis[Any], letter_id: str) -> StoredMessage | None:
    raw = client.hget(MESSAGES_KEY, letter_id)
    return StoredMessage.from_json(raw) if raw is not None else None


def take(client: redis.Redis[Any], letter_id: str) -> tuple[DeadLetter, StoredMessage] | None:
    """Remove a dead letter from the index and return it with its message, or None when it is not
    there (any more): of two concurrent replays, only one takes it. :func:`forget` or :func:`put_back` next."""
    pipe = client.pipeline(transaction=True)
    pipe.zrem(INDEX_KEY, letter_id)
    pipe.hget(ENTRIES_KEY, letter_id)
    pipe.hget(MESSAGES_KEY, letter_id)
    removed, entry, message = pipe.execute()
    if not removed or entry is None or message is None:
        return None
    return DeadLetter.from_json(entry), StoredMessage.from_json(message)


def put_back(client: redis.Redis[Any], letter: DeadLetter) -> None:
    client.zadd(INDEX_KEY, {letter.id: letter.at})


def forget(client: redis.Redis[Any], letter_ids: Sequence[str]) -> int:
    """Drop dead letters for good; how many there were."""
    if not letter_ids:
        return 0
    pipe = client.pipeline(transaction=True)
    pipe.zrem(INDEX_KEY, *letter_ids)
    pipe.hdel(ENTRIES_KEY, *letter_ids)
    pipe.hdel(MESSAGES_KEY, *letter_ids)
    removed, _, _ = pipe.execute()
    return int(removed)


def decode_body_arguments(content_type: str | None, body: bytes) -> tuple[Any, Any] | None:
    """``(args, kwargs)`` of a JSON protocol-2 body ``[args, kwargs, embed]``, or None."""
    if content_type not in (None, "application/json"):
        return None
    try:
        value = json.loads(body)
    except (ValueError, UnicodeDecodeError, binascii.Error):
        return None
    if isinstance(value, list) and len(value) == 3 and isinstance(value[0], list) and isinstance(value[1], dict):
        return value[0], value[1]
    return None
