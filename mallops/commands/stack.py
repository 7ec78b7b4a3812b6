"""Commands about the platform's own processes: ``mallops dev`` and ``mallops probe``."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from mallops.services import SERVICE_NAMES, get_service, probe

EXIT_OK, EXIT_NOT_READY, EXIT_USAGE, EXIT_UNREACHABLE = 0, 1, 2, 3


def probe_command(
    service: Annotated[str, typer.Argument(help=f"One of: {', '.join(SERVICE_NAMES)}.")],
    timeout: Annotated[float, typer.Option(min=0.1, max=60, help="Seconds to wait for an answer.")] = 3.0,
    hostname: Annotated[
        str | None, typer.Option(help="Host part of a worker's node name (default: this machine's).")
    ] = None,
) -> None:
    """Run a service's readiness check once: exit 0 when ready, 1 when not (a container healthcheck).

    Examples:

      \b
      mallops probe gateway
      mallops probe finance --timeout 5
    """
    from shared.settings import get_settings

    try:
        spec = get_service(service)
    except KeyError as exc:
        typer.echo(f"mallops: {exc.args[0]}", err=True)
        raise typer.Exit(EXIT_USAGE) from None
    result = probe(spec, get_settings(), timeout=timeout, hostname=hostname)
    typer.echo(f"{result.service}: {'ready' if result.ready else 'NOT ready'} ({result.detail})")
    raise typer.Exit(EXIT_OK if result.ready else EXIT_NOT_READY)


def dev_command(
    ready_timeout: Annotated[float, typer.Option(min=5, help="Stop with an error if not ready by then (s).")] = 180,
    demo_data: Annotated[bool, typer.Option(help="Load the demo mall on the first start.")] = True,
) -> None:
    """Run the whole platform locally, one command, no Docker: Redis, the gateway, every worker, beat,
    the monitor and an SMTP catcher. Ctrl-C stops it all.

    Uses MALLOPS_REDIS_URL when set (else starts its own redis-server), the embedded SQLite database
    unless MALLOPS_DATABASE_URL, and the ports of MALLOPS_GATEWAY_PORT, MALLOPS_MONITOR_PORT and
    MALLOPS_SMTP_PORT. Exit 0 after Ctrl-C/SIGTERM, 1 when a service died or never became ready,
    2 when it cannot start (port in use, redis-server missing).

    Examples:

      \b
      mallops dev
      MALLOPS_GATEWAY_PORT=8080 mallops dev --no-demo-data
    """
    from mallops.devstack import DevError, run_dev
    from shared.settings import get_settings

    try:
        code = run_dev(get_settings(), ready_timeout=ready_timeout, demo_data=demo_data)
    except DevError as exc:
        typer.echo(f"mallops: {exc}", err=True)
        raise typer.Exit(EXIT_USAGE) from None
    raise typer.Exit(code)


def info_command() -> None:
    """Print `mallops dev`'s ready banner again: URLs, the admin token, where e-mail goes.

    It is kept in <data dir>/dev/banner.txt (MALLOPS_DATA_DIR, default ./.mallops). Exit 0 while that
    stack runs, 3 when it has stopped (the banner of its last start is still printed) or never started.

    Examples:

    \b
      mallops info
      MALLOPS_DATA_DIR=/srv/mallops mallops info
    """
    import os

    from mallops.devstack import BANNER_FILE
    from shared.settings import get_settings

    dev_dir = get_settings().data_dir.expanduser().resolve() / "dev"
    banner = dev_dir / BANNER_FILE
    if not banner.exists():
        typer.echo(f"mallops: no `mallops dev` has become ready with the data folder {dev_dir.parent}", err=True)
        raise typer.Exit(EXIT_UNREACHABLE)
    typer.echo(banner.read_text(), nl=False)
    running = False
    try:
        import json

        pid = int(json.loads((dev_dir / "stack.json").read_text())["pid"])
        os.kill(pid, 0)
        running = True
    except (FileNotFoundError, KeyError, ValueError, ProcessLookupError, PermissionError):
        running = False
    if not running:
        typer.echo("mallops: that `mallops dev` is not running now (the banner is from its last start)", err=True)
        raise typer.Exit(EXIT_UNREACHABLE)


def mail_command(
    limit: Annotated[int, typer.Option(min=1, help="Show at most this many messages, newest first.")] = 20,
    show: Annotated[int | None, typer.Option(help="Print message N of the list: its headers and decoded text.")] = None,
    as_html: Annotated[bool, typer.Option("--html", help="With --show: print the HTML part instead.")] = False,
    raw: Annotated[bool, typer.Option("--raw", help="With --show: print the message as received (MIME).")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON document.")] = False,
) -> None:
    """The e-mail caught by `mallops dev`'s SMTP catcher (the maildir <data dir>/mail).

    Examples:

      \b
      mallops mail
      mallops mail --show 1
      mallops mail --show 1 --html > reminder.html
    """
    import email.policy
    import json
    import mailbox

    from mallops.output import print_table
    from shared.settings import get_settings

    maildir = get_settings().data_dir.expanduser().resolve() / "mail"
    if not (maildir / "new").is_dir():
        typer.echo(f"mallops: no maildir at {maildir}: start `mallops dev` first", err=True)
        raise typer.Exit(EXIT_USAGE)
    box = mailbox.Maildir(maildir, create=False)
    entries = []
    for key in box.iterkeys():
        path = maildir / ("new" if (maildir / "new" / key).exists() else "cur") / key
        entries.append((path.stat().st_mtime if path.exists() else 0.0, key))
    entries.sort(reverse=True)
    rows = []
    for number, (_, key) in enumerate(entries[:limit], start=1):
        message = email.message_from_bytes(box.get_bytes(key), policy=email.policy.default)
        if show == number:
            typer.echo(message.as_string() if raw else _readable(message, as_html))
            return
        rows.append(
            {
                "n": number,
                "date": message.get("Date"),
                "from": message.get("From"),
                "to": message.get("To"),
                "subject": message.get("Subject"),
                "file": key,
            }
        )
    if show is not None:
        typer.echo(f"mallops: there is no message {show} (the list has {len(rows)})", err=True)
        raise typer.Exit(EXIT_USAGE)
    if as_json:
        typer.echo(json.dumps(rows, indent=2, ensure_ascii=False))
        return
    print_table(
        ["n", "date", "from", "to", "subject"],
        [[r["n"], r["date"], r["from"], r["to"], r["subject"]] for r in rows],
        title=f"{len(entries)} message(s) in {maildir}",
    )


def _readable(message: Any, as_html: bool) -> str:
    """From, To, Date and Subject, then the decoded text part (or the HTML part)."""
    head = "\n".join(f"{name}: {message.get(name)}" for name in ("From", "To", "Date", "Subject") if message.get(name))
    part = message.get_body(preferencelist=("html",) if as_html else ("plain", "html"))
    if part is None:
        return head + "\n\n(no " + ("HTML" if as_html else "text") + " part)"
    return f"{head}\n\n{part.get_content().rstrip()}"


def register(app: typer.Typer) -> None:
    app.command("dev")(dev_command)
    app.command("mail")(mail_command)
    app.command("info")(info_command)
    app.command("probe")(probe_command)
