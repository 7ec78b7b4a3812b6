"""Fixtures for real services: a redis-server of the run's own, a fresh database, worker processes.

Database choice: ``MALLOPS_TEST_DB=postgres`` or ``sqlite`` forces one. Otherwise PostgreSQL is used when
``MALLOPS_TEST_POSTGRES_URL`` is set or a server answers on 127.0.0.1:5432, and SQLite when not.
A PostgreSQL run creates a fresh database and drops it afterwards.
"""

from __future__ import annotations

import datetime as dt
import os
import socket
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import redis
from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session

from shared.db import make_engine, migrate, reset_engines, session_scope
from shared.settings import Settings, get_settings
from tests.harness import Process, RedisServer, start_redis, start_worker

if TYPE_CHECKING:
    from tests.plugins.smtp import SMTPServer

pytest_plugins = ["tests.plugins.smtp", "tests.plugins.catalog_tasks"]

DEFAULT_PG = "postgresql://postgres@127.0.0.1:5432/postgres"
DEMO_AS_OF = dt.date(2026, 11, 15)


def _postgres_answers() -> bool:
    try:
        with socket.create_connection(("127.0.0.1", 5432), timeout=0.5):
            return True
    except OSError:
        return False


def _choose_database() -> str:
    choice = os.environ.get("MALLOPS_TEST_DB", "").lower()
    pg_url = os.environ.get("MALLOPS_TEST_POSTGRES_URL")
    if choice == "sqlite":
        return "sqlite"
    if choice == "postgres":
        if not pg_url and not _postgres_answers():
            pytest.fail(
                "MALLOPS_TEST_DB=postgres but no PostgreSQL answers on 127.0.0.1:5432 "
                "and MALLOPS_TEST_POSTGRES_URL is not set"
            )
        return "postgres"
    return "postgres" if pg_url or _postgres_answers() else "sqlite"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """``MALLOPS_TEST_DATABASE_ONLY=1`` (scripts/test's PostgreSQL pass) keeps the tests whose outcome can
    depend on the run's database: those that use it (``database_url``, directly or through ``service_env``,
    ``settings``, the workers...) or are marked ``database``. The others answer the same on every database,
    and the SQLite pass has run them."""
    if os.environ.get("MALLOPS_TEST_DATABASE_ONLY") != "1":
        return
    kept: list[pytest.Item] = []
    dropped: list[pytest.Item] = []
    for item in items:
        uses = "database_url" in getattr(item, "fixturenames", ()) or item.get_closest_marker("database")
        (kept if uses else dropped).append(item)
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = kept


@pytest.fixture(scope="session")
def database_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    if _choose_database() == "sqlite":
        yield f"sqlite:///{tmp_path_factory.mktemp('db') / 'mallops-test.db'}"
        return
    admin_url = make_url(os.environ.get("MALLOPS_TEST_POSTGRES_URL", DEFAULT_PG)).set(drivername="postgresql+psycopg")
    name = f"mallops_test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield admin_url.set(database=name).render_as_string(hide_password=False)
    finally:
        reset_engines()
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = start_redis(tmp_path_factory.mktemp("redis"))
    yield server
    server.stop()


