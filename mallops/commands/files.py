"""``mallops reports list|get|open`` and ``mallops exports create|status|download``: the files the
platform makes, without curl or a bearer token typed by hand."""

from __future__ import annotations

import json
import webbrowser
from pathlib import Path
from typing import Annotated, Any, Literal

import typer

from mallops.client import Client
from mallops.commands.tasks import follow
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

reports_app = typer.Typer(help="The period reports and their files.", no_args_is_help=True, rich_markup_mode=None)
exports_app = typer.Typer(help="Data exports (CSV or XLSX).", no_args_is_help=True, rich_markup_mode=None)

Lang = Literal["zh_CN", "en"]


@reports_app.command("list")
@handles_errors
def reports_list(
    kind: Annotated[str | None, typer.Option(help="hourly, daily, weekly or monthly.")] = None,
    limit: Annotated[int, typer.Option(min=1, max=200, help="At most this many reports.")] = 20,
    wide: WideOption = False,
    as_json: JsonOption = False,
    as_jsonl: JsonlOption = False,
) -> None:
    """The reports, newest first: id, kind, period and files.

    Examples:

      \b
      mallops reports list
      mallops reports list --kind daily --limit 7
    """
    with client() as mallops:
        page = mallops.reports(kind=kind, limit=limit)
    items = page.get("results", [])
    if print_items(items, as_json=as_json, as_jsonl=as_jsonl, document=page):
        return
    rows = [[r.get("id"), r.get("kind"), r.get("period_start"), r.get("formats"), r.get("created_at")] for r in items]
    print_table(
        ["id", "kind", "period start (UTC)", "files", "made"],
        rows,
        title=f"{page.get('count', len(rows))} report(s)",
        time_columns=[4],
        wide=wide,
    )


@reports_app.command("get")
@handles_errors
def reports_get(
    report_id: Annotated[int, typer.Argument(help="The report's id (mallops reports list).")],
    format: Annotated[
        Literal["summary", "csv", "html"], typer.Option("--format", "-f", help="summary (the figures), csv or html.")
    ] = "summary",
    lang: Annotated[Lang | None, typer.Option(help="The HTML page's language (default: the gateway's).")] = None,
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Write the file here (a folder keeps its name); - for stdout.")
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """A report's figures, or its CSV or HTML file saved to disk.

    Examples:

      \b
      mallops reports get 12
      mallops reports get 12 --format csv -o ~/Downloads/
      mallops reports get 12 --format html --lang en -o report.html
    """
    with client() as mallops:
        if format == "summary":
            report = mallops.report(report_id)
            if as_json:
                print_json(report)
                return
            data = report.pop("data", {}) or {}
            print_fields([*report.items(), *_figures(data)])
            return
        name, content = mallops.report_file(report_id, format=format, lang=lang)
    _save(name, content, output)


@reports_app.command("open")
@handles_errors
def reports_open(
    report_id: Annotated[int, typer.Argument(help="The report's id (mallops reports list).")],
    lang: Annotated[Lang | None, typer.Option(help="The page's language (default: the gateway's).")] = None,
    folder: Annotated[Path, typer.Option(help="Where to keep the downloaded page.")] = Path(".mallops/downloads"),
) -> None:
    """Download a report's HTML page and open it in the browser.

    Examples:

      \b
      mallops reports open 12
      mallops reports open 12 --lang en
    """
    with client() as mallops:
        name, content = mallops.report_file(report_id, format="html", lang=lang)
    folder.mkdir(parents=True, exist_ok=True)
    path = _save(name, content, folder)
    if not webbrowser.open(path.resolve().as_uri()):
        stderr().print(f"no browser to open it with; the page is {path}", markup=False)


def _figures(data: dict[str, Any]) -> list[tuple[str, Any]]:
    pairs: list[tuple[str, Any]] = []
    for key in ("sales", "payments", "bills_issued", "overdue_at_end"):
        figure = data.get(key)
        if isinstance(figure, dict):
            count = figure.get("count", figure.get("transactions"))
            pairs.append((key, f"{figure.get('amount')} {data.get('currency', 'CNY')} ({count})"))
    return pairs


def _save(name: str, content: bytes, output: Path | None) -> Path:
    """Write a downloaded file to ``output`` (a folder: under its own name; ``-``: stdout)."""
    if output is not None and str(output) == "-":
        typer.get_binary_stream("stdout").write(content)
        return Path("-")
    target = output or Path(name)
    if target.is_dir() or (output is not None and str(output).endswith("/")):
        target = target / name
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(content)
    echo(f"saved {target} ({len(content):,} bytes)")
    return target


@exports_app.command("create")
@handles_errors
def exports_create(
    dataset: Annotated[str, typer.Argument(help="bills, payments, revenue, stores or sales.")],
    format: Annotated[Literal["csv", "xlsx"], typer.Option("--format", "-f", help="csv or xlsx.")] = "xlsx",
    filters: Annotated[
        str | None, typer.Option(help="A JSON object: date_from, date_to, store_id, status, e.g. '{\"store_id\": 5}'.")
    ] = None,
    wait: Annotated[bool, typer.Option("--wait", help="Wait until it is done, then download it.")] = False,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="With --wait: where to save it.")] = None,
    timeout: Annotated[
        float | None, typer.Option(min=0.1, help="With --wait: give up after this many seconds.")
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Start an export (the export_data task); with --wait, download the file when it is done.

    Examples:

      \b
      mallops exports create stores --format csv
      mallops exports create payments --filters '{"store_id": 5}' --wait
    """
    kwargs: dict[str, Any] = {"dataset": dataset, "format": format}
    if filters:
        kwargs["filters"] = parse_json_option(filters, "--filters", dict)
    with client() as mallops:
        task = mallops.submit("export_data", kwargs=kwargs)
        if not wait:
            if as_json:
                print_json(task.raw)
            else:
                echo(f"export {task.task_id} started; mallops exports status {task.task_id[:8]}")
            return
        finished = follow(mallops, task.task_id, timeout=timeout, quiet=as_json)
        if finished.failed:
            fail(f"export {task.task_id} {finished.status}: {finished.error or ''}", 1)
        _download(mallops, task.task_id, output)


@exports_app.command("status")
@handles_errors
def exports_status(
    task_id: Annotated[str, typer.Argument(help="The export task's id, or a unique prefix of it.")],
    as_json: JsonOption = False,
) -> None:
    """An export's state (running, done, failed), rows, size and file.

    Examples:

      \b
      mallops exports status 3f2a9c1e
    """
    with client() as mallops:
        info = mallops.export_status(mallops.find_task_id(task_id))
    if as_json:
        print_json(info)
        return
    print_fields([(k, json.dumps(v, ensure_ascii=False) if isinstance(v, dict) else v) for k, v in info.items()])


@exports_app.command("download")
@handles_errors
def exports_download(
    task_id: Annotated[str, typer.Argument(help="The export task's id, or a unique prefix of it.")],
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Where to save it (a folder keeps its name); - for stdout.")
    ] = None,
) -> None:
    """Download a finished export's file.

    Examples:

      \b
      mallops exports download 3f2a9c1e
      mallops exports download 3f2a9c1e -o ~/Downloads/
    """
    with client() as mallops:
        _download(mallops, mallops.find_task_id(task_id), output)


def _download(mallops: Client, task_id: str, output: Path | None) -> None:
    name, content = mallops.export_file(task_id)
    _save(name, content, output)


def register(root: typer.Typer) -> None:
    root.add_typer(reports_app, name="reports")
    root.add_typer(exports_app, name="exports")
