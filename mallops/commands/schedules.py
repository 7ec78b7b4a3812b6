"""``mallops schedules list|enable|disable|set``: the beat entries, changed at runtime (admin)."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from mallops.commands.platform import _schedule_text
from mallops.output import (
    JsonlOption,
    JsonOption,
    WideOption,
    client,
    echo,
    fail,
    handles_errors,
    print_items,
    print_json,
    print_table,
)

app = typer.Typer(
    help="List, enable, disable and re-time the periodic (beat) tasks.", no_args_is_help=True, rich_markup_mode=None
)

CRON_FIELDS = ("minute", "hour", "day_of_month", "month_of_year", "day_of_week")


@app.command("list")
@handles_errors
def list_schedules(wide: WideOption = False, as_json: JsonOption = False, as_jsonl: JsonlOption = False) -> None:
    """Every beat entry with its schedule, last and next run (was: Django admin, django_celery_beat).

    Examples:

      \b
      mallops schedules list
      mallops schedules list --wide
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
            s.get("last_run_at"),
            s.get("next_run_at"),
        ]
        for s in items
    ]
    columns = ["name", "task", "state", "schedule", "last run", "next run"]
    if not wide and all(row[0] == row[1] for row in rows):  # each entry is named after its task
        columns, rows = [columns[0], *columns[2:]], [[row[0], *row[2:]] for row in rows]
    print_table(
        columns,
        rows,
        status_columns=[columns.index("state")],
        time_columns=[len(columns) - 2, len(columns) - 1],
        wide=wide,
    )


@app.command("enable")
@handles_errors
def enable(
    name: Annotated[str, typer.Argument(help="The entry name (a catalog task name).")], as_json: JsonOption = False
) -> None:
    """Let beat run this entry again.

    Examples:

      \b
      mallops schedules enable check_pending_bills
    """
    _update(name, as_json, enabled=True)


@app.command("disable")
@handles_errors
def disable(
    name: Annotated[str, typer.Argument(help="The entry name (a catalog task name).")], as_json: JsonOption = False
) -> None:
    """Stop beat from running this entry (it stays listed, disabled).

    Examples:

      \b
      mallops schedules disable check_pending_bills
    """
    _update(name, as_json, enabled=False)


@app.command("set")
@handles_errors
def set_schedule(
    name: Annotated[str, typer.Argument(help="The entry name (a catalog task name).")],
    every: Annotated[float | None, typer.Option(min=1, help="Run every this many seconds.")] = None,
    cron: Annotated[
        str | None,
        typer.Option(
            help="A crontab 'minute hour day-of-month month day-of-week' in the platform's timezone, "
            "e.g. '0 10 * * 1' for Mondays at 10:00."
        ),
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Re-time an entry: --every SECONDS or --cron 'm h dom mon dow'.

    Examples:

      \b
      mallops schedules set process_access_logs --every 60
      mallops schedules set generate_weekly_report --cron '0 10 * * 1'
    """
    if (every is None) == (cron is None):
        fail("give exactly one of --every SECONDS or --cron 'm h dom mon dow'")
    schedule: dict[str, Any]
    if every is not None:
        schedule = {"every": every}
    else:
        parts = (cron or "").split()
        if len(parts) != 5:
            fail(f"--cron needs 5 fields 'minute hour day-of-month month day-of-week', not {cron!r}")
        schedule = dict(zip(CRON_FIELDS, parts, strict=True))
    _update(name, as_json, schedule=schedule)


def _update(name: str, as_json: bool, *, enabled: bool | None = None, schedule: dict[str, Any] | None = None) -> None:
    with client() as mallops:
        entry = mallops.update_schedule(name, enabled=enabled, schedule=schedule)
    if as_json:
        print_json(entry)
        return
    state = "enabled" if entry.get("enabled") else "disabled"
    timing = entry.get("schedule_text") or _schedule_text(entry.get("schedule")) or "-"
    echo(f"{entry.get('name', name)}: {state}, {timing} (next run {entry.get('next_run_at') or '-'})")


def register(root: typer.Typer) -> None:
    root.add_typer(app, name="schedules")
