"""Certificate requests: the node generates its keys and sends only public keys to the CA.

A PKCS#10 request (RFC 2986) signed with the node's ML-DSA-65 key:

- subject: exactly one common name, the node name;
- subject public key: the node's ML-DSA-65 key (becomes the certificate's subject key);
- requested extensions: the static hybrid key (``OID_STATIC_KEY``, required) and the tags
  (``OID_TAGS``), encoded exactly as in the certificate (see ``identity.cert``);
- nothing else: no other extension or attribute, since the CA sets every other field.

The signature proves possession of the ML-DSA-65 signing key. It proves nothing about the
X25519 + ML-KEM-768 static key (a KEM key cannot sign); a node naming someone else's static
key is stopped by the CA's inventory (one key, one name), and could not decapsulate anyway.
Network enrolment with a KEM proof of possession comes with the control plane.

Everything that reads a request raises ``CertificateRequestError``, never a raw
``ValueError``.
"""

from __future__ import annotations

from collections.abc import Iterable

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import mldsa
from cryptography.x509.oid import NameOID, SignatureAlgorithmOID

from x0tta6bl4.crypto.hybrid import HybridPublicKey
from x0tta6bl4.crypto.kdf import sha256
from x0tta6bl4.crypto.sign import SigningKey, VerifyKey
from x0tta6bl4.errors import CertificateRejected, CertificateRequestError, IdentityError
from x0tta6bl4.identity.cert import (
    OID_STATIC_KEY,
    OID_TAGS,
    X509_PARSE_ERRORS,
    decode_static_key,
    decode_tags,
    encode_static_key,
    encode_tags,
    normalize_tags,
    validate_name,
)

# A request is about 5.4 KB (ML-DSA-65 key 1952 + signature 3309 + static key 1216).
MAX_REQUEST_DER_SIZE = 16 * 1024
MAX_REQUEST_PEM_SIZE = 2 * MAX_REQUEST_DER_SIZE
# PKCS#9 extensionRequest: the attribute that carries the requested extensions.
_EXTENSION_REQUEST = x509.ObjectIdentifier("1.2.840.113549.1.9.14")
_PEM_BEGIN = b"-----BEGIN"


def _bad(detail: str) -> CertificateRequestError:
    return CertificateRequestError(f"certificate request refused: {detail}")


