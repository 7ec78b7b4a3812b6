"""Report files for people: a CSV table (UTF-8 with a byte-order mark, so Excel on a Chinese Windows
reads it) and a self-contained HTML page per language (``zh_CN``, ``en``) with headings, the figures in
a summary table, a bar chart and the table by store.

The chart is drawn by pygal (pure Python, SVG out, no native dependencies), imported only when a page
is rendered; its value axis has round ticks. The page asks for a CJK-capable font stack. Everything is
written atomically (:func:`shared.files.atomic_write`).
"""

from __future__ import annotations

import csv
import html
import re
from collections.abc import Sequence
from decimal import Decimal
from pathlib import Path
from typing import Any, Literal

from shared.files import atomic_write

Language = Literal["zh_CN", "en"]
LANGUAGES: tuple[Language, ...] = ("zh_CN", "en")
CHART_WIDTH = 760
CHART_HEIGHT = 340
FONT_STACK = (
    '"Noto Sans CJK SC", "Source Han Sans SC", "PingFang SC", "Hiragino Sans GB", "Microsoft YaHei", '
    '"WenQuanYi Micro Hei", "Noto Sans", "Helvetica Neue", Arial, sans-serif'
)

TEXT: dict[Language, dict[str, str]] = {
    "zh_CN": {
        "hourly": "小时报表",
        "daily": "日报",
        "weekly": "周报",
        "monthly": "月报",
        "period": "统计期间",
        "summary": "汇总",
        "item": "项目",
        "count": "笔数",
        "amount": "金额（元）",
        "sales": "销售额",
        "payments": "收款",
        "bills_issued": "开出账单",
        "overdue_at_end": "期末逾期账单",
        "chart": "图表",
        "by_store": "各店铺明细",
        "total": "合计",
        "payments_by_category": "各类别店铺收款（元）",
        "sales_by_category": "各类别店铺销售额（元）",
        "sales_by_day": "每日销售额（元）",
        "generated": "由 mallops 生成",
    },
    "en": {
        "hourly": "Hourly report",
        "daily": "Daily report",
        "weekly": "Weekly report",
        "monthly": "Monthly report",
        "period": "Period",
        "summary": "Summary",
        "item": "Item",
        "count": "Count",
        "amount": "Amount (CNY)",
        "sales": "Sales",
        "payments": "Payments received",
        "bills_issued": "Bills issued",
        "overdue_at_end": "Overdue bills at period end",
        "chart": "Chart",
        "by_store": "By store",
        "total": "Total",
        "payments_by_category": "Payments received by store category (CNY)",
        "sales_by_category": "Sales by store category (CNY)",
        "sales_by_day": "Sales per day (CNY)",
        "generated": "Made by mallops",
    },
}
COLUMNS: dict[Language, dict[str, str]] = {
    "zh_CN": {
        "store_id": "编号",
        "store_code": "店铺代码",
        "store_name": "店铺名称",
        "category": "类别",
        "sales_amount": "销售额（元）",
        "sales_transactions": "交易笔数",
        "payments": "收款笔数",
        "payments_amount": "收款金额（元）",
        "bills_issued": "开出账单",
        "bills_issued_amount": "账单金额（元）",
        "overdue_bills_at_end": "期末逾期",
        "overdue_amount_at_end": "逾期金额（元）",
    },
    "en": {
        "store_id": "ID",
        "store_code": "Code",
        "store_name": "Store",
        "category": "Category",
        "sales_amount": "Sales (CNY)",
        "sales_transactions": "Transactions",
        "payments": "Payments",
        "payments_amount": "Paid (CNY)",
        "bills_issued": "Bills issued",
        "bills_issued_amount": "Billed (CNY)",
        "overdue_bills_at_end": "Overdue at end",
        "overdue_amount_at_end": "Overdue (CNY)",
    },
}
CATEGORIES: dict[Language, dict[str, str]] = {
    "zh_CN": {
        "dining": "餐饮",
        "fashion": "服饰",
        "electronics": "数码",
        "grocery": "超市",
        "entertainment": "娱乐",
        "beauty": "美妆",
        "sports": "运动",
        "kids": "儿童",
    },
    "en": {
        "dining": "Dining",
        "fashion": "Fashion",
        "electronics": "Electronics",
        "grocery": "Grocery",
        "entertainment": "Entertainment",
        "beauty": "Beauty",
        "sports": "Sports",
        "kids": "Kids",
    },
}
MONEY_COLUMNS = frozenset(("sales_amount", "payments_amount", "bills_issued_amount", "overdue_amount_at_end"))


def write_csv(path: Path, header: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """A CSV file with a UTF-8 byte-order mark (Excel then reads it as UTF-8, not the ANSI code page)."""
    with atomic_write(path, encoding="utf-8-sig") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)


def html_name(name: str, language: Language) -> str:
    """``daily/daily-2026-11-14.html`` -> ``daily/daily-2026-11-14.en.html``."""
    return name.removesuffix(".html") + f".{language}.html"


def _number(value: Any, money: bool) -> str:
    if value is None or value == "":
        return ""
    if money or isinstance(value, Decimal) or (isinstance(value, str) and "." in value):
        return f"{Decimal(str(value)):,.2f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def _local_time(value: Any) -> str:
    """``2026-10-01T00:00:00+08:00`` -> ``2026-10-01 00:00``."""
    text = str(value or "")
    return text[:16].replace("T", " ")


