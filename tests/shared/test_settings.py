from __future__ import annotations

import pytest
from pydantic import ValidationError

from shared.settings import Settings

pytestmark = pytest.mark.usefixtures("clean_env")


def test_embedded_defaults_need_no_environment() -> None:
    settings = Settings()
    assert settings.sqlalchemy_url == "sqlite:///.mallops/mallops.db"
    assert settings.celery_broker_url == "redis://127.0.0.1:6379/0"
    assert settings.celery_result_backend == "redis://127.0.0.1:6379/1"
    assert settings.task_max_per_user == 5
    assert settings.timezone == "Asia/Shanghai"


def test_environment_overrides(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MALLOPS_DATABASE_URL", "postgresql://u:p@db:5432/mall")
    monkeypatch.setenv("MALLOPS_REDIS_URL", "redis://cache:6380/5")
    monkeypatch.setenv("MALLOPS_TASK_MAX_PER_USER", "9")
    monkeypatch.setenv("MALLOPS_SMTP_PORT", "")  # empty means default
    settings = Settings()
    assert settings.sqlalchemy_url == "postgresql+psycopg://u:p@db:5432/mall"
    assert settings.celery_broker_url == "redis://cache:6380/0"
    assert settings.celery_result_backend == "redis://cache:6380/1"
    assert settings.cache_redis_url == "redis://cache:6380/2"
    assert settings.task_max_per_user == 9
    assert settings.smtp_port == 1025


def test_explicit_broker_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MALLOPS_BROKER_URL", "amqp://guest:guest@127.0.0.1:5672//")
    assert Settings().celery_broker_url == "amqp://guest:guest@127.0.0.1:5672//"


def test_bad_values_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MALLOPS_GATEWAY_PORT", "70000")
    with pytest.raises(ValidationError, match="gateway_port"):
        Settings()


def test_production_requires_a_database_url(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MALLOPS_DATABASE_URL", raising=False)
    monkeypatch.setenv("MALLOPS_ENVIRONMENT", "production")
    with pytest.raises(ValidationError, match="MALLOPS_DATABASE_URL"):
        Settings()


def test_the_clock_offset_is_for_tests_and_drills_only(monkeypatch: pytest.MonkeyPatch) -> None:
    assert Settings().clock_offset_seconds == 0
    assert Settings().scheduled_max_per_user == 100
    monkeypatch.setenv("MALLOPS_CLOCK_OFFSET_SECONDS", "10800")
    assert Settings().clock_offset_seconds == 10800
    monkeypatch.setenv("MALLOPS_ENVIRONMENT", "production")
    monkeypatch.setenv("MALLOPS_DATABASE_URL", "postgresql://u:p@db:5432/mall")
    with pytest.raises(ValidationError, match="MALLOPS_CLOCK_OFFSET_SECONDS"):
        Settings()
