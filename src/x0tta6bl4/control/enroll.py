"""Enrollment and renewal, the service's side (the exchange is described in ``api.enroll``).

Nothing here writes on unauthenticated input: a challenge is stateless (its ticket is the
shared secret sealed to the service itself, so any replica can check it), and an
enrollment writes only after the envelope opened, the CSR verified (possession of the
signing key), the ticket and the KEM proof verified (possession of the static key) and the
token checked out. The write is one transaction whose first statement takes one use of the
token with a conditional UPDATE: two enrollments racing for the last use cannot both win,
on PostgreSQL (row lock, re-checked condition) or SQLite (one writer).
"""

from __future__ import annotations

import fnmatch
import functools
import hmac
import os
import struct
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.ext.asyncio import AsyncSession

from x0tta6bl4.api.enroll import (
    NONCE_SIZE,
    PROOF_SIZE,
    RESPONSE_KEY_SIZE,
    TICKET_LIFETIME_S,
    Challenge,
    ChallengeRequest,
    EnrollInner,
    EnrollResult,
    EnvelopeError,
    JoinTokenText,
    Peer,
    RenewRequest,
    RenewResult,
    SealedMessage,
    SealedRequest,
    TokenFormatError,
    b64,
    b64decode,
    kem_proof,
    open_request,
    renew_after,
    seal_response,
)
from x0tta6bl4.control.audit import record
from x0tta6bl4.control.ca import KeyInUse
from x0tta6bl4.control.context import ControlContext
from x0tta6bl4.control.models import Certificate, JoinToken, Node, PolicyVersion
from x0tta6bl4.control.nodeauth import NodeCaller
from x0tta6bl4.crypto.hybrid import PUBLIC_KEY_SIZE, HybridPrivateKey, HybridPublicKey
from x0tta6bl4.crypto.kdf import hkdf, sha256
from x0tta6bl4.errors import CertificateRequestError, IdentityError, InvalidKey, X0tError
from x0tta6bl4.identity.cert import NodeCertificate, format_time, node_spiffe_id
from x0tta6bl4.identity.inventory import signing_key_fingerprint, static_key_fingerprint
from x0tta6bl4.identity.overlay import ipv4_holder, node_overlay_ipv4
from x0tta6bl4.identity.request import CertificateRequest

TICKET_AAD = b"x0tta6bl4 enroll ticket v1"
_TICKET_PLAIN = struct.Struct(">32s32sQ")  # shared secret, SHA-256(static key), expiry
TICKET_SIZE = NONCE_SIZE + _TICKET_PLAIN.size + 16
# Active nodes read to find bootstrap peers (those with endpoints, most recently seen).
_PEER_CANDIDATES = 200


class Refused(X0tError):
    """A request the service refuses: ``status`` and ``detail`` become the HTTP answer."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


# --- challenge tickets --------------------------------------------------------------------


@functools.lru_cache(maxsize=4)
def ticket_key(enroll_key: HybridPrivateKey) -> bytes:
    """The AES-256-GCM key of tickets, derived from the enrollment key: every replica
    holding that key derives the same one, so tickets need no shared state."""
    return hkdf(enroll_key.to_pkcs8_pem(), salt=b"x0tta6bl4 enroll ticket key", info=TICKET_AAD)


def make_ticket(key: bytes, shared_secret: bytes, static_key: bytes, expires_at: int) -> bytes:
    nonce = os.urandom(NONCE_SIZE)
    plain = _TICKET_PLAIN.pack(shared_secret, sha256(static_key), expires_at)
    return nonce + AESGCM(key).encrypt(nonce, plain, TICKET_AAD)


def open_ticket(key: bytes, ticket: bytes, now: float) -> tuple[bytes, bytes]:
    """``(shared secret, SHA-256 of the static key)`` of a current ticket; Refused else."""
    if len(ticket) != TICKET_SIZE:
        raise Refused(400, "ticket: not a ticket from this control plane (wrong length)")
    try:
        plain = AESGCM(key).decrypt(ticket[:NONCE_SIZE], ticket[NONCE_SIZE:], TICKET_AAD)
    except InvalidTag:
        raise Refused(400, "ticket: not issued by this control plane, or altered") from None
    shared, static_fp, expires_at = _TICKET_PLAIN.unpack(plain)
    if now > expires_at:
        raise Refused(400, f"ticket: expired at {format_time(expires_at)}; ask for a new challenge")
    return shared, static_fp


def challenge(enroll_key: HybridPrivateKey, req: ChallengeRequest, now: float) -> Challenge:
    """Step 1: a secret encapsulated to the node's static key, and its ticket."""
    try:
        raw = b64decode(req.static_key, "static_key", PUBLIC_KEY_SIZE)
    except EnvelopeError as exc:
        raise Refused(400, str(exc)) from None
    try:
        ciphertext, shared = HybridPublicKey.from_bytes(raw).encapsulate()
    except InvalidKey as exc:
        raise Refused(400, f"static_key: {exc}") from None
    expires_at = int(now) + TICKET_LIFETIME_S
    ticket = make_ticket(ticket_key(enroll_key), shared, raw, expires_at)
    return Challenge(ciphertext=b64(ciphertext), ticket=b64(ticket), expires_at=expires_at)


