"""Where the CLI finds the gateway and its token: environment, config file, defaults."""

from __future__ import annotations

from pathlib import Path

import pytest

from mallops.config import ConfigError, config_path, load_config
from tests.mallops.conftest import CliRunner


def test_defaults_follow_the_gateway_port_setting(tmp_path: Path) -> None:
    env = {"MALLOPS_CONFIG": str(tmp_path / "none.toml"), "MALLOPS_GATEWAY_PORT": "18001"}
    config = load_config(env)
    assert (config.url, config.token, config.source) == ("http://127.0.0.1:18001", None, "defaults")


def test_the_config_file_is_read_and_the_environment_wins(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text('url = "https://ops.mall.example/"\ntoken = "mlp_from_file"\ntimeout = 4\n')
    from_file = load_config({"MALLOPS_CONFIG": str(path)})
    assert (from_file.url, from_file.token, from_file.timeout) == ("https://ops.mall.example", "mlp_from_file", 4.0)
    from_env = load_config({"MALLOPS_CONFIG": str(path), "MALLOPS_TOKEN": "mlp_env"})
    assert (from_env.url, from_env.token) == ("https://ops.mall.example", "mlp_env")


def test_the_default_config_file_lives_under_xdg_config_home(tmp_path: Path) -> None:
    assert config_path({"XDG_CONFIG_HOME": str(tmp_path)}) == tmp_path / "mallops" / "config.toml"
    (tmp_path / "mallops").mkdir()
    (tmp_path / "mallops" / "config.toml").write_text('token = "mlp_xdg"\n')
    assert load_config({"XDG_CONFIG_HOME": str(tmp_path)}).token == "mlp_xdg"


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("url = ", "cannot read config file"),
        ('colour = "red"\n', "unknown key(s) colour"),
        ("token = 42\n", "token must be a string"),
        ('url = "ftp://x"\n', "must start with http:// or https://"),
    ],
)
def test_a_bad_config_file_is_one_clear_line_and_exit_2(
    tmp_path: Path, cli: CliRunner, content: str, message: str
) -> None:
    path = tmp_path / "config.toml"
    path.write_text(content)
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_config({"MALLOPS_CONFIG": str(path)})
    result = cli("tasks", "list", env={"MALLOPS_CONFIG": str(path), "MALLOPS_URL": "", "MALLOPS_TOKEN": ""})
    assert result.code == 2
    assert len(result.err_lines) == 1
    assert result.err.startswith("mallops: ")
    assert message in result.err
