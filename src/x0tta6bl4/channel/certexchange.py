"""Certificates: verifying the ones peers offer (with the verifier, and against the newest
revocation list the runtime gave the endpoint), caching them by fingerprint, and the
CERT_REQUEST / CERT exchange by which an initiator fetches a peer's certificate.

``CERT_REQUEST`` and ``CERT`` carry a *check*, a MAC keyed by the trust domain's name:
it keeps strangers to the mesh from using us as a certificate mirror, not a secret.
A CERT_REQUEST without a valid mac2 is answered with a COOKIE (sealed under a key also
derived from the trust domain, with the request's check as associated data), so a CERT,
about 7 KB, only goes to an address that proved it receives there. It is kept a while
(as an answer) to resend the fragments the initiator NACKs.
"""

from __future__ import annotations

import hmac as _hmac
from collections import OrderedDict
from typing import Protocol

from x0tta6bl4.channel import constants as C
from x0tta6bl4.channel.cookie import (
    ZERO_MAC,
    CookieGenerator,
    cert_check_key,
    certreq_check_key,
    certreq_cookie_key,
)
from x0tta6bl4.channel.drops import DropReason, Stats, Tally
from x0tta6bl4.channel.wire import (
    Cert,
    CertRequest,
    cert_check_scope,
    cert_request_check_scope,
    cert_request_mac2_scope,
    decode_cert_request,
    encode,
)
from x0tta6bl4.crypto.aead import Aead
from x0tta6bl4.crypto.kdf import mac16, sha256
from x0tta6bl4.errors import CertificateRejected, DecodeError, RejectReason
from x0tta6bl4.identity.types import CertVerifier, VerifiedIdentity
from x0tta6bl4.sansio import Action, Addr, Event, RevocationCheck, Send


class Emit(Protocol):
    """``DataPath.emit``: send a message, fragmented if it must be, kept for NACKs."""

    def __call__(
        self,
        now: float,
        addr: Addr,
        message: bytes,
        *,
        message_id: int | None = None,
        answer: bool = False,
        request_id: int | None = None,
    ) -> list[Action]: ...