# --- enrollment ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Enrolled:
    name: str
    serial: str
    token_id: str
    sealed: SealedMessage


def _check_possession(
    inner: EnrollInner, enroll_key: HybridPrivateKey, now: float
) -> CertificateRequest:
    """The CSR (signing key) and the KEM proof (static key), or Refused."""
    try:
        csr = CertificateRequest.from_pem(inner.csr.encode())
    except CertificateRequestError as exc:
        raise Refused(400, f"csr: {exc}") from None
    try:
        ticket = b64decode(inner.ticket, "ticket")
        proof = b64decode(inner.proof, "proof", PROOF_SIZE)
    except EnvelopeError as exc:
        raise Refused(400, str(exc)) from None
    shared, static_fp = open_ticket(ticket_key(enroll_key), ticket, now)
    if not hmac.compare_digest(static_fp, sha256(csr.static_key.to_bytes())):
        raise Refused(403, "ticket: issued for another static key than the one in the csr")
    if not hmac.compare_digest(proof, kem_proof(shared, csr.der)):
        raise Refused(403, "proof: does not prove possession of the csr's static key")
    return csr


def check_token(row: JoinToken | None, token: JoinTokenText, now: float) -> JoinToken:
    """The token's row if it may enroll one more node now; Refused (403) saying why not."""
    if row is None or not hmac.compare_digest(row.secret_hash, token.secret_hash):
        raise Refused(403, "token: unknown token or wrong secret")
    if row.revoked_at is not None:
        raise Refused(403, f"token: {row.id} was revoked")
    if now >= row.expires_at:
        raise Refused(403, f"token: {row.id} expired at {format_time(row.expires_at)}")
    if row.uses >= row.max_uses:
        raise Refused(403, f"token: {row.id} is used up ({row.uses} of {row.max_uses} uses)")
    return row


def check_grant(row: JoinToken, csr: CertificateRequest) -> None:
    """The name matches the token's pattern and every requested tag is granted."""
    if not fnmatch.fnmatchcase(csr.name, row.name_pattern):
        raise Refused(
            403,
            f"csr: node name {csr.name!r} does not match the token's name pattern "
            f"{row.name_pattern!r}",
        )
    extra = sorted(set(csr.tags) - set(row.tags))
    if extra:
        raise Refused(
            403,
            f"csr: tags not granted by the token: {', '.join(extra)} "
            f"(it grants {', '.join(sorted(row.tags)) or 'none'})",
        )


