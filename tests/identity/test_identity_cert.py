"""NodeCertificate parsing, the certificate profile, names, tags and encodings."""

from __future__ import annotations

from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tests.identity.helpers import NOW, TD, ed25519_key, self_signed_ca
from x0tta6bl4.crypto.hybrid import HybridPrivateKey
from x0tta6bl4.crypto.kdf import sha256
from x0tta6bl4.errors import CertificateRejected, IdentityError, RejectReason
from x0tta6bl4.identity import CertificateAuthority, NodeCertificate, NodeCredentials
from x0tta6bl4.identity.cert import (
    CLOCK_SKEW_ALLOWANCE,
    MAX_TAGS,
    NODE_CERT_VALIDITY,
    OID_STATIC_KEY,
    OID_TAGS,
    decode_static_key,
    decode_tags,
    describe_certificate,
    encode_static_key,
    encode_tags,
    load_certificate,
    node_spiffe_id,
    normalize_tags,
    parse_spiffe_id,
    validate_name,
    validate_tag,
    validate_trust_domain,
)


def test_node_certificate_fields(creds: NodeCredentials) -> None:
    c = creds.cert
    assert c.spiffe_id == f"spiffe://{TD}/node/alpha"
    assert (c.trust_domain, c.name) == (TD, "alpha")
    assert c.tags == ("role:db", "site:eu-1")  # sorted
    assert c.static_key == creds.static_private.public_key()
    assert c.signing_key == creds.signing_private.public_key()
    assert c.fingerprint == sha256(c.der)
    assert c.serial.bit_length() == 128
    assert c.not_after - c.not_before == (NODE_CERT_VALIDITY + CLOCK_SKEW_ALLOWANCE).total_seconds()
    assert c.not_before == NOW - CLOCK_SKEW_ALLOWANCE.total_seconds()
    assert c.issuer == c.certificate.issuer
    assert repr(c) == f"NodeCertificate({c.spiffe_id}, serial={c.serial:#x})"


def test_der_and_pem_round_trip(creds: NodeCredentials) -> None:
    c = creds.cert
    assert NodeCertificate.from_der(c.der) == c
    assert NodeCertificate.from_pem(c.pem) == c
    assert NodeCertificate.from_der(bytearray(c.der)) == c  # type: ignore[arg-type]
    assert hash(NodeCertificate.from_der(c.der)) == hash(c)
    assert c != object()


def test_issued_profile_is_spiffe_leaf(creds: NodeCredentials) -> None:
    exts = creds.cert.certificate.extensions
    bc = exts.get_extension_for_class(x509.BasicConstraints)
    assert bc.critical and not bc.value.ca
    ku = exts.get_extension_for_class(x509.KeyUsage)
    assert ku.critical and ku.value.digital_signature
    assert not (ku.value.key_cert_sign or ku.value.crl_sign or ku.value.key_encipherment)
    eku = exts.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert set(eku) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    san = exts.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == [creds.cert.spiffe_id]
    assert not exts.get_extension_for_oid(OID_STATIC_KEY).critical
    assert not exts.get_extension_for_oid(OID_TAGS).critical
    assert creds.cert.certificate.signature_algorithm_oid.dotted_string == "2.16.840.1.101.3.4.3.18"


def test_sizes(ca: CertificateAuthority, creds: NodeCredentials) -> None:
    # ML-DSA-65 key 1952 + signature 3309 + hybrid key 1216 dominate; ~7 KB in all.
    assert 6500 < len(creds.cert.der) < 7500
    ca_der = ca.certificate.public_bytes(serialization.Encoding.DER)
    assert 5000 < len(ca_der) < 6000


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n",
        b"not pem at all",
    ],
)
def test_from_pem_rejects_garbage(data: bytes) -> None:
    with pytest.raises(CertificateRejected) as e:
        NodeCertificate.from_pem(data)
    assert e.value.reason is RejectReason.MALFORMED


