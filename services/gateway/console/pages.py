"""The console's routes under ``/console/``: sign-in and sign-out, the language switch, the overview, the
tasks and a task (with its live progress) with its retry and revoke forms; failures and dead letters (bulk
retry and replay behind a confirmation), schedules, workers and queues, reports and exports (and an export
followed to its file), the audit trail; workflows and a workflow as its steps, with its retry and revoke
forms.

Routes only translate HTTP: the data comes from the same functions the API routes use
(:mod:`services.gateway.task_history`, ``visible_task``/``detail``/``retry_task``/``revoke_task`` of
:mod:`services.gateway.routes.tasks`, the routes of bulk actions, dead letters, schedules, files and the
audit trail, called as functions so that their checks and audit entries apply), and every right is asked of
:func:`permissions.can` first.
"""

from __future__ import annotations

import functools
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace
from typing import Annotated, Any, Literal
from urllib.parse import urlencode

from fastapi import APIRouter, Depends, Path, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.sse import EventSourceResponse, ServerSentEvent
from fastapi.templating import Jinja2Templates
from starlette.concurrency import run_in_threadpool

from services.gateway import bulk
from services.gateway.console import schema_form, views
from services.gateway.console.i18n import LANG_COOKIE, LANGUAGES, NATIVE_NAMES, Translator, negotiate
from services.gateway.console.permissions import Action, can
from services.gateway.console.sessions import (
    CSRF_FIELD,
    LOGIN_COOKIE,
    LOGIN_FORM_SECONDS,
    SESSION_COOKIE,
    ConsoleSession,
    ConsoleSessions,
    is_https,
)
from services.gateway.deps import RuntimeDep, StoreDep
from services.gateway.problems import ProblemError
from services.gateway.ratelimit import Decision
from services.gateway.routes import files as file_routes
from services.gateway.routes import schedules as schedule_routes
from services.gateway.routes import workflows as workflow_routes
from services.gateway.routes.bulk import BulkFilters, retry_many
from services.gateway.routes.dead_letters import MAX_BULK as MAX_REPLAY
from services.gateway.routes.dead_letters import BulkReplayRequest, replay_dead_letters
from services.gateway.routes.tasks import retry_task, revoke_task, submit_task, task_events, visible_task
from services.gateway.runtime import Runtime
from services.gateway.schemas import (
    RevokeRequest,
    ScheduleCreate,
    ScheduleInfo,
    SchedulePatch,
    TaskSubmission,
    WorkflowDetail,
)
from services.gateway.task_view import TaskView as Visible
from shared import schedules
from shared.catalog import WORKFLOWS
from shared.contracts import TaskState
from shared.tokens import Principal, hash_token

PREFIX = "/console"
TaskId = Annotated[str, Path(pattern=r"^[A-Za-z0-9._:-]{1,64}$")]
EntryName = Annotated[str, Path(pattern=schedules.NAME_PATTERN)]
WorkflowIdPath = Annotated[str, Path(pattern=r"^[A-Za-z0-9._:-]{1,64}$")]
NOTICES = frozenset(
    {
        "retried",
        "revoked",
        "signed_out",
        "schedule_saved",
        "schedule_enabled",
        "schedule_disabled",
        "schedule_run",
        "export_requested",
        "workflow_retried",
        "workflow_revoked",
    }
)
# notices of an action on many, with their count (``?notice=bulk_retried&n=12``)
COUNTED_NOTICES = frozenset({"bulk_retried", "replayed"})
# what the console's pages may load: only the gateway's own files; no inline script or style
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
    "frame-ancestors 'none'; form-action 'self'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}

