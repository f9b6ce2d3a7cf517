"""``/v1/tokens``: join tokens. An operator creates one (its text is shown once; only
SHA-256 of its secret is kept), hands it to a node (``x0t node join URL --token ...``),
lists them and revokes them."""

from __future__ import annotations

import time
from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Path, Request
from pydantic import BaseModel, ConfigDict, Field, field_validator
from sqlalchemy import select, update

from x0tta6bl4.api.enroll import JoinTokenText
from x0tta6bl4.control import audit
from x0tta6bl4.control.auth import Actor, Role, require
from x0tta6bl4.control.context import ctx
from x0tta6bl4.control.models import JoinToken
from x0tta6bl4.errors import IdentityError
from x0tta6bl4.identity.cert import MAX_TAGS, normalize_tags

router = APIRouter(prefix="/v1/tokens", tags=["tokens"])

MAX_USES = 10_000
MIN_TTL_S = 60
MAX_TTL_S = 30 * 86_400
MAX_LISTED = 1_000
# Node names are [a-z0-9.-]; a pattern adds the glob characters * ? [ ] !.
NAME_PATTERN = r"^[a-z0-9.*?\[\]!-]{1,128}$"


class TokenCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name_pattern: str = Field(
        default="*",
        min_length=1,
        max_length=128,
        pattern=NAME_PATTERN,
        description='Glob the node name must match, e.g. "web-*"; "*" = any name.',
    )
    tags: list[str] = Field(
        default_factory=list,
        max_length=MAX_TAGS,
        description="Tags (key:value) the token may grant; a node asks for any subset.",
    )
    max_uses: int = Field(default=1, ge=1, le=MAX_USES, description="Nodes it may enroll.")
    ttl_s: int = Field(
        default=3600, ge=MIN_TTL_S, le=MAX_TTL_S, description="Seconds until it expires."
    )
    # PostgreSQL text cannot hold NUL: refuse it here (422) instead of failing the insert.
    comment: str = Field(default="", max_length=256, pattern=r"^[^\x00]*$")

    @field_validator("tags")
    @classmethod
    def _tags(cls, v: list[str]) -> list[str]:
        try:
            return list(normalize_tags(v))
        except IdentityError as exc:
            raise ValueError(str(exc)) from None


class TokenInfo(BaseModel):
    id: str
    name_pattern: str
    tags: list[str]
    max_uses: int
    uses: int
    remaining: int = Field(description="Uses left; 0 once revoked or expired.")
    expires_at: float
    expired: bool
    revoked_at: float | None
    created_at: float
    created_by: str
    comment: str


class TokenCreated(TokenInfo):
    token: str = Field(description="The token text. Shown only now; keep it secret.")


def _info(row: JoinToken, now: float) -> TokenInfo:
    expired = now >= row.expires_at
    usable = row.revoked_at is None and not expired
    return TokenInfo(
        id=row.id,
        name_pattern=row.name_pattern,
        tags=list(row.tags),
        max_uses=row.max_uses,
        uses=row.uses,
        remaining=max(0, row.max_uses - row.uses) if usable else 0,
        expires_at=row.expires_at,
        expired=expired,
        revoked_at=row.revoked_at,
        created_at=row.created_at,
        created_by=row.created_by,
        comment=row.comment,
    )


@router.post(
    "",
    status_code=201,
    response_model=TokenCreated,
    summary="Create a join token (operator); its text is returned only here",
)
async def create_token(
    body: TokenCreate,
    request: Request,
    actor: Actor = Depends(require(Role.operator)),  # noqa: B008
) -> TokenCreated:
    """Role: operator. The token carries the enrollment key's fingerprint, so the node
    that uses it knows whom to trust."""
    c = ctx(request)
    now = time.time()
    token = JoinTokenText.new(c.ca.enroll_fingerprint)
    row = JoinToken(
        id=token.token_id,
        secret_hash=token.secret_hash,
        name_pattern=body.name_pattern,
        tags=body.tags,
        max_uses=body.max_uses,
        uses=0,
        expires_at=now + body.ttl_s,
        created_at=now,
        created_by=actor.label,
        revoked_at=None,
        comment=body.comment,
    )
    async with c.db.session() as s:
        s.add(row)
        audit.record(
            s,
            actor,
            "token.create",
            token.token_id,
            {
                "name_pattern": body.name_pattern,
                "tags": body.tags,
                "max_uses": body.max_uses,
                "expires_at": row.expires_at,
            },
        )
        await s.commit()
    return TokenCreated(**_info(row, now).model_dump(), token=str(token))


@router.get("", response_model=list[TokenInfo], summary="List join tokens (viewer); no secrets")
async def list_tokens(
    request: Request,
    _actor: Actor = Depends(require(Role.viewer)),  # noqa: B008
) -> list[TokenInfo]:
    """Role: viewer. Newest first, at most 1,000; secrets are never returned."""
    c = ctx(request)
    async with c.db.session() as s:
        rows = (
            (
                await s.execute(
                    select(JoinToken)
                    .order_by(JoinToken.created_at.desc(), JoinToken.id)
                    .limit(MAX_LISTED)
                )
            )
            .scalars()
            .all()
        )
    now = time.time()
    return [_info(r, now) for r in rows]


@router.delete("/{token_id}", response_model=TokenInfo, summary="Revoke a join token (operator)")
async def revoke_token(
    token_id: Annotated[
        str, Path(max_length=64, pattern=r"^[^\x00]*$", description="The token's id (16 hex).")
    ],
    request: Request,
    actor: Actor = Depends(require(Role.operator)),  # noqa: B008
) -> TokenInfo:
    """Role: operator. Idempotent: revoking a revoked token changes nothing. Enrollments
    already made stay; revoke those nodes separately."""
    c = ctx(request)
    now = time.time()
    async with c.db.session() as s:
        done = await s.execute(
            update(JoinToken)
            .where(JoinToken.id == token_id, JoinToken.revoked_at.is_(None))
            .values(revoked_at=now)
        )
        if done.rowcount == 1:  # type: ignore[attr-defined]
            audit.record(s, actor, "token.revoke", token_id)
        await s.commit()
        row = (
            await s.execute(select(JoinToken).where(JoinToken.id == token_id))
        ).scalar_one_or_none()
    if row is None:
        raise HTTPException(404, detail=f"token_id: no join token with id {token_id!r}")
    return _info(row, now)
