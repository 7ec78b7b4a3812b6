"""``/api/v1/dead-letters``: messages the workers could not run; list, inspect, replay and drop them (admin)."""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Request
from kombu.exceptions import KombuError
from pydantic import BaseModel, Field, StrictBool
from redis.exceptions import RedisError
from starlette.concurrency import run_in_threadpool

from services.gateway import authz, dead_letter_replay
from services.gateway.admin_actions import record_admin_action
from services.gateway.deps import RuntimeDep
from services.gateway.openapi import admin_only
from services.gateway.problems import ProblemError
from services.gateway.routes import API_PREFIX
from services.gateway.routes.history import _aware as require_timezone
from services.gateway.runtime import Runtime
from services.gateway.schemas import Strict
from shared import audit, dead_letter_store, permissions
from shared.cache import redis_client
from shared.catalog import get_spec
from shared.dead_letter_store import DeadLetter, LetterFilter
from shared.tokens import Principal

router = APIRouter(prefix=API_PREFIX, tags=["dead letters"])

MAX_PAGE = 500
MAX_BULK = 1000
Manager = Annotated[Principal, authz.requires(permissions.DEAD_LETTERS_MANAGE)]
LetterId = Annotated[str, Path(pattern=r"^[0-9a-f]{32}$", description="The dead letter's id.")]


class DeadLetterInfo(BaseModel):
    id: str
    at: dt.datetime = Field(description="When the worker dead-lettered it.")
    reason: str
    exception: str = Field(description="The kind: PoisonMessage, NotRegistered, InvalidTaskHeaders, ...")
    task: str | None = Field(default=None, description="The task name the message gave.")
    task_id: str | None = None
    owner: str | None = None
    arguments: dict[str, Any] | None = Field(default=None, description='{"args": [...], "kwargs": {...}}')
    queue: str | None = None
    size: int = Field(description="Bytes of body.")
    truncated: bool = Field(description="The body was longer than MALLOPS_MAX_BODY_BYTES and was cut.")
    replayable: bool
    poison: bool = Field(description="Its workers died in each of its runs: a replay needs force.")


class DeadLetterDetail(DeadLetterInfo):
    headers: dict[str, Any]
    body: str = Field(description="The body as text, or base64 (body_encoding).")
    body_encoding: str
    content_type: str | None = None
    content_encoding: str | None = None


class DeadLetterPage(BaseModel):
    count: int = Field(description="Dead letters that match.")
    results: list[DeadLetterInfo]
    next_offset: int | None = Field(default=None, description="Pass as `offset` for the next (older) page.")


class ReplayRequest(Strict):
    force: StrictBool = Field(default=False, description="Also replay a poison message.")


class BulkReplayRequest(Strict):
    task: str | None = Field(default=None, max_length=200, description="Only letters of this task name.")
    queue: str | None = Field(default=None, max_length=200)
    exception: str | None = Field(default=None, max_length=200, description="Only this kind, e.g. NotRegistered.")
    since: dt.datetime | None = None
    until: dt.datetime | None = None
    ids: list[str] = Field(default_factory=list, max_length=MAX_BULK)
    force: StrictBool = Field(default=False, description="Also replay poison messages.")
    limit: int = Field(default=MAX_BULK, ge=1, le=MAX_BULK)
    dry_run: StrictBool = Field(default=False, description="Only count the letters that match.")


class BulkLetterAnswer(BaseModel):
    dry_run: bool
    matched: int
    count: int = Field(description="Letters replayed or dropped.")
    results: list[dict[str, Any]]
    skipped: list[dict[str, Any]] = Field(default_factory=list)


def info(letter: DeadLetter) -> DeadLetterInfo:
    return DeadLetterInfo(
        id=letter.id,
        at=dt.datetime.fromtimestamp(letter.at, dt.UTC),
        reason=letter.reason,
        exception=letter.exception,
        task=letter.task,
        task_id=letter.task_id,
        owner=letter.owner,
        arguments=letter.arguments,
        queue=letter.queue,
        size=letter.size,
        truncated=letter.truncated,
        replayable=letter.replayable,
        poison=letter.poison,
    )


def letter_filter(
    task: str | None,
    queue: str | None,
    exception: str | None,
    since: dt.datetime | None,
    until: dt.datetime | None,
    ids: list[str] | None = None,
) -> LetterFilter:
    since, until = require_timezone(since, "since"), require_timezone(until, "until")
    tasks: set[str] = set()
    if task:
        spec = get_spec(task)
        tasks = {task, spec.name, spec.celery_name} if spec else {task}
    return LetterFilter(
        tasks=frozenset(tasks),
        queue=queue,
        exception=exception,
        since=since.timestamp() if since else None,
        until=until.timestamp() if until else None,
        ids=frozenset(ids or ()),
    )


