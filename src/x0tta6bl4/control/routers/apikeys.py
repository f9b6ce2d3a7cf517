"""``/v1/api-keys``: operators' API keys (admin only). The secret is shown once, at
creation; only its hash is stored, and listing never shows it.

Revoking a key takes effect at once on this replica (its key cache is cleared) and within
``auth.KEY_CACHE_S`` on every other one (their caches expire). The last active admin key
cannot be revoked: nobody could manage keys afterwards.
"""

from __future__ import annotations

import time
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, HTTPException, Path, Query, Request
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import func, or_, select, update
from sqlalchemy.orm import aliased

from x0tta6bl4.control import audit
from x0tta6bl4.control.admin import create_api_key
from x0tta6bl4.control.auth import KEY_CACHE_S, Actor, Role, require
from x0tta6bl4.control.context import ctx
from x0tta6bl4.control.models import ApiKey

router = APIRouter(
    prefix="/v1",
    tags=["api-keys"],
    responses={
        401: {"description": "no API key, or an unknown, malformed or revoked one"},
        403: {"description": "the key's role is too low for this route"},
    },
)

MAX_LIST = 1000
KeyIdParam = Annotated[str, Path(pattern=r"^[0-9a-f]{12}$", description="The key's id.")]


class KeyCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(
        min_length=1,
        max_length=128,
        pattern=r"^[^\x00-\x1f\x7f]+$",
        description="Who or what the key is for (no control characters).",
    )
    role: Literal["admin", "operator", "viewer"]


class KeyCreated(BaseModel):
    id: str
    name: str
    role: str
    key: str = Field(description="The key itself: shown this once, never again.")


class KeyOut(BaseModel):
    id: str
    name: str
    role: str
    created_at: float
    created_by: str
    revoked_at: float | None
    active: bool


class KeyList(BaseModel):
    keys: list[KeyOut] = Field(description="Oldest first; never any secret.")


class KeyRevoked(BaseModel):
    id: str
    revoked_at: float
    already_revoked: bool
    detail: str


@router.post(
    "/api-keys",
    response_model=KeyCreated,
    status_code=201,
    summary="Create an API key; the key text is returned once (admin)",
)
async def create_key(
    request: Request,
    body: KeyCreate,
    actor: Actor = Depends(require(Role.admin)),  # noqa: B008
) -> KeyCreated:
    """Role: admin. Audited as ``api_key.create``."""
    key = await create_api_key(ctx(request).db, body.name, Role[body.role], actor.label)
    key_id = key.split("_", 2)[1]  # x0tk_<id>_<secret>; the id is hex
    return KeyCreated(id=key_id, name=body.name, role=body.role, key=key)


@router.get("/api-keys", response_model=KeyList, summary="The API keys, no secrets (admin)")
async def list_keys(
    request: Request,
    active: Annotated[
        bool | None, Query(description="true: only active keys; false: only revoked ones.")
    ] = None,
    _: Actor = Depends(require(Role.admin)),  # noqa: B008
) -> KeyList:
    """Role: admin."""
    q = select(
        ApiKey.id,
        ApiKey.name,
        ApiKey.role,
        ApiKey.created_at,
        ApiKey.created_by,
        ApiKey.revoked_at,
    ).order_by(ApiKey.created_at, ApiKey.id)
    if active is True:
        q = q.where(ApiKey.revoked_at.is_(None))
    elif active is False:
        q = q.where(ApiKey.revoked_at.is_not(None))
    async with ctx(request).db.engine.connect() as conn:
        rows = (await conn.execute(q.limit(MAX_LIST))).all()
    return KeyList(
        keys=[
            KeyOut(
                id=r[0],
                name=r[1],
                role=r[2],
                created_at=r[3],
                created_by=r[4],
                revoked_at=r[5],
                active=r[5] is None,
            )
            for r in rows
        ]
    )


@router.delete(
    "/api-keys/{key_id}",
    response_model=KeyRevoked,
    summary="Revoke an API key (admin)",
    responses={
        404: {"description": "no such key"},
        409: {"description": "it is the last active admin key"},
    },
)
async def revoke_key(
    request: Request,
    key_id: KeyIdParam,
    actor: Actor = Depends(require(Role.admin)),  # noqa: B008
) -> KeyRevoked:
    """Role: admin. Audited as ``api_key.revoke``. Revoking an already revoked key
    changes nothing and says so."""
    c = ctx(request)
    now = time.time()
    async with c.db.session() as s:
        # PostgreSQL: lock the active admin keys first, always in the same order, so two
        # admins revoking each other's keys at once serialise here instead of both
        # seeing two admins. SQLite ignores FOR UPDATE; there the guarded UPDATE below is
        # one statement, and SQLite runs one writer at a time.
        await s.execute(
            select(ApiKey.id)
            .where(ApiKey.role == Role.admin.name, ApiKey.revoked_at.is_(None))
            .order_by(ApiKey.id)
            .with_for_update()
        )
        others = aliased(ApiKey)
        other_active_admins = (
            select(func.count())
            .select_from(others)
            .where(
                others.role == Role.admin.name,
                others.revoked_at.is_(None),
                others.id != key_id,
            )
            .scalar_subquery()
        )
        done = await s.execute(
            update(ApiKey)
            .where(
                ApiKey.id == key_id,
                ApiKey.revoked_at.is_(None),
                or_(ApiKey.role != Role.admin.name, other_active_admins > 0),
            )
            .values(revoked_at=now)
            .returning(ApiKey.role, ApiKey.name)
        )
        revoked = done.one_or_none()
        if revoked is None:
            row = (
                await s.execute(select(ApiKey.revoked_at).where(ApiKey.id == key_id))
            ).one_or_none()
            if row is None:
                raise HTTPException(404, detail=f"key_id: no API key with id {key_id!r}")
            if row[0] is not None:
                return KeyRevoked(
                    id=key_id,
                    revoked_at=row[0],
                    already_revoked=True,
                    detail="this key was already revoked",
                )
            raise HTTPException(
                409,
                detail=f"key_id: {key_id} is the last active admin key; create another "
                "admin key first, or nobody could manage keys afterwards",
            )
        role, name = revoked
        audit.record(s, actor, "api_key.revoke", key_id, {"name": name, "role": role})
        await s.commit()
    c.key_cache.clear()
    return KeyRevoked(
        id=key_id,
        revoked_at=now,
        already_revoked=False,
        detail=f"revoked; refused at once here and within {KEY_CACHE_S:.0f} s on every replica",
    )
