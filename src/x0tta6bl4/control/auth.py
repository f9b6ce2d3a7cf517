"""Who is calling: operators with API keys (roles admin > operator > viewer), and nodes
signing requests with their certified key.

API keys look like ``x0tk_<id>_<secret>``; the database keeps only SHA-256 of the secret
(the secret is 32 random bytes, so a plain hash is enough: there is nothing to guess).
Verified keys are cached for a few seconds so a read does not cost a key lookup; revoking
a key therefore takes effect within ``KEY_CACHE_S`` on every replica.
"""

from __future__ import annotations

import base64
import enum
import hashlib
import hmac
import os
import time
from dataclasses import dataclass

from fastapi import Depends, HTTPException, Request
from sqlalchemy import select

from x0tta6bl4.control.models import ApiKey

KEY_PREFIX = "x0tk"
KEY_CACHE_S = 5.0
_KEY_CACHE_MAX = 10_000


class Role(enum.IntEnum):
    viewer = 1
    operator = 2
    admin = 3


@dataclass(frozen=True, slots=True)
class Actor:
    key_id: str
    name: str
    role: Role

    @property
    def label(self) -> str:
        """How the audit log names this caller."""
        return f"key:{self.key_id}({self.name})"


def new_api_key() -> tuple[str, str, bytes]:
    """``(key text shown once, key id, secret hash to store)``."""
    key_id = os.urandom(6).hex()
    secret = base64.urlsafe_b64encode(os.urandom(32)).rstrip(b"=").decode()
    return f"{KEY_PREFIX}_{key_id}_{secret}", key_id, _hash(secret)


def _hash(secret: str) -> bytes:
    return hashlib.sha256(secret.encode()).digest()


def parse_api_key(text: str) -> tuple[str, str] | None:
    # The secret is base64url and may itself contain "_": split off the two fields only.
    parts = text.split("_", 2)
    if len(parts) != 3 or parts[0] != KEY_PREFIX or len(parts[1]) != 12 or len(parts[2]) > 64:
        return None
    return parts[1], parts[2]


class KeyCache:
    def __init__(self) -> None:
        self._entries: dict[str, tuple[float, Actor]] = {}

    def get(self, key: str) -> Actor | None:
        hit = self._entries.get(key)
        if hit is None or hit[0] < time.monotonic():
            return None
        return hit[1]

    def put(self, key: str, actor: Actor) -> None:
        if len(self._entries) >= _KEY_CACHE_MAX:
            self._entries.clear()
        self._entries[key] = (time.monotonic() + KEY_CACHE_S, actor)

    def clear(self) -> None:
        self._entries.clear()


def _unauthorized(detail: str) -> HTTPException:
    return HTTPException(401, detail=detail, headers={"WWW-Authenticate": "Bearer"})


async def current_actor(request: Request) -> Actor:
    from x0tta6bl4.control.context import ctx

    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token:
        raise _unauthorized("an API key is required: Authorization: Bearer x0tk_...")
    c = ctx(request)
    cached = c.key_cache.get(token)
    if cached is not None:
        return cached
    parsed = parse_api_key(token.strip())
    if parsed is None:
        raise _unauthorized("malformed API key (expected x0tk_<id>_<secret>)")
    key_id, secret = parsed
    async with c.db.session() as s:
        row = (await s.execute(select(ApiKey).where(ApiKey.id == key_id))).scalar_one_or_none()
    if row is None or not hmac.compare_digest(row.secret_hash, _hash(secret)):
        raise _unauthorized("unknown API key")
    if row.revoked_at is not None:
        raise _unauthorized("this API key was revoked")
    actor = Actor(row.id, row.name, Role[row.role])
    c.key_cache.put(token, actor)
    return actor


def require(role: Role):  # type: ignore[no-untyped-def]
    """A dependency admitting callers with at least ``role``."""

    async def check(actor: Actor = Depends(current_actor)) -> Actor:  # noqa: B008
        if actor.role < role:
            raise HTTPException(
                403, detail=f"this needs the {role.name} role; the key has {actor.role.name}"
            )
        return actor

    return check
