"""compose's one-shot ``migrate`` service: ``mallops migrate`` migrates, and with MALLOPS_DEMO_DATA=1 also
loads the demo mall once (a restart of the service must still exit 0)."""

from __future__ import annotations

import os
from pathlib import Path

from sqlalchemy import create_engine, func, select

from shared.models import Store
from tests.mallops.conftest import CliResult, run_mallops


def stores(database_url: str) -> int:
    engine = create_engine(database_url)
    try:
        with engine.connect() as conn:
            return int(conn.scalar(select(func.count()).select_from(Store)) or 0)
    finally:
        engine.dispose()


def migrate(tmp_path: Path, database_url: str, **extra: str) -> CliResult:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOPS_")}
    env |= {"MALLOPS_DATABASE_URL": database_url, "MALLOPS_DATA_DIR": str(tmp_path), **extra}
    return run_mallops("migrate", env=env, cwd=tmp_path)  # cwd: no .env file of the checkout


def test_migrate_loads_demo_data_once_when_asked(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'demo.db'}"
    first = migrate(tmp_path, url, MALLOPS_DEMO_DATA="1")
    assert first.code == 0, first.err
    assert "demo data: 200 stores" in first.out
    assert stores(url) == 200

    again = migrate(tmp_path, url, MALLOPS_DEMO_DATA="1")  # compose restarts it; it must still succeed
    assert again.code == 0, again.err
    assert "demo data is already there" in again.out
    assert stores(url) == 200


def test_migrate_alone_loads_nothing(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'empty.db'}"
    done = migrate(tmp_path, url)
    assert done.code == 0, done.err
    assert "created the database schema (revision " in done.out
    assert stores(url) == 0
