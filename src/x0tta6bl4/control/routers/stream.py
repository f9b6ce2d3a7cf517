"""The push stream to nodes (server-sent events) and its polling fallback.

A node holds ``GET /v1/stream`` open; each replica's pusher wakes the streams attached to
it when any replica commits a new policy or revocation list (within about a second, also
when Redis is down: ``push.Pusher``), and each stream writes the newer signed documents.
The wire format is ``api/push.py``. A stream ends when the certificate it was opened with
is revoked (event ``revoked``) or expires (event ``expired``); the node reconnects with its
current certificate.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import structlog
from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, Field

from x0tta6bl4.api.push import (
    EVENT_EXPIRED,
    EVENT_HELLO,
    EVENT_REVOKED,
    KEEPALIVE_FRAME,
    KEEPALIVE_S,
    MAX_VERSION,
    Hello,
    StreamEnd,
    format_event,
)
from x0tta6bl4.control.context import ControlContext, ctx
from x0tta6bl4.control.nodeauth import NodeCaller, authenticated_node
from x0tta6bl4.control.policies import REASON_NAMES, PushDocs, latest_versions, push_docs
from x0tta6bl4.observability import tracing
from x0tta6bl4.observability.metrics import record_push

log = structlog.get_logger("x0tta6bl4.control.stream")

router = APIRouter(prefix="/v1", tags=["push"])

_HELD_POLICY = Query(0, ge=0, le=MAX_VERSION, description="Policy version the node holds.")
_HELD_CRL = Query(0, ge=0, le=MAX_VERSION, description="Revocation list version it holds.")


class PolicyDocOut(BaseModel):
    version: int
    signed: str | None = Field(description="The CA-signed policy document, base64.")


class CrlDocOut(BaseModel):
    version: int
    pem: str | None = Field(description="The CA-signed revocation list, PEM.")


class SyncOut(BaseModel):
    policy: PolicyDocOut | None = Field(description="Only when newer than the node's.")
    crl: CrlDocOut | None = Field(description="Only when newer than the node's.")


class _Stream:
    """One node's stream: what it holds, and the frames that bring it up to date."""

    def __init__(
        self, c: ControlContext, docs: PushDocs, caller: NodeCaller, policy: int, crl: int
    ) -> None:
        self.c = c
        self.docs = docs
        self.caller = caller
        self.policy = policy
        self.crl = crl
        self.ended = False

    async def catch_up(self, *, news: bool = False) -> list[bytes]:
        """Frames for what is newer than the node holds; ``revoked`` last when the
        current list names the stream's certificate. ``news``: woken by a change (its
        push lag is observed), not catching up a node that connected behind."""
        v = self.c.pusher.versions
        out: list[bytes] = []
        t0 = time.time()
        if v.policy > self.policy:
            doc = await self.docs.policy(self.c.db, v.policy)
            if doc is not None:
                out.append(doc.frame)
                self.policy = v.policy
                record_push("policy", time.time() - doc.created_at if news else None)
                _trace_push(self.caller, "policy", v.policy, t0, doc.created_at if news else None)
        if v.crl > 0:
            crl = await self.docs.crl(self.c.db, self.c.ca, v.crl)
            if crl is not None:
                if v.crl > self.crl:
                    out.append(crl.frame)
                    self.crl = v.crl
                    record_push("revocation", time.time() - crl.created_at if news else None)
                    _trace_push(
                        self.caller, "revocation", v.crl, t0, crl.created_at if news else None
                    )
                entry = crl.entry(self.caller.serial)
                if entry is not None:
                    reason = REASON_NAMES.get(entry.reason, entry.reason.value)
                    end = StreamEnd(self.caller.serial, reason)
                    out.append(format_event(EVENT_REVOKED, end.to_wire()))
                    self.ended = True
        return out

    async def frames(self) -> AsyncIterator[bytes]:
        caller = self.caller
        # Subscribe before reading the versions, so no change falls between the two.
        async with self.c.pusher.subscribe() as q:
            v = self.c.pusher.versions
            yield format_event(
                EVENT_HELLO, Hello(caller.name, caller.serial, v.policy, v.crl).to_wire()
            )
            for frame in await self.catch_up():
                yield frame
            while not self.ended:
                left = caller.cert_not_after - time.time()
                if left <= 0:
                    end = StreamEnd(caller.serial, "certificate expired")
                    yield format_event(EVENT_EXPIRED, end.to_wire())
                    return
                try:
                    async with asyncio.timeout(min(KEEPALIVE_S, left)):
                        await q.get()
                except TimeoutError:
                    if time.time() < caller.cert_not_after:
                        yield KEEPALIVE_FRAME
                    continue
                # The queue only wakes us: the pusher's versions are the newest.
                while not q.empty():
                    q.get_nowait()
                for frame in await self.catch_up(news=True):
                    yield frame


