"""The console over plain HTTP (fast request tests beside the browser tests of tests/console): sessions,
cookies, CSRF, role checks on the server, the language, and the routes the console adds to the gateway."""

from __future__ import annotations

import datetime as dt
import json
import re
import uuid
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from services.gateway.console.i18n import LANGUAGES, LOCALES_DIR, Translator, catalog_texts, negotiate
from services.gateway.console.permissions import GRANTS, can
from services.gateway.console.sessions import LOGIN_COOKIE, SESSION_COOKIE, SESSION_KEY, _digest
from services.gateway.console.views import described
from shared import dead_letter_store
from shared.catalog import CATALOG, WORKFLOWS
from shared.contracts import REVOKED_KEY
from shared.db import session_scope
from shared.dead_letter_store import LetterFilter
from shared.models import Report
from shared.permissions import ROLES
from shared.settings import Settings
from shared.tokens import Principal, create_token, revoke_token
from tests.harness import Process, RedisServer, wait_until
from tests.security.test_malformed_messages import task_body, task_headers
from tests.services.gateway.conftest import (
    GatewayClient,
    GatewayFactory,
    Tokens,
    make_export,
    make_history,
    make_report,
)

pytestmark = pytest.mark.integration

CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')


def csrf_of(html: str) -> str:
    found = CSRF.search(html)
    assert found, "no CSRF field in the page"
    return found.group(1)


def sign_in(client: httpx.Client, token: str, **headers: str) -> httpx.Response:
    form = client.get("/console/login")
    assert form.status_code == 200
    return client.post(
        "/console/login",
        data={"token": token, "csrf_token": csrf_of(form.text), "next": "/console/tasks"},
        headers=headers,
    )


def browser(client: GatewayClient, language: str = "en") -> httpx.Client:
    """A second client on the same gateway, with its own cookies (a browser of its own)."""
    return httpx.Client(base_url=str(client.base_url), timeout=30, headers={"Accept-Language": language})


def submit(client: GatewayClient, tokens: Tokens, who: str, countdown: int | None = None, **kwargs: object) -> str:
    body = {"task_name": "test_task", "kwargs": kwargs} | ({"countdown": countdown} if countdown else {})
    answer = client.post("/api/v1/tasks", headers=tokens.auth(who), json=body)
    assert answer.status_code == 202, answer.text
    return str(answer.json()["task_id"])


def test_root_sends_browsers_to_the_console_and_api_clients_keep_the_404(client: GatewayClient) -> None:
    page = client.get("/", headers={"Accept": "text/html,application/xhtml+xml"})
    assert page.status_code == 303
    assert page.headers["location"] == "/console/"
    api = client.get("/", headers={"Accept": "application/json"})
    assert api.status_code == 404
    assert api.headers["content-type"] == "application/problem+json"
    assert api.json()["detail"] == "there is no resource at /"
    assert client.get("/").status_code == 404  # no Accept at all (curl's */*): unchanged too
    assert client.post("/", headers={"Accept": "text/html"}).status_code == 404
    assert client.get("/console/").headers["location"] == "/console/login?next=%2Fconsole%2F"


def test_docs_and_redoc_load_only_the_gateways_own_assets(client: GatewayClient) -> None:
    for path in ("/docs", "/redoc"):
        html = client.get(path).text
        urls = re.findall(r'(?:src|href|url)\s*[:=]\s*["\']([^"\']+)["\']', html)
        assert urls, html
        assert all(url.startswith("/") for url in urls), (path, urls)
        for url in urls:
            assert client.get(url).status_code == 200, url


def test_sign_in_sets_a_strict_httponly_cookie_that_expires(
    gateway: GatewayFactory, tokens: Tokens, redis_server: RedisServer
) -> None:
    with gateway(console_session_hours=0.5) as client, browser(client) as http:
        answer = sign_in(http, tokens.alice)
        assert answer.status_code == 303
        assert answer.headers["location"] == "/console/tasks"
        cookie = next(c for c in answer.headers.get_list("set-cookie") if c.startswith(SESSION_COOKIE + "="))
        attributes = {part.strip().split("=")[0].lower() for part in cookie.split(";")}
        assert {"httponly", "max-age", "path"} <= attributes
        assert "samesite=strict" in cookie.lower()
        assert "max-age=1800" in cookie.lower()
        assert "secure" not in attributes  # plain HTTP
        session_id = http.cookies[SESSION_COOKIE]
        ttl = redis_server.client(2).ttl(SESSION_KEY + _digest(session_id))
        assert 1700 < ttl <= 1800
        stored = redis_server.client(2).get(SESSION_KEY + _digest(session_id))
        assert stored is not None
        assert tokens.alice.encode() not in stored  # only the token's hash is kept
        assert http.get("/console/tasks").status_code == 200
        # behind a TLS proxy the cookie is Secure
        with browser(client) as proxied:
            answer = sign_in(proxied, tokens.alice, **{"X-Forwarded-Proto": "https"})
            cookie = next(c for c in answer.headers.get_list("set-cookie") if c.startswith(SESSION_COOKIE + "="))
            assert "secure" in {part.strip().lower() for part in cookie.split(";")}


