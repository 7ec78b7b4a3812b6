"""Report files: a CSV table and a self-contained HTML page with an inline SVG bar chart.

The chart is plain SVG written here rather than a plotting library: a bar chart is a few rectangles,
and the reports worker then needs neither matplotlib's import time (seconds) nor its memory.
Everything is written atomically (:func:`shared.files.atomic_write`).
"""

from __future__ import annotations

import csv
import html
import json
from collections.abc import Sequence
from decimal import Decimal
from pathlib import Path
from typing import Any

from shared.files import atomic_write

CHART_WIDTH = 760
CHART_HEIGHT = 320
MARGIN_LEFT, MARGIN_BOTTOM, MARGIN_TOP = 90, 60, 30


def write_csv(path: Path, header: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    with atomic_write(path) as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)


def svg_bar_chart(title: str, labels: Sequence[str], values: Sequence[str | float | Decimal]) -> str:
    """A vertical bar chart as an ``<svg>`` element (labels under the bars, a value axis on the left)."""
    numbers = [float(v) for v in values]
    top = max(numbers, default=0.0) or 1.0
    plot_w = CHART_WIDTH - MARGIN_LEFT - 10
    plot_h = CHART_HEIGHT - MARGIN_BOTTOM - MARGIN_TOP
    slot = plot_w / max(len(numbers), 1)
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" role="img" width="{CHART_WIDTH}" height="{CHART_HEIGHT}" '
        f'viewBox="0 0 {CHART_WIDTH} {CHART_HEIGHT}" font-family="sans-serif" font-size="11">',
        f"<title>{html.escape(title)}</title>",
        f'<text x="{CHART_WIDTH / 2:.0f}" y="18" text-anchor="middle" font-size="14">{html.escape(title)}</text>',
    ]
    for i in range(5):  # value axis: 0, 25, 50, 75, 100 % of the largest bar
        value = top * i / 4
        y = MARGIN_TOP + plot_h - plot_h * i / 4
        parts.append(f'<line x1="{MARGIN_LEFT}" x2="{CHART_WIDTH - 10}" y1="{y:.1f}" y2="{y:.1f}" stroke="#ddd"/>')
        parts.append(f'<text x="{MARGIN_LEFT - 6}" y="{y + 4:.1f}" text-anchor="end">{value:,.0f}</text>')
    rotate = len(labels) > 12
    for i, (label, number) in enumerate(zip(labels, numbers, strict=True)):
        height = plot_h * number / top
        x = MARGIN_LEFT + i * slot + slot * 0.15
        y = MARGIN_TOP + plot_h - height
        parts.append(
            f'<rect x="{x:.1f}" y="{y:.1f}" width="{slot * 0.7:.1f}" height="{height:.1f}" fill="#3b7dd8">'
            f"<title>{html.escape(label)}: {number:,.2f}</title></rect>"
        )
        lx = x + slot * 0.35
        ly = MARGIN_TOP + plot_h + 14
        transform = f' transform="rotate(-60 {lx:.1f} {ly:.1f})"' if rotate else ""
        anchor = "end" if rotate else "middle"
        parts.append(f'<text x="{lx:.1f}" y="{ly:.1f}" text-anchor="{anchor}"{transform}>{html.escape(label)}</text>')
    parts.append("</svg>")
    return "\n".join(parts)


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "\n".join("<tr>" + "".join(f"<td>{html.escape(str(cell))}</td>" for cell in row) + "</tr>" for row in rows)
    return f"<table>\n<thead><tr>{head}</tr></thead>\n<tbody>\n{body}\n</tbody>\n</table>"


def render_html(title: str, data: dict[str, Any], header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    chart = data.get("chart") or {"title": "", "labels": [], "values": []}
    summary = {key: data[key] for key in ("sales", "payments", "bills_issued", "overdue_at_end") if key in data}
    sales = summary.get("sales")
    if sales:  # the per-day and per-category detail is in the chart and the table
        summary["sales"] = {k: sales[k] for k in ("amount", "transactions")}
    period = data.get("period", {})
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>{html.escape(title)}</title>
<style>
body {{ font-family: sans-serif; margin: 2em; color: #222; }}
table {{ border-collapse: collapse; font-size: 13px; }}
th, td {{ border: 1px solid #ccc; padding: 3px 8px; text-align: right; }}
th {{ background: #f3f3f3; }}
pre {{ background: #f7f7f7; padding: 1em; }}
</style>
</head>
<body>
<h1>{html.escape(title)}</h1>
<p>{html.escape(str(period.get("local_start", "")))} &ndash; {html.escape(str(period.get("local_end", "")))}
({html.escape(str(period.get("timezone", "")))})</p>
{svg_bar_chart(chart["title"], chart["labels"], chart["values"])}
<h2>Summary</h2>
<pre>{html.escape(json.dumps(summary, indent=2, ensure_ascii=False))}</pre>
<h2>By store</h2>
{_table(header, rows)}
</body>
</html>
"""


def write_html(
    path: Path, *, title: str, data: dict[str, Any], header: Sequence[str], rows: Sequence[Sequence[Any]]
) -> None:
    with atomic_write(path) as handle:
        handle.write(render_html(title, data, header, rows))
