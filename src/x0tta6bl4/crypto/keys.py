"""Private keys on disk: PKCS#8 PEM, mode 0600, written atomically."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from x0tta6bl4.atomicfile import atomic_write
from x0tta6bl4.crypto.hybrid import HybridPrivateKey
from x0tta6bl4.crypto.sign import SigningKey
from x0tta6bl4.errors import InvalidKey

PRIVATE_MODE = 0o600


def save_private_key(path: str | os.PathLike[str], key: SigningKey | HybridPrivateKey) -> None:
    atomic_write(path, key.to_pkcs8_pem(), mode=PRIVATE_MODE)


def _read_private(path: str | os.PathLike[str]) -> bytes:
    p = Path(path)
    mode = stat.S_IMODE(p.stat().st_mode)
    if mode & 0o077:
        raise InvalidKey(f"{p} is readable by others (mode {mode:o}); expected 600")
    return p.read_bytes()


def load_signing_key(path: str | os.PathLike[str]) -> SigningKey:
    return SigningKey.from_pkcs8_pem(_read_private(path))


def load_hybrid_key(path: str | os.PathLike[str]) -> HybridPrivateKey:
    return HybridPrivateKey.from_pkcs8_pem(_read_private(path))
