"""Trust bundle: the CA certificates a node accepts for one trust domain.

More than one CA certificate is allowed so that a CA key can be rotated: certificates
from the old and the new key both verify while both are in the bundle.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import PublicKeyAlgorithmOID

from x0tta6bl4.atomicfile import atomic_write
from x0tta6bl4.errors import CertificateRejected, IdentityError
from x0tta6bl4.identity.cert import (
    MAX_CERT_PEM_SIZE,
    X509_PARSE_ERRORS,
    certificate_extensions,
    parse_spiffe_id,
    uri_sans,
    validate_trust_domain,
)

MAX_BUNDLE_CERTS = 16


def check_ca_certificate(cert: x509.Certificate, trust_domain: str | None) -> str | None:
    """Check that ``cert`` is an ML-DSA-65 SVID signing certificate; return the trust domain
    named by its URI SAN (``None`` if it has none). Raises IdentityError."""
    try:
        # Touch the lazily decoded fields used below (and by TrustBundle) now.
        _ = (cert.subject, cert.issuer, cert.not_valid_before_utc, cert.not_valid_after_utc)
        key_algorithm = cert.public_key_algorithm_oid
    except X509_PARSE_ERRORS as exc:
        raise IdentityError(f"unusable CA certificate: unparsable field: {exc}") from None
    try:
        exts = certificate_extensions(cert)
        uris = uri_sans(exts)
        domains = {parse_spiffe_id(u) for u in uris}
    except CertificateRejected as exc:
        raise IdentityError(f"unusable CA certificate: {exc}") from None
    try:
        bc = exts.get_extension_for_class(x509.BasicConstraints).value
        ku = exts.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound as exc:
        raise IdentityError(f"CA certificate lacks {exc.oid.dotted_string}") from None
    if not bc.ca or not ku.key_cert_sign:
        raise IdentityError("not a CA certificate (needs cA=true and keyCertSign)")
    if key_algorithm != PublicKeyAlgorithmOID.ML_DSA_65:
        raise IdentityError("CA key is not ML-DSA-65")
    if len(domains) > 1:
        raise IdentityError("CA certificate names more than one SPIFFE ID")
    if not domains:
        return None
    ((td, path),) = domains
    # SPIFFE: a signing certificate's SPIFFE ID has no path.
    if path:
        raise IdentityError(f"CA SPIFFE ID has a path {path!r}")
    if trust_domain is not None and td != trust_domain:
        raise IdentityError(f"CA certificate is for trust domain {td!r}, not {trust_domain!r}")
    return td


class TrustBundle:
    __slots__ = ("_cas", "_trust_domain")

    def __init__(self, trust_domain: str, ca_certs: Iterable[x509.Certificate]) -> None:
        self._trust_domain = validate_trust_domain(trust_domain)
        cas = tuple(dict.fromkeys(ca_certs))  # drop duplicates, keep order
        if not cas:
            raise IdentityError("a trust bundle needs at least one CA certificate")
        if len(cas) > MAX_BUNDLE_CERTS:
            raise IdentityError(f"at most {MAX_BUNDLE_CERTS} CA certificates per bundle")
        for ca in cas:
            check_ca_certificate(ca, trust_domain)
        self._cas = cas

    @property
    def trust_domain(self) -> str:
        return self._trust_domain

    @property
    def ca_certs(self) -> tuple[x509.Certificate, ...]:
        return self._cas

    def issuers_for(self, name: x509.Name) -> tuple[x509.Certificate, ...]:
        """The CA certificates whose subject is ``name`` (candidates for a signature check)."""
        return tuple(ca for ca in self._cas if ca.subject == name)

    def to_pem(self) -> bytes:
        return b"".join(ca.public_bytes(serialization.Encoding.PEM) for ca in self._cas)

    @classmethod
    def from_pem(cls, data: bytes, trust_domain: str | None = None) -> TrustBundle:
        """Parse PEM CA certificates. The trust domain comes from the CAs' SPIFFE IDs when
        not given; when given, every CA that names one must agree."""
        if len(data) > MAX_BUNDLE_CERTS * MAX_CERT_PEM_SIZE:
            raise IdentityError("trust bundle file is too large")
        try:
            cas = x509.load_pem_x509_certificates(data)
        except X509_PARSE_ERRORS as exc:
            # Not only ValueError: e.g. x509.InvalidVersion for a version field out of range.
            raise IdentityError(f"unreadable trust bundle: {exc}") from None
        domains = {d for ca in cas if (d := check_ca_certificate(ca, trust_domain)) is not None}
        if trust_domain is None:
            if len(domains) != 1:
                raise IdentityError(
                    "cannot tell the trust domain from the bundle; pass it explicitly"
                )
            (found,) = domains
            return cls(found, cas)
        return cls(trust_domain, cas)

    def save(self, path: str | os.PathLike[str]) -> None:
        atomic_write(path, self.to_pem(), mode=0o644)

    @classmethod
    def load(cls, path: str | os.PathLike[str], trust_domain: str | None = None) -> TrustBundle:
        return cls.from_pem(Path(path).read_bytes(), trust_domain)

    def __repr__(self) -> str:
        return f"TrustBundle({self._trust_domain!r}, {len(self._cas)} CA)"
