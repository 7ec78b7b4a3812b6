"""History, statistics, workers, queues, schedules, reports and exports over HTTP."""

from __future__ import annotations

import datetime as dt
import json
import time
import uuid
from typing import Any

import pytest

from shared.contracts import WORKERS_KEY
from shared.settings import Settings
from tests.harness import RedisServer
from tests.services.gateway.conftest import (
    GatewayClient,
    GatewayFactory,
    Tokens,
    make_export,
    make_history,
    make_report,
)

pytestmark = pytest.mark.integration
API = "/api/v1"


def test_history_pages_and_ownership(client: GatewayClient, tokens: Tokens, migrated: Settings) -> None:
    base = dt.datetime(2030, 1, 1, tzinfo=dt.UTC) + dt.timedelta(minutes=uuid.uuid4().int % 100_000)
    mine = [make_history(migrated, tokens.alice_name, "SUCCESS", base + dt.timedelta(seconds=i), 0.5) for i in range(3)]
    theirs = make_history(migrated, tokens.bob_name, "FAILURE", base + dt.timedelta(seconds=10))
    window = {"since": base.isoformat(), "until": (base + dt.timedelta(minutes=1)).isoformat()}

    page = client.get(f"{API}/tasks/history", params={**window, "limit": 2}, headers=tokens.auth("alice"))
    assert page.status_code == 200, page.text
    body = page.json()
    assert [row["task_id"] for row in body["results"]] == [mine[2], mine[1]]
    rest = client.get(
        f"{API}/tasks/history", params={**window, "cursor": body["next_cursor"]}, headers=tokens.auth("alice")
    ).json()
    assert [row["task_id"] for row in rest["results"]] == [mine[0]]
    assert rest["next_cursor"] is None
    # one naming: the catalog name, the Celery name beside it; status, with state kept as an alias
    row = rest["results"][0]
    assert (row["task_name"], row["celery_name"]) == ("test_task", "mallops.maintenance.test_task")
    assert row["status"] == row["state"] == "SUCCESS"
    for name in ("test_task", "mallops.maintenance.test_task"):  # filters take either name
        named = client.get(f"{API}/tasks/history", params={**window, "task_name": name}, headers=tokens.auth("alice"))
        assert {r["task_id"] for r in named.json()["results"]} == set(mine), name
    # a user cannot widen the owner filter; an admin sees everyone's, filterable
    sneaky = client.get(
        f"{API}/tasks/history", params={**window, "owner": tokens.bob_name}, headers=tokens.auth("alice")
    ).json()
    assert theirs not in [row["task_id"] for row in sneaky["results"]]
    everyone = client.get(f"{API}/tasks/history", params=window, headers=tokens.auth("admin")).json()
    assert {*mine, theirs} <= {row["task_id"] for row in everyone["results"]}
    failed = client.get(
        f"{API}/tasks/history", params={**window, "status": "FAILURE"}, headers=tokens.auth("admin")
    ).json()
    assert [row["task_id"] for row in failed["results"]] == [theirs]
    bad = client.get(f"{API}/tasks/history", params={"cursor": "garbage"}, headers=tokens.auth("alice"))
    assert bad.status_code == 422
    assert (
        client.get(f"{API}/tasks/history", params={"task_name": "nope"}, headers=tokens.auth("alice")).status_code
        == 404
    )

    # an old task (no longer in Redis) is still found through the history, by its owner only
    old = client.get(f"{API}/tasks/{mine[0]}", headers=tokens.auth("alice"))
    assert old.status_code == 200
    assert old.json()["status"] == "SUCCESS"
    assert old.json()["duration"] == 0.5
    assert client.get(f"{API}/tasks/{mine[0]}", headers=tokens.auth("bob")).status_code == 404


def test_stats_over_a_window(client: GatewayClient, tokens: Tokens, migrated: Settings) -> None:
    base = dt.datetime(2031, 1, 1, tzinfo=dt.UTC) + dt.timedelta(minutes=uuid.uuid4().int % 100_000)
    for i, runtime in enumerate((1.0, 2.0, 3.0)):
        make_history(migrated, tokens.alice_name, "SUCCESS", base + dt.timedelta(seconds=i), runtime)
    make_history(migrated, tokens.alice_name, "FAILURE", base + dt.timedelta(seconds=5))
    make_history(migrated, tokens.bob_name, "SUCCESS", base + dt.timedelta(seconds=6), 9.0)
    window = {"since": base.isoformat(), "until": (base + dt.timedelta(minutes=1)).isoformat()}
    stats = client.get(f"{API}/tasks/stats", params=window, headers=tokens.auth("alice")).json()
    overall = stats["overall"]
    assert overall["total"] == 4
    assert overall["counts"]["SUCCESS"] == 3
    assert overall["success_rate"] == 0.75
    assert overall["runtime"]["p50"] == 2.0
    admin = client.get(f"{API}/tasks/stats", params=window, headers=tokens.auth("admin")).json()
    assert admin["overall"]["total"] == 5
    assert admin["tasks"]["test_task"]["celery_name"] == "mallops.maintenance.test_task"
    assert admin["tasks"]["test_task"]["total"] == 5
    backwards = {"since": window["until"], "until": window["since"]}
    assert client.get(f"{API}/tasks/stats", params=backwards, headers=tokens.auth("admin")).status_code == 422


