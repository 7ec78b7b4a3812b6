"""The ``mallops`` command line.

Exit codes: 0 ok, 1 the task failed, 2 bad usage or input, 3 cannot reach a service or not authorised,
4 refused for now (quota, rate limit, 503: try later), 5 ``--wait``/``watch`` timed out.
"""

from __future__ import annotations

import datetime as dt
import importlib
import json
from typing import Annotated

import typer

from mallops.commands import register as register_operator_commands
from mallops.services import SERVICE_NAMES

EXIT_OK, EXIT_TASK_FAILED, EXIT_USAGE, EXIT_UNREACHABLE = 0, 1, 2, 3

app = typer.Typer(
    name="mallops",
    help="Operate the mallops task platform.\n\nExit codes: 0 ok, 1 the task failed, 2 bad input, 3 no gateway "
    "or not authorised, 4 refused for now (quota, rate limit, 503), 5 --wait timed out.",
    epilog="Examples: mallops dev; mallops ping; mallops tasks send test_task --wait; mallops history --since 2h",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    rich_markup_mode=None,  # plain help: flags shown as flags, examples kept as written, 80 columns
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        from importlib.metadata import PackageNotFoundError, version

        try:
            typer.echo(f"mallops {version('mallops')}")
        except PackageNotFoundError:
            typer.echo("mallops (not installed as a package)")
        raise typer.Exit(0)


@app.callback()
def _root(
    show_version: Annotated[
        bool, typer.Option("--version", "-V", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """Operate the mallops task platform."""


RUNNABLE = SERVICE_NAMES  # mallops/services.py: the one list of the platform's processes
register_operator_commands(app)  # tasks, workers, doctor, dev, ...: mallops/commands/


def fail(message: str, code: int) -> typer.Exit:
    """Print one line on stderr and return the Exit to raise."""
    typer.echo(f"mallops: {message}", err=True)
    return typer.Exit(code)


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def serve(
    ctx: typer.Context,
    service: Annotated[str, typer.Argument(help=f"One of: {', '.join(RUNNABLE)}.")],
) -> None:
    """Run one mallops service in the foreground (what compose and `mallops dev` start).

    Examples:

      \b
      mallops serve gateway --port 8080
      mallops serve finance
    """
    if service not in RUNNABLE:
        raise fail(f"unknown service {service!r}; choose one of {', '.join(RUNNABLE)}", EXIT_USAGE)
    try:
        module = importlib.import_module(f"services.{service}.main")
    except ModuleNotFoundError as exc:
        raise fail(f"service {service!r} is not available in this installation ({exc})", EXIT_USAGE) from exc
    module.main(list(ctx.args))


@app.command()
def migrate() -> None:
    """Create or upgrade the database schema (Alembic); with MALLOPS_DEMO_DATA=1, also load the demo mall
    when the database has none (what compose's one-shot `migrate` service runs).

    Examples:

      \b
      mallops migrate
      MALLOPS_DATABASE_URL=postgresql://mallops@db/mallops mallops migrate
    """
    from shared.db import migrate as run_migrations
    from shared.settings import get_settings

    before = _schema_revision()
    run_migrations()
    after = _schema_revision()
    if before is None:
        typer.echo(f"created the database schema (revision {after})")
    elif before != after:
        typer.echo(f"upgraded the database schema from revision {before} to {after}")
    else:
        typer.echo(f"database schema is up to date (revision {after})")
    if get_settings().demo_data:
        from mallops import demo_data as demo
        from shared.db import session_scope

        try:
            with session_scope() as session:
                summary = demo.generate(session)
        except demo.DemoDataExists:
            typer.echo("demo data is already there")
        else:
            typer.echo("demo data: " + ", ".join(f"{value} {key}" for key, value in summary.as_dict().items()))


def _schema_revision() -> str | None:
    """The database's Alembic revision; None for a database without the schema."""
    from alembic.runtime.migration import MigrationContext

    from shared.db import get_engine

    with get_engine().connect() as connection:
        revision: str | None = MigrationContext.configure(connection).get_current_revision()
    return revision


@app.command("demo-data")
def demo_data(
    stores: Annotated[int, typer.Option(min=1, max=100_000, help="Number of stores.")] = 200,
    months: Annotated[int, typer.Option(min=1, max=120, help="Months of bills and sales.")] = 12,
    seed: Annotated[int, typer.Option(help="Random seed: the same seed gives the same data.")] = 42,
    as_of: Annotated[str | None, typer.Option(help="Today's date for the history, YYYY-MM-DD.")] = None,
    reset: Annotated[bool, typer.Option(help="Replace demo data that is already there.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the counts as JSON.")] = False,
) -> None:
    """Fill the database with a deterministic demo mall (migrating it first).

    Examples:

      \b
      mallops demo-data
      mallops demo-data --stores 50 --months 3 --reset
    """
    from mallops import demo_data as demo
    from shared.db import migrate as run_migrations
    from shared.db import session_scope

    try:
        day = dt.date.fromisoformat(as_of) if as_of else None
    except ValueError as exc:
        raise fail(f"--as-of must be YYYY-MM-DD, not {as_of!r}", EXIT_USAGE) from exc
    run_migrations()
    try:
        with session_scope() as session:
            summary = demo.generate(session, stores=stores, months=months, seed=seed, as_of=day, reset=reset)
    except demo.DemoDataExists as exc:
        raise fail(f"{exc}", EXIT_USAGE) from exc
    if as_json:
        typer.echo(json.dumps(summary.as_dict()))
    else:
        typer.echo(", ".join(f"{value} {key}" for key, value in summary.as_dict().items()))


def main() -> None:
    from mallops.output import run_app

    run_app(app)  # usage errors exit 2 with one line on stderr; no traceback reaches the user
