"""The Prometheus, Alertmanager and Grafana files: promtool and amtool accept them, the alert rules fire
when they should (promtool's rule unit tests), and the dashboards cover what the issue asks for."""

from __future__ import annotations

import subprocess
from collections import Counter

from tests.deploy.conftest import (
    ALERT_RULES,
    ALERT_TESTS,
    ALERTMANAGER_CONFIG,
    PROMETHEUS_CONFIG,
    alert_rules,
    load_dashboards,
    panels,
    require_tool,
)

REQUIRED_ALERTS = {
    "TaskFailureRateHigh",
    "QueueBacklog",
    "WorkerDown",
    "MonitorLagging",
    "TaskHitTimeLimit",
    "CriticalTaskFailed",
    "DeadLettersGrowing",
    "ScheduleEntryMissed",
    "WorkerLost",
    "RedisMemoryHigh",
    "WorkflowFailed",
}


def run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)


def test_promtool_accepts_the_config_and_its_rules() -> None:
    done = run(require_tool("promtool"), "check", "config", str(PROMETHEUS_CONFIG))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout


def test_promtool_accepts_the_rules() -> None:
    done = run(require_tool("promtool"), "check", "rules", str(ALERT_RULES))
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"SUCCESS: {len(alert_rules())} rules found" in done.stdout


def test_alerts_fire_as_their_unit_tests_say() -> None:
    done = run(require_tool("promtool"), "test", "rules", str(ALERT_TESTS))
    assert done.returncode == 0, done.stdout + done.stderr
    tested = {
        line.split("alertname:", 1)[1].strip() for line in ALERT_TESTS.read_text().splitlines() if "alertname:" in line
    }
    assert tested >= REQUIRED_ALERTS


def test_amtool_accepts_the_alertmanager_config() -> None:
    done = run(require_tool("amtool"), "check-config", str(ALERTMANAGER_CONFIG))
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_required_alerts_exist_with_severity_and_summary() -> None:
    rules = alert_rules()
    names = Counter(rule["alert"] for rule in rules)
    assert set(names) >= REQUIRED_ALERTS
    assert max(names.values()) == 1, "alert names are unique"
    for rule in rules:
        assert rule["labels"]["severity"] in {"warning", "critical"}, rule["alert"]
        assert rule["annotations"]["summary"], rule["alert"]
        assert rule["annotations"]["description"], rule["alert"]


def test_dashboards_cover_the_platform() -> None:
    dashboards = load_dashboards()
    assert set(dashboards) == {"mallops-overview.json", "mallops-task.json"}
    assert len({d["uid"] for d in dashboards.values()}) == len(dashboards)
    for name, dashboard in dashboards.items():
        ids = [panel["id"] for panel in dashboard["panels"]]
        assert len(ids) == len(set(ids)), f"{name}: panel ids repeat"
        for panel in panels(dashboard):
            assert panel["targets"], f"{name}: {panel['title']} has no query"
            assert all(target["expr"].strip() for target in panel["targets"]), panel["title"]

    overview = " ".join(t["expr"] for p in panels(dashboards["mallops-overview.json"]) for t in p["targets"])
    for metric in (
        "celery_task_succeeded_total",
        "celery_task_failed_total",
        "celery_task_sent_total",
        "celery_task_runtime_bucket",
        "celery_task_queue_wait_time_bucket",
        "celery_queue_length",
        "celery_worker_up",
        "celery_active_worker_count",
        "celery_active_consumer_count",
        "celery_active_process_count",
        "mallops_monitor_event_lag_seconds",
        "mallops_gateway_requests_total",
        "mallops_dead_letters",
        "mallops_task_failures_total",
        "mallops_schedule_last_run_timestamp_seconds",
        "mallops_schedule_period_seconds",
        "mallops_worker_lost",
        "mallops_redis_memory_used_bytes",
        "mallops_redis_memory_max_ratio",
        "by (exception)",
        "by (queue_name)",
        "by (name)",
    ):
        assert metric in overview, f"the overview does not show {metric}"

    for name, dashboard in dashboards.items():
        # the data source is a variable (no hard-coded uid), and job, queue and task filter the Celery panels
        variables = {v["name"]: v for v in dashboard["templating"]["list"]}
        assert list(variables) == ["datasource", "job", "queue", "task"], name
        assert variables["datasource"]["type"] == "datasource"
        assert variables["datasource"]["query"] == "prometheus"
        for panel in panels(dashboard):
            assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
            for target in panel["targets"]:
                assert target["datasource"]["uid"] == "${datasource}", panel["title"]
                if "celery_task_" in target["expr"]:
                    for matcher in ('job=~"$job"', 'queue_name=~"$queue"', 'name=~"$task"'):
                        assert matcher in target["expr"], f"{name} / {panel['title']}: no {matcher}"
                if "celery_queue_length" in target["expr"] or "celery_active_" in target["expr"]:
                    assert 'queue_name=~"$queue"' in target["expr"], f"{name} / {panel['title']}"
        for variable in ("job", "queue", "task"):
            assert variables[variable]["datasource"]["uid"] == "${datasource}"
    assert variables["task"]["multi"] is False  # the drill-down is about one task
    assert all(v["includeAll"] and v["allValue"] == ".*" for k, v in variables.items() if k in ("job", "queue"))