# The header's links: (path, message key, the action a role needs to see it, or None for everyone).
# A later page (failures, schedules, workers, reports, audit) adds its line here and its route below.
NAV: tuple[tuple[str, str, Action | None], ...] = (
    (f"{PREFIX}/", "nav.overview", None),
    (f"{PREFIX}/tasks", "nav.tasks", None),
    (f"{PREFIX}/workflows", "nav.workflows", "workflows.read"),
    (f"{PREFIX}/failures", "nav.failures", None),
    (f"{PREFIX}/schedules", "nav.schedules", "schedules.read"),
    (f"{PREFIX}/workers", "nav.workers", "workers.read"),
    (f"{PREFIX}/reports", "nav.reports", None),
    (f"{PREFIX}/audit", "nav.audit", "audit.read"),
)

router = APIRouter(prefix=PREFIX, include_in_schema=False)


@functools.cache
def templates() -> Jinja2Templates:
    return Jinja2Templates(directory=str(views.PACKAGE_DIR / "templates"))


class LoginRequired(Exception):
    """No valid session: a page answers with a redirect to the sign-in form."""

    def __init__(self, next_path: str) -> None:
        self.next_path = next_path


class ConsoleError(Exception):
    """An error page (HTML) with a status: 403 for a refused action or a bad CSRF token, 404, ..."""

    def __init__(self, status: int, message_key: str, detail: str = "", headers: dict[str, str] | None = None) -> None:
        self.status = status
        self.message_key = message_key
        self.detail = detail
        self.headers = headers or {}


def sessions(runtime: Runtime) -> ConsoleSessions:
    store: ConsoleSessions | None = runtime.console.get("console_sessions")
    if store is None:
        store = runtime.console["console_sessions"] = ConsoleSessions(runtime.cache, runtime.settings)
    return store


def translator(request: Request, runtime: Runtime) -> Translator:
    language = negotiate(request.headers.get("accept-language"), request.cookies.get(LANG_COOKIE))
    return Translator(language, runtime.settings.timezone)


@dataclass
class Page:
    """A signed-in request: who, in which language, and the CSRF token of its forms."""

    request: Request
    runtime: Runtime
    principal: Principal
    session: ConsoleSession
    t: Translator
    csrf: str
    extra: dict[str, Any] = field(default_factory=dict)

    def can(self, action: Action, task_name: str | None = None) -> bool:
        return can(self.principal, action, task_name)

    def render(self, template: str, status: int = 200, **context: Any) -> HTMLResponse:
        nav = [(href, key) for href, key, action in NAV if action is None or self.can(action)]
        return render(self.request, self.t, template, status, page=self, principal=self.principal, nav=nav, **context)

    def require(self, action: Action, task_name: str | None = None) -> None:
        if not self.can(action, task_name):
            raise ConsoleError(403, "error.forbidden", action)

    def counted_notice(self) -> str | None:
        """The page's ``?notice=bulk_retried&n=12``, as a sentence in its language."""
        notice, count = self.request.query_params.get("notice"), self.request.query_params.get("n", "0")
        if notice not in COUNTED_NOTICES or not count.isdigit():
            return None
        return self.t(f"notice.{notice}", n=self.t.number(int(count)))

    def confirm(self, action: str, message: str, form: dict[str, str], cancel: str) -> HTMLResponse:
        """The page that asks before an action on many (``form`` sent back with ``confirm=yes``)."""
        fields = {key: value for key, value in form.items() if key not in (CSRF_FIELD, "confirm")}
        return self.render("confirm.html", action=action, message=message, fields=fields, cancel=cancel)


def render(request: Request, t: Translator, template: str, status: int = 200, **context: Any) -> HTMLResponse:
    path = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    switch = [(code, NATIVE_NAMES[code], f"{PREFIX}/lang/{code}?{urlencode({'next': path})}") for code in LANGUAGES]
    response = templates().TemplateResponse(
        request,
        template,
        {"t": t, "languages": switch, "csrf_field": CSRF_FIELD, "path": request.url.path, **context},
        status_code=status,
    )
    response.headers.update(SECURITY_HEADERS)
    return response


