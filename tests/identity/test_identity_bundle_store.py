"""TrustBundle PEM I/O and checks; NodeCredentials on disk."""

from __future__ import annotations

import datetime
import os
import shutil
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID

from tests.identity.helpers import NOW, TD, ed25519_key, self_signed_ca
from x0tta6bl4.crypto.hybrid import HybridPrivateKey
from x0tta6bl4.crypto.sign import SigningKey
from x0tta6bl4.errors import IdentityError
from x0tta6bl4.identity import CertificateAuthority, NodeCredentials, TrustBundle
from x0tta6bl4.identity.bundle import MAX_BUNDLE_CERTS
from x0tta6bl4.identity.store import NODE_CERT_FILE, NODE_KEY_FILE, NODE_STATIC_KEY_FILE

NAME = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test CA")])


def _mldsa_ca(**kw: object) -> x509.Certificate:
    return self_signed_ca(NAME, SigningKey.generate().cryptography_key, **kw)  # type: ignore[arg-type]


# --- bundle ---------------------------------------------------------------------------------


def test_bundle_pem_round_trip(ca: CertificateAuthority, tmp_path: Path) -> None:
    b = ca.bundle()
    assert b.trust_domain == TD and b.ca_certs == (ca.certificate,)
    assert TrustBundle.from_pem(b.to_pem()).ca_certs == b.ca_certs
    assert TrustBundle.from_pem(b.to_pem(), TD).trust_domain == TD
    b.save(tmp_path / "bundle.pem")
    assert TrustBundle.load(tmp_path / "bundle.pem").ca_certs == b.ca_certs
    assert repr(b) == f"TrustBundle({TD!r}, 1 CA)"
    assert b.issuers_for(ca.certificate.subject) == (ca.certificate,)
    assert b.issuers_for(NAME) == ()


def test_bundle_multiple_cas_and_dedup(ca: CertificateAuthority) -> None:
    other = _mldsa_ca()
    b = TrustBundle(TD, [ca.certificate, other, ca.certificate])
    assert b.ca_certs == (ca.certificate, other)
    assert TrustBundle.from_pem(b.to_pem()).ca_certs == b.ca_certs


def test_bundle_rejects_bad_cas(ca: CertificateAuthority, creds: NodeCredentials) -> None:
    with pytest.raises(IdentityError, match="at least one"):
        TrustBundle(TD, [])
    with pytest.raises(IdentityError, match="trust domain"):
        TrustBundle(TD, [ca.certificate]).from_pem(ca.cert_pem, "other.mesh")
    with pytest.raises(IdentityError, match="not a CA"):
        TrustBundle(TD, [_mldsa_ca(ca=False)])
    with pytest.raises(IdentityError, match="lacks"):
        TrustBundle(TD, [_no_ku_cert()])
    with pytest.raises(IdentityError, match="not a CA"):
        TrustBundle(TD, [creds.cert.certificate])
    with pytest.raises(IdentityError, match="unusable"):
        TrustBundle(TD, [_mldsa_ca(uri="https://not-spiffe")])
    with pytest.raises(IdentityError, match="ML-DSA-65"):
        TrustBundle(TD, [self_signed_ca(NAME, ed25519_key())])
    with pytest.raises(IdentityError, match="has a path"):
        TrustBundle(TD, [_mldsa_ca(uri=f"spiffe://{TD}/ca")])
    with pytest.raises(IdentityError, match="at most"):
        TrustBundle(TD, [_mldsa_ca() for _ in range(MAX_BUNDLE_CERTS + 1)])
    with pytest.raises(IdentityError, match="invalid trust domain"):
        TrustBundle("BAD", [ca.certificate])


def test_bundle_trust_domain_inference(ca: CertificateAuthority) -> None:
    no_uri = _mldsa_ca(uri=None)
    pem = TrustBundle(TD, [no_uri]).to_pem()
    with pytest.raises(IdentityError, match="pass it explicitly"):
        TrustBundle.from_pem(pem)
    assert TrustBundle.from_pem(pem, "x.mesh").trust_domain == "x.mesh"
    mixed = ca.cert_pem + _mldsa_ca(uri="spiffe://other.mesh").public_bytes(
        serialization.Encoding.PEM
    )
    with pytest.raises(IdentityError, match="pass it explicitly"):
        TrustBundle.from_pem(mixed)
    with pytest.raises(IdentityError, match="unreadable"):
        TrustBundle.from_pem(b"-----BEGIN CERTIFICATE-----\n!!\n-----END CERTIFICATE-----\n")
    with pytest.raises(IdentityError, match="too large"):
        TrustBundle.from_pem(b"x" * (MAX_BUNDLE_CERTS * 32 * 1024 + 1))


