"""``mallops workers|queues|stats|history|ping|catalog``: what the platform is doing, through the gateway."""

from __future__ import annotations

import time
from typing import Annotated, Any

import typer

from mallops.client import TaskFailed, WaitTimeout
from mallops.commands.selection import SinceOption, StatusOption, UntilOption, WhereOption, parse_where
from mallops.output import (
    JsonlOption,
    JsonOption,
    WideOption,
    client,
    echo,
    fail,
    handles_errors,
    parse_when,
    print_items,
    print_json,
    print_table,
    stderr,
    stdout,
)


@handles_errors
def workers(wide: WideOption = False, as_json: JsonOption = False, as_jsonl: JsonlOption = False) -> None:
    """Workers online and offline, their queues and active tasks (admin; was: celery_manage --worker-stats).

    Examples:

      \b
      mallops workers
      mallops workers --json
    """
    with client() as mallops:
        items = mallops.workers()
    if print_items(items, as_json=as_json, as_jsonl=as_jsonl):
        return
    rows = [
        [
            w.get("hostname"),
            w.get("status"),
            w.get("queues"),
            w.get("active"),
            w.get("processed"),
            w.get("last_heartbeat"),
        ]
        for w in items
    ]
    online = sum(1 for w in items if w.get("status") == "online")
    print_table(
        ["worker", "status", "queues", "active", "processed", "last heartbeat"],
        rows,
        title=f"{online} of {len(items)} worker(s) online",
        status_columns=[1],
        time_columns=[5],
        wide=wide,
    )


@handles_errors
def queues(as_json: JsonOption = False, as_jsonl: JsonlOption = False) -> None:
    """Each queue's pending messages and consumers (admin; was: celery_manage --queue-stats).

    Examples:

      \b
      mallops queues
      mallops queues --jsonl
    """
    with client() as mallops:
        data = mallops.queues()
    if print_items(
        [{"queue": name, **q} for name, q in data.items()], as_json=as_json, as_jsonl=as_jsonl, document=data
    ):
        return
    rows = [[name, q.get("pending"), q.get("consumers")] for name, q in data.items()]
    print_table(["queue", "pending", "consumers"], rows)


@handles_errors
def stats(
    since: Annotated[str, typer.Option(help="Window start: an age like 30m, 24h, 7d, or an ISO date-time.")] = "24h",
    until: Annotated[str | None, typer.Option(help="Window end (default: now).")] = None,
    task: Annotated[str | None, typer.Option("--task", help="Only this task (short or Celery name).")] = None,
    wide: WideOption = False,
    as_json: JsonOption = False,
    as_jsonl: JsonlOption = False,
) -> None:
    """Counts by state, success rate, throughput and runtime percentiles (was: celery_manage --task-stats).

    Examples:

      \b
      mallops stats
      mallops stats --since 7d --task generate_daily_report
      mallops stats --since 2026-11-14 --until 2026-11-15 --json
    """
    with client() as mallops:
        data = mallops.stats(since=parse_when(since, "--since"), until=parse_when(until, "--until"), task_name=task)
    blocks: dict[str, Any] = dict(data.get("tasks") or {})
    if print_items(
        [{"task_name": name, **block} for name, block in sorted(blocks.items())],
        as_json=as_json,
        as_jsonl=as_jsonl,
        document=data,
    ):
        return
    rows = [_stats_row(name, block) for name, block in sorted(blocks.items())]
    if isinstance(data.get("overall"), dict):
        rows.append(_stats_row("(all)", data["overall"]))
    columns = ["task", "total", "ok", "failed", "success", "per min", "p50 s", "p95 s", "p99 s", "wait p95 s"]
    if not wide:  # 80 columns: the percentiles people look at first
        columns = ["task", "total", "failed", "success", "p50 s", "p95 s"]
        rows = [[r[0], r[1], r[3], r[4], r[6], r[7]] for r in rows]
    print_table(
        columns, rows, title=f"tasks sent {data.get('since', since)} .. {data.get('until') or 'now'}", wide=wide
    )


def _stats_row(name: str, block: dict[str, Any]) -> list[Any]:
    rate = block.get("success_rate")
    runtime = block.get("runtime") or {}
    wait = block.get("queue_wait") or {}
    return [
        name,
        block.get("total"),
        block.get("succeeded"),
        block.get("failed"),
        f"{rate * 100:.1f}%" if isinstance(rate, int | float) else "-",
        _round(block.get("throughput_per_minute")),
        _round(runtime.get("p50")),
        _round(runtime.get("p95")),
        _round(runtime.get("p99")),
        _round(wait.get("p95")),
    ]


