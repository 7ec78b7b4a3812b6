"""The console's workflows over plain HTTP: the list (the role's workflows, newest first, paged, filtered),
a workflow as its steps (stages, parallel groups, each step's state, task link and error), Retry and Revoke
behind the API's permissions and the session's CSRF token, in both languages.

The workflows are stored through :mod:`shared.workflows` (as the gateway and the workers store them) and
never published, so no worker of the run can change them under the test; Retry publishes the failed step
again, as the API does."""

from __future__ import annotations

import html
import re
import uuid

import pytest
from sqlalchemy import select

from shared import workflows
from shared.db import session_scope
from shared.models import AuditEntry, Workflow
from shared.settings import Settings
from shared.tokens import create_token
from tests.services.gateway.conftest import GatewayClient, Tokens
from tests.services.gateway.test_console import browser, csrf_of, sign_in

pytestmark = pytest.mark.integration

PARALLEL_THEN_ONE: list[dict[str, object]] = [
    {"parallel": [{"name": "daily", "task_name": "test_task"}, {"name": "access", "task_name": "test_task"}]},
    {"name": "cleanup", "task_name": "test_task"},
]


def stored(settings: Settings, owner: str, definition: list[dict[str, object]] = PARALLEL_THEN_ONE) -> str:
    """A workflow of ``owner``, its first steps claimed (SENT), as POST /api/v1/workflows stores it."""
    with session_scope(settings) as session:
        workflow, _ = workflows.create(session, workflows.plan(definition), owner=owner)
        return workflow.id


def failed_at_access(settings: Settings, owner: str) -> str:
    """daily succeeded, access failed (reason ``boom``), cleanup never ran: the workflow is FAILURE."""
    workflow_id = stored(settings, owner)
    with session_scope(settings) as session:
        steps = {step.name: str(step.task_id) for step in session.get(Workflow, workflow_id).steps}  # type: ignore[union-attr]
        assert workflows.step_succeeded(session, workflow_id, "daily", steps["daily"], {"ok": True}) == []
        workflows.step_started(session, workflow_id, "access", steps["access"])
        assert workflows.step_failed(session, workflow_id, "access", steps["access"], "ValueError: boom")
    return workflow_id


def status_of(settings: Settings, workflow_id: str) -> tuple[str, dict[str, tuple[str, int]]]:
    with session_scope(settings) as session:
        workflow = session.get(Workflow, workflow_id)
        assert workflow is not None
        return workflow.status, {step.name: (step.state, step.attempts) for step in workflow.steps}


def test_a_workflow_shows_its_stages_and_retries_from_the_failed_step(
    client: GatewayClient, tokens: Tokens, migrated: Settings
) -> None:
    workflow_id = failed_at_access(migrated, tokens.alice_name)
    with browser(client) as alice:
        sign_in(alice, tokens.alice)
        assert 'href="/console/workflows"' in alice.get("/console/").text  # in the navigation
        page = alice.get(f"/console/workflows/{workflow_id}")
        assert page.status_code == 200, page.text
        text = html.unescape(page.text)
        # the parallel group first (two steps side by side), then the step after it
        stages = re.findall(r'<li class="stage( parallel)?">(.*?)</ul>', text, re.S)
        assert [bool(parallel) for parallel, _ in stages] == [True, False]
        assert re.findall(r'data-step="([^"]+)"', stages[0][1]) == ["daily", "access"]
        assert re.findall(r'data-step="([^"]+)"', stages[1][1]) == ["cleanup"]
        assert "2 steps in parallel" in text
        states = dict(
            re.findall(
                r'data-step="([^"]+)">\s*<span class="step-name">[^<]*</span>\s*<span class="state [^"]+">([^<]+)', text
            )
        )
        assert states == {"daily": "Succeeded", "access": "Failed", "cleanup": "Pending"}
        with session_scope(migrated) as session:
            task_ids = {s.name: s.task_id for s in session.get(Workflow, workflow_id).steps}  # type: ignore[union-attr]
        assert f'href="/console/tasks/{task_ids["daily"]}"' in text
        assert f'href="/console/tasks/{task_ids["access"]}"' in text
        assert '<p class="error step-error">ValueError: boom</p>' in text
        assert "step 'access' (test_task) failed: ValueError: boom" in text  # the workflow's reason
        assert 'id="retry"' in text
        assert 'id="revoke"' not in text
        done = alice.post(f"/console/workflows/{workflow_id}/retry", data={"csrf_token": csrf_of(page.text)})
        assert done.status_code == 303
        assert done.headers["location"] == f"/console/workflows/{workflow_id}?notice=workflow_retried"
        after = alice.get(done.headers["location"]).text
        assert "Retried from its failed step" in after
    status, steps = status_of(migrated, workflow_id)
    # resumed: a worker of the run (another test's, on this Redis) may already have run the retried steps
    assert status in {"STARTED", "SUCCESS"}
    assert steps["daily"] == ("SUCCESS", 1)  # kept, not run again
    assert steps["access"][1] == 2
    assert steps["access"][0] in {"SENT", "STARTED", "SUCCESS"}
    with session_scope(migrated) as session:
        actions = session.scalars(select(AuditEntry.action).where(AuditEntry.target == workflow_id)).all()
    assert "workflow.retry" in actions  # the API's own audit entry


