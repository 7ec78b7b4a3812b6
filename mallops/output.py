"""How the CLI prints: rich tables with colour on a terminal (short ids, relative times, fitting the
terminal's width; ``--wide`` for full values), tab-separated plain text with full values when piped,
one JSON document with ``--json`` and one JSON object per line with ``--jsonl``; errors as ONE line on
stderr with a documented exit code, never a traceback.

Exit codes: 0 ok, 1 the task failed, 2 bad usage or input, 3 cannot reach the gateway or not authorised,
4 refused for now (quota, rate limit, 503: try later), 5 ``--wait`` or ``watch`` timed out.
"""

from __future__ import annotations

import functools
import json
import os
import sys
from collections.abc import Callable, Iterable, Sequence
from typing import Annotated, Any, NoReturn, ParamSpec, TypeVar

import click
import typer
from rich import box
from rich.console import Console
from rich.table import Table

from mallops.client import Client, MallopsError
from mallops.config import ConfigError
from shared.contracts import TaskState

EXIT_OK, EXIT_TASK_FAILED, EXIT_USAGE, EXIT_UNREACHABLE, EXIT_REFUSED, EXIT_TIMEOUT = 0, 1, 2, 3, 4, 5

P = ParamSpec("P")
R = TypeVar("R")

JsonOption = Annotated[bool, typer.Option("--json", help="Print one JSON document instead of a table.")]
JsonlOption = Annotated[bool, typer.Option("--jsonl", help="Print one JSON object per line (for jq and log tools).")]
WideOption = Annotated[bool, typer.Option("--wide", "-w", help="Full ids and times, wider than 80 columns.")]
#: how many characters of a task id a table shows (any unique prefix is accepted back)
SHORT_ID = 8

STATUS_STYLES = {
    TaskState.SUCCESS: "green",
    TaskState.FAILURE: "bold red",
    TaskState.REVOKED: "magenta",
    TaskState.REJECTED: "red",
    TaskState.RETRY: "yellow",
    TaskState.REQUEUED: "yellow",
    TaskState.STARTED: "cyan",
    TaskState.PROGRESS: "cyan",
    TaskState.RECEIVED: "blue",
    TaskState.PENDING: "dim",
    TaskState.SCHEDULED: "dim",
    TaskState.SENT: "dim",
    "online": "green",
    "offline": "red",
    "ok": "green",
    "warning": "yellow",
    "problem": "bold red",
    "not checked": "dim",
    "enabled": "green",
    "disabled": "dim",
}


def stdout() -> Console:
    return Console(soft_wrap=True, highlight=False)


def stderr() -> Console:
    return Console(stderr=True, soft_wrap=True, highlight=False)


def is_terminal() -> bool:
    return stdout().is_terminal


class CliFailure(Exception):
    """Raised inside a command to stop with one line on stderr and an exit code."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.message = message
        self.code = code


def fail(message: str, code: int = EXIT_USAGE) -> NoReturn:
    raise CliFailure(message, code)


def say_error(message: str) -> None:
    first_line = " ".join(message.split())  # one line, whatever the message held
    click.echo(f"mallops: {first_line}", err=True)


def handles_errors(fn: Callable[P, R]) -> Callable[P, R]:
    """Turn client and input errors raised by a command into one stderr line and its exit code."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return fn(*args, **kwargs)
        except CliFailure as exc:
            say_error(exc.message)
            raise typer.Exit(exc.code) from None
        except MallopsError as exc:
            say_error(exc.message)
            raise typer.Exit(exc.exit_code) from None
        except ConfigError as exc:
            say_error(str(exc))
            raise typer.Exit(EXIT_USAGE) from None

    return wrapper


def client() -> Client:
    """A client configured from MALLOPS_URL / MALLOPS_TOKEN / the config file."""
    return Client()


# -- printing ------------------------------------------------------------------------------------


def print_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, ensure_ascii=False, default=str))


def print_jsonl(items: Iterable[Any]) -> None:
    """One compact JSON object per line."""
    for item in items:
        click.echo(json.dumps(item, ensure_ascii=False, default=str))


def print_items(items: Sequence[Any], *, as_json: bool, as_jsonl: bool, document: Any = None) -> bool:
    """``--json`` (``document``, else the list) or ``--jsonl`` (the list, a line each); True if printed."""
    if as_json and as_jsonl:
        fail("give --json or --jsonl, not both")
    if as_json:
        print_json(items if document is None else document)
    elif as_jsonl:
        print_jsonl(items)
    return as_json or as_jsonl