class CertExchange:
    """Our certificate store and both sides of the certificate exchange."""

    __slots__ = (
        "_cert_der",
        "_cert_key",
        "_certreq_key",
        "_cookie_gen",
        "_emit",
        "_known",
        "_rejected",
        "_revocations",
        "_stats",
        "_trust_domain",
        "_verifier",
        "_wall_offset",
        "request_cookie_seal",
    )

    def __init__(
        self,
        cert_der: bytes,
        verifier: CertVerifier,
        *,
        trust_domain: str,
        wall_offset: float,
        cookie_gen: CookieGenerator,
        emit: Emit,
        stats: Stats,
    ) -> None:
        self._cert_der = cert_der  # ours, sent in CERT
        self._emit = emit  # sends a message, fragmented if it must be
        self._verifier = verifier
        self._trust_domain = trust_domain
        self._wall_offset = wall_offset
        self._cookie_gen = cookie_gen
        self._stats = stats
        self._certreq_key = certreq_check_key(trust_domain)
        self._cert_key = cert_check_key(trust_domain)
        # Seals a COOKIE that answers a CERT_REQUEST (and opens one at the initiator).
        self.request_cookie_seal = Aead(certreq_cookie_key(trust_domain))
        self._known: OrderedDict[bytes, bytes] = OrderedDict()  # fingerprint -> DER
        # Certificates that failed verification, by SHA-256 of their DER, until when.
        self._rejected: OrderedDict[bytes, tuple[RejectReason, float]] = OrderedDict()
        # The newest revocation list the runtime gave us (RevocationListUpdated).
        self._revocations: RevocationCheck | None = None

    # --- our own certificate --------------------------------------------------------------

    @property
    def own(self) -> bytes:
        """Our certificate (DER), the one CERT answers carry."""
        return self._cert_der

    def set_own(self, cert_der: bytes) -> None:
        """Answer CERT_REQUESTs with ``cert_der`` from now on (a renewed certificate)."""
        self._cert_der = cert_der

    # --- revocation ---------------------------------------------------------------------

    @property
    def revocations(self) -> RevocationCheck | None:
        return self._revocations

    def take_revocations(self, crl: RevocationCheck) -> bool:
        """Hold ``crl`` unless it is older than the list held (versions only go up, so a
        late or replayed list cannot un-revoke anyone); whether it was taken."""
        held = self._revocations
        if held is not None and crl.version < held.version:
            return False
        self._revocations = crl
        # A newer list may change a verdict cached under the old one (a stale or missing
        # list refused everyone); a revocation it adds is caught by verify() itself.
        self._rejected.clear()
        return True

    # --- verification -----------------------------------------------------------------

    def verify(self, der: bytes, now: float) -> VerifiedIdentity:
        """Verify ``der`` at wall-clock ``now + wall_offset``, in our trust domain only,
        and not on the revocation list we hold. Raises :class:`CertificateRejected`."""
        ident = self._verifier(der, now + self._wall_offset)
        if ident.trust_domain != self._trust_domain:
            raise CertificateRejected(
                RejectReason.WRONG_TRUST_DOMAIN,
                f"{ident.spiffe_id} is not in {self._trust_domain!r}",
            )
        # The verifier checks its own list (the runtime's); checking the one we were given
        # as well makes RevocationListUpdated complete on its own: a peer whose session it
        # dropped cannot come back, whatever list the verifier reads.
        held = self._revocations
        if held is not None and held.is_revoked(ident.serial):
            raise CertificateRejected(
                RejectReason.REVOKED,
                f"serial {ident.serial:#x} revoked (revocation list version {held.version})",
            )
        return ident

    def verify_offered(self, der: bytes, now: float) -> VerifiedIdentity:
        """Verify a certificate someone sent us, remembering failures for a while: a
        replayed bad certificate costs a hash, not an ML-DSA verification."""
        key = sha256(der)
        hit = self._rejected.get(key)
        if hit is not None:
            if now < hit[1]:
                raise CertificateRejected(hit[0], "rejected recently (cached)")
            del self._rejected[key]
        try:
            return self.verify(der, now)
        except CertificateRejected as exc:
            self._rejected[key] = (exc.reason, now + C.REJECTED_CERT_TTL)
            while len(self._rejected) > C.MAX_REJECTED_CERTS:
                self._rejected.popitem(last=False)
            raise

    # --- the store of peers' certificates ---------------------------------------------

    def lookup(self, fingerprint: bytes) -> bytes | None:
        return self._known.get(fingerprint)

    def touch(self, fingerprint: bytes) -> None:
        """``fingerprint`` was used: keep it longest."""
        self._known.move_to_end(fingerprint)

    def remember(self, ident: VerifiedIdentity, der: bytes) -> list[Action]:
        """Cache a verified certificate; an event the first time."""
        fp = ident.fingerprint
        known = fp in self._known
        self._known[fp] = der
        self._known.move_to_end(fp)
        while len(self._known) > C.MAX_CERT_CACHE:
            self._known.popitem(last=False)
        if known:
            return []
        return [Event("cert_cached", {"peer": ident.name, "size": len(der)})]

    # --- initiator: asking, and checking the answer ----------------------------------

    def request(self, request_id: int, cookie: bytes | None) -> tuple[bytes, bytes]:
        """A CERT_REQUEST with ``request_id`` (mac2 from ``cookie`` if we hold one) and
        its check, which a COOKIE answering it uses as associated data."""
        mac2 = (
            mac16(cookie, cert_request_mac2_scope(request_id)) if cookie is not None else ZERO_MAC
        )
        check = self._request_check(request_id, mac2)
        return encode(CertRequest(request_id, mac2, check)), check

    def authentic(self, msg: Cert) -> bool:
        """Whether a CERT carries our trust domain's check."""
        return _hmac.compare_digest(self._cert_check(msg.request_id, msg.cert_der), msg.check)

    # --- the checks, made and verified here only ---------------------------------------

    def _request_check(self, request_id: int, mac2: bytes) -> bytes:
        return mac16(self._certreq_key, cert_request_check_scope(request_id, mac2))

    def _cert_check(self, request_id: int, cert_der: bytes) -> bytes:
        return mac16(self._cert_key, cert_check_scope(request_id, cert_der))

    # --- responder: answering a CERT_REQUEST --------------------------------------------

    def on_request(self, now: float, addr: Addr, data: bytes) -> list[Action]:
        """Answer a CERT_REQUEST: a COOKIE without a mac2, our certificate with a valid one."""
        try:
            req = decode_cert_request(data)
        except DecodeError:
            return self._stats.drop(DropReason.MALFORMED, addr)
        if not _hmac.compare_digest(self._request_check(req.request_id, req.mac2), req.check):
            return self._stats.drop(DropReason.BAD_CHECK, addr)
        if req.mac2 == ZERO_MAC:
            self._stats.count(Tally.COOKIE_SENT)
            reply = self._cookie_gen.reply(
                now, addr, req.request_id, self.request_cookie_seal, req.check
            )
            return [Send(addr, reply)]
        scope = cert_request_mac2_scope(req.request_id)
        if not self._cookie_gen.mac2_valid(now, addr, scope, req.mac2):
            return self._stats.drop(DropReason.BAD_MAC2, addr)
        self._stats.count(Tally.CERT_SENT)
        check = self._cert_check(req.request_id, self._cert_der)
        return self._emit(
            now, addr, encode(Cert(req.request_id, self._cert_der, check)), answer=True
        )
