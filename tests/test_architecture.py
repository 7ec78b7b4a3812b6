"""Architecture rules that code review alone would miss: services never import one another, and
``shared`` never imports a service."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SERVICES_DIR = ROOT / "services"


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level > 1:
            names.add("<relative import above the package>")
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "import_module"
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            names.add(node.args[0].value)
    return names


def boundary_violations(root: Path) -> list[str]:
    """Every import in ``root/services/<a>`` of ``services.<b>`` (b != a), and of any service from shared."""
    services = sorted(p.name for p in (root / "services").iterdir() if (p / "__init__.py").exists())
    problems: list[str] = []
    for service in services:
        for path in sorted((root / "services" / service).rglob("*.py")):
            for name in sorted(imported_modules(path)):
                parts = name.split(".")
                if name.startswith("<"):
                    problems.append(f"{path.relative_to(root)}: {name}")
                elif parts[0] == "services" and len(parts) > 1 and parts[1] != service:
                    problems.append(f"{path.relative_to(root)} imports {name}")
    for path in sorted((root / "shared").rglob("*.py")):
        problems.extend(
            f"{path.relative_to(root)} imports {name}"
            for name in sorted(imported_modules(path))
            if name == "services" or name.startswith("services.")
        )
    return problems


def test_services_import_only_shared_and_themselves() -> None:
    assert boundary_violations(ROOT) == []


@pytest.mark.parametrize(
    "source",
    [
        "from services.finance.billing import mark_overdue\n",
        "import services.notifier.mailer\n",
        "from services.notifier import mailer\n",
        "import importlib\nimportlib.import_module('services.reports.tasks')\n",
        "from ...finance import billing\n",
    ],
)
def test_the_boundary_check_catches_a_cross_service_import(tmp_path: Path, source: str) -> None:
    for name in ("gateway", "finance", "notifier", "reports"):
        (tmp_path / "services" / name).mkdir(parents=True)
        (tmp_path / "services" / name / "__init__.py").write_text("")
    (tmp_path / "shared").mkdir()
    (tmp_path / "services" / "gateway" / "routes.py").write_text(source)
    assert boundary_violations(tmp_path) != []


def test_shared_may_not_import_a_service(tmp_path: Path) -> None:
    (tmp_path / "services" / "gateway").mkdir(parents=True)
    (tmp_path / "services" / "gateway" / "__init__.py").write_text("")
    (tmp_path / "shared").mkdir()
    (tmp_path / "shared" / "catalog.py").write_text("from services.gateway import app\n")
    assert boundary_violations(tmp_path) == [
        "shared/catalog.py imports services.gateway",
        "shared/catalog.py imports services.gateway.app",
    ]


def test_every_service_folder_is_a_package() -> None:
    expected = {"gateway", "finance", "reports", "notifier", "monitor", "maintenance"}
    present = {p.name for p in SERVICES_DIR.iterdir() if (p / "__init__.py").exists()}
    assert expected <= present


MAX_FUNCTION_LINES = 60
LONG_REASON = "# long:"  # written on the line above a function that must stay longer, with the reason


def long_functions(root: Path) -> list[str]:
    """Production functions over MAX_FUNCTION_LINES lines without a ``# long:`` reason (migrations excepted)."""
    found = []
    for package in ("shared", "services", "mallops"):
        for path in sorted((root / package).rglob("*.py")):
            if "migrations" in path.parts:
                continue
            lines = path.read_text().splitlines()
            for node in ast.walk(ast.parse("\n".join(lines), filename=str(path))):
                if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) or node.end_lineno is None:
                    continue
                first = min([node.lineno, *(d.lineno for d in node.decorator_list)])
                reason = first >= 2 and lines[first - 2].strip().startswith(LONG_REASON)
                if node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES and not reason:
                    found.append(f"{path.relative_to(root)}:{node.lineno} {node.name}")
    return found


def test_no_production_function_is_long_without_a_reason() -> None:
    assert long_functions(ROOT) == []


def test_the_length_check_finds_a_long_function_and_accepts_a_reason(tmp_path: Path) -> None:
    for package in ("shared", "services", "mallops"):
        (tmp_path / package).mkdir()
    body = "".join(f"    x{i} = {i}\n" for i in range(MAX_FUNCTION_LINES))
    (tmp_path / "services" / "long.py").write_text(f"def long() -> None:\n{body}")
    (tmp_path / "shared" / "ok.py").write_text(f"{LONG_REASON} a table of constants\ndef table() -> None:\n{body}")
    assert long_functions(tmp_path) == ["services/long.py:1 long"]


@pytest.mark.parametrize("service", ["finance", "maintenance", "notifier", "reports"])
def test_an_idle_worker_holds_no_sqlalchemy_nor_redbeat(service: str) -> None:
    """Workers import the database side and the schedules when a task needs them, so an idle worker (and,
    on prefork, each child) carries neither SQLAlchemy nor RedBeat with Tornado (docs/performance.md, idle
    memory; ``python -m bench idle-memory``)."""
    code = (
        f"import sys\nfrom services.{service}.main import create_app\n"
        "app = create_app()\napp.loader.import_default_modules()\n"
        "import shared.worker, shared.celery_extensions.events\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('sqlalchemy', 'redbeat'))[:5])\n"
    )
    env = {**os.environ, "MALLOPS_ENVIRONMENT": "development", "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