def test_sign_in_refuses_a_bad_token_and_a_missing_or_foreign_csrf_token(client: GatewayClient, tokens: Tokens) -> None:
    with browser(client) as http, browser(client) as other:
        form = http.get("/console/login")
        assert http.cookies.get(LOGIN_COOKIE)
        bad = http.post("/console/login", data={"token": "not-a-token-at-all", "csrf_token": csrf_of(form.text)})
        assert bad.status_code == 401
        assert "unknown or has been revoked" in bad.text
        missing = http.post("/console/login", data={"token": tokens.alice})
        assert missing.status_code == 403
        assert SESSION_COOKIE not in http.cookies
        others = csrf_of(other.get("/console/login").text)
        foreign = http.post("/console/login", data={"token": tokens.alice, "csrf_token": others})
        assert foreign.status_code == 403
        assert SESSION_COOKIE not in http.cookies


def test_forms_refuse_a_missing_or_foreign_csrf_token(client: GatewayClient, tokens: Tokens) -> None:
    failed = submit(client, tokens, "admin", fail=True)
    with browser(client) as admin, browser(client) as other:
        sign_in(admin, tokens.admin)
        sign_in(other, tokens.admin)
        foreign_token = csrf_of(other.get("/console/").text)
        for data in ({}, {"csrf_token": "forged"}, {"csrf_token": foreign_token}):
            refused = admin.post(f"/console/tasks/{failed}/retry", data=data)
            assert refused.status_code == 403, data
            assert "did not come from this console" in refused.text
            refused = admin.post("/console/logout", data=data)
            assert refused.status_code == 403
        assert admin.get("/console/").status_code == 200  # still signed in: the forged sign-out did nothing


def test_a_user_sees_no_revoke_button_and_a_forged_revoke_is_refused(
    client: GatewayClient, tokens: Tokens, redis_server: RedisServer
) -> None:
    task_id = submit(client, tokens, "alice", countdown=600, message="pending")  # unfinished for 10 minutes
    with browser(client) as alice, browser(client) as admin:
        sign_in(alice, tokens.alice)
        page = alice.get(f"/console/tasks/{task_id}")
        assert page.status_code == 200
        assert 'id="revoke"' not in page.text
        assert f"/console/tasks/{task_id}/revoke" not in page.text
        forged = alice.post(
            f"/console/tasks/{task_id}/revoke", data={"csrf_token": csrf_of(page.text), "terminate": "on"}
        )
        assert forged.status_code == 403
        assert "may not do this" in forged.text
        assert redis_server.client(2).zscore(REVOKED_KEY, task_id) is None
        # someone else's task is not there at all for a user
        sign_in(admin, tokens.admin)
        admins_task = submit(client, tokens, "admin", message="admin's")
        assert alice.get(f"/console/tasks/{admins_task}").status_code == 404
        # the admin has the button, and it works
        page = admin.get(f"/console/tasks/{task_id}")
        assert 'id="revoke"' in page.text
        done = admin.post(f"/console/tasks/{task_id}/revoke", data={"csrf_token": csrf_of(page.text)})
        assert done.status_code == 303
        assert redis_server.client(2).zscore(REVOKED_KEY, task_id) is not None


def test_sign_out_ends_the_session(client: GatewayClient, tokens: Tokens, redis_server: RedisServer) -> None:
    with browser(client) as http:
        sign_in(http, tokens.bob)
        session_id = http.cookies[SESSION_COOKIE]
        page = http.get("/console/")
        out = http.post("/console/logout", data={"csrf_token": csrf_of(page.text)})
        assert out.status_code == 303
        assert out.headers["location"] == "/console/login?notice=signed_out"
        assert redis_server.client(2).exists(SESSION_KEY + _digest(session_id)) == 0
        http.cookies.set(SESSION_COOKIE, session_id)  # the old cookie, replayed
        assert http.get("/console/").status_code == 303


