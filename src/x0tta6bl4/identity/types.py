"""What a verified certificate tells us about a node."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from x0tta6bl4.crypto.hybrid import HybridPublicKey
from x0tta6bl4.crypto.sign import VerifyKey


@dataclass(frozen=True, slots=True)
class VerifiedIdentity:
    """A node certificate that passed every check at some time ``now``."""

    spiffe_id: str  # spiffe://<trust-domain>/node/<name>
    trust_domain: str
    name: str
    tags: tuple[str, ...]
    static_key: HybridPublicKey  # X25519 + ML-KEM-768, used by the handshake
    signing_key: VerifyKey  # ML-DSA-65, the certificate's subject key
    serial: int
    fingerprint: bytes  # SHA-256 of the certificate's DER
    not_before: float  # POSIX seconds
    not_after: float  # POSIX seconds


# Given a certificate's DER and the wall-clock time (POSIX seconds), return the verified
# identity or raise x0tta6bl4.errors.CertificateRejected.
CertVerifier = Callable[[bytes, float], VerifiedIdentity]
