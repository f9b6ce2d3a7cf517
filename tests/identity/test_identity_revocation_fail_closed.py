"""Revocation fails closed: stale lists, a missing list, and CRL extensions we do not
understand are refused; verifying without a list is an explicit choice."""

from __future__ import annotations

import datetime

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from tests.identity.helpers import NOW, crl_without_next_update
from x0tta6bl4 import identity
from x0tta6bl4.crypto.sign import SigningKey
from x0tta6bl4.errors import (
    CertificateRejected,
    IdentityError,
    RejectReason,
    RevocationListError,
)
from x0tta6bl4.identity import (
    CertificateAuthority,
    NodeCredentials,
    RevocationList,
    make_verifier,
    verify_node_certificate,
)
from x0tta6bl4.identity.cert import OID_ARC, to_datetime
from x0tta6bl4.identity.crl import CRL_NEXT_UPDATE

DAY = 86400.0
# An OID on our private arc that no version of the code understands.
UNKNOWN_OID = x509.ObjectIdentifier(f"{OID_ARC}.9.9")


@pytest.fixture
def long_lived(ca: CertificateAuthority) -> NodeCredentials:
    """A certificate valid for 60 days, so that only the list's age can fail it."""
    return NodeCredentials.generate_and_issue(
        ca, "long", [], NOW, validity=datetime.timedelta(days=60)
    )


def _reject(verify: object, *args: object, **kw: object) -> CertificateRejected:
    with pytest.raises(CertificateRejected) as info:
        verify(*args, **kw)  # type: ignore[operator]
    return info.value


# --- (a) nextUpdate ---------------------------------------------------------------------


def test_stale_list_is_refused(ca: CertificateAuthority, long_lived: NodeCredentials) -> None:
    crl = ca.revocation_list()
    assert crl.next_update is not None
    der, bundle = long_lived.cert.der, ca.bundle()
    # The review's case: a list 53 days past its nextUpdate, certificate still valid.
    e = _reject(verify_node_certificate, der, bundle, crl, crl.next_update + 53 * DAY)
    assert e.reason is RejectReason.REVOCATION_LIST_STALE
    assert "version 1" in e.detail and "nextUpdate" in e.detail
    # One second late is already stale (no grace by default); the bound is inclusive.
    e = _reject(verify_node_certificate, der, bundle, crl, crl.next_update + 1)
    assert e.reason is RejectReason.REVOCATION_LIST_STALE
    assert verify_node_certificate(der, bundle, crl, crl.next_update).name == "long"


def test_stale_grace_is_configurable(ca: CertificateAuthority, long_lived: NodeCredentials) -> None:
    crl = ca.revocation_list()
    assert crl.next_update is not None
    der, bundle = long_lived.cert.der, ca.bundle()
    at = crl.next_update + 3600
    assert verify_node_certificate(der, bundle, crl, at, crl_grace=3600).name == "long"
    e = _reject(verify_node_certificate, der, bundle, crl, at + 1, crl_grace=3600)
    assert e.reason is RejectReason.REVOCATION_LIST_STALE
    with pytest.raises(IdentityError, match="crl_grace"):
        verify_node_certificate(der, bundle, crl, NOW, crl_grace=-1)
    # The cached verifier takes the same grace.
    verify = make_verifier(bundle, lambda: crl, crl_grace=3600)
    assert verify(der, at).name == "long"
    assert _reject(verify, der, at + 1).reason is RejectReason.REVOCATION_LIST_STALE


def test_cached_certificate_still_sees_staleness(
    ca: CertificateAuthority, long_lived: NodeCredentials
) -> None:
    crl = ca.revocation_list()
    assert crl.next_update is not None
    verify = make_verifier(ca.bundle(), lambda: crl)
    verify(long_lived.cert.der, NOW)
    e = _reject(verify, long_lived.cert.der, crl.next_update + 1)
    assert e.reason is RejectReason.REVOCATION_LIST_STALE
    assert verify.hits == 1


def test_revocation_on_a_stale_list_still_counts(
    ca: CertificateAuthority, long_lived: NodeCredentials
) -> None:
    # A revocation is final, so even an out-of-date list proves it: REVOKED, not STALE.
    crl = ca.revoke(long_lived.cert.serial, x509.ReasonFlags.key_compromise, NOW)
    assert crl.next_update is not None
    e = _reject(verify_node_certificate, long_lived.cert.der, ca.bundle(), crl, crl.next_update + 1)
    assert e.reason is RejectReason.REVOKED


def test_ca_lists_always_have_a_next_update(ca: CertificateAuthority) -> None:
    v1 = ca.revocation_list()
    v2 = ca.revoke(5, x509.ReasonFlags.superseded, NOW + 10)
    assert v1.next_update == v1.issued_at + CRL_NEXT_UPDATE.total_seconds()
    assert v2.next_update == NOW + 10 + CRL_NEXT_UPDATE.total_seconds()


def test_refresh_resigns_with_a_new_next_update(ca: CertificateAuthority) -> None:
    v2 = ca.revoke(5, x509.ReasonFlags.superseded, NOW)
    later = NOW + 6 * DAY
    v3 = ca.refresh_revocation_list(later)
    assert v3.version == 3 and v3.entries == v2.entries
    assert v3.issued_at == later and v3.next_update == later + CRL_NEXT_UPDATE.total_seconds()
    assert ca.revocation_list() == v3
    assert identity.accept_newer(v2, v3) is v3


