"""Revocation: revoke a certificate or a whole node, read the revocation list.

Every revocation writes a new CA-signed revocation list (CRL) version in the same
transaction as the certificates' status, then pushes it to connected nodes. The CRL
version is the primary key: two replicas revoking at once cannot both write N+1, so the
loser rolls back and retries on top of the winner's list (nothing is lost).

Revoking what is already revoked is refused with 409 (a revocation is final and the
first reason stands); revoking an unknown serial or node is 404.

Lists carry a nextUpdate (7 days) after which nodes treat them as stale, so the service
re-signs the current entries as a new version once the newest list is a day old
(``refresh_if_due``, checked at start and every ``REFRESH_CHECK_S`` by this router's
lifespan, on every replica; the version key makes the replicas' checks race-free).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import AsyncIterator
from typing import Any, Literal, cast

import structlog
from fastapi import APIRouter, Depends, FastAPI, HTTPException, Request, Response
from pydantic import BaseModel, Field, model_validator
from sqlalchemy import select, update
from sqlalchemy.engine import CursorResult

from x0tta6bl4.control.audit import record
from x0tta6bl4.control.auth import Actor, Role, require
from x0tta6bl4.control.context import ControlContext, ctx
from x0tta6bl4.control.models import Certificate, Node, RevocationListRow
from x0tta6bl4.control.policies import (
    REASON_NAMES,
    CrlDoc,
    latest_versions,
    push_docs,
    retryable,
)
from x0tta6bl4.identity.crl import REVOCATION_REASONS

log = structlog.get_logger("x0tta6bl4.control.revocations")

# Re-sign the list when the newest version is older than this (nextUpdate is 7 days).
REFRESH_AFTER_S = 24 * 3600.0
REFRESH_CHECK_S = 600.0
MAX_ATTEMPTS = 8

ReasonName = Literal[
    "unspecified",
    "key-compromise",
    "ca-compromise",
    "affiliation-changed",
    "superseded",
    "cessation-of-operation",
    "privilege-withdrawn",
]


async def refresh_if_due(
    c: ControlContext, *, now: float | None = None, max_age_s: float = REFRESH_AFTER_S
) -> int | None:
    """Re-sign the revocation list as a new version if the newest is older than
    ``max_age_s``; push it. The new version, or None when not due (or another replica
    just did it)."""
    t = time.time() if now is None else now
    try:
        async with c.db.session() as s:
            newest = (
                await s.execute(
                    select(RevocationListRow.created_at)
                    .order_by(RevocationListRow.version.desc())
                    .limit(1)
                )
            ).scalar_one_or_none()
            if newest is not None and t - newest < max_age_s:
                return None
            crl = await c.ca.refresh_in(s, t)
            record(s, "system", "crl.refresh", f"crl:{crl.version}", {"entries": len(crl)})
            await s.commit()
    except Exception as exc:
        if retryable(exc, c.db):
            return None  # another replica wrote that version first: nothing left to do
        raise
    log.info("crl_refreshed", version=crl.version, entries=len(crl))
    await c.pusher.changed("crl")
    return crl.version


async def _refresh_loop(app: FastAPI) -> None:
    c = app.state.ctl
    assert isinstance(c, ControlContext)
    rng = random.Random()  # spreads replicas' checks in time; not secret
    while True:
        try:
            await refresh_if_due(c)
        except Exception as exc:  # database down: try again at the next check
            log.warning("crl_refresh_failed", error=str(exc)[:200])
        # Jitter keeps replicas started together from checking in lockstep.
        await asyncio.sleep(REFRESH_CHECK_S * rng.uniform(0.8, 1.2))


@contextlib.asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    # Runs inside the application's lifespan (FastAPI merges router lifespans), so the
    # context exists; a replica that was down for days refreshes at once.
    task = asyncio.create_task(_refresh_loop(app), name="crl-refresh")
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


router = APIRouter(prefix="/v1", tags=["revocation"], lifespan=_lifespan)


class RevokeBody(BaseModel):
    serial: str | None = Field(
        default=None,
        min_length=1,
        max_length=40,
        pattern=r"^[0-9a-fA-F]+$",
        description="A certificate serial (hex).",
    )
    node: str | None = Field(
        default=None,
        min_length=1,
        max_length=63,
        pattern=r"^[a-z0-9][a-z0-9.-]*$",
        description="A node name: every valid certificate it holds, and the node itself.",
    )
    reason: ReasonName = "unspecified"

    @model_validator(mode="after")
    def _one(self) -> RevokeBody:
        if (self.serial is None) == (self.node is None):
            raise ValueError("give exactly one of serial and node")
        return self


class RevokeResult(BaseModel):
    crl_version: int = Field(description="The revocation list version that lists them.")
    serials: list[str] = Field(description="Certificates revoked by this call.")
    node: str | None
    reason: str


class RevokedOut(BaseModel):
    serial: str
    node: str | None = Field(description="None for a serial the inventory does not know.")
    reason: str
    at: float


class RevocationsOut(BaseModel):
    version: int
    issued_at: float
    next_update: float
    entries: list[RevokedOut]


class CrlVersionOut(BaseModel):
    version: int
    issued_at: float
    next_update: float


@router.post(
    "/revocations",
    summary="Revoke a certificate or a node (operator)",
    responses={
        404: {"description": "Unknown serial or node."},
        409: {"description": "Already revoked."},
    },
)
async def revoke(
    body: RevokeBody,
    request: Request,
    actor: Actor = Depends(require(Role.operator)),  # noqa: B008
) -> RevokeResult:
    """Role: operator. ``serial`` revokes one certificate; ``node`` revokes every valid
    certificate of the node and marks it revoked (it can no longer renew or call the
    service). A new revocation list version is signed and pushed to every node."""
    c = ctx(request)
    for _ in range(MAX_ATTEMPTS):
        try:
            result = await _revoke_once(c, body, actor)
        except HTTPException:
            raise
        except Exception as exc:
            # The list version is the primary key: another replica wrote it first (the
            # insert fails at flush or commit). Redo on top of its list.
            if retryable(exc, c.db):
                continue
            raise
        await c.pusher.changed("crl")
        return result
    raise HTTPException(
        503, detail=f"{MAX_ATTEMPTS} concurrent revocations won the next list version; retry"
    )


async def _revoke_once(c: ControlContext, body: RevokeBody, actor: Actor) -> RevokeResult:
    """One attempt, one transaction (rolled back by the session on any exception)."""
    async with c.db.session() as s:
        now = time.time()
        node: str | None = None
        if body.serial is not None:
            serial = format(int(body.serial, 16), "x")
            row = (
                await s.execute(
                    select(Certificate.node_name, Certificate.status).where(
                        Certificate.serial == serial
                    )
                )
            ).one_or_none()
            if row is None:
                raise HTTPException(
                    404, detail=f"serial: no certificate {serial} was issued by this service"
                )
            node_name, status = row
            if status != "valid":
                raise HTTPException(
                    409,
                    detail=f"serial: certificate {serial} of node {node_name} is already revoked",
                )
            serials = [serial]
            action, target = "certificate.revoke", f"certificate:{serial}"
        else:
            node = body.node
            node_status = (
                await s.execute(select(Node.status).where(Node.name == node))
            ).scalar_one_or_none()
            if node_status is None:
                raise HTTPException(404, detail=f"node: no node is named {node!r}")
            marked = await s.execute(
                update(Node)
                .where(Node.name == node, Node.status != "revoked")
                .values(status="revoked")
            )
            if cast(CursorResult[Any], marked).rowcount == 0:
                raise HTTPException(409, detail=f"node: {node} is already revoked")
            serials = list(
                (
                    await s.execute(
                        select(Certificate.serial).where(
                            Certificate.node_name == node, Certificate.status == "valid"
                        )
                    )
                ).scalars()
            )
            action, target = "node.revoke", f"node:{node}"
        crl = await c.ca.revoke_in(s, serials, REVOCATION_REASONS[body.reason], now)
        record(
            s,
            actor,
            action,
            target,
            {"serials": serials, "reason": body.reason, "crl_version": crl.version},
        )
        await s.commit()
    return RevokeResult(crl_version=crl.version, serials=serials, node=node, reason=body.reason)


async def _current_crl(request: Request) -> CrlDoc:
    c = ctx(request)
    # The version the pusher knows is the one pushed to streams; at start it is read
    # from the database.
    version = c.pusher.versions.crl or (await latest_versions(c.db))[1]
    doc = await push_docs(request).crl(c.db, c.ca, version)
    if doc is None:
        raise HTTPException(503, detail="no revocation list yet; the service is starting")
    return doc


@router.get("/revocations", summary="The current revocation list's entries (viewer)")
async def list_revocations(
    request: Request,
    _: Actor = Depends(require(Role.viewer)),  # noqa: B008
) -> RevocationsOut:
    """Role: viewer. Each revoked serial with its node, reason and time."""
    c = ctx(request)
    doc = await _current_crl(request)
    async with c.db.session() as s:
        names = dict(
            (
                await s.execute(
                    select(Certificate.serial, Certificate.node_name).where(
                        Certificate.status == "revoked"
                    )
                )
            ).all()
        )
    entries = [
        RevokedOut(
            serial=format(e.serial, "x"),
            node=names.get(format(e.serial, "x")),
            reason=REASON_NAMES.get(e.reason, e.reason.value),
            at=e.revoked_at,
        )
        for e in doc.crl.entries
    ]
    return RevocationsOut(
        version=doc.version,
        issued_at=doc.crl.issued_at,
        next_update=doc.crl.next_update,
        entries=entries,
    )


@router.get(
    "/crl",
    summary="The CA-signed revocation list, PEM (public)",
    response_class=Response,
    responses={200: {"content": {"application/x-pem-file": {}}, "description": "The CRL."}},
)
async def crl_pem(request: Request) -> Response:
    """No authentication: the list is public and signed by the CA, so anyone (a node, a
    relying party) can fetch and verify it."""
    doc = await _current_crl(request)
    return Response(doc.pem, media_type="application/x-pem-file")


@router.get("/crl/version", summary="The current revocation list's version (public)")
async def crl_version(request: Request) -> CrlVersionOut:
    """No authentication (see /v1/crl)."""
    doc = await _current_crl(request)
    return CrlVersionOut(
        version=doc.version, issued_at=doc.crl.issued_at, next_update=doc.crl.next_update
    )
