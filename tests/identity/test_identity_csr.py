"""Certificate requests: the node generates its keys and sends a PKCS#10 request signed
with its ML-DSA-65 key; the CA checks it and issues."""

from __future__ import annotations

from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import AttributeOID, NameOID

from tests.identity.helpers import NOW, ed25519_key
from x0tta6bl4.crypto.hybrid import HybridPrivateKey
from x0tta6bl4.crypto.sign import SigningKey
from x0tta6bl4.errors import CertificateRequestError, IdentityError, KeyAlreadyCertified
from x0tta6bl4.identity import (
    NO_REVOCATION_LIST,
    CertificateAuthority,
    NodeCredentials,
    verify_node_certificate,
)
from x0tta6bl4.identity.cert import OID_ARC, OID_STATIC_KEY, OID_TAGS, encode_static_key
from x0tta6bl4.identity.request import MAX_REQUEST_DER_SIZE, CertificateRequest


@pytest.fixture
def keys() -> tuple[HybridPrivateKey, SigningKey]:
    return HybridPrivateKey.generate(), SigningKey.generate()


def _request(keys: tuple[HybridPrivateKey, SigningKey], **kw: Any) -> CertificateRequest:
    static, signing = keys
    return CertificateRequest.build(
        kw.get("name", "edge-1"),
        kw.get("tags", ["site:eu-1", "role:edge"]),
        static.public_key(),
        signing,
    )


def _raw(
    signing_key: Any,
    *,
    subject: list[x509.NameAttribute] | None = None,
    static: bytes | None = b"default",
    tags: bytes | None = None,
    extra: list[tuple[x509.ExtensionType, bool]] = [],  # noqa: B006 - never mutated
    attributes: list[tuple[x509.ObjectIdentifier, bytes]] = [],  # noqa: B006
) -> bytes:
    """A request built outside CertificateRequest.build, with any one rule broken."""
    if subject is None:
        subject = [x509.NameAttribute(NameOID.COMMON_NAME, "edge-1")]
    b = x509.CertificateSigningRequestBuilder().subject_name(x509.Name(subject))
    if static == b"default":
        static = encode_static_key(HybridPrivateKey.generate().public_key())
    if static is not None:
        b = b.add_extension(x509.UnrecognizedExtension(OID_STATIC_KEY, static), critical=False)
    if tags is not None:
        b = b.add_extension(x509.UnrecognizedExtension(OID_TAGS, tags), critical=False)
    for ext, critical in extra:
        b = b.add_extension(ext, critical=critical)
    for oid, value in attributes:
        b = b.add_attribute(oid, value)
    return b.sign(signing_key, None).public_bytes(serialization.Encoding.DER)


# --- building and reading -----------------------------------------------------------------


def test_request_round_trip(keys: tuple[HybridPrivateKey, SigningKey]) -> None:
    req = _request(keys)
    assert req.name == "edge-1"
    assert req.tags == ("role:edge", "site:eu-1")  # canonical: sorted, unique
    assert req.static_key == keys[0].public_key()
    assert req.signing_key == keys[1].public_key()
    assert req.pem.startswith(b"-----BEGIN CERTIFICATE REQUEST-----")
    for again in (
        CertificateRequest.from_pem(req.pem),
        CertificateRequest.from_der(req.der),
        CertificateRequest.load(req.pem),
        CertificateRequest.load(req.der),
    ):
        assert again == req and hash(again) == hash(req)
    assert req != object()
    assert "edge-1" in repr(req) and len(req.fingerprint) == 32
    # A standard PKCS#10 request, ML-DSA-65 signed, verifiable by generic tools.
    raw = x509.load_pem_x509_csr(req.pem)
    assert raw.is_signature_valid
    assert raw.signature_algorithm_oid == x509.SignatureAlgorithmOID.ML_DSA_65


def test_build_validates_input(keys: tuple[HybridPrivateKey, SigningKey]) -> None:
    with pytest.raises(IdentityError, match="node name"):
        _request(keys, name="Bad")
    with pytest.raises(IdentityError, match="tag"):
        _request(keys, tags=["nocolon"])
    with pytest.raises(IdentityError, match="HybridPublicKey"):
        CertificateRequest.build("a", [], keys[1], keys[1])  # type: ignore[arg-type]


# --- issuing from a request ---------------------------------------------------------------


def test_ca_issues_for_the_nodes_own_keys(
    ca: CertificateAuthority, keys: tuple[HybridPrivateKey, SigningKey]
) -> None:
    req = _request(keys)
    cert = ca.issue_request(req, name="edge-1", tags=["role:edge", "site:eu-1"], now=NOW)
    assert (cert.name, cert.tags) == ("edge-1", ("role:edge", "site:eu-1"))
    # The node pairs the certificate with the private keys that never left it.
    creds = NodeCredentials(cert, *keys)
    ident = verify_node_certificate(creds.cert.der, ca.bundle(), NO_REVOCATION_LIST, NOW)
    assert ident.static_key == keys[0].public_key()
    assert [r.name for r in ca.issued()] == ["edge-1"]