def test_a_revoked_token_ends_its_console_sessions(gateway: GatewayFactory, tokens: Tokens, migrated: Settings) -> None:
    with gateway(token_cache_seconds=0) as client, browser(client) as http:
        sign_in(http, tokens.bob)
        assert http.get("/console/").status_code == 200
        with session_scope(migrated) as session:
            revoke_token(session, tokens.bob_name)
        assert http.get("/console/").headers["location"].startswith("/console/login")


def test_language_from_accept_language_and_the_switch(client: GatewayClient, tokens: Tokens) -> None:
    with browser(client, "zh-CN,zh;q=0.9,en;q=0.5") as http:
        sign_in(http, tokens.alice)
        page = http.get("/console/")
        assert '<html lang="zh-CN">' in page.text
        assert "最近一小时" in page.text
        switched = http.get("/console/lang/en", params={"next": "/console/tasks"})
        assert switched.headers["location"] == "/console/tasks"
        assert '<html lang="en">' in http.get("/console/").text
        assert http.get("/console/lang/en", params={"next": "https://evil.example/"}).headers["location"] == "/console/"
        assert http.get("/console/lang/fr").status_code == 404


def test_pages_send_a_content_security_policy(client: GatewayClient, tokens: Tokens) -> None:
    with browser(client) as http:
        sign_in(http, tokens.alice)
        policy = http.get("/console/tasks").headers["content-security-policy"]
        assert "default-src 'self'" in policy
        assert "script-src 'self'" in policy


def test_negotiation() -> None:
    assert negotiate("zh-CN,zh;q=0.9,en;q=0.8") == "zh_CN"
    assert negotiate("en-US,en;q=0.9,zh;q=0.8") == "en"
    assert negotiate("fr-FR, zh-Hans;q=0.5") == "zh_CN"
    assert negotiate("zh-TW") == "en"
    assert negotiate(None) == "en"
    assert negotiate("zh-CN", cookie="en") == "en"
    assert negotiate("en", cookie="xx") == "en"


def test_the_console_grants_what_the_roles_permissions_grant() -> None:
    for role in ROLES:
        principal = Principal("someone", role)
        for action, permission in GRANTS.items():
            assert can(principal, action) == principal.has(permission), (role, action)
    admin, user, viewer = Principal("a", "admin"), Principal("u", "user"), Principal("v", "viewer")
    assert all(can(admin, action) for action in GRANTS)
    assert [action for action in GRANTS if can(user, action)] == [
        "tasks.read",
        "task.retry",
        "schedules.read",
        "reports.read",
        "exports.request",
        "workflows.read",
        "workflow.retry",
        "workflow.revoke",
    ]
    assert not can(viewer, "task.retry")
    assert can(viewer, "tasks.read_all")
    operator = Principal("o", "operator")
    # retrying or revoking a maintenance task also needs the maintenance permission
    assert can(operator, "task.retry", "generate_daily_report")
    assert not can(operator, "task.retry", "backup_database")
    assert can(admin, "task.revoke", "backup_database")


def test_a_viewer_reads_every_task_but_has_no_buttons_and_a_forged_retry_is_refused(
    client: GatewayClient, tokens: Tokens, migrated: Settings, running_worker: Callable[[str], Process]
) -> None:
    running_worker("maintenance")
    with session_scope(migrated) as session:
        viewer = create_token(session, f"viewer-{uuid.uuid4().hex[:8]}", "viewer")
    failed = submit(client, tokens, "alice", message="alice's failure", fail=True)
    pending = submit(client, tokens, "alice", countdown=600, message="alice's later task")
    wait_until(
        lambda: client.get(f"/api/v1/tasks/{failed}", headers=tokens.auth("alice")).json()["status"] == "FAILURE",
        timeout=60,
        message="the failure",
    )
    with browser(client) as http:
        sign_in(http, viewer)
        page = http.get(f"/console/tasks/{failed}")  # alice's task: a viewer reads every task
        assert page.status_code == 200
        assert "alice&#39;s failure" in page.text or "alice's failure" in page.text
        assert 'id="retry"' not in page.text
        assert 'id="revoke"' not in http.get(f"/console/tasks/{pending}").text
        assert 'id="f-owner"' in http.get("/console/tasks").text  # it may filter by owner
        forged = http.post(f"/console/tasks/{failed}/retry", data={"csrf_token": csrf_of(page.text)})
        assert forged.status_code == 403
        assert "may not do this" in forged.text
        forged = http.post(f"/console/tasks/{pending}/revoke", data={"csrf_token": csrf_of(page.text)})
        assert forged.status_code == 403
    listed = client.get("/api/v1/tasks", headers=tokens.auth("alice")).json()["results"]
    assert {row["task_id"] for row in listed} == {failed, pending}  # no retry was submitted
    # alice herself (a user) may retry her failure: the button is there
    with browser(client) as http:
        sign_in(http, tokens.alice)
        assert 'id="retry"' in http.get(f"/console/tasks/{failed}").text


