"""CertificateAuthority: init, load, issue, files on disk."""

from __future__ import annotations

import datetime
import os
import shutil
import stat
import time
from pathlib import Path

import pytest
from cryptography import x509

from tests.identity.helpers import NOW, TD
from x0tta6bl4.crypto.hybrid import HybridPrivateKey
from x0tta6bl4.crypto.sign import SigningKey
from x0tta6bl4.errors import IdentityError
from x0tta6bl4.identity import CertificateAuthority, TrustBundle
from x0tta6bl4.identity.ca import (
    BUNDLE_FILE,
    CA_CERT_FILE,
    CA_KEY_FILE,
    CRL_FILE,
    random_serial,
)


def _mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


def test_init_writes_key_cert_crl_bundle(ca: CertificateAuthority) -> None:
    d = ca.directory
    assert _mode(d / CA_KEY_FILE) == 0o600
    assert _mode(d) == 0o700
    assert (d / CA_KEY_FILE).read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
    assert (d / CA_CERT_FILE).read_bytes() == ca.cert_pem
    assert TrustBundle.load(d / BUNDLE_FILE).ca_certs == (ca.certificate,)
    crl = ca.revocation_list()
    assert crl.version == 1 and len(crl) == 0
    assert b"CRL" in (d / CRL_FILE).read_bytes()
    # No temporary files left behind by the atomic writes.
    assert sorted(p.name for p in d.iterdir()) == sorted(
        [CA_KEY_FILE, CA_CERT_FILE, CRL_FILE, BUNDLE_FILE, ".lock"]
    )


def test_ca_certificate_profile(ca: CertificateAuthority) -> None:
    cert = ca.certificate
    cert.verify_directly_issued_by(cert)  # self-signed with ML-DSA-65
    exts = cert.extensions
    bc = exts.get_extension_for_class(x509.BasicConstraints)
    assert bc.critical and bc.value.ca and bc.value.path_length == 0
    ku = exts.get_extension_for_class(x509.KeyUsage)
    assert ku.critical and ku.value.key_cert_sign and ku.value.crl_sign
    assert not ku.value.digital_signature
    san = exts.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == [f"spiffe://{TD}"]
    assert ca.trust_domain == TD
    assert ca.public_key.cryptography_key == cert.public_key()
    assert len(ca.fingerprint) == 32
    # back-dated by the clock-skew allowance, like the certificates it signs
    assert cert.not_valid_before_utc.timestamp() == NOW - 3600 - 300
    assert cert.not_valid_after_utc - cert.not_valid_before_utc == datetime.timedelta(
        days=3650, seconds=300
    )


def test_refuses_to_overwrite(ca: CertificateAuthority) -> None:
    before = (ca.directory / CA_KEY_FILE).read_bytes()
    with pytest.raises(IdentityError, match="already exists"):
        CertificateAuthority.init(ca.directory, TD)
    assert (ca.directory / CA_KEY_FILE).read_bytes() == before


def test_refuses_partial_leftovers(tmp_path: Path) -> None:
    (tmp_path / CA_CERT_FILE).write_bytes(b"x")
    with pytest.raises(IdentityError, match="already exists"):
        CertificateAuthority.init(tmp_path)


def test_init_validates_arguments(tmp_path: Path) -> None:
    with pytest.raises(IdentityError, match="trust domain"):
        CertificateAuthority.init(tmp_path / "a", "Not Valid")
    with pytest.raises(IdentityError, match="positive"):
        CertificateAuthority.init(tmp_path / "b", TD, datetime.timedelta(0))
    # Without "now" it uses the wall clock.
    ca = CertificateAuthority.init(tmp_path / "c", "other.mesh")
    assert ca.trust_domain == "other.mesh"


def test_load_round_trip(ca: CertificateAuthority) -> None:
    again = CertificateAuthority.load(ca.directory)
    assert again.certificate == ca.certificate
    assert again.trust_domain == TD
    assert again.public_key == ca.public_key


