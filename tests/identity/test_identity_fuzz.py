"""Arbitrary and mutated bytes into every decoder: only typed errors come out."""

from __future__ import annotations

import base64
import contextlib
import os
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.identity.helpers import NOW, TD
from x0tta6bl4.crypto.hybrid import HybridPrivateKey
from x0tta6bl4.crypto.sign import SigningKey
from x0tta6bl4.errors import (
    CertificateRejected,
    CertificateRequestError,
    IdentityError,
    RevocationListError,
)
from x0tta6bl4.identity import (
    NO_REVOCATION_LIST,
    CertificateAuthority,
    NodeCertificate,
    NodeCredentials,
    RevocationList,
    TrustBundle,
    verify_node_certificate,
)
from x0tta6bl4.identity.cert import decode_static_key, decode_tags, encode_tags, normalize_tags
from x0tta6bl4.identity.request import CertificateRequest

FUZZ = settings(
    max_examples=int(os.environ.get("X0T_FUZZ_EXAMPLES", "300")),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> tuple[CertificateAuthority, bytes, bytes]:
    ca = CertificateAuthority.init(tmp_path_factory.mktemp("fuzz") / "ca", TD, now=NOW - 3600)
    creds = NodeCredentials.generate_and_issue(ca, "fz", ["role:db", "site:x"], NOW)
    crl = ca.revoke(7, x509.ReasonFlags.key_compromise, NOW)
    return ca, creds.cert.der, crl.to_der()


@FUZZ
@given(st.binary(max_size=2048))
def test_node_certificate_from_der_arbitrary(data: bytes) -> None:
    with contextlib.suppress(CertificateRejected):
        NodeCertificate.from_der(data)


@FUZZ
@given(st.binary(max_size=2048))
def test_node_certificate_from_pem_arbitrary(data: bytes) -> None:
    with contextlib.suppress(CertificateRejected):
        NodeCertificate.from_pem(b"-----BEGIN CERTIFICATE-----\n" + data)


@FUZZ
@given(data=st.binary(max_size=2048))
def test_revocation_list_from_der_arbitrary(
    world: tuple[CertificateAuthority, bytes, bytes], data: bytes
) -> None:
    with contextlib.suppress(RevocationListError):
        RevocationList.from_der(data, world[0].certificate)


@FUZZ
@given(st.binary(max_size=512))
def test_tag_decoder_arbitrary(data: bytes) -> None:
    try:
        tags = decode_tags(data)
    except CertificateRejected:
        return
    assert encode_tags(tags) == data  # anything accepted is canonical


@FUZZ
@given(st.binary(max_size=1300))
def test_static_key_decoder_arbitrary(data: bytes) -> None:
    with contextlib.suppress(CertificateRejected):
        decode_static_key(data)


@FUZZ
@given(st.lists(st.text(max_size=40), max_size=40))
def test_tags_either_refused_or_round_trip(tags: list[str]) -> None:
    try:
        canon = normalize_tags(tags)
    except IdentityError:
        return
    assert decode_tags(encode_tags(canon)) == canon


def _mutate(der: bytes, edits: list[tuple[int, int]]) -> bytes:
    buf = bytearray(der)
    for pos, val in edits:
        buf[pos % len(buf)] = val
    return bytes(buf)


EDITS = st.lists(st.tuples(st.integers(0, 1 << 16), st.integers(0, 255)), min_size=1, max_size=4)


@FUZZ
@given(edits=EDITS)
def test_mutated_certificate_only_typed_errors(
    world: tuple[CertificateAuthority, bytes, bytes], edits: list[tuple[int, int]]
) -> None:
    ca, der, _ = world
    mutated = _mutate(der, edits)
    try:
        ident = verify_node_certificate(mutated, ca.bundle(), NO_REVOCATION_LIST, NOW)
    except CertificateRejected:
        return
    # Anything that still verifies must be the original certificate (edits were no-ops),
    # or differ only outside the signed part in a way DER re-encoding forgives.
    assert ident.name == "fz"


@FUZZ
@given(edits=EDITS)
def test_mutated_revocation_list_only_typed_errors(
    world: tuple[CertificateAuthority, bytes, bytes], edits: list[tuple[int, int]]
) -> None:
    ca, _, crl_der = world
    try:
        crl = RevocationList.from_der(_mutate(crl_der, edits), ca.bundle())
    except RevocationListError:
        return
    assert crl.version == 2 and crl.is_revoked(7)


def test_fixture_sanity(world: tuple[CertificateAuthority, bytes, bytes], tmp_path: Path) -> None:
    ca, der, crl_der = world
    assert verify_node_certificate(der, ca.bundle(), NO_REVOCATION_LIST, NOW).name == "fz"
    assert RevocationList.from_der(crl_der, ca.certificate).version == 2


# --- PEM readers: trust bundle, revocation list ---------------------------------------------


def _pem(der: bytes, label: bytes) -> bytes:
    return b"-----BEGIN %s-----\n%s-----END %s-----\n" % (
        label,
        base64.encodebytes(der),
        label,
    )


def test_trust_bundle_bad_version_is_typed(
    world: tuple[CertificateAuthority, bytes, bytes],
) -> None:
    # The review's case: `cryptography` raises x509.InvalidVersion (not a ValueError) for a
    # certificate whose version field is not v1-v3.
    der = bytearray(world[0].certificate.public_bytes(serialization.Encoding.DER))
    pos = der.index(b"\xa0\x03\x02\x01\x02")  # [0] EXPLICIT INTEGER 2 (v3)
    der[pos + 4] = 3
    with pytest.raises(IdentityError, match="version"):
        TrustBundle.from_pem(_pem(bytes(der), b"CERTIFICATE"))


@FUZZ
@given(st.binary(max_size=2048))
def test_trust_bundle_from_pem_arbitrary(data: bytes) -> None:
    for pem in (data, _pem(data, b"CERTIFICATE")):
        with contextlib.suppress(IdentityError):
            TrustBundle.from_pem(pem)


@FUZZ
@given(edits=EDITS)
def test_mutated_trust_bundle_only_typed_errors(
    world: tuple[CertificateAuthority, bytes, bytes], edits: list[tuple[int, int]]
) -> None:
    ca = world[0]
    der = _mutate(ca.certificate.public_bytes(serialization.Encoding.DER), edits)
    try:
        bundle = TrustBundle.from_pem(_pem(der, b"CERTIFICATE"))
    except IdentityError:
        return
    # A bundle is trusted input (nothing signs it), so edits to its SAN may change the
    # trust domain; only the shape is promised.
    assert len(bundle.ca_certs) == 1


@FUZZ
@given(data=st.binary(max_size=2048))
def test_revocation_list_from_pem_arbitrary(
    world: tuple[CertificateAuthority, bytes, bytes], data: bytes
) -> None:
    for pem in (data, _pem(data, b"X509 CRL")):
        with contextlib.suppress(RevocationListError):
            RevocationList.from_pem(pem, world[0].bundle())


@FUZZ
@given(edits=EDITS)
def test_mutated_revocation_list_pem_only_typed_errors(
    world: tuple[CertificateAuthority, bytes, bytes], edits: list[tuple[int, int]]
) -> None:
    ca, _, crl_der = world
    try:
        crl = RevocationList.from_pem(_pem(_mutate(crl_der, edits), b"X509 CRL"), ca.certificate)
    except RevocationListError:
        return
    assert crl.version == 2 and crl.is_revoked(7)


# --- certificate requests -------------------------------------------------------------------


@pytest.fixture(scope="module")
def request_der() -> bytes:
    static = HybridPrivateKey.generate().public_key()
    return CertificateRequest.build("fz", ["role:db"], static, SigningKey.generate()).der


@FUZZ
@given(st.binary(max_size=2048))
def test_certificate_request_arbitrary(data: bytes) -> None:
    for blob in (data, _pem(data, b"CERTIFICATE REQUEST")):
        with contextlib.suppress(CertificateRequestError):
            CertificateRequest.load(blob)


@FUZZ
@given(edits=EDITS)
def test_mutated_certificate_request_only_typed_errors(
    request_der: bytes, edits: list[tuple[int, int]]
) -> None:
    mutated = _mutate(request_der, edits)
    for blob in (mutated, _pem(mutated, b"CERTIFICATE REQUEST")):
        try:
            req = CertificateRequest.load(blob)
        except CertificateRequestError:
            continue
        # The signature covers everything that matters: what still parses is the original.
        assert (req.name, req.tags) == ("fz", ("role:db",))


def test_unknown_key_algorithm_is_typed(world: tuple[CertificateAuthority, bytes, bytes]) -> None:
    # Found by the request fuzzer: public_key() of an unknown algorithm raises
    # UnsupportedAlgorithm, which is not a ValueError either.
    from cryptography.exceptions import UnsupportedAlgorithm

    from x0tta6bl4.identity.cert import describe_certificate

    ml_dsa_65 = bytes.fromhex("0609608648016503040312")
    der = bytearray(world[1])
    spki = der.index(ml_dsa_65, der.index(ml_dsa_65) + 1)  # after the TBS signature algorithm
    der[spki + len(ml_dsa_65) - 1] = 0x7F
    with pytest.raises(UnsupportedAlgorithm):
        x509.load_der_x509_certificate(bytes(der)).public_key()
    rows = dict(describe_certificate(bytes(der)))
    assert "unreadable" in rows["subject key"]
    request = CertificateRequest.build(
        "fz", [], HybridPrivateKey.generate().public_key(), SigningKey.generate()
    )
    raw = bytearray(request.der)
    raw[raw.index(ml_dsa_65) + len(ml_dsa_65) - 1] = 0x7F  # the subject key comes first
    with pytest.raises(CertificateRequestError):
        CertificateRequest.from_der(bytes(raw))
