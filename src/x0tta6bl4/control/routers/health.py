"""Liveness, readiness and metrics."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse

from x0tta6bl4.control.context import ctx
from x0tta6bl4.observability.metrics import record_dependency

router = APIRouter(tags=["health"])


@router.get("/health", summary="The process is up")
async def health() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/ready", summary="The database (and Redis, when configured) answer")
async def ready(request: Request) -> JSONResponse:
    """503 when the database is unreachable. Redis down is reported but stays 200: the
    service works without it (pushes fall back to polling), so taking the replica out of
    rotation would only make things worse."""
    c = ctx(request)
    db_error = await c.db.ping()
    bus_error = await c.bus.ping()
    record_dependency("database", db_error is None)
    if c.settings.redis_url:
        record_dependency("redis", bus_error is None)
    body: dict[str, Any] = {
        "status": "ready" if db_error is None else "not_ready",
        "database": "ok" if db_error is None else db_error,
        "redis": ("ok" if bus_error is None else bus_error)
        if c.settings.redis_url
        else "not configured (in-process bus)",
    }
    if db_error is None and bus_error is not None:
        body["status"] = "degraded"
    return JSONResponse(body, status_code=200 if db_error is None else 503)


@router.get("/metrics", summary="Prometheus metrics of this replica")
async def metrics(request: Request) -> Response:
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

    from x0tta6bl4.control.metrics import record_pool
    from x0tta6bl4.observability.metrics import REGISTRY

    record_pool(ctx(request).db)  # the pool as it is at the scrape

    # Our registry: every metric of observability/ is declared there (the global one of
    # prometheus_client holds only its process collectors).
    return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)