def test_every_catalog_description_is_in_chinese() -> None:
    """Each task's and named workflow's description has its Chinese text, and no text is left over from
    a task or workflow the catalog no longer has; a description someone typed is shown as typed."""
    texts = catalog_texts("zh_CN")
    expected = {f"task.{name}" for name in CATALOG} | {f"workflow.{name}" for name in WORKFLOWS}
    assert texts.keys() == expected
    assert all(re.search(r"[\u4e00-\u9fff]", text) for text in texts.values())
    zh, en = Translator("zh_CN", "Asia/Shanghai"), Translator("en", "Asia/Shanghai")
    export = CATALOG["export_data"].description
    assert described(export, zh) == texts["task.export_data"]
    assert described(export, en) == export
    assert described(WORKFLOWS["month_end_close"].description, zh).startswith("月末结账")
    assert described("typed by the mall", zh) == "typed by the mall"


def test_every_message_is_in_both_languages_and_every_key_used_exists() -> None:
    catalogs = {lang: json.loads((LOCALES_DIR / f"{lang}.json").read_text(encoding="utf-8")) for lang in LANGUAGES}
    assert catalogs["en"].keys() == catalogs["zh_CN"].keys()
    templates = Path(LOCALES_DIR.parent / "templates").glob("*.html")
    key = re.compile(r"""\bt\(["']([a-z_]+\.[a-z_]+)["']\s*[),]""")
    used = {found for path in templates for found in key.findall(path.read_text())}
    # keys the routes name: the header's links, the error pages
    pages = (LOCALES_DIR.parent / "pages.py").read_text()
    used |= set(re.findall(r'"((?:nav|error)\.[a-z_]+)"', pages)) - {"error.html"}
    assert used
    assert used <= catalogs["en"].keys(), used - catalogs["en"].keys()


def test_unknown_console_paths_answer_an_html_404(client: GatewayClient, tokens: Tokens) -> None:
    with browser(client) as http:
        sign_in(http, tokens.alice)
        for asset in ("console.js", "console.css"):
            assert http.get(f"/console/static/{asset}").status_code == 200
        page = http.get("/console/no-such-page")
        assert page.status_code == 404
        assert page.headers["content-type"].startswith("text/html")
        assert "There is no such page" in page.text


def test_signing_in_again_replaces_the_session(
    client: GatewayClient, tokens: Tokens, redis_server: RedisServer
) -> None:
    with browser(client) as http:
        sign_in(http, tokens.alice)
        first = http.cookies[SESSION_COOKIE]
        sign_in(http, tokens.bob)
        assert http.cookies[SESSION_COOKIE] != first
        assert redis_server.client(2).exists(SESSION_KEY + _digest(first)) == 0
        assert tokens.bob_name in http.get("/console/").text


def test_the_tokens_rate_limit_applies_to_the_console(gateway: GatewayFactory, tokens: Tokens) -> None:
    with gateway(rate_limit_per_minute=3) as client, browser(client) as http:
        sign_in(http, tokens.alice)  # the sign-in form itself is not counted
        for path in ("/console/", "/console/tasks", "/console/"):
            assert http.get(path).status_code == 200
        limited = http.get("/console/")
        assert limited.status_code == 429
        assert int(limited.headers["retry-after"]) >= 1
        assert "Too many requests" in limited.text


def test_a_refused_action_shows_the_apis_reason(client: GatewayClient, tokens: Tokens) -> None:
    task_id = submit(client, tokens, "alice", countdown=600, message="not failed")
    with browser(client) as http:
        sign_in(http, tokens.alice)
        page = http.get(f"/console/tasks/{task_id}")
        assert 'id="retry"' not in page.text  # only a failed or revoked task offers it
        refused = http.post(f"/console/tasks/{task_id}/retry", data={"csrf_token": csrf_of(page.text)})
        assert refused.status_code == 409
        assert "only a failed or revoked task can be retried" in refused.text


