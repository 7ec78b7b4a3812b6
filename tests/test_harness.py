"""The harness's own promises: a missing redis-server is a clear failure, not a hang or a traceback."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests import harness


def test_without_redis_server_or_docker_the_harness_says_how_to_install_it(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    real_which = shutil.which
    monkeypatch.setattr(shutil, "which", lambda name: None if name == "redis-server" else real_which(name))
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/no-docker.sock")  # no engine answers there
    with pytest.raises(pytest.fail.Exception, match=r"apt-get install redis-server"):
        harness.start_redis(tmp_path / "redis")
