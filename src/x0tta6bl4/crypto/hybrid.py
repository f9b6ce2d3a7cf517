"""Hybrid KEM: X-Wing (X25519 + ML-KEM-768) as specified in draft-connolly-cfrg-xwing-kem-10.

* Decapsulation key: a 32-byte seed, expanded with ``SHAKE256(seed, 96*8)`` into the
  ML-KEM-768 seed ``d || z`` (bytes 0..63) and the X25519 private key (bytes 64..95).
* Public key ``pk_M || pk_X`` (1,184 + 32 = 1,216 B); ciphertext ``ct_M || ct_X``
  (1,088 + 32 = 1,120 B).
* Shared secret ``SHA3-256(ss_M || ss_X || ct_X || pk_X || XWingLabel)`` with the draft's
  6-byte label ``\\./`` ``/^\\`` (hex 5c2e2f2f5e5c). It binds both shared secrets and the
  X25519 values, so an attacker must break X25519 *and* ML-KEM-768; ML-KEM's ciphertext is
  bound by its own implicit rejection, which is what lets X-Wing leave it out.

Checked against the draft's test vectors (tests/crypto/test_xwing.py): key generation from
a seed and decapsulation, byte for byte. Encapsulation cannot be: the draft's vectors fix
the ML-KEM encapsulation randomness, and OpenSSL's ML-KEM encapsulation takes none from
the caller. Here ``encapsulate(rng)`` can only fix the X25519 ephemeral (the deterministic
simulator uses it); the ML-KEM half always draws from OpenSSL.

One departure, on input honest peers never produce: an X25519 point whose shared secret
comes out all zero (a low-order point) raises ``InvalidKey`` (``cryptography`` refuses it)
where the draft would carry on. The FIPS 203 §7.2 check the draft requires of ``Encaps``
happens when the ML-KEM public key is parsed (``HybridPublicKey.from_bytes``).

Private key files hold the draft's own encoding: a PKCS#8 ``PRIVATE KEY`` block with
algorithm id-XWing (1.3.6.1.4.1.62253.25722) and the 32-byte seed. Files from older
versions (two PKCS#8 blocks, X25519 then ML-KEM-768) still load; such a key has no X-Wing
seed, so it keeps being written in that older form.
"""

from __future__ import annotations

import base64
import os
from collections.abc import Callable

from cryptography.exceptions import InternalError, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import mlkem, x25519

from x0tta6bl4.errors import InvalidKey

RandomBytes = Callable[[int], bytes]

X25519_SIZE = 32
MLKEM768_PUBLIC_SIZE = 1184
MLKEM768_CIPHERTEXT_SIZE = 1088
MLKEM_SEED_SIZE = 64
SEED_SIZE = 32  # the X-Wing decapsulation key
PUBLIC_KEY_SIZE = MLKEM768_PUBLIC_SIZE + X25519_SIZE  # 1216
CIPHERTEXT_SIZE = MLKEM768_CIPHERTEXT_SIZE + X25519_SIZE  # 1120
SHARED_SECRET_SIZE = 32
XWING_LABEL = b"\\./" + b"/^\\"  # hex 5c2e2f2f5e5c
_EXPANDED_SIZE = MLKEM_SEED_SIZE + X25519_SIZE  # 96

# DER of the draft's OneAsymmetricKey up to the seed: SEQUENCE { INTEGER 0, SEQUENCE { OID
# id-XWing }, OCTET STRING (32 bytes) }. DER is canonical, so a file is this prefix and a
# seed, or it is not an X-Wing key: nothing to parse generically.
_XWING_PKCS8_PREFIX = bytes.fromhex("3034020100300d060b2b0601040183e62d81c87a0420")
_PEM_BEGIN = b"-----BEGIN PRIVATE KEY-----"
_PEM_END = b"-----END PRIVATE KEY-----"
# Everything `load_pem_private_key` raises for bytes it cannot turn into a key: odd OIDs give
# UnsupportedAlgorithm, keys of the wrong size for their OID InternalError (found by fuzzing).
_LOAD_ERRORS = (ValueError, TypeError, UnsupportedAlgorithm, InternalError)


