"""The CA as the control plane runs it: key and certificate on disk (0600, or a mounted
secret), the inventory and the revocation lists in the database, so every replica issues
and revokes against one truth.
"""

from __future__ import annotations

import datetime
import os
from pathlib import Path

from cryptography import x509
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from x0tta6bl4.atomicfile import atomic_write
from x0tta6bl4.control.models import Certificate, Node, RevocationListRow
from x0tta6bl4.crypto.hybrid import HybridPrivateKey, HybridPublicKey
from x0tta6bl4.crypto.kdf import sha256
from x0tta6bl4.crypto.sign import VerifyKey
from x0tta6bl4.errors import IdentityError
from x0tta6bl4.identity import CertificateAuthority, NodeCertificate, RevocationList
from x0tta6bl4.identity.crl import RevokedEntry
from x0tta6bl4.identity.inventory import signing_key_fingerprint, static_key_fingerprint

ENROLL_KEY_FILE = "enroll.key"


class KeyInUse(IdentityError):
    """A static or signing key already certified to another node."""


def load_enroll_key(ca_dir: Path) -> HybridPrivateKey:
    """The control plane's hybrid key that enrollment requests are sealed to (HPKE);
    created beside the CA key on first start."""
    path = ca_dir / ENROLL_KEY_FILE
    if not path.exists():
        key = HybridPrivateKey.generate()
        atomic_write(path, key.to_pkcs8_pem(), mode=0o600)
    return HybridPrivateKey.from_pkcs8_pem(path.read_bytes())


def enroll_key_fingerprint(key: HybridPublicKey) -> str:
    return sha256(key.to_bytes()).hex()


class ControlCA:
    def __init__(self, ca: CertificateAuthority, enroll_key: HybridPrivateKey) -> None:
        self.ca = ca
        self.enroll_key = enroll_key
        self.enroll_fingerprint = enroll_key_fingerprint(enroll_key.public_key())
        self.bundle_pem = ca.bundle().to_pem()

    @classmethod
    def open(cls, ca_dir: Path, trust_domain: str) -> ControlCA:
        """Load the CA in ``ca_dir``, creating it (and the enrollment key) on first start."""
        ca_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        try:
            ca = CertificateAuthority.load(ca_dir)
        except IdentityError:
            if any(ca_dir.glob("ca.*")):
                raise  # a broken CA is reported, never silently replaced
            ca = CertificateAuthority.init(ca_dir, trust_domain)
        os.chmod(ca_dir, 0o700)
        return cls(ca, load_enroll_key(ca_dir))

    async def issue(
        self,
        s: AsyncSession,
        name: str,
        tags: list[str] | tuple[str, ...],
        static_public: HybridPublicKey,
        signing_public: VerifyKey,
        *,
        now: float,
        lifetime_s: float,
    ) -> NodeCertificate:
        """Sign and record a certificate in the caller's transaction (commit is theirs).
        Refuses keys certified to another node."""
        sfp = static_key_fingerprint(static_public).hex()
        kfp = signing_key_fingerprint(signing_public).hex()
        if signing_public == self.ca.public_key:
            raise KeyInUse("that signing key is the CA's own")
        clash = (
            await s.execute(
                select(Certificate.node_name)
                .where(
                    (Certificate.static_key_fp == sfp) | (Certificate.signing_key_fp == kfp),
                    Certificate.node_name != name,
                )
                .limit(1)
            )
        ).scalar_one_or_none()
        if clash is not None:
            raise KeyInUse(f"that key is already certified to node {clash!r}")
        cert = self.ca.sign(
            name,
            tags,
            static_public,
            signing_public,
            now=now,
            validity=datetime.timedelta(seconds=lifetime_s),
        )
        s.add(
            Certificate(
                serial=format(cert.serial, "x"),
                node_name=name,
                not_before=cert.not_before,
                not_after=cert.not_after,
                status="valid",
                signing_key_fp=kfp,
                static_key_fp=sfp,
                pem=cert.pem.decode(),
                issued_at=now,
            )
        )
        await s.execute(
            update(Node).where(Node.name == name).values(current_serial=format(cert.serial, "x"))
        )
        return cert

    async def current_revocation_list(self, s: AsyncSession) -> RevocationList:
        row = (
            await s.execute(
                select(RevocationListRow).order_by(RevocationListRow.version.desc()).limit(1)
            )
        ).scalar_one_or_none()
        if row is None:
            return await self._store_list(s, 1, [], None)
        return RevocationList.from_pem(row.pem.encode(), self.ca.certificate)

    async def revoke_in(
        self, s: AsyncSession, serials: list[str], reason: x509.ReasonFlags, now: float
    ) -> RevocationList:
        """Add ``serials`` to a new list version in the caller's transaction. The version
        is the primary key, so two replicas revoking at once cannot both write N+1: the
        loser's commit fails and it retries (``with_version_retry``)."""
        current = await self.current_revocation_list(s)
        have = {e.serial for e in current.entries}
        entries = list(current.entries)
        for hexserial in serials:
            serial = int(hexserial, 16)
            if serial not in have:
                entries.append(RevokedEntry(serial, float(int(now)), reason))
                have.add(serial)
        await s.execute(
            update(Certificate)
            .where(Certificate.serial.in_(serials), Certificate.status == "valid")
            .values(status="revoked", revoked_at=now, revoke_reason=reason.value)
        )
        return await self._store_list(s, current.version + 1, entries, now)

    async def refresh_in(self, s: AsyncSession, now: float) -> RevocationList:
        """Re-sign the current entries as the next version (lists expire: nextUpdate)."""
        current = await self.current_revocation_list(s)
        return await self._store_list(s, current.version + 1, list(current.entries), now)

    async def _store_list(
        self, s: AsyncSession, version: int, entries: list[RevokedEntry], now: float | None
    ) -> RevocationList:
        import time

        t = time.time() if now is None else now
        crl = self.ca.sign_revocation_list(version, entries, t)
        s.add(RevocationListRow(version=version, pem=crl.to_pem().decode(), created_at=t))
        await s.flush()
        return crl