def test_workers_and_queues(gateway: GatewayFactory, tokens: Tokens, redis_server: RedisServer) -> None:
    broker_db = 9
    broker = redis_server.client(broker_db)
    broker.flushdb()
    cache = redis_server.client(2)
    now = time.time()
    cache.hset(
        WORKERS_KEY,
        mapping={
            "finance@up": json.dumps(
                {
                    "status": "online",
                    "last_heartbeat": now,
                    "queues": ["finance"],
                    "active": 1,
                    "processed": 7,
                    "service": "finance",
                    "pid": 1,
                    "concurrency": 2,
                }
            ),
            "reports@gone": json.dumps({"status": "offline", "last_heartbeat": now - 30, "queues": ["reports"]}),
        },
    )
    with gateway(broker_url=f"{redis_server.url_base}/{broker_db}") as client:
        for priority in (0, 9):
            client.post(
                f"{API}/tasks",
                json={"task_name": "check_pending_bills", "priority": priority},
                headers=tokens.auth("admin"),
            )
        workers = client.get(f"{API}/workers", headers=tokens.auth("admin")).json()
        by_host = {w["hostname"]: w for w in workers["results"]}
        assert by_host["finance@up"]["status"] == "online"
        assert by_host["finance@up"]["active"] == 1
        assert by_host["reports@gone"]["status"] == "offline"
        assert workers["online"] >= 1  # real workers of other tests may be beating too
        queues = {q["name"]: q for q in client.get(f"{API}/queues", headers=tokens.auth("admin")).json()["results"]}
        assert queues["finance"]["pending"] == 2
        assert queues["finance"]["consumers"] >= 1
        assert queues["reports"]["pending"] == 0
    broker.close()
    cache.close()


def test_schedules_list_and_patch(client: GatewayClient, tokens: Tokens) -> None:
    admin = tokens.auth("admin")
    listing = client.get(f"{API}/schedules", headers=admin)
    assert listing.status_code == 200, listing.text
    names = {row["name"] for row in listing.json()["results"]}
    assert {"check_pending_bills", "process_access_logs", "generate_weekly_report"} <= names
    bills = next(row for row in listing.json()["results"] if row["name"] == "check_pending_bills")
    assert (bills["task_name"], bills["celery_name"]) == ("check_pending_bills", "mallops.finance.check_pending_bills")

    off = client.patch(f"{API}/schedules/check_pending_bills", json={"enabled": False}, headers=admin)
    assert off.status_code == 200, off.text
    assert off.json()["enabled"] is False
    retimed = client.patch(f"{API}/schedules/process_access_logs", json={"schedule": {"every": 120}}, headers=admin)
    assert retimed.json()["schedule"] == {"every": 120.0}
    cron = client.patch(
        f"{API}/schedules/generate_weekly_report",
        json={"enabled": True, "schedule": {"minute": "30", "hour": "9", "day_of_week": "1"}},
        headers=admin,
    )
    assert cron.json()["schedule"]["minute"] == "30"
    again = {row["name"]: row for row in client.get(f"{API}/schedules", headers=admin).json()["results"]}
    assert again["check_pending_bills"]["enabled"] is False
    assert again["process_access_logs"]["schedule"] == {"every": 120.0}

    assert client.patch(f"{API}/schedules/test_task", json={"enabled": True}, headers=admin).status_code == 404
    bad = client.patch(f"{API}/schedules/process_access_logs", json={"schedule": {"every": 0.01}}, headers=admin)
    assert bad.status_code == 422
    assert bad.json()["errors"][0]["loc"] == ["body", "schedule", "every"]
    bad_cron = client.patch(f"{API}/schedules/process_access_logs", json={"schedule": {"minute": "99"}}, headers=admin)
    assert bad_cron.status_code == 422
    assert client.patch(f"{API}/schedules/process_access_logs", json={}, headers=admin).status_code == 422


