"""Node certificates: X.509-SVIDs that also carry the node's static hybrid key and tags.

Profile (SPIFFE X.509-SVID, leaf):

- exactly one URI SAN, ``spiffe://<trust-domain>/node/<name>``;
- basicConstraints cA=false, critical; keyUsage digitalSignature only, critical;
  extendedKeyUsage serverAuth + clientAuth;
- subject public key: the node's ML-DSA-65 key; signed by the mesh CA with ML-DSA-65;
- short validity (``NODE_CERT_VALIDITY``), random 128-bit serial.

Private extensions live under an X.667 UUID arc (``2.25.<uuid>``), which needs no
registration and cannot collide with anyone else's:

- ``OID_STATIC_KEY`` = ``2.25.10799729208064088546863442900356040871.1.1``:
  ``OCTET STRING (SIZE (1216))`` = X25519 public (32) || ML-KEM-768 public (1184), i.e.
  ``HybridPublicKey.to_bytes()``. Non-critical so generic X.509 tools still parse the
  certificate; our verifier requires it.
- ``OID_TAGS`` = ``2.25.10799729208064088546863442900356040871.1.2``:
  ``SEQUENCE { tags SEQUENCE SIZE (0..32) OF UTF8String (SIZE (3..96)) }``, each tag
  ``key:value``, sorted and unique (one canonical encoding per tag set). Non-critical.

Everything that reads certificates raises ``CertificateRejected`` (MALFORMED or NOT_SVID),
never a raw ``ValueError``.
"""

from __future__ import annotations

import datetime
import re
from collections.abc import Iterable
from typing import Annotated

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat import asn1
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import mldsa
from cryptography.utils import CryptographyDeprecationWarning
from cryptography.x509.oid import ExtendedKeyUsageOID, ExtensionOID, PublicKeyAlgorithmOID

from x0tta6bl4.crypto.hybrid import PUBLIC_KEY_SIZE as STATIC_KEY_SIZE
from x0tta6bl4.crypto.hybrid import HybridPublicKey
from x0tta6bl4.crypto.kdf import sha256
from x0tta6bl4.crypto.sign import VerifyKey
from x0tta6bl4.errors import CertificateRejected, IdentityError, InvalidKey, RejectReason

# Our private OID arc: 2.25 + a UUID (ITU-T X.667), see the module docstring.
OID_ARC = "2.25.10799729208064088546863442900356040871"
OID_STATIC_KEY = x509.ObjectIdentifier(f"{OID_ARC}.1.1")
OID_TAGS = x509.ObjectIdentifier(f"{OID_ARC}.1.2")

DEFAULT_TRUST_DOMAIN = "x0tta6bl4.mesh"
NODE_CERT_VALIDITY = datetime.timedelta(hours=24)
# Issued certificates start this long before "now", so a peer whose clock runs a little
# behind does not see a brand-new certificate as not yet valid.
CLOCK_SKEW_ALLOWANCE = datetime.timedelta(minutes=5)

# A node certificate is about 7 KB (ML-DSA-65 key 1952 + signature 3309 + static key 1216);
# anything much larger is refused before parsing.
MAX_CERT_DER_SIZE = 16 * 1024
MAX_CERT_PEM_SIZE = 2 * MAX_CERT_DER_SIZE
MAX_TAGS = 32
MAX_TAG_KEY = 32
MAX_TAG_VALUE = 63
MAX_TAG_LENGTH = MAX_TAG_KEY + 1 + MAX_TAG_VALUE  # 96

_NAME_RE = re.compile(r"[a-z0-9][a-z0-9.-]{0,62}")
_TAG_RE = re.compile(rf"[a-z][a-z0-9_.-]{{0,{MAX_TAG_KEY - 1}}}:[a-z0-9_.-]{{1,{MAX_TAG_VALUE}}}")
# SPIFFE ID: lowercase trust domain; path segments of letters, digits, '.', '-', '_'.
_TRUST_DOMAIN_RE = re.compile(r"[a-z0-9._-]{1,255}")
_SPIFFE_RE = re.compile(r"spiffe://([a-z0-9._-]{1,255})((?:/[A-Za-z0-9._-]+)*)")
MAX_SPIFFE_ID = 2048