def test_operator_must_approve_name_and_tags(
    ca: CertificateAuthority, keys: tuple[HybridPrivateKey, SigningKey]
) -> None:
    req = _request(keys)
    with pytest.raises(IdentityError, match="request is for 'edge-1', not 'edge-2'"):
        ca.issue_request(req, name="edge-2", tags=req.tags, now=NOW)
    # Tags drive access policy: a node cannot grant itself one the operator did not state.
    with pytest.raises(IdentityError, match="asks for tags role:edge, site:eu-1"):
        ca.issue_request(req, name="edge-1", tags=["site:eu-1"], now=NOW)
    # Order and duplicates do not matter; the set does.
    ca.issue_request(req, name="edge-1", tags=["site:eu-1", "role:edge", "role:edge"], now=NOW)


def test_request_with_another_nodes_key_is_refused(
    ca: CertificateAuthority, keys: tuple[HybridPrivateKey, SigningKey]
) -> None:
    bob = NodeCredentials.generate_and_issue(ca, "bob", [], NOW)
    # Mallory signs her request with her own ML-DSA key but names bob's static key:
    # the CSR's signature is fine (it proves the signing key only), the inventory is not.
    req = CertificateRequest.build("mallory", [], bob.cert.static_key, keys[1])
    with pytest.raises(KeyAlreadyCertified, match="'bob'"):
        ca.issue_request(req, name="mallory", tags=[], now=NOW)


# --- proof of possession and profile -------------------------------------------------------


def test_signature_is_proof_of_possession(keys: tuple[HybridPrivateKey, SigningKey]) -> None:
    der = _request(keys).der
    flipped = bytearray(der)
    flipped[-10] ^= 0x01  # in the signature
    with pytest.raises(CertificateRequestError, match="signature"):
        CertificateRequest.from_der(bytes(flipped))
    # A changed static key (inside the signed part) breaks the signature too.
    static = keys[0].public_key().to_bytes()
    pos = der.index(static[:32])
    swapped = der[:pos] + bytes(32) + der[pos + 32 :]
    with pytest.raises(CertificateRequestError):
        CertificateRequest.from_der(swapped)


def test_must_be_ml_dsa_65() -> None:
    with pytest.raises(CertificateRequestError, match="ML-DSA-65"):
        CertificateRequest.from_der(_raw(ed25519_key()))


@pytest.mark.parametrize(
    ("overrides", "needle"),
    [
        ({"static": None}, "static-key"),
        ({"static": b"\x04\x02ab"}, "static-key"),
        ({"tags": b"\x30\x00"}, "tags"),
        ({"subject": []}, "one common name"),
        ({"subject": [x509.NameAttribute(NameOID.COMMON_NAME, "Bad Name")]}, "node name"),
        (
            {
                "subject": [
                    x509.NameAttribute(NameOID.COMMON_NAME, "edge-1"),
                    x509.NameAttribute(NameOID.ORGANIZATION_NAME, "x"),
                ]
            },
            "one common name",
        ),
        (
            {
                "extra": [
                    (
                        x509.SubjectAlternativeName(
                            [x509.UniformResourceIdentifier("spiffe://x0tta6bl4.mesh/node/a")]
                        ),
                        False,
                    )
                ]
            },
            "extension",
        ),
        ({"extra": [(x509.BasicConstraints(ca=True, path_length=None), True)]}, "extension"),
        (
            {
                "extra": [
                    (x509.UnrecognizedExtension(x509.ObjectIdentifier(f"{OID_ARC}.9"), b""), False)
                ]
            },
            "extension",
        ),
        ({"attributes": [(AttributeOID.CHALLENGE_PASSWORD, b"pw")]}, "attribute"),
    ],
)
def test_profile_is_checked(overrides: dict[str, Any], needle: str) -> None:
    der = _raw(SigningKey.generate().cryptography_key, **overrides)
    with pytest.raises(CertificateRequestError, match=needle):
        CertificateRequest.from_der(der)


@pytest.mark.parametrize("data", [b"", b"junk", b"\x30\x03\x02\x01\x01", "text"])
def test_garbage(data: bytes) -> None:
    with pytest.raises(CertificateRequestError):
        CertificateRequest.from_der(data)
    if isinstance(data, bytes):
        with pytest.raises(CertificateRequestError):
            CertificateRequest.from_pem(data)
        with pytest.raises(CertificateRequestError):
            CertificateRequest.load(data)


def test_size_limits() -> None:
    with pytest.raises(CertificateRequestError, match="larger"):
        CertificateRequest.from_der(b"\x30" * (MAX_REQUEST_DER_SIZE + 1))
    with pytest.raises(CertificateRequestError, match="larger"):
        CertificateRequest.from_pem(b"-----BEGIN" + b"A" * (2 * MAX_REQUEST_DER_SIZE + 1))


def test_two_requests_in_one_pem_are_refused(keys: tuple[HybridPrivateKey, SigningKey]) -> None:
    pem = _request(keys).pem
    # load_pem_x509_csr reads the first block only; a second one must not hide behind it.
    with pytest.raises(CertificateRequestError, match="one PEM"):
        CertificateRequest.from_pem(pem + pem)
