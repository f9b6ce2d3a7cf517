"""The one place a node certificate is verified.

Checks run in this order; the first failure raises ``CertificateRejected(reason, detail)``:

1. MALFORMED           not DER, too large, unparsable extensions or extension contents
2. NOT_SVID            not our X.509-SVID leaf profile (see ``identity.cert``)
3. WRONG_TRUST_DOMAIN  the SPIFFE ID's trust domain is not the bundle's
4. UNKNOWN_CA          no CA in the bundle has the certificate's issuer name
5. BAD_SIGNATURE       a CA has that name, but none of their keys signed it
6. NOT_YET_VALID / EXPIRED  at ``now``, for the certificate and for the CA that signed it
7. REVOCATION_LIST_MISSING  neither a list nor ``NO_REVOCATION_LIST`` (e.g. ``None``)
8. REVOKED             the serial is on the revocation list
9. REVOCATION_LIST_STALE  ``now`` is past the list's nextUpdate plus ``crl_grace``

A revocation is final, so a stale list still proves one (8 before 9); what a stale list
cannot prove is that a certificate is *not* revoked.

Steps 1-5 depend only on the bytes and the bundle, so ``make_verifier`` caches their result
by certificate fingerprint; steps 6-9 depend on ``now`` and the current list and are
re-run on every call, cached or not.

``verify_renewal`` decides whether a renewed certificate may replace a running node's
own: the same name, the keys the node holds, verified like a peer's, not older.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import InvalidSignature

from x0tta6bl4.crypto.hybrid import HybridPublicKey
from x0tta6bl4.crypto.kdf import sha256
from x0tta6bl4.crypto.sign import VerifyKey
from x0tta6bl4.errors import (
    CertificateRejected,
    IdentityError,
    RejectReason,
    RenewalRefusal,
    RenewalRefused,
)
from x0tta6bl4.identity.bundle import TrustBundle
from x0tta6bl4.identity.cert import NodeCertificate, format_time
from x0tta6bl4.identity.crl import NO_REVOCATION_LIST, Revocation, RevocationList
from x0tta6bl4.identity.types import VerifiedIdentity

DEFAULT_CACHE_SIZE = 4096
# Seconds a list may be used past its nextUpdate. Zero: the CA re-signs the list long before
# it goes stale (see identity.crl), so a node that needs more has lost the control plane
# for days, and should say so explicitly.
DEFAULT_CRL_GRACE = 0.0


@dataclass(frozen=True, slots=True)
class _Authenticated:
    """What steps 1-5 established; safe to reuse for the same bytes and bundle."""

    identity: VerifiedIdentity
    ca_not_before: float
    ca_not_after: float


def _authenticate(cert_der: bytes, bundle: TrustBundle) -> _Authenticated:
    cert = NodeCertificate.from_der(cert_der)
    if cert.trust_domain != bundle.trust_domain:
        raise CertificateRejected(
            RejectReason.WRONG_TRUST_DOMAIN,
            f"{cert.spiffe_id} is not in trust domain {bundle.trust_domain!r}",
        )
    cas = bundle.issuers_for(cert.issuer)
    if not cas:
        raise CertificateRejected(
            RejectReason.UNKNOWN_CA, f"issuer {cert.issuer.rfc4514_string()!r} is not trusted"
        )
    signer = _signer(cert.certificate, cas)
    if signer is None:
        raise CertificateRejected(
            RejectReason.BAD_SIGNATURE,
            f"not signed by the trusted CA named {cert.issuer.rfc4514_string()!r}",
        )
    identity = VerifiedIdentity(
        spiffe_id=cert.spiffe_id,
        trust_domain=cert.trust_domain,
        name=cert.name,
        tags=cert.tags,
        static_key=cert.static_key,
        signing_key=cert.signing_key,
        serial=cert.serial,
        fingerprint=cert.fingerprint,
        not_before=cert.not_before,
        not_after=cert.not_after,
    )
    return _Authenticated(
        identity,
        signer.not_valid_before_utc.timestamp(),
        signer.not_valid_after_utc.timestamp(),
    )


def _signer(cert: x509.Certificate, cas: tuple[x509.Certificate, ...]) -> x509.Certificate | None:
    # Several CAs may share a name during key rotation: any one of them may have signed.
    for ca in cas:
        try:
            cert.verify_directly_issued_by(ca)
        except (InvalidSignature, ValueError, TypeError):
            # ValueError/TypeError: name or signature-algorithm mismatch; a wrong signer.
            continue
        return ca
    return None


def _check_grace(crl_grace: float) -> float:
    if not crl_grace >= 0:  # also refuses NaN
        raise IdentityError(f"crl_grace must be a non-negative number of seconds, got {crl_grace}")
    return crl_grace


def _check_current(
    auth: _Authenticated, crl: Revocation, now: float, crl_grace: float
) -> VerifiedIdentity:
    ident = auth.identity
    if now < ident.not_before:
        raise CertificateRejected(
            RejectReason.NOT_YET_VALID, f"valid from {format_time(ident.not_before)}"
        )
    if now > ident.not_after:
        raise CertificateRejected(RejectReason.EXPIRED, f"expired {format_time(ident.not_after)}")
    if now < auth.ca_not_before:
        raise CertificateRejected(
            RejectReason.NOT_YET_VALID,
            f"issuing CA valid from {format_time(auth.ca_not_before)}",
        )
    if now > auth.ca_not_after:
        raise CertificateRejected(
            RejectReason.EXPIRED, f"issuing CA expired {format_time(auth.ca_not_after)}"
        )
    if crl is NO_REVOCATION_LIST:
        return ident
    if not isinstance(crl, RevocationList):
        # Typically a getter that has no list yet: fail closed, as a rejection the
        # handshake counts, rather than accept every certificate.
        raise CertificateRejected(
            RejectReason.REVOCATION_LIST_MISSING,
            f"no revocation list (got {type(crl).__name__}); pass NO_REVOCATION_LIST to "
            "verify without one",
        )
    if crl.is_revoked(ident.serial):
        raise CertificateRejected(
            RejectReason.REVOKED,
            f"serial {ident.serial:#x} revoked (revocation list version {crl.version})",
        )
    if now > crl.next_update + crl_grace:
        raise CertificateRejected(
            RejectReason.REVOCATION_LIST_STALE,
            f"revocation list version {crl.version} is stale: nextUpdate was "
            f"{format_time(crl.next_update)}" + (f" (grace {crl_grace:g} s)" if crl_grace else ""),
        )
    return ident


def verify_node_certificate(
    cert_der: bytes,
    bundle: TrustBundle,
    crl: Revocation,
    now: float,
    *,
    crl_grace: float = DEFAULT_CRL_GRACE,
) -> VerifiedIdentity:
    """Verify a node certificate at wall-clock time ``now`` (POSIX seconds).

    ``crl`` is the current revocation list, or ``NO_REVOCATION_LIST`` to skip revocation
    on purpose. A list is usable until its nextUpdate plus ``crl_grace`` seconds.
    """
    _check_grace(crl_grace)
    return _check_current(_authenticate(cert_der, bundle), crl, now, crl_grace)


class CachedVerifier:
    """A ``CertVerifier`` bound to one bundle, caching signature checks by fingerprint.

    A repeat of the same DER skips parsing and the ML-DSA signature check but still checks
    validity at ``now`` and the list returned by ``crl_getter`` at that moment (its
    revocations and its freshness). Only successes are cached; the cache is a bounded LRU.
    """

    __slots__ = (
        "_bundle",
        "_cache",
        "_crl_getter",
        "_crl_grace",
        "_lock",
        "_size",
        "hits",
        "misses",
    )

    def __init__(
        self,
        bundle: TrustBundle,
        crl_getter: Callable[[], Revocation],
        cache_size: int = DEFAULT_CACHE_SIZE,
        crl_grace: float = DEFAULT_CRL_GRACE,
    ) -> None:
        self._bundle = bundle
        self._crl_getter = crl_getter
        self._crl_grace = _check_grace(crl_grace)
        self._size = max(0, cache_size)
        self._cache: OrderedDict[bytes, _Authenticated] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    @property
    def bundle(self) -> TrustBundle:
        return self._bundle

    def __call__(self, cert_der: bytes, now: float) -> VerifiedIdentity:
        if not isinstance(cert_der, bytes):
            # Let the full path produce the typed MALFORMED error.
            return verify_node_certificate(
                cert_der, self._bundle, self._crl_getter(), now, crl_grace=self._crl_grace
            )
        key = sha256(cert_der)
        with self._lock:
            auth = self._cache.get(key)
            if auth is not None:
                self._cache.move_to_end(key)
                self.hits += 1
        if auth is None:
            auth = _authenticate(cert_der, self._bundle)
            with self._lock:
                self.misses += 1
                if self._size:
                    self._cache[key] = auth
                    while len(self._cache) > self._size:
                        self._cache.popitem(last=False)
        return _check_current(auth, self._crl_getter(), now, self._crl_grace)

    def clear(self) -> None:
        with self._lock:
            self._cache.clear()

    def __len__(self) -> int:
        return len(self._cache)


def make_verifier(
    bundle: TrustBundle,
    crl_getter: Callable[[], Revocation],
    *,
    cache_size: int = DEFAULT_CACHE_SIZE,
    crl_grace: float = DEFAULT_CRL_GRACE,
) -> CachedVerifier:
    """A ``CertVerifier`` (``(cert_der, now) -> VerifiedIdentity``) for the handshake.

    ``crl_getter`` is called on every verification, so a newly accepted revocation list
    takes effect at once, even for cached certificates. It returns the current list, or
    ``NO_REVOCATION_LIST`` to verify without one; anything else (``None``: no list yet)
    rejects every certificate.
    """
    return CachedVerifier(bundle, crl_getter, cache_size, crl_grace)


def verify_renewal(
    current: NodeCertificate,
    candidate_der: bytes,
    verify: Callable[[bytes], VerifiedIdentity],
    *,
    static_key: HybridPublicKey,
    signing_key: VerifyKey | None = None,
) -> NodeCertificate:
    """Whether ``candidate_der`` may replace ``current`` as this node's own certificate
    while it runs (renewal without key rotation). In order: it parses as a node
    certificate (``MALFORMED``), names the same SPIFFE ID (``OTHER_NAME``), certifies the
    static key the node holds (``OTHER_STATIC_KEY``) and, when ``signing_key`` is given,
    that signing key (``OTHER_SIGNING_KEY``), passes ``verify`` (a verifier bound to the
    node's bundle, revocation list and clock: ``REJECTED`` with its reason) and expires no
    earlier than ``current`` (``OLDER``: an old certificate replayed). Returns the parsed
    certificate; raises :class:`~x0tta6bl4.errors.RenewalRefused`."""
    try:
        new = NodeCertificate.from_der(candidate_der)
    except CertificateRejected as exc:
        raise RenewalRefused(RenewalRefusal.MALFORMED, exc.detail) from None
    if new.spiffe_id != current.spiffe_id:
        raise RenewalRefused(
            RenewalRefusal.OTHER_NAME,
            f"certificate is for {new.spiffe_id}, not {current.spiffe_id}",
        )
    if new.static_key != static_key:
        raise RenewalRefused(
            RenewalRefusal.OTHER_STATIC_KEY, "certificate is for another static key"
        )
    if signing_key is not None and new.signing_key != signing_key:
        raise RenewalRefused(
            RenewalRefusal.OTHER_SIGNING_KEY, "certificate is for another signing key"
        )
    try:
        verify(new.der)
    except CertificateRejected as exc:
        raise RenewalRefused(RenewalRefusal.REJECTED, exc.detail, exc.reason) from None
    if new.not_after < current.not_after:
        raise RenewalRefused(
            RenewalRefusal.OLDER,
            f"expires {format_time(new.not_after)}, before the certificate in use "
            f"({format_time(current.not_after)})",
        )
    return new
