"""Revocation list: an X.509 CRL signed by the mesh CA with ML-DSA-65.

The CRLNumber extension is the list's version. Versions only go up: a holder refuses a
list older than the one it has (``accept_newer``), so an attacker replaying an old list
cannot un-revoke a certificate. Every list has a ``nextUpdate``; past it (plus a grace the
verifier chooses) the list is stale and verification fails closed, so an attacker who cuts
a node off from the control plane cannot keep it on an old list forever.

Fail closed on anything we do not understand: a critical extension other than the ones
below, on the list or on an entry, makes the whole list unusable (RFC 5280 5.2, 5.3).
"""

from __future__ import annotations

import datetime
import enum
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final, Literal, TypeAlias

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import mldsa
from cryptography.x509.oid import CRLEntryExtensionOID, ExtensionOID, SignatureAlgorithmOID

from x0tta6bl4.crypto.sign import SigningKey
from x0tta6bl4.errors import RevocationListError
from x0tta6bl4.identity.bundle import TrustBundle
from x0tta6bl4.identity.cert import X509_PARSE_ERRORS, to_datetime

# How long a list the CA signs stays current; the CA re-signs (``refresh_revocation_list``)
# well before, so a node that misses one refresh still has a current list.
CRL_NEXT_UPDATE = datetime.timedelta(days=7)
# 100,000 entries is about 4 MB; a mesh revoking more than that needs a new CA anyway.
MAX_CRL_SIZE = 8 * 1024 * 1024
MAX_SERIAL = (1 << 159) - 1  # RFC 5280: at most 20 octets, positive

# Reasons an operator may give. certificateHold and removeFromCRL are left out: we have no
# "un-revoke"; a revocation is final.
REVOCATION_REASONS: dict[str, x509.ReasonFlags] = {
    "unspecified": x509.ReasonFlags.unspecified,
    "key-compromise": x509.ReasonFlags.key_compromise,
    "ca-compromise": x509.ReasonFlags.ca_compromise,
    "affiliation-changed": x509.ReasonFlags.affiliation_changed,
    "superseded": x509.ReasonFlags.superseded,
    "cessation-of-operation": x509.ReasonFlags.cessation_of_operation,
    "privilege-withdrawn": x509.ReasonFlags.privilege_withdrawn,
}

# Extensions we act on. Anything else that is critical (delta-CRL indicator, issuing
# distribution point, an indirect list's certificate issuer, ...) would change what the
# list means, so such a list is refused rather than half-understood.
_KNOWN_CRL_EXTENSIONS = {ExtensionOID.CRL_NUMBER, ExtensionOID.AUTHORITY_KEY_IDENTIFIER}
_KNOWN_ENTRY_EXTENSIONS = {CRLEntryExtensionOID.CRL_REASON}


class NoRevocationList(enum.Enum):
    """The explicit "verify without revocation information" choice (tests, tools that
    check a certificate's shape). ``None`` is not accepted in its place: forgetting the
    list must fail closed, not silently accept revoked certificates."""

    NO_REVOCATION_LIST = "NO_REVOCATION_LIST"

    def __repr__(self) -> str:
        return self.value


NO_REVOCATION_LIST: Final = NoRevocationList.NO_REVOCATION_LIST


@dataclass(frozen=True, slots=True)
class RevokedEntry:
    serial: int
    revoked_at: float  # POSIX seconds
    reason: x509.ReasonFlags


def check_serial(serial: int) -> int:
    if isinstance(serial, bool) or not isinstance(serial, int) or not 0 < serial <= MAX_SERIAL:
        raise RevocationListError(f"serial must be a positive integer below 2**159, got {serial!r}")
    return serial


