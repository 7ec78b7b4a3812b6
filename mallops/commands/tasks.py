"""``mallops tasks list|send|status|revoke|retry|watch``: tasks through the gateway."""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn
from rich.progress import Task as RichTask
from rich.text import Text

from mallops.client import Client, Task, TaskFailed
from mallops.commands.selection import (
    DryRunOption,
    LimitOption,
    SinceOption,
    StatusOption,
    TaskOption,
    UntilOption,
    WhereOption,
    bulk_filters,
    show_bulk,
)
from mallops.output import (
    JsonlOption,
    JsonOption,
    WideOption,
    client,
    echo,
    fail,
    handles_errors,
    parse_json_option,
    print_fields,
    print_items,
    print_json,
    print_table,
    stderr,
)
from shared.contracts import TaskState

app = typer.Typer(
    help="Submit, follow and manage tasks. A task id may be given by any unique prefix (the 8 characters tables show).",
    no_args_is_help=True,
    rich_markup_mode=None,
)

TASK_FIELDS = (
    "task_id",
    "task_name",
    "status",
    "queue",
    "worker",
    "owner",
    "retries",
    "progress",
    "sent_at",
    "started_at",
    "finished_at",
    "duration",
    "result",
    "error",
)


@app.command("list")
@handles_errors
def list_tasks(
    status: Annotated[str | None, typer.Option(help="Only tasks in this state, e.g. STARTED or FAILURE.")] = None,
    task: Annotated[str | None, typer.Option("--task", help="Only this task (short or Celery name).")] = None,
    limit: Annotated[int, typer.Option(min=1, max=200, help="At most this many tasks.")] = 50,
    wide: WideOption = False,
    as_json: JsonOption = False,
    as_jsonl: JsonlOption = False,
) -> None:
    """Active and recent tasks, newest first (was: celery_manage --list-tasks).

    Examples:

      \b
      mallops tasks list
      mallops tasks list --status FAILURE --task generate_daily_report
      mallops tasks list --jsonl | jq -r .task_id
    """
    with client() as mallops:
        page = mallops.list_tasks(status=status.upper() if status else None, task_name=task, limit=limit)
    if print_items(page.get("results", []), as_json=as_json, as_jsonl=as_jsonl, document=page):
        return
    rows = [
        [t.get("task_id"), t.get("task_name"), t.get("status"), t.get("queue"), t.get("owner"), t.get("sent_at")]
        for t in page.get("results", [])
    ]
    print_table(
        ["task_id", "task", "status", "queue", "owner", "sent"],
        rows,
        title=f"{page.get('count', len(rows))} task(s)",
        status_columns=[2],
        id_columns=[0],
        time_columns=[5],
        wide=wide,
    )


@app.command("send")
@handles_errors
def send(
    task_name: Annotated[str, typer.Argument(help="A task from `mallops catalog`, e.g. test_task.")],
    args: Annotated[str | None, typer.Option("--args", help="Positional arguments as a JSON array.")] = None,
    kwargs: Annotated[str | None, typer.Option("--kwargs", help="Keyword arguments as a JSON object.")] = None,
    countdown: Annotated[float | None, typer.Option(min=0, help="Start no sooner than this many seconds.")] = None,
    eta: Annotated[str | None, typer.Option(help="Start no sooner than this ISO date-time.")] = None,
    priority: Annotated[int | None, typer.Option(min=0, max=9, help="Message priority, 0-9.")] = None,
    idempotency_key: Annotated[
        str | None, typer.Option(help="Re-sending with the same key and body enqueues nothing new.")
    ] = None,
    wait: Annotated[bool, typer.Option("--wait", help="Wait for the result, with live progress.")] = False,
    timeout: Annotated[
        float | None, typer.Option(min=0.1, help="With --wait: give up after this many seconds.")
    ] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Print only the task id (or the result).")] = False,
    as_json: JsonOption = False,
) -> None:
    """Submit a task by name (was: celery_manage --send-task NAME --args ... --kwargs ...).

    Exit 0 when submitted (with --wait: when it succeeded), 1 when it failed, 2 for an unknown task or
    bad arguments, 3 when the gateway cannot be reached or refuses the token, 4 when refused for now
    (quota of unfinished tasks, rate limit, queue unavailable: try later), 5 when --timeout passed.

    Examples:

      \b
      mallops tasks send test_task --kwargs '{"message": "hello"}'
      mallops tasks send generate_daily_report --kwargs '{"date": "2026-11-14"}'
      mallops tasks send long_running_task --wait --timeout 60
      id=$(mallops tasks send cleanup_cache -q)
    """
    positional = parse_json_option(args, "--args", list)
    keywords = parse_json_option(kwargs, "--kwargs", dict)
    with client() as mallops:
        submitted = mallops.submit(
            task_name,
            positional,
            keywords,
            countdown=countdown,
            eta=eta,
            priority=priority,
            idempotency_key=idempotency_key,
        )
        if not wait:
            if as_json:
                print_json(submitted.raw)
            elif quiet:
                echo(submitted.task_id)
            else:
                echo(
                    f"submitted {submitted.task_name or task_name} as {submitted.task_id}"
                    f" (queue {submitted.queue or '-'}, {submitted.status})"
                )
            return
        if not as_json and not quiet:
            stderr().print(f"submitted {task_name} as {submitted.task_id}", markup=False)
        finished = follow(mallops, submitted.task_id, timeout=timeout, quiet=quiet or as_json)
    show_result(finished, as_json=as_json, quiet=quiet)