def _combine(ss_m: bytes, ss_x: bytes, ct_x: bytes, pk_x: bytes) -> bytes:
    h = hashes.Hash(hashes.SHA3_256())
    for part in (ss_m, ss_x, ct_x, pk_x, XWING_LABEL):
        h.update(part)
    return h.finalize()


def _expand(seed: bytes) -> bytes:
    h = hashes.Hash(hashes.SHAKE256(digest_size=_EXPANDED_SIZE))
    h.update(seed)
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
    """An X-Wing encapsulation key (``pk_M || pk_X``)."""

    __slots__ = ("_m", "_raw", "_x", "_x_raw")

    def __init__(self, x: x25519.X25519PublicKey, m: mlkem.MLKEM768PublicKey) -> None:
        self._x = x
        self._m = m
        self._x_raw = x.public_bytes_raw()
        self._raw = m.public_bytes_raw() + self._x_raw

    @classmethod
    def from_bytes(cls, raw: bytes) -> HybridPublicKey:
        if len(raw) != PUBLIC_KEY_SIZE:
            raise InvalidKey(f"hybrid public key must be {PUBLIC_KEY_SIZE} bytes, got {len(raw)}")
        try:
            m = mlkem.MLKEM768PublicKey.from_public_bytes(raw[:MLKEM768_PUBLIC_SIZE])
            x = x25519.X25519PublicKey.from_public_bytes(raw[MLKEM768_PUBLIC_SIZE:])
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

    def components(self) -> tuple[x25519.X25519PublicKey, mlkem.MLKEM768PublicKey]:
        """The two halves, for HPKE's MLKEM768-X25519 KEM (``crypto.hpke``)."""
        return self._x, self._m

    def encapsulate(self, rng: RandomBytes | None = None) -> tuple[bytes, bytes]:
        """Return ``(ciphertext, shared_secret)``, the ciphertext being ``ct_M || ct_X``.

        ``rng`` fixes the X25519 ephemeral (for reproducible simulations); ML-KEM always
        draws from OpenSSL's generator, which takes no caller randomness."""
        eph = _x25519_private(rng)
        ct_x = eph.public_key().public_bytes_raw()
        ss_x = _exchange(eph, self._x)
        ss_m, ct_m = self._m.encapsulate()
        return ct_m + ct_x, _combine(ss_m, ss_x, ct_x, self._x_raw)