def test_schedules_add_change_run_and_delete(client: GatewayClient, tokens: Tokens, redis_server) -> None:
    admin = tokens.auth("admin")
    body = {
        "name": "tenants.reminder-9",
        "task_name": "test_task",
        "schedule": {"minute": "0", "hour": "9", "day_of_week": "1"},
        "kwargs": {"message": "rent is due"},
        "description": "Mondays at 09:00",
    }
    created = client.post(f"{API}/schedules", json=body, headers=admin)
    assert created.status_code == 201, created.text
    entry = created.json()
    assert created.headers["location"] == f"{API}/schedules/tenants.reminder-9"
    assert (entry["task_name"], entry["queue"], entry["enabled"]) == ("test_task", "default", True)
    assert (entry["kwargs"], entry["args"], entry["description"]) == (
        {"message": "rent is due"},
        [],
        "Mondays at 09:00",
    )
    assert entry["last_run_at"] is None
    assert entry["next_run_at"].endswith("Z")
    local = dt.datetime.fromisoformat(entry["next_run_local"])
    assert (local.isoweekday(), local.hour, local.minute, local.utcoffset()) == (1, 9, 0, dt.timedelta(hours=8))
    assert local == dt.datetime.fromisoformat(entry["next_run_at"])
    # readable with a user token
    mine = client.get(f"{API}/schedules/tenants.reminder-9", headers=tokens.auth("alice"))
    assert mine.json()["kwargs"] == {"message": "rent is due"}

    assert client.post(f"{API}/schedules", json=body, headers=admin).status_code == 409
    refusals = [
        ({**body, "name": "Bad Name"}, ["body", "name"], 422),
        ({**body, "name": "x" * 65}, ["body", "name"], 422),
        ({**body, "name": "n1", "kwargs": {"message": 5}}, ["body", "kwargs", "message"], 422),
        ({**body, "name": "n2", "kwargs": {"surprise": 1}}, ["body", "kwargs", "surprise"], 422),
        ({**body, "name": "n3", "schedule": {"minute": "99"}}, ["body", "schedule"], 422),
        ({**body, "name": "n4", "task_name": "no_such_task"}, None, 404),
    ]
    for bad, loc, status in refusals:
        response = client.post(f"{API}/schedules", json=bad, headers=admin)
        assert response.status_code == status, (bad, response.text)
        assert response.headers["content-type"] == "application/problem+json"
        if loc is not None:
            assert any(error["loc"][: len(loc)] == loc for error in response.json()["errors"]), response.json()

    changed = client.patch(
        f"{API}/schedules/tenants.reminder-9",
        json={"kwargs": {"message": "rent!"}, "description": "changed", "schedule": {"every": 600}},
        headers=admin,
    )
    assert changed.status_code == 200, changed.text
    assert (changed.json()["kwargs"], changed.json()["description"]) == ({"message": "rent!"}, "changed")
    assert changed.json()["schedule"] == {"every": 600.0}
    bad_args = client.patch(f"{API}/schedules/tenants.reminder-9", json={"args": [1, 2, 3]}, headers=admin)
    assert bad_args.status_code == 422

    run = client.post(f"{API}/schedules/tenants.reminder-9/run", headers=admin)
    assert run.status_code == 202, run.text
    task = client.get(f"{API}/tasks/{run.json()['task_id']}", headers=admin).json()
    assert (task["task_name"], task["kwargs"]) == ("test_task", {"message": "rent!"})

    assert client.delete(f"{API}/schedules/tenants.reminder-9", headers=admin).status_code == 204
    assert client.delete(f"{API}/schedules/tenants.reminder-9", headers=admin).status_code == 404
    assert client.post(f"{API}/schedules/tenants.reminder-9/run", headers=admin).status_code == 404
    # a deleted default is gone from the listing; created again, it is back
    assert client.delete(f"{API}/schedules/backup_database", headers=admin).status_code == 204
    names = {row["name"] for row in client.get(f"{API}/schedules", headers=admin).json()["results"]}
    assert "backup_database" not in names
    again = {"name": "backup_database", "task_name": "backup_database", "schedule": {"minute": "0", "hour": "3"}}
    assert client.post(f"{API}/schedules", json=again, headers=admin).status_code == 201