def test_bad_sign_ins_count_against_the_clients_auth_failure_limit(gateway: GatewayFactory, tokens: Tokens) -> None:
    with gateway(auth_failures_per_minute=2) as client, browser(client) as http:
        csrf = csrf_of(http.get("/console/login").text)
        for _ in range(2):
            assert (
                http.post("/console/login", data={"token": "a-wrong-guess-0000", "csrf_token": csrf}).status_code == 401
            )
        blocked = http.post("/console/login", data={"token": tokens.alice, "csrf_token": csrf})
        assert blocked.status_code == 429  # even a right token, from this address, for now
        assert int(blocked.headers["retry-after"]) >= 1
        assert SESSION_COOKIE not in http.cookies


def _dead_letter(redis_server: RedisServer, note: str) -> str:
    letter, message = dead_letter_store.build(
        f"unknown task 'mallops.maintenance.{note}'",
        exception="NotRegistered",
        queue="default",
        headers=task_headers(f"mallops.maintenance.{note}", str(uuid.uuid4())),
        body=task_body({"note": note}),
        content_type="application/json",
        content_encoding="utf-8",
        max_body_bytes=1_000_000,
    )
    dead_letter_store.add(redis_server.client(2), letter, message)
    return letter.id


def test_failures_bulk_retry_asks_with_the_count_then_retries_exactly_those(
    client: GatewayClient, tokens: Tokens, migrated: Settings
) -> None:
    now = dt.datetime.now(dt.UTC)
    arguments = {"args": [], "kwargs": {"message": "bulk"}}
    failed = [
        make_history(migrated, tokens.alice_name, "FAILURE", now - dt.timedelta(minutes=i + 1), arguments=arguments)
        for i in range(3)
    ]
    make_history(migrated, tokens.bob_name, "FAILURE", now - dt.timedelta(minutes=2), arguments=arguments)
    make_history(migrated, tokens.alice_name, "SUCCESS", now - dt.timedelta(minutes=2), runtime=0.1)
    with browser(client) as http:
        sign_in(http, tokens.admin)
        page = http.get("/console/failures", params={"owner": tokens.alice_name})
        assert page.status_code == 200
        assert all(f"/console/tasks/{task_id}" in page.text for task_id in failed)
        assert page.text.count('href="/console/tasks/') == 3
        assert 'id="bulk-retry"' in page.text
        assert 'id="dead-letters"' in page.text  # an admin sees the dead letters
        form = {"csrf_token": csrf_of(page.text), "owner": tokens.alice_name}
        confirm = http.post("/console/failures/retry", data=form)
        assert confirm.status_code == 200
        assert "Retry 3 failed or revoked tasks (of 3 that match)" in confirm.text
        assert 'name="expected" value="3"' in confirm.text
        assert (
            client.get(
                "/api/v1/tasks/history", params={"owner": tokens.alice_name}, headers=tokens.auth("admin")
            ).json()["count"]
            == 4
        )  # nothing retried yet
        done = http.post("/console/failures/retry", data=form | {"confirm": "yes", "expected": "3"})
        assert done.status_code == 303
        assert "notice=bulk_retried" in done.headers["location"]
        assert "n=3" in done.headers["location"]
        assert "Retried 3 tasks." in http.get(done.headers["location"]).text
        trail = client.get("/api/v1/audit", params={"action": "tasks.bulk"}, headers=tokens.auth("admin")).json()
        mine = [row for row in trail["results"] if row["actor"] == tokens.admin_name]
        assert len(mine) == 1
        assert len(mine[0]["details"]["retried"]) == 3
        nothing = http.post("/console/failures/retry", data={"csrf_token": form["csrf_token"], "owner": "nobody"})
        assert "Nothing matches" in nothing.text
        assert 'id="confirm"' not in nothing.text


