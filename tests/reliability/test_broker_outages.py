"""Faults of the broker itself, with the shipped defaults (full suite only, ``scripts/faults``):

- a RabbitMQ node of the test's own (``rabbitmq-server`` on free ports, its own node name and data
  directory) restarted while tasks are queued and running;
- the network between a worker and its broker cut for 30 s and restored (a TCP proxy of the test's own on
  127.0.0.1 between the worker and the broker, on Redis and on RabbitMQ). Only the broker link is cut: the
  worker's heartbeats (cache Redis) go on, so on Redis no requeuer takes its messages away.

A task whose worker lost the broker while running it may run again (its acknowledgement could not reach
the broker): each such run is counted as a duplicate, and the e-mails of the network scenario show that
the effect is single (one e-mail per notification, though the task ran twice).
"""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest

from tests.harness import Process, free_port, spawn, wait_until
from tests.plugins.smtp import SMTPServer
from tests.reliability.conftest import BROKERS, FULL_ONLY, FaultResults, FaultStack, record
from tests.reliability.test_lost_worker import FAULT_OVERRIDES

LONG = "mallops.maintenance.long_running_task"
TEST = "mallops.maintenance.test_task"
EMAIL = "mallops.notifier.send_notification_email"
CUT_SECONDS = 30.0


# -- a RabbitMQ node of the test's own ------------------------------------------------------------------


