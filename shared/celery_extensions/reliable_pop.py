"""Taking a message off its Redis queue and recording it as unacknowledged in one command (issue 12).

kombu's Redis transport waits with ``BRPOP`` over the consumer's lists (each queue and its priority
sub-lists) and records the message in ``unacked`` (hash) and ``unacked_index`` (sorted set) in a second
round trip. Between the two, the message is only in the reply. A Redis stopped with SIGTERM exits
without sending the replies of its last event-loop iteration: a BRPOP served there popped a message
(the AOF has the pop) that no worker received, and no record says it was ever taken. An accepted task
never ran, in about 6 of 104 restarts under load.

Here the pop is a Lua script, :data:`POP_SCRIPT`: it takes the oldest message of the first non-empty
list and, in the same atomic command, writes kombu's ``unacked`` entry (the JSON kombu writes, the
message text kept byte for byte), its ``unacked_index`` score (the consumer's clock, as kombu), the
consumer's pop marker (:data:`~shared.contracts.POP_MARKER_PREFIX`: pop number and delivery tag) and, in a
worker, the message's holder (:data:`~shared.contracts.DELIVERY_HOLDER_PREFIX`: the worker's hostname and
main pid, the delivery's score). When the reply is lost, the consumer knows the number of its unanswered
pop; once Redis answers again it reads the marker and, if that pop ran, puts the message back on its queue
(:func:`put_back_unanswered`). Everything else that reads ``unacked`` (kombu's visibility sweep, the
requeuer of :mod:`shared.celery_extensions.redelivery`, acknowledgements) sees what kombu writes.

The holder (issue 18): no moment exists when a message is unacknowledged and nothing names the worker that
took it, so a worker SIGKILLed right after a pop has its message put back by the requeuers within seconds.
Before, the only holder was the receipt a worker writes when it receives the message (events): a worker
killed between the pop and that write left its message to the visibility timeout (3 tasks in a 60-minute
soak). The holder goes with the ``unacked`` entry: :class:`~shared.celery_extensions.dead_letters.QoS`
removes both together, and so does the requeuer.

A script cannot block, and Redis 7 has no blocking command that waits on several lists without
popping (``BLMOVE`` waits on one list; the consumer has four per queue). The wait is Redis's client
tracking instead: the consumer's connection (RESP3) asks with ``CLIENT TRACKING ON BCAST NOLOOP PREFIX
<queue>`` to be told of every write to its queues' lists; an invalidation push makes the socket
readable, and the consumer sends the pop. So an idle worker starts a message one round trip later than
BRPOP would (tens of microseconds on one host), a busy one pops as fast as before; nothing polls (one
pop per ``brpop_timeout`` second when idle, as BRPOP's timeout did, in case a push was missed).

Where this cannot be used the transport pops as kombu does (BRPOP, and both windows stay: the holder is
then only the worker's receipt): a ``global_keyprefix``, a RESP2 connection, a server without ``CLIENT
TRACKING`` or scripts (logged once); and for ``RELIABLE_POP_PAUSE`` seconds after Redis refused the script
(out of memory with ``noeviction``: BRPOP still works there).
"""

from __future__ import annotations

import logging
import os
import threading
import uuid
from queue import Empty
from time import monotonic, time
from typing import Any

import redis
from kombu.transport import redis as kombu_redis
from kombu.utils import json as kombu_json

from shared.celery_extensions.redelivery import Holder, holder_ttl
from shared.contracts import DELIVERY_HOLDER_PREFIX, POP_MARKER_PREFIX

log = logging.getLogger("mallops.reliable_pop")

RELIABLE_POP_PAUSE = 10.0  # seconds of kombu's BRPOP after Redis refused the pop script
# the broker transport option naming the worker whose consumer pops (its hostname; set by
# shared.celery_extensions.dead_letters.Consumer): the holder the pop writes
HOLDER_OPTION = "mallops_holder"