def test_failures_page_in_chinese_for_a_viewer_has_no_bulk_button_nor_dead_letters(
    client: GatewayClient, tokens: Tokens, migrated: Settings, redis_server: RedisServer
) -> None:
    _dead_letter(redis_server, "viewer_hidden")
    make_history(migrated, tokens.alice_name, "FAILURE", dt.datetime.now(dt.UTC), arguments={"args": [], "kwargs": {}})
    with session_scope(migrated) as session:
        viewer = create_token(session, f"viewer-{uuid.uuid4().hex[:8]}", "viewer")
    with browser(client, "zh-CN") as http:
        sign_in(http, viewer)
        page = http.get("/console/failures")
        assert page.status_code == 200
        assert "失败任务与死信" in page.text
        assert 'id="bulk-retry"' not in page.text
        assert "viewer_hidden" not in page.text
        assert 'id="dead-letters"' not in page.text
        for path in ("/console/failures/retry", "/console/dead-letters/replay"):
            forged = http.post(path, data={"csrf_token": csrf_of(page.text), "confirm": "yes"})
            assert forged.status_code == 403, path
            assert "您的角色无权执行此操作" in forged.text
            assert http.post(path, data={"confirm": "yes"}).status_code == 403  # no CSRF token


def test_dead_letters_are_replayed_after_a_confirmation_that_shows_the_count(
    client: GatewayClient, tokens: Tokens, redis_server: RedisServer
) -> None:
    dead_letter_store.forget(
        redis_server.client(2),
        [x.id for x in dead_letter_store.find(redis_server.client(2), LetterFilter(), 0, 1000)[1]],
    )
    ids = [_dead_letter(redis_server, f"console_letter_{i}") for i in range(2)]
    with browser(client) as http:
        sign_in(http, tokens.admin)
        page = http.get("/console/failures")
        assert "console_letter_0" in page.text
        assert "console_letter_1" in page.text
        assert 'id="replay-all"' in page.text
        token = csrf_of(page.text)
        confirm = http.post("/console/dead-letters/replay", data={"csrf_token": token})
        assert "Replay 2 dead letters (of 2)" in confirm.text
        assert http.post("/console/dead-letters/replay", data={"confirm": "yes"}).status_code == 403  # no CSRF
        done = http.post("/console/dead-letters/replay", data={"csrf_token": token, "confirm": "yes", "expected": "2"})
        assert done.status_code == 303
        assert "Replayed 2 dead letters." in http.get(done.headers["location"]).text
    assert all(dead_letter_store.get(redis_server.client(2), letter_id) is None for letter_id in ids)


def test_schedules_are_added_edited_switched_and_run_from_the_console(client: GatewayClient, tokens: Tokens) -> None:
    name = f"console-{uuid.uuid4().hex[:8]}"
    with browser(client) as http:
        sign_in(http, tokens.admin)
        listing = http.get("/console/schedules")
        assert listing.status_code == 200
        assert 'id="add-schedule"' in listing.text
        token = csrf_of(listing.text)
        form = {"csrf_token": token, "name": name, "task_name": "test_task", "every": "3600", "enabled": "on"}
        refused = http.post("/console/schedules/new", data=form | {"kwargs": "{not json"})
        assert refused.status_code == 422
        assert "Not saved:" in refused.text
        assert f'value="{name}"' in refused.text  # what was typed comes back
        added = http.post("/console/schedules/new", data=form | {"kwargs": '{"message": "from the console"}'})
        assert added.status_code == 303, added.text
        entry = client.get(f"/api/v1/schedules/{name}", headers=tokens.auth("admin")).json()
        assert entry["schedule"] == {"every": 3600.0}
        assert entry["kwargs"] == {"message": "from the console"}
        assert entry["enabled"]
        row = http.get("/console/schedules").text.split(f'id="entry-{name}"')[1].split("</tr>")[0]
        assert "every 1 hour" in row
        assert re.search(r"in (59|60) minutes|in 1 hour", row), row  # the next run, "x minutes" ahead
        edited = http.post(
            f"/console/schedules/{name}/edit",
            data={
                "csrf_token": token,
                "minute": "0",
                "hour": "3",
                "kwargs": '{"message": "at three"}',
                "enabled": "on",
            },
        )
        assert edited.status_code == 303, edited.text
        entry = client.get(f"/api/v1/schedules/{name}", headers=tokens.auth("admin")).json()
        assert entry["schedule"]["hour"] == "3"
        assert entry["kwargs"] == {"message": "at three"}
        assert "0 3 * * *" in http.get("/console/schedules").text
        assert http.post(f"/console/schedules/{name}/disable", data={"csrf_token": token}).status_code == 303
        assert not client.get(f"/api/v1/schedules/{name}", headers=tokens.auth("admin")).json()["enabled"]
        run = http.post(f"/console/schedules/{name}/run", data={"csrf_token": token})
        assert run.status_code == 303
        assert "notice=schedule_run" in run.headers["location"]
        task_id = run.headers["location"].split("/")[-1].split("?")[0]
        assert client.get(f"/api/v1/tasks/{task_id}", headers=tokens.auth("admin")).json()["kwargs"] == {
            "message": "at three"
        }
        assert http.post(f"/console/schedules/{name}/enable", data={}).status_code == 403  # no CSRF token
    with browser(client, "zh-CN") as http:
        sign_in(http, tokens.alice)  # a user reads the schedule, changes nothing
        page = http.get("/console/schedules")
        assert "定时计划" in page.text
        assert "0 3 * * *" in page.text
        assert "回显一条消息" in page.text  # test_task's description from the catalog, in Chinese
        assert "Echo a message" not in page.text
        assert 'id="add-schedule"' not in page.text
        assert f"/console/schedules/{name}/run" not in page.text
        for path in (f"/console/schedules/{name}/run", "/console/schedules/new", f"/console/schedules/{name}/edit"):
            forged = http.post(path, data={"csrf_token": csrf_of(page.text), "name": "x", "every": "60"})
            assert forged.status_code == 403, path
        assert http.get("/console/schedules/new").status_code == 403
    assert client.delete(f"/api/v1/schedules/{name}", headers=tokens.auth("admin")).status_code == 204


