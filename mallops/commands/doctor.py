"""``mallops doctor``: one screen that says what is wrong.

It reads this machine's ``MALLOPS_*`` settings and checks the platform's parts directly (so it works
when the gateway itself is down): the gateway and the token, Redis (broker, results, cache; AOF and the
eviction policy), the database and its migrations, SMTP, each queue's length and consumers, a worker
online for every queue, which beat holds the RedBeat lock, and how far the monitor lags behind the
event stream. Exit 0 when nothing is wrong (warnings allowed), 3 when something is down or unreachable.

When this machine's settings name no part of the stack (no ``MALLOPS_REDIS_URL``, ``MALLOPS_BROKER_URL``,
``MALLOPS_RESULT_BACKEND`` or ``MALLOPS_DATABASE_URL``; only the gateway's URL and a token), it checks
through the gateway instead, what the gateway can tell (its readiness round trips, the token, workers
and queues with an admin token, the schedule), and lists the checks it cannot make from there.
"""

from __future__ import annotations

import datetime as dt
import smtplib
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Annotated, Any, Literal

import typer

from mallops.client import Client, MallopsError, Refused, Unauthorized
from mallops.config import ConfigError, load_config
from mallops.output import (
    EXIT_OK,
    EXIT_UNREACHABLE,
    JsonOption,
    handles_errors,
    print_json,
    print_table,
    say_error,
)
from mallops.services import SERVICE_SPECS, WORKER_SERVICES, redbeat_lock_key
from shared.settings import Settings, get_settings

Status = Literal["ok", "warning", "problem", "not checked"]
#: settings that name the stack's parts: with none of them set, doctor checks through the gateway
STACK_SETTINGS = frozenset({"redis_url", "broker_url", "result_backend", "database_url"})
NOT_FROM_THE_GATEWAY = (
    ("redis durability", "AOF and the eviction policy"),
    ("smtp", "the SMTP server"),
    ("beat", "which beat holds the RedBeat lock"),
    ("monitor", "how far the monitor lags behind the event stream"),
)
TIMEOUT = 3.0


@dataclass(frozen=True)
class Check:
    area: str
    status: Status
    detail: str


def _guard(area: str, fn: Callable[[], list[Check]]) -> list[Check]:
    try:
        return fn()
    except Exception as exc:  # a check that cannot even run is itself the finding
        return [Check(area, "problem", f"{type(exc).__name__}: {' '.join(str(exc).split())}"[:300])]


# -- the checks ------------------------------------------------------------------------------------


def check_gateway(*, through_gateway: bool = False) -> list[Check]:
    """The gateway and the token; ``through_gateway``: also what the gateway sees of its stack (the parts
    its readiness round trips, each queue's consumers and the schedule with an admin token)."""
    try:
        config = load_config()
    except ConfigError as exc:
        return [Check("gateway", "problem", str(exc))]
    checks: list[Check] = []
    with Client(config=config, timeout=TIMEOUT) as mallops:
        try:
            parts: dict[str, Any] = dict(mallops.ready().get("checks") or {})
            checks.append(Check("gateway", "ok", f"{config.url} is ready"))
        except Refused as exc:  # 503: the problem document's `checks` says which part failed
            checks.append(Check("gateway", "problem", exc.message))
            if not through_gateway:
                return checks
            parts = dict(exc.problem.get("checks") or {})
        except MallopsError as exc:
            return [Check("gateway", "problem", exc.message)]
        if through_gateway:
            checks += [
                Check(part.replace("_", " "), "ok" if state == "ok" else "problem", f"{state} (seen by the gateway)")
                for part, state in parts.items()
            ]
        if not config.token:
            missing = "no token: set MALLOPS_TOKEN or the config file's token"
            return [*checks, Check("token", "problem" if through_gateway else "warning", missing)]
        try:
            mallops.list_tasks(limit=1)
            checks.append(Check("token", "ok", f"accepted (from {config.source})"))
        except Unauthorized as exc:
            return [*checks, Check("token", "problem", exc.message)]
        except MallopsError as exc:
            checks.append(Check("token", "warning", exc.message))
        if through_gateway:
            checks += _guard("queues", lambda: _gateway_queues(mallops))
            checks += _guard("beat", lambda: _gateway_schedules(mallops))
    return checks


