"""A small typed client for the mallops gateway, for programs and for the ``mallops`` CLI.

It replaces the replaced system's ``TaskManager.send_task()`` and ``TaskMonitor().get_task_stats()``::

    from mallops.client import Client, TaskFailed

    with Client() as mallops:                      # MALLOPS_URL / MALLOPS_TOKEN or the config file
        task = mallops.submit("generate_daily_report", kwargs={"date": "2026-11-14"})
        try:
            done = mallops.wait(task.task_id, timeout=600, on_progress=lambda t: print(t.progress))
            print(done.result)
        except TaskFailed as failed:
            print("failed:", failed.task.error)
        print(mallops.stats()["overall"]["success_rate"])

Every failure is one of the exceptions below, each with a one-line message and the CLI exit code:
:class:`Unreachable` and :class:`Unauthorized` (3), :class:`NotFound` and :class:`InvalidRequest` (2,
the latter carrying the problem+json document), :class:`Refused` (4: a quota, the rate limit or a 503;
try later), :class:`TaskFailed` (1) and :class:`WaitTimeout` (5).
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Self

import httpx

from mallops.config import ClientConfig, load_config
from shared.contracts import FAILED_STATES, FINAL_STATES, TaskState

API = "/api/v1"


# -- errors --------------------------------------------------------------------------------------


class MallopsError(Exception):
    """Base of every client error; ``str()`` is one line for a human, ``exit_code`` the CLI's."""

    exit_code = 2

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class Unreachable(MallopsError):
    """The gateway cannot be reached, timed out, or answered that it (or its broker) is unavailable."""

    exit_code = 3

    def __init__(self, message: str, *, status: int | None = None, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.retry_after = retry_after


class Unauthorized(MallopsError):
    """No token, a bad or revoked token (401), or a role that may not do this (403)."""

    exit_code = 3

    def __init__(self, message: str, *, status: int) -> None:
        super().__init__(message)
        self.status = status


class _ProblemError(MallopsError):
    def __init__(self, message: str, *, status: int, problem: Mapping[str, Any] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.problem: dict[str, Any] = dict(problem or {})

    @property
    def detail(self) -> str:
        return str(self.problem.get("detail") or self.message)


class NotFound(_ProblemError):
    """404: an unknown task name, task id, schedule or report (or another user's task)."""


class InvalidRequest(_ProblemError):
    """The gateway refused the request (400, 409, 413, 422, 429): ``problem`` is its problem+json
    document, ``errors`` the field errors of a 422."""

    @property
    def errors(self) -> list[dict[str, Any]]:
        raw = self.problem.get("errors")
        return [e for e in raw if isinstance(e, dict)] if isinstance(raw, list) else []

    @property
    def retry_after(self) -> float | None:
        value = self.problem.get("retry_after")
        return float(value) if isinstance(value, int | float) else None


class Refused(InvalidRequest):
    """Refused for now, try later: 429 (the user's quota of unfinished tasks, the rate limit) or 503 (the
    task queue cannot be reached); ``retry_after`` is the gateway's Retry-After when it sent one."""

    exit_code = 4


class GatewayError(_ProblemError):
    """The gateway failed (500 and other unexpected answers)."""

    exit_code = 3


class TaskFailed(MallopsError):
    """A task that was waited for ended in FAILURE, REVOKED or REJECTED."""

    exit_code = 1

    def __init__(self, task: Task) -> None:
        reason = task.error or task.status
        super().__init__(f"task {task.task_id} ({task.task_name}) {task.status}: {reason}")
        self.task = task


class WaitTimeout(MallopsError):
    """:meth:`Client.wait` gave up before the task finished (the task itself goes on)."""

    exit_code = 5

    def __init__(self, task: Task, timeout: float) -> None:
        super().__init__(f"task {task.task_id} ({task.task_name}) is still {task.status} after {timeout:g}s")
        self.task = task


# -- values --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Progress:
    current: int
    total: int

    @property
    def fraction(self) -> float:
        return self.current / self.total if self.total else 0.0


@dataclass(frozen=True)
class Task:
    """A task as the gateway describes it; ``raw`` keeps every field the gateway sent."""

    task_id: str
    task_name: str
    status: str
    queue: str | None = None
    result: Any = None
    error: str | None = None
    progress: Progress | None = None
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Task:
        progress = data.get("progress")
        parsed: Progress | None = None
        if isinstance(progress, Mapping):
            try:
                parsed = Progress(int(progress.get("current") or 0), int(progress.get("total") or 0))
            except (TypeError, ValueError):
                parsed = None
        error = data.get("error")
        if isinstance(error, Mapping):  # {"type": ..., "message": ...} or similar
            error = ": ".join(
                str(v) for v in (error.get("type") or error.get("exception"), error.get("message")) if v
            ) or str(dict(error))
        return cls(
            task_id=str(data.get("task_id", "")),
            task_name=str(data.get("task_name") or ""),
            status=str(data.get("status") or data.get("state") or TaskState.PENDING).upper(),
            queue=data.get("queue"),
            result=data.get("result"),
            error=str(error) if error not in (None, "") else None,
            progress=parsed,
            raw=dict(data),
        )

    @property
    def ready(self) -> bool:
        return self.status in FINAL_STATES

    @property
    def successful(self) -> bool:
        return self.status == TaskState.SUCCESS

    @property
    def failed(self) -> bool:
        return self.status in FAILED_STATES


ProgressCallback = Callable[[Task], object]


# -- the client ----------------------------------------------------------------------------------


def _when(value: dt.datetime | dt.date | str | None) -> str | None:
    if value is None or isinstance(value, str):
        return value
    return value.isoformat()


def _params(**values: Any) -> dict[str, Any]:
    return {key: value for key, value in values.items() if value is not None}


class Client:
    """A connection to one gateway. Use as a context manager, or call :meth:`close`."""

    def __init__(
        self,
        url: str | None = None,
        token: str | None = None,
        *,
        timeout: float | None = None,
        config: ClientConfig | None = None,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        if config is None and (url is None or timeout is None):
            config = load_config()
        self.url = (url or (config.url if config else "")).rstrip("/")
        self.token = token if token is not None else (config.token if config else None)
        self.timeout = timeout if timeout is not None else (config.timeout if config else 10.0)
        headers = {"Accept": "application/json", "User-Agent": "mallops-client"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        self._http = httpx.Client(base_url=self.url, headers=headers, timeout=self.timeout, transport=transport)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # -- transport ---------------------------------------------------------------------------------

    def request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, Any] | None = None,
        json: Any = None,
        headers: Mapping[str, str] | None = None,
    ) -> Any:
        """One HTTP request; the decoded JSON body, or a :class:`MallopsError`."""
        try:
            response = self._http.request(method, path, params=params, json=json, headers=headers)
        except httpx.TimeoutException as exc:
            raise Unreachable(f"the gateway at {self.url} did not answer within {self.timeout:g}s") from exc
        except httpx.HTTPError as exc:
            reason = str(exc) or type(exc).__name__
            raise Unreachable(f"cannot reach the gateway at {self.url} ({reason})") from exc
        if response.is_success:
            if not response.content:
                return None
            try:
                return response.json()
            except ValueError as exc:
                raise GatewayError(
                    f"the gateway at {self.url} answered {method} {path} with something that is not JSON",
                    status=response.status_code,
                ) from exc
        raise self._error(response)

    def _error(self, response: httpx.Response) -> MallopsError:
        status = response.status_code
        problem: dict[str, Any] = {}
        try:
            body = response.json()
            if isinstance(body, dict):
                problem = body
        except ValueError:
            pass
        detail = str(problem.get("detail") or response.reason_phrase or f"HTTP {status}")
        retry_after = _retry_after(response)
        if retry_after is not None:
            problem.setdefault("retry_after", retry_after)
        if status == 401:
            hint = "" if self.token else " (no token: set MALLOPS_TOKEN or the config file's token)"
            return Unauthorized(f"not authorised by {self.url}: {detail}{hint}", status=status)
        if status == 403:
            return Unauthorized(f"forbidden: {detail}", status=status)
        if status == 404:
            return NotFound(detail, status=status, problem=problem)
        if status in (429, 503):
            later = f"; try again in {retry_after:g}s" if retry_after is not None else "; try again later"
            return Refused(f"refused for now: {detail}{later}", status=status, problem=problem)
        if status in (502, 504):
            later = f"; retry after {retry_after:g}s" if retry_after is not None else ""
            return Unreachable(
                f"the gateway at {self.url} is unavailable: {detail}{later}", status=status, retry_after=retry_after
            )
        if 400 <= status < 500:
            return InvalidRequest(detail, status=status, problem=problem)
        return GatewayError(f"the gateway failed (HTTP {status}): {detail}", status=status, problem=problem)

    # -- health ------------------------------------------------------------------------------------

    def health(self) -> dict[str, Any]:
        """``GET /healthz``: the gateway process is up."""
        return dict(self.request("GET", "/healthz") or {})

    def ready(self) -> dict[str, Any]:
        """``GET /readyz``: the gateway can reach Redis and the database (Unreachable when not)."""
        return dict(self.request("GET", "/readyz") or {})

    # -- tasks -------------------------------------------------------------------------------------

    def submit(
        self,
        task_name: str,
        args: Sequence[Any] = (),
        kwargs: Mapping[str, Any] | None = None,
        *,
        countdown: float | None = None,
        eta: dt.datetime | str | None = None,
        priority: int | None = None,
        idempotency_key: str | None = None,
    ) -> Task:
        """Submit a catalog task; the answer (202) means it is in the broker. NotFound for an unknown
        task name, InvalidRequest (422) for arguments that do not fit its schema."""
        body = _params(
            task_name=task_name,
            args=list(args),
            kwargs=dict(kwargs or {}),
            countdown=countdown,
            eta=_when(eta),
            priority=priority,
        )
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else None
        return Task.from_json(self.request("POST", f"{API}/tasks", json=body, headers=headers))

    def submit_batch(self, submissions: Iterable[Mapping[str, Any]]) -> list[Task]:
        """Submit many tasks in one request; each submission is a dict like :meth:`submit`'s arguments
        (``task_name``, ``args``, ``kwargs``, ``countdown``, ``eta``, ``priority``)."""
        items = [dict(item) for item in submissions]
        data = self.request("POST", f"{API}/tasks/batch", json={"tasks": items})
        results: Any = data.get("results", data.get("tasks", [])) if isinstance(data, dict) else data
        return [Task.from_json(item) for item in results]

    def get(self, task_id: str) -> Task:
        """Status, result or error, progress, queue, worker, retries and timestamps of one task."""
        return Task.from_json(self.request("GET", f"{API}/tasks/{task_id}"))

    def wait(
        self,
        task_id: str,
        *,
        timeout: float | None = None,
        poll_interval: float = 0.5,
        on_progress: ProgressCallback | None = None,
    ) -> Task:
        """Poll until the task ends. ``on_progress`` is called with the task whenever its status or
        progress changes. Returns the finished task on SUCCESS; raises :class:`TaskFailed` when it
        failed or was revoked, :class:`WaitTimeout` after ``timeout`` seconds."""
        deadline = None if timeout is None else time.monotonic() + timeout
        last: tuple[str, Progress | None] | None = None
        while True:
            task = self.get(task_id)
            seen = (task.status, task.progress)
            if on_progress is not None and seen != last:
                on_progress(task)
            last = seen
            if task.ready:
                if task.failed:
                    raise TaskFailed(task)
                return task
            if deadline is not None and time.monotonic() >= deadline:
                raise WaitTimeout(task, timeout or 0.0)
            pause = poll_interval if deadline is None else max(0.0, min(poll_interval, deadline - time.monotonic()))
            time.sleep(pause)

    def revoke(self, task_id: str, *, terminate: bool = False) -> dict[str, Any]:
        """Revoke a task (admin); ``terminate`` also stops it if it is already running."""
        return dict(self.request("POST", f"{API}/tasks/{task_id}/revoke", json={"terminate": terminate}) or {})

    def retry(self, task_id: str) -> Task:
        """Re-submit a failed task with its original arguments; the new task."""
        return Task.from_json(self.request("POST", f"{API}/tasks/{task_id}/retry"))

    def retry_many(self, **filters: Any) -> dict[str, Any]:
        """Retry the failed tasks the history's filters select (admin): ``task_name``, ``status``, ``owner``,
        ``since``, ``until``, ``arguments`` ({"kwargs.x": value}), ``limit``, ``dry_run``."""
        return dict(self.request("POST", f"{API}/tasks/retry", json=_bulk_body(filters)))

    def revoke_many(self, **filters: Any) -> dict[str, Any]:
        """Revoke the unfinished tasks the history's filters select (admin); ``terminate`` as :meth:`revoke`."""
        return dict(self.request("POST", f"{API}/tasks/revoke", json=_bulk_body(filters)))

    def list_tasks(
        self,
        *,
        status: str | None = None,
        task_name: str | None = None,
        limit: int | None = None,
        offset: int | None = None,
    ) -> dict[str, Any]:
        """Active and recent tasks: ``{"count": n, "results": [...]}``."""
        params = _params(status=status, task_name=task_name, limit=limit, offset=offset)
        return dict(self.request("GET", f"{API}/tasks", params=params))

    def stats(
        self,
        *,
        since: dt.datetime | str | None = None,
        until: dt.datetime | str | None = None,
        task_name: str | None = None,
    ) -> dict[str, Any]:
        """Counts by state, success rate, throughput and percentiles, overall and per task name."""
        params = _params(since=_when(since), until=_when(until), task_name=task_name)
        return dict(self.request("GET", f"{API}/tasks/stats", params=params))

    def history(
        self,
        *,
        task_name: str | None = None,
        status: str | None = None,
        since: dt.datetime | str | None = None,
        until: dt.datetime | str | None = None,
        cursor: str | None = None,
        limit: int | None = None,
        arguments: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        """One page of the durable task history, newest first, with ``next_cursor`` to continue.
        ``status`` may name several states (``FAILURE,REVOKED``); ``arguments`` filters by argument values
        (``{"kwargs.filters.store_id": 12}``)."""
        params = _params(
            task_name=task_name, status=status, since=_when(since), until=_when(until), cursor=cursor, limit=limit
        )
        params.update({key: str(value) for key, value in (arguments or {}).items()})
        return dict(self.request("GET", f"{API}/tasks/history", params=params))

    # -- dead letters (admin) ----------------------------------------------------------------------

    def dead_letters(self, **filters: Any) -> dict[str, Any]:
        """A page of dead letters, newest first: ``task``, ``queue``, ``exception``, ``since``, ``until``,
        ``limit``, ``offset``; ``{"count", "results", "next_offset"}``."""
        params = _params(**{k: _when(v) if k in ("since", "until") else v for k, v in filters.items()})
        return dict(self.request("GET", f"{API}/dead-letters", params=params))

    def dead_letter(self, letter_id: str) -> dict[str, Any]:
        """One dead letter with its whole message."""
        return dict(self.request("GET", f"{API}/dead-letters/{letter_id}"))

    def replay_dead_letter(self, letter_id: str, *, force: bool = False) -> dict[str, Any]:
        """Put a dead letter's message back onto its queue (a poison message needs ``force``)."""
        return dict(self.request("POST", f"{API}/dead-letters/{letter_id}/replay", json={"force": force}))

    def drop_dead_letter(self, letter_id: str) -> None:
        self.request("DELETE", f"{API}/dead-letters/{letter_id}")

    def replay_dead_letters(self, **filters: Any) -> dict[str, Any]:
        """Replay the dead letters the filters select (``task``, ``queue``, ``exception``, ``since``,
        ``until``, ``ids``, ``force``, ``limit``, ``dry_run``)."""
        return dict(self.request("POST", f"{API}/dead-letters/replay", json=_bulk_body(filters)))

    def drop_dead_letters(self, **filters: Any) -> dict[str, Any]:
        """Drop the dead letters the filters select (``all=True`` for every one)."""
        params = _params(**{k: _when(v) if k in ("since", "until") else v for k, v in filters.items()})
        params = {k: ("true" if v is True else "false" if v is False else v) for k, v in params.items()}
        return dict(self.request("DELETE", f"{API}/dead-letters", params=params))

    # -- platform ----------------------------------------------------------------------------------

    def workers(self) -> list[dict[str, Any]]:
        """Workers online and offline with their queues and active tasks (admin)."""
        return _items(self.request("GET", f"{API}/workers"), "workers")

    def queues(self) -> dict[str, dict[str, Any]]:
        """Each queue's pending messages and consumers (admin): ``{name: {"pending": n, "consumers": n}}``."""
        data = self.request("GET", f"{API}/queues")
        rows: Any = data.get("results", data.get("queues", data)) if isinstance(data, dict) else data
        if isinstance(rows, list):
            return {str(row.get("name")): {k: v for k, v in row.items() if k != "name"} for row in rows}
        return {str(name): dict(value) for name, value in (rows or {}).items()}

    def catalog(self) -> list[dict[str, Any]]:
        """Every task with its queue, description, schedule and the JSON Schema of its arguments."""
        return _items(self.request("GET", f"{API}/catalog"), "tasks")

    def catalog_workflows(self) -> list[dict[str, Any]]:
        """Every named workflow with its description, steps, schedule and the JSON Schema of its arguments."""
        data = self.request("GET", f"{API}/catalog")
        return [dict(item) for item in (data.get("workflows") or [])] if isinstance(data, dict) else []

    def schedules(self) -> list[dict[str, Any]]:
        """The beat entries (admin)."""
        return _items(self.request("GET", f"{API}/schedules"), "schedules")

    def find_task_id(self, prefix: str) -> str:
        """The whole id of the task whose id starts with ``prefix`` (a full id is returned as it is).

        Looks among the recent tasks and the last 500 history rows; NotFound when none matches,
        InvalidRequest when several do."""
        prefix = prefix.strip().lower()
        if len(prefix) == 36 or not prefix:
            return prefix
        found: set[str] = set()
        history = self.history(limit=500)
        for page in (self.list_tasks(limit=200).get("results", []), history.get("items", history.get("results", []))):
            found |= {str(t["task_id"]) for t in page if str(t.get("task_id", "")).startswith(prefix)}
        if not found:
            raise NotFound(f"no recent task id starts with {prefix!r}", status=404)
        if len(found) > 1:
            raise InvalidRequest(
                f"{len(found)} tasks start with {prefix!r} ({', '.join(sorted(found)[:3])}...); give more of the id",
                status=400,
            )
        return found.pop()

    # -- workflows ---------------------------------------------------------------------------------

    def run_workflow(
        self,
        name: str | None = None,
        kwargs: Mapping[str, Any] | None = None,
        *,
        steps: Sequence[Any] | None = None,
        idempotency_key: str | None = None,
    ) -> dict[str, Any]:
        """Submit a named workflow (``name``, ``kwargs``) or an ad-hoc one (``steps``): the workflow."""
        body: dict[str, Any] = {"steps": list(steps)} if steps is not None else {"name": name, "kwargs": kwargs or {}}
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else None
        return dict(self.request("POST", f"{API}/workflows", json=body, headers=headers))

    def workflow(self, workflow_id: str) -> dict[str, Any]:
        """A workflow with its steps, ``status`` and ``progress``."""
        return dict(self.request("GET", f"{API}/workflows/{workflow_id}"))

    def workflows(self, **filters: Any) -> dict[str, Any]:
        """Workflows, newest first; filters ``status``, ``name``, ``owner``, ``since``, ``until``, ``limit``."""
        return dict(self.request("GET", f"{API}/workflows", params=_params(**filters)))

    def retry_workflow(self, workflow_id: str) -> dict[str, Any]:
        """Run a failed (or revoked) workflow again from its failed step."""
        return dict(self.request("POST", f"{API}/workflows/{workflow_id}/retry"))

    def revoke_workflow(self, workflow_id: str) -> dict[str, Any]:
        """Revoke a workflow: its steps not yet run never run."""
        return dict(self.request("POST", f"{API}/workflows/{workflow_id}/revoke"))

    def find_workflow_id(self, prefix: str) -> str:
        """The whole id of the workflow whose id starts with ``prefix`` (among the newest 500)."""
        prefix = prefix.strip().lower()
        if len(prefix) == 36 or not prefix:
            return prefix
        rows = self.workflows(limit=500).get("results", [])
        found = {str(row["workflow_id"]) for row in rows if str(row.get("workflow_id", "")).startswith(prefix)}
        if not found:
            raise NotFound(f"no recent workflow id starts with {prefix!r}", status=404)
        if len(found) > 1:
            raise InvalidRequest(f"{len(found)} workflows start with {prefix!r}; give more of the id", status=400)
        return found.pop()

    # -- reports and exports -----------------------------------------------------------------------

    def reports(self, *, kind: str | None = None, limit: int | None = None) -> dict[str, Any]:
        """The reports, newest first: ``{"count": n, "results": [...]}``."""
        return dict(self.request("GET", f"{API}/reports", params=_params(kind=kind, limit=limit)))

    def report(self, report_id: int) -> dict[str, Any]:
        """One report with its figures (``data``) and the formats of its files."""
        return dict(self.request("GET", f"{API}/reports/{report_id}"))

    def report_file(self, report_id: int, *, format: str = "html", lang: str | None = None) -> tuple[str, bytes]:
        """A report's file: its name and its bytes."""
        params = _params(format=format, lang=lang)
        return self.download(f"{API}/reports/{report_id}/file", params)

    def export_status(self, task_id: str) -> dict[str, Any]:
        """An export's state (running, done, failed), rows, size and file name."""
        return dict(self.request("GET", f"{API}/exports/{task_id}"))

    def export_file(self, task_id: str) -> tuple[str, bytes]:
        """A finished export's file: its name and its bytes."""
        return self.download(f"{API}/exports/{task_id}/download", None)

    def download(self, path: str, params: Mapping[str, Any] | None) -> tuple[str, bytes]:
        """GET a file: the name the gateway gives it (Content-Disposition) and its bytes."""
        try:
            response = self._http.get(path, params=params, headers={"Accept": "*/*"})
        except httpx.HTTPError as exc:
            raise Unreachable(f"cannot reach the gateway at {self.url} ({str(exc) or type(exc).__name__})") from exc
        if not response.is_success:
            raise self._error(response)
        disposition = response.headers.get("content-disposition", "")
        name = disposition.split("filename=", 1)[1].strip('"; ') if "filename=" in disposition else path.rsplit("/")[-1]
        return name.rsplit("/", 1)[-1], response.content

    def update_schedule(
        self, name: str, *, enabled: bool | None = None, schedule: Mapping[str, Any] | None = None
    ) -> dict[str, Any]:
        """Enable, disable or re-time a beat entry (admin)."""
        body = _params(enabled=enabled, schedule=dict(schedule) if schedule is not None else None)
        return dict(self.request("PATCH", f"{API}/schedules/{name}", json=body))


def _bulk_body(filters: Mapping[str, Any]) -> dict[str, Any]:
    body = {key: _when(value) if key in ("since", "until") else value for key, value in filters.items()}
    return _params(**body)


def _items(data: Any, key: str) -> list[dict[str, Any]]:
    """A list answer, either bare or wrapped as ``{key: [...]}`` / ``{"results": [...]}``."""
    items: Any = data
    if isinstance(data, dict):
        items = data.get(key, data.get("results", data.get("items", [])))
    return [dict(item) for item in items or []]


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("Retry-After")
    if value is None:
        return None
    try:
        return float(value)
    except ValueError:
        return None


__all__ = [
    "Client",
    "GatewayError",
    "InvalidRequest",
    "MallopsError",
    "NotFound",
    "Progress",
    "Refused",
    "Task",
    "TaskFailed",
    "Unauthorized",
    "Unreachable",
    "WaitTimeout",
]