def test_from_pem_wants_exactly_one(creds: NodeCredentials) -> None:
    with pytest.raises(CertificateRejected, match="expected one"):
        NodeCertificate.from_pem(creds.cert.pem * 2)
    with pytest.raises(CertificateRejected, match="larger"):
        NodeCertificate.from_pem(creds.cert.pem * 6)


@pytest.mark.filterwarnings("ignore::cryptography.utils.CryptographyDeprecationWarning")
def test_negative_serial_is_malformed(creds: NodeCredentials) -> None:
    der = bytearray(creds.cert.der)
    # The 128-bit serial with its top bit set is INTEGER 02 11 00 80..; 00 -> 80 makes it
    # negative (still minimal DER). The profile check runs before any signature check.
    i = der.index(b"\x02\x11\x00" + creds.cert.serial.to_bytes(16, "big"))
    der[i + 2] = 0x80
    with pytest.raises(CertificateRejected) as e:
        NodeCertificate.from_der(bytes(der))
    assert e.value.reason is RejectReason.MALFORMED


def test_from_der_rejects_non_bytes_and_oversize() -> None:
    with pytest.raises(CertificateRejected, match="bytes"):
        NodeCertificate.from_der("x")  # type: ignore[arg-type]
    with pytest.raises(CertificateRejected, match="larger"):
        NodeCertificate.from_der(b"\x30" * 100_000)


def test_ca_certificate_is_not_a_node_svid(ca: CertificateAuthority) -> None:
    with pytest.raises(CertificateRejected) as e:
        NodeCertificate(ca.certificate)
    assert e.value.reason is RejectReason.NOT_SVID


def test_load_certificate_pem_and_der(creds: NodeCredentials) -> None:
    assert load_certificate(creds.cert.der) == creds.cert.certificate
    assert load_certificate(b"\n" + creds.cert.pem) == creds.cert.certificate
    with pytest.raises(CertificateRejected, match="larger"):
        load_certificate(b"\x00" * 20000)


# --- names, tags, SPIFFE IDs --------------------------------------------------------------


@pytest.mark.parametrize("name", ["a", "node-1", "db.eu-1", "0", "a" * 63])
def test_valid_names(name: str) -> None:
    assert validate_name(name) == name


@pytest.mark.parametrize(
    "name", ["", "A", "a_b", "-a", ".", "..", ".a", "a" * 64, "a/b", "é", "a\n", 5]
)
def test_invalid_names(name: Any) -> None:
    with pytest.raises(IdentityError, match="invalid node name"):
        validate_name(name)


@pytest.mark.parametrize("tag", ["role:db", "site:eu-1", "a:b", "k_1.x-y:v_1.2-3", "x:" + "v" * 63])
def test_valid_tags(tag: str) -> None:
    assert validate_tag(tag) == tag


@pytest.mark.parametrize(
    "tag",
    [
        "",
        "role",
        ":db",
        "role:",
        "Role:db",
        "role:DB",
        "1role:db",
        "a:b:c",
        "r ole:db",
        "x:" + "v" * 64,
        "k" * 33 + ":v",
        None,
    ],
)
def test_invalid_tags(tag: Any) -> None:
    with pytest.raises(IdentityError, match="invalid tag"):
        validate_tag(tag)


def test_normalize_tags() -> None:
    assert normalize_tags(["b:1", "a:2", "b:1"]) == ("a:2", "b:1")
    assert normalize_tags([]) == ()
    with pytest.raises(IdentityError, match="not one string"):
        normalize_tags("role:db")
    with pytest.raises(IdentityError, match="at most"):
        normalize_tags([f"t:{i}" for i in range(MAX_TAGS + 1)])
    assert len(normalize_tags([f"t:{i}" for i in range(MAX_TAGS)])) == MAX_TAGS


def test_tags_encoding_round_trip_and_is_der() -> None:
    der = encode_tags(["site:eu-1", "role:db"])
    # SEQUENCE { SEQUENCE OF UTF8String }
    assert der == bytes.fromhex("30163014") + b"\x0c\x07role:db" + b"\x0c\x09site:eu-1"
    assert decode_tags(der) == ("role:db", "site:eu-1")
    assert decode_tags(encode_tags([])) == ()