def check_redis(settings: Settings) -> list[Check]:
    import redis

    checks: list[Check] = []
    targets = (
        ("broker", settings.celery_broker_url),
        ("result backend", settings.celery_result_backend),
        ("cache", settings.cache_redis_url),
    )
    for name, url in targets:
        client = redis.Redis.from_url(url, socket_timeout=TIMEOUT, socket_connect_timeout=TIMEOUT)
        try:
            client.ping()
            checks.append(Check(f"redis {name}", "ok", _safe_url(url)))
        except redis.RedisError as exc:
            checks.append(Check(f"redis {name}", "problem", f"{_safe_url(url)}: {exc}"))
        finally:
            client.close()
    if checks[0].status == "ok":
        text_client = redis.Redis.from_url(settings.celery_broker_url, socket_timeout=TIMEOUT, decode_responses=True)
        try:
            config = {**text_client.config_get("appendonly"), **text_client.config_get("maxmemory-policy")}
        except redis.RedisError:
            config = {}  # a managed Redis may refuse CONFIG: nothing to warn about then
        finally:
            text_client.close()
        if config.get("appendonly") == "no":
            checks.append(
                Check(
                    "redis durability",
                    "warning",
                    "appendonly is off: queued tasks are lost if Redis restarts (set appendonly yes)",
                )
            )
        policy = config.get("maxmemory-policy")
        if policy and policy != "noeviction":
            checks.append(
                Check(
                    "redis durability",
                    "warning",
                    f"maxmemory-policy is {policy}: Redis may evict queued tasks (use noeviction)",
                )
            )
    return checks


def check_database(settings: Settings) -> list[Check]:
    from alembic.script import ScriptDirectory
    from sqlalchemy import create_engine, inspect, text

    engine = create_engine(
        settings.sqlalchemy_url,
        connect_args={"connect_timeout": int(TIMEOUT)} if settings.sqlalchemy_url.startswith("postgresql") else {},
    )
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
            current = None
            if inspect(conn).has_table("alembic_version"):
                current = conn.execute(text("SELECT version_num FROM alembic_version")).scalar()
    finally:
        engine.dispose()
    where = engine.url.render_as_string(hide_password=True)
    from shared import migrations

    script = ScriptDirectory(str(next(iter(migrations.__path__))))
    heads = set(script.get_heads())
    if current is None:
        return [Check("database", "problem", f"{where}: not migrated (run `mallops migrate`)")]
    if current not in heads:
        return [
            Check(
                "database",
                "warning",
                f"{where}: at revision {current}, code expects {', '.join(heads)} (run `mallops migrate`)",
            )
        ]
    return [Check("database", "ok", f"{where} (revision {current})")]


def check_smtp(settings: Settings) -> list[Check]:
    where = f"{settings.smtp_host}:{settings.smtp_port}"
    try:
        with smtplib.SMTP(settings.smtp_host, settings.smtp_port, timeout=TIMEOUT) as smtp:
            code, _ = smtp.noop()
    except (OSError, smtplib.SMTPException) as exc:
        return [Check("smtp", "problem", f"{where}: {exc or type(exc).__name__}; e-mail cannot be sent")]
    return [Check("smtp", "ok" if code == 250 else "warning", f"{where} answers ({code})")]


def check_queues_and_workers(settings: Settings) -> list[Check]:
    from shared.workers import list_workers, queue_lengths

    workers = list_workers(settings)
    lengths = queue_lengths(settings, workers)
    checks: list[Check] = []
    for queue, info in lengths.items():
        pending, consumers = info["pending"], info["consumers"]
        status: Status = "ok"
        if consumers == 0:
            status = "problem" if pending else "warning"
        checks.append(Check(f"queue {queue}", status, f"{pending} pending, {consumers} consumer(s)"))
    for service in WORKER_SERVICES:
        wanted = SERVICE_SPECS[service].queue
        mine = [w for w in workers if w.get("service") == service or wanted in (w.get("queues") or [])]
        online = [w for w in mine if w["status"] == "online"]
        if online:
            names = ", ".join(str(w["hostname"]) for w in online)
            checks.append(Check(f"workers {service}", "ok", f"{len(online)} online: {names}"))
        elif mine:
            last = max(str(w.get("last_heartbeat")) for w in mine)
            checks.append(Check(f"workers {service}", "problem", f"all {len(mine)} offline (last heartbeat {last})"))
        else:
            checks.append(Check(f"workers {service}", "problem", f"no worker has reported for queue {wanted!r}"))
    return checks