def _unavailable(exc: Exception) -> ProblemError:
    return ProblemError(
        503,
        f"Redis or the broker cannot be reached ({type(exc).__name__})",
        kind="redis-unavailable",
        headers={"Retry-After": "5"},
    )


def _not_found(letter_id: str) -> ProblemError:
    return ProblemError(404, f"there is no dead letter {letter_id!r} (any more)", kind="unknown-dead-letter")


@router.get("/dead-letters", response_model=DeadLetterPage, summary="Dead letters", openapi_extra=admin_only())
async def list_dead_letters(
    principal: Manager,
    runtime: RuntimeDep,
    task: Annotated[str | None, Query(max_length=200, description="The task name the message gave.")] = None,
    queue: Annotated[str | None, Query(max_length=200)] = None,
    exception: Annotated[str | None, Query(max_length=200, description="The kind, e.g. PoisonMessage.")] = None,
    since: Annotated[
        dt.datetime | None, Query(description="Dead-lettered at or after (ISO 8601 with timezone).")
    ] = None,
    until: Annotated[dt.datetime | None, Query(description="Dead-lettered before (ISO 8601 with timezone).")] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 50,
    offset: Annotated[int, Query(ge=0, le=dead_letter_store.MAX_DEAD_LETTERS)] = 0,
) -> DeadLetterPage:
    """``dead_letters.manage`` (admin): the messages workers could not run (malformed, unknown task,
    poison), newest first."""
    where = letter_filter(task, queue, exception, since, until)
    client = redis_client(runtime.settings)
    try:
        total, letters = await run_in_threadpool(dead_letter_store.find, client, where, offset, limit)
    except RedisError as exc:
        raise _unavailable(exc) from exc
    more = offset + len(letters) < total
    return DeadLetterPage(
        count=total, results=[info(x) for x in letters], next_offset=offset + len(letters) if more else None
    )


@router.get(
    "/dead-letters/{letter_id}", response_model=DeadLetterDetail, summary="A dead letter", openapi_extra=admin_only()
)
async def get_dead_letter(letter_id: LetterId, principal: Manager, runtime: RuntimeDep) -> DeadLetterDetail:
    """``dead_letters.manage`` (admin): one dead letter with its whole message (headers and body)."""
    client = redis_client(runtime.settings)
    letter = await run_in_threadpool(dead_letter_store.get, client, letter_id)
    message = await run_in_threadpool(dead_letter_store.get_message, client, letter_id)
    if letter is None or message is None:
        raise _not_found(letter_id)
    return DeadLetterDetail(
        **info(letter).model_dump(),
        headers=message.headers,
        body=message.body,
        body_encoding=message.body_encoding,
        content_type=message.content_type,
        content_encoding=message.content_encoding,
    )


def _replay(runtime: Runtime, letter_id: str, force: bool) -> dead_letter_replay.Replayed:
    return dead_letter_replay.replay(runtime.celery, redis_client(runtime.settings), letter_id, force)


@router.post(
    "/dead-letters/{letter_id}/replay",
    summary="Replay a dead letter",
    openapi_extra=admin_only(),
    responses={409: {"description": "It cannot be replayed, or it is a poison message and force is not given."}},
)
async def replay_dead_letter(
    letter_id: LetterId,
    request: Request,
    principal: Manager,
    runtime: RuntimeDep,
    body: ReplayRequest | None = None,
) -> dict[str, Any]:
    """``dead_letters.manage`` (admin): put the message back onto its queue (a task message gets a new task
    id) and forget the letter. A poison message needs ``{"force": true}``."""
    force = bool(body and body.force)
    try:
        replayed = await run_in_threadpool(_replay, runtime, letter_id, force)
    except KeyError as exc:
        raise _not_found(letter_id) from exc
    except dead_letter_replay.NotReplayable as exc:
        raise ProblemError(409, str(exc), kind=exc.kind) from exc
    except (RedisError, KombuError, OSError) as exc:
        raise _unavailable(exc) from exc
    await record_admin_action(request, audit.DEAD_LETTER_REPLAY, letter_id, letters=[replayed.as_dict()], force=force)
    return replayed.as_dict()


@router.delete("/dead-letters/{letter_id}", status_code=204, summary="Drop a dead letter", openapi_extra=admin_only())
async def drop_dead_letter(letter_id: LetterId, request: Request, principal: Manager, runtime: RuntimeDep) -> None:
    """``dead_letters.manage`` (admin): forget a dead letter for good."""
    try:
        removed = await run_in_threadpool(dead_letter_store.forget, redis_client(runtime.settings), [letter_id])
    except RedisError as exc:
        raise _unavailable(exc) from exc
    if not removed:
        raise _not_found(letter_id)
    await record_admin_action(request, audit.DEAD_LETTER_DROP, letter_id, ids=[letter_id])


