"""A platform of the browser tests' own: a redis-server, a real gateway process (uvicorn), a maintenance
worker and the monitor, on the run's database; Debian's Chromium through Playwright."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from decimal import Decimal

import httpx
import pytest
from playwright.sync_api import Browser, BrowserContext, Page
from sqlalchemy import delete

from shared.db import session_scope
from shared.models import Store
from shared.settings import Settings
from shared.tokens import create_token
from tests.console import browser as chrome
from tests.harness import (
    Process,
    free_port,
    redis_env,
    service_argv,
    spawn,
    start_redis,
    wait_http_ready,
    wait_until,
)

pytestmark = pytest.mark.integration


@dataclass
class Stack:
    url: str
    admin: str
    admin_name: str
    user: str
    user_name: str
    viewer: str

    def submit(self, token: str, task_name: str, **kwargs: object) -> str:
        answer = httpx.post(
            f"{self.url}/api/v1/tasks",
            headers={"Authorization": f"Bearer {token}"},
            json={"task_name": task_name, "kwargs": kwargs},
            timeout=30,
        )
        assert answer.status_code == 202, answer.text
        return str(answer.json()["task_id"])

    def task(self, token: str, task_id: str) -> dict[str, object]:
        answer = httpx.get(f"{self.url}/api/v1/tasks/{task_id}", headers={"Authorization": f"Bearer {token}"})
        assert answer.status_code == 200, answer.text
        result: dict[str, object] = answer.json()
        return result

    def recorded(self, token: str, task_id: str) -> None:
        """Wait until the monitor has the task's final state in the history (what the task list reads)."""

        def done() -> bool:
            answer = httpx.get(
                f"{self.url}/api/v1/tasks/history",
                params={"limit": 50},
                headers={"Authorization": f"Bearer {token}"},
                timeout=10,
            )
            rows = {row["task_id"]: row["state"] for row in answer.json()["results"]}
            return rows.get(task_id) in ("SUCCESS", "FAILURE", "REVOKED")

        wait_until(done, timeout=60, interval=0.2, message=f"the monitor's history row of {task_id}")


@pytest.fixture(scope="module")
def stack(
    service_env: dict[str, str],
    migrated: Settings,
    worker_factory: Callable[..., Process],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Stack]:
    if chrome.chromium_path() is None:
        pytest.fail(chrome.CHROMIUM_MISSING)
    workdir = tmp_path_factory.mktemp("console")
    redis = start_redis(workdir / "redis")
    env = (
        service_env
        | redis_env(redis)
        | {
            "MALLOPS_LOG_LEVEL": "WARNING",
            "MALLOPS_TASK_MAX_PER_USER": "50",
            "MALLOPS_WORKER_HEARTBEAT_INTERVAL": "0.5",
        }
    )
    suffix = uuid.uuid4().hex[:8]
    with session_scope(migrated) as session:
        admin = create_token(session, f"console-admin-{suffix}", "admin")
        user = create_token(session, f"console-user-{suffix}", "user")
        viewer = create_token(session, f"console-viewer-{suffix}", "viewer")
    processes: list[Process] = []
    try:
        port, monitor_port = free_port(), free_port()
        gateway = spawn("gateway", service_argv("gateway", "--port", str(port)), env, workdir)
        processes.append(gateway)
        wait_http_ready(gateway, f"http://127.0.0.1:{port}/readyz")
        monitor = spawn("monitor", service_argv("monitor", f"--port={monitor_port}"), env, workdir)
        processes.append(monitor)
        wait_http_ready(monitor, f"http://127.0.0.1:{monitor_port}/health")
        worker_factory("maintenance", env=env)  # stopped by worker_factory at the end of the run
        worker_factory("reports", env=env)  # exports
        yield Stack(
            f"http://127.0.0.1:{port}", admin, f"console-admin-{suffix}", user, f"console-user-{suffix}", viewer
        )
    finally:
        for process in processes:
            process.stop()
        redis.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if chrome.chromium_path() is None:
        pytest.fail(chrome.CHROMIUM_MISSING)
    with chrome.chromium() as launched:
        yield launched


@dataclass
class Tab:
    page: Page
    context: BrowserContext
    offline: chrome.Offline

    def assert_accessible(self) -> None:
        violations = chrome.axe_violations(self.page)
        assert violations == [], f"axe-core on {self.page.url}: {violations}"


@pytest.fixture
def open_tab(browser: Browser, stack: Stack) -> Iterator[Callable[[str], Tab]]:
    """``open_tab("zh_CN")``: a fresh browser profile in that language, blocked from every other host."""
    contexts: list[BrowserContext] = []

    def make(language: str = "en") -> Tab:
        context, offline = chrome.new_context(browser, stack.url, language)
        contexts.append(context)
        page = context.new_page()
        page.set_default_timeout(30_000)
        return Tab(page, context, offline)

    yield make
    for context in contexts:
        context.close()


@pytest.fixture
def stores(migrated: Settings) -> Iterator[int]:
    """2,500 stores of the test's own (an export with some batches of rows), removed afterwards."""
    prefix = "C" + uuid.uuid4().hex[:6]
    count = 2500
    with session_scope(migrated) as session:
        session.add_all(
            Store(
                code=f"{prefix}{i:05d}",
                name=f"Console store {i}",
                category="retail",
                floor=1 + i % 5,
                area_sqm=Decimal("42.50"),
                opened_on=dt.date(2024, 1, 1),
            )
            for i in range(count)
        )
    yield count
    with session_scope(migrated) as session:
        session.execute(delete(Store).where(Store.code.startswith(prefix)))