class RevocationList:
    __slots__ = ("_by_serial", "_crl", "_der", "_issued_at", "_issuer", "_next_update", "_version")

    def __init__(self, crl: x509.CertificateRevocationList) -> None:
        """Wrap an already signature-checked CRL; use ``from_der``/``from_pem`` for input."""
        try:
            issuer = crl.issuer
            issued_at = crl.last_update_utc.timestamp()
            nu = crl.next_update_utc
            exts = crl.extensions
            version = exts.get_extension_for_class(x509.CRLNumber).value.crl_number
            _check_critical(exts, _KNOWN_CRL_EXTENSIONS, "revocation list")
            by_serial: dict[int, RevokedEntry] = {}
            for rc in crl:
                _check_critical(rc.extensions, _KNOWN_ENTRY_EXTENSIONS, "revocation list entry")
                try:
                    reason = rc.extensions.get_extension_for_class(x509.CRLReason).value.reason
                except x509.ExtensionNotFound:
                    reason = x509.ReasonFlags.unspecified
                if rc.serial_number in by_serial:
                    raise RevocationListError(f"serial {rc.serial_number:#x} listed twice")
                by_serial[rc.serial_number] = RevokedEntry(
                    rc.serial_number, rc.revocation_date_utc.timestamp(), reason
                )
        except x509.ExtensionNotFound:
            raise RevocationListError("revocation list has no CRLNumber (version)") from None
        except X509_PARSE_ERRORS as exc:
            raise RevocationListError(f"unparsable revocation list: {exc}") from None
        if version < 1:
            raise RevocationListError(f"revocation list version must be >= 1, got {version}")
        if nu is None:
            # RFC 5280 5.1.2.5: a conforming CA always sets it; without it the list could
            # never be recognised as stale.
            raise RevocationListError("revocation list has no nextUpdate")
        if nu.timestamp() <= issued_at:
            raise RevocationListError("revocation list nextUpdate is not after its thisUpdate")
        self._crl = crl
        self._der = crl.public_bytes(serialization.Encoding.DER)
        self._issuer = issuer
        self._issued_at = issued_at
        self._next_update = nu.timestamp()
        self._version = version
        self._by_serial = by_serial

    @classmethod
    def build(
        cls,
        ca_key: SigningKey,
        ca_cert: x509.Certificate,
        version: int,
        entries: Iterable[RevokedEntry],
        now: float,
        *,
        validity: datetime.timedelta = CRL_NEXT_UPDATE,
    ) -> RevocationList:
        """Sign a new list, current from ``now`` for ``validity`` (the CA's job; nodes only
        ever load lists)."""
        if validity < datetime.timedelta(seconds=1):
            raise RevocationListError(f"revocation list validity must be >= 1 s, got {validity}")
        issued = to_datetime(now)
        builder = (
            x509.CertificateRevocationListBuilder()
            .issuer_name(ca_cert.subject)
            .last_update(issued)
            .next_update(issued + validity)
            .add_extension(x509.CRLNumber(version), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(
                    ca_key.public_key().cryptography_key
                ),
                critical=False,
            )
        )
        for e in sorted(entries, key=lambda e: e.serial):
            rb = x509.RevokedCertificateBuilder().serial_number(e.serial)
            rb = rb.revocation_date(to_datetime(e.revoked_at))
            # RFC 5280 5.3.1: omit the reason rather than say "unspecified".
            if e.reason is not x509.ReasonFlags.unspecified:
                rb = rb.add_extension(x509.CRLReason(e.reason), critical=False)
            builder = builder.add_revoked_certificate(rb.build())
        return cls(builder.sign(ca_key.cryptography_key, None))

    @classmethod
    def from_der(cls, data: bytes, trusted: TrustBundle | x509.Certificate) -> RevocationList:
        """Parse and check the CA signature; raises RevocationListError on anything wrong."""
        if not isinstance(data, bytes | bytearray | memoryview):
            raise RevocationListError("revocation list must be bytes")
        if len(data) > MAX_CRL_SIZE:
            raise RevocationListError(f"revocation list larger than {MAX_CRL_SIZE} bytes")
        try:
            crl = x509.load_der_x509_crl(bytes(data))
        except X509_PARSE_ERRORS as exc:
            raise RevocationListError(f"not a DER revocation list: {exc}") from None
        return cls._checked(crl, trusted)

    @classmethod
    def from_pem(cls, data: bytes, trusted: TrustBundle | x509.Certificate) -> RevocationList:
        if len(data) > 2 * MAX_CRL_SIZE:
            raise RevocationListError(f"revocation list larger than {2 * MAX_CRL_SIZE} bytes")
        try:
            crl = x509.load_pem_x509_crl(data)
        except X509_PARSE_ERRORS as exc:
            raise RevocationListError(f"not a PEM revocation list: {exc}") from None
        return cls._checked(crl, trusted)

    @classmethod
    def _checked(
        cls, crl: x509.CertificateRevocationList, trusted: TrustBundle | x509.Certificate
    ) -> RevocationList:
        try:
            issuer = crl.issuer
            algorithm = crl.signature_algorithm_oid
        except X509_PARSE_ERRORS as exc:
            raise RevocationListError(f"unparsable revocation list: {exc}") from None
        cas = trusted.issuers_for(issuer) if isinstance(trusted, TrustBundle) else (trusted,)
        cas = tuple(ca for ca in cas if ca.subject == issuer)
        if not cas:
            raise RevocationListError("revocation list is not from a trusted CA")
        if algorithm != SignatureAlgorithmOID.ML_DSA_65:
            raise RevocationListError("revocation list is not signed with ML-DSA-65")
        for ca in cas:
            try:
                key = ca.public_key()
                if isinstance(key, mldsa.MLDSA65PublicKey) and crl.is_signature_valid(key):
                    return cls(crl)
            except X509_PARSE_ERRORS:
                continue
        raise RevocationListError("revocation list signature does not verify")

    # --- contents ---

    @property
    def version(self) -> int:
        return self._version

    @property
    def entries(self) -> tuple[RevokedEntry, ...]:
        return tuple(self._by_serial[s] for s in sorted(self._by_serial))

    @property
    def issued_at(self) -> float:
        return self._issued_at

    @property
    def next_update(self) -> float:
        """POSIX seconds after which the list is stale."""
        return self._next_update

    @property
    def issuer(self) -> x509.Name:
        return self._issuer

    def is_revoked(self, serial: int) -> bool:
        return serial in self._by_serial

    def entry(self, serial: int) -> RevokedEntry | None:
        return self._by_serial.get(serial)

    def newer_than(self, other: RevocationList | None) -> bool:
        return other is None or self._version > other._version

    def to_der(self) -> bytes:
        return self._der

    def to_pem(self) -> bytes:
        return self._crl.public_bytes(serialization.Encoding.PEM)

    def __len__(self) -> int:
        return len(self._by_serial)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, RevocationList) and other._der == self._der

    def __hash__(self) -> int:
        return hash(self._der)

    def __repr__(self) -> str:
        return f"RevocationList(version={self._version}, {len(self._by_serial)} revoked)"


# What a verifier is given: a list, or the explicit choice to go without one.
Revocation: TypeAlias = RevocationList | Literal[NoRevocationList.NO_REVOCATION_LIST]


def _check_critical(exts: x509.Extensions, known: set[x509.ObjectIdentifier], where: str) -> None:
    for ext in exts:
        if ext.critical and ext.oid not in known:
            raise RevocationListError(
                f"{where} has a critical extension we do not understand: {ext.oid.dotted_string}"
            )


def accept_newer(held: RevocationList | None, candidate: RevocationList) -> RevocationList:
    """The list to keep after receiving ``candidate``: it must not be older than ``held``.

    The same version twice is fine only if it is the same list; two different lists with
    one version number mean the CA (or its key) misbehaved, and that is refused loudly.
    """
    if held is None or candidate.newer_than(held):
        return candidate
    if candidate.version == held.version and candidate == held:
        return held
    if candidate.version == held.version:
        raise RevocationListError(f"two different revocation lists claim version {held.version}")
    raise RevocationListError(
        f"revocation list version {candidate.version} is older than the held {held.version}"
    )