@app.command("status")
@handles_errors
def status(
    task_id: Annotated[str, typer.Argument(help="The task id, or a unique prefix of it.")],
    as_json: JsonOption = False,
) -> None:
    """Status, result or error, progress, worker and timestamps of one task (was: --task-status ID).

    Examples:

      \b
      mallops tasks status 3f2a9c1e
      mallops tasks status 3f2a9c1e-0d4b-4c6e-9a51-2b7e8f0c1d2a --json
    """
    with client() as mallops:
        task = mallops.get(mallops.find_task_id(task_id))
    if as_json:
        print_json(task.raw)
        return
    print_fields(_task_fields(task))
    if task.raw.get("traceback"):
        echo("traceback:")
        echo(str(task.raw["traceback"]).rstrip("\n"))


@app.command("revoke")
@handles_errors
def revoke(
    task_id: Annotated[
        str | None, typer.Argument(help="The task id, or a unique prefix of it (or select many with the options).")
    ] = None,
    terminate: Annotated[bool, typer.Option("--terminate", help="Also stop it if it is already running.")] = False,
    status: StatusOption = None,
    task: TaskOption = None,
    since: SinceOption = None,
    until: UntilOption = None,
    where: WhereOption = None,
    limit: LimitOption = 1000,
    dry_run: DryRunOption = False,
    as_json: JsonOption = False,
) -> None:
    """Revoke a task (admin); with --terminate a running task is stopped too (was: --revoke-task ID).

    Without an id, revoke every unfinished task the options select, e.g. `--status SENT --task export_data`.

    Examples:

      \b
      mallops tasks revoke 3f2a9c1e
      mallops tasks revoke 3f2a9c1e --terminate
      mallops tasks revoke --status SENT --task export_data --dry-run
    """
    if task_id is None:
        filters = bulk_filters(status, task, since, until, where, limit, dry_run)
        with client() as mallops:
            answer = mallops.revoke_many(**filters, terminate=terminate)
        show_bulk(answer, "revoked", as_json)
        return
    with client() as mallops:
        task_id = mallops.find_task_id(task_id)
        answer = mallops.revoke(task_id, terminate=terminate)
    if as_json:
        print_json(answer)
        return
    echo(f"revoked {task_id}" + (" (terminating it if running)" if terminate else ""))


@app.command("retry")
@handles_errors
def retry(
    task_id: Annotated[
        str | None, typer.Argument(help="The id of a failed task, or a unique prefix of it (or select many).")
    ] = None,
    wait: Annotated[bool, typer.Option("--wait", help="Wait for the new task's result.")] = False,
    failed: Annotated[bool, typer.Option("--failed", help="Select failed tasks (status FAILURE).")] = False,
    status: StatusOption = None,
    task: TaskOption = None,
    since: SinceOption = None,
    until: UntilOption = None,
    where: WhereOption = None,
    limit: LimitOption = 1000,
    dry_run: DryRunOption = False,
    as_json: JsonOption = False,
) -> None:
    """Re-submit a failed task with its original arguments; prints the new task id.

    Without an id, retry every failed (or revoked) task the options select (admin), e.g.
    `--failed --since 2h --where kwargs.filters.store_id=12`; `--dry-run` only counts them.

    Examples:

      \b
      mallops tasks retry 3f2a9c1e
      mallops tasks retry 3f2a9c1e --wait
      mallops tasks retry --failed --since 2h --where kwargs.filters.store_id=12
    """
    if task_id is None:
        filters = bulk_filters(
            TaskState.FAILURE.value if failed and not status else status, task, since, until, where, limit, dry_run
        )
        with client() as mallops:
            answer = mallops.retry_many(**filters)
        show_bulk(answer, "retried", as_json)
        return
    with client() as mallops:
        task_id = mallops.find_task_id(task_id)
        retried = mallops.retry(task_id)
        if wait:
            finished = follow(mallops, retried.task_id, timeout=None, quiet=as_json)
            show_result(finished, as_json=as_json, quiet=False)
            return
    if as_json:
        print_json(retried.raw)
    else:
        echo(f"retried {task_id} as {retried.task_id}")