@pytest.mark.parametrize(
    "der",
    [
        b"",
        b"\x30\x00",
        bytes.fromhex("300c300a") + b"\x0c\x03b:1" + b"\x0c\x03a:1",  # unsorted
        bytes.fromhex("300c300a") + b"\x0c\x03a:1" + b"\x0c\x03a:1",  # duplicate
        bytes.fromhex("30073005") + b"\x0c\x03A:1",  # bad syntax
        bytes.fromhex("30073005") + b"\x13\x03a:1",  # PrintableString, not UTF8String
        bytes.fromhex("30073005") + b"\x0c\x03a:1" + b"\x00",  # trailing byte
        b"\x30\x84\xff\xff\xff\xff",
        b"\x00" * 4000,
    ],
)
def test_tags_decoder_is_strict(der: bytes) -> None:
    with pytest.raises(CertificateRejected) as e:
        decode_tags(der)
    assert e.value.reason is RejectReason.MALFORMED


def test_static_key_encoding() -> None:
    pub = HybridPrivateKey.generate().public_key()
    der = encode_static_key(pub)
    assert der[:4] == b"\x04\x82\x04\xc0" and len(der) == 4 + 1216
    assert decode_static_key(der) == pub
    for bad in (der[:-1], der + b"\x00", b"\x04\x00", der + b"\x00" * 100):
        with pytest.raises(CertificateRejected):
            decode_static_key(bad)


def test_spiffe_ids() -> None:
    assert node_spiffe_id(TD, "a") == f"spiffe://{TD}/node/a"
    assert parse_spiffe_id("spiffe://td/a/b") == ("td", "/a/b")
    assert parse_spiffe_id("spiffe://td") == ("td", "")
    for bad in (
        "spiffe://TD/a",
        "spiffe:///a",
        "spiffe://td/a//b",
        "SPIFFE://td/a",
        "spiffe://td/./a",
        "spiffe://td/" + "a" * 2100,
    ):
        with pytest.raises(CertificateRejected) as e:
            parse_spiffe_id(bad)
        assert e.value.reason is RejectReason.NOT_SVID
    with pytest.raises(IdentityError):
        node_spiffe_id("Bad Domain", "a")
    assert validate_trust_domain("a.b-c_d") == "a.b-c_d"
    with pytest.raises(IdentityError):
        validate_trust_domain("")


# --- describe -------------------------------------------------------------------------------


def test_describe_node_and_ca(ca: CertificateAuthority, creds: NodeCredentials) -> None:
    rows = dict(describe_certificate(creds.cert.pem))
    assert rows["kind"] == "node certificate"
    assert rows["SPIFFE ID"] == creds.cert.spiffe_id
    assert rows["tags"] == "role:db, site:eu-1"
    assert rows["serial"] == f"{creds.cert.serial:#x}"
    assert rows["subject key"].startswith("ML-DSA-65")
    assert rows["static key"].startswith("X25519 + ML-KEM-768")
    assert rows["fingerprint"] == f"sha256 {creds.cert.fingerprint.hex()}"
    rows = dict(describe_certificate(ca.cert_pem))
    assert rows["kind"] == "CA certificate"
    assert rows["SPIFFE ID"] == f"spiffe://{TD}"
    assert rows["signature"] == "ML-DSA-65"


def test_describe_non_svid_leaf(forge: Any) -> None:
    rows = dict(describe_certificate(forge(uris=(), static=None, tags=None, bc=False)))
    assert rows["kind"] == "node certificate"
    assert rows["SPIFFE ID"] == "(none)"
    assert rows["profile"].startswith("not a node SVID")


def test_describe_other_algorithms() -> None:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "ed")])
    cert = self_signed_ca(name, ed25519_key(), uri=None)
    rows = dict(describe_certificate(cert.public_bytes(serialization.Encoding.DER)))
    assert rows["signature"] == "1.3.101.112"
    assert rows["SPIFFE ID"] == "(none)"
