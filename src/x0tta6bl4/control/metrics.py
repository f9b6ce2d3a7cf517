"""The control plane's metrics: a request middleware, and the gauges read from the
database, the pool and the dependencies (``ControlGauges``, a task of the app's lifespan).

The middleware is plain ASGI (no ``BaseHTTPMiddleware``, whose per-request task and body
streaming would slow the hot reads). It labels requests with the matched route's path
template (``/v1/nodes/{name}``), never the raw path, so the label set stays bounded: a
path no route matches is ``unmatched``.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, Final

import structlog
from sqlalchemy import case, func, select
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from x0tta6bl4 import __version__
from x0tta6bl4.control.context import ControlContext
from x0tta6bl4.control.db import Database
from x0tta6bl4.control.models import Certificate, Node, RevocationListRow
from x0tta6bl4.control.tasks import stop_task
from x0tta6bl4.observability import metrics as m

log = structlog.get_logger("x0tta6bl4.control.metrics")

UNMATCHED: Final = "unmatched"
DEPENDENCY_CHECK_S: Final = 5.0
# A node reports every 5 s by default ([control] report_interval): fresh while its last
# report is younger than three of them.
NODE_REPORT_INTERVAL_S: Final = 5.0
NODE_FRESH_S: Final = 3 * NODE_REPORT_INTERVAL_S


class RequestMetrics:
    """``x0tta6bl4_http_requests_total`` and ``_duration_seconds`` for every HTTP request.

    Duration runs to the response headers (for the event stream, its opening); a request
    that raised before any answer counts as the 500 the server then sends."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        answered = False

        async def send_and_record(message: Message) -> None:
            nonlocal answered
            if message["type"] == "http.response.start" and not answered:
                answered = True
                _record(scope, int(message["status"]), time.perf_counter() - start)
            await send(message)

        try:
            await self.app(scope, receive, send_and_record)
        except Exception:
            if not answered:
                _record(scope, 500, time.perf_counter() - start)
            raise


def _record(scope: Scope, status: int, seconds: float) -> None:
    # The router put the matched route into the scope (a 405 matches partially).
    route = scope.get("route")
    template = getattr(route, "path", None)
    m.record_http_request(
        str(scope.get("method", "")),
        template if isinstance(template, str) else UNMATCHED,
        status,
        seconds,
    )


# --- gauges from the pool, the database and the dependencies ------------------------------


def record_pool(db: Database) -> None:
    """The pool gauges now. Pools without a size (NullPool, StaticPool) report nothing."""
    pool: Any = db.engine.pool
    try:
        size = int(pool.size())
        idle = int(pool.checkedin())
        checked_out = int(pool.checkedout())
        # QueuePool counts overflow from -size up: only what is past the size is overflow.
        overflow = max(0, int(pool.overflow()))
    except (AttributeError, TypeError):
        return
    m.record_db_pool(size, checked_out, idle, overflow)


async def record_inventory(db: Database, now: float | None = None) -> None:
    """Recount ``x0tta6bl4_certificates{status}``, ``x0tta6bl4_certificates_expiring{within}``
    and ``x0tta6bl4_nodes{state}``: one aggregate query each."""
    t = time.time() if now is None else now
    revoked = Certificate.status == "revoked"
    expired = (Certificate.status != "revoked") & (Certificate.not_after <= t)
    live = (Certificate.status != "revoked") & (Certificate.not_after > t)
    fresh = Node.last_seen >= t - NODE_FRESH_S
    async with db.session() as s:
        certs = (
            await s.execute(
                select(
                    func.coalesce(func.sum(case((live, 1), else_=0)), 0),
                    func.coalesce(func.sum(case((expired, 1), else_=0)), 0),
                    func.coalesce(func.sum(case((revoked, 1), else_=0)), 0),
                )
            )
        ).one()
        nodes = (
            await s.execute(
                select(func.count(), func.coalesce(func.sum(case((fresh, 1), else_=0)), 0)).where(
                    Node.status == "active"
                )
            )
        ).one()
        # Only what a node presents now: superseded certificates expire harmlessly.
        expiring: Any = (
            await s.execute(
                select(
                    *(
                        func.coalesce(
                            func.sum(case((Certificate.not_after <= t + w, 1), else_=0)), 0
                        )
                        for _label, w in m.EXPIRY_WINDOWS
                    )
                )
                .join(Node, Node.current_serial == Certificate.serial)
                .where(Node.status == "active", live)
            )
        ).one()
    m.record_certificates(int(certs[0]), int(certs[1]), int(certs[2]))
    m.record_certificates_expiring(
        {label: int(n) for (label, _w), n in zip(m.EXPIRY_WINDOWS, expiring, strict=True)}
    )
    total, fresh_n = int(nodes[0]), int(nodes[1])
    m.record_nodes(fresh_n, total - fresh_n)


class ControlGauges:
    """The lifespan task: dependencies, pool and pushed versions every
    ``DEPENDENCY_CHECK_S``; the inventory every ``settings.metrics_refresh_s``."""

    def __init__(self, c: ControlContext) -> None:
        self.c = c
        self._crl_next_update: tuple[int, float] | None = None  # (version, nextUpdate)
        self._task: asyncio.Task[None] | None = None
        self._failing = False  # log a failing refresh once per outage, not every tick

    def start(self) -> None:
        m.record_build_info("control", __version__)
        cert = self.c.ca.ca.certificate
        m.record_certificate_expiry("ca", cert.not_valid_after_utc.timestamp())
        self._task = asyncio.create_task(self._run(), name="control-gauges")

    async def close(self) -> None:
        await stop_task(self._task)

    async def check_dependencies(self) -> None:
        c = self.c
        m.record_dependency("database", await c.db.ping() is None)
        if c.settings.redis_url:
            m.record_dependency("redis", await c.bus.ping() is None)

    async def record_versions(self) -> None:
        """Policy and revocation-list versions as this replica's pusher knows them."""
        v = self.c.pusher.versions
        if v.policy > 0:
            m.record_policy_version("control", v.policy)
        if v.crl > 0:
            if self._crl_next_update is None or self._crl_next_update[0] != v.crl:
                next_update = await self._next_update(v.crl)
                if next_update is None:
                    return
                self._crl_next_update = (v.crl, next_update)
            m.record_revocation_list("control", v.crl, self._crl_next_update[1])

    async def _next_update(self, version: int) -> float | None:
        from x0tta6bl4.identity.crl import RevocationList

        async with self.c.db.session() as s:
            pem = (
                await s.execute(
                    select(RevocationListRow.pem).where(RevocationListRow.version == version)
                )
            ).scalar_one_or_none()
        if pem is None:
            return None
        # Parsed (and its signature checked) once per version.
        crl = await asyncio.to_thread(
            RevocationList.from_pem, pem.encode(), self.c.ca.ca.certificate
        )
        return crl.next_update

    async def refresh(self, *, inventory: bool) -> None:
        await self.check_dependencies()
        record_pool(self.c.db)
        await self.record_versions()
        if inventory:
            await record_inventory(self.c.db)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        every = self.c.settings.metrics_refresh_s
        tick = min(DEPENDENCY_CHECK_S, every)
        next_inventory = loop.time()
        while True:
            due = loop.time() >= next_inventory
            if due:
                next_inventory = loop.time() + every
            try:
                await self.refresh(inventory=due)
                self._failing = False
            except Exception as exc:  # database down: dependency_up says so; retry
                if not self._failing:
                    log.warning("metrics_refresh_failed", error=str(exc)[:200])
                self._failing = True
            await asyncio.sleep(tick)
