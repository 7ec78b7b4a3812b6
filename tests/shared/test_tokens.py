"""API tokens: random, stored only as sha256, roles, revocation, bootstrap admin, and the CLI commands."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import uuid

import pytest
from sqlalchemy import select

from shared.db import session_scope
from shared.models import ApiToken
from shared.settings import Settings
from shared.tokens import (
    BOOTSTRAP_TOKEN_NAME,
    Principal,
    TokenError,
    create_token,
    ensure_bootstrap_admin,
    list_tokens,
    revoke_token,
    verify_token,
)
from tests.harness import ROOT


def _name(prefix: str = "t") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def test_a_token_is_random_and_stored_only_as_its_sha256(migrated: Settings) -> None:
    name = _name()
    with session_scope(migrated) as session:
        first = create_token(session, name, "user")
        second = create_token(session, _name(), "user")
    assert first != second
    assert len(first) >= 40
    with session_scope(migrated) as session:
        row = session.scalar(select(ApiToken).where(ApiToken.name == name))
        assert row is not None
        assert row.token_hash == hashlib.sha256(first.encode()).hexdigest()
        stored = [str(value) for value in (row.name, row.role, row.token_hash, row.prefix)]
        assert first not in stored
        assert verify_token(session, first) == Principal(name, "user")
        assert verify_token(session, first + "x") is None
        assert verify_token(session, "") is None


def test_roles_names_and_duplicates_are_checked(migrated: Settings) -> None:
    name = _name()
    with session_scope(migrated) as session:
        assert verify_token(session, create_token(session, name, "admin")) == Principal(name, "admin")
        with pytest.raises(TokenError, match="invalid role"):
            create_token(session, _name(), "root")
        with pytest.raises(TokenError, match="invalid token name"):
            create_token(session, "has space", "user")
        with pytest.raises(TokenError, match="already exists"):
            create_token(session, name, "user")


def test_a_revoked_token_no_longer_verifies(migrated: Settings) -> None:
    name = _name()
    with session_scope(migrated) as session:
        secret = create_token(session, name, "user")
    with session_scope(migrated) as session:
        assert revoke_token(session, name) is True
        assert revoke_token(session, name) is False
        with pytest.raises(TokenError, match="no token named"):
            revoke_token(session, _name("missing"))
    with session_scope(migrated) as session:
        assert verify_token(session, secret) is None
        info = {row.name: row for row in list_tokens(session)}[name]
        assert not info.active
        assert info.revoked_at is not None


def test_bootstrap_admin_token_is_created_once_and_revocation_sticks(migrated: Settings) -> None:
    secret = "bootstrap-" + uuid.uuid4().hex
    with session_scope(migrated) as session:
        ensure_bootstrap_admin(session, secret)
    with session_scope(migrated) as session:
        assert verify_token(session, secret) == Principal(BOOTSTRAP_TOKEN_NAME, "admin")
        assert ensure_bootstrap_admin(session, secret) is False
        revoke_token(session, BOOTSTRAP_TOKEN_NAME)
    with session_scope(migrated) as session:
        assert ensure_bootstrap_admin(session, secret) is False
        assert verify_token(session, secret) is None
        with pytest.raises(TokenError, match="at least"):
            ensure_bootstrap_admin(session, "short")
    other = "bootstrap-" + uuid.uuid4().hex  # the setting was changed: the new secret replaces the old
    with session_scope(migrated) as session:
        assert ensure_bootstrap_admin(session, other) is True
    with session_scope(migrated) as session:
        assert verify_token(session, other) == Principal(BOOTSTRAP_TOKEN_NAME, "admin")
        assert verify_token(session, secret) is None


def _cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mallops", "tokens", *args],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_cli_creates_lists_and_revokes_tokens(service_env: dict[str, str], migrated: Settings) -> None:
    name = _name("cli")
    created = _cli(service_env, "create", "--name", name, "--role", "admin")
    assert created.returncode == 0, created.stderr
    secret = created.stdout.strip()
    with session_scope(migrated) as session:
        assert verify_token(session, secret) == Principal(name, "admin")

    duplicate = _cli(service_env, "create", "--name", name, "--role", "user")
    assert duplicate.returncode == 2
    assert "already exists" in duplicate.stderr
    bad_role = _cli(service_env, "create", "--name", _name("cli"), "--role", "root")
    assert bad_role.returncode == 2
    assert "invalid role" in bad_role.stderr

    listed = _cli(service_env, "list", "--json")  # one JSON document (a list); --jsonl: one object per line
    rows = {row["name"]: row for row in json.loads(listed.stdout)}
    lines = _cli(service_env, "list", "--jsonl").stdout.splitlines()
    assert {json.loads(line)["name"] for line in lines} == set(rows)
    assert rows[name]["role"] == "admin"
    assert rows[name]["active"] is True
    assert secret not in listed.stdout

    assert _cli(service_env, "revoke", name).returncode == 0
    with session_scope(migrated) as session:
        assert verify_token(session, secret) is None
    assert _cli(service_env, "revoke", _name("missing")).returncode == 2
