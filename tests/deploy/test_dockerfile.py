"""The Dockerfile: hadolint passes (and catches a bad Dockerfile), and the layout the issue asks for:
multi-stage, dependencies in their own cached layer, no compiler in the final image, not root."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

from tests.deploy.conftest import DOCKERFILE, require_tool
from tests.harness import ROOT

BAD_DOCKERFILE = """\
FROM python:latest
RUN apt-get update && apt-get install gcc
COPY . /app
RUN pip install /app
USER root
CMD mallops serve gateway
"""


def hadolint(path: Path) -> list[dict[str, Any]]:
    done = subprocess.run(
        [require_tool("hadolint"), "--config", str(ROOT / ".hadolint.yaml"), "--format", "json", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    findings: list[dict[str, Any]] = json.loads(done.stdout or "[]")
    assert (done.returncode == 0) == (not findings), done.stdout + done.stderr
    return findings


def stages(text: str) -> list[list[str]]:
    """The Dockerfile's instructions (continuation lines joined), split into build stages."""
    joined = re.sub(r"\\\n\s*", " ", text)
    result: list[list[str]] = []
    for line in joined.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.upper().startswith("FROM "):
            result.append([])
        if result:
            result[-1].append(line)
    return result


def test_hadolint_passes() -> None:
    assert hadolint(DOCKERFILE) == []


def test_hadolint_catches_a_bad_dockerfile(tmp_path: Path) -> None:
    bad = tmp_path / "Dockerfile"
    bad.write_text(BAD_DOCKERFILE)
    codes = {finding["code"] for finding in hadolint(bad)}
    # latest tag, apt without -y / --no-install-recommends / list cleanup, root user, shell-form CMD
    assert {"DL3007", "DL3014", "DL3015", "DL3009", "DL3002", "DL3025"} <= codes, codes


def test_multi_stage_slim_non_root_with_cached_dependency_layer() -> None:
    builder, runtime = stages(DOCKERFILE.read_text())
    assert builder[0].endswith("AS builder")
    assert "python:3.11-slim" in DOCKERFILE.read_text()

    copies = [i for i, line in enumerate(builder) if line.startswith("COPY")]
    first_install = next(i for i, line in enumerate(builder) if "pip install" in line)
    assert builder[copies[0]] == "COPY pyproject.toml ./", "dependencies come from pyproject.toml alone"
    assert copies[0] < first_install < copies[1], "the dependency layer is built before the source is copied"
    assert any("COPY shared" in line for line in builder[first_install:])

    assert "COPY --from=builder /opt/venv /opt/venv" in runtime
    assert not any(word in " ".join(runtime) for word in ("gcc", "build-essential", "-dev ", "pip install"))
    user = [line for line in runtime if line.startswith("USER ")]
    assert user
    assert user[-1].split()[1].split(":")[0] not in {"root", "0"}


def test_dockerignore_keeps_secrets_and_local_state_out() -> None:
    ignored = set((ROOT / ".dockerignore").read_text().split())
    assert {".env", ".git", ".venv", ".mallops", "tests"} <= ignored