# KEYS: unacked hash, unacked_index sorted set, the consumer's pop marker, then the lists in the order
# kombu's BRPOP names them. ARGV: the delivery score (the consumer's clock), the pop number, the marker's
# lifetime in seconds, the holder's JSON ('' for none), the prefix of the holder's key (the delivery tag
# follows), the holder's lifetime in seconds. Returns {list, message, delivery tag ('' when not recorded)}
# or nil. The refusable writes (HSET, ZADD, SET: out of memory) come before the RPOP, which Redis never
# refuses: a refused script leaves the message on its list. A message that is not a kombu envelope with a
# string delivery tag, exchange and routing key is popped without a record nor holder (kombu's envelope
# check then makes it a dead letter, as before). The holder's JSON is built by the consumer
# (:meth:`~shared.celery_extensions.redelivery.Holder.dumps`, its ``ts`` the score): what a receipt holds.
POP_SCRIPT = """
for i = 4, #KEYS do
    local item = redis.call('LINDEX', KEYS[i], -1)
    if item then
        local tag = ''
        local ok, message = pcall(cjson.decode, item)
        if ok and type(message) == 'table' and type(message['properties']) == 'table' then
            local properties = message['properties']
            local info = properties['delivery_info']
            if type(properties['delivery_tag']) == 'string' and type(info) == 'table'
                and type(info['exchange']) == 'string' and type(info['routing_key']) == 'string' then
                tag = properties['delivery_tag']
                redis.call('HSET', KEYS[1], tag, '[' .. item .. ',' .. cjson.encode(info['exchange']) .. ','
                    .. cjson.encode(info['routing_key']) .. ']')
                redis.call('ZADD', KEYS[2], ARGV[1], tag)
                redis.call('SET', KEYS[3], ARGV[2] .. ' ' .. tag, 'EX', ARGV[3])
                if ARGV[4] ~= '' then
                    redis.call('SET', ARGV[5] .. tag, ARGV[4], 'EX', ARGV[6])
                end
            end
        end
        redis.call('RPOP', KEYS[i])
        return {KEYS[i], item, tag}
    end
end
return false
"""

# pops whose reply was lost: (pid, marker key, pop number), checked by the process's next channel
_unanswered: list[tuple[int, str, int]] = []
_unanswered_lock = threading.Lock()
_PUSH = object()  # what reading an invalidation push returns
_warned: set[str] = set()


def tracking_prefixes(queues: list[str]) -> list[str]:
    """The BCAST prefixes for ``queues``: each queue's name covers its priority sub-lists; Redis refuses
    prefixes of one client that overlap, so one that starts with another is left out."""
    prefixes: list[str] = []
    for queue in sorted(set(queues)):
        if not any(queue.startswith(prefix) for prefix in prefixes):
            prefixes.append(queue)
    return prefixes


def _warn_once(reason: str) -> None:
    if reason not in _warned:
        _warned.add(reason)
        log.warning("taking messages with kombu's BRPOP (a Redis shutdown can swallow one): %s", reason)


def _on_push(response: Any) -> Any:
    return _PUSH


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


_loads: Any = kombu_json.loads  # kombu's JSON (its type hooks), as its BRPOP reads a message