def _replay_many(runtime: Runtime, request: BulkReplayRequest) -> BulkLetterAnswer:
    where = letter_filter(request.task, request.queue, request.exception, request.since, request.until, request.ids)
    client = redis_client(runtime.settings)
    total, letters = dead_letter_store.find(client, where, 0, 0 if request.dry_run else request.limit)
    if request.dry_run:
        return BulkLetterAnswer(dry_run=True, matched=total, count=0, results=[])
    done, skipped = [], []
    for letter in letters:
        try:
            done.append(dead_letter_replay.replay(runtime.celery, client, letter.id, request.force).as_dict())
        except KeyError:
            skipped.append({"id": letter.id, "reason": "replayed or dropped meanwhile"})
        except dead_letter_replay.NotReplayable as exc:
            skipped.append({"id": letter.id, "reason": str(exc)})
    return BulkLetterAnswer(dry_run=False, matched=total, count=len(done), results=done, skipped=skipped)


@router.post(
    "/dead-letters/replay",
    response_model=BulkLetterAnswer,
    summary="Replay many dead letters",
    openapi_extra=admin_only(),
)
async def replay_dead_letters(
    selection: BulkReplayRequest, request: Request, principal: Manager, runtime: RuntimeDep
) -> BulkLetterAnswer:
    """``dead_letters.manage`` (admin): replay the dead letters the filters select (newest first, at most
    ``limit``); poison messages only with ``force``, letters that cannot go back are skipped. ``dry_run``
    only counts."""
    try:
        answer = await run_in_threadpool(_replay_many, runtime, selection)
    except (RedisError, KombuError, OSError) as exc:
        raise _unavailable(exc) from exc
    if not answer.dry_run:
        await record_admin_action(
            request,
            audit.DEAD_LETTER_REPLAY,
            "selection",
            filters=selection.model_dump(mode="json", exclude={"dry_run"}),
            letters=answer.results,
            skipped=answer.skipped,
            force=selection.force,
        )
    return answer


def _drop_many(runtime: Runtime, where: LetterFilter, limit: int, dry_run: bool) -> BulkLetterAnswer:
    client = redis_client(runtime.settings)
    total, letters = dead_letter_store.find(client, where, 0, 0 if dry_run else limit)
    if dry_run:
        return BulkLetterAnswer(dry_run=True, matched=total, count=0, results=[])
    ids = [letter.id for letter in letters]
    removed = dead_letter_store.forget(client, ids)
    return BulkLetterAnswer(dry_run=False, matched=total, count=removed, results=[{"id": i} for i in ids])


@router.delete(
    "/dead-letters", response_model=BulkLetterAnswer, summary="Drop many dead letters", openapi_extra=admin_only()
)
async def drop_dead_letters(
    request: Request,
    principal: Manager,
    runtime: RuntimeDep,
    task: Annotated[str | None, Query(max_length=200)] = None,
    queue: Annotated[str | None, Query(max_length=200)] = None,
    exception: Annotated[str | None, Query(max_length=200)] = None,
    since: Annotated[dt.datetime | None, Query()] = None,
    until: Annotated[dt.datetime | None, Query()] = None,
    all_letters: Annotated[bool, Query(alias="all", description="Drop every dead letter (no filter needed).")] = False,
    limit: Annotated[int, Query(ge=1, le=MAX_BULK)] = MAX_BULK,
    dry_run: Annotated[bool, Query()] = False,
) -> BulkLetterAnswer:
    """``dead_letters.manage`` (admin): drop the dead letters the filters select (at most ``limit``);
    without a filter, ``all=true``."""
    where = letter_filter(task, queue, exception, since, until)
    if where.empty and not all_letters:
        raise ProblemError(
            422,
            "give a filter (task, queue, exception, since, until) or all=true",
            kind="validation-error",
            errors=[{"loc": ["query"], "msg": "no filter", "type": "value_error"}],
        )
    try:
        answer = await run_in_threadpool(_drop_many, runtime, where, limit, dry_run)
    except RedisError as exc:
        raise _unavailable(exc) from exc
    if not dry_run:
        filters = {
            "task": task,
            "queue": queue,
            "exception": exception,
            "since": since,
            "until": until,
            "all": all_letters,
        }
        ids = [item["id"] for item in answer.results]
        await record_admin_action(request, audit.DEAD_LETTER_DROP, "selection", filters=filters, ids=ids)
    return answer