_KNOWN_EXTENSIONS = {
    ExtensionOID.BASIC_CONSTRAINTS,
    ExtensionOID.KEY_USAGE,
    ExtensionOID.EXTENDED_KEY_USAGE,
    ExtensionOID.SUBJECT_ALTERNATIVE_NAME,
    ExtensionOID.SUBJECT_KEY_IDENTIFIER,
    ExtensionOID.AUTHORITY_KEY_IDENTIFIER,
    OID_STATIC_KEY,
    OID_TAGS,
}

# Exceptions `cryptography` raises on bad certificate contents.
# (Several fields are decoded lazily, on first access, so any access can raise these.)
X509_PARSE_ERRORS = (
    ValueError,
    TypeError,
    x509.DuplicateExtension,
    x509.UnsupportedGeneralNameType,
    x509.InvalidVersion,
    # public_key() of a key algorithm OpenSSL does not know.
    UnsupportedAlgorithm,
    # Only raised when warnings are errors (python -W error); then it means malformed too.
    CryptographyDeprecationWarning,
)


def _malformed(detail: str) -> CertificateRejected:
    return CertificateRejected(RejectReason.MALFORMED, detail)


def _not_svid(detail: str) -> CertificateRejected:
    return CertificateRejected(RejectReason.NOT_SVID, detail)


# --- names, tags, SPIFFE IDs ------------------------------------------------------------


def validate_name(name: str) -> str:
    """A node name: lowercase letters, digits, '-', '.', 1-63 chars, starting with a letter
    or digit (so '.', '..' and option-like '-x' are impossible)."""
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
        raise IdentityError(
            f"invalid node name {name!r}: use 1-63 lowercase letters, digits, '-' or '.', "
            "starting with a letter or digit"
        )
    return name


def validate_trust_domain(trust_domain: str) -> str:
    if not isinstance(trust_domain, str) or not _TRUST_DOMAIN_RE.fullmatch(trust_domain):
        raise IdentityError(
            f"invalid trust domain {trust_domain!r}: use lowercase letters, digits, '.', '-', '_'"
        )
    return trust_domain


def validate_tag(tag: str) -> str:
    """``key:value``; key starts with a letter; both lowercase ``[a-z0-9_.-]``."""
    if not isinstance(tag, str) or not _TAG_RE.fullmatch(tag):
        raise IdentityError(
            f"invalid tag {tag!r}: expected key:value, key 1-{MAX_TAG_KEY} and value "
            f"1-{MAX_TAG_VALUE} of lowercase letters, digits, '_', '.', '-' "
            "(key starting with a letter)"
        )
    return tag


def normalize_tags(tags: Iterable[str]) -> tuple[str, ...]:
    """Validate, de-duplicate and sort: the canonical form stored in certificates."""
    if isinstance(tags, str):
        raise IdentityError("tags must be a collection of strings, not one string")
    out = tuple(sorted({validate_tag(t) for t in tags}))
    if len(out) > MAX_TAGS:
        raise IdentityError(f"at most {MAX_TAGS} tags, got {len(out)}")
    return out


def node_spiffe_id(trust_domain: str, name: str) -> str:
    return f"spiffe://{validate_trust_domain(trust_domain)}/node/{validate_name(name)}"


def parse_spiffe_id(uri: str) -> tuple[str, str]:
    """Split a SPIFFE ID into ``(trust_domain, path)``; raises NOT_SVID if it is not one."""
    if len(uri) > MAX_SPIFFE_ID:
        raise _not_svid("SPIFFE ID longer than 2048 bytes")
    m = _SPIFFE_RE.fullmatch(uri)
    if m is None:
        raise _not_svid(f"URI SAN {uri[:100]!r} is not a valid SPIFFE ID")
    path = m.group(2)
    if any(seg in (".", "..") for seg in path.split("/")):
        raise _not_svid("SPIFFE ID path has a '.' or '..' segment")
    return m.group(1), path


# --- extension encodings ----------------------------------------------------------------


@asn1.sequence
class _TagsAsn1:
    tags: Annotated[
        list[Annotated[str, asn1.Size(3, MAX_TAG_LENGTH)]],
        asn1.Size(0, MAX_TAGS),
    ]


def encode_tags(tags: Iterable[str]) -> bytes:
    return asn1.encode_der(_TagsAsn1(tags=list(normalize_tags(tags))))


