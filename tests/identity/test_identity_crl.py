"""Revocation lists: signed X.509 CRLs whose version only goes up."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from tests.identity.helpers import NOW, TD, ed25519_key
from x0tta6bl4.crypto.sign import SigningKey
from x0tta6bl4.errors import IdentityError, RevocationListError
from x0tta6bl4.identity import (
    REVOCATION_REASONS,
    CertificateAuthority,
    RevocationList,
    RevokedEntry,
    accept_newer,
)
from x0tta6bl4.identity.ca import CRL_FILE
from x0tta6bl4.identity.cert import to_datetime
from x0tta6bl4.identity.crl import CRL_NEXT_UPDATE, MAX_SERIAL


def test_initial_list(ca: CertificateAuthority) -> None:
    crl = ca.revocation_list()
    assert crl.version == 1
    assert crl.entries == ()
    assert crl.issued_at == NOW - 3600
    assert crl.next_update == NOW - 3600 + CRL_NEXT_UPDATE.total_seconds()
    assert crl.issuer == ca.certificate.subject
    assert repr(crl) == "RevocationList(version=1, 0 revoked)"


def test_revoke_bumps_version_and_persists(ca: CertificateAuthority) -> None:
    v2 = ca.revoke(0xABC, x509.ReasonFlags.key_compromise, NOW)
    v3 = ca.revoke(0xDEF, x509.ReasonFlags.unspecified, NOW + 10)
    assert (v2.version, v3.version) == (2, 3)
    assert v3.is_revoked(0xABC) and v3.is_revoked(0xDEF) and not v3.is_revoked(1)
    assert v3.entries == (
        RevokedEntry(0xABC, NOW, x509.ReasonFlags.key_compromise),
        RevokedEntry(0xDEF, NOW + 10, x509.ReasonFlags.unspecified),
    )
    assert v3.entry(0xDEF) == RevokedEntry(0xDEF, NOW + 10, x509.ReasonFlags.unspecified)
    assert v3.entry(5) is None
    assert len(v3) == 2
    # Persisted: a fresh load sees version 3.
    assert CertificateAuthority.load(ca.directory).revocation_list() == v3
    # "unspecified" is encoded by leaving the reason out (RFC 5280).
    raw = x509.load_der_x509_crl(v3.to_der())
    entry = raw.get_revoked_certificate_by_serial_number(0xDEF)
    assert entry is not None and len(entry.extensions) == 0


def test_der_and_pem_round_trip(ca: CertificateAuthority) -> None:
    crl = ca.revoke(77, x509.ReasonFlags.superseded, NOW)
    assert RevocationList.from_der(crl.to_der(), ca.certificate) == crl
    assert RevocationList.from_pem(crl.to_pem(), ca.bundle()) == crl
    assert hash(RevocationList.from_der(crl.to_der(), ca.bundle())) == hash(crl)
    assert crl != object()


def test_revoke_rejects_bad_input(ca: CertificateAuthority) -> None:
    ca.revoke(5, x509.ReasonFlags.key_compromise, NOW)
    with pytest.raises(IdentityError, match="already revoked"):
        ca.revoke(5, x509.ReasonFlags.superseded, NOW)
    for serial in (0, -1, MAX_SERIAL + 1, True, "5"):
        with pytest.raises(RevocationListError, match="serial"):
            ca.revoke(serial, x509.ReasonFlags.superseded, NOW)  # type: ignore[arg-type]
    with pytest.raises(IdentityError, match="not supported"):
        ca.revoke(6, x509.ReasonFlags.certificate_hold, NOW)
    assert ca.revocation_list().version == 2


def test_every_offered_reason_round_trips(ca: CertificateAuthority) -> None:
    for i, reason in enumerate(REVOCATION_REASONS.values(), start=1):
        crl = ca.revoke(i, reason, NOW)
    assert [e.reason for e in crl.entries] == list(REVOCATION_REASONS.values())


def test_signature_is_checked(ca: CertificateAuthority, tmp_path: Path) -> None:
    crl = ca.revoke(1, x509.ReasonFlags.key_compromise, NOW)
    other = CertificateAuthority.init(tmp_path / "other", TD, now=NOW)
    # Same issuer name, different key.
    with pytest.raises(RevocationListError, match="does not verify"):
        RevocationList.from_der(crl.to_der(), other.certificate)
    with pytest.raises(RevocationListError, match="does not verify"):
        RevocationList.from_der(crl.to_der(), other.bundle())
    der = bytearray(crl.to_der())
    der[-20] ^= 0x40
    with pytest.raises(RevocationListError):
        RevocationList.from_der(bytes(der), ca.certificate)


def test_issuer_must_be_trusted(ca: CertificateAuthority, ca_key: SigningKey) -> None:
    rogue = x509.Name([x509.NameAttribute(x509.oid.NameOID.COMMON_NAME, "rogue")])
    crl = _builder(rogue).sign(ca_key.cryptography_key, None)
    with pytest.raises(RevocationListError, match="not from a trusted CA"):
        RevocationList.from_der(crl.public_bytes(serialization.Encoding.DER), ca.bundle())


def test_must_be_ml_dsa(ca: CertificateAuthority) -> None:
    crl = _builder(ca.certificate.subject).sign(ed25519_key(), None)
    with pytest.raises(RevocationListError, match="ML-DSA-65"):
        RevocationList.from_der(crl.public_bytes(serialization.Encoding.DER), ca.certificate)


def test_needs_version(ca: CertificateAuthority, ca_key: SigningKey) -> None:
    b = x509.CertificateRevocationListBuilder().issuer_name(ca.certificate.subject)
    b = b.last_update(to_datetime(NOW)).next_update(to_datetime(NOW + 60))
    der = b.sign(ca_key.cryptography_key, None).public_bytes(serialization.Encoding.DER)
    with pytest.raises(RevocationListError, match="CRLNumber"):
        RevocationList.from_der(der, ca.certificate)
    zero = _builder(ca.certificate.subject, version=0).sign(ca_key.cryptography_key, None)
    with pytest.raises(RevocationListError, match=">= 1"):
        RevocationList.from_der(zero.public_bytes(serialization.Encoding.DER), ca.certificate)


def test_duplicate_serial_refused(ca: CertificateAuthority, ca_key: SigningKey) -> None:
    b = _builder(ca.certificate.subject)
    for _ in range(2):
        rc = x509.RevokedCertificateBuilder().serial_number(9).revocation_date(to_datetime(NOW))
        b = b.add_revoked_certificate(rc.build())
    der = b.sign(ca_key.cryptography_key, None).public_bytes(serialization.Encoding.DER)
    with pytest.raises(RevocationListError, match="twice"):
        RevocationList.from_der(der, ca.certificate)


@pytest.mark.parametrize("data", [b"", b"junk", b"\x30\x03\x02\x01\x01", "text"])
def test_garbage(ca: CertificateAuthority, data: bytes) -> None:
    with pytest.raises(RevocationListError):
        RevocationList.from_der(data, ca.certificate)
    if isinstance(data, bytes):
        with pytest.raises(RevocationListError):
            RevocationList.from_pem(data, ca.certificate)


def test_size_limits(ca: CertificateAuthority) -> None:
    with pytest.raises(RevocationListError, match="larger"):
        RevocationList.from_der(b"\x30" * (9 * 1024 * 1024), ca.certificate)
    with pytest.raises(RevocationListError, match="larger"):
        RevocationList.from_pem(b"\x30" * (17 * 1024 * 1024), ca.certificate)


def test_missing_file(ca: CertificateAuthority) -> None:
    (ca.directory / CRL_FILE).unlink()
    with pytest.raises(RevocationListError, match="missing"):
        ca.revocation_list()


# --- versions only go up ------------------------------------------------------------------


def test_versions_only_go_up(ca: CertificateAuthority, tmp_path: Path) -> None:
    v1 = ca.revocation_list()
    v2 = ca.revoke(1, x509.ReasonFlags.superseded, NOW)
    assert v2.newer_than(v1) and not v1.newer_than(v2) and not v2.newer_than(v2)
    assert v1.newer_than(None)
    assert accept_newer(None, v1) is v1
    assert accept_newer(v1, v2) is v2
    with pytest.raises(RevocationListError, match="older"):
        accept_newer(v2, v1)
    same = RevocationList.from_der(v2.to_der(), ca.certificate)
    assert accept_newer(v2, same) is v2
    # Another list with the same number is a CA fault and is refused.
    forked = RevocationList.build(
        _key(ca), ca.certificate, 2, [RevokedEntry(2, NOW, x509.ReasonFlags.superseded)], NOW
    )
    with pytest.raises(RevocationListError, match="two different"):
        accept_newer(v2, forked)


def test_concurrent_revocations_do_not_lose_updates(ca: CertificateAuthority) -> None:
    errors: list[BaseException] = []

    def worker(serial: int) -> None:
        try:
            CertificateAuthority.load(ca.directory).revoke(serial, x509.ReasonFlags.superseded, NOW)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(s,)) for s in range(1, 9)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    crl = ca.revocation_list()
    assert crl.version == 9
    assert [e.serial for e in crl.entries] == list(range(1, 9))


def _key(ca: CertificateAuthority) -> SigningKey:
    from x0tta6bl4.crypto.keys import load_signing_key

    return load_signing_key(ca.directory / "ca.key")


def _builder(issuer: x509.Name, version: int = 1) -> x509.CertificateRevocationListBuilder:
    return (
        x509.CertificateRevocationListBuilder()
        .issuer_name(issuer)
        .last_update(to_datetime(NOW))
        .next_update(to_datetime(NOW + 60))
        .add_extension(x509.CRLNumber(version), critical=False)
    )
