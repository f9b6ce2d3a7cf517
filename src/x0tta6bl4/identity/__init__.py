"""Mesh identity: CA, node X.509-SVIDs, trust bundle, revocation list, verification."""

from __future__ import annotations

from typing import TYPE_CHECKING

from x0tta6bl4.lazyimport import lazy_attributes

if TYPE_CHECKING:
    from x0tta6bl4.identity.bundle import TrustBundle as TrustBundle
    from x0tta6bl4.identity.ca import CertificateAuthority as CertificateAuthority
    from x0tta6bl4.identity.cert import DEFAULT_TRUST_DOMAIN as DEFAULT_TRUST_DOMAIN
    from x0tta6bl4.identity.cert import NODE_CERT_VALIDITY as NODE_CERT_VALIDITY
    from x0tta6bl4.identity.cert import OID_STATIC_KEY as OID_STATIC_KEY
    from x0tta6bl4.identity.cert import OID_TAGS as OID_TAGS
    from x0tta6bl4.identity.cert import NodeCertificate as NodeCertificate
    from x0tta6bl4.identity.crl import NO_REVOCATION_LIST as NO_REVOCATION_LIST
    from x0tta6bl4.identity.crl import REVOCATION_REASONS as REVOCATION_REASONS
    from x0tta6bl4.identity.crl import NoRevocationList as NoRevocationList
    from x0tta6bl4.identity.crl import Revocation as Revocation
    from x0tta6bl4.identity.crl import RevocationList as RevocationList
    from x0tta6bl4.identity.crl import RevokedEntry as RevokedEntry
    from x0tta6bl4.identity.crl import accept_newer as accept_newer
    from x0tta6bl4.identity.inventory import IssuedRecord as IssuedRecord
    from x0tta6bl4.identity.request import CertificateRequest as CertificateRequest
    from x0tta6bl4.identity.store import NodeCredentials as NodeCredentials
    from x0tta6bl4.identity.types import CertVerifier as CertVerifier
    from x0tta6bl4.identity.types import VerifiedIdentity as VerifiedIdentity
    from x0tta6bl4.identity.verify import CachedVerifier as CachedVerifier
    from x0tta6bl4.identity.verify import make_verifier as make_verifier
    from x0tta6bl4.identity.verify import verify_node_certificate as verify_node_certificate
    from x0tta6bl4.identity.verify import verify_renewal as verify_renewal

# Loaded on first use (PEP 562): the agent needs certificates and verification, never the
# CA's signing, its inventory or certificate requests (about 0.8 MB resident).
_WHERE: dict[str, str] = {
    "CachedVerifier": ".verify",
    "CertVerifier": ".types",
    "CertificateAuthority": ".ca",
    "CertificateRequest": ".request",
    "DEFAULT_TRUST_DOMAIN": ".cert",
    "IssuedRecord": ".inventory",
    "NODE_CERT_VALIDITY": ".cert",
    "NO_REVOCATION_LIST": ".crl",
    "NoRevocationList": ".crl",
    "NodeCertificate": ".cert",
    "NodeCredentials": ".store",
    "OID_STATIC_KEY": ".cert",
    "OID_TAGS": ".cert",
    "REVOCATION_REASONS": ".crl",
    "Revocation": ".crl",
    "RevocationList": ".crl",
    "RevokedEntry": ".crl",
    "TrustBundle": ".bundle",
    "VerifiedIdentity": ".types",
    "accept_newer": ".crl",
    "make_verifier": ".verify",
    "verify_node_certificate": ".verify",
    "verify_renewal": ".verify",
}


__getattr__ = lazy_attributes(__name__, _WHERE)

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
