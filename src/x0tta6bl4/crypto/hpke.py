"""HPKE (RFC 9180) with the hybrid ML-KEM-768 + X25519 KEM, single shot.

The control plane seals enrollment to its own hybrid key with this, so a join is
post-quantum confidential even when the TLS in front of the service is classical. The
keys are our ``HybridPrivateKey``/``HybridPublicKey`` (the same X25519 + ML-KEM-768 pair),
so they are stored and fingerprinted like every other static key.
"""

from __future__ import annotations

from cryptography.hazmat.primitives import hpke

from x0tta6bl4.crypto.hybrid import HybridPrivateKey, HybridPublicKey
from x0tta6bl4.errors import DecryptError

_SUITE = hpke.Suite(hpke.KEM.MLKEM768_X25519, hpke.KDF.HKDF_SHA256, hpke.AEAD.AES_256_GCM)
# Encapsulated key (ML-KEM ciphertext + X25519 share) and the AES-GCM tag.
OVERHEAD = hpke.KEM.MLKEM768_X25519.enc_length() + 16


def seal(public: HybridPublicKey, plaintext: bytes, info: bytes) -> bytes:
    """``enc || ciphertext`` for the holder of ``public``; ``info`` binds the purpose."""
    x, m = public.components()
    return _SUITE.encrypt(plaintext, hpke.MLKEM768X25519PublicKey(m, x), info=info)


def open_sealed(private: HybridPrivateKey, sealed: bytes, info: bytes) -> bytes:
    """The plaintext of ``seal``; DecryptError if it was altered, truncated, sealed to
    another key or for another ``info``."""
    if len(sealed) < OVERHEAD:
        raise DecryptError(f"sealed message shorter than the {OVERHEAD}-byte HPKE overhead")
    x, m = private.components()
    try:
        return _SUITE.decrypt(sealed, hpke.MLKEM768X25519PrivateKey(m, x), info=info)
    except Exception as exc:  # the binding raises several types for a bad message
        raise DecryptError(f"HPKE open failed: {type(exc).__name__}") from None
