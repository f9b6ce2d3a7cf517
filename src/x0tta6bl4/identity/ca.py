"""The mesh certificate authority: an ML-DSA-65 key, a self-signed CA certificate, and the
revocation list, all in one directory.

Layout (every file written atomically; the key is PKCS#8, mode 0600)::

    ca.key      ML-DSA-65 private key
    ca.crt      self-signed CA certificate (PEM)
    crl.pem     current revocation list (PEM), version 1 after ``init``
    bundle.pem  the trust bundle to hand to nodes (PEM, the CA certificate)
    issued.json what the CA issued (``identity.inventory``); created by the first ``issue``

Mutations (``init``, ``issue``, ``revoke``, ``refresh_revocation_list``) hold an exclusive
``flock`` on ``.lock`` in the directory, so two concurrent revocations cannot both write
version N+1, and two concurrent issuances cannot both certify one key to different names.
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import os
import secrets
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from x0tta6bl4.atomicfile import atomic_write
from x0tta6bl4.crypto.hybrid import HybridPublicKey
from x0tta6bl4.crypto.kdf import sha256
from x0tta6bl4.crypto.keys import load_signing_key, save_private_key
from x0tta6bl4.crypto.sign import SigningKey, VerifyKey
from x0tta6bl4.errors import CertificateRejected, IdentityError, InvalidKey, RevocationListError
from x0tta6bl4.identity.bundle import TrustBundle, check_ca_certificate
from x0tta6bl4.identity.cert import (
    CLOCK_SKEW_ALLOWANCE,
    DEFAULT_TRUST_DOMAIN,
    NODE_CERT_VALIDITY,
    OID_STATIC_KEY,
    OID_TAGS,
    NodeCertificate,
    encode_static_key,
    encode_tags,
    load_certificate,
    node_spiffe_id,
    normalize_tags,
    to_datetime,
    validate_name,
    validate_trust_domain,
)
from x0tta6bl4.identity.crl import (
    CRL_NEXT_UPDATE,
    REVOCATION_REASONS,
    RevocationList,
    RevokedEntry,
    check_serial,
)
from x0tta6bl4.identity.inventory import Inventory, IssuedRecord
from x0tta6bl4.identity.request import CertificateRequest

CA_KEY_FILE = "ca.key"
CA_CERT_FILE = "ca.crt"
CRL_FILE = "crl.pem"
BUNDLE_FILE = "bundle.pem"
INVENTORY_FILE = "issued.json"
LOCK_FILE = ".lock"
CA_VALIDITY = datetime.timedelta(days=3650)


def random_serial() -> int:
    """128 random bits with the top bit set: positive, fixed width, unguessable."""
    return (1 << 127) | secrets.randbits(127)


@contextlib.contextmanager
def _locked(directory: Path) -> Iterator[None]:
    fd = os.open(directory / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


class CertificateAuthority:
    """A loaded CA. The private key never appears in a repr."""

    __slots__ = ("_cert", "_dir", "_inventory", "_key", "_trust_domain")

    def __init__(
        self, directory: Path, key: SigningKey, cert: x509.Certificate, trust_domain: str
    ) -> None:
        self._dir = directory
        self._key = key
        self._cert = cert
        self._trust_domain = trust_domain
        self._inventory: Inventory | None = None  # last read or written; see issue()

    # --- creation and loading ---

    @classmethod
    def init(
        cls,
        directory: str | os.PathLike[str],
        trust_domain: str = DEFAULT_TRUST_DOMAIN,
        validity: datetime.timedelta = CA_VALIDITY,
        *,
        now: float | None = None,
    ) -> CertificateAuthority:
        """Create a new CA in ``directory``; refuses if one is already there."""
        validate_trust_domain(trust_domain)
        if validity <= datetime.timedelta(0):
            raise IdentityError("CA validity must be positive")
        t = to_datetime(_now(now))
        d = Path(directory)
        d.mkdir(mode=0o700, parents=True, exist_ok=True)
        with _locked(d):
            existing = [
                f for f in (CA_KEY_FILE, CA_CERT_FILE, CRL_FILE, INVENTORY_FILE) if (d / f).exists()
            ]
            if existing:
                raise IdentityError(
                    f"a CA already exists in {d} ({', '.join(existing)}); refusing to overwrite it"
                )
            key = SigningKey.generate()
            pub = key.public_key().cryptography_key
            name = x509.Name(
                [
                    x509.NameAttribute(NameOID.ORGANIZATION_NAME, "x0tta6bl4"),
                    x509.NameAttribute(NameOID.COMMON_NAME, f"{trust_domain} CA"),
                ]
            )
            cert = (
                x509.CertificateBuilder()
                .subject_name(name)
                .issuer_name(name)
                .public_key(pub)
                .serial_number(random_serial())
                # Back-dated like the node certificates it signs: otherwise a node
                # certificate issued in the CA's first minutes has its not_before clamped
                # to the CA's, and a node can no longer tell when it was issued (it renews
                # at half the lifetime counted from issuance).
                .not_valid_before(t - CLOCK_SKEW_ALLOWANCE)
                .not_valid_after(t + validity)
                # pathLen 0: the mesh CA signs node certificates only, no intermediates.
                .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
                .add_extension(_key_usage(cert_sign=True), critical=True)
                .add_extension(
                    x509.SubjectAlternativeName(
                        [x509.UniformResourceIdentifier(f"spiffe://{trust_domain}")]
                    ),
                    critical=False,
                )
                .add_extension(x509.SubjectKeyIdentifier.from_public_key(pub), critical=False)
                .sign(key.cryptography_key, None)
            )
            # Key first: a crash before the certificate is written leaves a directory that
            # the next init refuses and load reports, never a certificate without its key.
            save_private_key(d / CA_KEY_FILE, key)
            atomic_write(d / CA_CERT_FILE, cert.public_bytes(serialization.Encoding.PEM))
            crl = RevocationList.build(key, cert, 1, (), t.timestamp())
            atomic_write(d / CRL_FILE, crl.to_pem())
            ca = cls(d, key, cert, trust_domain)
            ca.bundle().save(d / BUNDLE_FILE)
        return ca

    @classmethod
    def load(cls, directory: str | os.PathLike[str]) -> CertificateAuthority:
        d = Path(directory)
        try:
            cert = load_certificate((d / CA_CERT_FILE).read_bytes())
            key = load_signing_key(d / CA_KEY_FILE)
        except FileNotFoundError as exc:
            raise IdentityError(f"no CA in {d}: {exc.filename} is missing") from None
        except (CertificateRejected, InvalidKey) as exc:
            raise IdentityError(f"unusable CA in {d}: {exc}") from None
        td = check_ca_certificate(cert, None)
        if td is None:
            raise IdentityError(f"CA certificate in {d} names no trust domain")
        if cert.public_key() != key.public_key().cryptography_key:
            raise IdentityError(f"{CA_KEY_FILE} does not match {CA_CERT_FILE} in {d}")
        return cls(d, key, cert, td)

    # --- fields ---

    @property
    def directory(self) -> Path:
        return self._dir

    @property
    def trust_domain(self) -> str:
        return self._trust_domain

    @property
    def certificate(self) -> x509.Certificate:
        return self._cert

    @property
    def cert_pem(self) -> bytes:
        return self._cert.public_bytes(serialization.Encoding.PEM)

    @property
    def fingerprint(self) -> bytes:
        return sha256(self._cert.public_bytes(serialization.Encoding.DER))

    @property
    def public_key(self) -> VerifyKey:
        return self._key.public_key()

    def bundle(self) -> TrustBundle:
        return TrustBundle(self._trust_domain, [self._cert])

    def revocation_list(self) -> RevocationList:
        """The current list, read from disk and signature-checked."""
        try:
            return RevocationList.from_pem((self._dir / CRL_FILE).read_bytes(), self._cert)
        except FileNotFoundError:
            raise RevocationListError(f"{self._dir / CRL_FILE} is missing") from None

    def issued(self) -> tuple[IssuedRecord, ...]:
        """Every certificate this CA issued, oldest first (from ``issued.json``)."""
        return tuple(Inventory.read(self._dir / INVENTORY_FILE).records)

    def __repr__(self) -> str:
        return f"CertificateAuthority({self._trust_domain!r}, {str(self._dir)!r})"

    # --- issuing and revoking ---

    def issue(
        self,
        name: str,
        tags: Iterable[str],
        static_public: HybridPublicKey,
        signing_public: VerifyKey,
        *,
        now: float,
        validity: datetime.timedelta = NODE_CERT_VALIDITY,
        unique_ipv4: bool = True,
    ) -> NodeCertificate:
        """Sign a node X.509-SVID. Validity is clamped to the CA's own.

        Refuses (KeyAlreadyCertified) a static or signing key already certified to another
        name, and (OverlayAddressTaken, unless ``unique_ipv4`` is off: the simulator
        carries no IP) a new name whose derived overlay IPv4 address a name it certified
        has; the certificate is recorded in the inventory before it is returned.
        """
        spiffe_id = node_spiffe_id(self._trust_domain, validate_name(name))
        tag_der = encode_tags(normalize_tags(tags))
        if validity <= datetime.timedelta(0):
            raise IdentityError("certificate validity must be positive")
        if not isinstance(static_public, HybridPublicKey) or not isinstance(
            signing_public, VerifyKey
        ):
            raise IdentityError("issue() needs a HybridPublicKey and a VerifyKey")
        t = to_datetime(now)
        if not self._cert.not_valid_before_utc <= t < self._cert.not_valid_after_utc:
            raise IdentityError("the CA certificate is not valid now; cannot issue")
        with _locked(self._dir):
            path = self._dir / INVENTORY_FILE
            # Re-read under the lock (another process may have issued); re-parsed only if
            # the bytes changed, so issuing n certificates does not parse O(n^2) records.
            inventory = Inventory.read(path, self._inventory)
            self._inventory = None
            inventory.check_unique(name, signing_public, static_public, self._key.public_key())
            if unique_ipv4:
                inventory.check_overlay_ipv4(name, self._trust_domain)
            cert = self._sign_node(
                name, spiffe_id, tag_der, static_public, signing_public, t, validity
            )
            # Recorded before anyone sees the certificate: a crash here leaves a record
            # of a certificate nobody got, which only errs on the side of refusing.
            record = IssuedRecord.of(cert)
            data = inventory.with_record(record)
            atomic_write(path, data, mode=0o600)
            inventory.commit(record, data)
            self._inventory = inventory
        return cert

    def sign(
        self,
        name: str,
        tags: Iterable[str],
        static_public: HybridPublicKey,
        signing_public: VerifyKey,
        *,
        now: float,
        validity: datetime.timedelta = NODE_CERT_VALIDITY,
    ) -> NodeCertificate:
        """Sign a node X.509-SVID without touching this directory's inventory: for a
        caller that keeps the inventory itself (the control plane, in its database) and
        checks key uniqueness there."""
        spiffe_id = node_spiffe_id(self._trust_domain, validate_name(name))
        tag_der = encode_tags(normalize_tags(tags))
        if validity <= datetime.timedelta(0):
            raise IdentityError("certificate validity must be positive")
        t = to_datetime(now)
        if not self._cert.not_valid_before_utc <= t < self._cert.not_valid_after_utc:
            raise IdentityError("the CA certificate is not valid now; cannot issue")
        return self._sign_node(name, spiffe_id, tag_der, static_public, signing_public, t, validity)

    def sign_revocation_list(
        self,
        version: int,
        entries: Iterable[RevokedEntry],
        now: float,
        validity: datetime.timedelta = CRL_NEXT_UPDATE,
    ) -> RevocationList:
        """A signed list for a caller that keeps the current version itself."""
        return RevocationList.build(
            self._key, self._cert, version, list(entries), now, validity=validity
        )

    def issue_request(
        self,
        request: CertificateRequest,
        *,
        name: str,
        tags: Iterable[str],
        now: float,
        validity: datetime.timedelta = NODE_CERT_VALIDITY,
    ) -> NodeCertificate:
        """Issue for a node that generated its own keys. ``name`` and ``tags`` are what
        the operator approves; the request must ask for exactly those (tags grant access
        under the policy, so a node cannot award itself one). The request's signature was
        checked when it was parsed: the node holds the ML-DSA key (not proven: the KEM key).
        """
        if validate_name(name) != request.name:
            raise IdentityError(f"request is for {request.name!r}, not {name!r}")
        approved = normalize_tags(tags)
        if approved != request.tags:
            raise IdentityError(
                f"request asks for tags {', '.join(request.tags) or '(none)'}, but "
                f"{', '.join(approved) or 'none'} were approved"
            )
        return self.issue(
            name, approved, request.static_key, request.signing_key, now=now, validity=validity
        )

    def _sign_node(
        self,
        name: str,
        spiffe_id: str,
        tag_der: bytes,
        static_public: HybridPublicKey,
        signing_public: VerifyKey,
        t: datetime.datetime,
        validity: datetime.timedelta,
    ) -> NodeCertificate:
        ca_start, ca_end = self._cert.not_valid_before_utc, self._cert.not_valid_after_utc
        sub_pub = signing_public.cryptography_key
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .issuer_name(self._cert.subject)
            .public_key(sub_pub)
            .serial_number(random_serial())
            .not_valid_before(max(t - CLOCK_SKEW_ALLOWANCE, ca_start))
            .not_valid_after(min(t + validity, ca_end))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(_key_usage(cert_sign=False), critical=True)
            .add_extension(
                x509.ExtendedKeyUsage(
                    [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
                ),
                critical=False,
            )
            .add_extension(
                x509.SubjectAlternativeName([x509.UniformResourceIdentifier(spiffe_id)]),
                critical=False,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(sub_pub), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(
                    self._key.public_key().cryptography_key
                ),
                critical=False,
            )
            .add_extension(
                x509.UnrecognizedExtension(OID_STATIC_KEY, encode_static_key(static_public)),
                critical=False,
            )
            .add_extension(x509.UnrecognizedExtension(OID_TAGS, tag_der), critical=False)
            .sign(self._key.cryptography_key, None)
        )
        return NodeCertificate(cert)

    def revoke(self, serial: int, reason: x509.ReasonFlags, now: float) -> RevocationList:
        """Add ``serial`` to the list, bump its version, persist it atomically, return it."""
        check_serial(serial)
        if reason not in REVOCATION_REASONS.values():
            raise IdentityError(f"revocation reason {reason.value!r} is not supported")
        with _locked(self._dir):
            current = self.revocation_list()
            if current.is_revoked(serial):
                raise IdentityError(f"serial {serial:#x} is already revoked")
            entries = [*current.entries, RevokedEntry(serial, float(int(now)), reason)]
            new = RevocationList.build(self._key, self._cert, current.version + 1, entries, now)
            atomic_write(self._dir / CRL_FILE, new.to_pem())
        return new

    def refresh_revocation_list(
        self, now: float, validity: datetime.timedelta = CRL_NEXT_UPDATE
    ) -> RevocationList:
        """Re-sign the current entries as the next version, current from ``now``.

        Verifiers refuse a list past its nextUpdate, so the CA must do this regularly
        (e.g. daily with the default 7-day lifetime) even when nothing was revoked.
        """
        with _locked(self._dir):
            current = self.revocation_list()
            new = RevocationList.build(
                self._key,
                self._cert,
                current.version + 1,
                current.entries,
                now,
                validity=validity,
            )
            atomic_write(self._dir / CRL_FILE, new.to_pem())
        return new


def _key_usage(*, cert_sign: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=not cert_sign,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=cert_sign,
        crl_sign=cert_sign,
        encipher_only=False,
        decipher_only=False,
    )


def _now(now: float | None) -> float:
    return time.time() if now is None else now
