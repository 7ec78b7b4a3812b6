"""``mallops schedules list|add|set|rm|run|enable|disable``: the beat entries, changed at runtime (admin).

Entries have names of their own and run any catalog task with arguments; crontabs are read in the
platform's timezone (``MALLOPS_TIMEZONE``). Reading needs any token, changing an admin token.
"""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer

from mallops.client import API
from mallops.commands.platform import _schedule_text
from mallops.output import (
    JsonlOption,
    JsonOption,
    WideOption,
    client,
    echo,
    fail,
    handles_errors,
    parse_json_option,
    print_items,
    print_json,
    print_table,
)

app = typer.Typer(
    help="List, add, change, run and delete the periodic (beat) tasks.", no_args_is_help=True, rich_markup_mode=None
)

CRON_FIELDS = ("minute", "hour", "day_of_month", "month_of_year", "day_of_week")

Name = Annotated[str, typer.Argument(help="The entry's name (e.g. backup_database, or one you added).")]
Every = Annotated[float | None, typer.Option(min=1, help="Run every this many seconds.")]
Cron = Annotated[
    str | None,
    typer.Option(
        help="A crontab 'minute hour day-of-month month day-of-week' in the platform's timezone, "
        "e.g. '0 10 * * 1' for Mondays at 10:00."
    ),
]
Args = Annotated[str | None, typer.Option("--args", help="Positional arguments as a JSON array.")]
Kwargs = Annotated[str | None, typer.Option("--kwargs", help="Keyword arguments as a JSON object.")]
Description = Annotated[str | None, typer.Option(help="What the entry is for (default: the task's description).")]


@app.command("list")
@handles_errors
def list_schedules(wide: WideOption = False, as_json: JsonOption = False, as_jsonl: JsonlOption = False) -> None:
    """Every beat entry with its schedule, arguments, last and next run (was: Django admin, django_celery_beat).

    Examples:

      \b
      mallops schedules list
      mallops schedules list --wide
      mallops schedules list --jsonl
    """
    with client() as mallops:
        items = mallops.schedules()
    if print_items(items, as_json=as_json, as_jsonl=as_jsonl):
        return
    rows = [
        [
            s.get("name"),
            s.get("task_name"),
            "enabled" if s.get("enabled") else "disabled",
            s.get("schedule_text") or _schedule_text(s.get("schedule")),
            _arguments(s),
            s.get("last_run_at") or "never",
            s.get("next_run_at"),
        ]
        for s in items
    ]
    columns = ["name", "task", "state", "schedule", "arguments", "last run", "next run"]
    if not wide:  # 80 columns: the task only where the entry is not named after it, no arguments
        rows = [[row[0] if row[0] == row[1] else f"{row[0]} ({row[1]})", *row[2:4], *row[5:]] for row in rows]
        columns = ["name", "state", "schedule", "last run", "next run"]
    print_table(
        columns,
        rows,
        status_columns=[columns.index("state")],
        time_columns=[len(columns) - 2, len(columns) - 1],
        wide=wide,
    )


@app.command("add")
@handles_errors
def add(
    name: Name,
    task: Annotated[str, typer.Option("--task", help="The catalog task to run (mallops tasks catalog).")],
    every: Every = None,
    cron: Cron = None,
    args: Args = None,
    kwargs: Kwargs = None,
    description: Description = None,
    disabled: Annotated[bool, typer.Option("--disabled", help="Create it switched off.")] = False,
    as_json: JsonOption = False,
) -> None:
    """Add an entry: NAME --task TASK (--every SECONDS | --cron 'm h dom mon dow') [--kwargs JSON].

    Examples:

      \b
      mallops schedules add bills12 --task export_data --cron '0 9 * * 1' \\
        --kwargs '{"dataset": "bills", "filters": {"store_id": 12}}'
      mallops schedules add ping --task test_task --every 300 --disabled
    """
    body: dict[str, Any] = {
        "name": name,
        "task_name": task,
        "schedule": _timing(every, cron),
        "args": parse_json_option(args, "--args", list) or [],
        "kwargs": parse_json_option(kwargs, "--kwargs", dict) or {},
        "enabled": not disabled,
    }
    if description is not None:
        body["description"] = description
    with client() as mallops:
        entry = mallops.request("POST", f"{API}/schedules", json=body)
    _show(entry, as_json)


