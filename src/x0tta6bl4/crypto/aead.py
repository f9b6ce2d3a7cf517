"""ChaCha20-Poly1305 with typed errors."""

from __future__ import annotations

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from x0tta6bl4.errors import DecryptError, InvalidKey

KEY_SIZE = 32
NONCE_SIZE = 12
TAG_SIZE = 16


class Aead:
    """One ChaCha20-Poly1305 key. The key never appears in a repr."""

    __slots__ = ("_cipher",)

    def __init__(self, key: bytes) -> None:
        if len(key) != KEY_SIZE:
            raise InvalidKey(f"ChaCha20-Poly1305 key must be {KEY_SIZE} bytes, got {len(key)}")
        self._cipher: ChaCha20Poly1305 | None = ChaCha20Poly1305(key)

    def __repr__(self) -> str:
        return "Aead(<ChaCha20-Poly1305 key hidden>)"

    def seal(self, nonce: bytes, plaintext: bytes, ad: bytes | None) -> bytes:
        cipher = self._cipher
        if cipher is None:
            raise InvalidKey("this key was wiped")
        return cipher.encrypt(nonce, plaintext, ad)

    def open(self, nonce: bytes, ciphertext: bytes, ad: bytes | None) -> bytes:
        cipher = self._cipher
        if cipher is None:
            raise InvalidKey("this key was wiped")
        try:
            return cipher.decrypt(nonce, ciphertext, ad)
        except InvalidTag:
            raise DecryptError("authentication tag mismatch") from None

    def wipe(self) -> None:
        """Drop the key. The OpenSSL context is freed with the last reference; Python
        cannot promise to scrub every copy, but nothing of ours keeps one."""
        self._cipher = None

    @property
    def wiped(self) -> bool:
        return self._cipher is None


def nonce_from_counter(counter: int) -> bytes:
    """64-bit little-endian counter after four zero bytes, as in WireGuard."""
    return b"\x00\x00\x00\x00" + counter.to_bytes(8, "little")
