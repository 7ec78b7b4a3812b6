"""The gateway's FastAPI application: ``create_app(settings)`` builds it; nothing connects until it starts."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from sqlalchemy.exc import IntegrityError
from starlette.concurrency import run_in_threadpool

from services.gateway import problems
from services.gateway.console import install_console
from services.gateway.console import pages as console_pages
from services.gateway.docs import install_docs
from services.gateway.fast_submit import FastSubmitMiddleware
from services.gateway.middleware import AccountingMiddleware, BodyLimitMiddleware
from services.gateway.openapi import install_openapi
from services.gateway.routes import (
    admin,
    audit,
    bulk,
    catalog,
    dead_letters,
    files,
    history,
    schedules,
    system,
    tasks,
    tokens,
    workflows,
)
from services.gateway.runtime import Runtime
from shared.settings import Settings, get_settings
from shared.tokens import ensure_bootstrap_admin

log = logging.getLogger("mallops.gateway")

DESCRIPTION = """The HTTP front door of mallops: submit catalog tasks by name, follow them, read their results,
reports and exports. Authenticate with `Authorization: Bearer <token>` (`mallops tokens create`).
Every error is `application/problem+json` (RFC 9457)."""


def _bootstrap(runtime: Runtime) -> None:
    token = runtime.settings.bootstrap_admin_token.get_secret_value()
    if not token:
        return
    try:
        with runtime.sessions() as session, session.begin():
            if ensure_bootstrap_admin(session, token):
                log.info("bootstrap admin token installed (name 'bootstrap-admin')")
    except IntegrityError:  # another gateway process (MALLOPS_GATEWAY_WORKERS) installed it at the same moment
        log.info("bootstrap admin token installed by another gateway process")


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        runtime = Runtime.build(settings)
        await run_in_threadpool(_bootstrap, runtime)
        await runtime.start()
        app.state.runtime = runtime
        try:
            yield
        finally:
            await runtime.close()

    app = FastAPI(
        title="mallops gateway",
        version="1.0.0",
        description=DESCRIPTION,
        lifespan=lifespan,
        docs_url=None,  # /docs and /redoc: services.gateway.docs, with no CDN
        redoc_url=None,
        openapi_url="/openapi.json",
    )
    problems.install_handlers(app)
    install_console(app)  # before the routers: its static files must win over the console's catch-all 404
    # history and bulk first: /tasks/history, /tasks/stats, /tasks/retry must win over /tasks/{task_id}
    routers = (
        history.router,
        bulk.router,
        tasks.router,
        workflows.router,
        catalog.router,
        admin.router,
        dead_letters.router,
        schedules.router,
        files.router,
        tokens.router,
        audit.router,
        system.router,
        console_pages.router,
    )
    for router in routers:
        app.include_router(router)
    # every route with its full path, for the Allow header of a 405 (included routers are nested)
    app.state.flat_routes = [route for router in routers for route in router.routes]
    install_openapi(app)
    install_docs(app)
    if settings.gateway_fast_submit:  # innermost: CORS, the body limit and the accounting see it as any request
        app.add_middleware(FastSubmitMiddleware)
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST", "PATCH", "DELETE"],
            allow_headers=["Authorization", "Content-Type", "Idempotency-Key"],
            expose_headers=["X-Request-ID"],
        )
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)
    app.add_middleware(AccountingMiddleware)
    return app