def test_workers_and_queues_only_to_roles_that_may_read_them(
    client: GatewayClient, tokens: Tokens, running_worker: Callable[[str], Process]
) -> None:
    worker = running_worker("maintenance")
    with browser(client, "zh-CN") as http:
        sign_in(http, tokens.admin)

        def listed() -> str | None:
            page = http.get("/console/workers", params={"fragment": "1"}).text
            return page if "在线" in page and "maintenance" in page else None

        fragment = wait_until(listed, timeout=30, message="the worker online on the workers page")
        assert "<code>default</code>" in fragment  # the queues
        page = http.get("/console/workers")
        assert "工作进程与队列" in page.text
        assert 'href="/console/workers"' in page.text
    with browser(client) as http:
        sign_in(http, tokens.alice)
        assert 'href="/console/workers"' not in http.get("/console/").text
        refused = http.get("/console/workers")
        assert refused.status_code == 403
        assert "may not do this" in refused.text
    assert worker.alive()


def test_exports_are_listed_requested_from_the_catalogs_schema_and_downloaded(
    client: GatewayClient, tokens: Tokens, migrated: Settings
) -> None:
    exports_dir = migrated.exports_dir
    exports_dir.mkdir(parents=True, exist_ok=True)
    file_name = f"console-{uuid.uuid4().hex[:8]}.csv"
    (exports_dir / file_name).write_text("id,name\n1,Nova\n", encoding="utf-8")
    mine = make_export(migrated, tokens.alice_name, file_name=file_name)
    bobs = make_export(migrated, tokens.bob_name, file_name=file_name)
    with browser(client) as http:
        sign_in(http, tokens.alice)
        page = http.get("/console/reports")
        assert page.status_code == 200
        assert f"/console/exports/{mine}/download" in page.text
        assert bobs not in page.text
        # the form is the catalog's schema of export_data: every argument, nested ones with dots
        for name in ("dataset", "format", "filters.date_from", "filters.store_ids", "filters.status"):
            assert f'name="{name}"' in page.text, name
        assert 'type="date"' in page.text
        assert '<option value="sales"' in page.text
        download = http.get(f"/console/exports/{mine}/download")
        assert download.status_code == 200
        assert download.text == "id,name\n1,Nova\n"
        assert "attachment" in download.headers["content-disposition"]
        assert http.get(f"/console/exports/{bobs}/download").status_code == 404
        token = csrf_of(page.text)
        refused = http.post(
            "/console/exports", data={"csrf_token": token, "dataset": "stores", "filters.store_id": "x"}
        )
        assert refused.status_code == 422
        assert "Not requested:" in refused.text
        requested = http.post(
            "/console/exports",
            data={"csrf_token": token, "dataset": "stores", "format": "csv", "filters.store_ids": "3, 4"},
        )
        assert requested.status_code == 303, requested.text
        task_id = requested.headers["location"].split("/")[-1].split("?")[0]
        task = client.get(f"/api/v1/tasks/{task_id}", headers=tokens.auth("alice")).json()
        assert task["task_name"] == "export_data"
        assert task["kwargs"] == {"dataset": "stores", "format": "csv", "filters": {"store_ids": [3, 4]}}
        follow = http.get(requested.headers["location"])
        assert follow.status_code == 200
        # live until it is done; a worker of the run may already have finished this small export, and the
        # page then opens on the result: its download link
        assert (
            f'data-events="/console/tasks/{task_id}/events"' in follow.text
            or f"/console/exports/{task_id}/download" in follow.text
        ), follow.text
        assert http.post("/console/exports", data={"dataset": "stores"}).status_code == 403  # no CSRF token
    with session_scope(migrated) as session:
        viewer = create_token(session, f"viewer-{uuid.uuid4().hex[:8]}", "viewer")
    with browser(client, "zh-CN") as http:
        sign_in(http, viewer)
        page = http.get("/console/reports")
        assert "报表与导出" in page.text
        assert 'id="request-export"' not in page.text  # a viewer submits nothing
        forged = http.post("/console/exports", data={"csrf_token": csrf_of(page.text), "dataset": "stores"})
        assert forged.status_code == 403