async def signed_in(request: Request, runtime: RuntimeDep) -> Page:
    """The signed-in page context; without a valid session (or with a revoked token): LoginRequired."""
    store = sessions(runtime)
    session = await store.load(request.cookies.get(SESSION_COOKIE))
    principal = await runtime.tokens.principal_for_digest(session.token_digest) if session else None
    if session is None or principal is None or principal.expired():
        raise LoginRequired(request.url.path)
    request.state.principal = principal.name  # the access log names who did it, as for the API
    decision = await runtime.limiter.hit(principal.name)  # the token's rate limit, as for the API
    if not decision.allowed:
        raise ConsoleError(429, "error.rate_limited", headers={"Retry-After": str(decision.retry_after)})
    csrf = await store.csrf_token(session.csrf_binding)
    page = Page(request, runtime, principal, session, translator(request, runtime), csrf)
    page.require("tasks.read")
    return page


PageDep = Annotated[Page, Depends(signed_in)]


async def form_with_csrf(page: PageDep) -> dict[str, str]:
    """A POSTed form whose CSRF token is this session's; anything else is refused (403) before it acts."""
    form = await page.request.form()
    token = form.get(CSRF_FIELD)
    store = sessions(page.runtime)
    if not isinstance(token, str) or not await store.csrf_valid(token, page.session.csrf_binding, store.ttl):
        raise ConsoleError(403, "error.csrf")
    return {key: value for key, value in form.items() if isinstance(value, str)}


FormDep = Annotated[dict[str, str], Depends(form_with_csrf)]


def safe_next(value: str | None) -> str:
    """Only a console path of this site: never an open redirect."""
    if value and value.startswith(PREFIX + "/") and not value.startswith("//") and "\\" not in value:
        return value
    return PREFIX + "/"


def redirect(url: str) -> RedirectResponse:
    return RedirectResponse(url, status_code=303)


# -- signing in and out, the language ----------------------------------------------------------------


async def _login_form(request: Request, runtime: Runtime, status: int = 200, error: str | None = None) -> HTMLResponse:
    nonce = request.cookies.get(LOGIN_COOKIE) or secrets.token_urlsafe(32)
    csrf = await sessions(runtime).csrf_token(nonce)
    t = translator(request, runtime)
    notice = request.query_params.get("notice")
    response = render(
        request,
        t,
        "login.html",
        status,
        csrf=csrf,
        error=error,
        notice=notice if notice in NOTICES else None,
        next=safe_next(request.query_params.get("next")),
    )
    response.set_cookie(
        LOGIN_COOKIE,
        nonce,
        max_age=LOGIN_FORM_SECONDS,
        path=f"{PREFIX}/login",
        httponly=True,
        secure=is_https(request),
        samesite="strict",
    )
    return response


@router.get("/login")
async def login_page(request: Request, runtime: RuntimeDep) -> Response:
    return await _login_form(request, runtime)


@router.post("/login")
async def login(request: Request, runtime: RuntimeDep) -> Response:
    form = await request.form()
    store = sessions(runtime)
    nonce = request.cookies.get(LOGIN_COOKIE) or ""
    csrf = form.get(CSRF_FIELD)
    if not nonce or not isinstance(csrf, str) or not await store.csrf_valid(csrf, nonce, LOGIN_FORM_SECONDS):
        raise ConsoleError(403, "error.csrf")
    # guesses count against the client's address, as the API's requests without a valid token do
    client = request.client.host if request.client else "unknown"
    await _refuse_blocked(await runtime.auth_failures.peek(client))
    token = form.get("token")
    principal = await runtime.tokens.principal(token.strip()) if isinstance(token, str) and token.strip() else None
    if principal is None or principal.expired() or not isinstance(token, str):
        await _refuse_blocked(await runtime.auth_failures.hit(client))
        return await _login_form(request, runtime, 401, "login.invalid")
    previous = request.cookies.get(SESSION_COOKIE)
    if previous:  # signing in again replaces the browser's session
        await store.delete(previous)
    session = await store.create(hash_token(token.strip()))
    next_field = form.get("next")
    response = redirect(safe_next(next_field if isinstance(next_field, str) else None))
    store.set_cookie(response, request, session)
    response.delete_cookie(LOGIN_COOKIE, path=f"{PREFIX}/login")
    return response


