"""How the CLI prints: rich tables with colour on a terminal, tab-separated plain text when piped,
JSON with ``--json``; errors as ONE line on stderr with a documented exit code, never a traceback.

Exit codes: 0 ok, 1 the task failed, 2 bad usage or input, 3 cannot reach the gateway or not authorised.
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
from rich.console import Console
from rich.table import Table

from mallops.client import Client, MallopsError
from mallops.config import ConfigError

EXIT_OK, EXIT_TASK_FAILED, EXIT_USAGE, EXIT_UNREACHABLE = 0, 1, 2, 3

P = ParamSpec("P")
R = TypeVar("R")

JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON for scripts instead of a table.")]

STATUS_STYLES = {
    "SUCCESS": "green",
    "FAILURE": "bold red",
    "REVOKED": "magenta",
    "REJECTED": "red",
    "RETRY": "yellow",
    "STARTED": "cyan",
    "PROGRESS": "cyan",
    "REQUEUED": "yellow",
    "RECEIVED": "blue",
    "PENDING": "dim",
    "SENT": "dim",
    "online": "green",
    "offline": "red",
    "ok": "green",
    "warning": "yellow",
    "problem": "bold red",
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


def cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3f}".rstrip("0").rstrip(".") if value else "0"
    if isinstance(value, list | tuple):
        return ",".join(cell(v) for v in value) or "-"
    if isinstance(value, dict):
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
) -> None:
    """A rich table on a terminal; a header line and tab-separated rows when piped."""
    texts = [[cell(v) for v in row] for row in rows]
    out = stdout()
    if not out.is_terminal:
        click.echo("\t".join(columns))
        for row in texts:
            click.echo("\t".join(v.replace("\t", " ").replace("\n", " ") for v in row))
        return
    table = Table(title=title, header_style="bold", title_justify="left")
    for name in columns:
        table.add_column(name, overflow="fold")
    from rich.markup import escape

    for row in texts:
        table.add_row(*[styled(escape(v)) if i in status_columns else escape(v) for i, v in enumerate(row)])
    out.print(table)
    if not texts:
        out.print("[dim](none)[/dim]")


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