class ReliablePopChannel(kombu_redis.Channel):
    """kombu's Redis channel, with the pop of :data:`POP_SCRIPT` and the wait of client tracking.

    The BRPOP connection is in one of three states: ``None`` (kombu's BRPOP, or nothing sent yet),
    ``"pending"`` (a pop sent, its reply not read) and ``"idle"`` (no command pending; a push or the
    next tick sends the next pop). In both of the latter ``_in_poll`` holds the connection, so that kombu
    pauses the socket while the worker has no room and never takes a push for a dropped connection.
    """

    _pop_state: str | None = None
    _in_poll: Any = False  # kombu's: the connection a pop (here: or the wait) is pending on
    _brpop_sent_at: Any = None
    _pop_script_sha: str | None = None
    _tracking: tuple[Any, tuple[str, ...]] | None = None
    _more = False
    _idle_since = 0.0
    _brpop_until = 0.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._pop_number = 0
        self._pop_marker = f"{POP_MARKER_PREFIX}{uuid.uuid4()}"
        self._recorded: set[str] = set()  # delivery tags the pop script recorded, not yet handed over
        super().__init__(*args, **kwargs)  # type: ignore[no-untyped-call]

    # -- choosing the pop ---------------------------------------------------------------------------

    def _reliable_pop_possible(self, connection: Any) -> bool:
        if self.global_keyprefix:
            _warn_once("a global_keyprefix is set")
            return False
        if not self.ack_emulation:
            return False
        protocol = connection.get_protocol() if hasattr(connection, "get_protocol") else 2
        if str(protocol) != "3":
            _warn_once("the broker connection speaks RESP2 (client tracking needs RESP3)")
            return False
        return monotonic() >= self._brpop_until

    def _brpop_start(self, timeout: Any = None) -> None:
        connection = self.client.connection
        self._pop_state = None
        if connection is None or not self.active_queues or not self._reliable_pop_possible(connection):
            super()._brpop_start(timeout)  # type: ignore[no-untyped-call]
            return
        try:
            self._start_tracking(connection)
        except self.ResponseError as exc:  # no CLIENT TRACKING or no scripts on this server
            _warn_once(f"{exc}")
            self._brpop_until = float("inf")
            super()._brpop_start(timeout)  # type: ignore[no-untyped-call]
            return
        self._send_pop(connection)

    def _start_tracking(self, connection: Any) -> None:
        """Client tracking for the consumer's lists on ``connection`` and the script loaded, once per socket."""
        prefixes = tuple(tracking_prefixes(self.active_queues))
        if self._tracking == (connection._sock, prefixes):
            return
        if connection._sock is None:
            connection.connect()
        connection._parser.set_invalidation_push_handler(_on_push)
        if self._tracking is not None and self._tracking[0] is connection._sock:
            connection.send_command("CLIENT", "TRACKING", "OFF")  # other queues now: prefixes are only added
            connection.read_response()
        arguments = [word for prefix in prefixes for word in ("PREFIX", prefix)]
        connection.send_command("CLIENT", "TRACKING", "ON", "BCAST", "NOLOOP", *arguments)
        connection.read_response()
        connection.send_command("SCRIPT", "LOAD", POP_SCRIPT)
        self._pop_script_sha = _text(connection.read_response())
        self._tracking = (connection._sock, prefixes)

    def _holder_host(self) -> str:
        options = getattr(getattr(self.connection, "client", None), "transport_options", None) or {}
        host = options.get(HOLDER_OPTION)
        return host if isinstance(host, str) else ""

    @property
    def names_holder(self) -> bool:
        """Whether this channel's pops write the holder of what they take (in a worker with events on)."""
        return bool(self._holder_host())

    def _holder(self, now: float) -> str:
        """The JSON of the holder of what this pop takes: this worker (its hostname, this process), or ''
        outside a worker."""
        host = self._holder_host()
        return Holder(host, os.getpid(), now).dumps() if host else ""

    def _send_pop(self, connection: Any) -> None:
        queues = self._queue_cycle.consume(len(self.active_queues))
        keys = [self._q_for_pri(queue, pri) for pri in self.priority_steps for queue in queues]  # type: ignore[no-untyped-call]
        self._pop_number += 1
        self._in_poll = connection
        self._brpop_sent_at = monotonic()
        self._pop_state = "pending"
        now = time()
        connection.send_command(
            "EVALSHA",
            self._pop_script_sha,
            3 + len(keys),
            self.unacked_key,
            self.unacked_index_key,
            self._pop_marker,
            *keys,
            repr(now),  # the holder's ts is this score, to the digit
            self._pop_number,
            max(int(self.visibility_timeout), 1),
            self._holder(now),
            DELIVERY_HOLDER_PREFIX,
            holder_ttl(self.visibility_timeout),
        )

    def _go_idle(self, more: bool) -> None:
        self._pop_state = "idle"
        self._more = more
        self._idle_since = monotonic()
        self._brpop_sent_at = None

    def pop_tick(self) -> None:
        """At each turn of the event loop: the next pop when idle with room for a message and either the
        last pop found one (more may wait) or ``brpop_timeout`` seconds passed without a push."""
        connection = self._in_poll
        if self._pop_state != "idle" or self._closing or not connection or connection._sock is None:
            return
        if not self.active_queues or not self.qos.can_consume():
            return
        if self._more or monotonic() - self._idle_since >= self.brpop_timeout:
            self._send_pop(connection)

    # -- reading -------------------------------------------------------------------------------------

    def _brpop_read(self, **options: Any) -> Any:
        if self._pop_state is None:
            return super()._brpop_read(**options)  # type: ignore[no-untyped-call]
        connection = self.client.connection
        try:
            if self._pop_state == "idle":
                self._read_pushes(connection)
                if not self._closing and self.active_queues and self.qos.can_consume():
                    self._send_pop(connection)  # a list of ours was written to
                raise Empty()
            reply = connection.read_response()  # pushes in between are skipped (_on_push)
        except self.connection_errors:
            connection.disconnect()  # the next turn reconnects; _on_connection_disconnect keeps the pop
            raise
        except self.ResponseError as exc:  # NOSCRIPT (script cache flushed) or OOM: nothing was popped
            self._refused(connection, exc)
            raise Empty() from exc
        if not reply:
            self._go_idle(more=False)
            raise Empty()
        return self._deliver_popped(reply)

    def _read_pushes(self, connection: Any) -> None:
        while connection.can_read(timeout=0):  # invalidation pushes (or the end of a closed connection)
            connection.read_response(push_request=True)

    def _refused(self, connection: Any, exc: Exception) -> None:
        self._tracking = None  # loads the script again
        if not isinstance(exc, redis.exceptions.NoScriptError):
            log.warning("Redis refused the pop script (%s): BRPOP for %.0f s", exc, RELIABLE_POP_PAUSE)
            self._brpop_until = monotonic() + RELIABLE_POP_PAUSE
        self._pop_state = None
        connection.disconnect()  # pushes would follow the BRPOP connection: start again on a new socket

    def _deliver_popped(self, reply: Any) -> bool:
        # idle first: a message that cannot even be decoded (not UTF-8) raises below, and a pop left
        # "pending" would wait for kombu's stale-connection check (about 50 s) before the next one
        self._go_idle(more=True)
        key, raw, tag = reply
        key, tag = _text(key), _text(tag)
        dest = key.rsplit(self.sep, 1)[0]
        self._queue_cycle.rotate(dest)
        if tag:
            self._recorded.add(tag)
        try:
            self.connection._deliver(_loads(_text(raw)), dest)
        finally:
            if tag in self._recorded:  # recorded but not handed over (not a valid envelope): not to come back
                self._recorded.discard(tag)
                self.qos._remove_from_indices(tag).execute()
        return True

    def take_recorded(self, delivery_tag: Any) -> bool:
        """Whether the pop script already recorded ``delivery_tag`` in ``unacked`` (then QoS need not)."""
        try:
            self._recorded.remove(str(delivery_tag))
        except KeyError:
            return False
        return True

    def _poll_error(self, type: Any, **options: Any) -> Any:
        if type == "BRPOP" and self._pop_state is not None:
            return self._brpop_read()
        return super()._poll_error(type, **options)  # type: ignore[no-untyped-call]

    def _on_connection_disconnect(self, connection: Any) -> None:
        if self._in_poll is connection and self._pop_state is not None:
            if self._pop_state == "pending":  # its reply is lost: the marker tells whether it ran
                with _unanswered_lock:
                    _unanswered.append((os.getpid(), self._pop_marker, self._pop_number))
            self._pop_state = None
            self._tracking = None
        super()._on_connection_disconnect(connection)  # type: ignore[no-untyped-call]


