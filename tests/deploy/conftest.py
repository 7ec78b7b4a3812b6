"""Fixtures for the deployment files: compose.yaml (interpolated the way ``docker compose`` does it),
the Prometheus and Grafana files, and the external tools that check them (promtool, amtool, hadolint).

There is no Docker engine on these machines: everything here is checked statically, plus one test
that runs the real Prometheus against the local stack (test_observability_e2e.py).
"""

from __future__ import annotations

import json
import re
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.harness import ROOT
from tests.services.monitor.conftest import monitor_stack  # noqa: F401 - the monitor tests' stack, reused

COMPOSE_FILE = ROOT / "compose.yaml"
RABBITMQ_OVERRIDE = ROOT / "deploy" / "compose.rabbitmq.yaml"
ENV_EXAMPLE = ROOT / ".env.example"
DOCKERFILE = ROOT / "Dockerfile"
DEPLOY = ROOT / "deploy"
PROMETHEUS_CONFIG = DEPLOY / "prometheus" / "prometheus.yml"
ALERT_RULES = DEPLOY / "prometheus" / "alerts.yml"
ALERT_TESTS = DEPLOY / "prometheus" / "alerts.test.yml"
ALERTMANAGER_CONFIG = DEPLOY / "alertmanager" / "alertmanager.yml"
GRAFANA = DEPLOY / "grafana"
DASHBOARDS = GRAFANA / "dashboards"

# the secrets compose.yaml requires (${NAME:?message}), with a template in .env.example
REQUIRED_SECRETS = frozenset({"POSTGRES_PASSWORD", "MALLOPS_BOOTSTRAP_ADMIN_TOKEN", "GRAFANA_ADMIN_PASSWORD"})

# Debian packages that provide the tools (scripts/test installs them when missing and run as root)
TOOL_PACKAGES = {"promtool": "prometheus", "prometheus": "prometheus", "amtool": "prometheus-alertmanager"}

# ${NAME}, ${NAME:-default}, ${NAME-default}, ${NAME:?message}, ${NAME?message}: the forms compose.yaml uses
_VARIABLE = re.compile(r"\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}")


@dataclass
class Interpolated:
    """compose.yaml with every ``${...}`` replaced, and what was used."""

    data: dict[str, Any]
    variables: set[str] = field(default_factory=set)
    required: dict[str, str] = field(default_factory=dict)  # name -> the error message of ${NAME:?message}

    @property
    def services(self) -> dict[str, dict[str, Any]]:
        services: dict[str, dict[str, Any]] = self.data["services"]
        return services


class Interpolator:
    """Compose's variable substitution for the forms above, applied (as compose does) to the string
    values of the parsed file, with ``env`` as the environment (.env).

    A required variable missing from ``env`` becomes ``<NAME>`` so the checks can go on; a ``$`` that
    starts any other form fails, so no check silently reads an unsubstituted value."""

    def __init__(self, env: dict[str, str] | None = None) -> None:
        self.env = env or {}
        self.used: set[str] = set()
        self.required: dict[str, str] = {}

    def __call__(self, value: Any) -> Any:
        if isinstance(value, dict):
            return {key: self(item) for key, item in value.items()}
        if isinstance(value, list):
            return [self(item) for item in value]
        if isinstance(value, str):
            return self.string(value)
        return value

    def string(self, text: str) -> str:
        result = _VARIABLE.sub(self._replace, text.replace("$$", "\0"))
        stray = re.search(r"\$.{0,20}", result)
        if stray:
            raise ValueError(f"unsupported interpolation in compose.yaml: {stray.group(0)!r}")
        return result.replace("\0", "$")

    def _replace(self, match: re.Match[str]) -> str:
        name, op, arg = match["name"], match["op"] or "", match["arg"] or ""
        self.used.add(name)
        value = self.env.get(name)
        if op.endswith("?"):
            self.required[name] = arg
            return value if value else f"<{name}>"
        if op.endswith("-"):
            return value if value else arg
        return value or ""


def load_compose(env: dict[str, str] | None = None, path: Path = COMPOSE_FILE) -> Interpolated:
    interpolator = Interpolator(env)
    data = interpolator(yaml.safe_load(path.read_text()))
    return Interpolated(data, interpolator.used, interpolator.required)


def env_example() -> dict[str, str]:
    """Every variable that .env.example names (set or commented out) -> its example value."""
    values: dict[str, str] = {}
    for line in ENV_EXAMPLE.read_text().splitlines():
        match = re.match(r"^#?\s*([A-Z][A-Z0-9_]*)=(.*)$", line.strip())
        if match:
            values[match[1]] = match[2]
    return values


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def load_dashboards() -> dict[str, dict[str, Any]]:
    return {path.name: json.loads(path.read_text()) for path in sorted(DASHBOARDS.glob("*.json"))}


def panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    """Every panel that shows data (rows left out, panels inside collapsed rows included)."""
    found: list[dict[str, Any]] = []
    for panel in dashboard["panels"]:
        if panel["type"] == "row":
            found.extend(panel.get("panels", []))
        else:
            found.append(panel)
    return found


def alert_rules() -> list[dict[str, Any]]:
    return [rule for group in load_yaml(ALERT_RULES)["groups"] for rule in group["rules"]]


def require_tool(name: str) -> str:
    """The path of ``name``: in this virtualenv (pip-installed tools) or on PATH; fail with how to get it."""
    local = Path(sys.executable).parent / name
    if local.exists():
        return str(local)
    found = shutil.which(name)
    if found is None:
        package = TOOL_PACKAGES.get(name)
        how = (
            f"apt-get install {package} (./scripts/test does it when run as root)"
            if package
            else "pip install -e '.[test]'"
        )
        pytest.fail(f"{name} is not installed: {how}")
    return found


@pytest.fixture(scope="session")
def compose() -> Interpolated:
    return load_compose()
