"""``mallops login``, ``mallops tokens create|list|revoke`` and ``mallops audit``.

``mallops tokens`` works through the gateway (``/api/v1/tokens``, an admin token) when a token is
configured (``MALLOPS_TOKEN`` or the config file, e.g. after ``mallops login``), and on the database
directly otherwise (the first admin token of a new installation, or on the database host).
"""

from __future__ import annotations

import datetime as dt
import getpass
import json
import os
import re
from pathlib import Path
from typing import Annotated, Any

import typer

from mallops.client import Client
from mallops.config import config_path, load_config
from mallops.output import (
    EXIT_UNREACHABLE,
    EXIT_USAGE,
    JsonlOption,
    JsonOption,
    WideOption,
    client,
    echo,
    fail,
    handles_errors,
    parse_when,
    print_items,
    print_json,
    print_table,
)

tokens_app = typer.Typer(
    help="Manage API tokens: through the gateway when a token is configured, else on the database.",
    no_args_is_help=True,
    rich_markup_mode=None,
)
TOKEN_COLUMNS = ("name", "role", "stores", "prefix", "active", "created_at", "expires_at", "revoked_at", "last_used_at")


def register(app: typer.Typer) -> None:
    app.add_typer(tokens_app, name="tokens")
    app.command("login")(login)
    app.command("audit")(audit_trail)


def _through_api() -> bool:
    return bool(load_config().token)


def _cli_actor() -> str:
    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):
        return "cli"


def _expiry(text: str | None) -> dt.datetime | None:
    """``--expires 30d`` (from now) or an ISO date/time."""
    if text is None:
        return None
    match = re.fullmatch(r"(\d+)\s*([hdw])", text.strip())
    if match:
        hours = {"h": 1, "d": 24, "w": 168}[match.group(2)] * int(match.group(1))
        return dt.datetime.now(dt.UTC) + dt.timedelta(hours=hours)
    try:
        when = dt.datetime.fromisoformat(text)
    except ValueError:
        fail(f"--expires must be an ISO date/time or a duration like 30d, 12h, 2w; not {text!r}")
    return when if when.tzinfo else when.astimezone()


@tokens_app.command("create")
@handles_errors
def tokens_create(
    name: Annotated[str, typer.Option("--name", help="Who the token is for; owns the tasks it submits.")],
    role: Annotated[
        str, typer.Option("--role", help="viewer, store_manager, finance, operator, admin or user.")
    ] = "user",
    store: Annotated[
        list[int] | None, typer.Option("--store", min=1, help="Limit it to this store's data (repeatable).")
    ] = None,
    expires: Annotated[str | None, typer.Option("--expires", help="ISO date/time, or 30d, 12h, 2w.")] = None,
) -> None:
    """Create a token and print it (the only time it is shown; only its sha256 is stored).

    Examples:

      \b
      mallops tokens create --name ops --role admin
      mallops tokens create --name s12 --role store_manager --store 12
      TOKEN=$(mallops tokens create --name reporting --role viewer)
    """
    expires_at = _expiry(expires)
    if _through_api():
        body: dict[str, Any] = {"name": name, "role": role, "stores": store or None}
        body["expires_at"] = expires_at.isoformat() if expires_at else None
        with client() as mallops:
            created = mallops.request("POST", "/api/v1/tokens", json=body)
        echo(str(created["token"]))
        return
    from shared import audit
    from shared.db import session_scope
    from shared.tokens import TokenError, create_token

    try:
        with session_scope() as session:
            secret = create_token(session, name, role, stores=store or None, expires_at=expires_at)
            details = {"role": role, "stores": store or None, "expires_at": expires_at, "via": "database"}
            audit.record(session, actor=_cli_actor(), action=audit.TOKEN_CREATE, target=name, details=details)
    except TokenError as exc:
        fail(str(exc), EXIT_USAGE)
    echo(secret)


@tokens_app.command("list")
@handles_errors
def tokens_list(as_json: JsonOption = False, as_jsonl: JsonlOption = False, wide: WideOption = False) -> None:
    """List tokens: name, role, stores, first characters, state, created, expires, revoked, last used.

    Examples:

      \b
      mallops tokens list
      mallops tokens list --json
    """
    if _through_api():
        with client() as mallops:
            rows: list[dict[str, Any]] = mallops.request("GET", "/api/v1/tokens")["results"]
    else:
        from shared.db import session_scope
        from shared.tokens import list_tokens

        with session_scope() as session:
            rows = [info.as_dict() for info in list_tokens(session)]
    if print_items(rows, as_json=as_json, as_jsonl=as_jsonl):
        return
    print_table(
        list(TOKEN_COLUMNS),
        [[row.get(key) for key in TOKEN_COLUMNS] for row in rows],
        time_columns=[5, 6, 7, 8],
        wide=wide,
    )