def decode_tags(data: bytes) -> tuple[str, ...]:
    """Strict inverse of :func:`encode_tags`; raises CertificateRejected(MALFORMED)."""
    if len(data) > 8 + MAX_TAGS * (4 + MAX_TAG_LENGTH):
        raise _malformed("tags extension is too large")
    try:
        tags = tuple(asn1.decode_der(_TagsAsn1, data).tags)
    except ValueError as exc:
        raise _malformed(f"tags extension is not valid DER: {exc}") from None
    for t in tags:
        if not _TAG_RE.fullmatch(t):
            raise _malformed(f"tags extension holds an invalid tag {t[:100]!r}")
    if list(tags) != sorted(set(tags)):
        raise _malformed("tags extension is not sorted and unique")
    return tags


def encode_static_key(key: HybridPublicKey) -> bytes:
    return asn1.encode_der(key.to_bytes())


def decode_static_key(data: bytes) -> HybridPublicKey:
    if len(data) > STATIC_KEY_SIZE + 8:
        raise _malformed("static-key extension is too large")
    try:
        raw = asn1.decode_der(bytes, data)
        return HybridPublicKey.from_bytes(raw)
    except (ValueError, InvalidKey) as exc:
        raise _malformed(f"static-key extension is invalid: {exc}") from None


# --- time helpers -----------------------------------------------------------------------


def to_datetime(t: float) -> datetime.datetime:
    # X.509 times have one-second resolution; round down so "now" is never in the future.
    return datetime.datetime.fromtimestamp(int(t), tz=datetime.UTC)


