"""The FastAPI application: ``create_app(settings)``; ``serve`` runs it with uvicorn."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import structlog
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from x0tta6bl4.control.bus import make_bus
from x0tta6bl4.control.ca import ControlCA
from x0tta6bl4.control.context import ControlContext
from x0tta6bl4.control.db import Database
from x0tta6bl4.control.push import Pusher
from x0tta6bl4.control.settings import ControlSettings

log = structlog.get_logger("x0tta6bl4.control")


def create_app(settings: ControlSettings | None = None) -> FastAPI:
    settings = settings or ControlSettings()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        db = Database(settings.resolved_database_url, pool_size=settings.db_pool_size)
        await db.migrate()
        ca = ControlCA.open(settings.resolved_ca_dir, settings.trust_domain)
        bus = make_bus(settings.redis_url)
        c_holder: list[ControlContext] = []
        pusher = Pusher(
            db, bus, settings.push_poll_s, on_revocation=lambda: c_holder[0].cert_cache.clear()
        )
        c = ControlContext(settings, db, bus, ca, pusher)
        c_holder.append(c)
        async with db.session() as s:
            await ca.current_revocation_list(s)  # version 1 on first start
            await s.commit()
        await pusher.start()
        app.state.ctl = c
        log.info(
            "control_plane_started", database=db.url.split("@")[-1], trust_domain=ca.ca.trust_domain
        )
        try:
            yield
        finally:
            await pusher.close()
            await bus.close()
            await db.close()

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
            f"{'.'.join(str(p) for p in e['loc'] if p != 'body') or 'body'}: {e['msg']}"
            for e in exc.errors()
        ]
        return JSONResponse(
            status_code=422,
            content={"detail": "; ".join(problems), "errors": jsonable(exc.errors())},
        )

    from x0tta6bl4.control.routers import health

    app.include_router(health.router)
    # Resource routers: each module defines ``router`` with its own /v1 prefix.
    return app


def jsonable(errors: object) -> object:
    from fastapi.encoders import jsonable_encoder

    return jsonable_encoder(errors, custom_encoder={bytes: lambda b: b.decode("latin-1")})
