"""The console in Debian's Chromium against a real gateway process, worker, monitor, Redis and database:
sign in, filter the tasks, follow a long task's progress to its end, retry a failure, sign out; what a
user may not do it does not see and the server refuses anyway; both languages; axe-core on every page;
/docs and /redoc with every request to another host blocked."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path

import pytest
from playwright.sync_api import expect

from tests.console.browser import sign_in
from tests.console.conftest import Stack, Tab

pytestmark = pytest.mark.integration

# Playwright runs this in every page before the page's own script: it notes each value the progress bar
# is set to, as [value, max], in sessionStorage (which outlives the reload the page makes at the end).
RECORD_PROGRESS = """
(() => {
  const value = Object.getOwnPropertyDescriptor(HTMLProgressElement.prototype, "value");
  Object.defineProperty(HTMLProgressElement.prototype, "value", {
    configurable: true,
    get() { return value.get.call(this); },
    set(v) {
      value.set.call(this, v);
      const seen = JSON.parse(sessionStorage.getItem("progress") || "[]");
      seen.push([Number(v), Number(this.max)]);
      sessionStorage.setItem("progress", JSON.stringify(seen));
    },
  });
})();
"""


def test_docs_and_redoc_render_the_api_offline(stack: Stack, open_tab: Callable[[str], Tab]) -> None:
    tab = open_tab("en")
    tab.page.goto("/docs")
    path = tab.page.locator(".opblock-summary-path", has_text="/api/v1/tasks/{task_id}/retry")
    expect(path).to_be_visible(timeout=30_000)  # Swagger UI builds the page from the whole schema: slow under load
    expect(tab.page.get_by_text("mallops gateway").first).to_be_visible()
    assert tab.offline.blocked == []  # Swagger UI did not even try another host
    tab.page.goto("/redoc")
    # ReDoc renders the whole schema too: as slow under load as Swagger UI above
    expect(tab.page.get_by_role("heading", name=re.compile("Submit a task")).first).to_be_attached(timeout=30_000)
    # ReDoc's bundle has its "Redocly" logo URL built in (hidden when it does not load); nothing else left
    assert set(tab.offline.blocked) <= {"https://cdn.redoc.ly/redoc/logo-mini.svg"}


def test_an_admin_signs_in_filters_follows_progress_retries_and_signs_out(
    stack: Stack, open_tab: Callable[[str], Tab], stores: int
) -> None:
    tab = open_tab("en")
    page = tab.page
    page.goto("/")
    expect(page).to_have_url(re.compile(r"/console/login\?next="))
    tab.assert_accessible()
    sign_in(page, stack.admin)
    expect(page.get_by_role("heading", name="Overview", level=1)).to_be_visible()
    expect(page.get_by_role("rowheader", name="Last hour")).to_be_visible()
    expect(page.get_by_text("Workers online")).to_be_visible()
    tab.assert_accessible()

    failed = stack.submit(stack.admin, "test_task", message="console failure", fail=True)
    ok = stack.submit(stack.admin, "test_task", message="console success")
    stack.recorded(stack.admin, failed)
    stack.recorded(stack.admin, ok)

    # the tasks, filtered to this admin's failures
    page.get_by_role("link", name="Tasks", exact=True).click()
    expect(page.get_by_role("heading", name="Tasks", level=1)).to_be_visible()
    page.get_by_label("Status").select_option("FAILURE")
    page.get_by_label("Owner").fill(stack.admin_name)
    page.get_by_role("button", name="Filter").click()
    expect(page).to_have_url(re.compile("status=FAILURE"))
    rows = page.locator("#task-rows tr")
    expect(rows).to_have_count(1)
    expect(rows.first).to_contain_text("Failed")
    expect(rows.first).to_contain_text(re.compile(r"ago|now"))
    tab.assert_accessible()

    # the failure, retried from its page
    rows.first.get_by_role("link").click()
    expect(page.get_by_role("heading", name="Error")).to_be_visible()
    expect(page.get_by_text("console failure").first).to_be_visible()
    tab.assert_accessible()
    page.get_by_role("button", name="Retry").click()
    expect(page.get_by_role("status")).to_have_text("Submitted again as this new task.")
    retry_id = page.url.rsplit("/", 1)[-1].split("?")[0]
    assert retry_id != failed
    assert stack.task(stack.admin, retry_id)["retry_of"] == failed

    # a long task: the progress bar follows its events to the end (each value the bar is given is kept
    # in sessionStorage, which outlives the reload the page makes at the end)
    page.add_init_script(RECORD_PROGRESS)
    long_id = stack.submit(stack.admin, "long_running_task", steps=6, step_seconds=0.5)
    page.goto(f"/console/tasks/{long_id}")
    bar = page.locator("#task-progress")
    expect(bar).to_have_attribute("max", "6", timeout=30_000)
    # (read from what the bar was given: under load the task may end, and the page reload, before a poll)
    page.wait_for_function(
        "JSON.parse(sessionStorage.getItem('progress') || '[]').some(([value]) => value >= 3)", timeout=30_000
    )
    tab.assert_accessible()
    # at the end the page reloads by itself with the result and the whole timeline
    expect(page.locator("#task-status")).to_have_text("Succeeded", timeout=30_000)
    expect(page.get_by_role("heading", name="Result")).to_be_visible()
    expect(page.locator(".timeline li.done")).to_have_count(4, timeout=30_000)
    seen = json.loads(page.evaluate("sessionStorage.getItem('progress') || '[]'"))
    assert seen[-1] == [6, 6], seen  # the bar reached the end
    assert len(seen) >= 3, seen
    assert seen == sorted(seen), seen  # step by step, never backwards

    # an export requested from the form the catalog's schema makes: its progress to the end, then its file
    page.evaluate("sessionStorage.removeItem('progress')")
    page.get_by_role("link", name="Reports", exact=True).click()
    expect(page.get_by_role("heading", name="Request an export")).to_be_visible()
    tab.assert_accessible()
    page.get_by_label("Dataset").select_option("stores")
    page.get_by_label("File format").select_option("csv")
    page.get_by_role("button", name="Export", exact=True).click()
    expect(page.get_by_role("status")).to_contain_text("Export requested")
    download_link = page.get_by_role("link", name=re.compile("Download"))
    expect(download_link).to_be_visible(timeout=60_000)  # the page reloads itself at the end
    expect(page.locator("#task-status")).to_have_text("Succeeded")
    tab.assert_accessible()
    seen = json.loads(page.evaluate("sessionStorage.getItem('progress') || '[]'"))
    # A small export can end before the page subscribes to its events (the page then opens on the finished
    # task: its status and the link, as asserted above; the long task above shows the bar followed step by
    # step). When the bar was given values, it reached the end: every row written.
    if seen:
        assert seen[-1][0] == seen[-1][1] >= stores, seen
    with page.expect_download() as download:
        download_link.click()
    lines = Path(download.value.path()).read_text(encoding="utf-8-sig").splitlines()
    assert len(lines) == (seen[-1][1] if seen else stores) + 1  # a header and every row
    assert any("Console store 7," in line for line in lines)

    # the failures page: a bulk retry of this admin's failures not yet retried, behind a confirmation
    # that shows the count (the first failure was retried above, its retry failed too)
    more = [stack.submit(stack.admin, "test_task", message=f"bulk {i}", fail=True) for i in range(2)]
    for task_id in (*more, retry_id):
        stack.recorded(stack.admin, task_id)
    page.get_by_role("link", name="Failures", exact=True).click()
    expect(page.get_by_role("heading", name="Failures and dead letters", level=1)).to_be_visible()
    page.get_by_label("Owner").fill(stack.admin_name)
    page.get_by_role("button", name="Filter").click()
    expect(page.locator("#failure-rows tr")).to_have_count(4)
    expect(page.get_by_role("heading", name=re.compile("Dead letters"))).to_be_visible()
    tab.assert_accessible()
    page.get_by_role("button", name="Retry all that match…").click()
    expect(page.locator("#confirm-message")).to_contain_text("Retry 3 failed or revoked tasks (of 3 that match)")
    expect(page.get_by_role("button", name="Yes, do it")).to_be_focused()
    tab.assert_accessible()
    page.keyboard.press("Enter")
    expect(page.get_by_role("status")).to_have_text("Retried 3 tasks.")

    # a schedule added from its form: the next run in the mall's time, "in x minutes" beside it
    entry = f"console-{stack.admin_name[-8:]}"
    page.get_by_role("link", name="Schedules", exact=True).click()
    expect(page.get_by_role("heading", name="Schedules", level=1)).to_be_visible()
    tab.assert_accessible()
    page.get_by_role("link", name="Add a schedule").click()
    page.get_by_label("Name", exact=True).fill(entry)
    page.get_by_label("Task", exact=True).select_option("test_task")
    page.get_by_label("Every (seconds)").fill("600")
    page.get_by_label("Arguments (JSON)").fill('{"message": "every ten minutes"}')
    tab.assert_accessible()
    page.get_by_role("button", name="Save").click()
    expect(page.get_by_role("status")).to_contain_text("The schedule is saved")
    row = page.locator(f"#entry-{entry}")
    expect(row).to_contain_text("every 10 minutes")
    expect(row.locator(".ago").first).to_have_text(re.compile(r"in (9|10) minutes"))
    row.get_by_role("button", name=f"Disable: {entry}").click()
    expect(page.locator(f"#entry-{entry}")).to_contain_text("Disabled")

    # the audit trail (an admin's page) holds what this admin did here, newest first
    page.get_by_role("link", name="Audit", exact=True).click()
    page.get_by_label("Who").fill(stack.admin_name)
    page.get_by_role("button", name="Filter").click()
    rows = page.locator("#audit-rows tr")
    expect(rows.first).to_contain_text("schedule changed")  # the disable above
    expect(page.locator("#audit-rows tr", has_text="schedule added")).to_have_count(1)
    expect(page.locator("#audit-rows tr", has_text="export downloaded")).to_have_count(1)
    tab.assert_accessible()

    # sign out: the session is gone
    page.get_by_role("button", name="Sign out").click()
    expect(page.get_by_role("status")).to_have_text("You have signed out.")
    page.goto("/console/tasks")
    expect(page).to_have_url(re.compile(r"/console/login"))


def test_a_user_in_chinese_sees_no_revoke_and_forged_posts_are_refused(
    stack: Stack, open_tab: Callable[[str], Tab]
) -> None:
    tab = open_tab("zh_CN")
    page = tab.page
    # with the keyboard alone: the token field has the focus, Enter sends the form
    page.goto("/console/login")
    expect(page.get_by_label("API 令牌")).to_be_focused()  # typing before the autofocus lands loses keys
    page.keyboard.type(stack.user)
    page.keyboard.press("Enter")
    expect(page.get_by_role("heading", name="概览", level=1)).to_be_visible()
    assert page.locator("html").get_attribute("lang") == "zh-CN"
    expect(page.get_by_role("rowheader", name="最近一小时")).to_be_visible()
    expect(page.get_by_text("您自己的任务。")).to_be_visible()
    expect(page.get_by_text("在线工作进程")).to_have_count(0)  # workers are an admin's
    expect(page.get_by_role("link", name="工作进程与队列")).to_have_count(0)
    expect(page.get_by_role("link", name="审计")).to_have_count(0)
    tab.assert_accessible()
    page.get_by_role("link", name="任务", exact=True).click()
    expect(page.get_by_role("heading", name="任务", level=1)).to_be_visible()
    expect(page.get_by_label("提交者")).to_have_count(0)  # a user filters only its own tasks
    expect(page.get_by_text("实时更新中")).to_be_visible()
    tab.assert_accessible()
    # the list updates by itself: a task submitted now appears without a reload
    fresh = stack.submit(stack.user, "test_task", message="live")
    expect(page.locator(f"#task-rows a[href='/console/tasks/{fresh}']")).to_be_visible(timeout=30_000)
    row = page.locator("#task-rows tr", has=page.locator(f"a[href='/console/tasks/{fresh}']"))
    expect(row.locator("time")).to_have_text(re.compile(r"^\d{4}年\d{1,2}月\d{1,2}日 \d{2}:\d{2}:\d{2}$"))
    expect(row.locator(".ago")).to_have_text(re.compile("秒钟前|分钟前"))
    # the skip link is the first stop of the keyboard
    page.keyboard.press("Tab")
    expect(page.get_by_role("link", name="跳到正文")).to_be_focused()

    running = stack.submit(stack.user, "long_running_task", steps=40, step_seconds=0.5)
    page.goto(f"/console/tasks/{running}")
    expect(page.get_by_role("heading", name="进度")).to_be_visible()
    expect(page.locator("#task-status")).to_have_text(re.compile("已开始|进行中"), timeout=30_000)
    expect(page.get_by_role("button", name="撤销")).to_have_count(0)
    tab.assert_accessible()

    # a forged revoke with this session's own CSRF token: refused by the server
    csrf = page.locator("form[action='/console/logout'] input[name=csrf_token]").get_attribute("value")
    forged = page.request.post(f"/console/tasks/{running}/revoke", form={"csrf_token": str(csrf), "terminate": "on"})
    assert forged.status == 403
    assert "您的角色无权执行此操作" in forged.text()
    # and any form without the CSRF token
    unsigned = page.request.post(f"/console/tasks/{running}/retry", form={})
    assert unsigned.status == 403
    assert stack.task(stack.admin, running)["status"] in ("STARTED", "PROGRESS")

    # the admin may revoke it, from its page
    admin = open_tab("en")
    sign_in(admin.page, stack.admin)
    admin.page.goto(f"/console/tasks/{running}")
    admin.page.get_by_role("button", name="Revoke").click()
    expect(admin.page.get_by_role("status")).to_have_text(re.compile("Revoked"))
    expect(admin.page.locator("#task-status")).to_have_text("Revoked", timeout=30_000)

    # the language switch
    page.get_by_role("link", name="English").click()
    expect(page.locator("#task-status")).to_have_text("Revoked")
    assert page.locator("html").get_attribute("lang") == "en"


def test_a_viewer_reads_failures_but_has_no_buttons_and_its_forged_posts_are_refused(
    stack: Stack, open_tab: Callable[[str], Tab]
) -> None:
    failed = stack.submit(stack.admin, "test_task", message="for the viewer", fail=True)
    stack.recorded(stack.admin, failed)
    tab = open_tab("en")
    page = tab.page
    sign_in(page, stack.viewer)
    page.get_by_role("link", name="Failures", exact=True).click()
    expect(page.locator(f"#failure-rows a[href='/console/tasks/{failed}']")).to_be_visible()
    expect(page.get_by_role("button", name=re.compile("Retry"))).to_have_count(0)
    expect(page.get_by_role("heading", name=re.compile("Dead letters"))).to_have_count(0)
    tab.assert_accessible()
    page.goto(f"/console/tasks/{failed}")
    expect(page.get_by_role("heading", name="Error")).to_be_visible()
    expect(page.get_by_role("button", name="Retry")).to_have_count(0)
    csrf = str(page.locator("form[action='/console/logout'] input[name=csrf_token]").get_attribute("value"))
    page.get_by_role("link", name="Schedules", exact=True).click()
    expect(page.locator("#schedule-rows tr").first).to_be_visible()
    expect(page.get_by_role("link", name="Add a schedule")).to_have_count(0)
    expect(page.get_by_role("button", name=re.compile("Run now|Disable|Enable"))).to_have_count(0)
    tab.assert_accessible()
    # workers and queues: a viewer may read them (a user has no such link, see the Chinese test)
    page.get_by_role("link", name="Workers", exact=True).click()
    expect(page.locator("#workers tbody tr", has_text="maintenance").first).to_contain_text("Online")
    expect(page.locator("#queues")).to_contain_text("default")
    tab.assert_accessible()
    forbidden = (
        f"/console/tasks/{failed}/retry",
        "/console/failures/retry",
        "/console/dead-letters/replay",
        "/console/schedules/new",
        "/console/schedules/check_pending_bills/run",
    )
    for path in forbidden:
        forged = page.request.post(path, form={"csrf_token": csrf, "confirm": "yes"})
        assert forged.status == 403, path
        assert "Your role may not do this." in forged.text()
        assert page.request.post(path, form={"confirm": "yes"}).status == 403  # no CSRF token


ZH_PAGES = {
    "/console/failures": "失败任务与死信",
    "/console/schedules": "定时计划",
    "/console/schedules/new": "添加定时计划",
    "/console/workers": "工作进程与队列",
    "/console/reports": "报表与导出",
    "/console/audit": "审计记录",
}
# a message key shown instead of its text: "schedules.next_run", "option.bills", ...
MESSAGE_KEY = re.compile(
    r"\b(?:nav|failures|letters|confirm|schedules|cron|workers|reports|exports|field|audit)\.[a-z_]+\b"
)


def test_every_new_page_reads_in_chinese_and_passes_axe(stack: Stack, open_tab: Callable[[str], Tab]) -> None:
    tab = open_tab("zh_CN")
    page = tab.page
    sign_in(page, stack.admin)
    for path, heading in ZH_PAGES.items():
        page.goto(path)
        expect(page.get_by_role("heading", name=heading, level=1)).to_be_visible()
        assert page.locator("html").get_attribute("lang") == "zh-CN"
        text = page.locator("body").inner_text()
        assert not MESSAGE_KEY.search(text), (path, MESSAGE_KEY.findall(text))
        tab.assert_accessible()
    # times in the mall's zone with "x ago" / "in x" beside them, in Chinese
    page.goto("/console/schedules")
    expect(page.locator("#schedule-rows .ago").first).to_have_text(re.compile("后$|前$"))
    page.goto("/console/reports")
    expect(page.get_by_label("数据集")).to_be_visible()
    expect(page.get_by_label("数据集").locator("option[value=bills]")).to_have_text("账单")
