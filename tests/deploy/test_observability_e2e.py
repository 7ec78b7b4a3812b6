"""Every dashboard panel and every alert rule, evaluated by a real Prometheus against the real stack.

Starts the monitor tests' stack (its own redis-server, a maintenance worker, the monitor), a gateway
process and the Debian ``prometheus`` binary with deploy/prometheus/prometheus.yml (targets pointed at
the local processes, scraping every second, the real alerts.yml). Tasks go through the gateway in two
batches (successes, failures, a retry) so that counters move between scrapes. Then each PromQL
expression of each panel (Grafana variables substituted) must return data with a finite value, and
each alert rule must parse and evaluate.
"""

from __future__ import annotations

import math
import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from services.beat.main import create_app as create_beat_app
from shared.catalog import CATALOG
from shared.db import session_scope
from shared.schedules import ensure_defaults
from shared.settings import RUNTIME_BUCKETS, Settings
from shared.tokens import create_token
from tests.deploy.conftest import ALERT_RULES, PROMETHEUS_CONFIG, alert_rules, load_dashboards, panels, require_tool
from tests.harness import Process, free_port, service_argv, spawn, wait_http_ready, wait_until
from tests.services.monitor.conftest import MonitorStack

pytestmark = pytest.mark.integration

TEST_TASK = CATALOG["test_task"].celery_name
# Grafana's variables, as the dashboards would get them over the last few minutes of this test
RATE_INTERVAL, RANGE = "2m", "5m"
BATCH = [
    *({"task_name": "test_task", "kwargs": {"message": f"ok {i}"}} for i in range(4)),
    *({"task_name": "test_task", "kwargs": {"message": f"boom {i}", "fail": True}} for i in range(2)),
    {"task_name": "test_task", "kwargs": {"message": "transient:retried once"}},
    {"task_name": "cleanup_cache", "kwargs": {}},
]


@dataclass
class Prometheus:
    url: str
    process: Process

    def query(self, expr: str) -> dict[str, Any]:
        response = httpx.get(f"{self.url}/api/v1/query", params={"query": expr}, timeout=10)
        body: dict[str, Any] = response.json()
        return body

    def scalar(self, expr: str) -> float | None:
        result = self.query(expr)["data"]["result"]
        return float(result[0]["value"][1]) if result else None


@dataclass
class Platform:
    stack: MonitorStack
    gateway_url: str
    token: str
    prometheus: Prometheus


def prometheus_config(monitor: str, gateway: str, port: int) -> dict[str, Any]:
    """deploy/prometheus/prometheus.yml with its targets pointed at this machine, scraping every second."""
    config: dict[str, Any] = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    local = {"monitor:9808": monitor, "gateway:8000": gateway, "127.0.0.1:9090": f"127.0.0.1:{port}"}
    for job in config["scrape_configs"]:
        for static in job["static_configs"]:
            static["targets"] = [local[target] for target in static["targets"]]
    config["global"].update(scrape_interval="1s", evaluation_interval="1s")
    config["rule_files"] = [str(ALERT_RULES)]
    config.pop("alerting")  # no Alertmanager here; rules are still evaluated
    return config


def start_prometheus(config: dict[str, Any], port: int, workdir: Path) -> Prometheus:
    workdir.mkdir(parents=True, exist_ok=True)
    config_file = workdir / "prometheus.yml"
    config_file.write_text(yaml.safe_dump(config))
    argv = [
        require_tool("prometheus"),
        f"--config.file={config_file}",
        f"--storage.tsdb.path={workdir / 'data'}",
        f"--web.listen-address=127.0.0.1:{port}",
        "--log.level=warn",
    ]
    process = spawn("prometheus", argv, {}, workdir)
    prometheus = Prometheus(f"http://127.0.0.1:{port}", process)
    wait_http_ready(process, f"{prometheus.url}/-/ready", timeout=30)
    return prometheus


