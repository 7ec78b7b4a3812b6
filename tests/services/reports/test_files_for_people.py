"""The files the mall's staff open: the HTML report as Chromium shows it (in Chinese and in English),
the XLSX export as Excel reads it (through openpyxl), and CSV files with a UTF-8 byte-order mark.

The report page is rendered in headless Chromium (Debian's ``chromium``, installed by scripts/test with
a CJK font, ``fonts-noto-cjk``); its screenshot goes to ``$MALLOPS_SCREENSHOT_DIR`` when set (the ones
in docs/ were made so), else to the test's temporary folder.
"""

from __future__ import annotations

import datetime as dt
import os
import re
import shutil
import subprocess
from decimal import Decimal
from html.parser import HTMLParser
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from openpyxl import load_workbook

from services.reports import exports, sales_reports
from services.reports.periods import monthly
from shared.db import session_scope
from shared.settings import Settings

SHANGHAI = ZoneInfo("Asia/Shanghai")
HEADINGS = {
    "zh_CN": ["月报 2026-10", "汇总", "图表", "各店铺明细"],
    "en": ["Monthly report 2026-10", "Summary", "Chart", "By store"],
}


def chromium() -> str:
    binary = shutil.which("chromium") or shutil.which("chromium-browser")
    if binary is None:
        message = "chromium is not installed: apt-get install chromium fonts-noto-cjk (scripts/test does as root)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return binary


class Headings(HTMLParser):
    """The text of every h1 and h2, and of the chart's value-axis labels, from a DOM dump."""

    def __init__(self) -> None:
        super().__init__()
        self.headings: list[str] = []
        self.y_ticks: list[str] = []
        self._in: str | None = None
        self._axis_depth = 0
        self._depth = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self._depth += 1
        classes = dict(attrs).get("class") or ""
        if tag == "g" and "axis y" in classes and not self._axis_depth:
            self._axis_depth = self._depth
        if tag in ("h1", "h2"):
            self._in = tag
            self.headings.append("")
        elif tag == "text" and self._axis_depth:
            self._in = "tick"
            self.y_ticks.append("")

    def handle_endtag(self, tag: str) -> None:
        if tag == "g" and self._axis_depth == self._depth:
            self._axis_depth = 0
        self._depth -= 1
        if tag in ("h1", "h2", "text"):
            self._in = None

    def handle_data(self, data: str) -> None:
        if self._in in ("h1", "h2"):
            self.headings[-1] += data.strip()
        elif self._in == "tick":
            self.y_ticks[-1] += data.strip()


def browse(page: Path, screenshot: Path) -> str:
    """The DOM of ``page`` after Chromium rendered it, and its screenshot."""
    base = [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--lang=zh-CN"]
    shot = subprocess.run(
        [*base, "--window-size=1200,1500", f"--screenshot={screenshot}", page.as_uri()],
        capture_output=True,
        timeout=120,
        check=False,
    )
    assert shot.returncode == 0, shot.stderr[-2000:]
    assert screenshot.stat().st_size > 10_000
    dom = subprocess.run([*base, "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120, check=False)
    assert dom.returncode == 0, dom.stderr[-2000:]
    return dom.stdout


@pytest.fixture
def monthly_report(demo_db: Settings, tmp_path: Path) -> dict[str, object]:
    with session_scope(demo_db) as session:
        return sales_reports.generate(session, monthly(SHANGHAI, 2026, 10), tmp_path / "reports")


@pytest.mark.parametrize("language", ["zh_CN", "en"])
def test_the_html_report_in_chromium(monthly_report: dict[str, object], tmp_path: Path, language: str) -> None:
    page = tmp_path / "reports" / "monthly" / f"monthly-2026-10.{language}.html"
    out = Path(os.environ.get("MALLOPS_SCREENSHOT_DIR") or tmp_path)
    dom = browse(page, out / f"report-{language}.png")
    parsed = Headings()
    parsed.feed(dom)
    assert parsed.headings == HEADINGS[language]
    # figures in a table, not the report's JSON
    assert '{"' not in dom
    assert "<table" in dom
    assert "font-family: &quot;Noto Sans CJK SC&quot;" in dom or '"Noto Sans CJK SC"' in dom
    # the chart's value axis: round ticks (multiples of one 1, 2 or 5 times a power of ten)
    ticks = [int(t.replace(",", "")) for t in parsed.y_ticks if t]
    assert len(ticks) >= 4, parsed.y_ticks
    step = ticks[1] - ticks[0]
    assert re.fullmatch(r"[125]0*", str(step)), ticks
    assert all(t % step == 0 for t in ticks), ticks


def test_the_report_csv_starts_with_a_byte_order_mark(monthly_report: dict[str, object], tmp_path: Path) -> None:
    raw = (tmp_path / "reports" / str(monthly_report["csv_path"])).read_bytes()
    assert raw.startswith(b"\xef\xbb\xbfstore_id,store_code,store_name,")
    assert "合计" not in raw.decode("utf-8-sig")  # the CSV stays machine-readable: TOTAL, snake_case


def test_the_xlsx_export_as_excel_reads_it(demo_db: Settings, tmp_path: Path) -> None:
    dataset = exports.get_dataset("payments", {})
    path = tmp_path / "payments.xlsx"
    with session_scope(demo_db) as session:
        written = exports.write_file(session, path, dataset, "xlsx", {}, SHANGHAI, lambda done, total: None)
    book = load_workbook(path)  # not read-only: the sheet's view and filter are read too
    sheet = book["payments"]
    header = [c.value for c in sheet[1]]
    assert header == [
        "id",
        "bill_id",
        "store_id",
        "store_code",
        "bill_period",
        "amount",
        "method",
        "paid_at_utc",
        "paid_at_local",
    ]
    assert all(c.font.b for c in sheet[1])
    assert sheet.freeze_panes == "A2"
    assert sheet.auto_filter.ref == f"A1:I{written + 1}"
    assert sheet.column_dimensions["H"].width == 20
    assert sheet.column_dimensions["F"].width == 14
    amount, utc, local = sheet.cell(2, 6), sheet.cell(2, 8), sheet.cell(2, 9)
    assert isinstance(amount.value, int | float)
    assert amount.number_format == "#,##0.00"
    assert isinstance(utc.value, dt.datetime)
    assert utc.number_format == local.number_format == "yyyy-mm-dd hh:mm:ss"
    assert local.value - utc.value == dt.timedelta(hours=8)  # Asia/Shanghai


def test_the_csv_export_starts_with_a_byte_order_mark(demo_db: Settings, tmp_path: Path) -> None:
    path = tmp_path / "stores.csv"
    with session_scope(demo_db) as session:
        exports.write_file(
            session, path, exports.get_dataset("stores", {}), "csv", {}, SHANGHAI, lambda done, total: None
        )
    raw = path.read_bytes()
    assert raw.startswith(b"\xef\xbb\xbfid,code,name,")
    assert Decimal(raw.decode("utf-8-sig").splitlines()[1].split(",")[5]) > 0
