"""verify_node_certificate: the happy path and one test per rejection reason."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tests.identity.helpers import KU_LEAF, NOW, TD, ed25519_key, forge_cert, self_signed_ca
from x0tta6bl4.crypto.kdf import sha256
from x0tta6bl4.crypto.sign import SigningKey
from x0tta6bl4.errors import CertificateRejected, RejectReason
from x0tta6bl4.identity import (
    NO_REVOCATION_LIST,
    CertificateAuthority,
    NodeCredentials,
    Revocation,
    TrustBundle,
    VerifiedIdentity,
    make_verifier,
    verify_node_certificate,
)
from x0tta6bl4.identity.cert import encode_tags


def reject(
    der: bytes, bundle: TrustBundle, crl: Revocation = NO_REVOCATION_LIST, now: float = NOW
) -> CertificateRejected:
    with pytest.raises(CertificateRejected) as info:
        verify_node_certificate(der, bundle, crl, now)
    return info.value


# --- happy path ---------------------------------------------------------------------------


def test_verified_identity_carries_name_tags_and_keys(
    ca: CertificateAuthority, creds: NodeCredentials
) -> None:
    ident = verify_node_certificate(creds.cert.der, ca.bundle(), ca.revocation_list(), NOW)
    assert isinstance(ident, VerifiedIdentity)
    assert ident.spiffe_id == f"spiffe://{TD}/node/alpha"
    assert ident.trust_domain == TD
    assert ident.name == "alpha"
    assert ident.tags == ("role:db", "site:eu-1")
    assert ident.static_key == creds.static_private.public_key()
    assert ident.signing_key == creds.signing_private.public_key()
    assert ident.serial == creds.cert.serial
    assert ident.fingerprint == sha256(creds.cert.der)
    assert ident.not_before <= NOW <= ident.not_after
    # The static key is usable: the handshake encapsulates to it.
    ct, secret = ident.static_key.encapsulate()
    assert creds.static_private.decapsulate(ct) == secret


def test_forged_but_conforming_cert_verifies(ca: CertificateAuthority, forge: Any) -> None:
    """The forge itself builds a valid SVID; each rejection test changes one thing."""
    ident = verify_node_certificate(forge(), ca.bundle(), NO_REVOCATION_LIST, NOW)
    assert ident.name == "forged"
    assert ident.tags == ("role:test",)


def test_validity_bounds_are_inclusive(ca: CertificateAuthority, creds: NodeCredentials) -> None:
    b = ca.bundle()
    verify_node_certificate(creds.cert.der, b, NO_REVOCATION_LIST, creds.cert.not_before)
    verify_node_certificate(creds.cert.der, b, NO_REVOCATION_LIST, creds.cert.not_after)


def test_no_eku_is_allowed_by_spiffe(ca: CertificateAuthority, forge: Any) -> None:
    verify_node_certificate(forge(eku=None), ca.bundle(), NO_REVOCATION_LIST, NOW)


def test_no_tags_extension_means_no_tags(ca: CertificateAuthority, forge: Any) -> None:
    assert (
        verify_node_certificate(forge(tags=None), ca.bundle(), NO_REVOCATION_LIST, NOW).tags == ()
    )


def test_extra_dns_san_is_allowed(ca: CertificateAuthority, ca_key: SigningKey) -> None:
    name = ca.certificate.subject
    der = forge_cert(
        ca_key.cryptography_key,
        name,
        uris=(),
        extra=[
            (
                x509.SubjectAlternativeName(
                    [
                        x509.UniformResourceIdentifier(f"spiffe://{TD}/node/dns"),
                        x509.DNSName("dns.example"),
                    ]
                ),
                False,
            )
        ],
    )
    assert verify_node_certificate(der, ca.bundle(), NO_REVOCATION_LIST, NOW).name == "dns"


# --- time ---------------------------------------------------------------------------------


def test_expired(ca: CertificateAuthority, creds: NodeCredentials) -> None:
    e = reject(creds.cert.der, ca.bundle(), now=creds.cert.not_after + 1)
    assert e.reason is RejectReason.EXPIRED


def test_not_yet_valid(ca: CertificateAuthority, creds: NodeCredentials) -> None:
    e = reject(creds.cert.der, ca.bundle(), now=creds.cert.not_before - 1)
    assert e.reason is RejectReason.NOT_YET_VALID


def test_issuing_ca_expired(ca: CertificateAuthority, forge: Any) -> None:
    ca_end = ca.certificate.not_valid_after_utc.timestamp()
    der = forge(not_after=ca_end + 86400)
    e = reject(der, ca.bundle(), now=ca_end + 60)
    assert e.reason is RejectReason.EXPIRED
    assert "CA" in e.detail


def test_issuing_ca_not_yet_valid(ca: CertificateAuthority, forge: Any) -> None:
    ca_start = ca.certificate.not_valid_before_utc.timestamp()
    der = forge(not_before=ca_start - 86400)
    e = reject(der, ca.bundle(), now=ca_start - 60)
    assert e.reason is RejectReason.NOT_YET_VALID
    assert "CA" in e.detail


# --- who signed it --------------------------------------------------------------------------


def test_unknown_ca(ca: CertificateAuthority) -> None:
    rogue_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "rogue CA")])
    der = forge_cert(SigningKey.generate().cryptography_key, rogue_name)
    assert reject(der, ca.bundle()).reason is RejectReason.UNKNOWN_CA


def test_bad_signature_same_name_other_key(ca: CertificateAuthority, tmp_path: Path) -> None:
    # A second CA for the same trust domain has the same subject name but another key.
    impostor = CertificateAuthority.init(tmp_path / "impostor", TD, now=NOW - 3600)
    assert impostor.certificate.subject == ca.certificate.subject
    creds = NodeCredentials.generate_and_issue(impostor, "alpha", [], NOW)
    assert reject(creds.cert.der, ca.bundle()).reason is RejectReason.BAD_SIGNATURE


def test_bad_signature_tampered_signature(ca: CertificateAuthority, creds: NodeCredentials) -> None:
    der = bytearray(creds.cert.der)
    der[-10] ^= 0x01  # inside the signature BIT STRING at the end
    assert reject(bytes(der), ca.bundle()).reason is RejectReason.BAD_SIGNATURE


def test_bad_signature_wrong_algorithm(ca: CertificateAuthority) -> None:
    # Same issuer name, but signed with Ed25519: the algorithm cannot match the CA key.
    der = forge_cert(ed25519_key(), ca.certificate.subject)
    assert reject(der, ca.bundle()).reason is RejectReason.BAD_SIGNATURE


def test_rotation_two_cas_same_name(ca: CertificateAuthority, tmp_path: Path) -> None:
    new = CertificateAuthority.init(tmp_path / "new", TD, now=NOW - 3600)
    bundle = TrustBundle(TD, [ca.certificate, new.certificate])
    for issuer in (ca, new):
        c = NodeCredentials.generate_and_issue(issuer, "n1", [], NOW)
        assert verify_node_certificate(c.cert.der, bundle, NO_REVOCATION_LIST, NOW).name == "n1"


# --- revocation ---------------------------------------------------------------------------


def test_revoked(ca: CertificateAuthority, creds: NodeCredentials) -> None:
    crl = ca.revoke(creds.cert.serial, x509.ReasonFlags.key_compromise, NOW)
    e = reject(creds.cert.der, ca.bundle(), crl)
    assert e.reason is RejectReason.REVOKED
    # Without a list nothing is revoked; with the old list it is not revoked either.
    verify_node_certificate(creds.cert.der, ca.bundle(), NO_REVOCATION_LIST, NOW)


def test_other_serial_revoked_does_not_matter(
    ca: CertificateAuthority, creds: NodeCredentials
) -> None:
    crl = ca.revoke(12345, x509.ReasonFlags.superseded, NOW)
    verify_node_certificate(creds.cert.der, ca.bundle(), crl, NOW)


# --- trust domain and SVID profile ---------------------------------------------------------


def test_wrong_trust_domain(ca: CertificateAuthority, forge: Any) -> None:
    der = forge(uris=["spiffe://other.mesh/node/alpha"])
    assert reject(der, ca.bundle()).reason is RejectReason.WRONG_TRUST_DOMAIN


@pytest.mark.parametrize(
    ("overrides", "needle"),
    [
        ({"uris": ()}, "found 0"),
        ({"uris": (f"spiffe://{TD}/node/a", f"spiffe://{TD}/node/b")}, "found 2"),
        ({"uris": ("https://x0tta6bl4.mesh/node/a",)}, "SPIFFE ID"),
        ({"uris": (f"spiffe://{TD}",)}, "/node/"),
        ({"uris": (f"spiffe://{TD}/node",)}, "/node/"),
        ({"uris": (f"spiffe://{TD}/node/a/b",)}, "/node/"),
        ({"uris": (f"spiffe://{TD}/workload/a",)}, "/node/"),
        ({"uris": (f"spiffe://{TD}/node/UPPER",)}, "/node/"),
        ({"uris": (f"spiffe://{TD}/node/..",)}, "'..'"),
        ({"uris": (f"spiffe://{TD}/node/a?x=1",)}, "SPIFFE ID"),
        ({"uris": (f"spiffe://{TD}/node/a/",)}, "SPIFFE ID"),
        ({"ca": True}, "cA=true"),
        ({"bc": False}, "basicConstraints"),
        ({"bc_critical": False}, "basicConstraints is not critical"),
        ({"ku": None}, "keyUsage"),
        ({"ku_critical": False}, "keyUsage is not critical"),
        ({"ku": {**KU_LEAF, "digital_signature": False, "key_encipherment": True}}, "lacks"),
        ({"ku": {**KU_LEAF, "key_cert_sign": True}}, "more than"),
        ({"ku": {**KU_LEAF, "crl_sign": True}}, "more than"),
        ({"ku": {**KU_LEAF, "content_commitment": True}}, "more than"),
        ({"ku": {**KU_LEAF, "key_agreement": True, "encipher_only": True}}, "encipherOnly"),
        ({"eku": (ExtendedKeyUsageOID.SERVER_AUTH,)}, "clientAuth"),
        ({"eku": (ExtendedKeyUsageOID.CLIENT_AUTH,)}, "serverAuth"),
        ({"static": None}, "static-key"),
        ({"subject_key": ed25519_key().public_key()}, "ML-DSA-65"),
        (
            {
                "extra": [
                    (
                        x509.UnrecognizedExtension(x509.ObjectIdentifier("1.2.3.4"), b"\x05\x00"),
                        True,
                    )
                ]
            },
            "unknown critical",
        ),
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)
def test_not_svid(
    ca: CertificateAuthority, forge: Any, overrides: dict[str, Any], needle: str
) -> None:
    e = reject(forge(**overrides), ca.bundle())
    assert e.reason is RejectReason.NOT_SVID
    assert needle in e.detail


def test_spiffe_allowed_key_usages_pass(ca: CertificateAuthority, forge: Any) -> None:
    ku = {**KU_LEAF, "key_encipherment": True, "key_agreement": True}
    verify_node_certificate(forge(ku=ku), ca.bundle(), NO_REVOCATION_LIST, NOW)


# --- malformed ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "data",
    [b"", b"garbage", b"\x30\x82\xff\xff", b"\x30" * 5000, b"x" * 20000],
    ids=["empty", "text", "truncated", "nested", "huge"],
)
def test_malformed_bytes(ca: CertificateAuthority, data: bytes) -> None:
    assert reject(data, ca.bundle()).reason is RejectReason.MALFORMED


def test_malformed_truncated_real_cert(ca: CertificateAuthority, creds: NodeCredentials) -> None:
    assert reject(creds.cert.der[:-1], ca.bundle()).reason is RejectReason.MALFORMED
    assert reject(creds.cert.der + b"\x00", ca.bundle()).reason is RejectReason.MALFORMED


def test_malformed_not_bytes(ca: CertificateAuthority) -> None:
    assert reject("text", ca.bundle()).reason is RejectReason.MALFORMED  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "overrides",
    [
        {"static": b"\x04\x03abc"},
        {"static": b"\x04\x82\x04\xc0" + b"\x00" * 10},
        {"static": b"\x05\x00"},
        {"tags": b"\x30\x03\x30\x01"},
        {"tags": b"\x30\x07\x30\x05\x0c\x03A:B"},
        {"tags": encode_tags(["b:1"])[:-1]},
    ],
    ids=["static-short", "static-truncated", "static-null", "tags-der", "tags-syntax", "tags-cut"],
)
def test_malformed_extension_contents(
    ca: CertificateAuthority, forge: Any, overrides: dict[str, Any]
) -> None:
    assert reject(forge(**overrides), ca.bundle()).reason is RejectReason.MALFORMED


def test_malformed_unparsable_standard_extension(ca: CertificateAuthority, forge: Any) -> None:
    # A keyUsage OID whose value is not a BIT STRING.
    bad = x509.UnrecognizedExtension(x509.oid.ExtensionOID.KEY_USAGE, b"\x05\x00")
    der = forge(ku=None, extra=[(bad, True)])
    assert reject(der, ca.bundle()).reason is RejectReason.MALFORMED


# --- cached verifier ------------------------------------------------------------------------


class CrlBox:
    def __init__(self, crl: Revocation) -> None:
        self.crl = crl
        self.calls = 0

    def __call__(self) -> Revocation:
        self.calls += 1
        return self.crl


def test_cache_skips_signature_but_rechecks_time_and_revocation(
    ca: CertificateAuthority, creds: NodeCredentials
) -> None:
    box = CrlBox(ca.revocation_list())
    verify = make_verifier(ca.bundle(), box)
    der = creds.cert.der
    first = verify(der, NOW)
    assert (verify.hits, verify.misses) == (0, 1)
    assert verify(der, NOW) == first
    assert (verify.hits, verify.misses) == (1, 1)
    assert len(verify) == 1
    # Time is re-checked on a cache hit.
    with pytest.raises(CertificateRejected) as e:
        verify(der, creds.cert.not_after + 1)
    assert e.value.reason is RejectReason.EXPIRED
    with pytest.raises(CertificateRejected) as e:
        verify(der, creds.cert.not_before - 1)
    assert e.value.reason is RejectReason.NOT_YET_VALID
    # A revocation published after caching takes effect at once.
    box.crl = ca.revoke(creds.cert.serial, x509.ReasonFlags.key_compromise, NOW)
    with pytest.raises(CertificateRejected) as e:
        verify(der, NOW)
    assert e.value.reason is RejectReason.REVOKED
    assert box.calls == 5
    verify.clear()
    assert len(verify) == 0


def test_cache_does_not_keep_failures(ca: CertificateAuthority) -> None:
    verify = make_verifier(ca.bundle(), lambda: NO_REVOCATION_LIST)
    for _ in range(2):
        with pytest.raises(CertificateRejected):
            verify(b"garbage", NOW)
    assert len(verify) == 0
    assert verify.misses == 0
    with pytest.raises(CertificateRejected) as e:
        verify(bytearray(b"x"), NOW)  # type: ignore[arg-type]
    assert e.value.reason is RejectReason.MALFORMED


def test_cache_is_a_bounded_lru(ca: CertificateAuthority) -> None:
    c1, c2 = (NodeCredentials.generate_and_issue(ca, n, [], NOW) for n in ("a", "b"))
    verify = make_verifier(ca.bundle(), lambda: NO_REVOCATION_LIST, cache_size=1)
    verify(c1.cert.der, NOW)
    verify(c2.cert.der, NOW)
    assert len(verify) == 1
    verify(c1.cert.der, NOW)  # evicted, so a miss
    assert (verify.hits, verify.misses) == (0, 3)
    assert verify.bundle.trust_domain == TD


def test_cache_size_zero_disables(ca: CertificateAuthority, creds: NodeCredentials) -> None:
    verify = make_verifier(ca.bundle(), lambda: NO_REVOCATION_LIST, cache_size=0)
    verify(creds.cert.der, NOW)
    verify(creds.cert.der, NOW)
    assert (verify.hits, verify.misses, len(verify)) == (0, 2, 0)


def test_self_signed_leaf_is_unknown_ca(ca: CertificateAuthority) -> None:
    key = SigningKey.generate().cryptography_key
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "me")])
    assert self_signed_ca(name, key).subject == name
    der = forge_cert(key, name)
    assert reject(der, ca.bundle()).reason is RejectReason.UNKNOWN_CA