def short_id(value: Any, wide: bool = False) -> Any:
    """The first :data:`SHORT_ID` characters of a task id (a unique prefix is accepted back)."""
    return value[:SHORT_ID] if isinstance(value, str) and not wide and len(value) > SHORT_ID else value


def relative_time(value: Any, now: Any = None) -> Any:
    """``2026-12-07T07:30:00+00:00`` -> ``5m ago`` (or ``in 5m``); other values unchanged."""
    import datetime as dt

    if not isinstance(value, str) or not value:
        return value
    try:
        when = dt.datetime.fromisoformat(value)
    except ValueError:
        return value
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    seconds = ((now or dt.datetime.now(dt.UTC)) - when).total_seconds()
    span = abs(seconds)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if span >= size:
            text = f"{int(span // size)}{unit}"
            break
    else:
        text = f"{int(span)}s"
    return f"{text} ago" if seconds >= 0 else f"in {text}"


def cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3f}".rstrip("0").rstrip(".") if value else "0"
    if isinstance(value, list | tuple | dict):
        return json.dumps(value, ensure_ascii=False, default=str)
    return str(value)


def styled(value: str) -> str:
    style = STATUS_STYLES.get(value)
    return f"[{style}]{value}[/{style}]" if style else value


def print_table(
    columns: Sequence[str],
    rows: Iterable[Sequence[Any]],
    *,
    title: str | None = None,
    status_columns: Sequence[int] = (),
    id_columns: Sequence[int] = (),
    time_columns: Sequence[int] = (),
    wrap_columns: Sequence[int] = (),
    cut_columns: Sequence[int] | None = None,
    wide: bool = False,
) -> None:
    """A rich table on a terminal; a header line and tab-separated rows when piped.

    On a terminal, unless ``wide``: task ids (``id_columns``) are shortened, times (``time_columns``)
    shown relative to now, and the cells of ``cut_columns`` (default: all but ids, times and statuses)
    cut with an ellipsis, or wrapped for ``wrap_columns``, so that the table fits the terminal's width.
    Piped, every value is whole (ids, ISO times) for scripts.
    """
    out = stdout()
    if not out.is_terminal:
        click.echo("\t".join(columns))
        for row in rows:
            click.echo("\t".join(cell(v).replace("\t", " ").replace("\n", " ") for v in row))
        return
    texts = [
        [
            cell(short_id(v, wide) if i in id_columns else relative_time(v) if i in time_columns and not wide else v)
            for i, v in enumerate(row)
        ]
        for row in rows
    ]
    table = Table(title=title, header_style="bold", title_justify="left", pad_edge=False, box=box.SIMPLE_HEAD)
    if cut_columns is None:
        cut_columns = [i for i in range(len(columns)) if i not in {*id_columns, *time_columns, *status_columns}]
    widths = _fitted_widths(columns, texts, [] if wide else [*cut_columns, *wrap_columns], out.width)
    for index, name in enumerate(columns):
        wrap = index in wrap_columns and not wide
        table.add_column(name, overflow="fold" if wrap else "ellipsis", no_wrap=not wrap, max_width=widths[index])
    from rich.markup import escape

    for row in texts:
        table.add_row(*[styled(escape(v)) if i in status_columns else escape(v) for i, v in enumerate(row)])
    # --wide: as wide as the values need (the terminal wraps the lines); else cut to the terminal's width
    if wide:
        out = Console(soft_wrap=True, highlight=False, width=max(out.width, 400))
    out.print(table)
    if not texts:
        out.print("[dim](none)[/dim]")


def _fitted_widths(columns: Sequence[str], texts: Sequence[Sequence[str]], cut: Sequence[int], width: int) -> list[int]:
    """Each column's width so that the table fits ``width``: the ``cut`` columns give way, widest first."""
    from rich.cells import cell_len

    def longest_line(text: str) -> int:
        return max((cell_len(line) for line in text.splitlines()), default=0)

    widths = [max([cell_len(name), *(longest_line(row[i]) for row in texts)]) for i, name in enumerate(columns)]
    room = width - (3 * (len(columns) - 1) + 2)  # a space at each edge, three between columns
    while sum(widths) > room and cut:
        widest = max(cut, key=lambda i: widths[i])
        if widths[widest] <= 4:
            break
        widths[widest] -= 1
    return widths


