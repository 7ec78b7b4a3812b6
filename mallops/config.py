"""Where the CLI and :class:`mallops.client.Client` find the gateway and the token.

In order of precedence:

1. ``MALLOPS_URL`` and ``MALLOPS_TOKEN`` in the environment;
2. the config file: ``$MALLOPS_CONFIG`` when set, else ``$XDG_CONFIG_HOME/mallops/config.toml``
   (``~/.config/mallops/config.toml``), a TOML file with top-level ``url`` and ``token`` keys::

       url = "http://127.0.0.1:8000"
       token = "mallops_..."

3. the default URL ``http://127.0.0.1:<MALLOPS_GATEWAY_PORT or 8000>`` and no token.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any


class ConfigError(ValueError):
    """The config file cannot be read or holds something it should not."""


DEFAULT_TIMEOUT = 10.0


@dataclass(frozen=True)
class ClientConfig:
    url: str
    token: str | None
    timeout: float = DEFAULT_TIMEOUT
    source: str = "defaults"


def config_path(environ: os._Environ[str] | dict[str, str] | None = None) -> Path:
    env = os.environ if environ is None else environ
    explicit = env.get("MALLOPS_CONFIG")
    if explicit:
        return Path(explicit).expanduser()
    base = env.get("XDG_CONFIG_HOME") or str(Path("~/.config").expanduser())
    return Path(base) / "mallops" / "config.toml"


def _read_file(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            data = tomllib.load(fh)
    except FileNotFoundError:
        return {}
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"cannot read config file {path}: {exc}") from exc
    unknown = sorted(set(data) - {"url", "token", "timeout"})
    if unknown:
        raise ConfigError(f"config file {path}: unknown key(s) {', '.join(unknown)} (allowed: url, token, timeout)")
    for key in ("url", "token"):
        if key in data and not isinstance(data[key], str):
            raise ConfigError(f"config file {path}: {key} must be a string")
    if "timeout" in data and (not isinstance(data["timeout"], int | float) or data["timeout"] <= 0):
        raise ConfigError(f"config file {path}: timeout must be a positive number of seconds")
    return data


def load_config(environ: os._Environ[str] | dict[str, str] | None = None) -> ClientConfig:
    """The gateway URL and token from the environment, the config file and the defaults."""
    env = os.environ if environ is None else environ
    path = config_path(env)
    file_values = _read_file(path)
    port = env.get("MALLOPS_GATEWAY_PORT") or "8000"
    url = env.get("MALLOPS_URL") or file_values.get("url") or f"http://127.0.0.1:{port}"
    token = env.get("MALLOPS_TOKEN") or file_values.get("token") or None
    if not url.startswith(("http://", "https://")):
        raise ConfigError(f"the gateway URL must start with http:// or https://, not {url!r}")
    sources = [name for name in ("MALLOPS_URL", "MALLOPS_TOKEN") if env.get(name)]
    if file_values:
        sources.append(str(path))
    return ClientConfig(
        url=url.rstrip("/"),
        token=token,
        timeout=float(file_values.get("timeout", DEFAULT_TIMEOUT)),
        source=", ".join(sources) or "defaults",
    )