async def _refuse_blocked(decision: Decision) -> None:
    if not decision.allowed:
        raise ConsoleError(429, "error.auth_failures", headers={"Retry-After": str(decision.retry_after)})


@router.post("/logout")
async def logout(page: PageDep, form: FormDep) -> Response:
    await sessions(page.runtime).delete(page.session.session_id)
    response = redirect(f"{PREFIX}/login?notice=signed_out")
    response.delete_cookie(SESSION_COOKIE, path="/", httponly=True, samesite="strict", secure=is_https(page.request))
    return response


@router.get("/lang/{language}")
async def switch_language(request: Request, language: str, next: str | None = None) -> Response:
    if language not in LANGUAGES:
        raise ConsoleError(404, "error.not_found")
    response = redirect(safe_next(next))
    response.set_cookie(LANG_COOKIE, language, max_age=365 * 86400, path="/", samesite="strict")
    return response


# -- pages -------------------------------------------------------------------------------------------


@router.get("/")
async def overview(page: PageDep) -> Response:
    data = await views.overview(page.runtime, page.principal)
    return page.render("overview.html", overview=data, chart=views.chart(data["hours"]))


@router.get("/tasks")
async def tasks(page: PageDep, fragment: bool = False) -> Response:
    filters = views.TaskFilters.from_query(page.request.query_params, page.t, page.principal)
    listing = await views.task_list(page.runtime, page.principal, filters)
    template = "_task_rows.html" if fragment else "tasks.html"
    return page.render(template, filters=filters, listing=listing, statuses=views.STATES, names=views.task_names())


async def console_task(task_id: TaskId, page: PageDep, store: StoreDep) -> Visible:
    """The task if this session's principal may see it, as the API decides (404 otherwise)."""
    try:
        return await visible_task(task_id, page.principal, page.runtime, store)
    except ProblemError as exc:
        raise ConsoleError(exc.status, "error.not_found", task_id) from exc


ConsoleTask = Annotated[Visible, Depends(console_task)]


@router.get("/tasks/{task_id}")
async def task(page: PageDep, visible: ConsoleTask) -> Response:
    info = await views.task_page(page.runtime, visible)
    notice = page.request.query_params.get("notice")
    labels = {state: page.t(f"state.{state}") for state in (*views.STATES, TaskState.PENDING)}
    return page.render("task.html", info=info, notice=notice if notice in NOTICES else None, state_labels=labels)


@router.get("/tasks/{task_id}/events", response_class=EventSourceResponse)
async def task_events_page(
    visible: ConsoleTask, runtime: RuntimeDep, store: StoreDep
) -> AsyncIterator[ServerSentEvent]:
    """The API's own event stream of the task (``GET /api/v1/tasks/{id}/events``), for the session."""
    async for event in task_events(visible, runtime, store):
        yield event


@router.post("/tasks/{task_id}/retry")
async def retry(page: PageDep, form: FormDep, visible: ConsoleTask, store: StoreDep) -> Response:
    page.require("task.retry", visible.task_name)
    try:  # the API's own route: its checks, its audit entry
        accepted = await retry_task(page.principal, visible, page.runtime, store, page.request)
    except ProblemError as exc:
        raise ConsoleError(exc.status, "error.action_failed", exc.detail) from exc
    return redirect(f"{PREFIX}/tasks/{accepted.task_id}?notice=retried")


@router.post("/tasks/{task_id}/revoke")
async def revoke(page: PageDep, form: FormDep, visible: ConsoleTask) -> Response:
    page.require("task.revoke", visible.task_name)
    terminate = form.get("terminate") == "on"
    try:  # the API's own route: its checks, its audit entry
        await revoke_task(page.principal, visible, page.runtime, page.request, RevokeRequest(terminate=terminate))
    except ProblemError as exc:
        raise ConsoleError(exc.status, "error.action_failed", exc.detail) from exc
    return redirect(f"{PREFIX}/tasks/{visible.task_id}?notice=revoked")


