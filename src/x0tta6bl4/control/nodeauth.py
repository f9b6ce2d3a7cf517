"""Node-signed requests (``api.signing``): which node is calling, proven by its key."""

from __future__ import annotations

import time
from dataclasses import dataclass

from fastapi import HTTPException, Request
from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError

from x0tta6bl4.api.signing import (
    MAX_SKEW_S,
    SignedRequestError,
    parse_signed_headers,
    verify_request,
)
from x0tta6bl4.control.models import Certificate, Node, SeenNonce
from x0tta6bl4.crypto.sign import VerifyKey
from x0tta6bl4.identity.cert import NodeCertificate

_CERT_CACHE_MAX = 50_000
_PRUNE_EVERY = 500


@dataclass(frozen=True, slots=True)
class CertEntry:
    serial: str
    node_name: str
    signing_key: VerifyKey
    not_before: float
    not_after: float
    status: str
    revoke_reason: str | None


@dataclass(frozen=True, slots=True)
class NodeCaller:
    name: str
    serial: str
    cert_not_after: float


class CertCache:
    """Parsed certificates by serial. Status lives here too, so the cache is cleared on
    every revocation (``push.Pusher`` does it when any replica revokes)."""

    def __init__(self) -> None:
        self._entries: dict[str, CertEntry] = {}
        self.inserts = 0

    def get(self, serial: str) -> CertEntry | None:
        return self._entries.get(serial)

    def put(self, entry: CertEntry) -> None:
        if len(self._entries) >= _CERT_CACHE_MAX:
            self._entries.clear()
        self._entries[entry.serial] = entry

    def clear(self) -> None:
        self._entries.clear()


def _deny(detail: str) -> HTTPException:
    return HTTPException(401, detail=detail)


async def authenticated_node(request: Request) -> NodeCaller:
    """The node that signed this request, or 401 saying why not."""
    from x0tta6bl4.control.context import ctx

    c = ctx(request)
    try:
        signed = parse_signed_headers(request.headers)
    except SignedRequestError as exc:
        raise _deny(f"node request not signed: {exc}") from None
    serial = format(signed.serial, "x")
    entry = c.cert_cache.get(serial)
    if entry is None:
        async with c.db.session() as s:
            row = (
                await s.execute(
                    select(Certificate, Node.status)
                    .join(Node, Node.name == Certificate.node_name)
                    .where(Certificate.serial == serial)
                )
            ).one_or_none()
        if row is None:
            raise _deny(f"certificate serial {serial} was not issued by this control plane")
        cert_row, node_status = row
        status = cert_row.status if node_status == "active" else "revoked"
        entry = CertEntry(
            serial,
            cert_row.node_name,
            NodeCertificate.from_pem(cert_row.pem.encode()).signing_key,
            cert_row.not_before,
            cert_row.not_after,
            status,
            cert_row.revoke_reason,
        )
        c.cert_cache.put(entry)
    now = time.time()
    if entry.status != "valid":
        reason = f" ({entry.revoke_reason})" if entry.revoke_reason else ""
        raise _deny(f"certificate {serial} of node {entry.node_name} is revoked{reason}")
    if now >= entry.not_after:
        raise _deny(f"certificate {serial} of node {entry.node_name} has expired")
    if now < entry.not_before:
        raise _deny(f"certificate {serial} of node {entry.node_name} is not yet valid")
    path = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    body = await request.body()
    try:
        verify_request(signed, entry.signing_key, request.method, path, body, now=now)
    except SignedRequestError as exc:
        raise _deny(str(exc)) from None
    await _record_nonce(c, signed.nonce, now)
    return NodeCaller(entry.node_name, serial, entry.not_after)


async def _record_nonce(c: object, nonce: str, now: float) -> None:
    from x0tta6bl4.control.context import ControlContext

    assert isinstance(c, ControlContext)
    if not await c.replay.first_use(c, nonce, now):
        raise _deny("replayed request (nonce already seen)")


class ReplayGuard:
    """Remembers the nonces of signed requests for the clock window (2 x MAX_SKEW_S).

    Where the nonces live follows who could see a replay: one process on the embedded
    defaults (SQLite, in-process bus) keeps them in memory; replicas sharing Redis use
    ``SET NX EX`` there (no disk write per request); replicas sharing only PostgreSQL use
    the ``seen_nonces`` table. If Redis fails, the table takes over.
    """

    _MEMORY_MAX = 200_000

    def __init__(self, mode: str, redis: object | None = None) -> None:
        self.mode = mode  # "memory" | "redis" | "database"
        self._redis = redis
        self._memory: dict[str, float] = {}
        self._next_prune = 0.0

    async def first_use(self, c: object, nonce: str, now: float) -> bool:
        ttl = 2 * MAX_SKEW_S
        if self.mode == "memory":
            return self._first_in_memory(nonce, now, ttl)
        if self.mode == "redis" and self._redis is not None:
            try:
                ok = await self._redis.set(f"x0t:nonce:{nonce}", b"1", nx=True, ex=int(ttl))  # type: ignore[attr-defined]
                return bool(ok)
            except Exception:  # Redis down: the database is shared by every replica too
                pass
        return await self._first_in_database(c, nonce, now, ttl)

    def _first_in_memory(self, nonce: str, now: float, ttl: float) -> bool:
        if now >= self._next_prune or len(self._memory) >= self._MEMORY_MAX:
            self._memory = {k: v for k, v in self._memory.items() if v > now}
            self._next_prune = now + 10.0
            if len(self._memory) >= self._MEMORY_MAX:
                return False  # a flood of signed requests: refuse rather than forget
        if self._memory.get(nonce, 0.0) > now:
            return False
        self._memory[nonce] = now + ttl
        return True

    async def _first_in_database(self, c: object, nonce: str, now: float, ttl: float) -> bool:
        from x0tta6bl4.control.context import ControlContext

        assert isinstance(c, ControlContext)
        async with c.db.session() as s:
            s.add(SeenNonce(nonce=nonce, expires_at=now + ttl))
            try:
                await s.commit()
            except IntegrityError:
                return False
            c.cert_cache.inserts += 1
            if c.cert_cache.inserts % _PRUNE_EVERY == 0:
                await s.execute(delete(SeenNonce).where(SeenNonce.expires_at < now))
                await s.commit()
        return True
