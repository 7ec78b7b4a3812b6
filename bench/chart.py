"""The PNG chart of a bench report (docs/performance.md shows it)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # after choosing the Agg backend


def _bar(ax: Any, labels: list[str], blocks: list[dict[str, Any] | None], title: str, unit: str) -> None:
    medians = [(b or {}).get("median") or 0 for b in blocks]
    lows = [m - ((b or {}).get("min") or m) for m, b in zip(medians, blocks, strict=True)]
    highs = [((b or {}).get("max") or m) - m for m, b in zip(medians, blocks, strict=True)]
    bars = ax.bar(
        labels,
        medians,
        yerr=[lows, highs],
        capsize=4,
        color=["#888888", "#c0504d", "#4f81bd", "#9bbb59", "#8064a2"][: len(labels)],
    )
    for bar, value in zip(bars, medians, strict=True):
        ax.annotate(
            f"{value:.0f}", (bar.get_x() + bar.get_width() / 2, bar.get_height()), ha="center", va="bottom", fontsize=8
        )
    ax.set_title(title, fontsize=10)
    ax.set_ylabel(unit)
    ax.tick_params(axis="x", labelsize=8)


def draw(report: dict[str, Any], path: Path) -> None:
    r = report["results"]
    mallops = r["mallops"]
    fig, axes = plt.subplots(2, 2, figsize=(12, 8))
    _bar(
        axes[0][0],
        ["raw Celery", "Celery -E\n+ consumer", "mallops\nHTTP batch", "mallops\nHTTP single"],
        [
            r["raw"]["tasks_per_s"],
            r["events"]["tasks_per_s"],
            mallops["batch"]["tasks_per_s"],
            mallops["single"]["tasks_per_s"],
        ],
        "End-to-end throughput (median of runs, min-max bars)",
        "tasks/s",
    )
    flower = r.get("flower", {}).get("req_per_s")
    alone = mallops["front_door_alone"]
    _bar(
        axes[0][1],
        ["Flower\nasync-apply", "mallops\nPOST /tasks", "mallops\nPOST /tasks/batch\n(tasks/s)"],
        [flower, alone["single"]["req_per_s"], alone["batch"]["submit_per_s"]],
        f"HTTP submission, front door alone ({alone['single']['concurrency']} clients)",
        "requests/s",
    )
    axes[0][1].set_yscale("log")

    ax = axes[1][0]
    names = ["raw Celery", "Celery -E", "mallops"]
    paced = [r["raw"]["paced"], r["events"]["paced"], mallops["paced"]]
    x = range(len(names))
    for offset, (key, pct, color) in enumerate(
        (
            ("submit_to_start_ms", "p50", "#4f81bd"),
            ("submit_to_start_ms", "p99", "#1f3f6f"),
            ("submit_to_finish_ms", "p50", "#9bbb59"),
            ("submit_to_finish_ms", "p99", "#4f6b1f"),
        )
    ):
        values = [(p.get(key) or {}).get(pct) or 0 for p in paced]
        ax.bar(
            [i + offset * 0.2 - 0.3 for i in x],
            values,
            width=0.2,
            color=color,
            label=f"{key.replace('_ms', '').replace('_', ' ')} {pct}",
        )
    ax.set_xticks(list(x), names)
    ax.set_title(f"Latency at a paced {paced[2]['rate']:.0f} tasks/s", fontsize=10)
    ax.set_ylabel("ms")
    ax.legend(fontsize=7)

    ax = axes[1][1]
    rss: list[tuple[str, float]] = []
    rss.append(("bare worker idle", r["raw"]["idle_worker_memory"]["rss_mb"]))
    rss.append(("mallops worker idle (threads)", mallops["idle_worker_memory"]["rss_mb"]))
    if "prefork_idle_worker_memory" in mallops:
        rss.append(("mallops worker idle (prefork -c 2)", mallops["prefork_idle_worker_memory"]["rss_mb"]))
    for block in (
        r["raw"]["peak_rss"],
        r["events"]["peak_rss"],
        r.get("flower", {}).get("peak_rss", {}),
        mallops["peak_rss"],
    ):
        for role, value in block.items():
            rss.append((f"{role} peak", value["peak_total_mb"]))
    ax.barh([name for name, _ in rss], [value for _, value in rss], color="#8064a2")
    for i, (_, value) in enumerate(rss):
        ax.annotate(f"{value:.0f}", (value, i), va="center", fontsize=7)
    ax.set_title("RSS in MB (process tree: parent + pool children)", fontsize=10)
    ax.tick_params(axis="y", labelsize=7)

    machine = report["machine"]
    fig.suptitle(
        f"mallops bench {report['started_at']} - {machine['nproc']} cores {machine['cpu_model']}, "
        f"Python {machine['python']}, Celery {machine['celery']}",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