@router.get("/failures")
async def failures(page: PageDep) -> Response:
    filters = views.failure_filters(page.request.query_params, page.t, page.principal)
    listing = await views.task_list(page.runtime, page.principal, filters)
    letters = await views.dead_letters(page.runtime, page.principal) if page.can("dead_letters.read") else None
    return page.render(
        "failures.html",
        filters=filters,
        listing=listing,
        letters=letters,
        names=views.task_names(),
        notice=page.counted_notice(),
    )


def _expected(form: dict[str, str], most: int) -> int:
    """The count the confirmation showed: never act on more than the person agreed to."""
    value = form.get("expected", "")
    return max(1, min(int(value), most)) if value.isdigit() else most


@router.post("/failures/retry")
async def retry_failures(page: PageDep, form: FormDep, store: StoreDep) -> Response:
    """Every failure the filters select, retried through ``POST /api/v1/tasks/retry`` once confirmed."""
    page.require("tasks.bulk")
    filters = views.failure_filters(form, page.t, page.principal)
    if filters.error:
        raise ConsoleError(422, "error.action_failed", filters.error)
    confirmed = form.get("confirm") == "yes"
    body = BulkFilters(
        task_name=filters.task_name,
        owner=filters.owner,
        since=filters.since,
        until=filters.until,
        limit=_expected(form, bulk.MAX_LIMIT),
        dry_run=not confirmed,
    )
    try:  # the API's own route: its selection, its audit entry
        answer = await retry_many(body, page.request, page.principal, page.runtime, store)
    except ProblemError as exc:
        raise ConsoleError(exc.status, "error.action_failed", exc.detail) from exc
    back = f"{PREFIX}/failures?{filters.query(status=None)}"
    if not confirmed:
        count = min(answer.matched, bulk.MAX_LIMIT)
        message = page.t(
            "confirm.retry" if count else "confirm.nothing",
            n=page.t.number(count),
            matched=page.t.number(answer.matched),
        )
        return page.confirm(f"{PREFIX}/failures/retry", message, form | {"expected": str(count)}, back)
    return redirect(f"{PREFIX}/failures?{filters.query(status=None, notice='bulk_retried', n=str(answer.count))}")


@router.post("/dead-letters/replay")
async def replay_letters(page: PageDep, form: FormDep) -> Response:
    """Every dead letter replayed through ``POST /api/v1/dead-letters/replay`` once confirmed (poison
    messages are left: the API needs ``force`` for them)."""
    page.require("dead_letters.replay")
    confirmed = form.get("confirm") == "yes"
    body = BulkReplayRequest(limit=_expected(form, MAX_REPLAY), dry_run=not confirmed)
    try:  # the API's own route, its audit entry
        answer = await replay_dead_letters(body, page.request, page.principal, page.runtime)
    except ProblemError as exc:
        raise ConsoleError(exc.status, "error.action_failed", exc.detail) from exc
    if not confirmed:
        count = min(answer.matched, MAX_REPLAY)
        message = page.t(
            "confirm.replay" if count else "confirm.nothing",
            n=page.t.number(count),
            matched=page.t.number(answer.matched),
        )
        return page.confirm(
            f"{PREFIX}/dead-letters/replay", message, form | {"expected": str(count)}, f"{PREFIX}/failures"
        )
    return redirect(f"{PREFIX}/failures?{urlencode({'notice': 'replayed', 'n': answer.count})}#dead-letters")


@router.get("/schedules")
async def schedule_list(page: PageDep) -> Response:
    page.require("schedules.read")
    entries = await views.schedule_list(page.runtime, page.principal)
    notice = page.request.query_params.get("notice")
    return page.render(
        "schedules.html",
        entries=entries,
        timing=views.timing_text,
        described=views.described,
        notice=notice if notice in NOTICES else None,
    )