class HybridPrivateKey:
    """An X-Wing decapsulation key, kept expanded. Never shown in a repr."""

    __slots__ = ("_m", "_public", "_seed", "_x")

    def __init__(
        self,
        x: x25519.X25519PrivateKey,
        m: mlkem.MLKEM768PrivateKey,
        *,
        seed: bytes | None = None,
    ) -> None:
        # Callers go through from_seed/generate/from_pkcs8_pem; ``seed`` must be the one
        # x and m were expanded from, or None for keys from older two-block files.
        self._x = x
        self._m = m
        self._seed = seed
        self._public = HybridPublicKey(x.public_key(), m.public_key())

    @classmethod
    def from_seed(cls, seed: bytes) -> HybridPrivateKey:
        """The key pair of a 32-byte X-Wing decapsulation key (the draft's
        ``GenerateKeyPairDerand``)."""
        if len(seed) != SEED_SIZE:
            raise InvalidKey(f"X-Wing seed must be {SEED_SIZE} bytes, got {len(seed)}")
        expanded = _expand(seed)
        m = mlkem.MLKEM768PrivateKey.from_seed_bytes(expanded[:MLKEM_SEED_SIZE])
        x = x25519.X25519PrivateKey.from_private_bytes(expanded[MLKEM_SEED_SIZE:])
        return cls(x, m, seed=bytes(seed))

    @classmethod
    def generate(cls, rng: RandomBytes | None = None) -> HybridPrivateKey:
        """A fresh key from ``os.urandom``, or from ``rng`` (the deterministic simulator)."""
        return cls.from_seed(os.urandom(SEED_SIZE) if rng is None else rng(SEED_SIZE))

    def public_key(self) -> HybridPublicKey:
        return self._public

    def __repr__(self) -> str:
        return f"HybridPrivateKey(<hidden>, public={self._public!r})"

    def components(self) -> tuple[x25519.X25519PrivateKey, mlkem.MLKEM768PrivateKey]:
        """The two halves, for HPKE's MLKEM768-X25519 KEM (``crypto.hpke``)."""
        return self._x, self._m

    def decapsulate(self, ciphertext: bytes) -> bytes:
        if len(ciphertext) != CIPHERTEXT_SIZE:
            raise InvalidKey(
                f"hybrid ciphertext must be {CIPHERTEXT_SIZE} bytes, got {len(ciphertext)}"
            )
        ct_x = ciphertext[MLKEM768_CIPHERTEXT_SIZE:]
        try:
            peer = x25519.X25519PublicKey.from_public_bytes(ct_x)
            ss_m = self._m.decapsulate(ciphertext[:MLKEM768_CIPHERTEXT_SIZE])
        except ValueError as exc:
            raise InvalidKey(f"invalid hybrid ciphertext: {exc}") from None
        ss_x = _exchange(self._x, peer)
        return _combine(ss_m, ss_x, ct_x, self._public._x_raw)

    def to_pkcs8_pem(self) -> bytes:
        """The draft's PKCS#8 encoding (id-XWing, 32-byte seed) as one PEM block; a key
        loaded from an older two-block file has no seed and is written back in that form."""
        if self._seed is None:
            enc = serialization.NoEncryption()
            fmt = serialization.PrivateFormat.PKCS8
            pem = serialization.Encoding.PEM
            return self._x.private_bytes(pem, fmt, enc) + self._m.private_bytes(pem, fmt, enc)
        b64 = base64.b64encode(_XWING_PKCS8_PREFIX + self._seed)
        lines = [b64[i : i + 64] for i in range(0, len(b64), 64)]  # RFC 7468 line length
        return b"\n".join([_PEM_BEGIN, *lines, _PEM_END]) + b"\n"

    @classmethod
    def from_pkcs8_pem(cls, data: bytes) -> HybridPrivateKey:
        """Load a key file; raises only ``InvalidKey``, whatever the bytes."""
        blocks = [b + _PEM_END + b"\n" for b in data.split(_PEM_END) if b.strip()]
        if len(blocks) == 1:
            return cls.from_seed(_xwing_seed(blocks[0]))
        if len(blocks) == 2:
            return cls._from_two_blocks(blocks[0], blocks[1])
        raise InvalidKey(
            f"expected one X-Wing PKCS#8 PEM block (or the older two), found {len(blocks)}"
        )

    @classmethod
    def _from_two_blocks(cls, x_block: bytes, m_block: bytes) -> HybridPrivateKey:
        try:
            x = serialization.load_pem_private_key(x_block, password=None)
            m = serialization.load_pem_private_key(m_block, password=None)
        except _LOAD_ERRORS as exc:
            raise InvalidKey(f"unreadable hybrid private key: {exc}") from None
        if not isinstance(x, x25519.X25519PrivateKey) or not isinstance(
            m, mlkem.MLKEM768PrivateKey
        ):
            raise InvalidKey("hybrid private key file must hold an X25519 then an ML-KEM-768 key")
        return cls(x, m)


def _xwing_seed(block: bytes) -> bytes:
    text = block.strip()
    if not text.startswith(_PEM_BEGIN):
        raise InvalidKey("unreadable hybrid private key: no PKCS#8 PEM header")
    body = b"".join(text[len(_PEM_BEGIN) : -len(_PEM_END)].split())
    try:
        der = base64.b64decode(body, validate=True)
    except ValueError as exc:  # binascii.Error
        raise InvalidKey(f"unreadable hybrid private key: {exc}") from None
    prefix = _XWING_PKCS8_PREFIX
    if len(der) != len(prefix) + SEED_SIZE or not der.startswith(prefix):
        raise InvalidKey("hybrid private key file must hold an X-Wing key (PKCS#8, id-XWing)")
    return der[len(prefix) :]


def default_rng(n: int) -> bytes:
    return os.urandom(n)
