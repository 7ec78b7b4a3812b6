"""``mallops workflows run|status|list|retry|revoke``: workflows through the gateway, with a progress bar.

Exit codes as for tasks: 0 ok (with --wait: it succeeded), 1 it failed or was revoked, 2 bad input (unknown
workflow or task, arguments that do not fit, an unknown id prefix), 3 no gateway or not authorised, 4 refused
for now (quota, rate limit, 503), 5 --wait gave up after --timeout (the workflow goes on).
"""

from __future__ import annotations

import time
from typing import Annotated, Any

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from mallops.client import Client
from mallops.output import (
    EXIT_TASK_FAILED,
    EXIT_TIMEOUT,
    JsonlOption,
    JsonOption,
    WideOption,
    client,
    echo,
    fail,
    handles_errors,
    parse_json_option,
    parse_when,
    print_fields,
    print_items,
    print_json,
    print_table,
    stderr,
)
from shared.contracts import WORKFLOW_FINAL_STATES, TaskState

app = typer.Typer(
    help="Run and follow workflows: catalog tasks in order and in parallel, as one submission. A workflow id "
    "may be given by any unique prefix.",
    no_args_is_help=True,
    rich_markup_mode=None,
)

WaitOption = Annotated[bool, typer.Option("--wait", help="Follow it to the end with a progress bar.")]
TimeoutOption = Annotated[float | None, typer.Option(min=0.1, help="With --wait: give up after this many seconds.")]
FIELDS = (
    "workflow_id",
    "name",
    "status",
    "progress",
    "owner",
    "failed_step",
    "reason",
    "retries",
    "created_at",
    "started_at",
    "finished_at",
    "duration",
)


@app.command("run")
@handles_errors
def run(
    name: Annotated[
        str | None, typer.Argument(help="A named workflow: month_end_close, nightly_reports (docs/workflows.md).")
    ] = None,
    kwargs: Annotated[str | None, typer.Option("--kwargs", help="Its arguments as a JSON object.")] = None,
    steps: Annotated[
        str | None, typer.Option("--steps", help="Ad hoc: the steps as a JSON array (instead of a name).")
    ] = None,
    idempotency_key: Annotated[str | None, typer.Option(help="The same key and body start nothing new.")] = None,
    wait: WaitOption = False,
    timeout: TimeoutOption = None,
    as_json: JsonOption = False,
) -> None:
    """Start a named workflow, or an ad-hoc one with --steps.

    Examples:

      \b
      mallops workflows run month_end_close --kwargs '{"year":2026,"month":10}'
      mallops workflows run nightly_reports --wait --timeout 600
      mallops workflows run --steps "$(cat steps.json)" --wait
    """
    if (name is None) == (steps is None):
        fail("give a workflow name or --steps (not both)")
    arguments = parse_json_option(kwargs, "--kwargs", dict)
    definition = parse_json_option(steps, "--steps", list) if steps is not None else None
    with client() as mallops:
        started = mallops.run_workflow(name, arguments, steps=definition, idempotency_key=idempotency_key)
        workflow_id = str(started["workflow_id"])
        if not wait:
            if as_json:
                print_json(started)
            else:
                echo(f"started {started.get('name') or 'workflow'} as {workflow_id} ({_progress(started)} steps)")
            return
        if not as_json:
            stderr().print(f"started {started.get('name') or 'workflow'} as {workflow_id}", markup=False)
        finished = follow(mallops, workflow_id, timeout=timeout, quiet=as_json)
    show_outcome(finished, as_json=as_json)


@app.command("status")
@handles_errors
def status(
    workflow_id: Annotated[str, typer.Argument(help="The workflow id, or a unique prefix of it.")],
    wide: WideOption = False,
    as_json: JsonOption = False,
) -> None:
    """A workflow: its status, progress, where and why it failed, and every step with its state and task.

    Examples:

      \b
      mallops workflows status 3f2a9c1e
      mallops workflows status 3f2a9c1e --json
    """
    with client() as mallops:
        found = mallops.workflow(mallops.find_workflow_id(workflow_id))
    if as_json:
        print_json(found)
        return
    print_fields([(key, _progress(found) if key == "progress" else found.get(key)) for key in FIELDS])
    rows = [
        [step["name"], step["task_name"], step["state"], step.get("task_id"), step.get("attempts"), step.get("error")]
        for step in found.get("steps", [])
    ]
    print_table(
        ["step", "task", "state", "task_id", "attempts", "error"],
        rows,
        status_columns=[2],
        id_columns=[3],
        wide=wide,
    )


@app.command("list")
@handles_errors
def list_workflows(
    status: Annotated[str | None, typer.Option(help="Only these states, e.g. FAILURE or STARTED,PENDING.")] = None,
    name: Annotated[str | None, typer.Option("--name", help="Only this named workflow.")] = None,
    since: Annotated[str | None, typer.Option(help="Submitted at or after: an age like 2h, 7d, or a date.")] = None,
    limit: Annotated[int, typer.Option(min=1, max=500, help="At most this many.")] = 50,
    wide: WideOption = False,
    as_json: JsonOption = False,
    as_jsonl: JsonlOption = False,
) -> None:
    """Workflows, newest first (your own; every one with a role that reads every task).

    Examples:

      \b
      mallops workflows list
      mallops workflows list --status FAILURE --name month_end_close --since 30d
    """
    with client() as mallops:
        page = mallops.workflows(
            status=status.upper() if status else None, name=name, since=parse_when(since, "--since"), limit=limit
        )
    items = page.get("results", [])
    if print_items(items, as_json=as_json, as_jsonl=as_jsonl, document=page):
        return
    rows = [
        [
            w["workflow_id"],
            w.get("name") or "(ad hoc)",
            w["status"],
            _progress(w),
            w.get("failed_step"),
            w["created_at"],
        ]
        for w in items
    ]
    print_table(
        ["workflow_id", "name", "status", "steps", "failed at", "created"],
        rows,
        title=_listing_title(page, len(rows)),
        status_columns=[2],
        id_columns=[0],
        time_columns=[5],
        wide=wide,
    )


