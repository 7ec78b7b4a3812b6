"""What the bench measures with: percentiles, median and spread of repeated runs, and process memory."""

from __future__ import annotations

import os
import statistics
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import psutil

MB = 1024 * 1024


def percentiles(values: Sequence[float], points: Sequence[int] = (50, 95, 99)) -> dict[str, float | None]:
    """``{"p50": ..., "p95": ..., "p99": ..., "max": ...}`` in the unit of ``values`` (None when empty)."""
    if not values:
        return {**{f"p{p}": None for p in points}, "max": None, "n": 0}
    ordered = sorted(values)
    result: dict[str, float | None] = {}
    for p in points:
        index = min(len(ordered) - 1, max(0, round(p / 100 * len(ordered) + 0.5) - 1))
        result[f"p{p}"] = ordered[index]
    result["max"] = ordered[-1]
    result["n"] = len(ordered)
    return result


def spread(runs: Sequence[float]) -> dict[str, Any]:
    """Median, min, max and spread ((max - min) / median, in %) of repeated runs."""
    if not runs:
        return {"runs": [], "median": None, "min": None, "max": None, "spread_pct": None}
    median = statistics.median(runs)
    return {
        "runs": [round(r, 1) for r in runs],
        "median": round(median, 1),
        "min": round(min(runs), 1),
        "max": round(max(runs), 1),
        "spread_pct": round((max(runs) - min(runs)) / median * 100, 1) if median else None,
    }


def cpu_per_task(before: dict[str, float], after: dict[str, float], tasks: int) -> dict[str, float]:
    """CPU milliseconds per task of each watched process tree between two :meth:`PeakRSS.cpu` readings."""
    return {
        role: round((after[role] - before.get(role, 0.0)) * 1000 / tasks, 3)
        for role in after
        if tasks and role in before
    }


def median_cpu(runs: Sequence[dict[str, float]]) -> dict[str, float]:
    """Per role, the median of several runs' :func:`cpu_per_task`."""
    roles = {role for run in runs for role in run}
    return {role: round(statistics.median([run[role] for run in runs if role in run]), 3) for role in sorted(roles)}


def tree(pid: int, children: bool = True) -> list[psutil.Process]:
    """``pid`` and (unless ``children`` is False) every process below it."""
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)] if children else [root]
    except psutil.NoSuchProcess:
        return []


def tree_memory(pid: int, pss: bool = False) -> dict[str, Any]:
    """RSS (and PSS when asked) of a process tree now, in MB: total and per process."""
    processes = []
    for proc in tree(pid):
        try:
            info = proc.memory_full_info() if pss else proc.memory_info()
            processes.append(
                {
                    "pid": proc.pid,
                    "name": _label(proc),
                    "rss_mb": round(info.rss / MB, 1),
                    **({"pss_mb": round(info.pss / MB, 1)} if pss else {}),
                }
            )
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    result: dict[str, Any] = {"rss_mb": round(sum(p["rss_mb"] for p in processes), 1), "processes": processes}
    if pss:
        result["pss_mb"] = round(sum(p["pss_mb"] for p in processes), 1)
    return result


def _label(proc: psutil.Process) -> str:
    try:
        cmd = proc.cmdline()
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return "?"
    return " ".join(os.path.basename(part) if i == 0 else part for i, part in enumerate(cmd[:4]))[:80]


@dataclass
class PeakRSS:
    """Samples the RSS of named process trees in a thread; keeps each process's peak and each tree's peak sum."""

    interval: float = 0.25
    roots: dict[str, int] = field(default_factory=dict)
    alone: set[str] = field(default_factory=set)  # roles measured without their child processes
    peaks: dict[str, dict[int, tuple[str, int]]] = field(default_factory=dict)
    peak_totals: dict[str, int] = field(default_factory=dict)
    series: dict[str, list[tuple[float, int]]] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def watch(self, role: str, pid: int, children: bool = True) -> None:
        with self._lock:
            self.roots[role] = pid
            if not children:
                self.alone.add(role)

    def forget(self, role: str) -> None:
        with self._lock:
            self.roots.pop(role, None)

    def start(self) -> PeakRSS:
        self._thread = threading.Thread(target=self._run, name="bench-rss", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def sample(self) -> None:
        with self._lock:
            roots = dict(self.roots)
        now = time.monotonic()
        for role, pid in roots.items():
            total = 0
            for proc in tree(pid, role not in self.alone):
                try:
                    rss = proc.memory_info().rss
                except (psutil.NoSuchProcess, psutil.AccessDenied):
                    continue
                total += rss
                per = self.peaks.setdefault(role, {})
                if rss > per.get(proc.pid, ("", 0))[1]:
                    per[proc.pid] = (per.get(proc.pid, ("", 0))[0] or _label(proc), rss)
            self.peak_totals[role] = max(self.peak_totals.get(role, 0), total)
            self.series.setdefault(role, []).append((now, total))

    def cpu(self) -> dict[str, float]:
        """CPU seconds (user + system) used so far by each watched tree's live processes."""
        with self._lock:
            roots = dict(self.roots)
        out: dict[str, float] = {}
        for role, pid in roots.items():
            total = 0.0
            for proc in tree(pid, role not in self.alone):
                try:
                    times = proc.cpu_times()
                except (psutil.NoSuchProcess, psutil.AccessDenied):
                    continue
                total += times.user + times.system
            out[role] = total
        return out

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def report(self, roles: Sequence[str] | None = None) -> dict[str, Any]:
        """Peak RSS in MB per role: the peak of the tree's sum and each process's own peak."""
        out: dict[str, Any] = {}
        for role in roles if roles is not None else sorted(self.peaks):
            per = self.peaks.get(role, {})
            out[role] = {
                "peak_total_mb": round(self.peak_totals.get(role, 0) / MB, 1),
                "processes": [
                    {"pid": pid, "name": name, "peak_rss_mb": round(rss / MB, 1)}
                    for pid, (name, rss) in sorted(per.items())
                ],
            }
        return out
