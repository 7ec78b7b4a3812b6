"""The front doors driven by ``wrk``, an HTTP client neither Flower nor mallops wrote (Debian's package).

Each run is one ``wrk`` invocation with a generated Lua script: the POST, its JSON body and headers, and a
``done`` hook that prints the request count, the errors and wrk's latency percentiles as one JSON line.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

WRK_MISSING = (
    "wrk is not installed (the front-door scenario drives it): `apt-get install wrk` (Debian/Ubuntu) or "
    "`brew install wrk` (macOS)"
)
MARK = "BENCH-WRK "

# wrk's `done(summary, latency, requests)`: latency in microseconds, errors by kind (status: non-2xx/3xx)
SCRIPT = """
wrk.method = "POST"
wrk.body = [==[{body}]==]
wrk.headers["Content-Type"] = "application/json"
{headers}
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '{mark}{{"requests":%d,"duration_us":%d,"errors":%d,"status_errors":%d,' ..
    '"p50_us":%d,"p90_us":%d,"p99_us":%d,"max_us":%d}}\\n',
    summary.requests, summary.duration, e.connect + e.read + e.write + e.timeout, e.status,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max))
end
"""


def binary() -> str | None:
    return shutil.which("wrk")


@dataclass
class Target:
    """One front door: what wrk POSTs where."""

    label: str
    url: str
    body: dict[str, Any]
    headers: dict[str, str]

    def script(self, directory: Path) -> Path:
        headers = "\n".join(f'wrk.headers["{name}"] = [==[{value}]==]' for name, value in self.headers.items())
        path = directory / f"wrk-{self.label.replace(' ', '-')}.lua"
        path.write_text(SCRIPT.format(body=json.dumps(self.body), headers=headers, mark=MARK))
        return path


def run(target: Target, directory: Path, seconds: float, threads: int = 2, connections: int = 16) -> dict[str, Any]:
    """One wrk run against ``target``: requests/s, errors and latency percentiles in ms."""
    wrk = binary()
    if wrk is None:
        raise RuntimeError(WRK_MISSING)
    argv = [
        wrk,
        f"--threads={threads}",
        f"--connections={connections}",
        f"--duration={max(1, round(seconds))}s",
        "--timeout=10s",
        f"--script={target.script(directory)}",
        target.url,
    ]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 60, check=False)
    lines = [line for line in done.stdout.splitlines() if line.startswith(MARK)]
    if done.returncode != 0 or not lines:
        raise RuntimeError(f"wrk failed ({done.returncode}): {done.stdout[-2000:]}{done.stderr[-2000:]}")
    raw = json.loads(lines[-1][len(MARK) :])
    duration = raw["duration_us"] / 1e6
    return {
        "requests": raw["requests"],
        "seconds": round(duration, 2),
        "req_per_s": round(raw["requests"] / duration, 1),
        "errors": raw["errors"] + raw["status_errors"],
        "latency_ms": {p: round(raw[f"{p}_us"] / 1000, 2) for p in ("p50", "p90", "p99", "max")},
    }
