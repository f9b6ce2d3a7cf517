"""HKDF, keyed MACs and transcript hashing (SHA-256, via ``cryptography``)."""

from __future__ import annotations

from cryptography.hazmat.primitives import hashes, hmac
from cryptography.hazmat.primitives.kdf.hkdf import HKDF, HKDFExpand

HASH_SIZE = 32


def sha256(*parts: bytes) -> bytes:
    h = hashes.Hash(hashes.SHA256())
    for part in parts:
        h.update(part)
    return h.finalize()


def hmac_sha256(key: bytes, *parts: bytes) -> bytes:
    mac = hmac.HMAC(key, hashes.SHA256())
    for part in parts:
        mac.update(part)
    return mac.finalize()


def mac16(key: bytes, data: bytes) -> bytes:
    """A 16-byte keyed MAC (truncated HMAC-SHA256) for cookies and mac1/mac2."""
    return hmac_sha256(key, data)[:16]


def hkdf(ikm: bytes, *, salt: bytes, info: bytes, length: int = 32) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=salt, info=info).derive(ikm)


def hkdf_expand(prk: bytes, *, info: bytes, length: int = 32) -> bytes:
    return HKDFExpand(algorithm=hashes.SHA256(), length=length, info=info).derive(prk)


class Transcript:
    """A running hash over every handshake message, bound into the key schedule."""

    __slots__ = ("_h",)

    def __init__(self, label: bytes) -> None:
        self._h = sha256(label)

    def mix(self, *parts: bytes) -> None:
        self._h = sha256(self._h, *parts)

    @property
    def digest(self) -> bytes:
        return self._h

    def copy(self) -> Transcript:
        other = Transcript.__new__(Transcript)
        other._h = self._h
        return other


class ChainingKey:
    """Noise-style chaining key: each mixed secret re-keys it through HKDF-Extract."""

    __slots__ = ("_ck",)

    def __init__(self, label: bytes) -> None:
        self._ck = sha256(label)

    def mix(self, secret: bytes) -> bytes:
        """Absorb ``secret``; return a fresh 32-byte key for encrypting the next field."""
        out = hkdf(secret, salt=self._ck, info=b"x0tta6bl4 ck", length=64)
        self._ck, key = out[:32], out[32:]
        return key

    def split(self, info: bytes) -> tuple[bytes, bytes]:
        """Two independent 32-byte keys (initiator->responder, responder->initiator)."""
        out = hkdf_expand(self._ck, info=info, length=64)
        return out[:32], out[32:]

    def __repr__(self) -> str:
        return "ChainingKey(<hidden>)"