@app.command("retry")
@handles_errors
def retry(
    workflow_id: Annotated[str, typer.Argument(help="A failed or revoked workflow's id, or a unique prefix.")],
    wait: WaitOption = False,
    timeout: TimeoutOption = None,
    as_json: JsonOption = False,
) -> None:
    """Run a failed (or revoked) workflow again from the step that failed; succeeded steps are kept.

    Examples:

      \b
      mallops workflows retry 3f2a9c1e --wait
    """
    with client() as mallops:
        workflow_id = mallops.find_workflow_id(workflow_id)
        retried = mallops.retry_workflow(workflow_id)
        if not wait:
            if as_json:
                print_json(retried)
            else:
                echo(f"retrying {workflow_id} from its failed step ({_progress(retried)} steps done)")
            return
        finished = follow(mallops, workflow_id, timeout=timeout, quiet=as_json)
    show_outcome(finished, as_json=as_json)


@app.command("revoke")
@handles_errors
def revoke(
    workflow_id: Annotated[str, typer.Argument(help="The workflow id, or a unique prefix of it.")],
    as_json: JsonOption = False,
) -> None:
    """Revoke a workflow: its steps not yet run never run (a running step finishes).

    Examples:

      \b
      mallops workflows revoke 3f2a9c1e
    """
    with client() as mallops:
        workflow_id = mallops.find_workflow_id(workflow_id)
        answer = mallops.revoke_workflow(workflow_id)
    if as_json:
        print_json(answer)
    else:
        echo(f"revoked {workflow_id} ({answer['status']}, {_progress(answer)} steps done)")


# -- following -----------------------------------------------------------------------------------


def _listing_title(page: dict[str, Any], shown: int) -> str:
    """``3 workflow(s)``, or ``50 of 120 workflow(s)`` when more match than one page holds."""
    count, total = int(page.get("count", shown)), int(page.get("total") or 0)
    return f"{count} of {total} workflow(s)" if total > count else f"{count} workflow(s)"


def _progress(workflow: dict[str, Any]) -> str:
    progress = workflow.get("progress") or {}
    return f"{progress.get('done', 0)}/{progress.get('total', 0)}"


def _running(workflow: dict[str, Any]) -> str:
    names = [s["name"] for s in workflow.get("steps", []) if s["state"] in (TaskState.SENT, TaskState.STARTED)]
    return ", ".join(names[:3]) + ("..." if len(names) > 3 else "")


def follow(mallops: Client, workflow_id: str, *, timeout: float | None, quiet: bool) -> dict[str, Any]:
    """Poll until the workflow is finished (a progress bar on a terminal, a line per change when not);
    exit 5 after ``timeout`` seconds."""
    deadline = None if timeout is None else time.monotonic() + timeout
    err = stderr()
    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[state]} {task.fields[running]}"),
        TimeElapsedColumn(),
        console=err,
        disable=quiet or not err.is_terminal,
    ) as bar:
        bar_id = bar.add_task(workflow_id[:8], total=None, state=TaskState.PENDING, running="")
        last: tuple[str, str] | None = None
        while True:
            found = mallops.workflow(workflow_id)
            progress = found.get("progress") or {}
            description = str(found.get("name") or workflow_id[:8])
            running = _running(found)
            bar.update(bar_id, total=progress.get("total"), completed=progress.get("done", 0))
            bar.update(bar_id, description=description, state=found["status"], running=running)
            seen = (found["status"], _progress(found))
            if seen != last and not quiet and not err.is_terminal:
                err.print(f"{workflow_id} {seen[0]} {seen[1]} {running}".rstrip(), markup=False, highlight=False)
            last = seen
            if found["status"] in WORKFLOW_FINAL_STATES:
                return found
            if deadline is not None and time.monotonic() >= deadline:
                fail(f"workflow {workflow_id} is still {found['status']} after {timeout:g}s", EXIT_TIMEOUT)
            time.sleep(0.5 if deadline is None else max(0.0, min(0.5, deadline - time.monotonic())))


def show_outcome(workflow: dict[str, Any], *, as_json: bool) -> None:
    """Print the finished workflow; a failed or revoked one ends with exit 1 and the reason on stderr."""
    if as_json:
        print_json(workflow)
    elif workflow["status"] == TaskState.SUCCESS:
        took = workflow.get("duration")
        echo(f"{TaskState.SUCCESS} in {took:.1f}s" if isinstance(took, int | float) else TaskState.SUCCESS)
    if workflow["status"] != TaskState.SUCCESS:
        where = f" at step {workflow['failed_step']!r}" if workflow.get("failed_step") else ""
        fail(
            f"workflow {workflow['workflow_id']} {workflow['status']}{where}: {workflow.get('reason')}",
            EXIT_TASK_FAILED,
        )


def register(root: typer.Typer) -> None:
    root.add_typer(app, name="workflows")


__all__ = ["app", "follow", "register", "show_outcome"]