class RabbitNode:
    """``rabbitmq-server`` on free loopback ports with its own node name, data and log directories."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.name = f"mallops-{uuid.uuid4().hex[:8]}@localhost"
        self.process: Process | None = None
        workdir.mkdir(parents=True, exist_ok=True)
        (workdir / "enabled_plugins").write_text("[].\n")
        (workdir / "rabbitmq.conf").write_text("loopback_users = none\n")
        self.env = dict(os.environ) | {
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
            "RABBITMQ_DIST_PORT": str(free_port()),
            "RABBITMQ_NODENAME": self.name,
            "RABBITMQ_MNESIA_BASE": str(workdir / "mnesia"),
            "RABBITMQ_LOG_BASE": str(workdir / "log"),
            "RABBITMQ_CONFIG_FILE": str(workdir / "rabbitmq"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(workdir / "enabled_plugins"),
            "RABBITMQ_PID_FILE": str(workdir / "pid"),
        }

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}//"

    def start(self) -> None:
        # the script itself: /usr/sbin's wrapper would switch to the rabbitmq user, who cannot write here
        direct = Path("/usr/lib/rabbitmq/bin/rabbitmq-server")
        binary = str(direct) if direct.exists() else shutil.which("rabbitmq-server")
        if binary is None:
            pytest.skip("no rabbitmq-server binary")
        self.process = spawn(f"rabbitmq-{self.port}", [binary], self.env, self.workdir)
        wait_until(self.answers, timeout=120, interval=0.5, message=f"rabbitmq-server on port {self.port}")

    def answers(self) -> bool:
        assert self.process is not None
        if not self.process.alive():
            pytest.fail(f"rabbitmq-server exited:\n{self.process.log()[-3000:]}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
            return True
        return False

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop(timeout=60)  # SIGTERM to its group: a clean shutdown, queues kept on disk
            self.process = None


@pytest.fixture
def rabbit_node(tmp_path: Path) -> Iterator[RabbitNode]:
    node = RabbitNode(tmp_path / "rabbitmq")
    node.start()
    yield node
    node.stop()


def _on_broker(stack: FaultStack, broker_url: str) -> FaultStack:
    for key in FAULT_OVERRIDES:
        stack.env.pop(key, None)
    stack.env["MALLOPS_BROKER_URL"] = broker_url
    stack.settings = stack.settings.model_copy(update={"broker_url": broker_url})
    return stack


def _started_on(stack: FaultStack, ids: list[str], host: str) -> list[str]:
    return [
        e["id"] for e in stack.ledger().events if e["type"] == "task-started" and e["id"] in ids and e["host"] == host
    ]


@pytest.mark.parametrize("size", FULL_ONLY)
def test_rabbitmq_node_restarted_with_tasks_queued_and_running(
    fault_stack: FaultStack, rabbit_node: RabbitNode, size: str, fault_results: FaultResults
) -> None:
    stack = _on_broker(fault_stack, rabbit_node.url)
    stack.broker = "amqp (own node)"
    restarts = 3
    started = time.monotonic()
    worker = stack.worker()
    ids: list[str] = []
    running_at_restart: list[str] = []
    for _ in range(restarts):
        batch = [stack.publish(LONG, steps=4, step_seconds=1.0) for _ in range(4)]
        batch += [stack.publish(TEST, message=f"queued {i}") for i in range(20)]
        ids += batch
        wait_until(
            functools.partial(lambda b: len(set(_started_on(stack, b, worker.name))) >= 2, batch),
            timeout=60,
            message="two long tasks running",
        )
        ledger = stack.ledger()
        running_at_restart += [i for i in batch if ledger.counts[i]["task-started"] and not ledger.finished([i])]
        rabbit_node.stop()
        rabbit_node.start()  # same node name, data directory and port
        stack.wait_finished(batch, timeout=180)
    ledger = stack.wait_finished(ids, timeout=120)
    again = [i for i in running_at_restart if ledger.counts[i]["task-started"] > 1]
    outcome = record(
        fault_results,
        stack,
        "RabbitMQ node restarted (SIGTERM, same data) with tasks queued and running",
        size,
        restarts,
        ids,
        started,
        notes=f"{len(running_at_restart)} tasks were running at the restarts: {len(again)} ran again "
        "(their acknowledgement could not reach the stopped broker, which gave their messages back); every "
        "queued message (quorum queue, persistent) survived; the worker reconnected by itself",
    )
    assert outcome.lost == 0
    assert worker.alive()


# -- the network between a worker and its broker cut ------------------------------------------------------


class TCPProxy:
    """A loopback TCP proxy the test controls: :meth:`cut` drops every connection and refuses new ones
    (as a failed link would, seen from both ends), :meth:`restore` accepts again."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.port = free_port()
        self.listener: socket.socket | None = None
        self.pairs: list[tuple[socket.socket, socket.socket]] = []
        self.lock = threading.Lock()
        self.stopping = False
        self.restore()

    def restore(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", self.port), reuse_port=False)
        threading.Thread(target=self._accept, args=(self.listener,), daemon=True).start()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            with self.lock:
                self.pairs.append((client, upstream))
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(source: socket.socket, sink: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                sink.sendall(data)
        for s in (source, sink):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)

    def cut(self) -> None:
        if self.listener is not None:
            self.listener.close()
            self.listener = None
        with self.lock:
            pairs, self.pairs = self.pairs, []
        for pair in pairs:
            for s in pair:
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
                s.close()

    def close(self) -> None:
        self.cut()


@pytest.mark.parametrize("size", FULL_ONLY)
@pytest.mark.parametrize("fault_stack", BROKERS, indirect=True)
def test_network_to_the_broker_cut_for_30s_then_restored(
    fault_stack: FaultStack, smtp: SMTPServer, size: str, fault_results: FaultResults
) -> None:
    broker_url = fault_stack.settings.celery_broker_url
    parts = urlsplit(broker_url)
    proxy = TCPProxy((parts.hostname or "127.0.0.1", parts.port or 5672))
    proxied = urlunsplit(parts._replace(netloc=parts.netloc.replace(f":{parts.port}", f":{proxy.port}")))
    stack = _on_broker(fault_stack, broker_url)
    trials = 2
    started = time.monotonic()
    try:
        stack.worker("maintenance", env={"MALLOPS_BROKER_URL": proxied})
        stack.worker("notifier", env={"MALLOPS_BROKER_URL": proxied} | smtp.env)
        ids: list[str] = []
        emails: list[str] = []
        for trial in range(trials):
            batch = [stack.publish(LONG, steps=3, step_seconds=1.0) for _ in range(2)]
            mails = [
                stack.publish(
                    EMAIL,
                    queue="email",
                    email=f"cut{trial}-{i}@mall.example",
                    subject="Network cut",
                    message="Exactly one copy.",
                    language="en",
                )
                for i in range(20)
            ]
            ids += batch + mails
            emails += mails
            wait_until(
                functools.partial(lambda b: all(stack.ledger().counts[i]["task-started"] for i in b), batch),
                timeout=60,
                message="the long tasks running",
            )
            proxy.cut()
            time.sleep(CUT_SECONDS)  # the fault itself: the link stays down this long
            proxy.restore()
            stack.wait_finished(batch + mails, timeout=240)
        ledger = stack.wait_finished(ids, timeout=120)
    finally:
        proxy.close()
    copies = [len(smtp.to(f"cut{t}-{n}@mall.example")) for t in range(trials) for n in range(20)]
    twice = ledger.duplicated(ids)
    outcome = record(
        fault_results,
        stack,
        "network between the workers and the broker cut for 30 s, then restored",
        size,
        trials,
        ids,
        started,
        notes=f"{len(twice)} tasks ran twice ({sum(1 for i in twice if i in emails)} of them e-mails); e-mails "
        f"received per notification: {min(copies)}-{max(copies)} ({sum(copies)} for {len(emails)}): each "
        "effect once; the workers reconnected by themselves",
    )
    assert outcome.lost == 0
    assert max(copies) == 1
    assert min(copies) == 1