def _round(value: Any) -> Any:
    return round(value, 3) if isinstance(value, float) else value


@handles_errors
def history(
    task: Annotated[str | None, typer.Option("--task", help="Only this task name.")] = None,
    status: StatusOption = None,
    since: SinceOption = None,
    until: UntilOption = None,
    where: WhereOption = None,
    limit: Annotated[int, typer.Option(min=1, max=500, help="At most this many rows.")] = 50,
    cursor: Annotated[str | None, typer.Option(help="Continue after a previous page (its next_cursor).")] = None,
    wide: WideOption = False,
    as_json: JsonOption = False,
    as_jsonl: JsonlOption = False,
) -> None:
    """The durable task history, newest first (was: celery_manage --history).

    Examples:

      \b
      mallops history --since 2h
      mallops history --task send_bill_reminders --status FAILURE --wide
      mallops history --since 1d --jsonl > history.jsonl
    """
    with client() as mallops:
        page = mallops.history(
            task_name=task,
            status=status,
            since=parse_when(since, "--since"),
            until=parse_when(until, "--until"),
            cursor=cursor,
            limit=limit,
            arguments=parse_where(where),
        )
    items = page.get("items", page.get("results", []))
    if print_items(items, as_json=as_json, as_jsonl=as_jsonl, document=page):
        return
    rows = [
        [
            r.get("task_id"),
            r.get("task_name"),
            r.get("status", r.get("state")),
            r.get("worker"),
            r.get("sent_at"),
            _round(r.get("runtime")),
            _round(r.get("queue_wait")),
        ]
        for r in items
    ]
    columns = ["task_id", "task", "status", "worker", "sent", "runtime s", "wait s"]
    if not wide:  # 80 columns: the queue wait is in --wide and --json
        columns, rows = columns[:-1], [row[:-1] for row in rows]
    print_table(columns, rows, status_columns=[2], id_columns=[0], time_columns=[4], wide=wide)
    if page.get("next_cursor"):
        stderr().print(f"more: mallops history --cursor {page['next_cursor']}", markup=False)


@handles_errors
def ping(
    message: Annotated[str, typer.Option(help="The message test_task echoes.")] = "ping",
    timeout: Annotated[float, typer.Option(min=0.1, help="Seconds to wait for the answer.")] = 30.0,
    as_json: JsonOption = False,
) -> None:
    """Send test_task and time the round trip through gateway, broker and worker (was: celery_manage --test-task).

    Examples:

      \b
      mallops ping
      mallops ping --timeout 5 --json
    """
    started = time.monotonic()
    with client() as mallops:
        submitted = mallops.submit("test_task", kwargs={"message": message})
        try:
            done = mallops.wait(submitted.task_id, timeout=timeout, poll_interval=0.1)
        except (TaskFailed, WaitTimeout) as exc:
            fail(f"ping failed: {exc.message}", exc.exit_code)
    elapsed_ms = (time.monotonic() - started) * 1000
    worker = done.raw.get("worker")
    if as_json:
        print_json(
            {"task_id": done.task_id, "result": done.result, "worker": worker, "round_trip_ms": round(elapsed_ms, 1)}
        )
        return
    echo(f"pong from {worker or 'a worker'} in {elapsed_ms:.0f} ms: {done.result}")


@handles_errors
def catalog(
    name: Annotated[str | None, typer.Argument(help="Show this task's (or workflow's) arguments.")] = None,
    workflows: Annotated[
        bool, typer.Option("--workflows", help="List the named workflows (GET /api/v1/catalog `workflows`).")
    ] = False,
    as_json: JsonOption = False,
    as_jsonl: JsonlOption = False,
) -> None:
    """Every task with its queue, schedule and description, then (on a terminal) every named workflow; with
    NAME, its arguments (and a workflow's steps).

    Examples:

      \b
      mallops catalog
      mallops catalog generate_daily_report
      mallops catalog --workflows
      mallops catalog month_end_close
    """
    with client() as mallops:
        items = mallops.catalog()
        flows = mallops.catalog_workflows()
    if name is not None:
        _show_one(name, items, flows, as_json)
        return
    if workflows:
        if print_items(flows, as_json=as_json, as_jsonl=as_jsonl):
            return
        _print_workflows(flows)
        return
    if print_items(items, as_json=as_json, as_jsonl=as_jsonl):
        return
    rows = [
        [_name(t), t.get("queue"), t.get("schedule_text") or _schedule_text(t.get("schedule")), t.get("description")]
        for t in items
    ]
    print_table(["task", "queue", "schedule", "description"], rows, title=f"{len(rows)} tasks")
    if stdout().is_terminal:  # piped, the tasks alone (scripts read one table); --workflows gives the rest
        _print_workflows(flows)


