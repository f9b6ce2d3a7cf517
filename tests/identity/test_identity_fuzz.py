"""Arbitrary and mutated bytes into every decoder: only typed errors come out."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import pytest
from cryptography import x509
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from identity_helpers import NOW, TD

from x0tta6bl4.errors import CertificateRejected, IdentityError, RevocationListError
from x0tta6bl4.identity import (
    CertificateAuthority,
    NodeCertificate,
    NodeCredentials,
    RevocationList,
    verify_node_certificate,
)
from x0tta6bl4.identity.cert import decode_static_key, decode_tags, encode_tags, normalize_tags

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
        ident = verify_node_certificate(mutated, ca.bundle(), None, NOW)
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
    assert verify_node_certificate(der, ca.bundle(), None, NOW).name == "fz"
    assert RevocationList.from_der(crl_der, ca.certificate).version == 2