def format_time(t: float) -> str:
    return datetime.datetime.fromtimestamp(t, tz=datetime.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def load_certificate(data: bytes) -> x509.Certificate:
    """One certificate from PEM or DER, size-bounded; raises MALFORMED on anything else."""
    if data.lstrip().startswith(b"-----BEGIN"):
        if len(data) > MAX_CERT_PEM_SIZE:
            raise _malformed(f"PEM larger than {MAX_CERT_PEM_SIZE} bytes")
        try:
            certs = x509.load_pem_x509_certificates(data)
        except X509_PARSE_ERRORS as exc:
            raise _malformed(f"not a PEM certificate: {exc}") from None
        if len(certs) != 1:
            raise _malformed(f"expected one PEM certificate, found {len(certs)}")
        return certs[0]
    if len(data) > MAX_CERT_DER_SIZE:
        raise _malformed(f"DER larger than {MAX_CERT_DER_SIZE} bytes")
    try:
        return x509.load_der_x509_certificate(data)
    except X509_PARSE_ERRORS as exc:
        raise _malformed(f"not a DER certificate: {exc}") from None


def certificate_extensions(cert: x509.Certificate) -> x509.Extensions:
    try:
        return cert.extensions
    except X509_PARSE_ERRORS as exc:
        raise _malformed(f"unparsable extensions: {exc}") from None


def uri_sans(exts: x509.Extensions) -> list[str]:
    try:
        san = exts.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return san.get_values_for_type(x509.UniformResourceIdentifier)


# --- the certificate --------------------------------------------------------------------


class NodeCertificate:
    """A parsed certificate that has the node X.509-SVID profile.

    Construction checks the profile only (NOT_SVID / MALFORMED); trust domain, issuer,
    signature, validity and revocation are checked by ``verify_node_certificate``.
    """

    __slots__ = (
        "_cert",
        "_der",
        "_fingerprint",
        "_issuer",
        "_name",
        "_not_after",
        "_not_before",
        "_signing_key",
        "_spiffe_id",
        "_static_key",
        "_tags",
        "_trust_domain",
    )

    def __init__(self, cert: x509.Certificate) -> None:
        self._cert = cert
        self._der = cert.public_bytes(serialization.Encoding.DER)
        self._fingerprint = sha256(self._der)
        try:
            # Touch every lazily decoded field now, so later access cannot raise.
            version = cert.version
            self._issuer = cert.issuer
            _ = cert.subject
            serial = cert.serial_number
            self._not_before = cert.not_valid_before_utc.timestamp()
            self._not_after = cert.not_valid_after_utc.timestamp()
            _ = cert.signature_algorithm_oid
            key_oid = cert.public_key_algorithm_oid
        except X509_PARSE_ERRORS as exc:
            raise _malformed(f"unparsable certificate field: {exc}") from None
        if serial <= 0:
            raise _malformed("serial number is not positive")
        if version is not x509.Version.v3:
            raise _not_svid("not an X.509 v3 certificate")
        exts = certificate_extensions(cert)

        for ext in exts:
            if ext.critical and ext.oid not in _KNOWN_EXTENSIONS:
                raise _not_svid(f"unknown critical extension {ext.oid.dotted_string}")

        uris = uri_sans(exts)
        if len(uris) != 1:
            raise _not_svid(f"an X.509-SVID has exactly one URI SAN, found {len(uris)}")
        self._spiffe_id = uris[0]
        self._trust_domain, path = parse_spiffe_id(uris[0])
        parts = path.split("/")
        if len(parts) != 3 or parts[1] != "node" or not _NAME_RE.fullmatch(parts[2]):
            raise _not_svid(f"SPIFFE ID path {path[:100]!r} is not /node/<name>")
        self._name = parts[2]

        _check_leaf_constraints(exts)

        if key_oid != PublicKeyAlgorithmOID.ML_DSA_65:
            raise _not_svid("subject key is not ML-DSA-65")
        try:
            pub = cert.public_key()
        except X509_PARSE_ERRORS as exc:
            raise _malformed(f"unparsable subject key: {exc}") from None
        if not isinstance(pub, mldsa.MLDSA65PublicKey):  # pragma: no cover - OID checked above
            raise _not_svid("subject key is not ML-DSA-65")
        self._signing_key = VerifyKey(pub)

        try:
            static = exts.get_extension_for_oid(OID_STATIC_KEY).value
        except x509.ExtensionNotFound:
            raise _not_svid("missing static-key extension") from None
        if not isinstance(static, x509.UnrecognizedExtension):  # pragma: no cover - private OID
            raise _malformed("static-key extension has an unexpected type")
        self._static_key = decode_static_key(static.value)

        try:
            tags_ext = exts.get_extension_for_oid(OID_TAGS).value
        except x509.ExtensionNotFound:
            self._tags: tuple[str, ...] = ()
        else:
            if not isinstance(tags_ext, x509.UnrecognizedExtension):  # pragma: no cover
                raise _malformed("tags extension has an unexpected type")
            self._tags = decode_tags(tags_ext.value)

    @classmethod
    def from_der(cls, data: bytes) -> NodeCertificate:
        if not isinstance(data, bytes | bytearray | memoryview):
            raise _malformed("certificate must be bytes")
        data = bytes(data)
        if len(data) > MAX_CERT_DER_SIZE:
            raise _malformed(f"DER larger than {MAX_CERT_DER_SIZE} bytes")
        try:
            cert = x509.load_der_x509_certificate(data)
        except X509_PARSE_ERRORS as exc:
            raise _malformed(f"not a DER certificate: {exc}") from None
        return cls(cert)

    @classmethod
    def from_pem(cls, data: bytes) -> NodeCertificate:
        if not data.lstrip().startswith(b"-----BEGIN"):
            raise _malformed("not a PEM certificate")
        return cls(load_certificate(data))

    # --- fields ---

    @property
    def certificate(self) -> x509.Certificate:
        return self._cert

    @property
    def der(self) -> bytes:
        return self._der

    @property
    def pem(self) -> bytes:
        return self._cert.public_bytes(serialization.Encoding.PEM)

    @property
    def fingerprint(self) -> bytes:
        """SHA-256 of the DER encoding."""
        return self._fingerprint

    @property
    def serial(self) -> int:
        return self._cert.serial_number

    @property
    def spiffe_id(self) -> str:
        return self._spiffe_id

    @property
    def trust_domain(self) -> str:
        return self._trust_domain

    @property
    def name(self) -> str:
        return self._name

    @property
    def tags(self) -> tuple[str, ...]:
        return self._tags

    @property
    def static_key(self) -> HybridPublicKey:
        return self._static_key

    @property
    def signing_key(self) -> VerifyKey:
        return self._signing_key

    @property
    def issuer(self) -> x509.Name:
        return self._issuer

    @property
    def not_before(self) -> float:
        return self._not_before

    @property
    def not_after(self) -> float:
        return self._not_after

    def __eq__(self, other: object) -> bool:
        return isinstance(other, NodeCertificate) and other._der == self._der

    def __hash__(self) -> int:
        return hash(self._fingerprint)

    def __repr__(self) -> str:
        return f"NodeCertificate({self._spiffe_id}, serial={self.serial:#x})"


def _check_leaf_constraints(exts: x509.Extensions) -> None:
    try:
        bc = exts.get_extension_for_class(x509.BasicConstraints)
    except x509.ExtensionNotFound:
        raise _not_svid("missing basicConstraints") from None
    if bc.value.ca:
        raise _not_svid("basicConstraints cA=true: a CA certificate is not a node SVID")
    if not bc.critical:
        raise _not_svid("basicConstraints is not critical")

    try:
        ku_ext = exts.get_extension_for_class(x509.KeyUsage)
    except x509.ExtensionNotFound:
        raise _not_svid("missing keyUsage") from None
    if not ku_ext.critical:
        raise _not_svid("keyUsage is not critical")
    ku = ku_ext.value
    if not ku.digital_signature:
        raise _not_svid("keyUsage lacks digitalSignature")
    if ku.key_cert_sign or ku.crl_sign or ku.content_commitment or ku.data_encipherment:
        raise _not_svid("keyUsage allows more than a leaf SVID may")
    # SPIFFE allows keyEncipherment/keyAgreement on leaves; encipherOnly/decipherOnly only
    # qualify keyAgreement and make no sense for our keys.
    if ku.key_agreement and (ku.encipher_only or ku.decipher_only):
        raise _not_svid("keyUsage sets encipherOnly/decipherOnly")

    try:
        eku = exts.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        return  # SPIFFE: SHOULD be present; absent means unrestricted
    if ExtendedKeyUsageOID.SERVER_AUTH not in eku or ExtendedKeyUsageOID.CLIENT_AUTH not in eku:
        raise _not_svid("extendedKeyUsage lacks serverAuth or clientAuth")


def _algorithm_name(oid: x509.ObjectIdentifier) -> str:
    # ML-DSA-65 has the same OID as a key algorithm and as a signature algorithm.
    if oid == PublicKeyAlgorithmOID.ML_DSA_65:
        return "ML-DSA-65"
    return oid.dotted_string


def describe_certificate(data: bytes) -> list[tuple[str, str]]:
    """Human-readable fields of a node or CA certificate (for ``x0t cert show``)."""
    cert = load_certificate(data)
    der = cert.public_bytes(serialization.Encoding.DER)
    exts = certificate_extensions(cert)
    try:
        is_ca = exts.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        is_ca = False
    uris = uri_sans(exts)
    rows: list[tuple[str, str]] = [
        ("kind", "CA certificate" if is_ca else "node certificate"),
        ("SPIFFE ID", ", ".join(uris) if uris else "(none)"),
        ("subject", cert.subject.rfc4514_string()),
        ("issuer", cert.issuer.rfc4514_string()),
        ("serial", f"{cert.serial_number:#x}"),
        ("not before", format_time(cert.not_valid_before_utc.timestamp())),
        ("not after", format_time(cert.not_valid_after_utc.timestamp())),
    ]
    algo = _algorithm_name(cert.public_key_algorithm_oid)
    try:
        pub_der = cert.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        rows.append(("subject key", f"{algo}, SPKI sha256 {sha256(pub_der).hex()}"))
    except X509_PARSE_ERRORS:
        rows.append(("subject key", f"{algo} (unreadable)"))
    rows.append(("signature", _algorithm_name(cert.signature_algorithm_oid)))
    if not is_ca:
        try:
            node = NodeCertificate(cert)
        except CertificateRejected as exc:
            rows.append(("profile", f"not a node SVID: {exc}"))
        else:
            rows.append(("name", node.name))
            rows.append(("tags", ", ".join(node.tags) if node.tags else "(none)"))
            rows.append(
                (
                    "static key",
                    "X25519 + ML-KEM-768, sha256 " + sha256(node.static_key.to_bytes()).hex(),
                )
            )
    rows.append(("fingerprint", f"sha256 {sha256(der).hex()}"))
    rows.append(("size", f"{len(der)} bytes DER"))
    return rows