def _show_one(name: str, items: list[dict[str, Any]], flows: list[dict[str, Any]], as_json: bool) -> None:
    matches = [t for t in items if name in (_name(t), t.get("celery_name"))]
    flow = next((w for w in flows if w.get("name") == name), None)
    if not matches and flow is None:
        fail(f"unknown task {name!r}; `mallops catalog` lists them")
    found = matches[0] if matches else flow
    assert found is not None
    if as_json:
        print_json(found)
        return
    _print_arguments(found)
    if not matches and flow is not None:
        echo("steps: " + _steps_text(flow.get("steps") or []))


def _steps_text(steps: list[Any], lines: bool = False) -> str:
    """``a -> (b | c) -> d``: each item in order, a parallel group in brackets; with ``lines``, a task a line
    (a table's cell: piped, its line breaks become spaces and it reads as the one-line form)."""
    then, beside = ("\n-> ", "\n| ") if lines else (" -> ", " | ")
    parts = []
    for item in steps:
        if isinstance(item, dict) and isinstance(item.get("parallel"), list):
            parts.append("(" + beside.join(str(s.get("task_name")) for s in item["parallel"]) + ")")
        elif isinstance(item, dict):
            parts.append(str(item.get("task_name")))
    return then.join(parts)


def _print_workflows(flows: list[dict[str, Any]]) -> None:
    rows = [
        [
            w.get("name"),
            _steps_text(w.get("steps") or [], lines=True),
            w.get("schedule_text") or "",
            w.get("description"),
        ]
        for w in flows
    ]
    # a step a line, whole (a workflow is its steps); a description is cut: `mallops catalog NAME` shows it
    print_table(["workflow", "steps", "schedule", "description"], rows, title=f"{len(rows)} workflows", cut_columns=[3])


def _name(task: dict[str, Any]) -> str:
    return str(task.get("task_name") or task.get("name") or "")


def _schedule_text(schedule: Any) -> str | None:
    if not schedule:
        return None
    if isinstance(schedule, str):
        return schedule
    if isinstance(schedule, dict):
        if schedule.get("description"):
            return str(schedule["description"])
        if schedule.get("every") is not None:
            return f"every {schedule['every']:g}s"
        keys = ("minute", "hour", "day_of_month", "month_of_year", "day_of_week")
        if any(k in schedule for k in keys):
            return "cron " + " ".join(str(schedule.get(k, "*")) for k in keys)
    return str(schedule)


def _print_arguments(task: dict[str, Any]) -> None:
    schema = task.get("args_schema") or task.get("schema") or task.get("arguments") or {}
    props: dict[str, Any] = schema.get("properties", {}) if isinstance(schema, dict) else {}
    required = set(schema.get("required", [])) if isinstance(schema, dict) else set()
    where = f"queue {task.get('queue')}" if task.get("queue") else "workflow"
    echo(f"{_name(task)} ({where}): {task.get('description', '')}")
    rows = []
    for field_name, spec in props.items():
        kind = spec.get("type") or " | ".join(
            str(s.get("type") or s.get("$ref", "").rsplit("/", 1)[-1]) for s in spec.get("anyOf", [])
        )
        if "enum" in spec:
            kind = " | ".join(map(str, spec["enum"]))
        rows.append(
            [
                field_name,
                kind or "-",
                "yes" if field_name in required else "no",
                spec.get("default"),
                spec.get("description"),
            ]
        )
    print_table(["argument", "type", "required", "default", "description"], rows)


def register(root: typer.Typer) -> None:
    for fn, name in (
        (workers, "workers"),
        (queues, "queues"),
        (stats, "stats"),
        (history, "history"),
        (ping, "ping"),
        (catalog, "catalog"),
    ):
        root.command(name)(fn)
