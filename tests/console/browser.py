"""Debian's Chromium driven by Playwright for Python (no browser download), and the helpers the browser
tests and ``scripts/screenshots`` share: signing in, blocking every host but the gateway, axe-core."""

from __future__ import annotations

import re
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from playwright.sync_api import Browser, BrowserContext, Page, Playwright, Route, sync_playwright

CHROMIUM = "/usr/bin/chromium"
AXE = Path(__file__).parent / "vendor" / "axe.min.js"
VIEWPORT = {"width": 1366, "height": 768}
CHROMIUM_MISSING = (
    f"{CHROMIUM} is missing: install Debian's Chromium and a CJK font with "
    "`apt-get install chromium fonts-noto-cjk` (./scripts/test does it when run as root)"
)
ACCEPT_LANGUAGE = {"en": "en-US,en;q=0.9", "zh_CN": "zh-CN,zh;q=0.9"}


def chromium_path() -> str | None:
    return CHROMIUM if Path(CHROMIUM).exists() else shutil.which("chromium")


@contextmanager
def chromium() -> Iterator[Browser]:
    path = chromium_path()
    if path is None:
        raise RuntimeError(CHROMIUM_MISSING)
    with sync_playwright() as playwright:
        browser = launch(playwright, path)
        try:
            yield browser
        finally:
            browser.close()


def launch(playwright: Playwright, path: str) -> Browser:
    # --no-sandbox: Chromium's sandbox cannot start as root (tests and CI run as root)
    return playwright.chromium.launch(executable_path=path, args=["--no-sandbox"])


@dataclass
class Offline:
    """Lets requests to the gateway through and aborts every other one, remembering it."""

    origin: str
    blocked: list[str] = field(default_factory=list)

    def __call__(self, route: Route) -> None:
        url = route.request.url
        parts = urlsplit(url)
        if f"{parts.scheme}://{parts.netloc}" == self.origin or parts.scheme in ("data", "blob"):
            route.continue_()
        else:
            self.blocked.append(url)
            route.abort()


def new_context(browser: Browser, base_url: str, language: str) -> tuple[BrowserContext, Offline]:
    """A fresh browser profile at 1366x768 in ``language`` that can reach only the gateway."""
    context = browser.new_context(
        base_url=base_url,
        viewport=VIEWPORT,  # type: ignore[arg-type]
        locale=language.replace("_", "-"),
        extra_http_headers={"Accept-Language": ACCEPT_LANGUAGE[language]},
        bypass_csp=True,  # axe-core is injected as an inline script
    )
    offline = Offline(base_url.rstrip("/"))
    context.route("**/*", offline)
    return context, offline


def sign_in(page: Page, token: str) -> None:
    page.goto("/console/login")
    page.get_by_label(re.compile("API token|API 令牌")).fill(token)
    page.locator("form[action='/console/login'] button[type=submit]").click()
    page.wait_for_url(re.compile(r"/console/(tasks)?$"))


def axe_violations(page: Page) -> list[dict[str, object]]:
    """axe-core's WCAG 2.1 A and AA violations on the page as it is now."""
    page.add_script_tag(path=str(AXE))
    result = page.evaluate(
        "async () => (await axe.run(document, {runOnly: {type: 'tag', values: "
        "['wcag2a', 'wcag2aa', 'wcag21a', 'wcag21aa']}})).violations"
        ".map(v => ({id: v.id, impact: v.impact, nodes: v.nodes.map(n => n.target.join(' ')).slice(0, 5)}))"
    )
    return list(result)
