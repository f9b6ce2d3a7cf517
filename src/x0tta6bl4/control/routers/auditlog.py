"""``GET /v1/audit``: who changed what (every operator mutation writes one entry)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from pydantic import BaseModel, Field
from sqlalchemy import select

from x0tta6bl4.api.reports import MAX_TIME
from x0tta6bl4.control.auth import Actor, Role, require
from x0tta6bl4.control.context import ctx
from x0tta6bl4.control.models import AuditEntry

router = APIRouter(
    prefix="/v1",
    tags=["audit"],
    responses={
        401: {"description": "no API key, or an unknown, malformed or revoked one"},
        403: {"description": "the key's role is too low for this route"},
    },
)

MAX_PAGE = 1000
MAX_ID = 2**31 - 1  # audit_log.id is INTEGER
# No control characters (PostgreSQL refuses NUL in text: a 500 instead of a 422).
PRINTABLE = r"^[^\x00-\x1f\x7f]*$"


class AuditOut(BaseModel):
    id: int
    at: float
    actor: str = Field(description="key:<id>(<name>) for API keys; cli or system otherwise.")
    action: str = Field(description="e.g. api_key.create, api_key.revoke, node.update_tags")
    target: str
    detail: dict[str, Any]


class AuditPage(BaseModel):
    entries: list[AuditOut] = Field(description="Newest first.")
    next_cursor: int | None = Field(
        description="Pass as ?cursor= for the next (older) page; null on the last page."
    )


@router.get("/audit", response_model=AuditPage, summary="The audit log, newest first (admin)")
async def list_audit(
    request: Request,
    actor: Annotated[
        str | None,
        Query(
            max_length=128,
            pattern=PRINTABLE,
            description="Exact actor, or a key id (matches key:<id>(...)).",
        ),
    ] = None,
    action: Annotated[str | None, Query(max_length=64, pattern=PRINTABLE)] = None,
    since: Annotated[float | None, Query(ge=0, le=MAX_TIME, allow_inf_nan=False)] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 100,
    cursor: Annotated[int | None, Query(ge=1, le=MAX_ID)] = None,
    _: Actor = Depends(require(Role.admin)),  # noqa: B008
) -> AuditPage:
    """Role: admin."""
    q = select(
        AuditEntry.id,
        AuditEntry.at,
        AuditEntry.actor,
        AuditEntry.action,
        AuditEntry.target,
        AuditEntry.detail,
    ).order_by(AuditEntry.id.desc())
    if actor is not None:
        # A bare key id finds that key's entries whatever its name was.
        q = q.where(
            (AuditEntry.actor == actor)
            | AuditEntry.actor.startswith(f"key:{actor}(", autoescape=True)
        )
    if action is not None:
        q = q.where(AuditEntry.action == action)
    if since is not None:
        q = q.where(AuditEntry.at >= since)
    if cursor is not None:
        q = q.where(AuditEntry.id < cursor)
    async with ctx(request).db.engine.connect() as conn:
        rows = (await conn.execute(q.limit(limit))).all()
    entries = [
        AuditOut(id=r[0], at=r[1], actor=r[2], action=r[3], target=r[4], detail=r[5]) for r in rows
    ]
    return AuditPage(entries=entries, next_cursor=entries[-1].id if len(entries) == limit else None)
