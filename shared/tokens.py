"""API tokens: random bearer secrets stored only as sha256 hashes, with a role, an optional store scope,
an optional expiry and revocation.

Used by the gateway (verify; ``/api/v1/tokens``) and by ``mallops tokens create|list|revoke`` (over the
API, or on the database directly). A token is shown once, when it is created; afterwards only its name,
role, scope and first characters (``prefix``) are known. Revocation is final: the row stays, for the
audit trail, and never works again.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from shared import permissions
from shared.models import ApiToken, Store, utcnow
from shared.permissions import ROLES, Role

TOKEN_PREFIX = "mlp_"  # noqa: S105 - a marker that makes leaked tokens recognisable, not a secret
PREFIX_LENGTH = 12  # at most; never more than a quarter of the secret (see visible_prefix)
MIN_TOKEN_LENGTH = 16
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,99}$")
BOOTSTRAP_TOKEN_NAME = "bootstrap-admin"  # noqa: S105 - a name, not a secret


class TokenError(ValueError):
    """A token cannot be created or changed as asked (bad name or role, name taken, unknown name)."""


@dataclass(frozen=True)
class Principal:
    """Who is calling: the token's name (the owner of the tasks it submits), its role and store scope."""

    name: str
    role: Role
    stores: tuple[int, ...] | None = None  # None: every store
    expires_at: dt.datetime | None = None

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"

    @property
    def permissions(self) -> frozenset[str]:
        granted = permissions.permissions_of(self.role)
        return granted - {permissions.STORES_ALL} if self.stores is not None else granted

    def has(self, permission: str) -> bool:
        return permission in self.permissions

    def expired(self, now: dt.datetime | None = None) -> bool:
        return self.expires_at is not None and self.expires_at <= (now or utcnow())


@dataclass(frozen=True)
class TokenInfo:
    name: str
    role: str
    prefix: str
    created_at: dt.datetime
    revoked_at: dt.datetime | None
    last_used_at: dt.datetime | None
    stores: list[int] | None = None
    expires_at: dt.datetime | None = None

    @property
    def active(self) -> bool:
        return self.revoked_at is None and (self.expires_at is None or self.expires_at > utcnow())

    def as_dict(self) -> dict[str, object]:
        return {
            "name": self.name,
            "role": self.role,
            "prefix": self.prefix,
            "active": self.active,
            "stores": self.stores,
            "created_at": self.created_at,
            "expires_at": self.expires_at,
            "revoked_at": self.revoked_at,
            "last_used_at": self.last_used_at,
        }