@pytest.fixture(scope="session")
def service_env(
    database_url: str,
    redis_server: RedisServer,
    smtp_server: SMTPServer,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[dict[str, str]]:
    """The MALLOPS_* environment of this run, applied to the test process and given to children."""
    data_dir = tmp_path_factory.mktemp("data")
    values = {
        "MALLOPS_ENVIRONMENT": "test",
        "MALLOPS_DATABASE_URL": database_url,
        "MALLOPS_REDIS_URL": redis_server.url_base,
        "MALLOPS_BROKER_URL": f"{redis_server.url_base}/0",
        "MALLOPS_RESULT_BACKEND": f"{redis_server.url_base}/1",
        "MALLOPS_DATA_DIR": str(data_dir),
        "MALLOPS_LOG_LEVEL": "INFO",
        "MALLOPS_WORKER_CONCURRENCY": "2",
        **smtp_server.env,  # every notifier worker delivers to the run's own SMTP server
    }
    saved = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    get_settings.cache_clear()
    reset_engines()  # pooled Redis clients are per URL: they need no reset
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOPS_")} | values
    env["PYTHONPATH"] = str(Path(__file__).resolve().parent.parent)
    yield env
    for key, old in saved.items():
        if old is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = old
    get_settings.cache_clear()


@pytest.fixture(scope="session")
def settings(service_env: dict[str, str]) -> Settings:
    return get_settings()


@pytest.fixture(scope="session")
def migrated(settings: Settings) -> Settings:
    migrate(settings)
    return settings


@pytest.fixture(scope="session")
def savepoint_engine(migrated: Settings) -> Iterator[Engine]:
    """An engine of the tests' own for :func:`db`. On SQLite it carries SQLAlchemy's documented pysqlite
    workaround (the driver's own transaction handling breaks SAVEPOINT: turn it off and emit BEGIN
    ourselves), which production engines do not need."""
    engine = make_engine(migrated.sqlalchemy_url)
    if engine.dialect.name == "sqlite":

        @event.listens_for(engine, "connect")
        def _no_pysqlite_transactions(dbapi_connection: Any, _record: Any) -> None:
            dbapi_connection.isolation_level = None

        @event.listens_for(engine, "begin")
        def _begin(connection: Any) -> None:
            connection.exec_driver_sql("BEGIN")

    yield engine
    engine.dispose()


@pytest.fixture
def db(savepoint_engine: Engine) -> Iterator[Session]:
    """A session inside a transaction that is rolled back after the test ("Joining a Session into an
    External Transaction"): what the test writes is never committed, so tests need no cleanup and see no
    one else's rows. A commit in the code under test releases a SAVEPOINT instead. Only for tests whose
    data no other process (worker, gateway) has to read."""
    with savepoint_engine.connect() as connection:
        transaction = connection.begin()
        session = Session(bind=connection, join_transaction_mode="create_savepoint", expire_on_commit=False)
        try:
            yield session
        finally:
            session.close()
            transaction.rollback()


@pytest.fixture
def demo(db: Session) -> Session:
    """The demo mall of :func:`demo_db`, inside the test's rolled-back transaction (for tests that need
    no other process to see it)."""
    from mallops.demo_data import generate

    generate(db, stores=20, months=3, seed=7, as_of=DEMO_AS_OF, reset=True)
    return db


@pytest.fixture
def demo_db(migrated: Settings) -> Settings:
    """A small deterministic demo mall (20 stores, 3 months to DEMO_AS_OF), replaced for each test."""
    from mallops.demo_data import generate

    with session_scope(migrated) as session:
        generate(session, stores=20, months=3, seed=7, as_of=DEMO_AS_OF, reset=True)
    return migrated


@pytest.fixture
def redis_client(redis_server: RedisServer) -> Iterator[redis.Redis[bytes]]:
    client = redis_server.client()
    yield client
    client.close()


@pytest.fixture
def clean_broker(redis_server: RedisServer) -> None:
    """Empty every Redis database the platform uses, so no message leaks between tests."""
    for db in (0, 1, 2):
        client = redis_server.client(db)
        client.flushdb()
        client.close()


@pytest.fixture(scope="session")
def worker_factory(
    service_env: dict[str, str], migrated: Settings, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Callable[..., Process]]:
    """Start real worker processes (``mallops serve <service>``); all are stopped at the end of the run."""
    started: list[Process] = []
    log_dir = tmp_path_factory.mktemp("logs")

    def start(service: str, *extra: str, env: dict[str, str] | None = None, hostname: str | None = None) -> Process:
        process = start_worker(service, env or service_env, log_dir, *extra, hostname=hostname)
        started.append(process)
        return process

    yield start
    for process in started:
        process.stop()


@pytest.fixture(scope="session")
def running_worker(worker_factory: Callable[..., Process]) -> Callable[[str], Process]:
    """One shared worker per service for the whole run, started on first use (and again if it died)."""
    workers: dict[str, Process] = {}

    def get(service: str) -> Process:
        if service not in workers or not workers[service].alive():
            workers[service] = worker_factory(service)
        return workers[service]

    return get


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No MALLOPS_* variable and no .env file: what a process with no configuration sees."""
    for key in list(os.environ):
        if key.startswith("MALLOPS_"):
            monkeypatch.delenv(key)
    monkeypatch.chdir(tmp_path)