def test_list_lifetime_is_a_parameter(ca: CertificateAuthority, ca_key: SigningKey) -> None:
    crl = RevocationList.build(
        ca_key, ca.certificate, 2, (), NOW, validity=datetime.timedelta(hours=1)
    )
    assert crl.next_update == NOW + 3600
    with pytest.raises(RevocationListError, match="validity"):
        RevocationList.build(ca_key, ca.certificate, 2, (), NOW, validity=datetime.timedelta(0))


def test_list_without_next_update_is_refused(ca: CertificateAuthority, ca_key: SigningKey) -> None:
    # RFC 5280 5.1.2.5: conforming CAs include nextUpdate; without it a list never goes stale.
    raw = x509.load_der_x509_crl(ca.revocation_list().to_der())
    der = crl_without_next_update(raw, ca_key.cryptography_key)
    assert x509.load_der_x509_crl(der).next_update_utc is None
    assert x509.load_der_x509_crl(der).is_signature_valid(ca.public_key.cryptography_key)
    with pytest.raises(RevocationListError, match="nextUpdate"):
        RevocationList.from_der(der, ca.certificate)


# --- (b) no list is an explicit choice ----------------------------------------------------


def test_none_is_not_a_revocation_list(ca: CertificateAuthority, creds: NodeCredentials) -> None:
    e = _reject(verify_node_certificate, creds.cert.der, ca.bundle(), None, NOW)
    assert e.reason is RejectReason.REVOCATION_LIST_MISSING
    assert "NO_REVOCATION_LIST" in e.detail


def test_getter_returning_none_fails_closed(
    ca: CertificateAuthority, creds: NodeCredentials
) -> None:
    verify = make_verifier(ca.bundle(), lambda: None)  # type: ignore[arg-type,return-value]
    e = _reject(verify, creds.cert.der, NOW)
    assert e.reason is RejectReason.REVOCATION_LIST_MISSING
    # Not cached as a success path either way: the next call asks the getter again.
    assert _reject(verify, creds.cert.der, NOW).reason is RejectReason.REVOCATION_LIST_MISSING


def test_no_revocation_list_must_be_said(ca: CertificateAuthority, creds: NodeCredentials) -> None:
    ident = verify_node_certificate(creds.cert.der, ca.bundle(), identity.NO_REVOCATION_LIST, NOW)
    assert ident.name == "alpha"
    verify = make_verifier(ca.bundle(), lambda: identity.NO_REVOCATION_LIST)
    assert verify(creds.cert.der, NOW).name == "alpha"
    assert repr(identity.NO_REVOCATION_LIST) == "NO_REVOCATION_LIST"


# --- (c) critical extensions --------------------------------------------------------------


def _crl(
    ca: CertificateAuthority,
    key: SigningKey,
    extra: list[tuple[x509.ExtensionType, bool]] = [],  # noqa: B006 - never mutated
    entry_extra: list[tuple[x509.ExtensionType, bool]] = [],  # noqa: B006
) -> bytes:
    b = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca.certificate.subject)
        .last_update(to_datetime(NOW))
        .next_update(to_datetime(NOW + DAY))
        .add_extension(x509.CRLNumber(2), critical=False)
    )
    for ext, critical in extra:
        b = b.add_extension(ext, critical=critical)
    rb = x509.RevokedCertificateBuilder().serial_number(9).revocation_date(to_datetime(NOW))
    for ext, critical in entry_extra:
        rb = rb.add_extension(ext, critical=critical)
    b = b.add_revoked_certificate(rb.build())
    return b.sign(key.cryptography_key, None).public_bytes(serialization.Encoding.DER)


@pytest.mark.parametrize(
    "ext",
    [
        x509.UnrecognizedExtension(UNKNOWN_OID, b"\x05\x00"),
        # Understood by `cryptography`, not by us: a delta list is not a full list, and a
        # distribution point narrows the list's scope.
        x509.DeltaCRLIndicator(1),
        x509.IssuingDistributionPoint(None, None, True, False, None, False, False),
    ],
    ids=["unknown", "delta", "idp"],
)
def test_unknown_critical_list_extension_is_refused(
    ca: CertificateAuthority, ca_key: SigningKey, ext: x509.ExtensionType
) -> None:
    with pytest.raises(RevocationListError, match="critical extension"):
        RevocationList.from_der(_crl(ca, ca_key, extra=[(ext, True)]), ca.certificate)


def test_unknown_critical_entry_extension_is_refused(
    ca: CertificateAuthority, ca_key: SigningKey
) -> None:
    for ext in (
        x509.UnrecognizedExtension(UNKNOWN_OID, b"\x05\x00"),
        # An indirect list's entries name another issuer; we only read direct lists.
        x509.CertificateIssuer([x509.UniformResourceIdentifier("spiffe://other.mesh")]),
    ):
        der = _crl(ca, ca_key, entry_extra=[(ext, True)])
        with pytest.raises(RevocationListError, match="critical extension"):
            RevocationList.from_der(der, ca.certificate)


def test_non_critical_unknown_extensions_are_ignored(
    ca: CertificateAuthority, ca_key: SigningKey
) -> None:
    ext = x509.UnrecognizedExtension(UNKNOWN_OID, b"\x05\x00")
    der = _crl(ca, ca_key, extra=[(ext, False)], entry_extra=[(ext, False)])
    crl = RevocationList.from_der(der, ca.certificate)
    assert crl.version == 2 and crl.is_revoked(9)
    # A critical extension we do understand is fine.
    der = _crl(
        ca,
        ca_key,
        entry_extra=[(x509.CRLReason(x509.ReasonFlags.key_compromise), True)],
    )
    assert RevocationList.from_der(der, ca.certificate).is_revoked(9)
