"""Selecting tasks by the history's filters, for `mallops history` and the bulk `tasks retry|revoke`."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from mallops.output import echo, fail, parse_when, print_json, print_table

StatusOption = Annotated[
    str | None, typer.Option("--status", help="One state or several, comma-separated: FAILURE,REVOKED.")
]
TaskOption = Annotated[str | None, typer.Option("--task", help="Only this task name.")]
SinceOption = Annotated[str | None, typer.Option(help="Sent at or after: an age like 2h, 7d, or an ISO date-time.")]
UntilOption = Annotated[str | None, typer.Option(help="Sent before this (same forms as --since).")]
WhereOption = Annotated[
    list[str] | None,
    typer.Option(
        "--where",
        help="An argument value, kwargs.<field>=<value> (nested with dots: kwargs.filters.store_id=12); repeatable.",
    ),
]
LimitOption = Annotated[int, typer.Option(min=1, max=1000, help="At most this many tasks per run.")]
DryRunOption = Annotated[bool, typer.Option("--dry-run", help="Only count the tasks that match.")]


def parse_where(items: list[str] | None) -> dict[str, str]:
    """``["kwargs.filters.store_id=12"]`` -> ``{"kwargs.filters.store_id": "12"}``, or exit 2."""
    found: dict[str, str] = {}
    for item in items or []:
        name, sep, value = item.partition("=")
        if not sep or not name.startswith("kwargs.") or len(name) <= len("kwargs."):
            fail(f"--where takes kwargs.<field>=<value> (e.g. kwargs.filters.store_id=12), not {item!r}")
        found[name.strip()] = value
    return found


def bulk_filters(
    status: str | None,
    task: str | None,
    since: str | None,
    until: str | None,
    where: list[str] | None,
    limit: int,
    dry_run: bool,
) -> dict[str, Any]:
    """The body of a bulk action; exit 2 when nothing selects the tasks (an id or a filter is needed)."""
    arguments = parse_where(where)
    if not (status or task or since or until or arguments):
        fail("give a task id, or select tasks with --failed, --status, --task, --since, --until or --where")
    return {
        "status": status,
        "task_name": task,
        "since": parse_when(since, "--since"),
        "until": parse_when(until, "--until"),
        "arguments": arguments or None,
        "limit": limit,
        "dry_run": dry_run or None,
    }


def show_bulk(answer: dict[str, Any], verb: str, as_json: bool) -> None:
    if as_json:
        print_json(answer)
        return
    if answer.get("dry_run"):
        echo(f"{answer.get('matched', 0)} task(s) match; nothing {verb} (--dry-run)")
        return
    rows = [[item.get("task_id"), item.get("new_task_id", "")] for item in answer.get("results", [])]
    if rows:
        print_table(["task_id", "new_task_id"] if verb == "retried" else ["task_id", ""], rows)
    for item in answer.get("skipped", []):
        echo(f"skipped {item.get('task_id')}: {item.get('reason')}")
    echo(f"{verb} {answer.get('count', 0)} of {answer.get('matched', 0)} matching task(s)")