def _schedule_form(page: Page, entry: views.ScheduleForm, editing: bool, error: str | None = None) -> HTMLResponse:
    return page.render(
        "schedule_form.html",
        422 if error else 200,
        entry=entry,
        editing=editing,
        error=error,
        names=views.task_names(),
        cron_fields=views.CRON_FIELDS,
    )


@router.get("/schedules/new")
async def new_schedule(page: PageDep) -> Response:
    page.require("schedules.write")
    return _schedule_form(page, views.ScheduleForm(enabled=True), editing=False)


@router.post("/schedules/new")
async def add_schedule(page: PageDep, form: FormDep) -> Response:
    """A new beat entry through ``POST /api/v1/schedules`` (its validation, its audit entry)."""
    page.require("schedules.write")
    entry = views.ScheduleForm.from_form(form)
    try:
        body = ScheduleCreate(
            name=entry.name,
            task_name=entry.task_name,
            schedule=entry.timing(),
            kwargs=entry.kwargs_value(),
            enabled=entry.enabled,
            description=entry.description or None,
        )
        await schedule_routes.create_schedule(body, page.principal, page.runtime, page.request, Response())
    except (ValueError, ProblemError) as exc:  # pydantic's ValidationError and bad JSON are ValueErrors
        return _schedule_form(page, entry, editing=False, error=views.refusal(exc))
    return redirect(f"{PREFIX}/schedules?notice=schedule_saved")


async def _entry(page: Page, name: str) -> ScheduleInfo:
    try:
        return await schedule_routes.get_schedule(name, page.principal, page.runtime)
    except ProblemError as exc:
        raise ConsoleError(404, "error.not_found", name) from exc


@router.get("/schedules/{name}/edit")
async def edit_schedule(page: PageDep, name: EntryName) -> Response:
    page.require("schedules.write")
    return _schedule_form(page, views.ScheduleForm.from_entry(await _entry(page, name)), editing=True)


@router.post("/schedules/{name}/edit")
async def change_schedule(page: PageDep, form: FormDep, name: EntryName) -> Response:
    """A changed beat entry through ``PATCH /api/v1/schedules/{name}``."""
    page.require("schedules.write")
    current = await _entry(page, name)
    entry = replace(views.ScheduleForm.from_form(form, name), task_name=current.task_name)
    try:
        patch = SchedulePatch(
            schedule=entry.timing(),
            kwargs=entry.kwargs_value(),
            enabled=entry.enabled,
            description=entry.description or None,
        )
        await schedule_routes.update_schedule(name, patch, page.principal, page.runtime, page.request)
    except (ValueError, ProblemError) as exc:
        return _schedule_form(page, entry, editing=True, error=views.refusal(exc))
    return redirect(f"{PREFIX}/schedules?notice=schedule_saved")


@router.post("/schedules/{name}/{switch}")
async def switch_schedule(page: PageDep, form: FormDep, name: EntryName, switch: str, store: StoreDep) -> Response:
    """Enable or disable an entry (``PATCH``), or run it now (``POST /api/v1/schedules/{name}/run``)."""
    page.require("schedules.write")
    if switch not in ("enable", "disable", "run"):
        raise ConsoleError(404, "error.not_found")
    try:
        if switch == "run":
            accepted = await schedule_routes.run_schedule(name, page.principal, page.runtime, store, page.request)
            return redirect(f"{PREFIX}/tasks/{accepted.task_id}?notice=schedule_run")
        patch = SchedulePatch(enabled=switch == "enable")
        await schedule_routes.update_schedule(name, patch, page.principal, page.runtime, page.request)
    except ProblemError as exc:
        raise ConsoleError(exc.status, "error.action_failed", exc.detail) from exc
    return redirect(f"{PREFIX}/schedules?notice=schedule_{switch}d#entry-{name}")