def chart_svg(title: str, labels: Sequence[str], values: Sequence[str | float | Decimal]) -> str:
    """A vertical bar chart as an inline ``<svg>`` (pygal), value axis with round ticks."""
    import pygal  # only a report page needs it
    from pygal.style import Style

    style = Style(
        font_family=FONT_STACK,
        background="white",
        plot_background="white",
        colors=("#3b7dd8",),
        title_font_size=16,
        label_font_size=12,
        major_label_font_size=12,
        guide_stroke_color="#e3e3e3",
        major_guide_stroke_color="#e3e3e3",
        guide_stroke_dasharray="0",
        major_guide_stroke_dasharray="0",
    )
    chart = pygal.Bar(
        width=CHART_WIDTH,
        height=CHART_HEIGHT,
        style=style,
        title=title,
        show_legend=False,
        disable_xml_declaration=True,
        x_label_rotation=-45 if len(labels) > 12 else 0,
        value_formatter=lambda v: f"{v:,.0f}",
        y_labels_major_every=None,
        margin=10,
        truncate_label=-1,  # whole category names under the bars
        js=[],  # self-contained: no script from a CDN
    )
    chart.x_labels = list(labels)
    chart.add(title, [float(v) for v in values])
    svg: str = chart.render(is_unicode=True)
    # pygal always embeds its tooltip configuration as a <script>; a static page needs none of it
    return re.sub(r"<script\b.*?</script>", "", svg, flags=re.DOTALL)


def _table(header: Sequence[str], rows: Sequence[Sequence[str]], numeric: Sequence[bool], css: str = "") -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "\n".join(
        "<tr>"
        + "".join(
            f'<td class="num">{html.escape(cell)}</td>' if num else f"<td>{html.escape(cell)}</td>"
            for cell, num in zip(row, numeric, strict=True)
        )
        + "</tr>"
        for row in rows
    )
    return f'<table class="{css}">\n<thead><tr>{head}</tr></thead>\n<tbody>\n{body}\n</tbody>\n</table>'


def summary_rows(data: dict[str, Any], text: dict[str, str]) -> list[list[str]]:
    """One row per figure of the report: what, how many, how much."""
    rows = []
    sales = data.get("sales")
    if sales:
        rows.append([text["sales"], _number(sales["transactions"], False), _number(sales["amount"], True)])
    for key in ("payments", "bills_issued", "overdue_at_end"):
        figure = data.get(key)
        if figure:
            rows.append([text[key], _number(figure["count"], False), _number(figure["amount"], True)])
    return rows


def render_html(language: Language, data: dict[str, Any], header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """The report page in ``language``: title, period, summary table, chart, table by store."""
    text = TEXT[language]
    columns, categories = COLUMNS[language], CATEGORIES[language]
    period = data.get("period", {})
    title = f"{text.get(str(period.get('kind')), '')} {period.get('label', '')}".strip()
    chart = data.get("chart") or {"key": "", "title": "", "labels": [], "values": []}
    chart_title = text.get(str(chart.get("key")), str(chart.get("title", "")))
    labels = [categories.get(str(label), str(label)) for label in chart["labels"]]
    store_rows = []
    for row in rows:
        cells = []
        for name, value in zip(header, row, strict=True):
            if name == "store_code" and value == "TOTAL":
                cells.append(text["total"])
            elif name == "category":
                cells.append(categories.get(str(value), str(value)))
            elif name in ("store_code", "store_name", "store_id"):
                cells.append(str(value))
            else:
                cells.append(_number(value, name in MONEY_COLUMNS))
        store_rows.append(cells)
    numeric = [name not in ("store_code", "store_name", "category") for name in header]
    lang_attr = "zh-CN" if language == "zh_CN" else "en"
    return f"""<!DOCTYPE html>
<html lang="{lang_attr}">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{html.escape(title)}</title>
<style>
body {{ font-family: {FONT_STACK}; margin: 2em; color: #222; max-width: 1200px; }}
h1 {{ font-size: 1.6em; margin-bottom: 0.2em; }}
h2 {{ font-size: 1.2em; margin-top: 1.6em; border-bottom: 1px solid #ddd; padding-bottom: 0.2em; }}
table {{ border-collapse: collapse; font-size: 13px; }}
th, td {{ border: 1px solid #ccc; padding: 3px 8px; text-align: left; }}
td.num {{ text-align: right; font-variant-numeric: tabular-nums; }}
th {{ background: #f3f3f3; }}
table.summary td, table.summary th {{ font-size: 14px; padding: 4px 12px; }}
tbody tr:last-child td {{ font-weight: bold; }}
table.summary tbody tr:last-child td {{ font-weight: normal; }}
.period, footer {{ color: #555; }}
</style>
</head>
<body>
<h1>{html.escape(title)}</h1>
<p class="period">{html.escape(text["period"])}: {html.escape(_local_time(period.get("local_start")))} &ndash;
{html.escape(_local_time(period.get("local_end")))} ({html.escape(str(period.get("timezone", "")))})</p>
<h2>{html.escape(text["summary"])}</h2>
{_table([text["item"], text["count"], text["amount"]], summary_rows(data, text), [False, True, True], "summary")}
<h2>{html.escape(text["chart"])}</h2>
<figure>{chart_svg(chart_title, labels, chart["values"])}</figure>
<h2>{html.escape(text["by_store"])}</h2>
{_table([columns.get(h, h) for h in header], store_rows, numeric)}
<footer><p>{html.escape(text["generated"])}</p></footer>
</body>
</html>
"""


def write_html(
    path: Path, *, language: Language, data: dict[str, Any], header: Sequence[str], rows: Sequence[Sequence[Any]]
) -> None:
    with atomic_write(path) as handle:
        handle.write(render_html(language, data, header, rows))
