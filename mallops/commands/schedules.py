"""``mallops schedules list|add|set|rm|run|enable|disable``: the beat entries, changed at runtime (admin).

Entries have names of their own and run any catalog task with arguments; crontabs are read in the
platform's timezone (``MALLOPS_TIMEZONE``). Reading needs any token, changing an admin token.
"""

from __future__ import annotations

from typing import Annotated, Any

import typer

from mallops.client import API
from mallops.commands.platform import _schedule_text
from mallops.output import (
    JsonOption,
    client,
    echo,
    fail,
    handles_errors,
    parse_json_option,
    print_json,
    print_table,
)

app = typer.Typer(help="List, add, change, run and delete the periodic (beat) tasks.", no_args_is_help=True)

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
def list_schedules(as_json: JsonOption = False) -> None:
    """Every beat entry with its schedule, arguments, last and next run (next run in the mall's time)."""
    with client() as mallops:
        items = mallops.schedules()
    if as_json:
        print_json(items)
        return
    rows = [
        [
            s.get("name"),
            s.get("task_name"),
            "enabled" if s.get("enabled") else "disabled",
            s.get("schedule_text") or _schedule_text(s.get("schedule")),
            _arguments(s),
            s.get("last_run_at") or "never",
            s.get("next_run_local") or s.get("next_run_at"),
        ]
        for s in items
    ]
    print_table(
        ["name", "task", "state", "schedule", "arguments", "last run (UTC)", "next run (local)"],
        rows,
        status_columns=[2],
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
    """Add an entry: NAME --task TASK (--every SECONDS | --cron 'm h dom mon dow') [--kwargs JSON]."""
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
    """Change an entry: re-time it (--every or --cron), replace its --args/--kwargs or its --description."""
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
    """Let beat run this entry again (counted from now: a missed run is not made up)."""
    _patch(name, {"enabled": True}, as_json)


@app.command("disable")
@handles_errors
def disable(name: Name, as_json: JsonOption = False) -> None:
    """Stop beat from running this entry (it stays listed, disabled)."""
    _patch(name, {"enabled": False}, as_json)


@app.command("rm")
@handles_errors
def remove(name: Name) -> None:
    """Delete an entry. A deleted default stays deleted (also across beat restarts) until added again."""
    with client() as mallops:
        mallops.request("DELETE", f"{API}/schedules/{name}")
    echo(f"{name}: deleted")


@app.command("run")
@handles_errors
def run(name: Name, as_json: JsonOption = False) -> None:
    """Run an entry's task with its arguments now (prints the task id; the schedule is unchanged)."""
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
    parts = [repr(a) for a in entry.get("args") or []]
    parts += [f"{k}={v!r}" for k, v in (entry.get("kwargs") or {}).items()]
    return ", ".join(parts) or "-"


def _show(entry: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print_json(entry)
        return
    state = "enabled" if entry.get("enabled") else "disabled"
    timing = entry.get("schedule_text") or _schedule_text(entry.get("schedule")) or "-"
    when = entry.get("next_run_local") or entry.get("next_run_at") or "-"
    echo(f"{entry.get('name')}: {entry.get('task_name')}({_arguments(entry)}), {state}, {timing} (next run {when})")


def register(root: typer.Typer) -> None:
    root.add_typer(app, name="schedules")
