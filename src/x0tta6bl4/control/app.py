"""The FastAPI application: ``create_app(settings)``; ``serve`` runs it with uvicorn."""

from __future__ import annotations

import contextlib
import math
from collections.abc import AsyncIterator

import structlog
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError

from x0tta6bl4.control.bus import make_bus
from x0tta6bl4.control.ca import ControlCA
from x0tta6bl4.control.context import ControlContext
from x0tta6bl4.control.db import Database
from x0tta6bl4.control.metrics import ControlGauges
from x0tta6bl4.control.nodeauth import ReplayGuard
from x0tta6bl4.control.push import Pusher
from x0tta6bl4.control.settings import ControlSettings
from x0tta6bl4.observability import tracing

log = structlog.get_logger("x0tta6bl4.control")


def create_app(settings: ControlSettings | None = None) -> FastAPI:
    settings = settings or ControlSettings()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        db = Database(settings.resolved_database_url, pool_size=settings.db_pool_size)
        # Both no-ops unless OTEL_* variables turned tracing on (serve_app).
        tracing.instrument_sqlalchemy(db.engine.sync_engine)
        tracing.instrument_redis()
        await db.migrate()
        ca = ControlCA.open(settings.resolved_ca_dir, settings.trust_domain)
        bus = make_bus(settings.redis_url)
        c_holder: list[ControlContext] = []
        pusher = Pusher(
            db, bus, settings.push_poll_s, on_revocation=lambda: c_holder[0].cert_cache.clear()
        )
        c = ControlContext(settings, db, bus, ca, pusher, replay=_replay_guard(db, bus))
        c_holder.append(c)
        await _first_revocation_list(db, ca)
        await pusher.start()
        app.state.ctl = c
        gauges = ControlGauges(c)
        gauges.start()
        log.info(
            "control_plane_started", database=db.url.split("@")[-1], trust_domain=ca.ca.trust_domain
        )
        try:
            yield
        finally:
            await gauges.close()
            await pusher.close()
            await bus.close()
            await db.close()
            # uvicorn re-raises SIGTERM once shut down, so exit handlers never run: the
            # buffered spans leave now.
            tracing.flush()

    app = FastAPI(
        title="x0tta6bl4 control plane",
        version="1",
        lifespan=lifespan,
        description="Enrollment, certificates, revocation, policy, topology and events.",
    )

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        # One readable sentence per bad field, plus the structured list.
        problems = [
            _safe_text(f"{'.'.join(str(p) for p in e['loc'] if p != 'body') or 'body'}: {e['msg']}")
            for e in exc.errors()
        ]
        return JSONResponse(
            status_code=422,
            content={"detail": "; ".join(problems), "errors": jsonable(exc.errors())},
        )

    @app.exception_handler(DBAPIError)
    async def database_unavailable(request: Request, exc: DBAPIError) -> JSONResponse:
        # A lost connection (PostgreSQL restarting, network cut) is the service being
        # unable to answer now, not a bug: 503 with a reason, and the pool recovers.
        if exc.connection_invalidated or isinstance(exc, OperationalError | InterfaceError):
            log.warning("database_unavailable", path=request.url.path, error=str(exc.orig)[:200])
            return JSONResponse(
                status_code=503,
                content={"detail": "the database is unreachable; retry shortly"},
                headers={"Retry-After": "1"},
            )
        raise exc

    @app.exception_handler(OSError)
    async def connection_refused(request: Request, exc: OSError) -> JSONResponse:
        log.warning("backend_unreachable", path=request.url.path, error=str(exc)[:200])
        return JSONResponse(
            status_code=503,
            content={"detail": "a backend (database) is unreachable; retry shortly"},
            headers={"Retry-After": "1"},
        )

    _document_validation_errors(app)
    from x0tta6bl4.control.hotreads import HotReads

    app.add_middleware(HotReads)
    from x0tta6bl4.control.metrics import RequestMetrics

    app.add_middleware(RequestMetrics)  # added last, so outermost: HotReads' answers count
    from x0tta6bl4.control.routers import health

    app.include_router(health.router)
    # Resource routers: each module defines ``router`` with its own /v1 prefix.
    from x0tta6bl4.control.routers import apikeys, auditlog, events, nodes, reports, topology

    app.include_router(nodes.router)
    app.include_router(topology.router)
    app.include_router(events.router)
    app.include_router(reports.router)
    app.include_router(apikeys.router)
    app.include_router(auditlog.router)
    from x0tta6bl4.control.routers import enroll as enroll_router
    from x0tta6bl4.control.routers import tokens as tokens_router

    app.include_router(tokens_router.router)
    app.include_router(enroll_router.router)
    from x0tta6bl4.control.routers import policies, revocations, stream

    app.include_router(policies.router)
    app.include_router(revocations.router)
    app.include_router(stream.router)
    from x0tta6bl4.control.routers import ui

    app.include_router(ui.router)  # the topology page (/ui/)
    tracing.instrument_fastapi(app)
    return app