async def _claim_name(
    s: AsyncSession, c: ControlContext, csr: CertificateRequest, now: float
) -> None:
    """Create the node, or take it again for the same keys; Refused (409) when the name
    belongs to another key or was revoked."""
    name = csr.name
    node = (await s.execute(select(Node).where(Node.name == name))).scalar_one_or_none()
    if node is None:
        await _check_overlay_ipv4(s, c.ca.ca.trust_domain, name)
        s.add(
            Node(
                name=name,
                spiffe_id=node_spiffe_id(c.ca.ca.trust_domain, name),
                tags=list(csr.tags),
                status="active",
                created_at=now,
                current_serial=None,
                endpoints=[],
                last_seen=None,
            )
        )
        try:
            await s.flush()
        except IntegrityError:
            raise Refused(
                409, f"csr: node name {name!r} was just enrolled by another node"
            ) from None
        return
    if node.status != "active":
        raise Refused(409, f"csr: node name {name!r} was revoked; choose another name")
    if node.current_serial is not None:
        current = (
            await s.execute(select(Certificate).where(Certificate.serial == node.current_serial))
        ).scalar_one_or_none()
        same_keys = current is not None and (
            current.static_key_fp == static_key_fingerprint(csr.static_key).hex()
            and current.signing_key_fp == signing_key_fingerprint(csr.signing_key).hex()
        )
        if not same_keys:
            raise Refused(
                409,
                f"csr: node name {name!r} is already enrolled with other keys (revoke that "
                "node first, or choose another name)",
            )
    # The same node enrolling again (it kept its keys, lost its certificate).
    node.tags = list(csr.tags)


async def _check_overlay_ipv4(s: AsyncSession, trust_domain: str, name: str) -> None:
    """Refused (409) when a new name's overlay IPv4 address (22 bits derived from it) is
    an active node's already: nodes find each other's addresses by computing them, so
    two names behind one address would both be unreachable over IPv4."""
    active = (await s.execute(select(Node.name).where(Node.status == "active"))).scalars()
    other = ipv4_holder(trust_domain, name, active)
    if other is not None:
        raise Refused(
            409,
            f"csr: node name {name!r} would share the overlay IPv4 address "
            f"{node_overlay_ipv4(trust_domain, name)} with node {other!r}; choose another name",
        )


async def _bootstrap_peers(s: AsyncSession, name: str) -> list[Peer]:
    rows = (
        await s.execute(
            select(Node.name, Node.endpoints)
            .where(Node.status == "active", Node.name != name)
            .order_by(Node.last_seen.desc().nulls_last(), Node.name)
            .limit(_PEER_CANDIDATES)
        )
    ).all()
    peers: list[Peer] = []
    for peer_name, endpoints in rows:
        first = next((e for e in endpoints or [] if isinstance(e, str) and 0 < len(e) <= 64), None)
        if first is not None:
            peers.append(Peer(name=peer_name, address=first))
            if len(peers) == 16:
                break
    return peers


async def _current_policy(s: AsyncSession) -> bytes | None:
    return (
        await s.execute(
            select(PolicyVersion.signed).order_by(PolicyVersion.version.desc()).limit(1)
        )
    ).scalar_one_or_none()


async def enroll(
    c: ControlContext, message: SealedRequest, control_url: str, now: float
) -> Enrolled:
    """Step 2: open, verify, then take a use of the token and issue in one transaction."""
    enroll_key = c.ca.enroll_key
    try:
        inner = open_request(enroll_key, message)
    except EnvelopeError as exc:
        raise Refused(400, str(exc)) from None
    try:
        token = JoinTokenText.parse(inner.token)
    except TokenFormatError as exc:
        raise Refused(400, f"token: {exc}") from None
    try:
        response_key = b64decode(inner.response_key, "response_key", RESPONSE_KEY_SIZE)
    except EnvelopeError as exc:
        raise Refused(400, str(exc)) from None
    csr = _check_possession(inner, enroll_key, now)
    if token.fingerprint != c.ca.enroll_fingerprint:
        raise Refused(403, "token: issued by another control plane (enrollment key fingerprint)")

    async with c.db.session() as s:
        row = (
            await s.execute(select(JoinToken).where(JoinToken.id == token.token_id))
        ).scalar_one_or_none()
    row = check_token(row, token, now)
    check_grant(row, csr)

    try:
        async with c.db.session() as s:
            # First statement of the transaction: on SQLite it takes the write lock before
            # anything is read, so racing enrollments queue instead of failing.
            taken = await s.execute(
                update(JoinToken)
                .where(
                    JoinToken.id == row.id,
                    JoinToken.uses < JoinToken.max_uses,
                    JoinToken.revoked_at.is_(None),
                    JoinToken.expires_at > now,
                )
                .values(uses=JoinToken.uses + 1)
            )
            if taken.rowcount != 1:  # type: ignore[attr-defined]
                raise Refused(403, f"token: {row.id} is used up (or was revoked meanwhile)")
            await _claim_name(s, c, csr, now)
            cert = await _issue(s, c, csr.name, csr, now)
            serial = format(cert.serial, "x")
            record(
                s,
                f"token:{row.id}",
                "node.enroll",
                csr.name,
                {"serial": serial, "tags": list(csr.tags), "token": row.id},
            )
            crl = await c.ca.current_revocation_list(s)
            policy = await _current_policy(s)
            peers = await _bootstrap_peers(s, csr.name)
            try:
                await s.commit()
            except IntegrityError:
                raise Refused(
                    409, f"csr: node name {csr.name!r} was just enrolled by another node"
                ) from None
    except OperationalError as exc:
        raise Refused(503, f"database busy or unreachable; retry ({type(exc).__name__})") from None
    result = EnrollResult(
        certificate=cert.pem.decode(),
        bundle=c.ca.bundle_pem.decode(),
        crl=crl.to_pem().decode(),
        policy=None if policy is None else b64(policy),
        peers=peers,
        renew_after=renew_after(cert.not_before, cert.not_after),
        control_url=control_url[:2048],
    )
    return Enrolled(csr.name, serial, row.id, seal_response(response_key, result))


