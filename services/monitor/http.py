"""The monitor's HTTP endpoints: ``/metrics`` (Prometheus), ``/health`` and ``/stats`` (JSON).

Served by the standard library's WSGI server in threads (prometheus_client's ``ThreadingWSGIServer``,
the same one its own ``start_http_server`` uses): three read-only routes scraped every few seconds need
no ASGI stack, no event loop and no extra dependency, and the consumer loop keeps the main thread.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Iterable
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.exposition import ThreadingWSGIServer

from services.monitor.metrics import Health

log = logging.getLogger("mallops.monitor")

StartResponse = Callable[..., Any]
Environ = dict[str, Any]


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s " + format, self.address_string(), *args)


def make_app(
    registry: CollectorRegistry, health: Health, check: Callable[[], dict[str, str]]
) -> Callable[[Environ, StartResponse], Iterable[bytes]]:
    """``check()`` does the real round trips (Redis PING, database SELECT 1) and names what failed."""

    def app(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO") or "/"
        if environ.get("REQUEST_METHOD", "GET") not in ("GET", "HEAD"):
            return _json(start_response, "405 Method Not Allowed", {"detail": "only GET"})
        if path == "/metrics":
            body = generate_latest(registry)
            start_response("200 OK", [("Content-Type", CONTENT_TYPE_LATEST), ("Content-Length", str(len(body)))])
            return [body]
        if path == "/health":
            checks = check()
            ok = all(value == "ok" for value in checks.values())
            return _json(
                start_response,
                "200 OK" if ok else "503 Service Unavailable",
                {"status": "ok" if ok else "unavailable", **checks},
            )
        if path == "/stats":
            return _json(
                start_response,
                "200 OK",
                {
                    "events_processed": health.events_processed,
                    "batches": health.batches,
                    "lag_seconds": health.lag_seconds,
                    "pending_entries": health.pending_entries,
                    "stream_length": health.stream_length,
                    "connected": health.connected,
                    "last_error": health.last_error,
                },
            )
        return _json(start_response, "404 Not Found", {"detail": f"no route {path}; try /metrics, /health, /stats"})

    return app


def _json(start_response: StartResponse, status: str, payload: dict[str, Any]) -> list[bytes]:
    body = json.dumps(payload).encode()
    start_response(status, [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
    return [body]


def serve(app: Callable[[Environ, StartResponse], Iterable[bytes]], host: str, port: int) -> WSGIServer:
    """Start serving in a daemon thread; ``server.shutdown()`` stops it."""
    server = make_server(host, port, app, ThreadingWSGIServer, handler_class=_QuietHandler)
    threading.Thread(target=server.serve_forever, name="monitor-http", daemon=True).start()
    return server
