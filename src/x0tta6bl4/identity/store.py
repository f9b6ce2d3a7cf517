"""A node's credentials on disk.

Layout (each file written atomically; keys are PKCS#8 PEM, mode 0600)::

    node.crt         the node's X.509-SVID (PEM)
    node.key         ML-DSA-65 signing key (the certificate's subject key)
    node-static.key  hybrid static key (X-Wing): one PKCS#8 block holding the 32-byte seed
    node.csr         the request ``x0t cert request`` sends to the CA (not read by ``load``)

Three files cannot be replaced in one atomic step, so ``load`` checks that both keys match
the certificate: a torn update is refused, never used.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from x0tta6bl4.atomicfile import atomic_write
from x0tta6bl4.crypto.hybrid import HybridPrivateKey
from x0tta6bl4.crypto.keys import load_hybrid_key, load_signing_key, save_private_key
from x0tta6bl4.crypto.sign import SigningKey
from x0tta6bl4.errors import CertificateRejected, IdentityError, InvalidKey
from x0tta6bl4.identity.cert import NODE_CERT_VALIDITY, NodeCertificate

if TYPE_CHECKING:
    import datetime

    from x0tta6bl4.identity.ca import CertificateAuthority

NODE_CERT_FILE = "node.crt"
NODE_KEY_FILE = "node.key"
NODE_STATIC_KEY_FILE = "node-static.key"
# The node's certificate request (x0t cert request), for the CA operator.
NODE_CSR_FILE = "node.csr"


class NodeCredentials:
    """Certificate plus both private keys. Keys never appear in a repr."""

    __slots__ = ("_cert", "_signing", "_static")

    def __init__(
        self, cert: NodeCertificate, static_private: HybridPrivateKey, signing_private: SigningKey
    ) -> None:
        if cert.static_key != static_private.public_key():
            raise IdentityError("static private key does not match the certificate")
        if cert.signing_key != signing_private.public_key():
            raise IdentityError("signing private key does not match the certificate")
        self._cert = cert
        self._static = static_private
        self._signing = signing_private

    @property
    def cert(self) -> NodeCertificate:
        return self._cert

    @property
    def static_private(self) -> HybridPrivateKey:
        return self._static

    @property
    def signing_private(self) -> SigningKey:
        return self._signing

    @classmethod
    def generate_and_issue(
        cls,
        ca: CertificateAuthority,
        name: str,
        tags: Iterable[str],
        now: float,
        *,
        validity: datetime.timedelta = NODE_CERT_VALIDITY,
    ) -> NodeCredentials:
        """Fresh keys and a certificate for them, all made on the CA host: for tests, demos
        and one-machine setups. Real nodes keep their keys and send a
        ``CertificateRequest`` (``CertificateAuthority.issue_request``)."""
        static = HybridPrivateKey.generate()
        signing = SigningKey.generate()
        cert = ca.issue(
            name, tags, static.public_key(), signing.public_key(), now=now, validity=validity
        )
        return cls(cert, static, signing)

    def save(self, directory: str | os.PathLike[str]) -> None:
        d = Path(directory)
        d.mkdir(mode=0o700, parents=True, exist_ok=True)
        # Keys before the certificate: the certificate is what makes a set "current".
        save_private_key(d / NODE_KEY_FILE, self._signing)
        save_private_key(d / NODE_STATIC_KEY_FILE, self._static)
        atomic_write(d / NODE_CERT_FILE, self._cert.pem, mode=0o644)

    @classmethod
    def load(cls, directory: str | os.PathLike[str]) -> NodeCredentials:
        d = Path(directory)
        try:
            cert = NodeCertificate.from_pem((d / NODE_CERT_FILE).read_bytes())
            signing = load_signing_key(d / NODE_KEY_FILE)
            static = load_hybrid_key(d / NODE_STATIC_KEY_FILE)
        except FileNotFoundError as exc:
            raise IdentityError(f"no node credentials in {d}: {exc.filename} is missing") from None
        except (CertificateRejected, InvalidKey) as exc:
            raise IdentityError(f"unusable node credentials in {d}: {exc}") from None
        return cls(cert, static, signing)

    @staticmethod
    def exists(directory: str | os.PathLike[str]) -> bool:
        d = Path(directory)
        return any((d / f).exists() for f in (NODE_CERT_FILE, NODE_KEY_FILE, NODE_STATIC_KEY_FILE))

    def __repr__(self) -> str:
        return f"NodeCredentials({self._cert.spiffe_id}, serial={self._cert.serial:#x})"