def serve_app() -> FastAPI:
    """uvicorn's factory for ``x0t serve``, run in every worker process: logs
    (``X0T_LOG_FORMAT``, ``X0T_LOG_LEVEL``) and, when ``OTEL_*`` variables ask for it,
    tracing; then the app."""
    import logging

    from x0tta6bl4.observability.logging import configure_logging

    settings = ControlSettings()
    configure_logging(json=settings.log_format == "json", level=settings.log_level.upper())
    # Alembic lists its plugins at INFO on every start; its migration lines stay.
    logging.getLogger("alembic.runtime.plugins").setLevel(logging.WARNING)
    tracing.setup_tracing("x0tta6bl4-control")
    return create_app(settings)


def _replay_guard(db: Database, bus: object) -> ReplayGuard:
    from x0tta6bl4.control.bus import RedisBus

    if isinstance(bus, RedisBus):
        return ReplayGuard("redis", bus.redis)
    # SQLite means one process (the embedded default): memory sees every request.
    return ReplayGuard("memory" if db.is_sqlite else "database")


async def _first_revocation_list(db: Database, ca: ControlCA) -> None:
    """Version 1 on first start. Replicas starting together on an empty database race
    for that insert; the loser finds the winner's list."""
    from sqlalchemy.exc import IntegrityError

    for _ in range(3):
        async with db.session() as s:
            try:
                await ca.current_revocation_list(s)
                await s.commit()
                return
            except IntegrityError:
                await s.rollback()


def _safe_float(value: float) -> float | str:
    # NaN and infinities are not JSON; a body that smuggled one in is echoed as text.
    return value if math.isfinite(value) else str(value)


def _safe_text(value: str) -> str:
    # A JSON string may carry a lone surrogate ("\ud800"), which cannot be encoded back
    # into the error body; show it escaped instead of failing with a 500.
    return value.encode("utf-8", "backslashreplace").decode("utf-8")


def jsonable(errors: object) -> object:
    from fastapi.encoders import jsonable_encoder

    return jsonable_encoder(
        errors,
        custom_encoder={
            bytes: lambda b: b.decode("latin-1"),
            str: _safe_text,
            float: _safe_float,
        },
    )


def _document_validation_errors(app: FastAPI) -> None:
    """The 422 body is ``{"detail": "<field>: <problem>; ...", "errors": [...]}`` (see
    the handler above); say so in the OpenAPI document instead of FastAPI's default."""
    from fastapi.openapi.utils import get_openapi

    def openapi() -> dict[str, object]:
        if app.openapi_schema is None:
            schema = get_openapi(
                title=app.title,
                version=app.version,
                description=app.description,
                routes=app.routes,
            )
            schemas = schema.get("components", {}).get("schemas", {})
            if "HTTPValidationError" in schemas:
                schemas["HTTPValidationError"] = {
                    "title": "HTTPValidationError",
                    "type": "object",
                    "required": ["detail"],
                    "properties": {
                        "detail": {"type": "string", "description": "field: problem; ..."},
                        "errors": {
                            "type": "array",
                            "items": {"$ref": "#/components/schemas/ValidationError"},
                        },
                    },
                }
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