def test_load_errors(ca: CertificateAuthority, tmp_path: Path) -> None:
    with pytest.raises(IdentityError, match="missing"):
        CertificateAuthority.load(tmp_path / "nowhere")
    other = CertificateAuthority.init(tmp_path / "other", TD, now=NOW)
    # Key from another CA.
    shutil.copy(other.directory / CA_KEY_FILE, ca.directory / CA_KEY_FILE)
    with pytest.raises(IdentityError, match="does not match"):
        CertificateAuthority.load(ca.directory)
    # Key readable by others.
    os.chmod(other.directory / CA_KEY_FILE, 0o644)
    with pytest.raises(IdentityError, match="readable by others"):
        CertificateAuthority.load(other.directory)
    # Garbage certificate.
    (ca.directory / CA_CERT_FILE).write_bytes(b"junk")
    with pytest.raises(IdentityError, match="unusable"):
        CertificateAuthority.load(ca.directory)


def test_load_needs_a_trust_domain(ca: CertificateAuthority) -> None:
    from cryptography.hazmat.primitives import serialization

    from tests.identity.helpers import self_signed_ca
    from x0tta6bl4.crypto.keys import load_signing_key

    key = load_signing_key(ca.directory / CA_KEY_FILE).cryptography_key
    no_uri = self_signed_ca(ca.certificate.subject, key, uri=None)
    (ca.directory / CA_CERT_FILE).write_bytes(no_uri.public_bytes(serialization.Encoding.PEM))
    with pytest.raises(IdentityError, match="names no trust domain"):
        CertificateAuthority.load(ca.directory)


def test_repr_hides_key(ca: CertificateAuthority) -> None:
    key_pem = (ca.directory / CA_KEY_FILE).read_bytes()
    for text in (repr(ca), str(ca)):
        assert "PRIVATE" not in text
        assert key_pem.decode() not in text
    assert TD in repr(ca)


def test_issue_clamps_to_ca_validity(tmp_path: Path) -> None:
    ca = CertificateAuthority.init(tmp_path, TD, datetime.timedelta(hours=2), now=NOW)
    cert = ca.issue(
        "n",
        [],
        HybridPrivateKey.generate().public_key(),
        SigningKey.generate().public_key(),
        now=NOW + 60,
        validity=datetime.timedelta(hours=24),
    )
    assert cert.not_after == NOW + 7200
    # back-dated by the full allowance: the CA's own start is back-dated as much
    assert cert.not_before == NOW + 60 - 300


def test_issue_refuses_bad_input(ca: CertificateAuthority) -> None:
    static = HybridPrivateKey.generate().public_key()
    signing = SigningKey.generate().public_key()
    with pytest.raises(IdentityError, match="node name"):
        ca.issue("Bad", [], static, signing, now=NOW)
    with pytest.raises(IdentityError, match="tag"):
        ca.issue("ok", ["nocolon"], static, signing, now=NOW)
    with pytest.raises(IdentityError, match="positive"):
        ca.issue("ok", [], static, signing, now=NOW, validity=datetime.timedelta(0))
    with pytest.raises(IdentityError, match="HybridPublicKey"):
        ca.issue("ok", [], signing, signing, now=NOW)  # type: ignore[arg-type]
    with pytest.raises(IdentityError, match="not valid now"):
        ca.issue("ok", [], static, signing, now=NOW - 86400)
    with pytest.raises(IdentityError, match="not valid now"):
        ca.issue("ok", [], static, signing, now=NOW + 3650 * 86400)


def test_serials_are_random_128_bit() -> None:
    serials = {random_serial() for _ in range(100)}
    assert len(serials) == 100
    assert all(s.bit_length() == 128 for s in serials)


def test_a_certificate_from_a_fresh_ca_tells_when_it_was_issued(tmp_path: Path) -> None:
    # Renewal is due at half the lifetime counted from issuance (api.renewal): a CA made
    # seconds ago must not clamp the back-dated not_before of what it issues.
    from x0tta6bl4.api.renewal import renew_after
    from x0tta6bl4.crypto.hybrid import HybridPrivateKey
    from x0tta6bl4.crypto.sign import SigningKey

    now = time.time()
    ca = CertificateAuthority.init(tmp_path / "ca", now=now)
    cert = ca.sign(
        "n1",
        [],
        HybridPrivateKey.generate().public_key(),
        SigningKey.generate().public_key(),
        now=now + 1,
        validity=datetime.timedelta(seconds=20),
    )
    assert abs(renew_after(cert.not_before, cert.not_after) - (now + 11)) < 1.5