def check_beat(settings: Settings) -> list[Check]:
    import redis

    key = redbeat_lock_key(settings)
    client = redis.Redis.from_url(settings.cache_redis_url, socket_timeout=TIMEOUT, decode_responses=True)
    try:
        token: str | None = client.get(key)
        ttl = client.pttl(key)
    finally:
        client.close()
    if not token:
        return [Check("beat", "problem", f"nobody holds the RedBeat lock {key}: no beat is scheduling")]
    return [
        Check(
            "beat",
            "ok",
            f"lock {key} held by {describe_lock_token(token)}; expires in {ttl / 1000:.0f}s unless renewed",
        )
    ]


def describe_lock_token(token: str) -> str:
    """RedBeat's lock is a redis-py Lock whose token is a uuid1: it tells the holder's node and start time."""
    try:
        value = uuid.UUID(hex=token)
    except ValueError:
        return f"token {token[:12]}"
    if value.version != 1:
        return f"token {token[:12]}"
    acquired = dt.datetime(1582, 10, 15, tzinfo=dt.UTC) + dt.timedelta(microseconds=value.time // 10)
    node = value.node
    where = "a beat on this machine" if node == uuid.getnode() else f"a beat on node {node:012x}"
    return f"{where} since {acquired.strftime('%Y-%m-%d %H:%M:%S')} UTC"


def check_monitor(settings: Settings) -> list[Check]:
    import httpx
    import redis

    from shared.contracts import EVENT_STREAM

    base = SERVICE_SPECS["monitor"].base_url(settings)
    try:
        stats = httpx.get(f"{base}/stats", timeout=TIMEOUT).json()
    except (httpx.HTTPError, ValueError):
        stats = None
    client = redis.Redis.from_url(settings.cache_redis_url, socket_timeout=TIMEOUT, decode_responses=True)
    try:
        groups: list[dict[str, Any]] = (
            client.xinfo_groups(EVENT_STREAM) if client.exists(EVENT_STREAM) else []  # type: ignore[no-untyped-call]
        )
        length = client.xlen(EVENT_STREAM) if groups else 0
    finally:
        client.close()
    behind = max((int(g.get("lag") or 0) for g in groups), default=0)
    pending = sum(int(g.get("pending") or 0) for g in groups)
    if isinstance(stats, dict):
        lag = float(stats.get("lag_seconds") or 0.0)
        status: Status = "ok" if lag < 60 and stats.get("connected", True) else "warning"
        detail = (
            f"{base}: {lag:.1f}s behind the event stream, {behind} event(s) unread, {pending} unacknowledged, "
            f"{stats.get('events_processed', '?')} processed"
        )
        if stats.get("last_error"):
            detail += f"; last error: {stats['last_error']}"
        return [Check("monitor", status, detail)]
    if not groups:
        return [Check("monitor", "problem", f"{base} does not answer and no monitor reads {EVENT_STREAM}")]
    return [
        Check(
            "monitor",
            "problem" if behind else "warning",
            f"{base} does not answer; its group has {behind} unread event(s) of {length}",
        )
    ]


def check_dead_letters(settings: Settings) -> list[Check]:
    from shared import dead_letter_store
    from shared.cache import redis_client

    count = dead_letter_store.count(redis_client(settings))
    if not count:
        return [Check("dead letters", "ok", "none")]
    return [
        Check("dead letters", "warning", f"{count} message(s) the workers could not run: `mallops dead-letters list`")
    ]


def sees_the_stack(settings: Settings) -> bool:
    """True when this machine's settings name the stack's Redis or database (so doctor can look at them)."""
    return bool(STACK_SETTINGS & settings.model_fields_set)


def run_gateway_checks() -> list[Check]:
    """What the gateway can tell about its stack, and which checks cannot be made from here."""
    checks = check_gateway(through_gateway=True)
    reachable = not (checks and checks[0].area == "gateway" and checks[0].status == "problem" and len(checks) == 1)
    why = "doctor has only the gateway's URL and a token" if reachable else "the gateway cannot be reached"
    return checks + _not_checked(why)


def _gateway_queues(mallops: Client) -> list[Check]:
    try:
        queues = mallops.queues()
        workers = mallops.workers()
    except Unauthorized as exc:
        return [Check("queues, workers", "not checked", f"needs an admin token ({exc.message})")]
    checks = []
    for name, queue in sorted(queues.items()):
        online = [w["hostname"] for w in workers if w.get("status") == "online" and name in (w.get("queues") or [])]
        consumers = int(queue.get("consumers") or len(online))
        status: Status = "ok" if consumers or online else "problem"
        detail = f"{queue.get('pending', '?')} pending, {consumers} consumer(s)"
        checks.append(Check(f"queue {name}", status, detail + ("" if status == "ok" else ": no worker online")))
    return checks


def _gateway_schedules(mallops: Client) -> list[Check]:
    try:
        entries = mallops.schedules()
    except Unauthorized:
        return []
    enabled = sum(1 for e in entries if e.get("enabled"))
    return [Check("schedule", "ok", f"{enabled} of {len(entries)} entries enabled (the lock holder: not visible)")]


def _not_checked(why: str) -> list[Check]:
    hint = "set the stack's MALLOPS_REDIS_URL and MALLOPS_DATABASE_URL here, or run doctor where the stack runs"
    return [Check(area, "not checked", f"{what}: {why}; {hint}") for area, what in NOT_FROM_THE_GATEWAY]


def run_checks(settings: Settings) -> list[Check]:
    checks: list[Check] = []
    checks += _guard("gateway", check_gateway)
    checks += _guard("redis", lambda: check_redis(settings))
    redis_ok = all(c.status == "ok" for c in checks if c.area.startswith("redis ") and c.area != "redis durability")
    checks += _guard("database", lambda: check_database(settings))
    checks += _guard("smtp", lambda: check_smtp(settings))
    if redis_ok:
        checks += _guard("queues", lambda: check_queues_and_workers(settings))
        checks += _guard("beat", lambda: check_beat(settings))
        checks += _guard("monitor", lambda: check_monitor(settings))
        checks += _guard("dead letters", lambda: check_dead_letters(settings))
    else:
        checks.append(Check("queues, workers, beat, monitor", "problem", "not checked: Redis cannot be reached"))
    return checks


@handles_errors
def doctor(
    through_gateway: Annotated[
        bool | None,
        typer.Option(
            "--through-gateway/--local",
            help="Check through the gateway only, or this machine's view of Redis, the database and SMTP "
            "(default: the gateway when no MALLOPS_REDIS_URL, _BROKER_URL, _RESULT_BACKEND or _DATABASE_URL is set).",
        ),
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Say what is wrong: gateway and token, Redis, database, SMTP, queues, workers, beat lock, monitor lag,
    dead letters.

    Exit 0 when nothing is wrong (warnings allowed), 3 when something is down or unreachable. Checks
    it cannot make (through the gateway: SMTP, Redis durability, the beat lock, monitor lag) are listed
    as "not checked".

    Examples:

      \b
      mallops doctor
      MALLOPS_URL=https://mallops.example MALLOPS_TOKEN=mlp_... mallops doctor
      mallops doctor --local --json
    """
    settings = get_settings()
    remote = not sees_the_stack(settings) if through_gateway is None else through_gateway
    checks = run_gateway_checks() if remote else run_checks(settings)
    problems = [c for c in checks if c.status == "problem"]
    if as_json:
        print_json({"ok": not problems, "checks": [asdict(c) for c in checks]})
    else:
        print_table(
            ["check", "status", "detail"],
            [[c.area, c.status, c.detail] for c in checks],
            title="mallops doctor" + (" (through the gateway)" if remote else ""),
            wrap_columns=[2],  # the details are the point: wrapped, never cut
            status_columns=[1],
        )
        if problems:
            say_error(f"{len(problems)} problem(s): " + "; ".join(c.area for c in problems))
    raise typer.Exit(EXIT_UNREACHABLE if problems else EXIT_OK)


def _safe_url(url: str) -> str:
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return url.split("@")[-1]


def register(root: typer.Typer) -> None:
    root.command("doctor")(doctor)


__all__ = ["Check", "describe_lock_token", "register", "run_checks"]
