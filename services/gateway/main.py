"""Entry point of the gateway (``mallops serve gateway``): uvicorn with uvloop and httptools, on
``MALLOPS_GATEWAY_WORKERS`` processes (default 1)."""

from __future__ import annotations

import argparse
import gc
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager

import uvicorn
from fastapi import FastAPI

from services.gateway.app import create_app
from services.gateway.metrics import MULTIPROC_DIR
from shared.logs import configure_logging
from shared.settings import get_settings


def build_app() -> FastAPI:
    """The app of one gateway process (uvicorn's factory, called in each worker process)."""
    settings = get_settings()
    configure_logging("gateway", settings.log_level, settings.log_format)
    app = create_app(settings)
    # Everything imported and built so far lives as long as the process: move it out of the garbage
    # collector's generations, so that a full collection scans only what requests allocate. Without it the
    # collections of the whole heap (FastAPI, Celery, SQLAlchemy, pydantic) were the gateway's slowest
    # 1 % of requests (p99 about 100 ms instead of 20-60 ms at 16 clients; docs/performance.md).
    gc.collect()
    gc.freeze()
    return app


@contextmanager
def metrics_directory(workers: int) -> Iterator[None]:
    """With several processes: a fresh ``PROMETHEUS_MULTIPROC_DIR`` of this gateway's own (the worker processes
    inherit it and write their samples there), removed when the gateway stops."""
    if workers == 1:
        yield
        return
    directory = tempfile.mkdtemp(prefix="mallops-gateway-metrics-")
    os.environ[MULTIPROC_DIR] = directory
    try:
        yield
    finally:
        os.environ.pop(MULTIPROC_DIR, None)
        shutil.rmtree(directory, ignore_errors=True)


def main(argv: list[str]) -> None:
    settings = get_settings()
    parser = argparse.ArgumentParser(prog="mallops serve gateway", description="Run the HTTP gateway.")
    parser.add_argument("--host", default=settings.gateway_host, help="default: MALLOPS_GATEWAY_HOST")
    parser.add_argument("--port", type=int, default=settings.gateway_port, help="default: MALLOPS_GATEWAY_PORT")
    args = parser.parse_args(argv)
    configure_logging("gateway", settings.log_level, settings.log_format)
    with metrics_directory(settings.gateway_workers):
        uvicorn.run(
            "services.gateway.main:build_app",
            factory=True,
            workers=settings.gateway_workers,
            host=args.host,
            port=args.port,
            loop="uvloop",
            http="httptools",
            access_log=False,  # every request goes to the access-log buffer instead
            log_config=None,  # uvicorn's loggers go through ours (shared/logs.py)
            log_level=settings.log_level.lower(),
            timeout_graceful_shutdown=10,
            server_header=False,
        )