def test_the_audit_trail_is_an_admins_page_with_the_apis_filters(client: GatewayClient, tokens: Tokens) -> None:
    task_id = submit(client, tokens, "alice", countdown=600, message="to revoke")
    assert client.post(f"/api/v1/tasks/{task_id}/revoke", headers=tokens.auth("admin"), json={}).status_code == 202
    with browser(client, "zh-CN") as http:
        sign_in(http, tokens.admin)
        page = http.get("/console/audit", params={"actor": tokens.admin_name, "action": "task.revoke"})
        assert page.status_code == 200
        assert "审计记录" in page.text
        assert page.text.count("<code>" + task_id[:64] + "</code>") == 1
        assert "撤销任务" in page.text
        assert 'href="/console/audit"' in page.text
        other = http.get("/console/audit", params={"actor": tokens.admin_name, "action": "token.create"})
        assert task_id not in other.text
        bad = http.get("/console/audit", params={"action": "no.such", "since": "yesterday"})
        assert "没有名为 no.such 的操作" in bad.text
    with browser(client) as http:
        sign_in(http, tokens.alice)
        assert 'href="/console/audit"' not in http.get("/console/").text
        assert http.get("/console/audit").status_code == 403


def test_reports_show_their_sales_as_money_in_each_language(
    client: GatewayClient, tokens: Tokens, migrated: Settings
) -> None:
    report_id = make_report(migrated, None, None)
    with session_scope(migrated) as session:
        report = session.get(Report, report_id)
        assert report is not None
        report.data = {"sales": {"amount": 1234567.5, "transactions": 12}}
    for language, money in (("en", "CN¥1,234,567.50"), ("zh-CN", "¥1,234,567.50")):
        with browser(client, language) as http:
            sign_in(http, tokens.alice)  # a user reads every report
            page = http.get("/console/reports").text
            assert money in page, language


def test_babel_fast_paths_match_babel() -> None:
    """The translator's kept and composed texts are Babel's own: every second of a day and dates across
    years (medium datetime), "ago" from a second to years either way, numbers and sizes."""
    from babel import dates, numbers

    start = dt.datetime(2026, 12, 6, 16, 0, tzinfo=dt.UTC)  # midnight in Shanghai
    for language in LANGUAGES:
        t = Translator(language, "Asia/Shanghai")
        for when in [start + dt.timedelta(seconds=s) for s in range(0, 86400, 7)] + [
            start + dt.timedelta(days=d, hours=d % 24) for d in range(-800, 800, 13)
        ]:
            assert t.datetime(when) == dates.format_datetime(when, "medium", tzinfo=t.tz, locale=t.locale)
        now = start
        for seconds in [0, 0.4, 1, 1.6, 59, 61, 89, 91, 3599, 5400, 86399, 86400 * 9, 86400 * 400, 10**9]:
            for sign in (1, -1):
                delta = dt.timedelta(seconds=sign * seconds)
                expected = dates.format_timedelta(delta, add_direction=True, threshold=1.1, locale=t.locale)
                assert t.ago(now + delta, now) == expected, (language, sign * seconds)
        for value in (0, 1, 1.0, 1.5, 1234567, 12.25):
            assert t.number(value) == numbers.format_decimal(value, locale=t.locale)