@tokens_app.command("revoke")
@handles_errors
def tokens_revoke(name: Annotated[str, typer.Argument(help="The token's name.")]) -> None:
    """Revoke a token for good; gateways refuse it within MALLOPS_TOKEN_CACHE_SECONDS (default 5 s).

    Examples:

      \b
      mallops tokens revoke reporting
    """
    if _through_api():
        with client() as mallops:
            mallops.request("DELETE", f"/api/v1/tokens/{name}")
        echo(f"revoked {name}")
        return
    from shared import audit
    from shared.db import session_scope
    from shared.tokens import TokenError, revoke_token

    try:
        with session_scope() as session:
            changed = revoke_token(session, name)
            details = {"already_revoked": not changed, "via": "database"}
            audit.record(session, actor=_cli_actor(), action=audit.TOKEN_REVOKE, target=name, details=details)
    except TokenError as exc:
        fail(str(exc), EXIT_USAGE)
    _tell_gateways()
    echo(f"revoked {name}" if changed else f"{name} was already revoked")


def _tell_gateways() -> None:
    """Raise the revocation counter the gateway processes read (else they refuse the token within
    MALLOPS_TOKEN_CACHE_SECONDS)."""
    import redis

    from shared.contracts import TOKENS_EPOCH_KEY
    from shared.settings import get_settings

    client = redis.Redis.from_url(get_settings().cache_redis_url, socket_connect_timeout=1, socket_timeout=2)
    try:
        client.incr(TOKENS_EPOCH_KEY)
    except (redis.RedisError, OSError):
        pass  # no Redis here: the gateways' cache delay still bounds it
    finally:
        client.close()


def _write_config(path: Path, url: str, token: str) -> None:
    """The config file with ``url`` and ``token`` (other keys kept), readable by its owner only."""
    lines = [f"url = {json.dumps(url)}", f"token = {json.dumps(token)}"]
    if path.exists():
        import tomllib

        try:
            old = tomllib.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            old = {}
        if isinstance(old.get("timeout"), int | float):
            lines.append(f"timeout = {old['timeout']}")
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
        handle.write("\n".join(lines) + "\n")
    path.chmod(0o600)  # an existing file keeps its mode through O_CREAT


@handles_errors
def login(
    url: Annotated[str, typer.Argument(help="The gateway, e.g. https://mallops.example.internal")],
    token: Annotated[
        str | None, typer.Option("--token", help="An API token (asked for, unechoed, when left out).")
    ] = None,
) -> None:
    """Check a gateway URL and token, then keep them in the config file (mode 0600) for every command.

    Examples:

      \b
      mallops login http://127.0.0.1:8000 --token mlp_...
      mallops login https://mallops.example.internal   # asks for the token
    """
    if not url.startswith(("http://", "https://")):
        fail(f"the gateway URL must start with http:// or https://, not {url!r}")
    secret = token or typer.prompt("API token", hide_input=True)
    with Client(url.rstrip("/"), secret, timeout=load_config().timeout) as mallops:
        try:
            mallops.request("GET", "/api/v1/catalog")
        except Exception as exc:
            message = getattr(exc, "message", str(exc))
            fail(f"not saved: {message}", EXIT_UNREACHABLE)
    path = config_path()
    _write_config(path, url.rstrip("/"), secret)
    echo(f"logged in to {url.rstrip('/')}; saved in {path}")


@handles_errors
def audit_trail(
    actor: Annotated[str | None, typer.Option(help="Only this token's actions.")] = None,
    action: Annotated[str | None, typer.Option(help="Only this action, e.g. token.create, export.download.")] = None,
    since: Annotated[str | None, typer.Option(help="ISO date/time, or an age like 2h, 7d.")] = None,
    until: Annotated[str | None, typer.Option(help="ISO date/time, or an age like 1h.")] = None,
    limit: Annotated[int, typer.Option(min=1, max=10_000, help="At most this many entries.")] = 50,
    as_json: JsonOption = False,
) -> None:
    """The audit trail, newest first: who did what, when, from where, and how it ended (admin).

    Examples:

      \b
      mallops audit --since 24h
      mallops audit --action export.download --actor store12 --json
    """
    params: dict[str, Any] = {
        "actor": actor,
        "action": action,
        "since": parse_when(since, "--since"),
        "until": parse_when(until, "--until"),
    }
    entries: list[dict[str, Any]] = []
    cursor = None
    with client() as mallops:
        while len(entries) < limit:
            page_params = {key: value for key, value in params.items() if value is not None}
            page_params["limit"] = min(500, limit - len(entries))
            if cursor:
                page_params["cursor"] = cursor
            page = mallops.request("GET", "/api/v1/audit", params=page_params)
            entries.extend(page["results"])
            cursor = page.get("next_cursor")
            if not cursor:
                break
    if as_json:
        print_json(entries)
        return
    columns = ["at", "actor", "action", "target", "outcome", "client", "request_id", "details"]
    print_table(columns, [[e.get(c) for c in columns] for e in entries], title=f"{len(entries)} entries")