def test_reports_and_their_files(client: GatewayClient, tokens: Tokens, migrated: Settings) -> None:
    reports_dir = migrated.reports_dir
    (reports_dir / "hourly").mkdir(parents=True, exist_ok=True)
    (reports_dir / "hourly" / "r.csv").write_text("hour,sales\n10,42\n")
    (reports_dir / "hourly" / "r.html").write_text("<h1>42</h1>")
    secret = migrated.data_dir / "secret.txt"
    secret.write_text("do not serve")
    (reports_dir / "hourly" / "link.csv").symlink_to(secret)
    good = make_report(migrated, "hourly/r.csv", "hourly/r.html")
    user = tokens.auth("bob")

    listing = client.get(f"{API}/reports", params={"kind": "hourly", "limit": 200}, headers=user).json()
    assert good in [row["id"] for row in listing["results"]]
    detail = client.get(f"{API}/reports/{good}", headers=user).json()
    assert detail["data"] == {"sales": 42}
    assert detail["formats"] == ["csv", "html"]
    csv = client.get(f"{API}/reports/{good}/file", params={"format": "csv"}, headers=user)
    assert csv.status_code == 200
    assert csv.text == "hour,sales\n10,42\n"
    assert csv.headers["content-type"].startswith("text/csv")
    assert client.get(f"{API}/reports/{good}/file", headers=user).text == "<h1>42</h1>"
    assert client.get(f"{API}/reports/999999", headers=user).status_code == 404

    # a report's page in each language: MALLOPS_REPORT_LANGUAGE (zh_CN) unless ?lang= names one
    (reports_dir / "hourly" / "p.zh_CN.html").write_text("<h1>小时报表</h1>")
    (reports_dir / "hourly" / "p.en.html").write_text("<h1>Hourly report</h1>")
    paged = make_report(migrated, None, "hourly/p.zh_CN.html")
    page = f"{API}/reports/{paged}/file"
    assert client.get(page, headers=user).text == "<h1>小时报表</h1>"
    assert client.get(page, params={"lang": "en"}, headers=user).text == "<h1>Hourly report</h1>"
    assert client.get(page, params={"lang": "zh_CN"}, headers=user).text == "<h1>小时报表</h1>"
    assert client.get(page, params={"lang": "fr"}, headers=user).status_code == 422

    for stored in ("../secret.txt", str(secret), "hourly/link.csv", "hourly/../../secret.txt", "hourly"):
        evil = make_report(migrated, stored, None)
        response = client.get(f"{API}/reports/{evil}/file", params={"format": "csv"}, headers=user)
        assert response.status_code == 404, stored
        assert "do not serve" not in response.text


def test_exports_are_downloaded_by_their_owner_only(client: GatewayClient, tokens: Tokens, migrated: Settings) -> None:
    exports_dir = migrated.exports_dir
    exports_dir.mkdir(parents=True, exist_ok=True)
    name = f"stores-{uuid.uuid4()}.csv"
    (exports_dir / name).write_text("id,name\n1,Shop\n")
    (migrated.data_dir / "outside.csv").write_text("secret")
    later = dt.datetime.now(dt.UTC) + dt.timedelta(days=1)
    done = make_export(migrated, tokens.alice_name, file_name=name, expires_at=later)

    info = client.get(f"{API}/exports/{done}", headers=tokens.auth("alice")).json()
    assert info["status"] == "done"
    assert info["download_url"] == f"{API}/exports/{done}/download"
    download = client.get(info["download_url"], headers=tokens.auth("alice"))
    assert download.status_code == 200
    assert download.text == "id,name\n1,Shop\n"
    assert name in download.headers["content-disposition"]
    assert client.get(f"{API}/exports/{done}", headers=tokens.auth("bob")).status_code == 404
    assert client.get(f"{API}/exports/{done}/download", headers=tokens.auth("bob")).status_code == 404
    assert client.get(f"{API}/exports/{done}/download", headers=tokens.auth("admin")).status_code == 200

    running = make_export(migrated, tokens.alice_name, status="running")
    assert client.get(f"{API}/exports/{running}/download", headers=tokens.auth("alice")).status_code == 409
    expired = make_export(
        migrated, tokens.alice_name, file_name=name, expires_at=dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1)
    )
    assert client.get(f"{API}/exports/{expired}/download", headers=tokens.auth("alice")).status_code == 410
    for evil_name in ("../outside.csv", str(migrated.data_dir / "outside.csv"), "."):
        evil = make_export(migrated, tokens.alice_name, file_name=evil_name, expires_at=later)
        response = client.get(f"{API}/exports/{evil}/download", headers=tokens.auth("alice"))
        assert response.status_code == 404, evil_name
        assert "secret" not in response.text


def test_unknown_export_is_404(client: GatewayClient, tokens: Tokens) -> None:
    response: Any = client.get(f"{API}/exports/{uuid.uuid4()}", headers=tokens.auth("alice"))
    assert response.status_code == 404