@app.command("set")
@handles_errors
def set_schedule(
    name: Name,
    every: Every = None,
    cron: Cron = None,
    args: Args = None,
    kwargs: Kwargs = None,
    description: Description = None,
    as_json: JsonOption = False,
) -> None:
    """Change an entry: re-time it (--every or --cron), replace its --args/--kwargs or its --description.

    Examples:

      \b
      mallops schedules set process_access_logs --every 60
      mallops schedules set generate_weekly_report --cron '0 10 * * 1'
    """
    body: dict[str, Any] = {}
    if every is not None or cron is not None:
        body["schedule"] = _timing(every, cron)
    if args is not None:
        body["args"] = parse_json_option(args, "--args", list)
    if kwargs is not None:
        body["kwargs"] = parse_json_option(kwargs, "--kwargs", dict)
    if description is not None:
        body["description"] = description
    if not body:
        fail("give exactly one of --every SECONDS or --cron 'm h dom mon dow', or --args, --kwargs, --description")
    _patch(name, body, as_json)


@app.command("enable")
@handles_errors
def enable(name: Name, as_json: JsonOption = False) -> None:
    """Let beat run this entry again (counted from now: a missed run is not made up).

    Examples:

      \b
      mallops schedules enable check_pending_bills
    """
    _patch(name, {"enabled": True}, as_json)


@app.command("disable")
@handles_errors
def disable(name: Name, as_json: JsonOption = False) -> None:
    """Stop beat from running this entry (it stays listed, disabled).

    Examples:

      \b
      mallops schedules disable check_pending_bills
    """
    _patch(name, {"enabled": False}, as_json)


@app.command("rm")
@handles_errors
def remove(name: Name) -> None:
    """Delete an entry. A deleted default stays deleted (also across beat restarts) until added again.

    Examples:

      \b
      mallops schedules rm bills12
    """
    with client() as mallops:
        mallops.request("DELETE", f"{API}/schedules/{name}")
    echo(f"{name}: deleted")


@app.command("run")
@handles_errors
def run(name: Name, as_json: JsonOption = False) -> None:
    """Run an entry's task with its arguments now (prints the task id; the schedule is unchanged).

    Examples:

      \b
      mallops schedules run backup_database
    """
    with client() as mallops:
        accepted = mallops.request("POST", f"{API}/schedules/{name}/run")
    if as_json:
        print_json(accepted)
        return
    echo(str(accepted.get("task_id")))


def _timing(every: float | None, cron: str | None) -> dict[str, Any]:
    if (every is None) == (cron is None):
        fail("give exactly one of --every SECONDS or --cron 'm h dom mon dow'")
    if every is not None:
        return {"every": every}
    parts = (cron or "").split()
    if len(parts) != 5:
        fail(f"--cron needs 5 fields 'minute hour day-of-month month day-of-week', not {cron!r}")
    return dict(zip(CRON_FIELDS, parts, strict=True))


def _patch(name: str, body: dict[str, Any], as_json: bool) -> None:
    with client() as mallops:
        entry = mallops.request("PATCH", f"{API}/schedules/{name}", json=body)
    _show(entry, as_json)


def _arguments(entry: dict[str, Any]) -> str:
    """The arguments as JSON (``args`` only when there are any)."""
    args, kwargs = entry.get("args") or [], entry.get("kwargs") or {}
    if not args and not kwargs:
        return "-"
    shown: Any = {"args": args, "kwargs": kwargs} if args else kwargs
    return json.dumps(shown, ensure_ascii=False, separators=(",", ":"))


def _show(entry: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print_json(entry)
        return
    state = "enabled" if entry.get("enabled") else "disabled"
    timing = entry.get("schedule_text") or _schedule_text(entry.get("schedule")) or "-"
    when = entry.get("next_run_local") or entry.get("next_run_at") or "-"
    echo(f"{entry.get('name')}: {entry.get('task_name')} {_arguments(entry)}, {state}, {timing} (next run {when})")


def register(root: typer.Typer) -> None:
    root.add_typer(app, name="schedules")