@router.get("/workers")
async def workers(page: PageDep, fragment: bool = False) -> Response:
    """Workers and queues (the page, or its live part), to roles that may read them."""
    if not (page.can("workers.read") or page.can("queues.read")):
        raise ConsoleError(403, "error.forbidden", "workers.read")
    data = await views.platform_state(page.runtime, page.principal)
    return page.render("_platform.html" if fragment else "workers.html", platform=data)


def _reports_page(
    page: Page, files: dict[str, Any], error: str | None = None, typed: dict[str, str] | None = None
) -> HTMLResponse:
    form = views.export_form() if page.can("exports.request") else None
    return page.render("reports.html", 422 if error else 200, files=files, form=form, error=error, typed=typed or {})


@router.get("/reports")
async def reports(page: PageDep) -> Response:
    return _reports_page(page, await views.files_page(page.runtime, page.principal))


@router.post("/exports")
async def request_export(page: PageDep, form: FormDep) -> Response:
    """export_data submitted through ``POST /api/v1/tasks`` (its validation, rights and audit), then the
    page that follows it to its file."""
    page.require("exports.request")
    try:
        kwargs = schema_form.arguments(views.export_form(), form)
        submission = TaskSubmission(task_name=views.EXPORT_TASK, kwargs=kwargs)
        accepted = await submit_task(submission, page.principal, page.request, None)
    except (ValueError, ProblemError) as exc:
        if isinstance(exc, ProblemError) and exc.status == 403:
            raise ConsoleError(403, "error.forbidden", exc.detail) from exc
        files = await views.files_page(page.runtime, page.principal)
        return _reports_page(page, files, views.refusal(exc), form)
    return redirect(f"{PREFIX}/exports/{accepted.task_id}?notice=export_requested")


@router.get("/exports/{task_id}")
async def export_page(page: PageDep, visible: ConsoleTask) -> Response:
    """An export followed to its file: the task's live progress, then the download link."""
    if views.short_name(visible.task_name) != views.EXPORT_TASK:
        raise ConsoleError(404, "error.not_found", visible.task_id)
    info = await views.task_page(page.runtime, visible)
    export = await views.export_state(page.runtime, page.principal, visible.task_id)
    notice = page.request.query_params.get("notice")
    labels = {state: page.t(f"state.{state}") for state in (*views.STATES, TaskState.PENDING)}
    return page.render(
        "export.html", info=info, export=export, state_labels=labels, notice=notice if notice in NOTICES else None
    )


@router.get("/exports/{task_id}/download")
async def download_export(page: PageDep, task_id: TaskId) -> Response:
    """The file, as ``GET /api/v1/exports/{id}/download`` serves it (its checks, its audit entry)."""

    def download() -> Response:
        with page.runtime.sessions() as session, session.begin():
            return file_routes.download_export(task_id, page.principal, session, page.runtime, page.request)

    try:
        return await run_in_threadpool(download)
    except ProblemError as exc:
        raise ConsoleError(exc.status, "error.action_failed", exc.detail) from exc


@router.get("/reports/{report_id}/file")
async def report_file(
    page: PageDep, report_id: Annotated[int, Path(ge=1, le=2**31 - 1)], format: str = "html"
) -> Response:
    """A report's CSV or HTML file (the HTML in the page's language), as the API serves it."""
    access = views.report_access(page.principal)
    if access is None:
        raise ConsoleError(403, "error.forbidden", "reports.read")
    kind: Literal["csv", "html"] = "csv" if format == "csv" else "html"
    language: Literal["zh_CN", "en"] = "zh_CN" if page.t.language == "zh_CN" else "en"

    def read() -> Response:
        with page.runtime.sessions() as session, session.begin():
            return file_routes.report_file(report_id, access, session, page.runtime, page.request, kind, language)

    try:
        return await run_in_threadpool(read)
    except ProblemError as exc:
        raise ConsoleError(exc.status, "error.action_failed", exc.detail) from exc


