"""A workflow in Debian's Chromium against a real gateway, worker, monitor, Redis and database: a parallel
group with a failing step, seen from the navigation to the workflow's steps, retried from the failed step
(whose steps then follow the retry live); axe-core on both pages."""

from __future__ import annotations

import re
from collections.abc import Callable

import httpx
import pytest
from playwright.sync_api import expect

from tests.console.browser import sign_in
from tests.console.conftest import Stack, Tab
from tests.harness import wait_until

pytestmark = pytest.mark.integration

STEPS = [
    {
        "parallel": [
            {"name": "fine", "task_name": "test_task", "kwargs": {"message": "fine"}},
            {"name": "broken", "task_name": "test_task", "kwargs": {"message": "broken", "fail": True}},
        ]
    },
    {"name": "after", "task_name": "test_task", "kwargs": {"message": "after"}},
]


def test_a_failed_workflow_shows_its_steps_and_is_retried_from_the_failed_one(
    stack: Stack, open_tab: Callable[[str], Tab]
) -> None:
    auth = {"Authorization": f"Bearer {stack.admin}"}
    started = httpx.post(f"{stack.url}/api/v1/workflows", json={"steps": STEPS}, headers=auth, timeout=30)
    assert started.status_code == 202, started.text
    workflow_id = started.json()["workflow_id"]

    def failed() -> bool:
        answer = httpx.get(f"{stack.url}/api/v1/workflows/{workflow_id}", headers=auth, timeout=10).json()
        return bool(answer["status"] == "FAILURE")

    wait_until(failed, timeout=60, interval=0.2, message="the workflow's failure")

    tab = open_tab("en")
    page = tab.page
    sign_in(page, stack.admin)
    page.get_by_role("link", name="Workflows", exact=True).click()
    expect(page.get_by_role("heading", name="Workflows", level=1)).to_be_visible()
    tab.assert_accessible()
    page.locator(f"a[href='/console/workflows/{workflow_id}']").click()
    expect(page.locator("#workflow-status")).to_have_text("Failed")
    expect(page.get_by_text("2 steps in parallel")).to_be_visible()
    broken = page.locator("li.step[data-step='broken']")
    expect(broken.locator(".state")).to_have_text("Failed")
    expect(broken.locator(".step-error")).to_be_visible()
    expect(page.locator("li.step[data-step='fine'] .state")).to_have_text("Succeeded")
    expect(page.locator("li.step[data-step='after'] .state")).to_have_text("Pending")
    expect(page.locator("#workflow-reason")).to_contain_text("step 'broken' (test_task) failed")
    tab.assert_accessible()
    broken.get_by_role("link", name="test_task").click()  # the step's task page
    expect(page).to_have_url(re.compile(r"/console/tasks/[0-9a-f-]{36}$"))
    page.go_back()
    page.get_by_role("button", name="Retry from the failed step").click()
    expect(page.get_by_role("status")).to_have_text("Retried from its failed step; the succeeded steps are kept.")
    expect(page.locator("li.step[data-step='fine'] .state")).to_have_text("Succeeded")  # kept, not run again
    # the retried step runs again and fails again: the steps follow it live, without a reload
    expect(broken.locator(".help")).to_have_text("attempt 2")
    expect(broken.locator(".state")).to_have_text("Failed", timeout=30_000)
