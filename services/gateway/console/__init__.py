"""The operator console: server-rendered pages under ``/console/`` (see :mod:`.pages`).

Adding a page: a route in :mod:`.pages` taking ``PageDep``
(the signed-in principal, its language and the CSRF token; ``FormDep`` checks the token of a POST before
the route acts), its data in :mod:`.views` read through the service function the API route uses, a
template that extends ``base.html``, its messages in both ``locales/en.json`` and ``locales/zh_CN.json`` (the
catalog's descriptions, shown through ``views.described``, in ``locales/catalog.zh_CN.json``), a line in
``pages.NAV``, and, when it needs a right, an action in ``permissions.GRANTS`` asked through ``permissions.can``.
"""

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