@router.get("/workflows")
async def workflow_list(page: PageDep) -> Response:
    """The workflows the principal may see, newest first, as ``GET /api/v1/workflows`` lists them."""
    page.require("workflows.read")
    filters = views.WorkflowFilters.from_query(page.request.query_params, page.t, page.principal)
    listing = await views.workflow_list(page.runtime, page.principal, filters)
    return page.render(
        "workflows.html", filters=filters, listing=listing, statuses=views.WORKFLOW_STATUSES, names=sorted(WORKFLOWS)
    )


async def console_workflow(workflow_id: WorkflowIdPath, page: PageDep) -> WorkflowDetail:
    """The workflow if this session's principal may see it, as the API decides (404 otherwise)."""
    page.require("workflows.read")
    try:
        return await workflow_routes.get_workflow(workflow_id, page.principal, page.runtime)
    except ProblemError as exc:
        raise ConsoleError(exc.status, "error.not_found", workflow_id) from exc


ConsoleWorkflow = Annotated[WorkflowDetail, Depends(console_workflow)]


@router.get("/workflows/{workflow_id}")
async def workflow(page: PageDep, found: ConsoleWorkflow, fragment: bool = False) -> Response:
    """The workflow as its steps (the page, or its steps alone: an unfinished one's refresh them live)."""
    notice = page.request.query_params.get("notice")
    info = views.workflow_page(page.principal, found)
    template = "_workflow_stages.html" if fragment else "workflow.html"
    return page.render(template, info=info, notice=notice if notice in NOTICES else None)


@router.post("/workflows/{workflow_id}/retry")
async def retry_workflow(page: PageDep, form: FormDep, found: ConsoleWorkflow, store: StoreDep) -> Response:
    """From its failed step, through ``POST /api/v1/workflows/{id}/retry`` (its checks, its audit entry)."""
    page.require("workflow.retry")
    try:
        await workflow_routes.retry_workflow(found.workflow_id, page.principal, page.runtime, store, page.request)
    except ProblemError as exc:
        raise ConsoleError(exc.status, "error.action_failed", exc.detail) from exc
    return redirect(f"{PREFIX}/workflows/{found.workflow_id}?notice=workflow_retried")


@router.post("/workflows/{workflow_id}/revoke")
async def revoke_workflow(page: PageDep, form: FormDep, found: ConsoleWorkflow, store: StoreDep) -> Response:
    """Its steps not yet run never run, through ``POST /api/v1/workflows/{id}/revoke``."""
    page.require("workflow.revoke")
    try:
        await workflow_routes.revoke_workflow(found.workflow_id, page.principal, page.runtime, store, page.request)
    except ProblemError as exc:
        raise ConsoleError(exc.status, "error.action_failed", exc.detail) from exc
    return redirect(f"{PREFIX}/workflows/{found.workflow_id}?notice=workflow_revoked")


@router.get("/audit")
async def audit_trail(page: PageDep) -> Response:
    page.require("audit.read")
    filters = views.AuditFilters.from_query(page.request.query_params, page.t)
    trail = await views.audit_page(page.runtime, page.principal, filters)
    return page.render("audit.html", filters=filters, trail=trail, actions=views.AUDIT_ACTIONS)


@router.get("/{path:path}")
async def unknown(path: str) -> Response:
    """Any other path under /console/: the console's own 404 page (not the API's problem document)."""
    raise ConsoleError(404, "error.not_found")


# -- errors ------------------------------------------------------------------------------------------


async def login_required(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, LoginRequired)
    if request.method != "GET" or request.url.path.endswith("/events") or "fragment" in request.query_params:
        return HTMLResponse("sign in first", status_code=401, headers=SECURITY_HEADERS)
    return redirect(f"{PREFIX}/login?{urlencode({'next': exc.next_path})}")


async def console_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ConsoleError)
    runtime: Runtime = request.app.state.runtime
    response = render(request, translator(request, runtime), "error.html", exc.status, error=exc)
    response.headers.update(exc.headers)
    return response
