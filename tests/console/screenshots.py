"""``scripts/screenshots``: a screenshot of each console page at 1366x768, in English and Chinese, from the
demo mall, into docs/console/. Not a test: the files change only when someone means them to.

It runs ``mallops dev`` in a temporary data directory on free ports (its own Redis, the demo mall, every
service), submits a few tasks (one that fails, a long one), and photographs the pages in Debian's
Chromium. ``mallops dev`` is stopped by its PID at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
from playwright.sync_api import Page

from tests.console import browser as chrome

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "docs" / "console"
ADMIN_TOKEN = "screenshots-admin-token-0123456789"  # a throwaway stack's own token


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait(check: object, what: str, timeout: float = 120.0) -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()  # type: ignore[operator]
        if value:
            return value
        time.sleep(0.2)
    raise SystemExit(f"screenshots: timed out waiting for {what}")


def start_dev(data_dir: Path) -> tuple[subprocess.Popen[bytes], dict[str, str]]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("MALLOPS_")} | {
        "MALLOPS_DATA_DIR": str(data_dir),
        "MALLOPS_GATEWAY_PORT": str(free_port()),
        "MALLOPS_MONITOR_PORT": str(free_port()),
        "MALLOPS_SMTP_PORT": str(free_port()),
        "MALLOPS_BOOTSTRAP_ADMIN_TOKEN": ADMIN_TOKEN,
        "MALLOPS_LOG_LEVEL": "WARNING",
    }
    log = (data_dir / "dev.log").open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "mallops", "dev"],
        env=env,
        cwd=data_dir,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    stack_file = data_dir / "dev" / "stack.json"

    def ready() -> bool:
        if process.poll() is not None:
            raise SystemExit(f"mallops dev exited; see {data_dir / 'dev.log'}")
        return stack_file.exists()

    wait(ready, "mallops dev", timeout=300)
    info = json.loads(stack_file.read_text())
    return process, {"url": info["gateway_url"], "env": json.dumps(env)}


def submit(url: str, token: str, task_name: str, **kwargs: object) -> str:
    answer = httpx.post(
        f"{url}/api/v1/tasks",
        headers={"Authorization": f"Bearer {token}"},
        json={"task_name": task_name, "kwargs": kwargs},
        timeout=30,
    )
    answer.raise_for_status()
    return str(answer.json()["task_id"])


def status(url: str, token: str, task_id: str) -> str:
    answer = httpx.get(f"{url}/api/v1/tasks/{task_id}", headers={"Authorization": f"Bearer {token}"}, timeout=10)
    return str(answer.json()["status"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--only", choices=["workflows"], help="Only these pages (the others are left as they are).")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="mallops-screens-") as tmp:
        process, info = start_dev(Path(tmp))
        try:
            if args.only == "workflows":
                shoot_workflows_only(info["url"], args.out)
            else:
                shoot(info["url"], args.out)
        finally:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(10)


def shoot(url: str, out: Path) -> None:
    token = ADMIN_TOKEN
    for report in ("generate_daily_report", "calculate_monthly_revenue", "check_pending_bills"):
        submit(url, token, report)
    for i in range(6):
        submit(url, token, "test_task", message=f"ping {i}")
    failed = submit(url, token, "test_task", message="a failure to retry", fail=True)
    wait(lambda: status(url, token, failed) == "FAILURE", "the failing task")
    failed_workflow = run_workflows(url, token)
    with chrome.chromium() as browser:
        for language in ("en", "zh_CN"):
            context, _ = chrome.new_context(browser, url, language)
            page = context.new_page()
            page.goto("/console/login")
            page.screenshot(path=str(out / f"login.{language}.png"))
            chrome.sign_in(page, token)
            page.goto("/console/")
            page.screenshot(path=str(out / f"overview.{language}.png"))
            page.goto("/console/tasks")
            page.screenshot(path=str(out / f"tasks.{language}.png"))
            page.goto(f"/console/tasks/{failed}")
            page.screenshot(path=str(out / f"task-failed.{language}.png"))
            running = submit(url, token, "long_running_task", steps=10, step_seconds=1.0)
            page.goto(f"/console/tasks/{running}")
            page.wait_for_function("document.getElementById('task-progress').value >= 3", timeout=60_000)
            page.reload()  # the timeline is drawn by the server: received and started by now
            page.wait_for_function("document.getElementById('task-progress').value >= 4", timeout=60_000)
            page.screenshot(path=str(out / f"task-running.{language}.png"))
            shoot_later_pages(page, url, token, out, language)
            shoot_workflows(page, failed_workflow, out, language)
            context.close()
        context, _ = chrome.new_context(browser, url, "en")
        page = context.new_page()
        page.goto("/docs")
        page.locator(".opblock").first.wait_for()
        page.screenshot(path=str(out / "docs.png"))
        context.close()
    print(f"screenshots: {len(list(out.glob('*.png')))} files in {out}")


def shoot_later_pages(page: Page, url: str, token: str, out: Path, language: str) -> None:
    """Failures and dead letters, schedules (and the add form), workers and queues, reports and exports (and
    an export followed to its file), the audit trail."""
    page.goto("/console/failures")
    page.screenshot(path=str(out / f"failures.{language}.png"))
    page.locator("#bulk-retry").click()
    page.locator("#confirm").wait_for()
    page.screenshot(path=str(out / f"failures-confirm.{language}.png"))
    page.goto("/console/schedules")
    page.screenshot(path=str(out / f"schedules.{language}.png"))
    page.goto("/console/schedules/new")
    page.screenshot(path=str(out / f"schedule-form.{language}.png"))
    page.goto("/console/workers")
    page.locator("#workers").wait_for()
    page.screenshot(path=str(out / f"workers.{language}.png"))
    exported = submit(url, token, "export_data", dataset="bills", format="xlsx")
    wait(lambda: status(url, token, exported) == "SUCCESS", "the export")
    page.goto("/console/reports")
    page.screenshot(path=str(out / f"reports.{language}.png"))
    page.goto(f"/console/exports/{exported}")
    page.locator("#download").wait_for()
    page.screenshot(path=str(out / f"export.{language}.png"))
    page.goto("/console/audit")
    page.screenshot(path=str(out / f"audit.{language}.png"))


# a parallel group with a failing step, then one step: the workflow stops at the failure
FAILING_WORKFLOW = [
    {
        "parallel": [
            {"name": "daily_report", "task_name": "generate_daily_report"},
            {"name": "access_statistics", "task_name": "test_task", "kwargs": {"message": "stats", "fail": True}},
        ]
    },
    {"name": "cleanup", "task_name": "cleanup_expired_data"},
]


def run_workflows(url: str, token: str) -> str:
    """A nightly_reports that succeeds and an ad-hoc workflow that fails; the failed one's id."""
    headers = {"Authorization": f"Bearer {token}"}

    def start(body: dict[str, object]) -> str:
        answer = httpx.post(f"{url}/api/v1/workflows", headers=headers, json=body, timeout=30)
        answer.raise_for_status()
        return str(answer.json()["workflow_id"])

    def status_of(workflow_id: str) -> str:
        return str(httpx.get(f"{url}/api/v1/workflows/{workflow_id}", headers=headers, timeout=10).json()["status"])

    nightly = start({"name": "nightly_reports"})
    failing = start({"steps": FAILING_WORKFLOW})
    wait(lambda: status_of(nightly) == "SUCCESS", "nightly_reports")
    wait(lambda: status_of(failing) == "FAILURE", "the failing workflow")
    return failing


def shoot_workflows(page: Page, failed: str, out: Path, language: str) -> None:
    """The workflows, and the failed one as its steps."""
    page.goto("/console/workflows")
    page.screenshot(path=str(out / f"workflows.{language}.png"))
    page.goto(f"/console/workflows/{failed}")
    page.screenshot(path=str(out / f"workflow-failed.{language}.png"))


def shoot_workflows_only(url: str, out: Path) -> None:
    """``--only workflows``: the workflow pages alone (the others' files stay as they are)."""
    failed = run_workflows(url, ADMIN_TOKEN)
    with chrome.chromium() as browser:
        for language in ("en", "zh_CN"):
            context, _ = chrome.new_context(browser, url, language)
            page = context.new_page()
            chrome.sign_in(page, ADMIN_TOKEN)
            shoot_workflows(page, failed, out, language)
            context.close()
    print(f"screenshots: the workflow pages in {out}")


if __name__ == "__main__":
    main()
