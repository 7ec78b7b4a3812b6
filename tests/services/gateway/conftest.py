"""Gateway fixtures: the real app (create_app) served by uvicorn, against the run's own redis-server and
database.

``gateway(**overrides)`` serves the app with settings overridden per test on a free port, in a thread of
the test process (so a test can also look at ``app.state.runtime``), and yields an ``httpx.Client`` on it;
``tokens`` creates API tokens in the database.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import uvicorn
from fastapi import FastAPI

from services.gateway.app import create_app
from shared.db import session_scope
from shared.models import Export, Report, TaskRecord
from shared.settings import Settings
from shared.tokens import create_token, revoke_token
from tests.harness import free_port, wait_until


@dataclass
class Tokens:
    admin: str
    alice: str
    bob: str
    revoked: str
    alice_name: str
    bob_name: str
    admin_name: str

    def auth(self, who: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {getattr(self, who)}"}


@pytest.fixture
def tokens(migrated: Settings) -> Tokens:
    suffix = uuid.uuid4().hex[:8]
    names = {who: f"{who}-{suffix}" for who in ("admin", "alice", "bob", "revoked")}
    with session_scope(migrated) as session:
        secrets = {
            "admin": create_token(session, names["admin"], "admin"),
            "alice": create_token(session, names["alice"], "user"),
            "bob": create_token(session, names["bob"], "user"),
            "revoked": create_token(session, names["revoked"], "user"),
        }
        revoke_token(session, names["revoked"])
    return Tokens(
        admin=secrets["admin"],
        alice=secrets["alice"],
        bob=secrets["bob"],
        revoked=secrets["revoked"],
        alice_name=names["alice"],
        bob_name=names["bob"],
        admin_name=names["admin"],
    )


class GatewayClient(httpx.Client):
    app: FastAPI


GatewayFactory = Callable[..., contextlib.AbstractContextManager[GatewayClient]]


@contextlib.contextmanager
def serve(app: FastAPI) -> Iterator[str]:
    """Serve ``app`` with uvicorn (httptools) on a free port in a thread; yields the base URL."""
    port = free_port()
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=port,
        loop="asyncio",
        http="httptools",
        lifespan="on",
        log_level="warning",
        access_log=False,
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name=f"gateway-{port}", daemon=True)
    thread.start()
    try:
        wait_until(lambda: server.started or not thread.is_alive(), timeout=30, message="gateway startup")
        if not server.started:
            pytest.fail("the gateway did not start (see the log above)")
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)


@pytest.fixture
def gateway(migrated: Settings, clean_broker: None) -> GatewayFactory:
    """``with gateway(**setting_overrides) as client:`` a gateway on this run's Redis and database."""

    @contextlib.contextmanager
    def start(**overrides: Any) -> Iterator[GatewayClient]:
        settings = migrated.model_copy(update=overrides)
        app = create_app(settings)
        with serve(app) as url, GatewayClient(base_url=url, timeout=30) as client:
            client.app = app
            yield client

    return start


@pytest.fixture
def client(gateway: GatewayFactory) -> Iterator[GatewayClient]:
    with gateway() as c:
        yield c


# Rows the gateway tests put into the shared database, removed after each test so that no other area's
# test (e.g. retention) counts them.
_CREATED: list[tuple[type[Any], Any]] = []


@pytest.fixture(autouse=True)
def _remove_created_rows(migrated: Settings) -> Iterator[None]:
    yield
    if _CREATED:
        with session_scope(migrated) as session:
            for model, key in _CREATED:
                row = session.get(model, key)
                if row is not None:
                    session.delete(row)
        _CREATED.clear()


def make_report(settings: Settings, csv_path: str | None, html_path: str | None) -> int:
    # recent (not past any retention) and never on a whole hour, so never the period of a real report
    start = dt.datetime.now(dt.UTC).replace(microsecond=0) - dt.timedelta(days=1, seconds=uuid.uuid4().int % 10**7)
    start = start.replace(second=max(start.second, 1))
    with session_scope(settings) as session:
        row = Report(
            kind="hourly",
            period_start=start,
            period_end=start + dt.timedelta(hours=1),
            data={"sales": 42},
            csv_path=csv_path,
            html_path=html_path,
            task_id=None,
        )
        session.add(row)
        session.flush()
        _CREATED.append((Report, row.id))
        return row.id


def make_export(
    settings: Settings,
    owner: str,
    status: str = "done",
    file_name: str | None = None,
    expires_at: dt.datetime | None = None,
) -> str:
    task_id = str(uuid.uuid4())
    with session_scope(settings) as session:
        row = Export(
            task_id=task_id,
            owner=owner,
            dataset="stores",
            format="csv",
            filters={},
            status=status,
            file_name=file_name,
            rows=1,
            size_bytes=10,
            sha256=None,
            expires_at=expires_at,
        )
        session.add(row)
        session.flush()
        _CREATED.append((Export, row.id))
    return task_id


def make_history(
    settings: Settings,
    owner: str,
    state: str,
    sent_at: dt.datetime,
    runtime: float | None = None,
    task_name: str = "mallops.maintenance.test_task",
    arguments: dict[str, Any] | None = None,
    traceback: str | None = None,
) -> str:
    task_id = str(uuid.uuid4())
    with session_scope(settings) as session:
        session.add(
            TaskRecord(
                task_id=task_id,
                task_name=task_name,
                queue="default",
                state=state,
                owner=owner,
                worker="maintenance@host",
                retries=0,
                sent_at=sent_at,
                started_at=sent_at,
                finished_at=sent_at + dt.timedelta(seconds=runtime or 0) if state == "SUCCESS" else None,
                runtime=runtime,
                queue_wait=0.1,
                result_summary="'Task received: old'" if state == "SUCCESS" else None,
                arguments=arguments,
                traceback=traceback,
                exception="RequestedFailure" if state == "FAILURE" else None,
                error="failed on request" if state == "FAILURE" else None,
                updated_at=sent_at,
            )
        )
    _CREATED.append((TaskRecord, task_id))
    return task_id