def test_a_viewer_sees_every_workflow_without_buttons_and_forged_posts_are_refused(
    client: GatewayClient, tokens: Tokens, migrated: Settings
) -> None:
    failed = failed_at_access(migrated, tokens.alice_name)
    running = stored(migrated, tokens.alice_name)
    with session_scope(migrated) as session:
        viewer = create_token(session, f"viewer-{uuid.uuid4().hex[:8]}", "viewer")
    with browser(client) as http:
        sign_in(http, viewer)
        listed = http.get("/console/workflows")
        assert listed.status_code == 200
        assert failed in listed.text
        assert 'id="f-owner"' in listed.text
        page = http.get(f"/console/workflows/{failed}")
        assert page.status_code == 200
        assert 'id="retry"' not in page.text
        assert 'id="revoke"' not in page.text
        assert 'id="revoke"' not in http.get(f"/console/workflows/{running}").text
        csrf = csrf_of(page.text)
        for path in (f"/console/workflows/{failed}/retry", f"/console/workflows/{running}/revoke"):
            forged = http.post(path, data={"csrf_token": csrf})
            assert forged.status_code == 403, path
            assert "may not do this" in forged.text
    assert status_of(migrated, failed)[0] == "FAILURE"
    assert status_of(migrated, running)[0] == "PENDING"
    with browser(client) as alice, browser(client) as bob:
        sign_in(alice, tokens.alice)
        sign_in(bob, tokens.bob)
        assert bob.get(f"/console/workflows/{running}").status_code == 404  # not bob's
        assert running not in bob.get("/console/workflows").text
        page = alice.get(f"/console/workflows/{running}")
        # an unfinished workflow's steps refresh live from the page's fragment; a finished one's do not
        live = f'data-live-src="/console/workflows/{running}?fragment=1"'
        assert live in page.text
        fragment = alice.get(f"/console/workflows/{running}", params={"fragment": "1"})
        assert fragment.status_code == 200
        assert fragment.text.lstrip().startswith('<ol class="stages">')
        assert "<html" not in fragment.text
        assert 'data-step="cleanup"' in fragment.text
        assert "data-live-src" not in alice.get(f"/console/workflows/{failed}").text
        with browser(client) as stranger:  # not signed in: no page to redirect a fragment to
            assert stranger.get(f"/console/workflows/{running}?fragment=1").status_code == 401
        assert 'id="revoke"' in page.text
        assert 'id="retry"' not in page.text
        # the owner's form without its session's CSRF token does nothing
        for data in ({}, {"csrf_token": "forged"}, {"csrf_token": csrf_of(bob.get("/console/").text)}):
            assert alice.post(f"/console/workflows/{running}/revoke", data=data).status_code == 403
        assert status_of(migrated, running)[0] == "PENDING"
        done = alice.post(f"/console/workflows/{running}/revoke", data={"csrf_token": csrf_of(page.text)})
        assert done.status_code == 303
        assert "Revoked: its steps not yet run will not run." in alice.get(done.headers["location"]).text
    status, steps = status_of(migrated, running)
    assert status == "REVOKED"
    assert {state for state, _ in steps.values()} == {"REVOKED"}


def test_the_list_is_newest_first_paged_filtered_and_in_chinese(
    client: GatewayClient, tokens: Tokens, migrated: Settings
) -> None:
    with session_scope(migrated) as session:
        owner = f"wf-pager-{uuid.uuid4().hex[:8]}"
        token = create_token(session, owner, "user")
    ids = [stored(migrated, owner, [{"task_name": "test_task"}]) for _ in range(26)]
    failed = failed_at_access(migrated, owner)
    with browser(client) as http:
        sign_in(http, token)
        first = http.get("/console/workflows")
        assert first.status_code == 200
        assert "1–25 of 27" in first.text
        rows = re.findall(r'href="/console/workflows/([0-9a-f-]{36})"', first.text)
        assert rows == [failed, *reversed(ids)][:25]
        older = re.search(r'href="(/console/workflows\?offset=25)" rel="next"', first.text)
        assert older, first.text
        second = http.get(older.group(1))
        assert re.findall(r'href="/console/workflows/([0-9a-f-]{36})"', second.text) == ids[:2][::-1]
        assert "26–27 of 27" in second.text
        assert 'rel="next"' not in second.text
        only_failed = http.get("/console/workflows", params={"status": "FAILURE"})
        assert re.findall(r'href="/console/workflows/([0-9a-f-]{36})"', only_failed.text) == [failed]
        assert 'id="f-owner"' not in only_failed.text  # a user reads only its own
        bad = http.get("/console/workflows", params={"status": "NOPE", "name": "nope"})
        assert "There is no workflow named nope." in bad.text
        assert "There is no status NOPE." in bad.text
    with browser(client, "zh-CN,zh;q=0.9") as http:
        sign_in(http, token)
        page = http.get(f"/console/workflows/{failed}")
        assert "工作流" in page.text
        assert "失败" in page.text
        assert "从失败的步骤重试" in page.text
        assert "第 1–25 条，共 27 条" in http.get("/console/workflows").text


def test_every_audit_action_has_a_label_in_both_languages() -> None:
    """The audit page names each action in the page's language (the workflow actions among them)."""
    from services.gateway.console.i18n import LANGUAGES, catalog
    from services.gateway.console.views import AUDIT_ACTIONS

    assert {"workflow.submit", "workflow.retry", "workflow.revoke"} <= set(AUDIT_ACTIONS)
    for language in LANGUAGES:
        missing = [action for action in AUDIT_ACTIONS if f"action.{action}" not in catalog(language)]
        assert missing == [], (language, missing)