def print_fields(pairs: Iterable[tuple[str, Any]], *, status_keys: Sequence[str] = ("status",)) -> None:
    """``key: value`` lines; the status coloured on a terminal."""
    out = stdout()
    from rich.markup import escape

    items = [(key, cell(value)) for key, value in pairs]
    width = max((len(k) for k, _ in items), default=0)
    for key, value in items:
        if out.is_terminal:
            shown = styled(escape(value)) if key in status_keys else escape(value)
            out.print(f"[bold]{key.ljust(width)}[/bold]  {shown}")
        else:
            click.echo(f"{key.ljust(width)}  {value}")


def echo(message: str) -> None:
    """A plain line on stdout (markup-free)."""
    click.echo(message)


def run_app(app: typer.Typer, argv: Sequence[str] | None = None) -> NoReturn:
    """Run the Typer app with the CLI's error contract: usage errors exit 2 with one line on stderr."""
    try:
        result = app(args=list(argv) if argv is not None else None, standalone_mode=False)
    except KeyboardInterrupt:
        sys.exit(130)
    except MallopsError as exc:
        say_error(exc.message)
        sys.exit(exc.exit_code)
    except Exception as exc:
        sys.exit(_report_unexpected(exc))
    sys.exit(result if isinstance(result, int) else EXIT_OK)


def _report_unexpected(exc: Exception) -> int:
    # Typer ships its own copy of Click, whose exception classes are private: recognise them by shape
    # (an int exit_code and format_message), as Click's own standalone mode does.
    code = getattr(exc, "exit_code", None)
    format_message = getattr(exc, "format_message", None)
    if isinstance(code, int) and callable(format_message):
        ctx = getattr(exc, "ctx", None)
        if type(exc).__name__ == "NoArgsIsHelpError" and ctx is not None:
            help_text = ctx.get_help()  # Typer's rich help prints itself and returns ""
            if help_text:
                click.echo(help_text, err=True)
            return EXIT_USAGE
        message = str(format_message())
        if code == EXIT_USAGE and ctx is not None:
            path = str(ctx.command_path)
            path = "mallops" + path.split("mallops", 1)[1] if "mallops" in path else path
            message = f"{message} (see '{path} --help')"
        say_error(message)
        return code
    if type(exc).__name__ == "Abort":
        say_error("aborted")
        return 130
    if os.environ.get("MALLOPS_DEBUG"):
        raise exc
    say_error(f"unexpected error: {type(exc).__name__}: {exc} (MALLOPS_DEBUG=1 shows the traceback)")
    return EXIT_TASK_FAILED


# -- input parsing -------------------------------------------------------------------------------

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_when(text: str | None, option: str) -> str | None:
    """``--since 2h`` / ``30m`` / ``7d`` (ago) or an ISO date or datetime, as an ISO datetime in UTC."""
    import datetime as dt
    import re

    if text is None:
        return None
    value = text.strip()
    match = re.fullmatch(r"(\d+)\s*([smhdw])", value)
    now = dt.datetime.now(dt.UTC)
    if match:
        return (now - dt.timedelta(seconds=int(match.group(1)) * _UNITS[match.group(2)])).isoformat()
    try:
        when = dt.datetime.fromisoformat(value)
    except ValueError:
        fail(
            f"{option} must be an ISO date/time (2026-11-14, 2026-11-14T08:00) or an age like 30m, 2h, 7d; not {text!r}"
        )
    if when.tzinfo is None:
        when = when.astimezone()  # local time, as typed by the operator
    return when.astimezone(dt.UTC).isoformat()


def parse_json_option(text: str | None, option: str, kind: type[list[Any]] | type[dict[str, Any]]) -> Any:
    """``--args '[1, 2]'`` / ``--kwargs '{"a": 1}'``: JSON of the expected kind, or exit 2."""
    if text is None:
        return kind()
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        fail(f"{option} is not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno}): {text!r}")
    if not isinstance(value, kind):
        wanted = "a JSON array, e.g. '[1, \"x\"]'" if kind is list else "a JSON object, e.g. '{\"key\": 1}'"
        fail(f"{option} must be {wanted}; got {type(value).__name__}")
    return value
