"""The operator console: server-rendered pages under ``/console/`` (see :mod:`.pages`)."""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

from services.gateway.console import pages
from services.gateway.console.views import PACKAGE_DIR


def install_console(app: FastAPI) -> None:
    """Mount the console's static files and its error handlers (its router is included with the API's)."""
    app.mount(f"{pages.PREFIX}/static", StaticFiles(directory=PACKAGE_DIR / "static"), name="console-static")
    app.add_exception_handler(pages.LoginRequired, pages.login_required)
    app.add_exception_handler(pages.ConsoleError, pages.console_error)