# --- renewal ------------------------------------------------------------------------------


async def renew(
    c: ControlContext, caller: NodeCaller, req: RenewRequest, now: float
) -> RenewResult:
    """A new certificate for the calling node (same or new keys, same name and tags)."""
    try:
        csr = CertificateRequest.from_pem(req.csr.encode())
    except CertificateRequestError as exc:
        raise Refused(400, f"csr: {exc}") from None
    if csr.name != caller.name:
        raise Refused(403, f"csr: asks for node name {csr.name!r}; the caller is {caller.name!r}")
    try:
        async with c.db.session() as s:
            # Takes the node's row (PostgreSQL row lock) and proves it is still active in
            # this transaction, so a revocation cannot slip between the check and the issue.
            active = await s.execute(
                update(Node)
                .where(Node.name == caller.name, Node.status == "active")
                .values(status="active")
            )
            if active.rowcount != 1:  # type: ignore[attr-defined]
                raise Refused(401, f"node {caller.name} is revoked")
            tags = (await s.execute(select(Node.tags).where(Node.name == caller.name))).scalar_one()
            current = tuple(sorted(set(tags or [])))
            if csr.tags != current:
                raise Refused(
                    403,
                    f"csr: tags must be exactly the node's current tags "
                    f"[{', '.join(current)}]; it asks for [{', '.join(csr.tags)}]",
                )
            cert = await _issue(s, c, caller.name, csr, now)
            record(
                s,
                f"node:{caller.name}",
                "node.renew",
                caller.name,
                {"serial": format(cert.serial, "x"), "previous": caller.serial},
            )
            crl = await c.ca.current_revocation_list(s)
            await s.commit()
    except OperationalError as exc:
        raise Refused(503, f"database busy or unreachable; retry ({type(exc).__name__})") from None
    return RenewResult(
        certificate=cert.pem.decode(),
        bundle=c.ca.bundle_pem.decode(),
        crl=crl.to_pem().decode(),
        renew_after=renew_after(cert.not_before, cert.not_after),
    )


async def _issue(
    s: AsyncSession, c: ControlContext, name: str, csr: CertificateRequest, now: float
) -> NodeCertificate:
    """The CA's certificate for ``csr`` in the caller's transaction; a key certified to
    another node is a 409, anything else the CA refuses a 400, both naming the CSR."""
    try:
        return await c.ca.issue(
            s,
            name,
            csr.tags,
            csr.static_key,
            csr.signing_key,
            now=now,
            lifetime_s=c.settings.cert_lifetime_s,
        )
    except KeyInUse as exc:
        raise Refused(409, f"csr: {exc}") from None
    except IdentityError as exc:
        raise Refused(400, f"csr: {exc}") from None
