"""``mallops login``, ``mallops tokens`` (through the gateway, or the database without a token) and
``mallops audit``, against a real gateway process and the run's database."""

from __future__ import annotations

import json
import stat
import tomllib
import uuid
from pathlib import Path

import pytest
from sqlalchemy import select

from shared.db import session_scope
from shared.models import AuditEntry, Store
from shared.settings import Settings
from shared.tokens import verify_token
from tests.mallops.conftest import CliRunner, LiveGateway

pytestmark = pytest.mark.integration


def _name(kind: str) -> str:
    return f"{kind}-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def no_token(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No token anywhere: `mallops tokens` works on the database."""
    monkeypatch.delenv("MALLOPS_TOKEN", raising=False)
    monkeypatch.delenv("MALLOPS_URL", raising=False)
    path = tmp_path / "config.toml"
    monkeypatch.setenv("MALLOPS_CONFIG", str(path))
    return path


def test_tokens_on_the_database_with_stores(cli: CliRunner, no_token: Path, demo_db: Settings) -> None:
    with session_scope(demo_db) as session:
        stores = list(session.scalars(select(Store.id).order_by(Store.id).limit(2)))
    name = _name("shop")
    args = ["tokens", "create", "--name", name, "--role", "store_manager", "--expires", "30d"]
    created = cli(*args, "--store", str(stores[0]), "--store", str(stores[1]))
    assert created.code == 0, created.err
    secret = created.out.strip()
    with session_scope(demo_db) as session:
        principal = verify_token(session, secret)
        assert principal is not None
        assert principal.stores == tuple(stores)
        assert principal.expires_at is not None
        entry = session.scalars(select(AuditEntry).where(AuditEntry.target == name)).one()
        assert entry.action == "token.create"
        assert str(entry.actor).startswith("cli")
    listed = cli("tokens", "list", "--json")
    rows = {row["name"]: row for row in json.loads(listed.out)}
    assert rows[name]["stores"] == stores
    assert secret not in listed.out
    unscoped = cli("tokens", "create", "--name", _name("shop"), "--role", "store_manager")
    assert unscoped.code == 2
    assert unscoped.err_lines == ["mallops: a store_manager token needs its stores: --store ID (repeatable)"]


def test_login_then_tokens_and_audit_through_the_gateway(
    cli: CliRunner, no_token: Path, live_gateway: LiveGateway, migrated: Settings
) -> None:
    refused = cli("login", live_gateway.url, "--token", "mlp_not-a-token-at-all-0000")
    assert refused.code == 3
    assert not no_token.exists()

    done = cli("login", live_gateway.url, "--token", live_gateway.admin)
    assert done.code == 0, done.err
    assert stat.S_IMODE(no_token.stat().st_mode) == 0o600
    saved = tomllib.loads(no_token.read_text())
    assert saved == {"url": live_gateway.url, "token": live_gateway.admin}

    name = _name("api")
    created = cli("tokens", "create", "--name", name, "--role", "viewer")
    assert created.code == 0, created.err
    secret = created.out.strip()
    listed = cli("tokens", "list", "--json")
    assert name in {row["name"] for row in json.loads(listed.out)}
    assert cli("tokens", "revoke", name).code == 0
    with session_scope(migrated) as session:
        assert verify_token(session, secret) is None

    trail = cli("audit", "--action", "token.create", "--since", "1h", "--json")
    assert trail.code == 0, trail.err
    entries = json.loads(trail.out)
    mine = [e for e in entries if e["target"] == name]
    assert len(mine) == 1
    assert mine[0]["actor"].startswith("cli-admin-")  # made through the API: the admin token's name
    assert secret not in trail.out

    viewer = cli("login", live_gateway.url, "--token", secret)  # revoked: refused, the file is unchanged
    assert viewer.code == 3
    assert tomllib.loads(no_token.read_text())["token"] == live_gateway.admin


def test_audit_needs_an_admin(cli: CliRunner, no_token: Path, live_gateway: LiveGateway) -> None:
    answer = cli("audit", env={"MALLOPS_URL": live_gateway.url, "MALLOPS_TOKEN": live_gateway.user})
    assert answer.code == 3
    assert "audit.read" in answer.err
