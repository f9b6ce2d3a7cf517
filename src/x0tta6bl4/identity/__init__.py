"""Mesh identity: CA, node X.509-SVIDs, trust bundle, revocation list, verification."""

from __future__ import annotations

from x0tta6bl4.identity.bundle import TrustBundle
from x0tta6bl4.identity.ca import CertificateAuthority
from x0tta6bl4.identity.cert import (
    DEFAULT_TRUST_DOMAIN,
    NODE_CERT_VALIDITY,
    OID_STATIC_KEY,
    OID_TAGS,
    NodeCertificate,
)
from x0tta6bl4.identity.crl import (
    NO_REVOCATION_LIST,
    REVOCATION_REASONS,
    NoRevocationList,
    Revocation,
    RevocationList,
    RevokedEntry,
    accept_newer,
)
from x0tta6bl4.identity.inventory import IssuedRecord
from x0tta6bl4.identity.request import CertificateRequest
from x0tta6bl4.identity.store import NodeCredentials
from x0tta6bl4.identity.types import CertVerifier, VerifiedIdentity
from x0tta6bl4.identity.verify import (
    CachedVerifier,
    make_verifier,
    verify_node_certificate,
    verify_renewal,
)

__all__ = [
    "DEFAULT_TRUST_DOMAIN",
    "NODE_CERT_VALIDITY",
    "NO_REVOCATION_LIST",
    "OID_STATIC_KEY",
    "OID_TAGS",
    "REVOCATION_REASONS",
    "CachedVerifier",
    "CertVerifier",
    "CertificateAuthority",
    "CertificateRequest",
    "IssuedRecord",
    "NoRevocationList",
    "NodeCertificate",
    "NodeCredentials",
    "Revocation",
    "RevocationList",
    "RevokedEntry",
    "TrustBundle",
    "VerifiedIdentity",
    "accept_newer",
    "make_verifier",
    "verify_node_certificate",
    "verify_renewal",
]