def start_gateway(env: dict[str, str], log_dir: Path) -> tuple[Process, str]:
    port = free_port()
    process = spawn(
        "gateway", service_argv("gateway", f"--port={port}"), env | {"MALLOPS_TASK_MAX_PER_USER": "1000"}, log_dir
    )
    url = f"http://127.0.0.1:{port}"
    wait_http_ready(process, f"{url}/readyz")
    return process, url


@pytest.fixture
def platform(monitor_stack: MonitorStack, migrated: Settings, tmp_path: Path) -> Iterator[Platform]:
    stack = monitor_stack
    stack.redis.client().config_set("maxmemory", "1gb")  # as compose sets it (REDIS_MAXMEMORY): the ratio has data
    stack.worker()
    stack.monitor()
    # the beat entries (as beat creates them at start), for the schedule panels and alert
    ensure_defaults(create_beat_app(stack.settings.model_copy(update={"database_url": migrated.database_url})))
    gateway, gateway_url = start_gateway(stack.env, stack.log_dir)
    stack.processes.append(gateway)  # stopped by the stack's fixture, with the others
    with session_scope(migrated) as session:
        token = create_token(session, f"deploy-e2e-{uuid.uuid4().hex[:8]}", "admin")
    port = free_port()
    prometheus = start_prometheus(
        prometheus_config(f"127.0.0.1:{stack.port}", gateway_url.removeprefix("http://"), port),
        port,
        tmp_path / "prometheus",
    )
    try:
        yield Platform(stack, gateway_url, token, prometheus)
    finally:
        prometheus.process.stop()


def run_batch(platform: Platform, finished_before: int) -> int:
    """Submit BATCH through the gateway; wait until Prometheus has scraped all of it from the gateway and
    the monitor, so that every counter has a sample between two batches (rate() needs the increase)."""
    response = httpx.post(
        f"{platform.gateway_url}/api/v1/tasks/batch",
        json={"tasks": BATCH},
        timeout=30,
        headers={"Authorization": f"Bearer {platform.token}"},
    )
    assert response.status_code == 202, response.text
    expected = finished_before + len(BATCH)
    for expr, what in (
        ("sum(mallops_gateway_tasks_submitted_total)", "submitted tasks from the gateway"),
        ("sum(celery_task_succeeded_total) + sum(celery_task_failed_total)", "finished tasks from the monitor"),
    ):

        def scraped(expr: str = expr) -> bool:
            return platform.prometheus.scalar(expr) == expected

        wait_until(scraped, timeout=60, interval=0.2, message=f"Prometheus to scrape {expected} {what}")
    return expected


#: the dashboards' variables set to one value each (what a person picks), and all set to "All"
CHOSEN = {"job": "mallops-monitor", "queue": "default", "task": TEST_TASK}
ALL = {"job": ".*", "queue": ".*", "task": ".*"}


def substitute(expr: str, variables: dict[str, str] = CHOSEN) -> str:
    """Grafana's template variables, as the dashboards would get them."""
    expr = expr.replace("$__rate_interval", RATE_INTERVAL).replace("$__range", RANGE).replace("$__interval", "1s")
    for name, value in variables.items():
        expr = expr.replace(f"${name}", value)
    return expr


def check_target(prometheus: Prometheus, where: str, target: dict[str, Any], variables: dict[str, str]) -> list[str]:
    """What is wrong with one panel query with ``variables`` set: it does not evaluate, has no data, or
    its legend names labels its result lacks."""
    expr = substitute(target["expr"], variables)
    where = f"{where} / {target['refId']}: {expr}"
    body = prometheus.query(expr)
    if body.get("status") != "success":
        return [f"{where}\n    does not evaluate: {body.get('error')}"]
    result = body["data"]["result"]
    values = [float(series["value"][1]) for series in result]
    if not any(math.isfinite(value) for value in values):
        return [f"{where}\n    no data (series: {len(result)}, values: {values})"]
    missing = legend_labels(target.get("legendFormat", "")) - set(result[0]["metric"])
    if missing:
        return [f"{where}\n    the legend uses labels the result lacks: {missing}"]
    return []