def hash_token(token: str) -> str:
    """The stored form of a token: sha256 hex digest."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def visible_prefix(token: str) -> str:
    """The first characters kept in clear to recognise a token: at most ``PREFIX_LENGTH`` and at most a
    quarter of it, so that a short chosen token (a 16-character bootstrap token) is not left guessable
    from its stored prefix and unsalted hash."""
    return token[: min(PREFIX_LENGTH, len(token) // 4)]


def generate_token() -> str:
    """A new random token: ``mlp_`` and 43 URL-safe characters (256 bits)."""
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def _check(name: str, role: str) -> Role:
    if not NAME_PATTERN.match(name):
        raise TokenError(f"invalid token name {name!r}: use 1-100 letters, digits, '_', '.', '@' or '-'")
    if role not in ROLES:
        raise TokenError(f"invalid role {role!r}: choose one of {', '.join(ROLES)}")
    return role


def _check_scope(session: Session, role: str, stores: list[int] | None, expires_at: dt.datetime | None) -> None:
    if stores is not None:
        if not stores:
            raise TokenError("stores: give at least one store id, or none for every store")
        known = set(session.scalars(select(Store.id).where(Store.id.in_(stores))))
        if missing := sorted(set(stores) - known):
            raise TokenError(f"no store with id {', '.join(map(str, missing))}")
    elif role == "store_manager":
        raise TokenError("a store_manager token needs its stores: --store ID (repeatable)")
    if expires_at is not None:
        if expires_at.tzinfo is None:
            raise TokenError("expires_at needs a timezone")
        if expires_at <= utcnow():
            raise TokenError("expires_at is in the past")


def create_token(
    session: Session,
    name: str,
    role: str,
    token: str | None = None,
    *,
    stores: list[int] | None = None,
    expires_at: dt.datetime | None = None,
) -> str:
    """Store a new token called ``name`` and return its secret (the only time it is available).

    ``stores`` limits the token to those stores' data (a ``store_manager`` needs it); ``expires_at`` ends it.
    Raises :class:`TokenError` for a bad name, role, store or expiry, a name already used, or a too short
    ``token``.
    """
    _check(name, role)
    stores = sorted(set(stores)) if stores is not None else None
    _check_scope(session, role, stores, expires_at)
    secret = token if token is not None else generate_token()
    if len(secret) < MIN_TOKEN_LENGTH:
        raise TokenError(f"a token must be at least {MIN_TOKEN_LENGTH} characters long")
    if session.scalar(select(ApiToken.id).where(ApiToken.name == name)) is not None:
        raise TokenError(f"a token named {name!r} already exists")
    row = ApiToken(
        name=name,
        role=role,
        token_hash=hash_token(secret),
        prefix=visible_prefix(secret),
        stores=stores,
        expires_at=expires_at,
    )
    session.add(row)
    try:
        session.flush()
    except IntegrityError as exc:  # a concurrent create of the same name, or the same secret
        raise TokenError(f"a token named {name!r} (or with this secret) already exists") from exc
    return secret


def list_tokens(session: Session) -> list[TokenInfo]:
    rows = session.scalars(select(ApiToken).order_by(ApiToken.name)).all()
    return [token_info(r) for r in rows]


def token_info(row: ApiToken) -> TokenInfo:
    return TokenInfo(
        row.name, row.role, row.prefix, row.created_at, row.revoked_at, row.last_used_at, row.stores, row.expires_at
    )


def get_token(session: Session, name: str) -> TokenInfo | None:
    row = session.scalar(select(ApiToken).where(ApiToken.name == name))
    return token_info(row) if row is not None else None


def revoke_token(session: Session, name: str) -> bool:
    """Revoke the token called ``name``; False if it was already revoked. TokenError if unknown."""
    row = session.scalar(select(ApiToken).where(ApiToken.name == name))
    if row is None:
        raise TokenError(f"no token named {name!r}")
    if row.revoked_at is not None:
        return False
    row.revoked_at = utcnow()
    return True


def verify_token(session: Session, token: str) -> Principal | None:
    """The principal of an active token, or None for an unknown, revoked or expired one.

    The lookup is by the token's sha256 (an index hit that reveals nothing about stored secrets);
    the stored hash is then compared in constant time.
    """
    if not token or len(token) > 512:
        return None
    return verify_digest(session, hash_token(token))


def verify_digest(session: Session, digest: str) -> Principal | None:
    """The principal of the active token whose sha256 is ``digest`` (what a console session keeps
    instead of the token), or None for an unknown, revoked or expired one."""
    row = session.scalar(select(ApiToken).where(ApiToken.token_hash == digest))
    if row is None or not hmac.compare_digest(row.token_hash, digest):
        return None
    if row.revoked_at is not None or row.role not in ROLES:
        return None
    principal = Principal(
        row.name,
        row.role,
        tuple(row.stores) if row.stores is not None else None,
        row.expires_at,
    )
    return None if principal.expired() else principal


def touch_last_used(session: Session, name: str, when: dt.datetime | None = None) -> None:
    row = session.scalar(select(ApiToken).where(ApiToken.name == name))
    if row is not None:
        row.last_used_at = when or utcnow()


def ensure_bootstrap_admin(session: Session, token: str) -> bool:
    """Make ``token`` a working admin token named ``bootstrap-admin``; True if anything changed.

    A token with this secret that was revoked stays revoked (revocation is final). If the name
    exists with another secret (the setting was changed), the stored hash is replaced.
    """
    if len(token) < MIN_TOKEN_LENGTH:
        raise TokenError(f"MALLOPS_BOOTSTRAP_ADMIN_TOKEN must be at least {MIN_TOKEN_LENGTH} characters long")
    digest = hash_token(token)
    existing = session.scalar(select(ApiToken).where(ApiToken.token_hash == digest))
    if existing is not None:
        existing.prefix = visible_prefix(token)  # stored before visible_prefix: 12 characters of it
        return False
    row = session.scalar(select(ApiToken).where(ApiToken.name == BOOTSTRAP_TOKEN_NAME))
    if row is None:
        create_token(session, BOOTSTRAP_TOKEN_NAME, "admin", token)
        return True
    row.token_hash = digest
    row.prefix = visible_prefix(token)
    row.role = "admin"
    row.revoked_at = None
    return True
