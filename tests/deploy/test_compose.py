"""compose.yaml against the code: service commands, settings, ports, healthchecks, dependencies.

No Docker engine here: the file is parsed (variables substituted like ``docker compose`` does) and
compared with mallops/services.py, shared/settings.py, the Prometheus and Grafana files.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import typer.main

from mallops.cli import app as cli_app
from mallops.services import SERVICE_SPECS, WORKER_SERVICES
from shared.settings import Settings
from tests.deploy.conftest import (
    COMPOSE_FILE,
    DOCKERFILE,
    ENV_EXAMPLE,
    GRAFANA,
    PROMETHEUS_CONFIG,
    RABBITMQ_OVERRIDE,
    REQUIRED_SECRETS,
    Interpolated,
    env_example,
    load_compose,
    load_dashboards,
    load_yaml,
    panels,
    require_tool,
)
from tests.harness import ROOT

ONE_SHOT = {"migrate"}  # runs to completion before the platform starts; everything else stays up
CONDITIONS = {"service_healthy", "service_completed_successfully", "service_started"}


def spec_of(service: str) -> str | None:
    """The mallops/services.py name a compose service runs: ``gateway`` -> gateway, ``finance-worker``
    -> finance."""
    name = service.removesuffix("-worker")
    return name if name in SERVICE_SPECS else None


def mallops_services(compose: Interpolated) -> dict[str, dict[str, Any]]:
    """The services that run the mallops image."""
    return {name: svc for name, svc in compose.services.items() if "build" in svc}


def container_ports(service: dict[str, Any]) -> set[int]:
    """The container side of each published port ("[ip:]host:container")."""
    return {int(str(port).rsplit(":", 1)[-1]) for port in service.get("ports", [])}


def default(field: str) -> Any:
    return Settings.model_fields[field].default


# -- the file itself ----------------------------------------------------------------------------------


def check_compose_schema(*paths: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [require_tool("check-jsonschema"), "--builtin-schema", "vendor.compose-spec", *map(str, paths)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_compose_files_follow_the_compose_specification() -> None:
    done = check_compose_schema(COMPOSE_FILE, RABBITMQ_OVERRIDE)
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_schema_check_catches_a_misspelt_field(tmp_path: Path) -> None:
    bad = tmp_path / "compose.yaml"
    text = COMPOSE_FILE.read_text()
    bad.write_text(text.replace("    restart: unless-stopped\n", "    restrat: unless-stopped\n", 1))
    done = check_compose_schema(bad)
    assert done.returncode == 1
    assert "'restrat' w" in done.stdout, done.stdout


# -- the image -------------------------------------------------------------------------------------


def test_every_build_context_and_dockerfile_exists(compose: Interpolated) -> None:
    built = mallops_services(compose)
    assert built, "no service builds the mallops image"
    images = set()
    for name, service in built.items():
        build = service["build"]
        context = (COMPOSE_FILE.parent / build["context"]).resolve()
        assert context.is_dir(), f"{name}: build context {context} does not exist"
        assert (context / build.get("dockerfile", "Dockerfile")).is_file(), f"{name}: no Dockerfile in {context}"
        images.add(service["image"])
    assert images == {"mallops:latest"}, "every Python service must be the same image"
    assert (ROOT / ".dockerignore").is_file()
    assert DOCKERFILE.is_file()


def test_bind_mounted_files_exist(compose: Interpolated) -> None:
    for name, service in compose.services.items():
        for volume in service.get("volumes", []):
            source = str(volume).split(":", 1)[0]
            if source.startswith("."):
                assert (COMPOSE_FILE.parent / source).exists(), f"{name} mounts {source}, which does not exist"
            else:
                assert source in compose.data["volumes"], f"{name}: volume {source} is not declared"


# -- commands: the single source of truth ---------------------------------------------------------


def test_every_service_command_is_the_one_mallops_dev_runs(compose: Interpolated) -> None:
    ran = {}
    for name, service in mallops_services(compose).items():
        if name in ONE_SHOT:
            continue
        spec = spec_of(name)
        assert spec is not None, f"compose service {name} runs no service of mallops/services.py"
        assert service["command"] == list(SERVICE_SPECS[spec].argv), name
        ran[spec] = name
    assert set(ran) == set(SERVICE_SPECS), "every service of mallops/services.py runs in compose"
    assert {f"{worker}-worker" for worker in WORKER_SERVICES} <= set(compose.services)


def test_migrate_runs_the_migrate_command_with_demo_data_switch(compose: Interpolated) -> None:
    migrate = compose.services["migrate"]
    assert migrate["command"] == ["mallops", "migrate"]
    assert "migrate" in typer.main.get_command(cli_app).commands  # type: ignore[attr-defined]
    assert migrate["environment"]["MALLOPS_DEMO_DATA"] == "0"  # off unless MALLOPS_DEMO_DATA=1 in .env
    assert load_compose({"MALLOPS_DEMO_DATA": "1"}).services["migrate"]["environment"]["MALLOPS_DEMO_DATA"] == "1"
    assert migrate["restart"].startswith("on-failure")


# -- settings ----------------------------------------------------------------------------------------


def test_every_mallops_variable_is_a_setting() -> None:
    cli = {"MALLOPS_URL", "MALLOPS_TOKEN", "MALLOPS_CONFIG"}  # the CLI's own (mallops/config.py)
    assert all(name in (ROOT / "mallops" / "config.py").read_text() for name in cli)
    known = {f"MALLOPS_{name.upper()}" for name in Settings.model_fields} | cli
    for path in (COMPOSE_FILE, ENV_EXAMPLE, DOCKERFILE):
        used = set(re.findall(r"\bMALLOPS_[A-Z0-9_]+", path.read_text()))
        assert used, path
        assert used <= known, f"{path.name} uses variables that shared/settings.py does not read: {used - known}"


def test_environment_values_are_valid_settings(compose: Interpolated, monkeypatch: pytest.MonkeyPatch) -> None:
    for name, service in mallops_services(compose).items():
        for key in [key for key in os.environ if key.startswith("MALLOPS_")]:
            monkeypatch.delenv(key)
        for key, value in service["environment"].items():
            monkeypatch.setenv(key, str(value))
        monkeypatch.setenv("MALLOPS_DATABASE_URL", "postgresql://mallops:x@postgres:5432/mallops")  # the secret
        settings = Settings(_env_file=None)  # read from the environment, as the container's process does
        assert settings.environment == "production", name
        assert settings.sqlalchemy_url.startswith("postgresql+psycopg://"), name
        assert settings.data_dir == Path("/data"), name


def test_every_compose_variable_is_documented_in_env_example(compose: Interpolated) -> None:
    documented = set(env_example())
    assert compose.variables <= documented, f"add to .env.example: {sorted(compose.variables - documented)}"


def test_secrets_are_required_and_never_written_in(compose: Interpolated) -> None:
    assert set(compose.required) == REQUIRED_SECRETS
    for name, message in compose.required.items():
        assert ".env" in message, f"${{{name}:?...}} should say where to set it: {message!r}"
        assert env_example()[name] == "", f".env.example must not suggest a value for {name}"
    # every secret-looking setting comes from the environment, never a literal in the file
    text = COMPOSE_FILE.read_text()
    for key, value in re.findall(r"^\s*([A-Z_]*(?:PASSWORD|TOKEN|SECRET)[A-Z_]*):\s*(.*)$", text, re.MULTILINE):
        assert value.startswith("${"), f"{key} is written into compose.yaml"
    for line in DOCKERFILE.read_text().splitlines():
        assert not re.search(r"^(ENV|ARG)\b.*(PASSWORD|TOKEN|SECRET)", line), f"a secret in the image: {line}"


def test_filled_in_secrets_reach_the_services() -> None:
    filled = dict.fromkeys(REQUIRED_SECRETS, "x" * 24)
    data = load_compose(filled)
    assert data.services["grafana"]["environment"]["GF_SECURITY_ADMIN_PASSWORD"] == "x" * 24
    assert "x" * 24 in data.services["gateway"]["environment"]["MALLOPS_DATABASE_URL"]


# -- health, dependencies, restarts, scaling --------------------------------------------------------


def test_every_service_has_a_healthcheck(compose: Interpolated) -> None:
    for name, service in compose.services.items():
        if name in ONE_SHOT:
            continue
        check = service.get("healthcheck") or {}
        assert check.get("test"), f"{name} has no healthcheck"
        assert not check.get("disable"), name
        spec = spec_of(name)
        if spec is not None:
            assert check["test"] == ["CMD", *SERVICE_SPECS[spec].probe_argv], f"{name}: use `mallops probe {spec}`"


def test_depends_on_waits_for_health(compose: Interpolated) -> None:
    for name, service in compose.services.items():
        depends = service.get("depends_on", {})
        assert isinstance(depends, dict), f"{name}: depends_on needs the long form with a condition"
        for target, rule in depends.items():
            assert target in compose.services, f"{name} depends on unknown {target}"
            condition = rule["condition"]
            assert condition in CONDITIONS, (name, target, condition)
            if condition == "service_completed_successfully":
                assert target in ONE_SHOT, (name, target)
            if target in ONE_SHOT:
                assert condition == "service_completed_successfully", (name, target)
    for name in mallops_services(compose):
        if name in ONE_SHOT:
            continue
        depends = compose.services[name]["depends_on"]
        assert depends["redis"]["condition"] == "service_healthy", name
        assert depends["postgres"]["condition"] == "service_healthy", name
        assert depends["migrate"]["condition"] == "service_completed_successfully", name
    assert compose.services["notifier-worker"]["depends_on"]["mailpit"]["condition"] == "service_healthy"
    assert compose.services["grafana"]["depends_on"]["prometheus"]["condition"] == "service_healthy"


def test_restart_policies(compose: Interpolated) -> None:
    for name, service in compose.services.items():
        expected = "on-failure" if name in ONE_SHOT else "unless-stopped"
        assert str(service.get("restart", "")).startswith(expected), name


def test_workers_scale(compose: Interpolated) -> None:
    """`docker compose up --scale finance-worker=4` needs no fixed container name or host port."""
    for worker in WORKER_SERVICES:
        service = compose.services[f"{worker}-worker"]
        assert "container_name" not in service
        assert "ports" not in service
    assert not [name for name, service in compose.services.items() if "container_name" in service]


def test_data_lives_in_named_volumes(compose: Interpolated) -> None:
    mounts = {
        name: {str(v).split(":")[1] for v in svc.get("volumes", []) if not str(v).startswith(".")}
        for name, svc in compose.services.items()
    }
    assert "/data" in mounts["redis"]
    assert "/var/lib/postgresql/data" in mounts["postgres"]
    assert "/prometheus" in mounts["prometheus"]
    assert "/var/lib/grafana" in mounts["grafana"]
    data_dir = compose.services["gateway"]["environment"]["MALLOPS_DATA_DIR"]
    for name in ("gateway", "reports-worker", "maintenance-worker"):  # report files, exports, backups
        assert data_dir in mounts[name], name


def test_redis_keeps_every_message(compose: Interpolated) -> None:
    command = compose.services["redis"]["command"]
    options = dict(zip(command[1::2], command[2::2], strict=True))
    assert options["--appendonly"] == "yes"
    assert options["--maxmemory-policy"] == "noeviction"
    assert options["--maxmemory"] == "1gb"  # REDIS_MAXMEMORY; the RedisMemoryHigh alert needs a limit


# -- ports and addresses agree ---------------------------------------------------------------------------


def test_http_services_listen_where_probes_prometheus_and_ports_expect(compose: Interpolated) -> None:
    env = compose.services["gateway"]["environment"]
    assert env["MALLOPS_GATEWAY_HOST"] == env["MALLOPS_MONITOR_HOST"] == "0.0.0.0"  # noqa: S104
    assert "MALLOPS_GATEWAY_PORT" not in env
    assert "MALLOPS_MONITOR_PORT" not in env
    ports = {"gateway": default("gateway_port"), "monitor": default("monitor_port")}
    for service, port in ports.items():
        assert container_ports(compose.services[service]) == {port}, service

    scraped = {
        target
        for job in load_yaml(PROMETHEUS_CONFIG)["scrape_configs"]
        for static in job["static_configs"]
        for target in static["targets"]
    }
    assert {f"{service}:{port}" for service, port in ports.items()} <= scraped
    for target in scraped - {f"{service}:{port}" for service, port in ports.items()}:
        assert target == "127.0.0.1:9090", f"unexpected scrape target {target}"
    assert container_ports(compose.services["prometheus"]) == {9090}


def test_prometheus_reads_the_mounted_files(compose: Interpolated) -> None:
    config = load_yaml(PROMETHEUS_CONFIG)
    mounts = dict(str(v).split(":")[:2] for v in compose.services["prometheus"]["volumes"])
    assert mounts["./deploy/prometheus"] == "/etc/prometheus"
    assert "--config.file=/etc/prometheus/prometheus.yml" in compose.services["prometheus"]["command"]
    for rule_file in config["rule_files"]:
        assert (PROMETHEUS_CONFIG.parent / rule_file).is_file(), rule_file
    alertmanagers = [
        target
        for am in config["alerting"]["alertmanagers"]
        for static in am["static_configs"]
        for target in static["targets"]
    ]
    assert alertmanagers == [f"alertmanager:{next(iter(container_ports(compose.services['alertmanager'])))}"]


def test_grafana_datasource_and_dashboards_agree(compose: Interpolated) -> None:
    grafana = compose.services["grafana"]
    mounts = dict(str(v).split(":")[:2] for v in grafana["volumes"] if str(v).startswith("."))
    provisioning = Path(mounts["./deploy/grafana/provisioning"])
    assert provisioning == Path("/etc/grafana/provisioning")

    datasources = load_yaml(GRAFANA / "provisioning" / "datasources" / "prometheus.yml")["datasources"]
    assert len(datasources) == 1
    source = datasources[0]
    assert source["type"] == "prometheus"
    assert source["url"] == f"http://prometheus:{next(iter(container_ports(compose.services['prometheus'])))}"

    provider = load_yaml(GRAFANA / "provisioning" / "dashboards" / "mallops.yml")["providers"][0]
    assert mounts["./deploy/grafana/dashboards"] == provider["options"]["path"]
    home = Path(grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"])
    assert home.parent == Path(provider["options"]["path"])

    dashboards = load_dashboards()
    assert home.name in dashboards
    for file_name, dashboard in dashboards.items():
        # the panels use the `datasource` variable, which offers every Prometheus data source: the
        # provisioned one is picked when it is the default (or the only one)
        assert source["isDefault"] is True
        variable = next(v for v in dashboard["templating"]["list"] if v["name"] == "datasource")
        assert variable["query"] == source["type"], file_name
        for panel in panels(dashboard):
            assert panel["datasource"]["uid"] == "${datasource}", (file_name, panel["title"])
            for target in panel["targets"]:
                assert target["datasource"]["uid"] == "${datasource}", (file_name, panel["title"])


def test_notifier_mails_to_mailpit(compose: Interpolated) -> None:
    env = compose.services["notifier-worker"]["environment"]
    assert env["MALLOPS_SMTP_HOST"] == "mailpit"
    assert env["MALLOPS_SMTP_PORT"] == "1025"  # mailpit's SMTP port; its web UI is 8025
    assert container_ports(compose.services["mailpit"]) == {8025}


@pytest.mark.parametrize("service", ["gateway", "monitor", "grafana", "prometheus", "alertmanager", "mailpit"])
def test_published_ports_are_documented(compose: Interpolated, service: str) -> None:
    readme = (ROOT / "deploy" / "README.md").read_text()
    for port in container_ports(compose.services[service]):
        assert str(port) in readme, f"deploy/README.md does not mention {service}'s port {port}"


def test_rabbitmq_override_moves_every_broker_user(compose: Interpolated) -> None:
    """deploy/compose.rabbitmq.yaml: RabbitMQ as broker for every service that talks to the broker."""
    override = load_compose(path=RABBITMQ_OVERRIDE)
    rabbitmq = override.services.pop("rabbitmq")
    assert rabbitmq["healthcheck"]["test"]
    assert str(rabbitmq["restart"]) == "unless-stopped"
    assert set(override.services) == set(mallops_services(compose)) - ONE_SHOT
    for name, service in override.services.items():
        assert service["environment"]["MALLOPS_BROKER_URL"].startswith("amqp://mallops:"), name
        assert service["depends_on"] == {"rabbitmq": {"condition": "service_healthy"}}, name
    assert set(override.required) == {"RABBITMQ_PASSWORD"}
    assert override.variables <= set(env_example())
    password = load_compose({"RABBITMQ_PASSWORD": "s3cret"}, RABBITMQ_OVERRIDE)
    url = password.services["gateway"]["environment"]["MALLOPS_BROKER_URL"]
    assert Settings(broker_url=url).celery_broker_url == "amqp://mallops:s3cret@rabbitmq:5672//"