def legend_labels(legend: str) -> set[str]:
    return set(re.findall(r"\{\{\s*(\w+)\s*\}\}", legend))


def test_every_panel_and_alert_rule_evaluates_with_data(platform: Platform) -> None:
    prometheus = platform.prometheus
    finished = run_batch(platform, 0)
    run_batch(platform, finished)

    # the scrape targets of the real config answer
    targets = httpx.get(f"{prometheus.url}/api/v1/targets", timeout=10).json()["data"]["activeTargets"]
    assert {t["labels"]["job"]: t["health"] for t in targets} == {
        "mallops-monitor": "up",
        "mallops-gateway": "up",
        "prometheus": "up",
    }

    # each dashboard's variables offer what the stack runs: their queries, evaluated in order
    for dashboard in load_dashboards().values():
        for variable in dashboard["templating"]["list"]:
            if variable["type"] != "query":
                continue
            query = re.fullmatch(r"label_values\((.+), (\w+)\)", variable["query"]["query"])
            assert query is not None, variable["query"]
            selector = substitute(query[1])
            offered = httpx.get(
                f"{prometheus.url}/api/v1/label/{query[2]}/values", params={"match[]": selector}, timeout=10
            ).json()["data"]
            assert CHOSEN[variable["name"]] in offered, (variable["name"], selector, offered)

    # a catalog task that never ran has its counters, at zero (as celery-exporter starts them)
    never_ran = CATALOG["backup_database"].celery_name
    assert prometheus.scalar(f'sum(celery_task_sent_total{{name="{never_ran}"}})') == 0.0
    assert prometheus.scalar(f'sum(celery_task_revoked_total{{name="{TEST_TASK}"}})') == 0.0
    assert (prometheus.scalar('sum(celery_active_process_count{queue_name="default"})') or 0) >= 1.0

    problems = []
    evaluated = 0
    for variables in (CHOSEN, ALL):
        for file_name, dashboard in load_dashboards().items():
            for panel in panels(dashboard):
                for target in panel["targets"]:
                    evaluated += 1
                    problems += check_target(prometheus, f"{file_name} / {panel['title']}", target, variables)
    assert not problems, "\n".join(problems)
    assert evaluated >= 80

    # the histograms have the catalog's buckets, from milliseconds to the 30-minute hard limit
    for histogram in ("celery_task_runtime_bucket", "celery_task_queue_wait_time_bucket"):
        bounds = httpx.get(f"{prometheus.url}/api/v1/label/le/values", params={"match[]": histogram}, timeout=10).json()
        assert {"0.005", "1800.0", "+Inf"} <= set(bounds["data"]), (histogram, bounds)
        assert len(bounds["data"]) >= len(RUNTIME_BUCKETS) + 1
    assert prometheus.scalar('count(mallops_task_failures_total{critical="true"})') == 3

    for rule in alert_rules():
        body = prometheus.query(rule["expr"])
        assert body.get("status") == "success", f"alert {rule['alert']}: {body.get('error')}"

    # and Prometheus itself loaded alerts.yml and evaluates every rule without error
    def rules_evaluated() -> list[dict[str, Any]] | None:
        groups = httpx.get(f"{prometheus.url}/api/v1/rules", timeout=10).json()["data"]["groups"]
        rules = [rule for group in groups for rule in group["rules"]]
        done = all(rule.get("lastEvaluation", "").startswith("20") for rule in rules)
        return rules if rules and done else None

    rules = wait_until(rules_evaluated, timeout=20, interval=0.2, message="every alert rule evaluated")
    assert {rule["name"] for rule in rules} == {rule["alert"] for rule in alert_rules()}
    assert all(rule["health"] == "ok" for rule in rules), [(r["name"], r.get("lastError")) for r in rules]