def _trace_push(
    caller: NodeCaller, kind: str, version: int, start: float, committed: float | None
) -> None:
    """A span per document written to a node's stream; its own trace, linked to the
    stream's request (which lasts as long as the stream)."""
    if tracing.enabled():
        tracing.record_span(
            "x0t.push",
            start=start,
            end=time.time(),
            new_trace=True,
            kind=kind,
            version=version,
            node=caller.name,
            serial=caller.serial,
            lag_s=None if committed is None else round(time.time() - committed, 6),
        )


async def _guarded(stream: _Stream) -> AsyncIterator[bytes]:
    try:
        async for frame in stream.frames():
            yield frame
    except asyncio.CancelledError:
        raise
    except Exception as exc:  # database down mid-stream: end it; the node reconnects
        log.warning("stream_failed", node=stream.caller.name, error=str(exc)[:200])
    finally:
        log.debug("stream_closed", node=stream.caller.name)


@router.get(
    "/stream",
    summary="Server-sent events: policy and revocation pushes (node-signed)",
    response_class=StreamingResponse,
    responses={
        200: {
            "content": {"text/event-stream": {}},
            "description": "Events hello, policy, crl, revoked, expired (api/push.py).",
        },
        401: {"description": "Not signed by a node with a current certificate."},
    },
)
async def stream(
    request: Request,
    policy: int = _HELD_POLICY,
    crl: int = _HELD_CRL,
    caller: NodeCaller = Depends(authenticated_node),  # noqa: B008
) -> StreamingResponse:
    """Node-signed. First ``hello`` with the service's versions, then the documents newer
    than ``policy``/``crl`` (what the node holds), then each newer one as it is made, with
    ``: ka`` keep-alive comments every 10 s."""
    s = _Stream(ctx(request), push_docs(request), caller, policy, crl)
    return StreamingResponse(
        _guarded(s),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


@router.get(
    "/sync",
    summary="What is newer than the node holds: the stream's polling fallback (node-signed)",
    responses={401: {"description": "Not signed by a node with a current certificate."}},
)
async def sync(
    request: Request,
    policy: int = _HELD_POLICY,
    crl: int = _HELD_CRL,
    caller: NodeCaller = Depends(authenticated_node),  # noqa: B008
) -> SyncOut:
    """Node-signed. Read from the database, so it is current on every replica."""
    c = ctx(request)
    docs = push_docs(request)
    latest_policy, latest_crl = await latest_versions(c.db)
    out = SyncOut(policy=None, crl=None)
    if latest_policy > policy:
        pdoc = await docs.policy(c.db, latest_policy)
        if pdoc is not None:
            out.policy = PolicyDocOut(**pdoc.pushed.to_wire())
    if latest_crl > crl:
        cdoc = await docs.crl(c.db, c.ca, latest_crl)
        if cdoc is not None:
            out.crl = CrlDocOut(**cdoc.pushed.to_wire())
    log.debug("sync", node=caller.name, policy=latest_policy, crl=latest_crl)
    return out