class CertificateRequest:
    """A parsed request whose signature verified and whose profile is ours."""

    __slots__ = ("_csr", "_der", "_name", "_signing_key", "_static_key", "_tags")

    def __init__(self, csr: x509.CertificateSigningRequest) -> None:
        try:
            # Touch every lazily decoded field now, so later access cannot raise.
            algorithm = csr.signature_algorithm_oid
            # An unknown key algorithm raises UnsupportedAlgorithm, one of X509_PARSE_ERRORS.
            pub = csr.public_key()
            subject = csr.subject
            exts = csr.extensions
            attributes = list(csr.attributes)
            self._der = csr.public_bytes(serialization.Encoding.DER)
        except X509_PARSE_ERRORS as exc:
            raise _bad(f"unparsable field: {exc}") from None
        if algorithm != SignatureAlgorithmOID.ML_DSA_65 or not isinstance(
            pub, mldsa.MLDSA65PublicKey
        ):
            raise _bad("the request must be an ML-DSA-65 key signed with itself (ML-DSA-65)")
        try:
            valid = csr.is_signature_valid
        except X509_PARSE_ERRORS as exc:
            raise _bad(f"unverifiable signature: {exc}") from None
        if not valid:
            raise _bad("signature does not verify: no proof of possession of the signing key")

        attrs = list(subject)
        if len(subject.rdns) != 1 or len(attrs) != 1 or attrs[0].oid != NameOID.COMMON_NAME:
            raise _bad("the subject must be exactly one common name (the node name)")
        name = attrs[0].value
        try:
            self._name = validate_name(name if isinstance(name, str) else repr(name))
        except IdentityError as exc:
            raise _bad(str(exc)) from None

        for attr in attributes:
            if attr.oid != _EXTENSION_REQUEST:
                raise _bad(
                    f"request carries attribute {attr.oid.dotted_string}; only "
                    "extensionRequest is allowed"
                )
        static: bytes | None = None
        tags: tuple[str, ...] = ()
        for ext in exts:
            value = ext.value
            if ext.oid not in (OID_STATIC_KEY, OID_TAGS) or not isinstance(
                value, x509.UnrecognizedExtension
            ):
                raise _bad(
                    f"request carries extension {ext.oid.dotted_string}; the CA sets every "
                    "field but the static key and the tags itself"
                )
            try:
                if ext.oid == OID_STATIC_KEY:
                    static = value.value
                    self._static_key = decode_static_key(static)
                else:
                    tags = decode_tags(value.value)
            except CertificateRejected as exc:
                raise _bad(exc.detail) from None
        if static is None:
            raise _bad("no static-key extension (the node's X25519 + ML-KEM-768 key)")
        self._tags = tags
        self._signing_key = VerifyKey(pub)
        self._csr = csr

    # --- building and reading ---

    @classmethod
    def build(
        cls,
        name: str,
        tags: Iterable[str],
        static_public: HybridPublicKey,
        signing_key: SigningKey,
    ) -> CertificateRequest:
        """A request for ``name`` and ``tags``, signed by the node's own ``signing_key``."""
        validate_name(name)
        tag_der = encode_tags(normalize_tags(tags))
        if not isinstance(static_public, HybridPublicKey) or not isinstance(
            signing_key, SigningKey
        ):
            raise IdentityError("build() needs a HybridPublicKey and a SigningKey")
        csr = (
            x509.CertificateSigningRequestBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .add_extension(
                x509.UnrecognizedExtension(OID_STATIC_KEY, encode_static_key(static_public)),
                critical=False,
            )
            .add_extension(x509.UnrecognizedExtension(OID_TAGS, tag_der), critical=False)
            .sign(signing_key.cryptography_key, None)
        )
        return cls(csr)

    @classmethod
    def from_der(cls, data: bytes) -> CertificateRequest:
        if not isinstance(data, bytes | bytearray | memoryview):
            raise _bad("a request must be bytes")
        if len(data) > MAX_REQUEST_DER_SIZE:
            raise _bad(f"DER larger than {MAX_REQUEST_DER_SIZE} bytes")
        try:
            csr = x509.load_der_x509_csr(bytes(data))
        except X509_PARSE_ERRORS as exc:
            raise _bad(f"not a DER certificate request: {exc}") from None
        return cls(csr)

    @classmethod
    def from_pem(cls, data: bytes) -> CertificateRequest:
        if not isinstance(data, bytes | bytearray | memoryview):
            raise _bad("a request must be bytes")
        data = bytes(data)
        if len(data) > MAX_REQUEST_PEM_SIZE:
            raise _bad(f"PEM larger than {MAX_REQUEST_PEM_SIZE} bytes")
        # The loader reads the first block only; a second one must not hide behind it.
        if data.count(_PEM_BEGIN) != 1:
            raise _bad(f"expected one PEM block, found {data.count(_PEM_BEGIN)}")
        try:
            csr = x509.load_pem_x509_csr(data)
        except X509_PARSE_ERRORS as exc:
            raise _bad(f"not a PEM certificate request: {exc}") from None
        return cls(csr)

    @classmethod
    def load(cls, data: bytes) -> CertificateRequest:
        """PEM or DER, told apart by the PEM header."""
        if isinstance(data, bytes | bytearray) and bytes(data).lstrip().startswith(_PEM_BEGIN):
            return cls.from_pem(data)
        return cls.from_der(data)

    # --- fields ---

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
    def der(self) -> bytes:
        return self._der

    @property
    def pem(self) -> bytes:
        return self._csr.public_bytes(serialization.Encoding.PEM)

    @property
    def fingerprint(self) -> bytes:
        """SHA-256 of the DER encoding."""
        return sha256(self._der)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, CertificateRequest) and other._der == self._der

    def __hash__(self) -> int:
        return hash(self._der)

    def __repr__(self) -> str:
        return f"CertificateRequest({self._name!r}, tags={list(self._tags)})"