def take_unanswered() -> list[tuple[int, str, int]]:
    """This process's pops whose reply was lost (removed from the list)."""
    pid = os.getpid()
    with _unanswered_lock:
        mine = [entry for entry in _unanswered if entry[0] == pid]
        _unanswered[:] = [entry for entry in _unanswered if entry[0] != pid]
    return mine


def keep_unanswered(entries: list[tuple[int, str, int]]) -> None:
    with _unanswered_lock:
        _unanswered[:0] = entries


def put_back_unanswered(channel: Any, client: Any, entries: list[tuple[int, str, int]]) -> int:
    """Put back on its queue the message of each unanswered pop that ran (its marker names it and it is
    still unacknowledged); the number put back. ``entries`` are removed from as they are done."""
    count = 0
    while entries:
        _, marker, number = entries[0]
        value = client.get(marker)
        recorded = _text(value).split(" ", 1) if value else []
        if len(recorded) == 2 and recorded[0] == str(number) and client.hexists(channel.unacked_key, recorded[1]):
            channel.qos.restore_by_tag(recorded[1], client)
            count += 1
        entries.pop(0)
    return count


class Poller(kombu_redis.MultiChannelPoller):
    """kombu's poller, with :meth:`ReliablePopChannel.pop_tick` at the start of every poll."""

    def on_poll_start(self) -> None:
        for channel in list(self._channels):
            tick = getattr(channel, "pop_tick", None)
            if tick is not None:
                tick()
        super().on_poll_start()  # type: ignore[no-untyped-call]
