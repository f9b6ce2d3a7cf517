"""Enrollment (``/v1/enroll/...``, no API key: the join token inside the sealed request is
the credential) and renewal (``/v1/renew``, signed by the node). The exchange is
described in ``api.enroll``; the checks live in ``control.enroll``."""

from __future__ import annotations

import time

import structlog
from fastapi import APIRouter, Depends, HTTPException, Request

from x0tta6bl4.api.enroll import (
    Challenge,
    ChallengeRequest,
    EnrollKey,
    RenewRequest,
    RenewResult,
    SealedMessage,
    SealedRequest,
    b64,
)
from x0tta6bl4.control import enroll as logic
from x0tta6bl4.control.context import ctx
from x0tta6bl4.control.nodeauth import NodeCaller, authenticated_node
from x0tta6bl4.observability import tracing
from x0tta6bl4.observability.metrics import record_enrollment, record_renewal

router = APIRouter(prefix="/v1", tags=["enrollment"])
log = structlog.get_logger("x0tta6bl4.control.enroll")


def _http(exc: logic.Refused) -> HTTPException:
    return HTTPException(exc.status, detail=exc.detail)


@router.get(
    "/enroll/key",
    response_model=EnrollKey,
    summary="The enrollment key nodes seal to (no auth; public)",
)
async def enroll_key(request: Request) -> EnrollKey:
    """No authentication: a public key. A node checks its SHA-256 against its token."""
    c = ctx(request)
    return EnrollKey(
        public_key=b64(c.ca.enroll_key.public_key().to_bytes()),
        fingerprint=c.ca.enroll_fingerprint,
    )


@router.post(
    "/enroll/challenge",
    response_model=Challenge,
    summary="Enrollment step 1: a KEM challenge to the node's static key (no auth)",
)
async def enroll_challenge(body: ChallengeRequest, request: Request) -> Challenge:
    """No authentication, and no state: the ticket carries the secret, sealed to the
    service itself, for 120 s."""
    try:
        return logic.challenge(ctx(request).ca.enroll_key, body, time.time())
    except logic.Refused as exc:
        raise _http(exc) from None


@router.post(
    "/enroll",
    response_model=SealedMessage,
    summary="Enrollment step 2: the sealed request; the answer is sealed to the node "
    "(no API key: the join token inside authorizes)",
)
async def enroll(body: SealedRequest, request: Request) -> SealedMessage:
    """No API key: the join token inside the sealed request is the credential. Nothing
    is written unless the CSR, the ticket, the KEM proof and the token all check out."""
    c = ctx(request)
    # The node's name is inside the sealed request: known only once it opened.
    with tracing.span("x0t.enroll") as sp:
        try:
            done = await logic.enroll(c, body, str(request.base_url).rstrip("/"), time.time())
        except logic.Refused as exc:
            record_enrollment(False)
            log.info("enroll_refused", status=exc.status, detail=exc.detail)
            sp.set_attribute("x0t.refused", exc.status)
            raise _http(exc) from None
        record_enrollment(True)
        sp.set_attribute("x0t.node", done.name)
        sp.set_attribute("x0t.serial", done.serial)
    log.info("node_enrolled", node=done.name, serial=done.serial, token=done.token_id)
    return done.sealed


@router.post(
    "/renew",
    response_model=RenewResult,
    summary="Renew the calling node's certificate (node-signed)",
)
async def renew(
    body: RenewRequest,
    request: Request,
    caller: NodeCaller = Depends(authenticated_node),  # noqa: B008
) -> RenewResult:
    """Node-signed (its current, unrevoked, unexpired certificate). The CSR names the
    caller and exactly its current tags; it may carry new keys. The old certificate
    stays valid until it expires."""
    with tracing.span("x0t.renew", node=caller.name, previous_serial=caller.serial) as sp:
        try:
            result = await logic.renew(ctx(request), caller, body, time.time())
        except logic.Refused as exc:
            record_renewal(False)
            sp.set_attribute("x0t.refused", exc.status)
            raise _http(exc) from None
    record_renewal(True)
    log.info("node_renewed", node=caller.name, previous=caller.serial)
    return result
