"""Hybrid KEM: X25519 + ML-KEM-768, combined X-Wing style.

The shared secret is ``SHA3-256(label || ss_mlkem || ss_x25519 || ct_x25519 || pk_x25519)``,
so it binds both shared secrets and both X25519 public values: an attacker must break
X25519 *and* ML-KEM-768 to learn it. ML-KEM's ciphertext is already bound by its own
implicit-rejection design, as in X-Wing.
"""

from __future__ import annotations

import os
from collections.abc import Callable

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import mlkem, x25519

from x0tta6bl4.errors import InvalidKey

RandomBytes = Callable[[int], bytes]

X25519_SIZE = 32
MLKEM768_PUBLIC_SIZE = 1184
MLKEM768_CIPHERTEXT_SIZE = 1088
MLKEM_SEED_SIZE = 64
PUBLIC_KEY_SIZE = X25519_SIZE + MLKEM768_PUBLIC_SIZE  # 1216
CIPHERTEXT_SIZE = X25519_SIZE + MLKEM768_CIPHERTEXT_SIZE  # 1120
SHARED_SECRET_SIZE = 32
COMBINER_LABEL = b"x0tta6bl4/hybrid-kem/v1"


def _combine(ss_m: bytes, ss_x: bytes, ct_x: bytes, pk_x: bytes) -> bytes:
    h = hashes.Hash(hashes.SHA3_256())
    for part in (COMBINER_LABEL, ss_m, ss_x, ct_x, pk_x):
        h.update(part)
    return h.finalize()


def _x25519_private(rng: RandomBytes | None) -> x25519.X25519PrivateKey:
    if rng is None:
        return x25519.X25519PrivateKey.generate()
    return x25519.X25519PrivateKey.from_private_bytes(rng(X25519_SIZE))


def _exchange(private: x25519.X25519PrivateKey, public: x25519.X25519PublicKey) -> bytes:
    try:
        return private.exchange(public)
    except ValueError as exc:  # low-order point: the result would be all zeros
        raise InvalidKey(f"X25519 exchange rejected the peer key: {exc}") from None


class HybridPublicKey:
    __slots__ = ("_m", "_raw", "_x", "_x_raw")

    def __init__(self, x: x25519.X25519PublicKey, m: mlkem.MLKEM768PublicKey) -> None:
        self._x = x
        self._m = m
        self._x_raw = x.public_bytes_raw()
        self._raw = self._x_raw + m.public_bytes_raw()

    @classmethod
    def from_bytes(cls, raw: bytes) -> HybridPublicKey:
        if len(raw) != PUBLIC_KEY_SIZE:
            raise InvalidKey(f"hybrid public key must be {PUBLIC_KEY_SIZE} bytes, got {len(raw)}")
        try:
            x = x25519.X25519PublicKey.from_public_bytes(raw[:X25519_SIZE])
            m = mlkem.MLKEM768PublicKey.from_public_bytes(raw[X25519_SIZE:])
        except ValueError as exc:
            raise InvalidKey(f"invalid hybrid public key: {exc}") from None
        return cls(x, m)

    def to_bytes(self) -> bytes:
        return self._raw

    def __eq__(self, other: object) -> bool:
        return isinstance(other, HybridPublicKey) and other._raw == self._raw

    def __hash__(self) -> int:
        return hash(self._raw)

    def __repr__(self) -> str:
        return f"HybridPublicKey(x25519={self._x_raw[:4].hex()}...)"

    def encapsulate(self, rng: RandomBytes | None = None) -> tuple[bytes, bytes]:
        """Return ``(ciphertext, shared_secret)``. ``rng`` seeds the X25519 half (for
        reproducible simulations); ML-KEM always draws from OpenSSL's generator."""
        eph = _x25519_private(rng)
        ct_x = eph.public_key().public_bytes_raw()
        ss_x = _exchange(eph, self._x)
        ss_m, ct_m = self._m.encapsulate()
        return ct_x + ct_m, _combine(ss_m, ss_x, ct_x, self._x_raw)


class HybridPrivateKey:
    """A static or ephemeral hybrid decapsulation key. Never shown in a repr."""

    __slots__ = ("_m", "_public", "_x")

    def __init__(self, x: x25519.X25519PrivateKey, m: mlkem.MLKEM768PrivateKey) -> None:
        self._x = x
        self._m = m
        self._public = HybridPublicKey(x.public_key(), m.public_key())

    @classmethod
    def generate(cls, rng: RandomBytes | None = None) -> HybridPrivateKey:
        if rng is None:
            return cls(x25519.X25519PrivateKey.generate(), mlkem.MLKEM768PrivateKey.generate())
        return cls(
            _x25519_private(rng), mlkem.MLKEM768PrivateKey.from_seed_bytes(rng(MLKEM_SEED_SIZE))
        )

    def public_key(self) -> HybridPublicKey:
        return self._public

    def __repr__(self) -> str:
        return f"HybridPrivateKey(<hidden>, public={self._public!r})"

    def decapsulate(self, ciphertext: bytes) -> bytes:
        if len(ciphertext) != CIPHERTEXT_SIZE:
            raise InvalidKey(
                f"hybrid ciphertext must be {CIPHERTEXT_SIZE} bytes, got {len(ciphertext)}"
            )
        ct_x = ciphertext[:X25519_SIZE]
        try:
            peer = x25519.X25519PublicKey.from_public_bytes(ct_x)
            ss_m = self._m.decapsulate(ciphertext[X25519_SIZE:])
        except ValueError as exc:
            raise InvalidKey(f"invalid hybrid ciphertext: {exc}") from None
        ss_x = _exchange(self._x, peer)
        return _combine(ss_m, ss_x, ct_x, self._public._x_raw)

    def to_pkcs8_pem(self) -> bytes:
        """Two PKCS#8 PEM blocks: the X25519 key, then the ML-KEM-768 key."""
        enc = serialization.NoEncryption()
        fmt = serialization.PrivateFormat.PKCS8
        pem = serialization.Encoding.PEM
        return self._x.private_bytes(pem, fmt, enc) + self._m.private_bytes(pem, fmt, enc)

    @classmethod
    def from_pkcs8_pem(cls, data: bytes) -> HybridPrivateKey:
        marker = b"-----END PRIVATE KEY-----"
        blocks = [b + marker + b"\n" for b in data.split(marker) if b.strip()]
        if len(blocks) != 2:
            raise InvalidKey(f"expected two PKCS#8 PEM blocks, found {len(blocks)}")
        try:
            x = serialization.load_pem_private_key(blocks[0], password=None)
            m = serialization.load_pem_private_key(blocks[1], password=None)
        except (ValueError, TypeError) as exc:
            raise InvalidKey(f"unreadable hybrid private key: {exc}") from None
        if not isinstance(x, x25519.X25519PrivateKey) or not isinstance(
            m, mlkem.MLKEM768PrivateKey
        ):
            raise InvalidKey("hybrid private key file must hold an X25519 then an ML-KEM-768 key")
        return cls(x, m)


def default_rng(n: int) -> bytes:
    return os.urandom(n)