@app.command("watch")
@handles_errors
def watch(
    task_id: Annotated[str, typer.Argument(help="The task id, or a unique prefix of it.")],
    timeout: Annotated[float | None, typer.Option(min=0.1, help="Give up after this many seconds.")] = None,
    as_json: JsonOption = False,
) -> None:
    """Follow a task's state and progress until it ends, then show its result.

    Exit 0 when it succeeded, 1 when it failed or was revoked, 5 when --timeout passed.

    Examples:

      \b
      mallops tasks watch 3f2a9c1e
      mallops tasks watch 3f2a9c1e --timeout 600
    """
    with client() as mallops:
        finished = follow(mallops, mallops.find_task_id(task_id), timeout=timeout, quiet=as_json)
    show_result(finished, as_json=as_json, quiet=False)


# -- following a task ----------------------------------------------------------------------------


def follow(mallops: Client, task_id: str, *, timeout: float | None, quiet: bool) -> Task:
    """Wait for a task, showing a live progress bar on a terminal (plain progress lines on stderr when
    stderr is not a terminal). Returns the task; a failed task is returned too (see show_result)."""
    err = stderr()
    if quiet:
        reporter = None
    elif err.is_terminal:
        return _follow_with_bar(mallops, task_id, timeout, err)
    else:

        def reporter(task: Task) -> None:
            line = f"{task.task_id} {task.status}"
            if task.progress is not None:
                line += f" {task.progress.current}/{task.progress.total}"
            err.print(line, markup=False, highlight=False)

    return _wait(mallops, task_id, timeout, reporter)


def _wait(mallops: Client, task_id: str, timeout: float | None, reporter: Any) -> Task:
    try:
        return mallops.wait(task_id, timeout=timeout, on_progress=reporter)
    except TaskFailed as exc:
        return exc.task


class StepsColumn(MofNCompleteColumn):
    """``3/10`` once the task reports progress; blank (not ``0/?``) for a task that reports none."""

    def render(self, task: RichTask) -> Text:
        return Text("") if task.total is None else super().render(task)


def _follow_with_bar(mallops: Client, task_id: str, timeout: float | None, err: Console) -> Task:
    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        StepsColumn(),
        TextColumn("{task.fields[state]}"),
        TimeElapsedColumn(),
        console=err,
        transient=False,
    ) as bar:
        bar_id: TaskID = bar.add_task(task_id[:8], total=None, state=TaskState.PENDING)

        def update(task: Task) -> None:
            if task.progress is not None and task.progress.total:
                bar.update(
                    bar_id,
                    total=task.progress.total,
                    completed=task.progress.current,
                    state=task.status,
                    description=task.task_name or task_id[:8],
                )
            else:
                bar.update(bar_id, state=task.status, description=task.task_name or task_id[:8])
            if task.ready and task.successful:
                current = bar.tasks[0]
                if current.total:
                    bar.update(bar_id, completed=current.total)

        return _wait(mallops, task_id, timeout, update)


def show_result(task: Task, *, as_json: bool, quiet: bool) -> None:
    """Print the finished task; a failed one ends with exit 1 and its error on stderr."""
    if as_json:
        print_json(task.raw)
    elif task.successful:
        result = task.result
        text = result if isinstance(result, str) else json.dumps(result, indent=2, ensure_ascii=False, default=str)
        if quiet:
            echo(text)
        else:
            took = task.raw.get("duration")
            echo(f"{task.status}" + (f" in {took:.2f}s" if isinstance(took, int | float) else ""))
            echo(text)
    if task.failed:
        fail(TaskFailed(task).message, 1)


def _task_fields(task: Task) -> list[tuple[str, Any]]:
    raw = dict(task.raw)
    if task.progress is not None:
        raw["progress"] = f"{task.progress.current}/{task.progress.total}"
    pairs = [(key, raw.get(key)) for key in TASK_FIELDS if key in raw]
    pairs += [(key, value) for key, value in raw.items() if key not in TASK_FIELDS and key != "traceback"]
    return pairs


def register(root: typer.Typer) -> None:
    root.add_typer(app, name="tasks")


__all__ = ["app", "follow", "register", "show_result"]
