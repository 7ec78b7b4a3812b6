"""``mallops dead-letters list|show|replay|drop``: messages the workers could not run (admin)."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from mallops.commands.selection import SinceOption, UntilOption
from mallops.output import (
    JsonOption,
    client,
    echo,
    fail,
    handles_errors,
    parse_when,
    print_fields,
    print_json,
    print_table,
)

app = typer.Typer(
    help="Inspect, replay and drop dead letters (messages the workers could not run).", no_args_is_help=True
)

TaskFilter = Annotated[str | None, typer.Option("--task", help="Only letters of this task name.")]
QueueFilter = Annotated[str | None, typer.Option("--queue", help="Only letters from this queue.")]
KindFilter = Annotated[
    str | None, typer.Option("--exception", help="Only this kind: PoisonMessage, NotRegistered, InvalidTaskHeaders ...")
]
Ids = Annotated[list[str] | None, typer.Argument(help="Dead-letter ids (or select with the options).")]
DryRun = Annotated[bool, typer.Option("--dry-run", help="Only count the letters that match.")]


def _filters(
    task: str | None, queue: str | None, exception: str | None, since: str | None, until: str | None
) -> dict[str, Any]:
    return {
        "task": task,
        "queue": queue,
        "exception": exception,
        "since": parse_when(since, "--since"),
        "until": parse_when(until, "--until"),
    }


@app.command("list")
@handles_errors
def list_letters(
    task: TaskFilter = None,
    queue: QueueFilter = None,
    exception: KindFilter = None,
    since: SinceOption = None,
    until: UntilOption = None,
    limit: Annotated[int, typer.Option(min=1, max=500, help="At most this many.")] = 50,
    offset: Annotated[int, typer.Option(min=0, help="Skip this many (the next page).")] = 0,
    as_json: JsonOption = False,
) -> None:
    """Dead letters, newest first: id, when, kind, task, queue, reason.

    Examples:

      \b
      mallops dead-letters list
      mallops dead-letters list --exception PoisonMessage --since 1d
    """
    with client() as mallops:
        page = mallops.dead_letters(**_filters(task, queue, exception, since, until), limit=limit, offset=offset)
    if as_json:
        print_json(page)
        return
    rows = [
        [x.get("id"), x.get("at"), x.get("exception"), x.get("task"), x.get("queue"), x.get("reason")]
        for x in page.get("results", [])
    ]
    print_table(["id", "at", "kind", "task", "queue", "reason"], rows, title=f"{page.get('count', 0)} dead letter(s)")
    if page.get("next_offset") is not None:
        echo(f"more: mallops dead-letters list --offset {page['next_offset']}")


@app.command("show")
@handles_errors
def show(letter_id: Annotated[str, typer.Argument(help="The dead letter's id.")], as_json: JsonOption = False) -> None:
    """One dead letter with its whole message (headers and body).

    Examples:

      \b
      mallops dead-letters show 9c1e0d2b4f6a48e39d8e7c6b5a4f3e2d
    """
    with client() as mallops:
        letter = mallops.dead_letter(letter_id)
    if as_json:
        print_json(letter)
        return
    print_fields(list(letter.items()))


@app.command("replay")
@handles_errors
def replay(
    ids: Ids = None,
    force: Annotated[
        bool, typer.Option("--force", help="Also replay poison messages (they killed their workers).")
    ] = False,
    task: TaskFilter = None,
    queue: QueueFilter = None,
    exception: KindFilter = None,
    since: SinceOption = None,
    until: UntilOption = None,
    dry_run: DryRun = False,
    as_json: JsonOption = False,
) -> None:
    """Put dead letters back onto their queues: by id, or every one the options select.

    Examples:

      \b
      mallops dead-letters replay 9c1e0d2b4f6a48e39d8e7c6b5a4f3e2d
      mallops dead-letters replay --task export_data --dry-run
      mallops dead-letters replay --exception PoisonMessage --force
    """
    filters = _filters(task, queue, exception, since, until)
    with client() as mallops:
        if ids and not dry_run and not any(filters.values()):
            answers = [mallops.replay_dead_letter(letter_id, force=force) for letter_id in ids]
            answer: dict[str, Any] = {"dry_run": False, "count": len(answers), "results": answers, "skipped": []}
        elif ids or any(filters.values()):
            answer = mallops.replay_dead_letters(
                **filters, ids=ids or None, force=force or None, dry_run=dry_run or None
            )
        else:
            fail("give dead-letter ids, or select them with --task, --queue, --exception, --since or --until")
    if as_json:
        print_json(answer)
        return
    if answer.get("dry_run"):
        echo(f"{answer.get('matched', 0)} dead letter(s) match; nothing replayed (--dry-run)")
        return
    for item in answer.get("results", []):
        echo(
            f"replayed {item['id']} onto {item['queue']}"
            + (f" as task {item['task_id']}" if item.get("task_id") else "")
        )
    for item in answer.get("skipped", []):
        echo(f"skipped {item.get('id')}: {item.get('reason')}")


@app.command("drop")
@handles_errors
def drop(
    ids: Ids = None,
    task: TaskFilter = None,
    queue: QueueFilter = None,
    exception: KindFilter = None,
    since: SinceOption = None,
    until: UntilOption = None,
    everything: Annotated[bool, typer.Option("--all", help="Drop every dead letter.")] = False,
    dry_run: DryRun = False,
    as_json: JsonOption = False,
) -> None:
    """Forget dead letters for good: by id, or every one the options select (--all for all).

    Examples:

      \b
      mallops dead-letters drop 9c1e0d2b4f6a48e39d8e7c6b5a4f3e2d
      mallops dead-letters drop --queue default --dry-run
    """
    filters = _filters(task, queue, exception, since, until)
    with client() as mallops:
        if ids:
            for letter_id in ids:
                mallops.drop_dead_letter(letter_id)
            answer: dict[str, Any] = {"dry_run": False, "count": len(ids), "results": [{"id": i} for i in ids]}
        elif any(filters.values()) or everything:
            answer = mallops.drop_dead_letters(**filters, all=everything or None, dry_run=dry_run or None)
        else:
            fail("give dead-letter ids, or select them with --task, --queue, --exception, --since, --until or --all")
    if as_json:
        print_json(answer)
    elif answer.get("dry_run"):
        echo(f"{answer.get('matched', 0)} dead letter(s) match; nothing dropped (--dry-run)")
    else:
        echo(f"dropped {answer.get('count', 0)} dead letter(s)")


def register(root: typer.Typer) -> None:
    root.add_typer(app, name="dead-letters")
