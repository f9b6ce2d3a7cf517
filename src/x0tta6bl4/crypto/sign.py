"""ML-DSA-65 signatures (FIPS 204)."""

from __future__ import annotations

from cryptography.exceptions import InternalError, InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import mldsa

from x0tta6bl4.crypto.hybrid import RandomBytes
from x0tta6bl4.errors import BadSignature, InvalidKey

PUBLIC_KEY_SIZE = 1952
SIGNATURE_SIZE = 3309
SEED_SIZE = 32


class VerifyKey:
    __slots__ = ("_key", "_raw")

    def __init__(self, key: mldsa.MLDSA65PublicKey) -> None:
        self._key = key
        self._raw = key.public_bytes_raw()

    @classmethod
    def from_bytes(cls, raw: bytes) -> VerifyKey:
        if len(raw) != PUBLIC_KEY_SIZE:
            raise InvalidKey(
                f"ML-DSA-65 public key must be {PUBLIC_KEY_SIZE} bytes, got {len(raw)}"
            )
        try:
            return cls(mldsa.MLDSA65PublicKey.from_public_bytes(raw))
        except ValueError as exc:
            raise InvalidKey(f"invalid ML-DSA-65 public key: {exc}") from None

    def to_bytes(self) -> bytes:
        return self._raw

    @property
    def cryptography_key(self) -> mldsa.MLDSA65PublicKey:
        return self._key

    def verify(self, signature: bytes, data: bytes, context: bytes = b"") -> None:
        try:
            self._key.verify(signature, data, context or None)
        except InvalidSignature:
            raise BadSignature("ML-DSA-65 signature does not verify") from None

    def __eq__(self, other: object) -> bool:
        return isinstance(other, VerifyKey) and other._raw == self._raw

    def __hash__(self) -> int:
        return hash(self._raw)

    def __repr__(self) -> str:
        return f"VerifyKey(ML-DSA-65 {self._raw[:4].hex()}...)"


class SigningKey:
    """An ML-DSA-65 private key. Never shown in a repr."""

    __slots__ = ("_key", "_public")

    def __init__(self, key: mldsa.MLDSA65PrivateKey) -> None:
        self._key = key
        self._public = VerifyKey(key.public_key())

    @classmethod
    def generate(cls, rng: RandomBytes | None = None) -> SigningKey:
        if rng is None:
            return cls(mldsa.MLDSA65PrivateKey.generate())
        return cls(mldsa.MLDSA65PrivateKey.from_seed_bytes(rng(SEED_SIZE)))

    def public_key(self) -> VerifyKey:
        return self._public

    @property
    def cryptography_key(self) -> mldsa.MLDSA65PrivateKey:
        """For ``CertificateBuilder.sign(key, None)`` only."""
        return self._key

    def sign(self, data: bytes, context: bytes = b"") -> bytes:
        return self._key.sign(data, context or None)

    def __repr__(self) -> str:
        return f"SigningKey(<hidden>, public={self._public!r})"

    def to_pkcs8_pem(self) -> bytes:
        return self._key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )

    @classmethod
    def from_pkcs8_pem(cls, data: bytes) -> SigningKey:
        """Load a key file; raises only ``InvalidKey``, whatever the bytes."""
        try:
            key = serialization.load_pem_private_key(data, password=None)
        # Odd OIDs raise UnsupportedAlgorithm and keys of the wrong size for their OID
        # InternalError (found by fuzzing): to a caller these are all just a bad key file.
        except (ValueError, TypeError, UnsupportedAlgorithm, InternalError) as exc:
            raise InvalidKey(f"unreadable ML-DSA-65 private key: {exc}") from None
        if not isinstance(key, mldsa.MLDSA65PrivateKey):
            raise InvalidKey(f"expected an ML-DSA-65 private key, found {type(key).__name__}")
        return cls(key)