def _no_ku_cert() -> x509.Certificate:
    key = SigningKey.generate().cryptography_key
    t = datetime.datetime.fromtimestamp(NOW, tz=datetime.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(NAME)
        .issuer_name(NAME)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(t)
        .not_valid_after(t + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, None)
    )


def test_two_spiffe_ids_on_a_ca() -> None:
    key = SigningKey.generate().cryptography_key
    t = datetime.datetime.fromtimestamp(NOW, tz=datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(NAME)
        .issuer_name(NAME)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(t)
        .not_valid_after(t + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False),
            critical=True,
        )
        .add_extension(
            x509.SubjectAlternativeName(
                [
                    x509.UniformResourceIdentifier(f"spiffe://{TD}"),
                    x509.UniformResourceIdentifier("spiffe://b.mesh"),
                ]
            ),
            critical=False,
        )
        .sign(key, None)
    )
    with pytest.raises(IdentityError, match="more than one"):
        TrustBundle(TD, [cert])


# --- node credentials -----------------------------------------------------------------------


def _mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


def test_save_and_load(creds: NodeCredentials, tmp_path: Path) -> None:
    d = tmp_path / "node"
    creds.save(d)
    assert _mode(d / NODE_KEY_FILE) == 0o600
    assert _mode(d / NODE_STATIC_KEY_FILE) == 0o600
    assert _mode(d / NODE_CERT_FILE) == 0o644
    assert _mode(d) == 0o700
    assert sorted(p.name for p in d.iterdir()) == sorted(
        [NODE_CERT_FILE, NODE_KEY_FILE, NODE_STATIC_KEY_FILE]
    )
    back = NodeCredentials.load(d)
    assert back.cert == creds.cert
    # The reloaded keys are the same keys: they sign and decapsulate for the certificate.
    sig = back.signing_private.sign(b"m")
    creds.cert.signing_key.verify(sig, b"m")
    ct, ss = creds.cert.static_key.encapsulate()
    assert back.static_private.decapsulate(ct) == ss
    assert NodeCredentials.exists(d) and not NodeCredentials.exists(tmp_path / "none")


def test_repr_hides_private_keys(creds: NodeCredentials, tmp_path: Path) -> None:
    creds.save(tmp_path)
    secrets = [(tmp_path / f).read_text() for f in (NODE_KEY_FILE, NODE_STATIC_KEY_FILE)]
    for obj in (creds, creds.signing_private, creds.static_private):
        for text in (repr(obj), str(obj)):
            assert "PRIVATE" not in text
            for s in secrets:
                for line in s.splitlines()[1:-1]:
                    assert line not in text
    assert creds.cert.spiffe_id in repr(creds)


def test_mismatched_keys_are_refused(
    ca: CertificateAuthority, creds: NodeCredentials, tmp_path: Path
) -> None:
    with pytest.raises(IdentityError, match="static"):
        NodeCredentials(creds.cert, HybridPrivateKey.generate(), creds.signing_private)
    with pytest.raises(IdentityError, match="signing"):
        NodeCredentials(creds.cert, creds.static_private, SigningKey.generate())
    # A torn update on disk: another node's signing key next to this certificate.
    other = NodeCredentials.generate_and_issue(ca, "beta", [], NOW)
    creds.save(tmp_path / "a")
    other.save(tmp_path / "b")
    shutil.copy(tmp_path / "b" / NODE_KEY_FILE, tmp_path / "a" / NODE_KEY_FILE)
    with pytest.raises(IdentityError, match="does not match"):
        NodeCredentials.load(tmp_path / "a")


def test_load_errors(creds: NodeCredentials, tmp_path: Path) -> None:
    with pytest.raises(IdentityError, match="missing"):
        NodeCredentials.load(tmp_path / "none")
    creds.save(tmp_path)
    os.chmod(tmp_path / NODE_STATIC_KEY_FILE, 0o644)
    with pytest.raises(IdentityError, match="readable by others"):
        NodeCredentials.load(tmp_path)
    os.chmod(tmp_path / NODE_STATIC_KEY_FILE, 0o600)
    (tmp_path / NODE_CERT_FILE).write_bytes(b"junk")
    with pytest.raises(IdentityError, match="unusable"):
        NodeCredentials.load(tmp_path)


def test_generate_and_issue_validity(ca: CertificateAuthority) -> None:
    c = NodeCredentials.generate_and_issue(
        ca, "short", ["role:x"], NOW, validity=datetime.timedelta(minutes=10)
    )
    assert c.cert.not_after == NOW + 600
    assert c.cert.tags == ("role:x",)
