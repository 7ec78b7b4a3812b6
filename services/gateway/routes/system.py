"""Health, readiness and the gateway's own metrics (no token needed)."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter
from fastapi.responses import Response
from sqlalchemy import text
from starlette.concurrency import run_in_threadpool

from services.gateway.deps import RuntimeDep
from services.gateway.problems import ProblemError
from services.gateway.runtime import Runtime
from services.gateway.schemas import Health, Readiness

router = APIRouter(tags=["system"])
CHECK_TIMEOUT = 3.0


@router.get("/healthz", response_model=Health, summary="The process is up")
async def healthz() -> Health:
    return Health()


async def _check(name: str, probe: object) -> tuple[str, str]:
    try:
        await asyncio.wait_for(probe, timeout=CHECK_TIMEOUT)  # type: ignore[arg-type]
    except TimeoutError:
        return name, f"no answer within {CHECK_TIMEOUT:g} s"
    except Exception as exc:
        return name, f"unreachable: {type(exc).__name__}: {str(exc)[:200]}"
    return name, "ok"


def _database_round_trip(runtime: Runtime) -> None:
    with runtime.sessions() as session:
        session.execute(text("SELECT 1"))


def _broker_round_trip(runtime: Runtime) -> None:
    with runtime.celery.connection_for_write() as connection:
        connection.ensure_connection(max_retries=1, timeout=2)
        if connection.transport.driver_type == "redis":
            connection.default_channel.client.ping()
        else:  # AMQP: opening and closing a channel is a round trip to the broker
            connection.channel().close()


@router.get(
    "/readyz",
    response_model=Readiness,
    summary="Redis, the broker and the database answer",
    responses={503: {"description": "A dependency is not reachable; `checks` says which."}},
)
async def readyz(runtime: RuntimeDep) -> Readiness:
    """A real round trip to the cache Redis, the result backend, the broker and the database."""
    checks = dict(
        await asyncio.gather(
            _check("redis", runtime.cache.ping()),
            _check("result_backend", runtime.results.ping()),
            _check("broker", run_in_threadpool(_broker_round_trip, runtime)),
            _check("database", run_in_threadpool(_database_round_trip, runtime)),
        )
    )
    failing = sorted(name for name, value in checks.items() if value != "ok")
    if failing:
        raise ProblemError(
            503,
            f"not ready: {', '.join(failing)} cannot be reached",
            kind="not-ready",
            headers={"Retry-After": "5"},
            extra={"checks": checks},
        )
    return Readiness(status="ok", checks=checks)


@router.get(
    "/metrics",
    summary="The gateway's own metrics (Prometheus text format)",
    responses={
        200: {
            "content": {"text/plain": {"schema": {"type": "string"}}},
            "description": "Request counts and latencies by route template.",
        }
    },
    response_class=Response,
)
async def metrics(runtime: RuntimeDep) -> Response:
    return Response(runtime.metrics.render(), media_type=runtime.metrics.content_type)
