"""The CLI for a day of use: --version, examples in every help, flags as flags, tables that fit 80
columns, task-id prefixes, --json/--jsonl, the documented exit codes (4 refused for now, 5 --wait timed
out), reports and exports without curl, and doctor through the gateway."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import typer

from mallops.cli import app
from shared.settings import Settings
from tests.harness import Process
from tests.mallops.conftest import CliRunner, LiveGateway

ANSI = re.compile(r"\x1b\[[0-9;]*m")
UUID = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"


def command_paths() -> Iterator[tuple[str, ...]]:
    def walk(command: Any, path: tuple[str, ...]) -> Iterator[tuple[str, ...]]:
        if hasattr(command, "commands"):  # a group (Typer ships its own copy of Click's classes)
            for name, sub in command.commands.items():
                yield from walk(sub, (*path, name))
        else:
            yield path

    yield from walk(typer.main.get_command(app), ())


def test_version(cli: CliRunner) -> None:
    result = cli("--version")
    assert result.code == 0
    assert re.fullmatch(r"mallops \d+\.\d+\.\d+\S*\n", result.out)


def test_every_command_has_examples_and_flags_shown_as_flags(cli: CliRunner) -> None:
    paths = list(command_paths())
    for expected in (("reports", "open"), ("exports", "download"), ("schedules", "enable"), ("tokens", "list")):
        assert expected in paths
    for path in paths:
        result = cli(*path, "--help")
        assert result.code == 0, path
        assert re.search(r"Examples:\n\n +mallops ", result.out), f"mallops {' '.join(path)} --help has no examples"
        assert "<bool>" not in result.out, path
        assert all(len(line) <= 80 for line in result.out.splitlines()), path
    assert re.search(r"^  --json +Print one JSON document", cli("tasks", "list", "--help").out, re.M)


@pytest.fixture
def worker(running_worker: Callable[[str], Process]) -> Process:
    return running_worker("maintenance")


def terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    """What rich sees in an 80-column terminal (without colour codes)."""
    monkeypatch.setenv("TTY_COMPATIBLE", "1")
    monkeypatch.setenv("COLUMNS", "80")
    monkeypatch.setenv("NO_COLOR", "1")


@pytest.mark.integration
@pytest.mark.usefixtures("worker")
def test_tables_fit_80_columns_and_prefixes_find_tasks(
    cli: CliRunner, gateway_env: LiveGateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    sent = cli("tasks", "send", "test_task", "--kwargs", '{"message": "prefix"}', "--wait", "--json")
    task_id = json.loads(sent.out)["task_id"]
    status = cli("tasks", "status", task_id[:8], "--json")
    assert status.code == 0, status
    assert json.loads(status.out)["task_id"] == task_id
    assert cli("tasks", "status", "zzzz").code == 2  # no task starts so: bad input

    lines = cli("tasks", "list", "--jsonl").out.splitlines()
    assert len(lines) >= 1
    assert all(isinstance(json.loads(line), dict) for line in lines)
    assert isinstance(json.loads(cli("tasks", "list", "--json").out), dict)

    terminal(monkeypatch)
    for command in (("tasks", "list"), ("history",), ("workers",), ("schedules", "list"), ("stats",), ("catalog",)):
        shown = cli(*command)
        assert shown.code == 0, (command, shown)
        too_wide = [line for line in ANSI.sub("", shown.out).splitlines() if len(line) > 80]
        assert not too_wide, (command, too_wide)
    flows = ANSI.sub("", cli("catalog", "--workflows").out)
    assert [line for line in flows.splitlines() if len(line) > 80] == []
    assert "month_end_close" in flows
    assert "-> generate_monthly_report" in flows  # a step a line, whole at 80 columns
    assert "| generate_access_statistics)" in flows
    listing = ANSI.sub("", cli("tasks", "list").out)
    assert task_id[:8] in listing
    assert task_id not in listing  # short ids; --wide shows them whole
    assert re.search(r"\d+[smhd] ago", listing)
    assert task_id in cli("tasks", "list", "--wide").out


@pytest.mark.integration
@pytest.mark.usefixtures("worker")
def test_exit_codes_task_failed_timeout_and_refused(
    cli: CliRunner, gateway_env: LiveGateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    failed = cli("tasks", "send", "test_task", "--kwargs", '{"fail": true}', "--wait")
    assert failed.code == 1, failed
    timed_out = cli("tasks", "send", "test_task", "--countdown", "600", "--wait", "--timeout", "0.5")
    assert timed_out.code == 5, timed_out
    assert re.fullmatch(rf"mallops: task {UUID} \(test_task\) is still PENDING after 0.5s", timed_out.err_lines[-1])
    assert cli("tasks", "send", "test_task", "--kwargs", "{nope").code == 2
    # a user's quota of unfinished tasks (MALLOPS_TASK_MAX_PER_USER, 5): the 6th is refused for now
    monkeypatch.setenv("MALLOPS_TOKEN", gateway_env.user)
    codes = [cli("tasks", "send", "test_task", "--countdown", "600", "-q").code for _ in range(6)]
    assert codes[-1] == 4, codes
    refused = cli("tasks", "send", "test_task", "--countdown", "600")
    assert refused.code == 4
    assert refused.err_lines[0].startswith("mallops: refused for now: ")
    assert "try again in" in refused.err_lines[0]


@pytest.mark.integration
@pytest.mark.usefixtures("clean_env")
def test_doctor_through_the_gateway_says_what_it_cannot_check(
    cli: CliRunner, live_gateway: LiveGateway, tmp_path: Path
) -> None:
    env = {"MALLOPS_URL": live_gateway.url, "MALLOPS_TOKEN": live_gateway.admin, "MALLOPS_CONFIG": str(tmp_path / "x")}
    result = cli("doctor", "--json", env=env)
    checks = {c["area"]: c for c in json.loads(result.out)["checks"]}
    assert checks["gateway"]["status"] == "ok"
    assert checks["token"]["status"] == "ok"
    assert checks["broker"]["detail"] == "ok (seen by the gateway)"
    assert checks["database"]["status"] == "ok"
    for area in ("smtp", "redis durability", "beat", "monitor"):
        assert checks[area]["status"] == "not checked", checks[area]
    assert "redis broker" not in checks  # it did not look at a Redis of its own guessing
    problems = [area for area, c in checks.items() if c["status"] == "problem"]
    assert all(area.startswith("queue ") for area in problems), problems  # queues without a worker in this run
    assert result.code == (3 if problems else 0)


@pytest.mark.integration
def test_reports_and_exports_without_curl(
    cli: CliRunner,
    gateway_env: LiveGateway,
    running_worker: Callable[[str], Process],
    demo_db: Settings,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    running_worker("reports")
    made = cli("tasks", "send", "generate_daily_report", "--kwargs", '{"date": "2026-11-14"}', "--wait", "--json")
    assert made.code == 0, made
    report_id = json.loads(made.out)["result"]["report_id"]
    listed = json.loads(cli("reports", "list", "--kind", "daily", "--json").out)
    assert report_id in [r["id"] for r in listed["results"]]
    summary = cli("reports", "get", str(report_id))
    assert re.search(r"^sales +\d+\.\d\d CNY", summary.out, re.M), summary.out
    saved = cli("reports", "get", str(report_id), "--format", "html", "--lang", "en", "-o", str(tmp_path) + "/")
    assert saved.code == 0, saved
    page = tmp_path / "daily-2026-11-14.en.html"
    assert "<h1>Daily report 2026-11-14</h1>" in page.read_text()
    monkeypatch.setenv("BROWSER", "true")  # `open`: no real browser in a test
    opened = cli("reports", "open", str(report_id), "--folder", str(tmp_path / "open"))
    assert opened.code == 0, opened
    assert (tmp_path / "open" / "daily-2026-11-14.zh_CN.html").read_text().count("<h1>日报 2026-11-14</h1>") == 1

    created = cli("exports", "create", "stores", "--format", "csv", "--wait", "-o", str(tmp_path / "stores.csv"))
    assert created.code == 0, created
    assert (tmp_path / "stores.csv").read_bytes().startswith(b"\xef\xbb\xbfid,code,name")
    started = cli("exports", "create", "stores", "--format", "xlsx", "--json")
    export_id = json.loads(started.out)["task_id"]
    assert cli("tasks", "watch", export_id[:8]).code == 0
    status = json.loads(cli("exports", "status", export_id[:8], "--json").out)
    assert (status["status"], status["rows"]) == ("done", 20)
    got = cli("exports", "download", export_id[:8], "-o", str(tmp_path) + "/")
    assert got.code == 0, got
    assert (tmp_path / f"stores-{export_id}.xlsx").stat().st_size > 1000


def test_a_task_that_reports_no_progress_shows_no_steps() -> None:
    import io

    from rich.console import Console
    from rich.progress import Progress

    from mallops.commands.tasks import StepsColumn

    column = StepsColumn()
    with Progress(column, console=Console(file=io.StringIO())) as progress:
        task = progress.add_task("export", total=None)
        assert column.render(progress.tasks[0]).plain == ""  # not "0/?"
        progress.update(task, total=10, completed=3)
        assert column.render(progress.tasks[0]).plain.strip() == "3/10"
